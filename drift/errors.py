"""User-facing errors.

Anything the user can cause (a bad file, a bad flag, a prompt too long, a GPU too small)
raises a `DriftError`. The CLI prints its message as one line on stderr and exits non-zero;
any other exception is a bug in drift and keeps its traceback.

A message is one line of bounded length whatever it quotes: a corrupt file can hold a key of
megabytes, and the message must still fit a terminal line or two (`quote` for values).
"""

MAX_MESSAGE = 400  # characters of a message; the middle of a longer one is cut out
MAX_QUOTE = 60  # characters of a value quoted in a message


def quote(value: object, limit: int = MAX_QUOTE) -> str:
    """`repr(value)`, cut to `limit` characters: safe to put any file value in a message."""
    if isinstance(value, (list, tuple, dict)) and len(value) > 8:
        text = f"<{type(value).__name__} of {len(value)} items>"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` on one line, at most `limit` characters (its middle elided)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = limit * 3 // 4
    return f"{text[:head]} [...] {text[len(text) - (limit - head - 7):]}"


class DriftError(Exception):
    """A mistake in what the user asked for; the message is the whole explanation."""

    exit_code = 1

    def __init__(self, message: object = "", *args: object):
        super().__init__(one_line(str(message)), *args)


class ModelFileError(DriftError):
    """The model file is missing, truncated, or not a GGUF file drift can read."""


class UnsupportedError(DriftError):
    """The file is valid but uses something drift does not implement (architecture, quant type)."""


class InvalidArgumentError(DriftError, ValueError):
    """A flag, sampler value or request field is out of range (a ValueError to API callers)."""

    exit_code = 2


class ContextOverflowError(DriftError):
    """The prompt (plus what was asked to generate) does not fit the context."""


class DeviceError(DriftError):
    """The device asked for is absent, or too small for the model."""


class NumericalError(DriftError):
    """The model computed NaN or infinite logits (corrupt weights, an overflow)."""


class TemplateError(DriftError):
    """The model file's chat template does not compile, fails, or runs past its bounds."""
