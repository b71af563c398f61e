"""The one family of errors a user can cause.

The CLI prints a CnnkitError as one readable message and exits with code 2; anything else is a
bug and may show a traceback.
"""

from __future__ import annotations


class CnnkitError(Exception):
    """An error caused by input (spec, data, image, checkpoint), not by a bug."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where  # the file, YAML path or image the error is about
        self.hint = hint  # what would be valid / what to do next
        self.context = ""  # e.g. the offending line of the spec file, shown verbatim

    def __str__(self) -> str:
        parts = [f"{self.where}: {self.message}" if self.where else self.message]
        if self.context:
            parts.append(self.context)
        if self.hint:
            parts.append(self.hint)
        return "\n".join(parts)


class SpecError(CnnkitError):
    """The YAML spec is malformed, has unknown keys, wrong types or impossible shapes."""


class DataError(CnnkitError):
    """A dataset file is missing, corrupt or does not match its checksum."""


class CheckpointError(CnnkitError):
    """A checkpoint or run directory is missing, corrupt or does not fit the model."""


class ImageError(CnnkitError):
    """An image given to `predict` cannot be read or converted."""


class SpecErrors(SpecError):
    """Several independent spec errors found in one pass (`errors` holds each, in file order
    of discovery), so that one `cnnkit check` shows every mistake, not only the first."""

    def __init__(self, errors: list[SpecError]):
        super().__init__(f"{len(errors)} errors in the spec")
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n\n".join(str(error) for error in self.errors)


class StorageError(CnnkitError):
    """A file could not be written (full disk, read-only or unwritable run directory).
    Writes are atomic, so the file it would have replaced is intact."""


class DivergenceError(CnnkitError):
    """The loss or a gradient became NaN or infinite: training stopped (exit code 3)."""

    exit_code = 3


class ExtraMissing(CnnkitError):
    """An optional capability's packages are not installed: the message names the extra to
    install (`pip install "cnnkit[onnx]"`)."""


class VerificationError(CnnkitError):
    """A result cnnkit checked after producing it disagrees with cnnkit itself (an exported
    model's probabilities beyond the tolerance): the file is written, with the figures
    beside it, and the command fails (exit code 1)."""

    exit_code = 1
