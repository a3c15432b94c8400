"""Key table: shufflenet (to be written)."""
