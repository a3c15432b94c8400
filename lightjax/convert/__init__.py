"""Port PyTorch checkpoints (torchvision, timm, the seed's reference code) to lightjax and back.

```python
from lightjax import convert
variables = convert.from_torch("mobilenet_v2_100", "mobilenet_v2-b0353104.pth")
variables = convert.from_torch("mobilenet_v2_100", state_dict, num_classes=10, strict=False)
state_dict = convert.to_torch("mobilenet_v2_100", variables)   # dict[str, np.ndarray]
```

One key table per family lives in ``lightjax/convert/<family>.py``; :mod:`lightjax.convert.core` is the engine
(rows, layouts, leaf transforms, matching), :mod:`lightjax.convert.files` reads checkpoints and reads/writes
lightjax's msgpack files, :mod:`lightjax.convert.porting` does the conversions. torch is imported only to read
``.pth`` files.
"""

from __future__ import annotations

from lightjax.convert.core import (  # noqa: F401  (public re-exports)
    IGNORED_SUFFIXES,
    CheckpointReadError,
    ConversionError,
    Layout,
    Report,
    Row,
    check_table_covers,
    expand_rows,
    flatten_tree,
    flax_to_torch_array,
    layouts_for,
    pick_layout,
    register_layout,
    to_numpy,
    torch_shape,
    torch_to_flax_array,
)
from lightjax.convert.files import (  # noqa: F401
    CHECKPOINT_SUFFIXES,
    FLAX_SUFFIXES,
    TORCH_SUFFIXES,
    load_flax,
    normalize_state_dict,
    read_checkpoint,
    save_flax,
)
from lightjax.convert.porting import detect_layout, from_torch, to_torch, variable_shapes  # noqa: F401

# Family key tables register themselves on import.
from lightjax.convert import mobilenet_v1 as _mobilenet_v1  # noqa: F401,E402
from lightjax.convert import mobilenet_v2 as _mobilenet_v2  # noqa: F401,E402
from lightjax.convert import mobilenet_v3 as _mobilenet_v3  # noqa: F401,E402
from lightjax.convert import shufflenet as _shufflenet  # noqa: F401,E402
from lightjax.convert import shufflenet_v2 as _shufflenet_v2  # noqa: F401,E402
from lightjax.convert import squeezenet as _squeezenet  # noqa: F401,E402
from lightjax.convert import xception as _xception  # noqa: F401,E402

__all__ = ["from_torch", "detect_layout", "to_torch", "read_checkpoint", "variable_shapes", "save_flax", "load_flax",
           "ConversionError", "CheckpointReadError"]
