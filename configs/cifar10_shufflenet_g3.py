"""The seed's CIFAR-10 ShuffleNet G3 (``shufflenet_v1_g3_cifar``: 1x1 stem, 240/480/960, blocks 4/8/4).

    python -m train --config configs/cifar10_shufflenet_g3.py --workdir /tmp/shufflenet_g3_cifar10

The seed defines the network but no training recipe; this is the recipe of the repository its code comes from
(kuangliu/pytorch-cifar): SGD momentum 0.9, lr 0.1 for batch 128, weight decay 5e-4, cosine over 200 epochs,
RandomCrop(32, padding=4) + horizontal flip, CIFAR-10 mean/std. That repository reports 90-91% top-1 for
ShuffleNetG2/G3 (not reproduced here: needs an accelerator and the prepared ``cifar10`` tfds dataset;
``tfds build cifar10 --file_format=array_record`` on a machine with TensorFlow).
"""

from train.config_base import base_config


def get_config(model: str = "shufflenet_v1_g3_cifar"):
    c = base_config()
    c.model.name = model
    c.data.dataset = "cifar10"
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.num_classes = 10
    c.data.image_size = 32
    c.data.augment = "cifar"
    c.data.pad = 4
    c.data.flip = True
    c.data.mean = (0.4914, 0.4822, 0.4465)
    c.data.std = (0.2023, 0.1994, 0.2010)
    c.data.worker_count = 4
    c.batch_size = 128
    c.num_epochs = 200
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "cosine"
    c.log_every_steps = 50
    return c
