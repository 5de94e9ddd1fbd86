"""hauler's exceptions. Each is also the built-in class a Python user would
catch for that kind of mistake (a too-small buffer is a ValueError, a position
outside the message an IndexError), so generic handlers keep working."""


class HaulerError(Exception):
    """Base class of every error hauler raises on purpose."""


class InvalidArgument(HaulerError, ValueError):
    """A malformed request: negative count, bad order, mismatched lists, ..."""


class Overflow(HaulerError, OverflowError):
    """A size, displacement or stride that does not fit in 64 bits."""


class BufferTooSmall(HaulerError, ValueError):
    """A buffer that does not cover the bytes the call needs."""


class OutOfRange(HaulerError, IndexError):
    """A position or index outside the message or table."""


class ReadOnlyBuffer(HaulerError, TypeError):
    """An output buffer that cannot be written."""


class NoDevice(HaulerError, RuntimeError):
    """A device buffer given where no usable GPU exists."""


class HaulerIOError(HaulerError, OSError):
    """An I/O operation that failed."""


class Closed(HaulerError, ValueError):
    """A store used after close() (a ValueError, as for a closed Python file)."""
