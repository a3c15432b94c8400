"""Key table: mobilenet_v3 (to be written)."""
