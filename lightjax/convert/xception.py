"""Key table: xception (to be written)."""
