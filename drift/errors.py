"""User-facing errors.

Anything the user can cause (a bad file, a bad flag, a prompt too long, a GPU too small)
raises a `DriftError`. The CLI prints its message as one line on stderr and exits non-zero;
any other exception is a bug in drift and keeps its traceback.
"""


class DriftError(Exception):
    """A mistake in what the user asked for; the message is the whole explanation."""

    exit_code = 1


class ModelFileError(DriftError):
    """The model file is missing, truncated, or not a GGUF file drift can read."""


class UnsupportedError(DriftError):
    """The file is valid but uses something drift does not implement (architecture, quant type)."""


class InvalidArgumentError(DriftError):
    """A flag, sampler value or request field is out of range."""

    exit_code = 2


class ContextOverflowError(DriftError):
    """The prompt (plus what was asked to generate) does not fit the context."""


class DeviceError(DriftError):
    """The device asked for is absent, or too small for the model."""
