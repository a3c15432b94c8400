"""Optional: TensorFlow SavedModel / TFLite of a model's eval forward through ``jax2tf`` (TensorFlow is not a
dependency of lightjax; without it these raise an ``ImportError`` that says so)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import jax
import numpy as np

from lightjax.export.jax_export import atomic_write
from lightjax.models import registry


def _require_tf() -> Any:
    try:
        import tensorflow as tf  # noqa: F401
        from jax.experimental import jax2tf  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"TensorFlow export needs tensorflow (pip install tensorflow); it is an optional extra: {e}"
        ) from e
    return tf, jax2tf


def to_tf_function(name: str, variables: Mapping[str, Any], *, input_size: Optional[int] = None,
                   **model_kwargs: Any) -> Tuple[Any, Any]:
    """``(tf.Module, input_signature)``: the eval forward as a ``tf.function`` with a ``None`` batch dimension.

    Uses ``jax2tf.convert`` with ``polymorphic_shapes=["(b, H, W, C)"]``; the weights are ``tf.Variable``s.
    """
    tf, jax2tf = _require_tf()
    model = registry.create_model(name, **model_kwargs)
    size = input_size or registry.model_info(name)["input_size"]
    in_chans = getattr(model, "in_chans", 3)
    params = jax.tree_util.tree_map(np.asarray, dict(variables))
    fn = jax2tf.convert(lambda v, x: model.apply(v, x, train=False),
                        polymorphic_shapes=[None, f"(b, {size}, {size}, {in_chans})"])
    module = tf.Module()
    module.variables_ = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False), params)
    sig = [tf.TensorSpec((None, size, size, in_chans), tf.float32, name="images")]
    module.serve = tf.function(lambda x: fn(module.variables_, x), autograph=False, input_signature=sig)
    return module, sig


def to_tf_saved_model(name: str, variables: Mapping[str, Any], out_dir: str, **kwargs: Any) -> str:
    """Writes a TensorFlow SavedModel (signature ``serving_default``: images NHWC float32 → logits)."""
    tf, _ = _require_tf()
    module, _ = to_tf_function(name, variables, **kwargs)
    tf.saved_model.save(module, out_dir, signatures={"serving_default": module.serve})
    return out_dir


def to_tflite(name: str, variables: Mapping[str, Any], out_path: str, **kwargs: Any) -> int:
    """Writes a TFLite flatbuffer (batch 1 at conversion; TFLite resizes the batch at runtime)."""
    tf, _ = _require_tf()
    module, _ = to_tf_function(name, variables, **kwargs)
    conc = module.serve.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([conc], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    data = converter.convert()
    atomic_write(out_path, data)
    return len(data)
