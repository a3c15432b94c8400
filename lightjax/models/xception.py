"""xception (to be written)."""
