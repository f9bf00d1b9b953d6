"""Exceptions. Every failed call raises a FanoutError carrying libfanout's status."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """fanout_status: 1–16 are the daemon's codes, 100 and up the library's own."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16
    CONNECT_FAILED = 100
    IO_ERROR = 101
    TIMEOUT = 102
    BAD_ARGUMENT = 103
    PROTOCOL_ERROR = 104
    NO_MEMORY = 105
    DONE = 106


class LibraryNotFoundError(ImportError):
    """libfanout.so could not be loaded; the message says what to build or set."""


class FanoutError(Exception):
    """A call failed. ``status`` is a Status (or a plain int the package does not know)."""

    def __init__(self, status: Status | int, message: str = "") -> None:
        self.status: Status | int = _status(status)
        self.message = message
        name = self.status.name if isinstance(self.status, Status) else f"status {int(status)}"
        super().__init__(f"{name}: {message}" if message else name)


class InvalidArgument(FanoutError):
    """The daemon refused the input (INVALID_ARGUMENT), e.g. an empty owner or unknown agent."""


class NotFound(FanoutError):
    """The batch, task or parent id does not exist (NOT_FOUND)."""


class PermissionDenied(FanoutError):
    """The batch or task belongs to another uid, or the socket's owner is not trusted."""


class ResourceExhausted(FanoutError):
    """A daemon limit was hit (RESOURCE_EXHAUSTED)."""


class FailedPrecondition(FanoutError):
    """The object is not in a state that allows the call (FAILED_PRECONDITION)."""


class Unavailable(FanoutError):
    """The daemon is shutting down or cannot write (UNAVAILABLE): try again later."""


class Cancelled(FanoutError):
    """The call or stream was cancelled (CANCELLED)."""


class ConnectFailed(FanoutError, ConnectionError):
    """No daemon listens at the socket path (CONNECT_FAILED)."""


class ConnectionLost(FanoutError, ConnectionError):
    """A read or write failed, or the daemon closed the connection (IO_ERROR)."""


class FanoutTimeout(FanoutError, TimeoutError):
    """The client's timeout passed (TIMEOUT)."""


class BadArgument(FanoutError, ValueError):
    """Refused by the library before sending (BAD_ARGUMENT): bad UTF-8, too large…"""


class SubscriptionLagged(ResourceExhausted):
    """The daemon dropped a subscriber that read too slowly; resume from ``last_sequence``."""

    def __init__(self, status: Status | int, message: str = "", last_sequence: int = 0) -> None:
        super().__init__(status, message)
        self.last_sequence = last_sequence


_CLASSES: dict[int, type[FanoutError]] = {
    Status.INVALID_ARGUMENT: InvalidArgument,
    Status.NOT_FOUND: NotFound,
    Status.PERMISSION_DENIED: PermissionDenied,
    Status.RESOURCE_EXHAUSTED: ResourceExhausted,
    Status.FAILED_PRECONDITION: FailedPrecondition,
    Status.UNAVAILABLE: Unavailable,
    Status.CANCELLED: Cancelled,
    Status.CONNECT_FAILED: ConnectFailed,
    Status.IO_ERROR: ConnectionLost,
    Status.TIMEOUT: FanoutTimeout,
    Status.BAD_ARGUMENT: BadArgument,
}


def _status(code: int) -> Status | int:
    try:
        return Status(code)
    except ValueError:
        return int(code)


def error_for(status: int, message: str = "") -> FanoutError:
    """The FanoutError subclass matching ``status``."""
    return _CLASSES.get(int(status), FanoutError)(status, message)


class TaskFailed(Exception):
    """Raised by a worker's handler to fail its task with a chosen code and retryability."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after


class TaskCancelled(Exception):
    """Raised inside a handler (by ``spawn``) when its task was cancelled or the worker stopped."""
