"""The seed's CIFAR-10 ShuffleNet G2 (``shufflenet_v1_g2_cifar``: 200/400/800, blocks 4/8/4).

    python -m train --config configs/cifar10_shufflenet_g2.py --workdir /tmp/shufflenet_g2_cifar10

Same recipe as ``cifar10_shufflenet_g3.py`` (kuangliu/pytorch-cifar: SGD 0.9, lr 0.1 / batch 128, wd 5e-4,
cosine 200 epochs, pad-4 crop + flip). Not run here (needs the prepared ``cifar10`` tfds dataset).
"""

import importlib.util
import os


def get_config():
    # Config files are loaded by path (not as a package), so load the sibling by path too.
    spec = importlib.util.spec_from_file_location(
        "_cifar10_shufflenet_g3", os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_shufflenet_g3.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(model="shufflenet_v1_g2_cifar")
