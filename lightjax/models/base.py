"""``ModelBase``: the fields, their validation, the input check and the ``features_only`` plumbing that every
lightjax model shares (timm's ``num_classes`` / ``in_chans`` / ``drop_rate`` / ``features_only`` /
``out_indices`` conventions, flax's ``dtype`` / ``param_dtype``).

A family's model class inherits it, re-declares a field only to change its default (``drop_rate``,
``out_indices``), and provides three things:

* ``model_name`` (property): the registry-style name used in error messages (``"mobilenet_v2_100"``);
* ``feature_levels()``: ``(channels, strides)`` of the maps ``features_only`` can return;
* ``check_family_fields()``: validation of the family's own fields (``width``, ``output_stride``, ...).

Fields are checked when the module is built (``create_model`` raises at once, with the field, the allowed
range and the value), not deep inside ``init``.
"""

from __future__ import annotations

import numbers
from typing import Any, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lightjax.models import layers

#: The fields every model accepts (families add their own, e.g. ``output_stride``, ``width``).
COMMON_FIELDS = ("num_classes", "in_chans", "dtype", "param_dtype", "drop_rate", "features_only", "out_indices")


class ModelBase(nn.Module):
    """Common fields of every lightjax model.

    Attributes:
      num_classes: classifier outputs; 0 drops the classifier and returns pooled features ``(N, C)``.
      in_chans: input channels (NHWC input).
      drop_rate: dropout before the classifier, in [0, 1).
      features_only: return the list of NHWC maps at the ends of the downsampling stages instead of logits.
      out_indices: which of those maps (indices into ``feature_info``; negative counts from the end).
      dtype: computation dtype (``None``: follow the input); parameters are stored in ``param_dtype``.
      param_dtype: parameter (and BatchNorm statistics) dtype.
    """

    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.0
    features_only: bool = False
    out_indices: Sequence[int] = (0, 1, 2, 3, 4)
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_fields()

    # -- what a family provides -------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """Registry-style name for error messages (families override)."""
        return type(self).__name__

    def feature_levels(self) -> Tuple[Sequence[int], Sequence[int]]:
        """``(channels, strides)`` of each feature level, in network order."""
        raise NotImplementedError(f"{type(self).__name__} must define feature_levels()")

    def check_family_fields(self) -> None:
        """Raises ``ValueError`` naming a family field whose value the architecture does not have."""

    # -- shared ---------------------------------------------------------------------------------------------
    def check_fields(self) -> None:
        """Validates the common fields, then the family's, then ``out_indices`` against the feature levels."""
        name = self.model_name
        _check_int(name, "num_classes", self.num_classes, 0, "0 = no classifier, pooled features")
        _check_int(name, "in_chans", self.in_chans, 1, "input channels")
        if not isinstance(self.drop_rate, numbers.Real) or isinstance(self.drop_rate, bool) \
                or not 0.0 <= float(self.drop_rate) < 1.0:
            raise ValueError(f"{name}: drop_rate must be a float in [0, 1), got {self.drop_rate!r}")
        if not isinstance(self.features_only, bool):
            raise ValueError(f"{name}: features_only must be True or False, got {self.features_only!r}")
        _check_dtype(name, "dtype", self.dtype, allow_none=True)
        _check_dtype(name, "param_dtype", self.param_dtype, allow_none=False)
        self.check_family_fields()
        self.feature_info  # noqa: B018 -- validates out_indices (an int sequence within the levels)

    @property
    def feature_info(self) -> List[dict]:
        """``[{'index', 'stride', 'channels'}, ...]`` of the levels selected by ``out_indices``."""
        channels, strides = self.feature_levels()
        return layers.feature_info(channels, strides, self.out_indices, self.model_name)

    def check_input(self, x: jax.Array) -> None:
        """Raises a clear error unless ``x`` is an NHWC batch with ``in_chans`` channels."""
        layers.check_input(x, self.in_chans, self.model_name)

    def select_features(self, feats: Sequence[jax.Array]) -> List[jax.Array]:
        """The maps of ``feats`` (one per feature level) that ``out_indices`` selects."""
        return layers.select_features(feats, self.out_indices, self.model_name)


def width_tag(width: float) -> str:
    """A width multiplier as the registry writes it in names: 1.0 -> ``"100"``, 0.5 -> ``"050"``."""
    try:
        return f"{round(float(width) * 100):03d}"
    except (TypeError, ValueError):
        return f"(width={width!r})"


def _check_int(model: str, field: str, value: Any, minimum: int, meaning: str) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{model}: {field} must be an int >= {minimum} ({meaning}), got {value!r}")


def _check_dtype(model: str, field: str, value: Any, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    try:
        ok = jnp.issubdtype(jnp.dtype(value), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        none = "None or " if allow_none else ""
        raise ValueError(f"{model}: {field} must be {none}a floating dtype (e.g. jnp.float32, jnp.bfloat16), "
                         f"got {value!r}")
