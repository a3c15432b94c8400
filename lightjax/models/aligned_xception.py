"""aligned_xception (to be written)."""
