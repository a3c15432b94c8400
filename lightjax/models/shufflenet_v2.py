"""shufflenet_v2 (to be written)."""
