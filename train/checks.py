"""Start-up validation of a training config: every mistake is reported with the field that causes it."""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List

import ml_collections


class ConfigError(ValueError):
    """A config field has a bad value. ``str(e)`` starts with ``config.<field>``."""

    def __init__(self, field: str, value: Any, expected: str):
        self.field = field
        super().__init__(f"config.{field}={value!r} is invalid: expected {expected}")


def _flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.update(_flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_known_fields(config: ml_collections.ConfigDict) -> None:
    """Fields that the schema (:func:`train.config_base.base_config`) does not have are typos."""
    import difflib

    from train.config_base import base_config

    known = _flat_keys(base_config())
    unknown = [k for k in _flat_keys(config) if k not in known]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(known), n=3)
        hint = f" (did you mean {', '.join('config.' + c for c in close)}?)" if close else ""
        raise ConfigError(k, _flat_keys(config)[k], f"a known field; config.{k} does not exist{hint}")


def _one_of(field: str, value: Any, choices: Iterable[str]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(field, value, f"one of {choices}")


def validate(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> None:
    """Raises :class:`ConfigError` naming the first bad field. Call before building anything expensive."""
    import lightjax.models as lm

    check_known_fields(config)
    if config.model.name not in lm.list_models():
        import difflib

        close = difflib.get_close_matches(str(config.model.name), lm.list_models(), n=3, cutoff=0.5)
        hint = f"; did you mean {close}?" if close else ""
        raise ConfigError("model.name", config.model.name, f"a registered model (lightjax.models.list_models()){hint}")
    _one_of("model.dtype", config.model.dtype, ["float32", "bfloat16", "float64"])
    if config.model.dtype == "float64":
        import jax

        if not jax.config.jax_enable_x64:
            raise ConfigError("model.dtype", config.model.dtype, "float32 or bfloat16 unless jax_enable_x64 is on "
                              "(JAX_ENABLE_X64=1; python -m train turns it on for float64)")
    _one_of("model.init_format", config.model.init_format, ["auto", "torch", "orbax"])
    _one_of("optimizer.name", config.optimizer.name, ["sgd", "rmsprop", "adamw"])
    _one_of("schedule.name", config.schedule.name, ["cosine", "linear", "exponential", "constant"])
    _one_of("data.augment", config.data.augment, ["imagenet", "cifar", "none"])
    if config.model.in_chans not in (1, 3):
        raise ConfigError("model.in_chans", config.model.in_chans, "1 or 3")
    for field in ("batch_size", "data.image_size", "data.num_classes", "log_every_steps", "max_to_keep"):
        v = _get(config, field)
        if not isinstance(v, int) or v <= 0:
            raise ConfigError(field, v, "a positive integer")
    for field in ("eval_batch_size", "batch_size"):
        v = _get(config, field)
        if v and v % num_devices:
            raise ConfigError(field, v, f"a multiple of the device count ({num_devices} devices)")
        if v and v % num_processes:
            raise ConfigError(field, v, f"a multiple of the process count ({num_processes} processes)")
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise ConfigError("num_epochs", config.num_epochs, "> 0 (or set num_train_steps > 0)")
    if config.optimizer.learning_rate <= 0:
        raise ConfigError("optimizer.learning_rate", config.optimizer.learning_rate, "> 0")
    if not 0 <= config.label_smoothing < 1:
        raise ConfigError("label_smoothing", config.label_smoothing, "in [0, 1)")
    if not 0 <= config.ema_decay < 1:
        raise ConfigError("ema_decay", config.ema_decay, "in [0, 1)")
    if not 0 < config.data.eval_crop_pct <= 1:
        raise ConfigError("data.eval_crop_pct", config.data.eval_crop_pct, "in (0, 1]")
    _one_of("data.eval_transform", config.data.eval_transform, ["auto", "config"])
    from lightjax import transforms

    _one_of("data.interpolation", config.data.interpolation, sorted(transforms.INTERPOLATIONS))
    if not isinstance(config.data.eval_resize_size, int) or config.data.eval_resize_size < 0:
        raise ConfigError("data.eval_resize_size", config.data.eval_resize_size, "an integer >= 0 (0: use eval_crop_pct)")
    init_from = config.model.init_from
    if init_from_is_tag(init_from):
        cfg = pretrained_tag_cfg(config)
        if cfg.model != config.model.name:
            raise ConfigError("model.init_from", init_from, f"a pretrained tag of config.model.name="
                              f"{config.model.name!r} (this tag is for {cfg.model!r}: set --config.model.name="
                              f"{cfg.model})")
        if config.model.in_chans != 3:
            raise ConfigError("model.in_chans", config.model.in_chans, "3 when model.init_from is a pretrained tag "
                              "(its stem takes RGB; grey images are replicated to 3 channels)")
        if config.model.init_format != "auto":
            raise ConfigError("model.init_format", config.model.init_format, "'auto' when model.init_from is a "
                              "pretrained tag")
    elif init_from and "://" not in init_from and not os.path.exists(os.path.expanduser(init_from)):
        raise ConfigError("model.init_from", init_from, "an existing checkpoint file or directory, or a pretrained "
                          "tag 'name.tag' (lightjax.pretrained.list_pretrained())")
    for field in ("data.mean", "data.std"):
        v = tuple(_get(config, field))
        if len(v) not in (1, config.model.in_chans):
            raise ConfigError(field, v, f"1 or model.in_chans={config.model.in_chans} values")
    if config.optimizer.weight_decay < 0:
        raise ConfigError("optimizer.weight_decay", config.optimizer.weight_decay, ">= 0")


def _checkpoint_suffixes():
    # Files that model.init_from names by suffix (what lightjax.convert reads); anything else that is not an
    # existing path is a pretrained tag.
    from lightjax.convert.files import CHECKPOINT_SUFFIXES, FLAX_SUFFIXES

    return CHECKPOINT_SUFFIXES + FLAX_SUFFIXES


def init_from_is_tag(init_from: str) -> bool:
    """Whether ``model.init_from`` names a pretrained tag ("name.tag" or a model name: its default tag).

    A path that exists, anything with a directory separator, ``~`` or ``://``, and names ending in a checkpoint
    suffix (the ones lightjax.convert reads) are files; everything else is looked up as a tag.
    """
    if not init_from or "://" in init_from or init_from.startswith("~") or "/" in init_from or os.sep in init_from:
        return False
    if os.path.exists(init_from):
        return False
    return not init_from.lower().endswith(_checkpoint_suffixes())


def pretrained_tag_cfg(config: ml_collections.ConfigDict):
    """The ``PretrainedCfg`` of ``config.model.init_from`` when it is a tag, else None.

    Raises:
      ConfigError: the tag is not registered (the message lists close matches).
    """
    init_from = config.model.init_from
    if not init_from_is_tag(init_from):
        return None
    from lightjax import pretrained

    try:
        return pretrained.pretrained_cfg(init_from)
    except (ValueError, KeyError) as e:
        import difflib

        close = difflib.get_close_matches(init_from, pretrained.list_pretrained(), n=4, cutoff=0.6)
        hint = f"; close matches: {close}" if close else ""
        raise ConfigError("model.init_from", init_from, f"a registered pretrained tag or an existing checkpoint "
                          f"path{hint} ({e})") from None


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    v: Any = config
    for part in dotted.split("."):
        v = v[part]
    return v


__all__: List[str] = ["ConfigError", "validate", "check_known_fields", "init_from_is_tag", "pretrained_tag_cfg"]
