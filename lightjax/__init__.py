"""lightjax: lightweight CNNs in JAX/Flax with exact PyTorch checkpoint ports."""

from typing import Any, Dict, Optional

__version__ = "0.1.0"


def compiler_options(backend: Optional[str] = None) -> Dict[str, Any]:
    """XLA compile options recommended for lightjax models; see :func:`lightjax.models.ops.compiler_options`."""
    from lightjax.models.ops import compiler_options as _options

    return _options(backend)


def tune_glibc_malloc() -> Optional[str]:
    """Opt-in glibc malloc settings for CPU training processes; see :func:`lightjax.malloc.tune_glibc_malloc`."""
    from lightjax.malloc import tune_glibc_malloc as _tune

    return _tune()
