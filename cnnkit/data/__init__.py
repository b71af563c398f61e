"""Data: sources (files on disk -> uint8 arrays), splits, scaling and batches."""
