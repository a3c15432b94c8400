"""lightjax: lightweight CNNs in JAX/Flax with exact PyTorch checkpoint ports."""

__version__ = "0.1.0"
