"""mobilenet_v1 (to be written)."""
