"""lightjax: lightweight CNNs in JAX/Flax with exact PyTorch checkpoint ports."""

from typing import Any, Dict, Optional

__version__ = "0.1.0"


def compiler_options(backend: Optional[str] = None) -> Dict[str, Any]:
    """XLA compile options recommended for lightjax models; see :func:`lightjax.ops.compiler_options`."""
    from lightjax.ops.backend import compiler_options as _options

    return _options(backend)
