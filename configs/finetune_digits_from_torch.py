"""Fine-tune an ImageNet-pretrained PyTorch checkpoint on the digits (new 10-class head).

    python -m train --config configs/finetune_digits_from_torch.py --workdir /tmp/lightjax_finetune \
        --config.model.init_from=/path/to/mobilenet_v2-b0353104.pth

``model.init_from`` is read with ``lightjax.convert.from_torch(model.name, path, num_classes=10,
strict=False)`` (``.pth`` needs torch; ``.safetensors`` does not): every tensor is converted and the
1000-class classifier is replaced by a freshly initialised 10-class one. A lightjax/Orbax checkpoint works the
same way (``--config.model.init_format=orbax``, a step directory of another run's ``checkpoints/``); leaves
whose shape differs (the head) keep their fresh initialisation. Digits are replicated to 3 channels and
normalised with the ImageNet statistics the checkpoint was trained with; a small learning rate keeps the
pretrained features. Not measured here (no pretrained checkpoint on this machine).
"""

from train.config_base import base_config


def get_config():
    c = base_config()
    c.model.name = "mobilenet_v2_100"
    c.model.in_chans = 3
    c.model.init_from = "~/checkpoints/mobilenet_v2-b0353104.pth"  # torchvision's; override on the command line
    c.model.init_format = "auto"
    c.data.dataset = "lightjax_digits"
    c.data.data_dir = "~/tensorflow_datasets"
    c.data.num_classes = 10
    c.data.image_size = 64
    c.data.augment = "cifar"
    c.data.pad = 8
    c.data.flip = False
    c.data.mean = (0.485, 0.456, 0.406)
    c.data.std = (0.229, 0.224, 0.225)
    c.batch_size = 64
    c.num_epochs = 5
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "cosine"
    c.schedule.warmup_epochs = 0.5
    c.label_smoothing = 0.1
    c.log_every_steps = 5
    return c
