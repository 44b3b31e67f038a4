"""Batches of patches for training: collation, the loader and the Queue."""
