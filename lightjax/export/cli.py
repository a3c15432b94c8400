"""``python -m lightjax.export MODEL CHECKPOINT OUT``: an ONNX file or a ``jax.export`` artifact.

The format follows OUT's suffix (``.onnx``, ``.jaxexport``) or ``--format``. CHECKPOINT is a file (Flax
msgpack from ``python -m lightjax.convert``, or a PyTorch ``.pth/.safetensors``) or a pretrained tag
(``mobilenet_v2_100.tv_in1k``), whose eval transform and class names then go into the ONNX metadata.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, Sequence, Union

FORMATS = {".onnx": "onnx", ".jaxexport": "jaxexport"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightjax.export",
                                description="Write an ONNX file or a jax.export artifact of a model's eval forward.")
    p.add_argument("model", help="registered lightjax model name")
    p.add_argument("checkpoint", help="Flax msgpack (python -m lightjax.convert output), a PyTorch "
                                      ".pth/.safetensors, or a pretrained tag NAME.TAG")
    p.add_argument("out", help="output file: .onnx (ONNX) or .jaxexport (serialized jax.export.Exported)")
    p.add_argument("--format", choices=sorted(set(FORMATS.values())), default=None,
                   help="output format (default: from OUT's suffix)")
    p.add_argument("--batch", default=None, help="dynamic batch axis name (default 'B' for ONNX, 'b' for "
                                                 "jax.export) or a fixed int")
    p.add_argument("--input-size", type=int, default=None, help="spatial size (default: the model's native one)")
    p.add_argument("--num-classes", type=int, default=None, help="head size the checkpoint was made with")
    p.add_argument("--nchw", action="store_true", help="ONNX: the input is (B, C, H, W) instead of NHWC")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17, at least 14)")
    p.add_argument("--metadata-from", default=None, metavar="TAG",
                   help="ONNX: record this pretrained tag's eval transform and class names (for a checkpoint "
                        "file holding that tag's weights)")
    p.add_argument("--check", action="store_true",
                   help="ONNX: run the file in onnxruntime on random images and print its max error vs lightjax")
    p.add_argument("--platforms", default=None, help="jax.export: comma-separated cpu,cuda,rocm,tpu (default cpu)")
    p.add_argument("--precision", default=None, help="jax.export: matmul precision while tracing (e.g. highest)")
    return p


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    for suffix, fmt in FORMATS.items():
        if args.out.lower().endswith(suffix):
            return fmt
    raise ValueError(f"cannot tell the format of {args.out!r}: name it *.onnx or *.jaxexport, or pass --format")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line; returns the exit status (2 with a one-line ``error:`` on bad input)."""
    args = _parser().parse_args(argv)
    from lightjax.export import checkpoint, jax_export, onnx

    try:
        fmt = _format(args)
        wrong = ([f"--{k}" for k in ("nchw", "opset", "metadata_from", "check") if getattr(args, k)]
                 if fmt == "jaxexport" else [f"--{k}" for k in ("platforms", "precision") if getattr(args, k)])
        if wrong:
            raise ValueError(f"{', '.join(w.replace('_', '-') for w in wrong)} do(es) not apply to the {fmt} format")
        kwargs: Dict[str, Any] = {} if args.num_classes is None else {"num_classes": args.num_classes}
        batch_arg = args.batch or ("B" if fmt == "onnx" else "b")
        batch: Union[str, int] = int(batch_arg) if batch_arg.isdigit() else batch_arg
        variables, kwargs, cfg = checkpoint.resolve_weights(args.model, args.checkpoint, **kwargs)
        if fmt == "jaxexport":
            exp = jax_export.export_model(args.model, variables, batch=batch, input_size=args.input_size,
                                          platforms=args.platforms or "cpu", precision=args.precision, **kwargs)
            n = jax_export.save(exp, args.out)
            print(f"wrote {args.out}: {n / 2**20:.1f} MiB, {exp.fun_name} input {tuple(exp.in_avals[0].shape)} "
                  f"{exp.in_avals[0].dtype}, platforms {', '.join(exp.platforms)}")
            return 0
        info = onnx.to_onnx(args.model, variables, args.out, batch=batch, input_size=args.input_size,
                            nchw_input=args.nchw, opset=args.opset, pretrained=args.metadata_from or cfg, **kwargs)
    except (ValueError, OSError, TypeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(onnx.describe(info))
    if args.check:
        err = onnx.compare_with_lightjax(info.path, args.model, variables, **kwargs)
        print(f"check: onnxruntime vs lightjax on random images, max |diff| / max |lightjax| = {err:.2e}")
    return 0
