"""Copies between libfanout's C structs and the package's dataclasses.

Every function here copies: nothing returned keeps a pointer into C memory, so
owned structs can be freed and borrowed ones reused right after.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from . import _lib
from .types import (
    AgentInfo,
    Batch,
    BatchStatus,
    ConnectedWorker,
    Counts,
    Event,
    EventType,
    Limits,
    ServerInfo,
    Task,
    TaskError,
    TaskInfo,
    TaskResult,
    TaskStatus,
    Usage,
    WorkerSlots,
    encode_payload,
)

E = TypeVar("E", bound=enum.IntEnum)


def _enum(cls: type[E], value: int) -> E | int:
    try:
        return cls(value)
    except ValueError:
        return int(value)  # a value newer than this package: kept as a number


def text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


def cstr(value: str | None) -> bytes | None:
    # surrogateescape: bytes smuggled into a str reach libfanout, which refuses bad UTF-8 itself.
    return None if value is None else value.encode("utf-8", "surrogateescape")


def _bytes(ptr: int | None, length: int) -> bytes:
    return ctypes.string_at(ptr, length) if ptr and length else b""


D = TypeVar("D")


def _copy_fields(cls: type[D], struct: ctypes.Structure) -> D:
    return cls(*(getattr(struct, name) for name, *_ in struct._fields_))


def counts(c: _lib.Counts) -> Counts:
    return _copy_fields(Counts, c)


def usage(u: _lib.Usage) -> Usage:
    return _copy_fields(Usage, u)


def error(e: _lib.TaskError) -> TaskError | None:
    if not e.has_error:
        return None
    return TaskError(message=text(e.message), code=text(e.code), retryable=bool(e.retryable))


def batch(b: _lib.BatchInfo) -> Batch:
    metadata = {text(b.metadata[i].key): text(b.metadata[i].value) for i in range(b.n_metadata)}
    return Batch(
        id=b.id,
        owner=text(b.owner_id),
        agent=text(b.agent),
        status=_enum(BatchStatus, b.status),
        counts=counts(b.counts),
        progress=b.progress,
        metadata=metadata,
        parent_task_id=b.parent_task_id,
        created_at_ms=b.created_at_ms,
        started_at_ms=b.started_at_ms,
        finished_at_ms=b.finished_at_ms,
        deadline_at_ms=b.deadline_at_ms,
        creator_uid=b.creator_uid,
        max_turns=b.max_turns,
        usage=usage(b.usage),
    )


def task_info(t: _lib.TaskInfo) -> TaskInfo:
    return TaskInfo(
        id=t.id,
        batch_id=t.batch_id,
        custom_id=text(t.custom_id),
        owner=text(t.owner_id),
        agent=text(t.agent),
        status=_enum(TaskStatus, t.status),
        priority=t.priority,
        attempt=t.attempt,
        max_attempts=t.max_attempts,
        timeout_ms=t.timeout_ms,
        turns_completed=t.turns_completed,
        max_turns=t.max_turns,
        result=_bytes(t.result, t.result_len),
        error=error(t.error),
        parent_task_id=t.parent_task_id,
        created_at_ms=t.created_at_ms,
        started_at_ms=t.started_at_ms,
        finished_at_ms=t.finished_at_ms,
        payload=_bytes(t.payload, t.payload_len),
        url=text(t.url),
        status_code=t.status_code,
        request_id=text(t.request_id),
        usage=usage(t.usage),
    )


def task_result(r: _lib.TaskResult) -> TaskResult:
    return TaskResult(
        task_id=r.task_id,
        custom_id=text(r.custom_id),
        status=_enum(TaskStatus, r.status),
        result=_bytes(r.result, r.result_len),
        error=error(r.error),
        attempt=r.attempt,
        status_code=r.status_code,
        request_id=text(r.request_id),
        usage=usage(r.usage),
        url=text(r.url),
    )


def event(e: _lib.Event) -> Event:
    return Event(
        sequence=e.sequence,
        type=_enum(EventType, e.type),
        timestamp_ms=e.timestamp_ms,
        owner=text(e.owner_id),
        batch_id=e.batch_id,
        task_id=e.task_id,
        custom_id=text(e.custom_id),
        parent_task_id=e.parent_task_id,
        progress=e.progress,
        counts=counts(e.counts),
        attempt=e.attempt,
        turn=e.turn,
        retry_delay_ms=e.retry_delay_ms,
        error=error(e.error),
    )


def server_info(s: _lib.ServerInfo) -> ServerInfo:
    workers = []
    for i in range(s.n_worker_list):
        w = s.worker_list[i]
        workers.append(
            ConnectedWorker(
                id=w.id,
                name=text(w.name),
                uid=w.uid,
                agents=[
                    WorkerSlots(text(w.agents[j].agent), w.agents[j].slots, w.agents[j].free_slots)
                    for j in range(w.n_agents)
                ],
                running_task_ids=[w.running_task_ids[j] for j in range(w.n_running_task_ids)],
            )
        )
    agents = []
    for i in range(s.n_agents):
        a = s.agents[i]
        agents.append(
            AgentInfo(text(a.name), text(a.runner), a.concurrency, a.max_turns, a.max_attempts,
                      a.running, a.workers)
        )
    return ServerInfo(
        server_version=text(s.server_version),
        protocol_version=s.protocol_version,
        started_at_ms=s.started_at_ms,
        pending_tasks=s.pending_tasks,
        running_tasks=s.running_tasks,
        retry_wait_tasks=s.retry_wait_tasks,
        connections=s.connections,
        workers=s.workers,
        limits=_copy_fields(Limits, s.limits),
        agents=agents,
        last_sequence=s.last_sequence,
        worker_list=workers,
    )


# ---------------------------------------------------------------------------
# Inputs. The returned ctypes objects reference the bytes they point to, so
# the caller just keeps them alive for the duration of the call.
# ---------------------------------------------------------------------------

TaskLike = Task | Mapping[str, Any]


def as_task(item: TaskLike) -> Task:
    if isinstance(item, Task):
        return item
    if isinstance(item, Mapping):
        return Task(**item)
    raise TypeError(f"a task is a fanout.Task or a dict of its fields, not {type(item).__name__}")


def milliseconds(value: float | timedelta | None) -> int:
    if value is None:
        return 0
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return int(round(seconds * 1000))


def task_specs(tasks: Iterable[TaskLike]) -> ctypes.Array[_lib.TaskSpec]:
    items = [as_task(t) for t in tasks]
    array = (_lib.TaskSpec * len(items))()
    for i, t in enumerate(items):
        payload = encode_payload(t.payload)
        spec = array[i]
        spec.custom_id = cstr(t.custom_id if t.custom_id is not None else str(i))
        spec.agent = cstr(t.agent)
        spec.payload = payload
        spec.payload_len = len(payload)
        spec.priority = t.priority
        spec.max_attempts = t.max_attempts
        spec.timeout_ms = milliseconds(t.timeout)
        spec.url = cstr(t.url)
    return array


def batch_options(
    metadata: Mapping[str, str] | None,
    priority: int,
    completion_window: float | timedelta | None,
) -> _lib.BatchOptions:
    options = _lib.BatchOptions()
    pairs: Sequence[tuple[str, str]] = list((metadata or {}).items())
    kvs = (_lib.KV * len(pairs))()
    for i, (k, v) in enumerate(pairs):
        kvs[i].key = cstr(str(k))
        kvs[i].value = cstr(str(v))
    options.metadata = ctypes.cast(kvs, ctypes.POINTER(_lib.KV)) if pairs else None
    options.n_metadata = len(pairs)
    options._keep = kvs  # keeps the pairs alive with the options
    options.priority = priority
    options.completion_window_ms = milliseconds(completion_window)
    return options
