"""MobileNetV2 1.0 on ImageNet, the paper's recipe (Sandler et al., 2018, arXiv:1801.04381, section 6.1).

    python -m train --config configs/mobilenet_v2_imagenet.py --workdir gs://BUCKET/mnv2 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Published: TensorFlow RMSPropOptimizer, decay 0.9 and momentum 0.9, batch normalisation after every layer,
weight decay 4e-5, initial learning rate 0.045 decayed by 0.98 per epoch, batch size 96 on each of 16 GPU
workers (asynchronous; here synchronous, global batch 96 x 16 = 1536 with the same per-worker lr). The paper
does not give the epoch count or augmentation; TF-slim's Inception preprocessing (random resized crop + flip)
and its ``opt_epsilon=1.0`` are used, with 300 epochs (at decay 0.98/epoch the lr is ~1e-4 by then).
Reported: 72.0% top-1 (224x224). Needs ``imagenet2012`` prepared as array_record in ``data.data_dir``.
"""

from train.config_base import base_config


def get_config():
    c = base_config()
    c.model.name = "mobilenet_v2_100"
    c.data.dataset = "imagenet2012"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.num_classes = 1000
    c.data.image_size = 224
    c.data.augment = "imagenet"
    c.data.crop_scale = (0.08, 1.0)
    c.data.flip = True
    c.data.eval_crop_pct = 0.875
    c.data.worker_count = 16
    c.batch_size = 1536
    c.num_epochs = 300
    c.optimizer.name = "rmsprop"
    c.optimizer.learning_rate = 0.045
    c.optimizer.rmsprop_decay = 0.9
    c.optimizer.momentum = 0.9
    c.optimizer.eps = 1.0
    c.optimizer.weight_decay = 4e-5
    c.schedule.name = "exponential"
    c.schedule.decay_rate = 0.98
    c.schedule.decay_epochs = 1.0
    c.ema_decay = 0.9999  # TF-slim's moving-average evaluation
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    c.eval_every_steps = 0
    return c
