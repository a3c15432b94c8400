"""Key table: mobilenet_v2 (to be written)."""
