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

from train.config_base import imagenet_base


def get_config():
    c = imagenet_base()
    c.model.name = "mobilenet_v2_100"
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
    return c
