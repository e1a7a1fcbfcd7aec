"""Data sources: embedded defaults (offline) and TFDS / local files behind `--dataset`."""
