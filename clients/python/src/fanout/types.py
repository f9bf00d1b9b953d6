"""Plain data: what the client submits (Task) and what the daemon reports back."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, Union

Payload = Union[bytes, bytearray, memoryview, str, Any]
"""bytes are sent as they are, str as UTF-8, anything else (dict, list, None…) as JSON."""


class TaskStatus(enum.IntEnum):
    UNSPECIFIED = 0
    PENDING = 1
    RUNNING = 2
    WAITING_CHILDREN = 3
    RETRY_WAIT = 4
    COMPLETED = 5
    FAILED = 6
    CANCELLED = 7
    EXPIRED = 8

    @property
    def terminal(self) -> bool:
        return self >= TaskStatus.COMPLETED


class BatchStatus(enum.IntEnum):
    UNSPECIFIED = 0
    PENDING = 1
    PROCESSING = 2
    COMPLETED = 3
    CANCELLED = 4
    FAILED = 5

    @property
    def terminal(self) -> bool:
        return self >= BatchStatus.COMPLETED


class EventType(enum.IntEnum):
    UNSPECIFIED = 0
    BATCH_PROGRESS = 1
    BATCH_COMPLETED = 2
    BATCH_CANCELLED = 3
    BATCH_FAILED = 4
    TASK_STARTED = 5
    TASK_TURN = 6
    TASK_RETRYING = 7
    TASK_COMPLETED = 8
    TASK_FAILED = 9
    TASK_CANCELLED = 10
    TASK_EXPIRED = 11

    @property
    def ends_batch(self) -> bool:
        return EventType.BATCH_COMPLETED <= self <= EventType.BATCH_FAILED


def encode_payload(value: Payload) -> bytes:
    """bytes-like as is, str as UTF-8, anything else as compact JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


@dataclass
class Task:
    """A task to submit. ``custom_id`` defaults to the task's index in the batch."""

    payload: Payload = b""
    custom_id: str | None = None
    agent: str | None = None
    priority: int = 0
    max_attempts: int = 0
    timeout: float | None = None
    """Per attempt, in seconds; None: the agent's default."""
    url: str | None = None


@dataclass(frozen=True)
class Counts:
    total: int = 0
    pending: int = 0
    running: int = 0
    waiting_children: int = 0
    retry_wait: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True)
class TaskError:
    message: str
    code: str = ""
    retryable: bool = False


@dataclass(frozen=True)
class Batch:
    id: int
    owner: str
    agent: str
    status: BatchStatus | int
    counts: Counts
    progress: float
    metadata: dict[str, str]
    parent_task_id: int
    created_at_ms: int
    started_at_ms: int
    finished_at_ms: int
    deadline_at_ms: int
    creator_uid: int
    max_turns: int
    usage: Usage

    @property
    def done(self) -> bool:
        return isinstance(self.status, BatchStatus) and self.status.terminal


class _HasResult:
    result: bytes

    def text(self) -> str:
        return (self.result or b"").decode("utf-8")

    def json(self) -> Any:
        """The result decoded as JSON."""
        return json.loads(self.result)


@dataclass(frozen=True)
class TaskInfo(_HasResult):
    id: int
    batch_id: int
    custom_id: str
    owner: str
    agent: str
    status: TaskStatus | int
    priority: int
    attempt: int
    max_attempts: int
    timeout_ms: int
    turns_completed: int
    max_turns: int
    result: bytes
    error: TaskError | None
    parent_task_id: int
    created_at_ms: int
    started_at_ms: int
    finished_at_ms: int
    payload: bytes
    url: str
    status_code: int
    request_id: str
    usage: Usage


@dataclass(frozen=True)
class TaskResult(_HasResult):
    task_id: int
    custom_id: str
    status: TaskStatus | int
    result: bytes
    error: TaskError | None
    attempt: int
    status_code: int = 0
    request_id: str = ""
    usage: Usage = field(default_factory=Usage)
    url: str = ""

    @property
    def ok(self) -> bool:
        return self.status == TaskStatus.COMPLETED


@dataclass(frozen=True)
class Event:
    sequence: int
    type: EventType | int
    timestamp_ms: int
    owner: str
    batch_id: int
    task_id: int
    custom_id: str
    parent_task_id: int
    progress: float
    counts: Counts
    attempt: int
    turn: int
    retry_delay_ms: int
    error: TaskError | None


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int
    max_tasks_per_batch: int
    max_payload_bytes: int
    max_custom_id_bytes: int
    max_streams_per_connection: int
    max_connections: int
    subscriber_buffer: int
    global_concurrency: int
    max_results_page: int


@dataclass(frozen=True)
class AgentInfo:
    name: str
    runner: str
    concurrency: int
    max_turns: int
    max_attempts: int
    running: int
    workers: int


@dataclass(frozen=True)
class WorkerSlots:
    agent: str
    slots: int
    free_slots: int


@dataclass(frozen=True)
class ConnectedWorker:
    id: int
    name: str
    uid: int
    agents: list[WorkerSlots]
    running_task_ids: list[int]


@dataclass(frozen=True)
class ServerInfo:
    server_version: str
    protocol_version: int
    started_at_ms: int
    pending_tasks: int
    running_tasks: int
    retry_wait_tasks: int
    connections: int
    workers: int
    limits: Limits
    agents: list[AgentInfo]
    last_sequence: int
    worker_list: list[ConnectedWorker]


@dataclass(frozen=True)
class Retried:
    """What retry_failed did: how many tasks went back to pending, and the batch."""

    count: int
    batch: Batch
