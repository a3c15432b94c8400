"""MobileNetV1 1.0 on ImageNet (Howard et al., 2017, arXiv:1704.04861, section 4).

    python -m train --config configs/mobilenet_v1_imagenet.py --workdir gs://BUCKET/mnv1

Published: "RMSprop with asynchronous gradient descent similar to Inception V3", less regularisation and
augmentation than large models, very little or no weight decay on depthwise filters. The Inception V3 recipe it
refers to (Szegedy et al., 2016): RMSProp decay 0.9, epsilon 1.0, lr 0.045 decayed every two epochs by 0.94,
gradient clipping at 2.0, batch 32 x 50 replicas. Here: global batch 1600, weight decay 4e-5 (TF-slim
MobileNet default; applied to all kernels), no label smoothing, random resized crop + flip, 200 epochs
(not stated in the paper). Reported: 70.6% top-1.
"""

from train.config_base import imagenet_base


def get_config():
    c = imagenet_base()
    c.model.name = "mobilenet_v1_100"
    c.batch_size = 1600
    c.num_epochs = 200
    c.optimizer.name = "rmsprop"
    c.optimizer.learning_rate = 0.045
    c.optimizer.rmsprop_decay = 0.9
    c.optimizer.momentum = 0.9
    c.optimizer.eps = 1.0
    c.optimizer.weight_decay = 4e-5
    c.optimizer.grad_clip_norm = 2.0
    c.schedule.name = "exponential"
    c.schedule.decay_rate = 0.94
    c.schedule.decay_epochs = 2.0
    c.ema_decay = 0.9999
    return c
