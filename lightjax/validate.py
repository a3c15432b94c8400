"""``python -m lightjax.validate --model NAME[.TAG] --data DIR_OR_TFDS_NAME``: top-1/top-5 as timm's validate.py.

```bash
python -m lightjax.validate --model mobilenet_v3_large_100.tv2_in1k --data /data/imagenet/val
python -m lightjax.validate --model xception65.tf_in1k --data imagenet2012 --data-dir ~/tensorflow_datasets
python -m lightjax.validate --model squeezenet1_1 --checkpoint sq.msgpack --resize-size 256 --data /data/val
```

Data:

- an **ImageFolder** directory, ``DIR/<class>/<image>``: classes are the sorted subdirectory names and files
  with an image extension are taken in sorted order, as torchvision's ``ImageFolder``. A class directory
  must say which of the model's classes it is: named by class index (``0`` .. ``N-1``), by the model's
  label name (``tabby``), by ImageNet WordNet id (``n02123045``), or, when there are exactly N directories,
  by anything (their sorted order is the class index, the ImageFolder convention).
- a **tfds** dataset already prepared in ``--data-dir`` (``imagenet2012``, ``imagenette``...), read through
  ``tfds.data_source`` (no download, no TensorFlow); its label names are mapped the same way (imagenette's
  wnids land on the right ImageNet classes).

Top-k is ``topk`` over the logits (a hit when the label is among the k largest), summed over all images,
as in timm's ``validate.py``. The published figure of the tag is printed beside the measured one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import sys
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from lightjax.predict import CLIError, LoadedModel, add_model_arguments, load_for_inference, make_forward, \
    pad_to, progress

PROG = "python -m lightjax.validate"
# torchvision.datasets.folder.IMG_EXTENSIONS (matched case-insensitively, as there).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_WNID = re.compile(r"^n\d{8}$")


# ----------------------------------------------------------------------------------------------------------
# Datasets: a list of examples plus a loader, labels already mapped onto the model's classes.
# ----------------------------------------------------------------------------------------------------------


def map_classes(names: Sequence[str], num_classes: int, labels: Optional[Sequence[str]],
                wnids: Optional[Sequence[str]]) -> Tuple[List[int], str]:
    """Model class index of each dataset class name, and how it was matched.

    Rules, in order: every name a class index; every name one of the model's labels; every name one of its
    WordNet ids; exactly ``num_classes`` names (sorted order = class index, the ImageFolder convention).

    Raises:
      CLIError: naming the classes that match nothing.
    """
    names = [str(n) for n in names]
    if names and all(n.isdigit() and int(n) < num_classes for n in names):
        return [int(n) for n in names], "class indices"
    if labels is not None:
        index = {lab: i for i, lab in enumerate(labels)}
        if all(n in index for n in names):
            return [index[n] for n in names], "label names"
    if wnids is not None:
        index = {w: i for i, w in enumerate(wnids)}
        if all(n in index for n in names):
            return [index[n] for n in names], "WordNet ids"
    if len(names) == num_classes:
        return list(range(num_classes)), "sorted order (ImageFolder convention)"
    known = set(labels or ()) | set(wnids or ())
    bad = [n for n in names if n not in known and not (n.isdigit() and int(n) < num_classes)]
    raise CLIError(
        f"cannot map the {len(names)} dataset classes onto the model's {num_classes} classes (e.g. "
        f"{bad[:5]} match no class index, label name or WordNet id); name class directories by class index "
        f"(0..{num_classes - 1}), by the model's label names, by ImageNet wnid (n01440764...), or use exactly "
        f"{num_classes} classes (their sorted order is the class index)")


def image_folder(root: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    """torchvision ``ImageFolder`` order: (sorted class names, [(path, index into the class names)])."""
    if not os.path.isdir(root):
        raise CLIError(f"--data {root}: not a directory (and not a tfds name: those have no '/')")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise CLIError(f"--data {root}: no class subdirectories (expected DIR/<class>/<image>)")
    samples = []
    for ci, c in enumerate(classes):
        for dirpath, _, fnames in sorted(os.walk(os.path.join(root, c), followlinks=True)):
            for fname in sorted(fnames):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, fname), ci))
    if not samples:
        raise CLIError(f"--data {root}: no images ({', '.join(IMG_EXTENSIONS)}) under its class directories")
    return classes, samples


def _load_file(path: str):
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()  # decode now (inside the worker thread), then the file can close
            return img
    except OSError as e:
        raise CLIError(f"{path}: not a readable image ({e})") from None


class Dataset:
    """``len``-able examples with ``load(i) -> (image, model class)``."""

    def __init__(self, description: str, n: int, load: Callable[[int], Tuple[Any, int]], mapping: str,
                 num_dataset_classes: int):
        self.description, self.n, self.load, self.mapping = description, n, load, mapping
        self.num_dataset_classes = num_dataset_classes

    def __len__(self) -> int:
        return self.n


def open_dataset(args: argparse.Namespace, loaded: LoadedModel) -> Dataset:
    """The ``--data`` ImageFolder directory or prepared tfds dataset, labels mapped onto the model's classes."""
    from lightjax import labels as lj_labels

    label_set = getattr(loaded.cfg, "label_set", None) if loaded.cfg is not None else None
    if loaded.labels is None and loaded.num_classes == 1000:
        label_set = "imagenet-1k"  # decode_predictions' default naming of a 1000-class head
    wnids = lj_labels.label_wnids(label_set)
    if wnids is not None and len(wnids) != loaded.num_classes:
        wnids = None
    names = loaded.labels if loaded.labels is not None else lj_labels.label_names(label_set)
    if names is not None and len(names) != loaded.num_classes:
        names = None
    data = args.data
    if os.sep in data or "/" in data or os.path.isdir(data):
        classes, samples = image_folder(data)
        mapping, how = map_classes(classes, loaded.num_classes, names, wnids)

        def load(i: int):
            path, ci = samples[i]
            return _load_file(path), mapping[ci]

        return Dataset(f"ImageFolder {data}", len(samples), load, how, len(classes))
    return _tfds_dataset(args, loaded, names, wnids)


def _tfds_dataset(args, loaded: LoadedModel, names, wnids) -> Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise CLIError(f"--data {args.data}: not a directory, and tensorflow_datasets is not installed for a "
                       f"tfds name ({e})") from None
    data_dir = os.path.expanduser(args.data_dir) if args.data_dir else None
    try:
        source = tfds.data_source(args.data, split=args.split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises a zoo of types for "not prepared" / "unknown name" / "no such split"
        where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
        raise CLIError(f"--data {args.data} --split {args.split}: no prepared tfds dataset in {where} "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); prepare it first "
                       f"(tfds build {args.data} --file_format=array_record) or pass an ImageFolder "
                       f"directory") from None
    feat = source.dataset_info.features[args.label_key]
    ds_names = list(getattr(feat, "names", None) or [str(i) for i in range(feat.num_classes)])
    mapping, how = map_classes(ds_names, loaded.num_classes, names, wnids)
    image_key, label_key = args.image_key, args.label_key

    def load(i: int):
        ex = source[i]
        return np.asarray(ex[image_key]), mapping[int(ex[label_key])]

    return Dataset(f"tfds {args.data}/{args.split}", len(source), load, how, len(ds_names))


# ----------------------------------------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------------------------------------


def evaluate(loaded: LoadedModel, dataset: Dataset, batch_size: int = 64, workers: int = 4,
             limit: int = 0, show_progress: bool = True) -> dict:
    """Top-1/top-5 (percent) of ``loaded`` on ``dataset``, and the images per second of the timed loop.

    Images are decoded and transformed in ``workers`` threads (PIL releases the GIL), in dataset order; the
    last batch is padded to ``batch_size`` (one compiled shape) and the padding is not counted. The forward is
    compiled on a dummy batch first, so img/s measures the steady state (data loading included), as timm does.
    """
    n = min(len(dataset), limit) if limit else len(dataset)
    if n == 0:
        raise CLIError(f"{dataset.description}: no images")
    forward = make_forward(loaded)
    bs = min(batch_size, n)
    c = loaded.transform.crop_size
    forward(np.zeros((bs, c, c, 3), np.float32))  # compile outside the timed loop
    k = min(5, loaded.num_classes)
    tf = loaded.transform

    def one(i: int):
        img, label = dataset.load(i)
        return tf(img), label

    hits1 = hits5 = 0
    bar = progress(n, show_progress, desc="validate")
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: List[Any] = []
        starts = list(range(0, n, bs))
        for b, start in enumerate(starts):
            # Keep two batches in flight ahead of the one being computed.
            while len(pending) < 3 and b + len(pending) < len(starts):
                s = starts[b + len(pending)]
                pending.append([pool.submit(one, i) for i in range(s, min(s + bs, n))])
            items = [f.result() for f in pending.pop(0)]
            x = np.stack([it[0] for it in items])
            y = np.asarray([it[1] for it in items])
            logits = forward(pad_to(x, bs))[: len(items)]
            # timm's accuracy(): a hit when the label is among the k largest logits (ties: lower index first).
            topk = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
            hits1 += int(np.sum(topk[:, 0] == y))
            hits5 += int(np.sum(np.any(topk == y[:, None], axis=-1)))
            bar.update(len(items))
    dt = time.perf_counter() - t0
    bar.close()
    return {"top1": 100.0 * hits1 / n, "top5": 100.0 * hits5 / n, "top1_err": 100.0 - 100.0 * hits1 / n,
            "top5_err": 100.0 - 100.0 * hits5 / n, "num_images": n, "img_per_sec": n / max(dt, 1e-9),
            "batch_size": bs}


def _write_json_atomic(path: str, obj: dict) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    from lightjax._atomic import atomic_write

    atomic_write(path, json.dumps(obj, indent=1) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Top-1/top-5 accuracy of a lightjax model on an ImageFolder directory or a prepared tfds "
                    "dataset, computed as timm's validate.py, with img/s and the tag's published figure.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="ImageFolder layout: DIR/<class>/<image>; classes are the sorted directory names, images the\n"
               "sorted files with an image extension (as torchvision's ImageFolder). Each class directory\n"
               "must be named by class index (0..N-1), by the model's label name (e.g. 'tabby'), or by\n"
               "ImageNet WordNet id (n02123045); or there must be exactly N of them (sorted order = class index).\n"
               "tfds: a dataset prepared in --data-dir (no download); its label names are mapped the same way.")
    add_model_arguments(p)
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, metavar="DIR_OR_TFDS_NAME",
                   help="ImageFolder directory, or a tfds name (imagenet2012, imagenette) prepared in --data-dir")
    d.add_argument("--data-dir", default=None, help="tfds data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    d.add_argument("--split", default="validation", help="tfds split (default validation)")
    d.add_argument("--image-key", default="image", help="tfds image feature")
    d.add_argument("--label-key", default="label", help="tfds label feature")
    d.add_argument("--limit", type=int, default=0, help="evaluate the first N images only")
    d.add_argument("--workers", type=int, default=4, help="decoding threads (default 4)")
    p.add_argument("--results-file", default=None, help="also write the results as JSON here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; returns the exit status (0 ok, 2 user error)."""
    args = build_parser().parse_args(argv)
    try:
        if args.batch_size is not None and args.batch_size < 1:
            raise CLIError(f"--batch-size {args.batch_size}: must be >= 1")
        if args.limit < 0:
            raise CLIError(f"--limit {args.limit}: must be >= 0")
        loaded = load_for_inference(args)
        dataset = open_dataset(args, loaded)
        print(f"{PROG}: {loaded.spec}{' (' + args.checkpoint + ')' if args.checkpoint else ''} on "
              f"{dataset.description}: {len(dataset)} images, {dataset.num_dataset_classes} classes mapped by "
              f"{dataset.mapping}; transform {loaded.transform}", file=sys.stderr)
        res = evaluate(loaded, dataset, batch_size=args.batch_size or 64, workers=args.workers, limit=args.limit,
                       show_progress=not args.no_progress)
    except CLIError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f" * Acc@1 {res['top1']:.3f} ({res['top1_err']:.3f})  Acc@5 {res['top5']:.3f} ({res['top5_err']:.3f})  "
          f"on {res['num_images']} images, {res['img_per_sec']:.1f} img/s (batch {res['batch_size']})")
    cfg = loaded.cfg
    if cfg is not None and getattr(cfg, "top1", None) is not None:
        top5 = f" / top-5 {cfg.top5:.3f}" if getattr(cfg, "top5", None) is not None else ""
        print(f"   published: top-1 {cfg.top1:.3f}{top5} ({cfg.source}, {cfg.tag})")
    if args.results_file:
        res = {"model": loaded.spec, "checkpoint": args.checkpoint, "data": dataset.description,
               "class_mapping": dataset.mapping, **res,
               "published_top1": getattr(cfg, "top1", None), "published_top5": getattr(cfg, "top5", None)}
        _write_json_atomic(args.results_file, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
