"""SqueezeNet 1.1 on ImageNet (Iandola et al., 2016, arXiv:1602.07360), the solver of the authors' Caffe
release (DeepScale/SqueezeNet ``solver.prototxt``).

    python -m train --config configs/squeezenet_imagenet.py --workdir gs://BUCKET/squeezenet
    (SqueezeNet 1.0: --config.model.name=squeezenet1_0)

Published: SGD momentum 0.9, base lr 0.04, "poly" policy with power 1 (linear decay to 0), weight decay 2e-4,
batch 512 (32 x iter_size 16), 170,000 iterations (~68 epochs), dropout 0.5 before conv10, mirror + random
crop (here the random resized crop, scale (0.35, 1), as torchvision's reference trainer; Caffe's fixed-scale
crop is not implemented). Reported: 57.5% top-1 (1.0); torchvision weights 58.1% (1.0/1.1).
"""

from train.config_base import imagenet_base


def get_config():
    c = imagenet_base()
    c.model.name = "squeezenet1_1"
    c.data.crop_scale = (0.35, 1.0)
    c.batch_size = 512
    c.num_train_steps = 170_000
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.04
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 2e-4
    c.schedule.name = "linear"
    c.eval_every_steps = 10_000
    return c
