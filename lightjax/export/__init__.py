"""Deployment artifacts of a model's eval forward, one module per format.

| module | writes |
|---|---|
| :mod:`~lightjax.export.onnx` | ONNX (:func:`to_onnx`): native operators, dynamic batch, NHWC or NCHW input, preprocessing metadata; runs in onnxruntime / TensorRT / OpenVINO |
| :mod:`~lightjax.export.jax_export` | ``jax.export`` artifacts (:func:`export_model`, :func:`save`, :func:`load`) that need only jax |
| :mod:`~lightjax.export.tf` | optional TensorFlow SavedModel / TFLite through ``jax2tf`` |
| :mod:`~lightjax.export.onnx_plugins` | jax2onnx lowerings of the export formulation's primitives |
| :mod:`~lightjax.export.fold`, :mod:`~lightjax.export.onnx_passes`, :mod:`~lightjax.export.metadata` | weight-only constant folding; exact ONNX graph rewrites; the ONNX file's ``metadata_props`` |
| :mod:`~lightjax.export.checkpoint`, :mod:`~lightjax.export.cli` | ``python -m lightjax.export MODEL CHECKPOINT OUT`` |

```python
from lightjax import export
export.to_onnx("mobilenet_v2_100", variables, "mobilenet_v2_100.onnx", nchw_input=True)
exp = export.export_model("mobilenet_v2_100", variables); export.save(exp, "mobilenet_v2_100.jaxexport")
```

Nothing here imports jax2onnx, onnx, onnxruntime or TensorFlow until a function that needs them runs.
"""

from lightjax.export.checkpoint import TORCH_SUFFIXES, model_kwargs_of, read_variables, resolve_weights  # noqa: F401
from lightjax.export.cli import main  # noqa: F401
from lightjax.export.jax_export import (  # noqa: F401
    KNOWN_PLATFORMS,
    InputShapeError,
    LoadedModel,
    atomic_write,
    export_model,
    export_to_file,
    load,
    model_kwargs_repr,
    save,
    serialize,
)
from lightjax.export.fold import fold_constants  # noqa: F401
from lightjax.export.onnx import (  # noqa: F401
    DEFAULT_OPSET,
    OnnxExport,
    OnnxExportError,
    compare_with_lightjax,
    describe,
    function_to_onnx,
    read_metadata,
    to_onnx,
)
from lightjax.export.tf import to_tf_function, to_tf_saved_model, to_tflite  # noqa: F401

__all__ = [
    "DEFAULT_OPSET", "InputShapeError", "KNOWN_PLATFORMS", "LoadedModel", "OnnxExport", "OnnxExportError",
    "TORCH_SUFFIXES", "atomic_write", "compare_with_lightjax", "describe", "export_model", "export_to_file",
    "fold_constants", "function_to_onnx", "load", "main", "model_kwargs_of", "model_kwargs_repr", "read_metadata", "read_variables",
    "resolve_weights", "save", "serialize", "to_onnx", "to_tf_function", "to_tf_saved_model", "to_tflite",
]
