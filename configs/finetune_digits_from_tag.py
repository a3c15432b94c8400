"""Fine-tune a pretrained tag on the digits (new 10-class head), with the tag's own normalisation.

    python -m train --config configs/finetune_digits_from_tag.py --workdir /tmp/lightjax_finetune_tag
    python -m train --config configs/finetune_digits_from_tag.py --workdir /tmp/w \
        --config.model.name=mobilenet_v2_100 --config.model.init_from=mobilenet_v2_100.tv2_in1k

``model.init_from`` is a pretrained tag (``lightjax.pretrained.list_pretrained()``): its weights are fetched
once into ``$LIGHTJAX_CACHE`` (or read from ``$LIGHTJAX_WEIGHTS_MIRROR``, or a file registered with
``register_pretrained(tag, file=...)``) and loaded with ``load_model(tag, num_classes=10)``: every body
weight is kept and the 1000-class classifier is replaced by a freshly initialised 10-class one. The tag's
model settings (e.g. timm's BatchNorm eps) are applied to the model, and with ``data.eval_transform="auto"``
the tag's eval transform (its crop fraction, interpolation, mean/std) is used for evaluation at
``data.image_size`` and its mean/std for training: timm's ``ra_in1k`` weights were trained on bicubic,
ImageNet-normalised inputs, so the digits are fed the same way. Digits (grey) are replicated to 3 channels.
A small learning rate keeps the pretrained features. Not measured here (no published weights on this
machine; the test suite runs it with a local tag).
"""

from train.config_base import base_config


def get_config():
    c = base_config()
    c.model.name = "mobilenet_v3_large_100"
    c.model.in_chans = 3
    c.model.init_from = "mobilenet_v3_large_100.ra_in1k"  # timm's; any tag of model.name works
    c.data.dataset = "lightjax_digits"
    c.data.data_dir = "~/tensorflow_datasets"
    c.data.num_classes = 10
    c.data.image_size = 64
    c.data.augment = "cifar"
    c.data.pad = 8
    c.data.flip = False
    c.data.interpolation = "bicubic"  # the training resizes, as the tag's eval transform
    c.data.eval_transform = "auto"  # eval: the tag's transform at 64 px; mean/std: the tag's
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
