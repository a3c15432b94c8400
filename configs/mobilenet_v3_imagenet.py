"""MobileNetV3-Large 1.0 on ImageNet (Howard et al., 2019, arXiv:1905.02244, section 6.1).

    python -m train --config configs/mobilenet_v3_imagenet.py --workdir gs://BUCKET/mnv3
    (MobileNetV3-Small: --config.model.name=mobilenet_v3_small_100)

Published: 4x4 TPU Pod, synchronous, TensorFlow RMSPropOptimizer with momentum 0.9, initial lr 0.1, batch size
4096 (128 images per chip), lr decay rate 0.01 every 3 epochs (read as x0.99 every 3 epochs), dropout 0.8
(keep probability: drop_rate 0.2), l2 weight decay 1e-5, EMA decay 0.9999, same preprocessing as
Inception (random resized crop + flip). Epochs not stated; 600 here. Reported: 75.2% (Large), 67.4% (Small).
"""

from train.config_base import imagenet_base


def get_config():
    c = imagenet_base()
    c.model.name = "mobilenet_v3_large_100"
    c.model.drop_rate = 0.2
    c.batch_size = 4096
    c.num_epochs = 600
    c.optimizer.name = "rmsprop"
    c.optimizer.learning_rate = 0.1
    c.optimizer.rmsprop_decay = 0.9
    c.optimizer.momentum = 0.9
    c.optimizer.eps = 1e-3
    c.optimizer.weight_decay = 1e-5
    c.schedule.name = "exponential"
    c.schedule.decay_rate = 0.99
    c.schedule.decay_epochs = 3.0
    c.ema_decay = 0.9999
    return c
