"""ShuffleNet V2 1.0x on ImageNet (Ma et al., 2018, arXiv:1807.11164), recipe of the official code
(megvii-model/ShuffleNet-Series, which the paper follows from ShuffleNet v1).

    python -m train --config configs/shufflenet_v2_imagenet.py --workdir gs://BUCKET/shufflenet_v2

Published: SGD momentum 0.9, lr 0.5 for batch 1024, linear decay to 0 over 300k iterations (~240 epochs),
weight decay 4e-5, label smoothing 0.1, random resized crop + flip (the official code adds colour jitter,
not implemented here). Reported: 69.4% top-1 (1.0x). Requires a registered ShuffleNet V2 variant
(``--config.model.name``; default ``shufflenet_v2_x1_0``).
"""

from train.config_base import imagenet_base


def get_config():
    c = imagenet_base()
    c.model.name = "shufflenet_v2_x1_0"
    c.batch_size = 1024
    c.num_train_steps = 300_000
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.5
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 4e-5
    c.schedule.name = "linear"
    c.label_smoothing = 0.1
    c.eval_every_steps = 10_000
    return c
