"""Pretrained tags: one entry per published checkpoint, ``"<lightjax name>.<tag>"`` (timm's naming).

```python
import lightjax.models as lm
lm.list_pretrained("mobilenet_v3*")            # ['mobilenet_v3_large_100.miil_in21k', ...]
cfg = lm.pretrained_cfg("mobilenet_v3_large_100")             # the default tag's PretrainedCfg
model, variables = lm.load_model("mobilenet_v3_large_100", pretrained=True)
model, variables = lm.load_model("mobilenet_v3_large_100.ra_in1k", num_classes=37)   # new head
```

The built-in table is data in each family file (``PRETRAINED_CFGS`` in ``lightjax/models/<family>.py``), each
row registered here with :func:`register_pretrained`, the same function users call for their own files.
Downloading, verifying and caching live in :mod:`lightjax.hub`; ``python -m lightjax.pretrained --markdown``
prints the table of tags (the one in README.md).

Default tag of a model: the tag with the best published top-1 among its ImageNet-1k tags (1000 classes,
``label_set="imagenet-1k"``, figures at the training crop size); a model whose tags have no figures defaults
to its first registered tag.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import logging
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

from flax.core import FrozenDict

from lightjax._pretrained_checks import CROP_MODES, INTERPOLATIONS, check_fields  # noqa: F401 (re-exported)
from lightjax.models import registry

log = logging.getLogger(__name__)

__all__ = ["PretrainedCfg", "register_pretrained", "unregister_pretrained", "list_pretrained", "pretrained_cfg",
           "default_tag", "load_model", "markdown_table"]



@dataclasses.dataclass(frozen=True)
class PretrainedCfg:
    """One published checkpoint of a registered model and how to evaluate it.

    Attributes:
      tag: full name ``"<lightjax name>.<tag>"``.
      model: the registered lightjax name.
      url: where the file is published (torchvision: its name ends with the sha256 prefix).
      sha256: hex digest of the ``url`` file, whole or a prefix (checked before a file is trusted).
      hf_hub_id: Hugging Face hub repo (``"timm/mobilenetv3_large_100.ra_in1k"``); ``filename`` in it.
      filename: file in the hub repo (``model.safetensors``: loads without torch).
      revision: hub revision (None = the repo's default branch).
      file: a local file (own checkpoints); used instead of any download.
      layout: key layout for :func:`lightjax.convert.from_torch` (``"torchvision"``, ``"timm"``, ``"seed"``).
      model_kwargs: model settings the weights need (e.g. ``{"act": "relu6"}``, ``{"bn_eps": 1e-5}``).
      num_classes: classes of the checkpoint's head.
      crop_size: eval crop, H = W.
      resize_size: torchvision rule: the shorter side is resized to this before the centre crop.
      crop_pct: timm rule: the shorter side is resized to ``floor(crop_size / crop_pct)``.
      interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` (PIL, antialiased).
      mean, std: per-channel normalisation of ``x / 255``.
      crop_mode: ``"center"``.
      test_crop_size, test_crop_pct: the larger test-time size where the publisher reports a better figure.
      label_set: ``"imagenet-1k"`` or another name (None: unnamed classes).
      license: the weights' license as published.
      top1, top5: published ImageNet-1k accuracy (%) at ``crop_size``.
      test_top1, test_top5: the same at ``test_crop_size``.
      source: the publisher's own name for the weights (``"torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V2"``,
        ``"timm mobilenetv3_large_100.ra_in1k"``).
    """

    tag: str
    model: str
    url: Optional[str] = None
    sha256: Optional[str] = None
    hf_hub_id: Optional[str] = None
    filename: str = "model.safetensors"
    revision: Optional[str] = None
    file: Optional[str] = None
    layout: Optional[str] = None
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=FrozenDict, hash=False)
    num_classes: int = 1000
    crop_size: int = 224
    resize_size: Optional[int] = None
    crop_pct: Optional[float] = None
    interpolation: str = "bilinear"
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_mode: str = "center"
    test_crop_size: Optional[int] = None
    test_crop_pct: Optional[float] = None
    label_set: Optional[str] = "imagenet-1k"
    license: Optional[str] = None
    top1: Optional[float] = None
    top5: Optional[float] = None
    test_top1: Optional[float] = None
    test_top5: Optional[float] = None
    source: Optional[str] = None

    @property
    def name(self) -> str:
        """The tag without the model name (``"ra_in1k"``)."""
        return self.tag.split(".", 1)[1]

    @property
    def resize_shorter(self) -> int:
        """Shorter side before the centre crop: ``resize_size``, else ``floor(crop_size / crop_pct)`` (timm)."""
        if self.resize_size is not None:
            return int(self.resize_size)
        return int(math.floor(self.crop_size / self.crop_pct))

    @property
    def label_names(self) -> Optional[List[str]]:
        """Class names of ``label_set`` (the 1000 ImageNet-1k names), None when the set has no names."""
        from lightjax import labels  # local: labels ships a data file that only predictions need

        return labels.label_names(self.label_set)

    def to_dict(self) -> Dict[str, Any]:
        """Plain fields (``model_kwargs`` as a dict), e.g. for model cards and exports."""
        out = dataclasses.asdict(self)
        out["model_kwargs"] = dict(self.model_kwargs)
        return out


_FIELDS = tuple(f.name for f in dataclasses.fields(PretrainedCfg) if f.name not in ("tag", "model"))
_REGISTRY: Dict[str, PretrainedCfg] = {}
_BUILTIN: set = set()


# ------------------------------------------------------------------------------------------------------------
# Registering
# ------------------------------------------------------------------------------------------------------------
def register_pretrained(tag: str, *, overwrite: bool = False, **fields: Any) -> PretrainedCfg:
    """Registers a checkpoint under ``"<lightjax name>.<tag>"`` (the built-in table is made with this).

    Args:
      tag: ``"mobilenet_v3_small_100.acme_pets"``; the model must be registered.
      overwrite: replace an existing entry of the same tag (otherwise an error).
      **fields: :class:`PretrainedCfg` fields: a source (``url`` [+ ``sha256``], ``hf_hub_id`` [+ ``filename``]
        or a local ``file``), ``layout`` (default: the family's primary), ``num_classes``, ``crop_size`` and
        exactly one of ``resize_size`` / ``crop_pct``, ``interpolation``, ``mean``, ``std``, ... Settings the
        layout requires (e.g. ``act="relu6"`` for timm's MobileNetV1) are added to ``model_kwargs``.

    Returns:
      The frozen :class:`PretrainedCfg`.

    Raises:
      ValueError: naming the field that is wrong (unknown field, bad value, no source, unknown model...).
    """
    cfg = _make_cfg(tag, fields)
    if cfg.tag in _REGISTRY and not overwrite:
        raise ValueError(f"pretrained tag {cfg.tag!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[cfg.tag] = cfg
    _BUILTIN.discard(cfg.tag)
    return cfg


def unregister_pretrained(tag: str) -> None:
    """Removes a tag registered with :func:`register_pretrained` (built-in tags included)."""
    if tag not in _REGISTRY:
        raise ValueError(f"pretrained tag {tag!r} is not registered")
    del _REGISTRY[tag]
    _BUILTIN.discard(tag)


def _make_cfg(tag: str, fields: Dict[str, Any]) -> PretrainedCfg:
    model, checked = check_fields(tag, fields, _FIELDS)
    return PretrainedCfg(tag=tag, model=model, **checked)


def _register_builtin() -> None:
    """Registers every family's ``PRETRAINED_CFGS`` rows (data in ``lightjax/models/<family>.py``)."""
    import importlib

    families = sorted({registry.model_family(n) for n in registry.list_models()})
    for fam in families:
        module = importlib.import_module(f"lightjax.models.{fam}")
        for tag, row in getattr(module, "PRETRAINED_CFGS", {}).items():
            register_pretrained(tag, **row)
            _BUILTIN.add(tag)


# ------------------------------------------------------------------------------------------------------------
# Looking up
# ------------------------------------------------------------------------------------------------------------
def list_pretrained(pattern: Optional[str] = None) -> List[str]:
    """Sorted registered tags, optionally filtered by a shell pattern on the full tag (``"mobilenet_v3*"``,
    ``"*.tv_in1k"``); a bare model name lists that model's tags."""
    tags = sorted(_REGISTRY)
    if pattern:
        if "." not in pattern and not any(c in pattern for c in "*?[") and pattern in registry.list_models():
            pattern += ".*"
        tags = [t for t in tags if fnmatch.fnmatch(t, pattern)]
    return tags


def default_tag(model: str) -> str:
    """The default tag of ``model`` (see the module docstring for the rule)."""
    tags = [cfg for cfg in _REGISTRY.values() if cfg.model == model]
    if not tags:
        raise ValueError(_no_tag_message(model))
    ranked = [c for c in tags if c.label_set == "imagenet-1k" and c.num_classes == 1000 and c.top1 is not None]
    if ranked:
        return max(ranked, key=lambda c: (c.top1, [-ord(ch) for ch in c.tag])).tag
    return tags[0].tag  # registration order


def pretrained_cfg(name_or_tag: str) -> PretrainedCfg:
    """The :class:`PretrainedCfg` of ``"name.tag"``, or of ``name``'s default tag.

    Raises:
      ValueError: unknown tag or a model without registered weights, listing close matches.
    """
    if "." not in name_or_tag:
        return _REGISTRY[default_tag(name_or_tag)]
    if name_or_tag in _REGISTRY:
        return _REGISTRY[name_or_tag]
    model = name_or_tag.split(".", 1)[0]
    close = difflib.get_close_matches(name_or_tag, list(_REGISTRY), n=5, cutoff=0.6)
    same_model = list_pretrained(model + ".*")
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    listing = (f" list_pretrained({model + '*'!r}) = {same_model}" if same_model else " " + _no_tag_message(model))
    raise ValueError(f"unknown pretrained tag {name_or_tag!r}.{hint}{listing}")


def _no_tag_message(model: str) -> str:
    if model not in registry.list_models():
        close = difflib.get_close_matches(model, registry.list_models(), n=3, cutoff=0.5)
        return (f"unknown model {model!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                + "; see lightjax.models.list_models()")
    with_weights = sorted({c.model for c in _REGISTRY.values()})
    return (f"no pretrained weights are registered for {model!r} (models with weights: {', '.join(with_weights)}); "
            f"register a file with lightjax.models.register_pretrained")


# ------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------
#: Fields that change which variables a model has: a tag loaded with other values goes through the head logic.
_STRUCTURAL = ("num_classes", "features_only", "out_indices")


def load_model(name_or_tag: str, checkpoint: Any = None, *, pretrained: bool = False, **kwargs: Any):
    """A ready model and its variables: ``model, variables = load_model("mobilenet_v3_large_100.ra_in1k")``.

    Args:
      name_or_tag: ``"name.tag"`` (that checkpoint), or a model name with ``pretrained=True`` (its default tag)
        or with ``checkpoint``.
      checkpoint: a file (``.pth/.pt/.bin/.safetensors`` PyTorch state_dict, or a lightjax ``.msgpack``) or a
        state_dict; the settings its key layout implies (e.g. ReLU6) are applied. With a tag, the tag's layout
        and settings are used for this file (e.g. one fetched by hand).
      pretrained: load ``name``'s default tag.
      **kwargs: ``create_model`` fields, plus ``strict`` for :func:`lightjax.convert.from_torch`. A
        ``num_classes`` other than the tag's re-initialises the classifier (logged), as ``strict=False`` does.

    Returns:
      ``(model, variables)`` with ``variables = {'params', 'batch_stats'}``.

    Raises:
      ValueError: unknown name or tag; :class:`lightjax.hub.WeightsUnavailableError` when no source of the
      tag's file can be reached (naming the URLs tried and where to put the file by hand).
    """
    from lightjax import convert

    strict = kwargs.pop("strict", True)
    tagged = "." in name_or_tag
    if checkpoint is not None:
        cfg = pretrained_cfg(name_or_tag) if tagged else None
        model_name = cfg.model if cfg else name_or_tag
        if cfg is not None:
            kwargs = {**cfg.model_kwargs, **kwargs}
        return _load_checkpoint(model_name, checkpoint, strict, cfg.layout if cfg else None, kwargs)
    if not tagged and not pretrained:
        raise ValueError(
            f"load_model({name_or_tag!r}): give a tag ('{name_or_tag}.<tag>', see "
            f"list_pretrained({name_or_tag + '*'!r})), pretrained=True for the default tag, or checkpoint=PATH; "
            f"for random weights use create_model + init_variables")
    cfg = pretrained_cfg(name_or_tag)
    base = {**cfg.model_kwargs, "num_classes": cfg.num_classes}
    full = {**base, **kwargs}
    variables = _tag_variables(cfg)
    if any(k in kwargs and kwargs[k] != base.get(k, _UNSET) for k in _STRUCTURAL if k != "num_classes") or \
            full["num_classes"] != cfg.num_classes:
        # Another head (or none): route the tag's variables through the converter's head logic, which keeps
        # every body weight and re-initialises (or drops) the classifier, and logs it.
        sd = convert.to_torch(cfg.model, variables, layout=cfg.layout, **base)
        variables = convert.from_torch(cfg.model, sd, layout=cfg.layout, strict=False, **full)
    return registry.create_model(cfg.model, **full), variables


_UNSET = object()


def _load_checkpoint(name: str, checkpoint: Any, strict: bool, layout: Optional[str], kwargs: Dict[str, Any]):
    """A file or state_dict to ``(model, variables)``: settings its layout implies applied unless given."""
    from lightjax import convert

    if isinstance(checkpoint, str) and checkpoint.endswith(convert.FLAX_SUFFIXES):
        return registry.create_model(name, **kwargs), convert.load_flax(checkpoint)
    sd = convert.read_checkpoint(checkpoint)
    kwargs = {**convert.detect_layout(name, sd, layout=layout, **kwargs).requires, **kwargs}
    model = registry.create_model(name, **kwargs)
    return model, convert.from_torch(name, sd, strict=strict, layout=layout, **kwargs)


def _tag_variables(cfg: PretrainedCfg) -> Dict[str, Any]:
    """The tag's variables at its own head: from the converted cache, else fetched and converted (once per
    host: a lock per tag lets concurrent processes wait for the first one's result)."""
    from lightjax import convert, hub

    with hub.lock(hub.converted_path(cfg)):
        variables = hub.load_converted(cfg)
        if variables is not None:
            return variables
        src = hub.fetch(cfg)
        variables = convert.from_torch(cfg.model, src, layout=cfg.layout, num_classes=cfg.num_classes,
                                       **cfg.model_kwargs)
        hub.save_converted(cfg, variables, src)
        return variables


# ------------------------------------------------------------------------------------------------------------
# The table as markdown (README.md, docs/pretrained.md)
# ------------------------------------------------------------------------------------------------------------
_NORMS = {((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)): "ImageNet mean/std",
          ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)): "mean/std 0.5", ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)): "mean 0, std 1"}


def transform_summary(cfg: PretrainedCfg) -> str:
    """``"resize 232, crop 224, bilinear, ImageNet mean/std"`` (the rule that makes ``cfg``'s eval input)."""
    if cfg.resize_size is not None:
        size = f"resize {cfg.resize_size}, crop {cfg.crop_size}"
    else:
        size = f"resize {cfg.resize_shorter} (crop_pct {cfg.crop_pct:g}), crop {cfg.crop_size}"
    norm = _NORMS.get((tuple(cfg.mean), tuple(cfg.std)), f"mean {cfg.mean}, std {cfg.std}")
    return f"{size}, {cfg.interpolation}, {norm}"


def _source_cell(cfg: PretrainedCfg) -> str:
    parts = []
    if cfg.hf_hub_id:
        parts.append(f"hub `{cfg.hf_hub_id}`")
    if cfg.url:
        parts.append(f"[`{cfg.url.rsplit('/', 1)[-1]}`]({cfg.url})")
    if cfg.file:
        parts.append(f"file `{cfg.file}`")
    return " or ".join(parts)


def markdown_table(tags: Optional[List[str]] = None, builtin_only: bool = True) -> str:
    """The tag table as markdown: tag (default in bold), weights, published top-1 / top-5, eval transform."""
    if tags is None:
        tags = [t for t in list_pretrained() if t in _BUILTIN or not builtin_only]
    defaults = {default_tag(m) for m in {_REGISTRY[t].model for t in tags}}
    lines = ["| tag | source | weights | top-1 / top-5 | eval transform |", "|---|---|---|---|---|"]
    for t in tags:
        cfg = _REGISTRY[t]
        name = f"**`{t}`** (default)" if t in defaults else f"`{t}`"
        acc = f"{cfg.top1:.2f} / {cfg.top5:.2f}" if cfg.top1 is not None and cfg.top5 is not None else "–"
        if cfg.test_top1 is not None and cfg.test_top5 is not None:
            acc += f" ({cfg.test_crop_size} px: {cfg.test_top1:.2f} / {cfg.test_top5:.2f})"
        if cfg.num_classes != 1000 or cfg.label_set != "imagenet-1k":
            acc = f"– ({cfg.num_classes} classes, {cfg.label_set})"
        lines.append(f"| {name} | {cfg.source or ''} | {_source_cell(cfg)} | {acc} | {transform_summary(cfg)} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m lightjax.pretrained [--markdown] [PATTERN]``: list the registered tags."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m lightjax.pretrained", description=main.__doc__)
    p.add_argument("pattern", nargs="?", default=None, help="shell pattern on tags, e.g. 'mobilenet_v3*'")
    p.add_argument("--markdown", action="store_true", help="print the markdown table (README.md's)")
    p.add_argument("--sources", action="store_true",
                   help="print '<path under a mirror>  <public URL>' per file, to fill a LIGHTJAX_WEIGHTS_MIRROR")
    args = p.parse_args(argv)
    tags = list_pretrained(args.pattern)
    if args.markdown:
        print(markdown_table(tags), end="")
        return 0
    if args.sources:
        from lightjax import hub

        for t in tags:
            for rel, url in hub.mirror_sources(_REGISTRY[t]):
                print(f"{rel}  {url}")
        return 0
    for t in tags:
        cfg = _REGISTRY[t]
        star = "*" if default_tag(cfg.model) == t else " "
        top1 = f"{cfg.top1:6.2f}" if cfg.top1 is not None else "     –"
        print(f"{star} {t:45s} {top1}  {cfg.source or ''}")
    return 0


_register_builtin()

if __name__ == "__main__":
    raise SystemExit(main())
