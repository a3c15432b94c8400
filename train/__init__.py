"""The lightjax training program: ``python -m train --config configs/default.py --workdir DIR``.

Stands on :mod:`lightjax` (models, converters); the library never imports this package. See docs/training.md.
"""
