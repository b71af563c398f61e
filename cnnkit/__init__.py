"""cnnkit: train convolutional networks on the CPU from one YAML file."""

__version__ = "0.1.0"

# Version of the checkpoint layout (npz keys + JSON sidecar). Bump on incompatible change;
# loading a checkpoint with a newer version is refused with a clear error.
CHECKPOINT_FORMAT_VERSION = 1
