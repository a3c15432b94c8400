"""lightjax.models: SqueezeNet, MobileNet v1/v2/v3, ShuffleNet v1/v2 and Xception as Flax Linen modules.

```python
import lightjax.models as lm
model = lm.create_model("mobilenet_v2_100", num_classes=1000)
variables = lm.init_variables(model, jax.random.key(0), (1, 224, 224, 3))  # jitted model.init
logits = model.apply(variables, x, train=False)     # x is NHWC
model, variables = lm.load_model("mobilenet_v2_100", pretrained=True)     # published weights (lightjax.pretrained)
```

Weights resolution (pretrained tags, download, conversion) stands above the models: ``load_model``,
``list_pretrained``, ``pretrained_cfg``, ``register_pretrained`` (:mod:`lightjax.pretrained`) and
``decode_predictions`` (:mod:`lightjax.labels`) are reachable from here but imported on first use, so importing
the models never imports the conversion code, the hub or torch.
"""

import importlib
from typing import Any

from lightjax import ops  # noqa: F401  (``lightjax.models.ops``, where the ops lived before lightjax/ops/)
from lightjax.models.base import COMMON_FIELDS, ModelBase  # noqa: F401
from lightjax.models.registry import (  # noqa: F401
    COMMON_KWARGS,
    create_model,
    init_variables,
    list_models,
    model_family,
    model_info,
    register_model,
)

# Families register their variants on import (one file per family).
from lightjax.models import squeezenet  # noqa: F401,E402
from lightjax.models import mobilenet_v1  # noqa: F401,E402
from lightjax.models import mobilenet_v2  # noqa: F401,E402
from lightjax.models import mobilenet_v3  # noqa: F401,E402
from lightjax.models import shufflenet_v1  # noqa: F401,E402
from lightjax.models import shufflenet_v2  # noqa: F401,E402
from lightjax.models import xception  # noqa: F401,E402
from lightjax.models import aligned_xception  # noqa: F401,E402

#: Names served lazily from the layers above the models (module that defines them).
_LAZY = {
    "load_model": "lightjax.pretrained",
    "list_pretrained": "lightjax.pretrained",
    "pretrained_cfg": "lightjax.pretrained",
    "register_pretrained": "lightjax.pretrained",
    "decode_predictions": "lightjax.labels",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module 'lightjax.models' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["ModelBase", "create_model", "init_variables", "list_models", "model_info", "model_family",
           "register_model", *_LAZY]
