"""A procedural world with known truth (labels and depth) for offline tests and the built-in default."""
