"""Training: the trainer, its callbacks, resume, the warm-up."""
