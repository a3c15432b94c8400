"""``python -m lightjax.predict --model NAME[.TAG] IMAGE...``: top-k ImageNet (or the tag's) labels per image.

```bash
python -m lightjax.predict --model mobilenet_v3_large_100.ra_in1k cat.jpg dog.png
python -m lightjax.predict --model squeezenet1_1 --checkpoint squeezenet1_1.msgpack --resize-size 256 cat.jpg
```

Images of any size and mode (grey, RGB, RGBA, palette; JPEG, PNG, anything PIL reads) go through the tag's
exact eval transform (:func:`lightjax.transforms.eval_transform`). ``--checkpoint FILE`` uses a local
PyTorch or converted (msgpack) file instead of the tag's weights; with a bare model name the transform then
comes from ``--crop-size/--resize-size/--crop-pct/--interpolation/--mean/--std`` (defaults: the model's
input size, crop_pct 0.875, bilinear, ImageNet mean/std).

This module also holds what ``python -m lightjax.validate`` shares with it: the model/transform options and
:func:`load_for_inference`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from typing import Any, Callable, Iterable, List, Optional, Sequence

import numpy as np

PROG = "python -m lightjax.predict"


class CLIError(Exception):
    """A user error (bad option, missing file, unknown tag): printed on one line, exit status 2."""


# ----------------------------------------------------------------------------------------------------------
# Options and model resolution (shared with lightjax.validate).
# ----------------------------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--model``/``--checkpoint``/transform options of the inference CLIs."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", required=True, metavar="NAME[.TAG]",
                   help="a lightjax model name (its default pretrained tag) or a pretrained tag 'name.tag' "
                        "(lightjax.pretrained.list_pretrained())")
    g.add_argument("--checkpoint", metavar="FILE",
                   help="use this local file instead of the tag's weights: a PyTorch .pth/.pt/.bin/.safetensors "
                        "state_dict or a lightjax .msgpack (python -m lightjax.convert)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="classes of the checkpoint's head (default: the tag's, else 1000)")
    g.add_argument("--labels", metavar="FILE", help="class names, one per line in class-index order "
                                                    "(default: the tag's label set; ImageNet-1k for 1000 classes)")
    t = parser.add_argument_group("eval transform (default: the tag's; these override it)")
    t.add_argument("--crop-size", type=int, default=None, help="centre crop (default: the tag's / model's size)")
    t.add_argument("--resize-size", type=int, default=None, help="resize the shorter side to this (torchvision)")
    t.add_argument("--crop-pct", type=float, default=None, help="shorter side = floor(crop / crop_pct) (timm)")
    t.add_argument("--interpolation", default=None, help="bilinear | bicubic | nearest (PIL filters)")
    t.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"))
    t.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"))
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference, with the transform and class names that belong to it."""

    spec: str  # what --model said
    name: str  # lightjax model name
    cfg: Optional[Any]  # the PretrainedCfg of the tag, if any
    model: Any
    variables: Any
    transform: Any  # lightjax.transforms.EvalTransform
    labels: Optional[List[str]]
    num_classes: int


def _read_labels(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except OSError as e:
        raise CLIError(f"--labels {path}: cannot read ({e.strerror or e})") from None


def load_for_inference(args: argparse.Namespace) -> LoadedModel:
    """Resolves ``--model``/``--checkpoint``/transform options into a model, variables, transform and labels.

    Raises:
      CLIError: unknown model or tag, unreadable checkpoint, bad transform option.
    """
    import lightjax.models as lm
    from lightjax import pretrained, transforms

    spec = args.model
    name, dot, _ = spec.partition(".")
    if name not in lm.list_models():
        import difflib

        close = difflib.get_close_matches(name, lm.list_models(), n=3, cutoff=0.5)
        raise CLIError(f"--model {spec}: unknown model {name!r}" + (f"; did you mean {close}?" if close else
                                                                       " (python -m lightjax.models lists them)"))
    cfg = None
    if dot or not args.checkpoint:
        try:
            cfg = pretrained.pretrained_cfg(spec)
        except (ValueError, KeyError) as e:
            extra = "" if dot else "; pass --checkpoint FILE to use a local file"
            raise CLIError(f"--model {spec}: {e}{extra}") from None
    num_classes = args.num_classes or (cfg.num_classes if cfg is not None else 1000)
    try:
        if args.checkpoint:
            if not os.path.exists(args.checkpoint):
                raise CLIError(f"--checkpoint {args.checkpoint}: no such file")
            # With a tag, the file is read with the tag's key layout and model settings.
            model, variables = pretrained.load_model(cfg.tag if cfg is not None else name, args.checkpoint,
                                                     num_classes=num_classes)
        else:
            kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
            model, variables = pretrained.load_model(cfg.tag, **kwargs)
    except CLIError:
        raise
    except (ValueError, OSError) as e:
        hint = (" (a checkpoint with another class count needs --num-classes N)"
                if "shape mismatch" in str(e) and not args.num_classes else "")
        raise CLIError(f"--model {spec}{' --checkpoint ' + args.checkpoint if args.checkpoint else ''}: {e}{hint}") \
            from None
    overrides = {k: v for k, v in dict(crop_size=args.crop_size, resize_size=args.resize_size, crop_pct=args.crop_pct,
                                       interpolation=args.interpolation, mean=args.mean, std=args.std).items()
                 if v is not None}
    if cfg is None and "crop_size" not in overrides:
        overrides["crop_size"] = int(lm.model_info(name)["input_size"])
    try:
        tf = transforms.eval_transform(cfg, **overrides)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    labels = None
    if args.labels:
        labels = _read_labels(args.labels)
    elif cfg is not None:
        labels = cfg.label_names
    if labels is not None and len(labels) != num_classes:
        if args.labels:
            raise CLIError(f"--labels {args.labels}: {len(labels)} names for a model with {num_classes} classes")
        labels = None  # a tag's label set with a replaced head: fall back to class indices
    return LoadedModel(spec=spec, name=name, cfg=cfg, model=model, variables=variables, transform=tf,
                       labels=labels, num_classes=int(num_classes))


@functools.lru_cache(maxsize=8)
def _jitted_apply(model: Any) -> Callable:
    # Keyed by the (hashable, frozen) module: loading the same model again reuses its compiled forwards.
    import jax

    import lightjax

    return jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=lightjax.compiler_options())


def make_forward(loaded: LoadedModel) -> Callable[[np.ndarray], np.ndarray]:
    """A jitted ``x (N, H, W, 3) float32 -> logits (N, C) float32 numpy`` with lightjax's compiler options."""
    apply = _jitted_apply(loaded.model)
    variables = loaded.variables
    return lambda x: np.asarray(apply(variables, x), np.float32)


def padded_batches(items: Sequence[Any], batch_size: int) -> Iterable[tuple]:
    """``(start, items[start:start + batch_size])`` chunks; callers pad the last one to keep one compiled shape."""
    for start in range(0, len(items), batch_size):
        yield start, items[start:start + batch_size]


def pad_to(x: np.ndarray, n: int) -> np.ndarray:
    """Pads a batch with copies of its first row to ``n`` rows (outputs of the padding are discarded)."""
    if len(x) == n:
        return x
    return np.concatenate([x, np.repeat(x[:1], n - len(x), axis=0)])


def progress(total: int, enabled: bool, unit: str = "img", desc: Optional[str] = None):
    """A tqdm bar on stderr (a no-op object when disabled or tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        class _Null:
            def update(self, n=1):
                pass

            def close(self):
                pass

        return _Null()
    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------------------
# predict.
# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Print the top-k labels and probabilities of a pretrained lightjax model for each "
                               "image (any size; grey, RGB or RGBA; JPEG, PNG, anything PIL reads).",
        epilog="example: python -m lightjax.predict --model mobilenet_v3_large_100.ra_in1k cat.jpg")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_model_arguments(p)
    p.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    return p


def _open(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CLIError(f"{path}: not a readable image ({e})") from None


def predict(loaded: LoadedModel, paths: Sequence[str], top: int = 5, batch_size: int = 16,
            show_progress: bool = True) -> List[dict]:
    """Top-``top`` predictions for each image file.

    Returns:
      One dict per image: ``image`` (path), ``size`` ((width, height)), ``mode`` (PIL mode) and ``top``, a list
      of ``{"index", "label", "probability"}``, most probable first.
    """
    from lightjax import labels as lj_labels

    forward = make_forward(loaded)
    out: List[dict] = []
    bar = progress(len(paths), show_progress and len(paths) > batch_size)
    for _, chunk in padded_batches(list(paths), batch_size):
        imgs = [_open(p) for p in chunk]
        x = np.stack([loaded.transform(im) for im in imgs])
        logits = forward(pad_to(x, min(batch_size, len(paths))))[: len(chunk)]
        decoded = lj_labels.decode_predictions(logits, top=top, labels=loaded.labels)
        for path, im, preds in zip(chunk, imgs, decoded):
            out.append({"image": path, "size": im.size, "mode": im.mode,
                        "top": [{"index": i, "label": lab, "probability": p} for i, lab, p in preds]})
        bar.update(len(chunk))
    bar.close()
    return out


def format_predictions(results: Sequence[dict]) -> str:
    """The table ``main`` prints: a header per image, then ``probability%  #index  label`` rows."""
    lines = []
    for r in results:
        w, h = r["size"]
        lines.append(f"{r['image']}  ({w}x{h} {r['mode']})")
        for t in r["top"]:
            lines.append(f"  {100.0 * t['probability']:9.5f}%  #{t['index']:<5d} {t['label']}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; returns the exit status (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.top < 1:
            raise CLIError(f"--top {args.top}: must be >= 1")
        if args.batch_size is not None and args.batch_size < 1:
            raise CLIError(f"--batch-size {args.batch_size}: must be >= 1")
        missing = [p for p in args.images if not os.path.isfile(p)]
        if missing:  # before loading a model: fail fast
            raise CLIError(f"no such image file: {', '.join(missing)}")
        loaded = load_for_inference(args)
        results = predict(loaded, args.images, top=args.top, batch_size=args.batch_size or 16,
                          show_progress=not args.no_progress)
    except CLIError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": loaded.spec, "results": results}, indent=1))
    else:
        print(format_predictions(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
