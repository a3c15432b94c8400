"""ShuffleNet (v1) 1.0x g=3 on ImageNet (Zhang et al., 2017, arXiv:1707.01083, section 4).

    python -m train --config configs/shufflenet_v1_imagenet.py --workdir gs://BUCKET/shufflenet_v1

Published: weight decay 4e-5, linear-decay learning-rate policy (0.5 to 0), batch 1024, 3x10^5 iterations,
"slightly less aggressive scale augmentation" (here random resized crop with scale (0.25, 1)), SGD momentum
0.9 (Caffe-style). Reported: 67.4% top-1 (1.0x, g=3; 32.6% error in the paper's arXiv v2 table).
"""

from train.config_base import imagenet_base


def get_config():
    c = imagenet_base()
    c.model.name = "shufflenet_v1_g3"
    c.data.crop_scale = (0.25, 1.0)
    c.batch_size = 1024
    c.num_train_steps = 300_000
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.5
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 4e-5
    c.schedule.name = "linear"
    c.eval_every_steps = 10_000
    return c
