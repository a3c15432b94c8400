"""The schema of every training config: ``base_config()`` holds every field with its default.

Config files (``configs/*.py``) start from ``base_config()`` and change fields; a field that is not here is a
mistake (see :mod:`train.checks`). Learning rates are absolute (for the config's ``batch_size``).
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "squeezenet1_1"
    c.model.in_chans = 3
    c.model.drop_rate = -1.0  # < 0: the architecture's reference default
    c.model.dtype = "float32"  # "float32" | "bfloat16" (bf16 compute, float32 params) | "float64" (all float64:
    # numerics checks; python -m train turns on jax_enable_x64 for it)
    # Fine-tuning: start from a pretrained tag ("mobilenet_v3_large_100.ra_in1k", see
    # lightjax.pretrained.list_pretrained; loaded with load_model(tag, num_classes=data.num_classes): a new
    # head when the class count differs), a converted PyTorch checkpoint (.pth/.safetensors, read with
    # lightjax.convert.from_torch(strict=False): the head is re-initialised when num_classes differs) or a
    # lightjax Orbax checkpoint directory (a workdir's step dir or its "state" item).
    c.model.init_from = ""
    c.model.init_format = "auto"  # "auto" | "torch" | "orbax"

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "lightjax_digits"  # any tfds name prepared (array_record) in data_dir
    c.data.data_dir = ""  # "" = tfds default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.num_classes = 10
    c.data.image_key = "image"
    c.data.label_key = "label"
    c.data.image_size = 32
    c.data.augment = "cifar"  # "imagenet" (random resized crop) | "cifar" (pad + crop) | "none"
    c.data.crop_scale = (0.08, 1.0)
    c.data.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
    c.data.pad = 4
    c.data.flip = True
    c.data.eval_crop_pct = 1.0  # eval: resize shorter side to floor(image_size / crop_pct), centre crop
    c.data.eval_resize_size = 0  # > 0: eval resizes the shorter side to this instead (torchvision style)
    c.data.interpolation = "bilinear"  # PIL filter of every resize (train and eval): "bilinear" | "bicubic" | ...
    # "auto": when model.init_from is a pretrained tag, evaluation uses the tag's transform (its crop fraction,
    # interpolation, mean/std) at image_size and training its mean/std (data.eval_crop_pct, eval_resize_size,
    # interpolation (eval), mean and std are then not used); "config": always the data.* fields above.
    c.data.eval_transform = "auto"
    c.data.mean = (0.485, 0.456, 0.406)
    c.data.std = (0.229, 0.224, 0.225)
    c.data.worker_count = 0  # grain worker processes (0 = in the main process)
    c.data.read_threads = 2
    c.data.eval_limit = 0  # > 0: evaluate on the first N examples only

    c.batch_size = 128  # global, over all processes and devices
    c.eval_batch_size = 0  # 0 = batch_size
    c.num_epochs = 10.0
    c.num_train_steps = -1  # > 0 overrides num_epochs

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"  # "sgd" | "rmsprop" | "adamw"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4  # decoupled for adamw; L2 added to the gradient for sgd/rmsprop
    c.optimizer.rmsprop_decay = 0.9
    c.optimizer.eps = 1e-8  # rmsprop / adamw epsilon
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.grad_clip_norm = 0.0  # > 0: clip the global gradient norm

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "cosine"  # "cosine" | "linear" | "exponential" | "constant"
    c.schedule.warmup_epochs = 0.0
    c.schedule.warmup_init = 0.0  # lr at step 0, as a fraction of the base lr
    c.schedule.end_factor = 0.0  # cosine/linear: final lr as a fraction of the base lr
    c.schedule.decay_rate = 0.98  # exponential: lr *= decay_rate every decay_epochs (staircase)
    c.schedule.decay_epochs = 1.0

    c.label_smoothing = 0.0
    c.ema_decay = 0.0  # > 0: keep an EMA of params and batch stats and evaluate it alongside

    c.log_every_steps = 10
    c.eval_every_steps = 0  # 0 = once per epoch
    c.checkpoint_every_steps = 0  # 0 = once per epoch
    c.max_to_keep = 3
    c.async_checkpointing = True
    c.progress_bar = True
    c.plot = True
    return c


def imagenet_base() -> ml_collections.ConfigDict:
    """``base_config()`` with what every ImageNet recipe in ``configs/*_imagenet.py`` shares.

    Data: ``imagenet2012`` (prepared as array_record in ``data.data_dir``), evaluated on ``validation``, 1000
    classes, 224 px, random resized crop + flip for training (``augment="imagenet"``), the usual 0.875 centre
    crop for evaluation, 16 grain workers. Cadence: a log line every 100 steps, a checkpoint every 2000 (and
    evaluation once per epoch, the ``base_config()`` default). Each config then sets its paper's model,
    optimiser, schedule, batch size and length, and whatever else its recipe says (input size, crop scale,
    mean/std, dropout, EMA, label smoothing).
    """
    c = base_config()
    c.data.dataset = "imagenet2012"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.num_classes = 1000
    c.data.image_size = 224
    c.data.augment = "imagenet"
    c.data.eval_crop_pct = 0.875
    c.data.worker_count = 16
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    return c
