"""Python client for fanoutd, the Fanout batch runner, over libfanout (ctypes).

    from fanout import Client
    with Client() as client:
        batch = client.submit([{"payload": {"q": 1}}], agent="echo", owner="me")
        client.wait(batch.id)
        for result in client.results(batch.id):
            print(result.custom_id, result.json())
"""

from __future__ import annotations

from ._lib import load as load_library
from .client import Client, Subscription, default_socket_path
from .errors import (
    BadArgument,
    Cancelled,
    ConnectFailed,
    ConnectionLost,
    FailedPrecondition,
    FanoutError,
    FanoutTimeout,
    InvalidArgument,
    LibraryNotFoundError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Status,
    SubscriptionLagged,
    TaskCancelled,
    TaskFailed,
    Unavailable,
)
from .types import (
    AgentInfo,
    Batch,
    BatchStatus,
    ConnectedWorker,
    Counts,
    Event,
    EventType,
    Limits,
    Retried,
    ServerInfo,
    Task,
    TaskError,
    TaskInfo,
    TaskResult,
    TaskStatus,
    Usage,
)
from .worker import TaskContext, Worker

__version__ = "0.1.0"

__all__ = [
    "AgentInfo",
    "BadArgument",
    "Batch",
    "BatchStatus",
    "Cancelled",
    "Client",
    "ConnectFailed",
    "ConnectedWorker",
    "ConnectionLost",
    "Counts",
    "Event",
    "EventType",
    "FailedPrecondition",
    "FanoutError",
    "FanoutTimeout",
    "InvalidArgument",
    "LibraryNotFoundError",
    "Limits",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Retried",
    "ServerInfo",
    "Status",
    "Subscription",
    "SubscriptionLagged",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskError",
    "TaskFailed",
    "TaskInfo",
    "TaskResult",
    "TaskStatus",
    "Unavailable",
    "Usage",
    "Worker",
    "default_socket_path",
    "load_library",
]
