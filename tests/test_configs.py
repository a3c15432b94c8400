"""The ImageNet configs (``configs/*_imagenet.py``) start from ``train.config_base.imagenet_base()`` and keep
every value they had before it existed: each config's full ``to_dict()`` against a record taken once from the
files as they were (commit 32e28ba), flattened to dotted names.

A field added to the schema later (``base_config()``) is not in the record; it must then hold its
``base_config()`` default in every ImageNet config (a recipe that needs another value is a deliberate change:
update the record with it).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Dict

import pytest

from train.config_base import base_config, imagenet_base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# fmt: off
RECORDED = {
    'mobilenet_v1_imagenet': {
        'async_checkpointing': True, 'batch_size': 1600, 'checkpoint_every_steps': 2000, 'data.augment': 'imagenet',
        'data.crop_ratio': (0.75, 1.3333333333333333), 'data.crop_scale': (0.08, 1.0), 'data.data_dir': '',
        'data.dataset': 'imagenet2012', 'data.eval_crop_pct': 0.875, 'data.eval_limit': 0,
        'data.eval_split': 'validation', 'data.flip': True, 'data.image_key': 'image', 'data.image_size': 224,
        'data.label_key': 'label', 'data.mean': (0.485, 0.456, 0.406), 'data.num_classes': 1000, 'data.pad': 4,
        'data.read_threads': 2, 'data.std': (0.229, 0.224, 0.225), 'data.train_split': 'train',
        'data.worker_count': 16, 'ema_decay': 0.9999, 'eval_batch_size': 0, 'eval_every_steps': 0,
        'label_smoothing': 0.0, 'log_every_steps': 100, 'max_to_keep': 3, 'model.drop_rate': -1.0,
        'model.dtype': 'float32', 'model.in_chans': 3, 'model.init_format': 'auto', 'model.init_from': '',
        'model.name': 'mobilenet_v1_100', 'num_epochs': 200.0, 'num_train_steps': -1, 'optimizer.b1': 0.9,
        'optimizer.b2': 0.999, 'optimizer.eps': 1.0, 'optimizer.grad_clip_norm': 2.0,
        'optimizer.learning_rate': 0.045, 'optimizer.momentum': 0.9, 'optimizer.name': 'rmsprop',
        'optimizer.nesterov': True, 'optimizer.rmsprop_decay': 0.9, 'optimizer.weight_decay': 4e-05, 'plot': True,
        'progress_bar': True, 'schedule.decay_epochs': 2.0, 'schedule.decay_rate': 0.94, 'schedule.end_factor': 0.0,
        'schedule.name': 'exponential', 'schedule.warmup_epochs': 0.0, 'schedule.warmup_init': 0.0, 'seed': 0,
    },
    'mobilenet_v2_imagenet': {
        'async_checkpointing': True, 'batch_size': 1536, 'checkpoint_every_steps': 2000, 'data.augment': 'imagenet',
        'data.crop_ratio': (0.75, 1.3333333333333333), 'data.crop_scale': (0.08, 1.0), 'data.data_dir': '',
        'data.dataset': 'imagenet2012', 'data.eval_crop_pct': 0.875, 'data.eval_limit': 0,
        'data.eval_split': 'validation', 'data.flip': True, 'data.image_key': 'image', 'data.image_size': 224,
        'data.label_key': 'label', 'data.mean': (0.485, 0.456, 0.406), 'data.num_classes': 1000, 'data.pad': 4,
        'data.read_threads': 2, 'data.std': (0.229, 0.224, 0.225), 'data.train_split': 'train',
        'data.worker_count': 16, 'ema_decay': 0.9999, 'eval_batch_size': 0, 'eval_every_steps': 0,
        'label_smoothing': 0.0, 'log_every_steps': 100, 'max_to_keep': 3, 'model.drop_rate': -1.0,
        'model.dtype': 'float32', 'model.in_chans': 3, 'model.init_format': 'auto', 'model.init_from': '',
        'model.name': 'mobilenet_v2_100', 'num_epochs': 300.0, 'num_train_steps': -1, 'optimizer.b1': 0.9,
        'optimizer.b2': 0.999, 'optimizer.eps': 1.0, 'optimizer.grad_clip_norm': 0.0,
        'optimizer.learning_rate': 0.045, 'optimizer.momentum': 0.9, 'optimizer.name': 'rmsprop',
        'optimizer.nesterov': True, 'optimizer.rmsprop_decay': 0.9, 'optimizer.weight_decay': 4e-05, 'plot': True,
        'progress_bar': True, 'schedule.decay_epochs': 1.0, 'schedule.decay_rate': 0.98, 'schedule.end_factor': 0.0,
        'schedule.name': 'exponential', 'schedule.warmup_epochs': 0.0, 'schedule.warmup_init': 0.0, 'seed': 0,
    },
    'mobilenet_v3_imagenet': {
        'async_checkpointing': True, 'batch_size': 4096, 'checkpoint_every_steps': 2000, 'data.augment': 'imagenet',
        'data.crop_ratio': (0.75, 1.3333333333333333), 'data.crop_scale': (0.08, 1.0), 'data.data_dir': '',
        'data.dataset': 'imagenet2012', 'data.eval_crop_pct': 0.875, 'data.eval_limit': 0,
        'data.eval_split': 'validation', 'data.flip': True, 'data.image_key': 'image', 'data.image_size': 224,
        'data.label_key': 'label', 'data.mean': (0.485, 0.456, 0.406), 'data.num_classes': 1000, 'data.pad': 4,
        'data.read_threads': 2, 'data.std': (0.229, 0.224, 0.225), 'data.train_split': 'train',
        'data.worker_count': 16, 'ema_decay': 0.9999, 'eval_batch_size': 0, 'eval_every_steps': 0,
        'label_smoothing': 0.0, 'log_every_steps': 100, 'max_to_keep': 3, 'model.drop_rate': 0.2,
        'model.dtype': 'float32', 'model.in_chans': 3, 'model.init_format': 'auto', 'model.init_from': '',
        'model.name': 'mobilenet_v3_large_100', 'num_epochs': 600.0, 'num_train_steps': -1, 'optimizer.b1': 0.9,
        'optimizer.b2': 0.999, 'optimizer.eps': 0.001, 'optimizer.grad_clip_norm': 0.0,
        'optimizer.learning_rate': 0.1, 'optimizer.momentum': 0.9, 'optimizer.name': 'rmsprop',
        'optimizer.nesterov': True, 'optimizer.rmsprop_decay': 0.9, 'optimizer.weight_decay': 1e-05, 'plot': True,
        'progress_bar': True, 'schedule.decay_epochs': 3.0, 'schedule.decay_rate': 0.99, 'schedule.end_factor': 0.0,
        'schedule.name': 'exponential', 'schedule.warmup_epochs': 0.0, 'schedule.warmup_init': 0.0, 'seed': 0,
    },
    'shufflenet_v1_imagenet': {
        'async_checkpointing': True, 'batch_size': 1024, 'checkpoint_every_steps': 2000, 'data.augment': 'imagenet',
        'data.crop_ratio': (0.75, 1.3333333333333333), 'data.crop_scale': (0.25, 1.0), 'data.data_dir': '',
        'data.dataset': 'imagenet2012', 'data.eval_crop_pct': 0.875, 'data.eval_limit': 0,
        'data.eval_split': 'validation', 'data.flip': True, 'data.image_key': 'image', 'data.image_size': 224,
        'data.label_key': 'label', 'data.mean': (0.485, 0.456, 0.406), 'data.num_classes': 1000, 'data.pad': 4,
        'data.read_threads': 2, 'data.std': (0.229, 0.224, 0.225), 'data.train_split': 'train',
        'data.worker_count': 16, 'ema_decay': 0.0, 'eval_batch_size': 0, 'eval_every_steps': 10000,
        'label_smoothing': 0.0, 'log_every_steps': 100, 'max_to_keep': 3, 'model.drop_rate': -1.0,
        'model.dtype': 'float32', 'model.in_chans': 3, 'model.init_format': 'auto', 'model.init_from': '',
        'model.name': 'shufflenet_v1_g3', 'num_epochs': 10.0, 'num_train_steps': 300000, 'optimizer.b1': 0.9,
        'optimizer.b2': 0.999, 'optimizer.eps': 1e-08, 'optimizer.grad_clip_norm': 0.0,
        'optimizer.learning_rate': 0.5, 'optimizer.momentum': 0.9, 'optimizer.name': 'sgd',
        'optimizer.nesterov': False, 'optimizer.rmsprop_decay': 0.9, 'optimizer.weight_decay': 4e-05, 'plot': True,
        'progress_bar': True, 'schedule.decay_epochs': 1.0, 'schedule.decay_rate': 0.98, 'schedule.end_factor': 0.0,
        'schedule.name': 'linear', 'schedule.warmup_epochs': 0.0, 'schedule.warmup_init': 0.0, 'seed': 0,
    },
    'shufflenet_v2_imagenet': {
        'async_checkpointing': True, 'batch_size': 1024, 'checkpoint_every_steps': 2000, 'data.augment': 'imagenet',
        'data.crop_ratio': (0.75, 1.3333333333333333), 'data.crop_scale': (0.08, 1.0), 'data.data_dir': '',
        'data.dataset': 'imagenet2012', 'data.eval_crop_pct': 0.875, 'data.eval_limit': 0,
        'data.eval_split': 'validation', 'data.flip': True, 'data.image_key': 'image', 'data.image_size': 224,
        'data.label_key': 'label', 'data.mean': (0.485, 0.456, 0.406), 'data.num_classes': 1000, 'data.pad': 4,
        'data.read_threads': 2, 'data.std': (0.229, 0.224, 0.225), 'data.train_split': 'train',
        'data.worker_count': 16, 'ema_decay': 0.0, 'eval_batch_size': 0, 'eval_every_steps': 10000,
        'label_smoothing': 0.1, 'log_every_steps': 100, 'max_to_keep': 3, 'model.drop_rate': -1.0,
        'model.dtype': 'float32', 'model.in_chans': 3, 'model.init_format': 'auto', 'model.init_from': '',
        'model.name': 'shufflenet_v2_x1_0', 'num_epochs': 10.0, 'num_train_steps': 300000, 'optimizer.b1': 0.9,
        'optimizer.b2': 0.999, 'optimizer.eps': 1e-08, 'optimizer.grad_clip_norm': 0.0,
        'optimizer.learning_rate': 0.5, 'optimizer.momentum': 0.9, 'optimizer.name': 'sgd',
        'optimizer.nesterov': False, 'optimizer.rmsprop_decay': 0.9, 'optimizer.weight_decay': 4e-05, 'plot': True,
        'progress_bar': True, 'schedule.decay_epochs': 1.0, 'schedule.decay_rate': 0.98, 'schedule.end_factor': 0.0,
        'schedule.name': 'linear', 'schedule.warmup_epochs': 0.0, 'schedule.warmup_init': 0.0, 'seed': 0,
    },
    'squeezenet_imagenet': {
        'async_checkpointing': True, 'batch_size': 512, 'checkpoint_every_steps': 2000, 'data.augment': 'imagenet',
        'data.crop_ratio': (0.75, 1.3333333333333333), 'data.crop_scale': (0.35, 1.0), 'data.data_dir': '',
        'data.dataset': 'imagenet2012', 'data.eval_crop_pct': 0.875, 'data.eval_limit': 0,
        'data.eval_split': 'validation', 'data.flip': True, 'data.image_key': 'image', 'data.image_size': 224,
        'data.label_key': 'label', 'data.mean': (0.485, 0.456, 0.406), 'data.num_classes': 1000, 'data.pad': 4,
        'data.read_threads': 2, 'data.std': (0.229, 0.224, 0.225), 'data.train_split': 'train',
        'data.worker_count': 16, 'ema_decay': 0.0, 'eval_batch_size': 0, 'eval_every_steps': 10000,
        'label_smoothing': 0.0, 'log_every_steps': 100, 'max_to_keep': 3, 'model.drop_rate': -1.0,
        'model.dtype': 'float32', 'model.in_chans': 3, 'model.init_format': 'auto', 'model.init_from': '',
        'model.name': 'squeezenet1_1', 'num_epochs': 10.0, 'num_train_steps': 170000, 'optimizer.b1': 0.9,
        'optimizer.b2': 0.999, 'optimizer.eps': 1e-08, 'optimizer.grad_clip_norm': 0.0,
        'optimizer.learning_rate': 0.04, 'optimizer.momentum': 0.9, 'optimizer.name': 'sgd',
        'optimizer.nesterov': False, 'optimizer.rmsprop_decay': 0.9, 'optimizer.weight_decay': 0.0002, 'plot': True,
        'progress_bar': True, 'schedule.decay_epochs': 1.0, 'schedule.decay_rate': 0.98, 'schedule.end_factor': 0.0,
        'schedule.name': 'linear', 'schedule.warmup_epochs': 0.0, 'schedule.warmup_init': 0.0, 'seed': 0,
    },
    'xception_imagenet': {
        'async_checkpointing': True, 'batch_size': 1920, 'checkpoint_every_steps': 2000, 'data.augment': 'imagenet',
        'data.crop_ratio': (0.75, 1.3333333333333333), 'data.crop_scale': (0.08, 1.0), 'data.data_dir': '',
        'data.dataset': 'imagenet2012', 'data.eval_crop_pct': 0.875, 'data.eval_limit': 0,
        'data.eval_split': 'validation', 'data.flip': True, 'data.image_key': 'image', 'data.image_size': 299,
        'data.label_key': 'label', 'data.mean': (0.5, 0.5, 0.5), 'data.num_classes': 1000, 'data.pad': 4,
        'data.read_threads': 2, 'data.std': (0.5, 0.5, 0.5), 'data.train_split': 'train', 'data.worker_count': 16,
        'ema_decay': 0.9999, 'eval_batch_size': 0, 'eval_every_steps': 0, 'label_smoothing': 0.0,
        'log_every_steps': 100, 'max_to_keep': 3, 'model.drop_rate': 0.5, 'model.dtype': 'float32',
        'model.in_chans': 3, 'model.init_format': 'auto', 'model.init_from': '', 'model.name': 'xception',
        'num_epochs': 100.0, 'num_train_steps': -1, 'optimizer.b1': 0.9, 'optimizer.b2': 0.999,
        'optimizer.eps': 1e-08, 'optimizer.grad_clip_norm': 0.0, 'optimizer.learning_rate': 0.045,
        'optimizer.momentum': 0.9, 'optimizer.name': 'sgd', 'optimizer.nesterov': False,
        'optimizer.rmsprop_decay': 0.9, 'optimizer.weight_decay': 1e-05, 'plot': True, 'progress_bar': True,
        'schedule.decay_epochs': 2.0, 'schedule.decay_rate': 0.94, 'schedule.end_factor': 0.0,
        'schedule.name': 'exponential', 'schedule.warmup_epochs': 0.0, 'schedule.warmup_init': 0.0, 'seed': 0,
    },
}
# fmt: on


def _flat(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def _load(name: str):
    path = os.path.join(REPO, "configs", name + ".py")
    spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_every_imagenet_config_is_recorded():
    on_disk = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith("_imagenet.py"))
    assert on_disk == sorted(RECORDED)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_imagenet_config_values_unchanged(name):
    mod = _load(name)
    got = _flat(mod.get_config().to_dict())
    want = RECORDED[name]
    defaults = _flat(base_config().to_dict())
    missing = sorted(set(want) - set(got))
    changed = {k: (want[k], got[k]) for k in want if k in got and got[k] != want[k]}
    # Fields the schema gained after the record: the config must leave them at their default.
    new = {k: (defaults.get(k), got[k]) for k in sorted(set(got) - set(want)) if got[k] != defaults.get(k)}
    assert not missing and not changed and not new, f"{name}: missing {missing}, changed (was, now) {changed}, " \
        f"new fields off their default (default, now) {new}"
    # The config is built on the shared skeleton, and its docstring keeps the command to run it.
    assert "imagenet_base()" in open(mod.__file__).read()
    assert f"python -m train --config configs/{name}.py" in mod.__doc__


def test_imagenet_base_is_the_shared_part():
    """``imagenet_base()`` holds exactly the values all seven recipes share and that differ from base_config()."""
    base, skel = _flat(base_config().to_dict()), _flat(imagenet_base().to_dict())
    shared = {k: v for k, v in RECORDED["squeezenet_imagenet"].items()
              if all(r.get(k) == v for r in RECORDED.values())}
    assert {k: v for k, v in skel.items() if base.get(k) != v} == {
        k: v for k, v in shared.items() if base.get(k) != v and k != "data.image_size"} | {"data.image_size": 224}
