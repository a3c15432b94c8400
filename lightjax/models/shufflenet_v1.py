"""shufflenet_v1 (to be written)."""
