"""lightjax.models: SqueezeNet, MobileNet v1/v2/v3, ShuffleNet v1/v2 and Xception as Flax Linen modules.

```python
import lightjax.models as lm
model = lm.create_model("mobilenet_v2_100", num_classes=1000)
variables = lm.init_variables(model, jax.random.key(0), (1, 224, 224, 3))  # jitted model.init
logits = model.apply(variables, x, train=False)     # x is NHWC
```
"""

from lightjax.models.registry import (  # noqa: F401
    COMMON_KWARGS,
    create_model,
    init_variables,
    list_models,
    load_model,
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

__all__ = ["create_model", "init_variables", "list_models", "load_model", "model_info", "model_family", "register_model"]
