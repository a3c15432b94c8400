"""``python -m lightjax.convert MODEL SRC DST``: PyTorch checkpoint → lightjax variables (Flax msgpack).

Prints what was mapped, how the classifier was handled and, when torch and the checkpoint's PyTorch
implementation (torchvision / timm) are importable, the max |Δ| of the logits on a probe batch.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from lightjax import convert
from lightjax.convert import probe
from lightjax.models import registry


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightjax.convert", description=__doc__.splitlines()[0])
    p.add_argument("model", help="lightjax model name (see lightjax.models.list_models())")
    p.add_argument("src", help="PyTorch checkpoint: .pth/.pt/.bin/.ckpt (torch.load weights_only) or .safetensors")
    p.add_argument("dst", help="output file (Flax msgpack of {'params', 'batch_stats'}), e.g. model.msgpack")
    p.add_argument("--num-classes", type=int, default=None, help="new head size (implies --non-strict head)")
    p.add_argument("--non-strict", action="store_true", help="allow the classifier to differ; it is re-initialised")
    p.add_argument("--layout", default=None, help="force a key layout (torchvision, timm, seed); detected otherwise")
    p.add_argument("--no-probe", action="store_true", help="skip the PyTorch comparison")
    args = p.parse_args(argv)

    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    strict = not (args.non_strict or args.num_classes is not None)
    try:
        sd = convert.read_checkpoint(args.src)
        lay = convert.detect_layout(args.model, sd, layout=None, **kwargs) if args.layout is None else None
        kwargs = {**(lay.requires if lay else {}), **kwargs}  # e.g. timm MobileNetV1 needs act="relu6"
        variables, report = convert.from_torch(args.model, sd, strict=strict, layout=args.layout,
                                               return_report=True, **kwargs)
    except (convert.ConversionError, convert.CheckpointReadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    convert.save_flax(args.dst, variables)
    if not args.no_probe and not report.head_reinitialised:
        model = registry.create_model(args.model, **kwargs)
        size = registry.model_info(args.model)["input_size"]
        got = probe.max_abs_diff(args.model, model, variables, sd, report.layout, size, args.num_classes)
        if got is not None:
            report.max_abs_diff = got[0]
    print(report.summary())
    extra = {k: v for k, v in kwargs.items() if k != "num_classes"}
    if extra:
        print(f"model settings implied by the checkpoint: {extra} (pass them to create_model)")
    if report.max_abs_diff is None and not args.no_probe:
        print("probe: skipped (torch or the checkpoint's PyTorch implementation is not importable, or the head changed)")
    print(f"wrote {args.dst} (Flax msgpack; read it with lightjax.convert.load_flax or lightjax.models.load_model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
