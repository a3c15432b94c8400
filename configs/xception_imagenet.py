"""Xception on ImageNet (Chollet, 2017, arXiv:1610.02357, section 4.3).

    python -m train --config configs/xception_imagenet.py --workdir gs://BUCKET/xception

Published: SGD momentum 0.9, initial lr 0.045, decay rate 0.94 every 2 epochs, weight decay 1e-5, dropout
0.5 before the logistic regression layer, Polyak averaging at inference, 299x299 input, 60 K80 GPUs
(synchronous). Batch size and epoch count are not stated; 32 per GPU (global 1920, as the Inception V3
setup) and 100 epochs here. Reported: 79.0% top-1.
"""

from train.config_base import imagenet_base


def get_config():
    c = imagenet_base()
    c.model.name = "xception"
    c.model.drop_rate = 0.5
    c.data.image_size = 299
    c.data.mean = (0.5, 0.5, 0.5)
    c.data.std = (0.5, 0.5, 0.5)
    c.batch_size = 1920
    c.num_epochs = 100
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.045
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-5
    c.schedule.name = "exponential"
    c.schedule.decay_rate = 0.94
    c.schedule.decay_epochs = 2.0
    c.ema_decay = 0.9999
    return c
