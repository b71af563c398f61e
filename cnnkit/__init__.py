"""cnnkit: train convolutional networks on the CPU from one YAML file."""

from cnnkit.places import keep_numba_cache_out_of_the_package

__version__ = "0.1.0"

# Version of the checkpoint layout (npz keys + JSON sidecar). Bump on incompatible change;
# loading a checkpoint with a newer version is refused with a clear error.
CHECKPOINT_FORMAT_VERSION = 1

keep_numba_cache_out_of_the_package()  # before numba is imported (cnnkit.places says why)
