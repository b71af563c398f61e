"""The network: layers, activations, initializers, regularizers, losses, metrics,
optimizers, schedules, the model and its memory plan. Imports errors, io, options, kernels only."""
