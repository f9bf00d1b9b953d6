"""Worker: serve an agent's tasks from Python functions (PROTOCOL.md §5.12).

One I/O thread (the one calling ``Worker.run``) owns the connection and the
libfanout worker handle; each task runs its handler in a thread of its own and
talks to the I/O thread through queues, so the C handle is only ever used by
one thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import queue
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import Any, TypeVar

from . import _convert, _lib
from .client import DEFAULT_TIMEOUT, Client
from .errors import (
    FanoutError,
    FanoutTimeout,
    Status,
    TaskCancelled,
    TaskFailed,
    error_for,
)
from .types import Payload, TaskInfo, TaskResult, encode_payload

log = logging.getLogger("fanout.worker")

Handler = Callable[["TaskContext"], Any]
H = TypeVar("H", bound=Handler)

# Session-fatal problems that a reconnect may cure; anything else raised while
# registering (INVALID_ARGUMENT, PERMISSION_DENIED, FAILED_PRECONDITION…) is final.
_RECONNECT = {
    Status.CONNECT_FAILED, Status.IO_ERROR, Status.UNAVAILABLE, Status.TIMEOUT, Status.PROTOCOL_ERROR,
    Status.DONE,  # the daemon ended the session
}


@dataclass(frozen=True)
class AgentSpec:
    name: str
    handler: Handler
    concurrency: int = 1
    max_turns: int = 0


class TaskContext:
    """What a handler receives: the task, its payload, and ways to report turns and spawn children."""

    def __init__(self, session: _Session, info: TaskInfo, earlier: list[tuple[int, list[TaskResult]]]) -> None:
        self._session = session
        self.info = info
        self._earlier = earlier  # child batches that ended before this (re)run: k-th spawn → k-th batch
        self._spawns = 0
        self._inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._cancelled = threading.Event()
        self._waiting = False  # waiting for children: holds no lease, no heartbeat
        self._reported = False
        self._children: list[tuple[int, list[TaskResult]]] = []  # pages being collected

    # -- the task ---------------------------------------------------------------

    @property
    def id(self) -> int:
        return self.info.id

    @property
    def batch_id(self) -> int:
        return self.info.batch_id

    @property
    def custom_id(self) -> str:
        return self.info.custom_id

    @property
    def agent(self) -> str:
        return self.info.agent

    @property
    def attempt(self) -> int:
        """1 for the first attempt."""
        return self.info.attempt

    @property
    def payload(self) -> bytes:
        return self.info.payload

    def text(self) -> str:
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        """The payload decoded as JSON."""
        return json.loads(self.payload)

    @property
    def cancelled(self) -> bool:
        """True once the daemon cancelled the task (or the worker stopped): stop and return."""
        return self._cancelled.is_set()

    def __repr__(self) -> str:
        return f"TaskContext(id={self.id}, custom_id={self.custom_id!r}, agent={self.agent!r}, attempt={self.attempt})"

    # -- reporting --------------------------------------------------------------

    def report_turn(self, turns: int = 1) -> None:
        """Reports that ``turns`` more turns completed (moves progress with the agent's max_turns)."""
        self._session.send(lambda w: self._session.lib.fanout_worker_turn(w, self.id, turns), self)

    def spawn(
        self,
        tasks: Iterable[_convert.TaskLike],
        *,
        agent: str | None = None,
        metadata: Mapping[str, str] | None = None,
        priority: int = 0,
        completion_window: float | timedelta | None = None,
        timeout: float | timedelta | None = None,
    ) -> list[TaskResult]:
        """Spawns ``tasks`` as a child batch of this task, waits until every one has ended
        and returns their results in task id order. While it waits the task holds no slot.
        ``timeout`` bounds the wait (None: the agent's children timeout); children still
        running then are cancelled. A task re-run after its worker went away gets, from its
        k-th spawn, the results of its k-th child batch instead of spawning again."""
        index = self._spawns
        self._spawns += 1
        if index < len(self._earlier):
            return self._earlier[index][1]
        specs = _convert.task_specs(tasks)
        options = _convert.batch_options(metadata, priority, completion_window)
        lib = self._session.lib
        self._session.send(
            lambda w: lib.fanout_worker_spawn(w, self.id, _convert.cstr(agent), specs, len(specs),
                                              ctypes.byref(options)),
            self,
        )
        kind, *rest = self._receive("spawned")
        status, message, child_batch = rest
        if status != Status.OK:
            raise error_for(status, message)
        with self._session.mu:
            self._waiting = True
        wait_ms = _convert.milliseconds(timeout)
        self._session.send(lambda w: lib.fanout_worker_wait_children(w, self.id, wait_ms), self)
        kind, *rest = self._receive("children", "ack")
        if kind == "ack":  # the wait was refused
            with self._session.mu:
                self._waiting = False
            raise error_for(rest[0], rest[1])
        groups: list[tuple[int, list[TaskResult]]] = rest[0]
        self._earlier = groups
        self._spawns = len(groups)
        for batch_id, results in groups:
            if batch_id == child_batch:
                return results
        return []

    def _receive(self, *kinds: str) -> tuple[Any, ...]:
        while True:
            item = self._inbox.get()
            if item[0] in kinds:
                return item
            if item[0] == "error":
                raise error_for(item[1], item[2])
            if item[0] in ("cancel", "stop"):
                self._cancelled.set()
                raise TaskCancelled(f"task {self.id} was cancelled" if item[0] == "cancel" else "the worker stopped")
            # anything else (an ack for a refused turn) is not what we wait for


class _Session:
    """One connection and worker session; ``serve`` runs in the calling thread."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.client = Client(worker.socket, timeout=worker.timeout, name=worker.name)
        self.lib = self.client._lib
        self.mu = threading.Lock()
        self.tasks: dict[int, TaskContext] = {}
        self.unacked: set[int] = set()  # tasks whose result or failure awaits the daemon's ack
        self.outbox: queue.Queue[tuple[Callable[[int], int], TaskContext | None, str]] = queue.Queue()
        self.closed = False
        self.lease_ms = 0
        self.next_heartbeat = 0.0
        self.handle: int | None = None
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        agents = list(worker.agents.values())
        regs = (_lib.AgentRegistration * len(agents))()
        for i, a in enumerate(agents):
            regs[i].name = a.name.encode()
            regs[i].concurrency = a.concurrency
            regs[i].max_turns = a.max_turns
        handle = ctypes.c_void_p()
        try:
            with self.client._lock:
                self.client._check(
                    self.lib.fanout_worker_open(self.client._handle(), worker.name.encode(), regs, len(agents),
                                                ctypes.byref(handle))
                )
        except BaseException:
            self.close()
            raise
        self.handle = handle.value

    # -- from handler threads -------------------------------------------------

    def send(self, fn: Callable[[int], int], ctx: TaskContext | None, what: str = "") -> None:
        self.outbox.put((fn, ctx, what))
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wfd, b"x")

    def finish(self, ctx: TaskContext, result: bytes | None, failure: TaskFailed | None) -> None:
        lib = self.lib
        if failure is None:
            data = result or b""
            fn: Callable[[int], int] = lambda w: lib.fanout_worker_result(w, ctx.id, data, len(data), None)  # noqa: E731
        else:
            retry_ms = _convert.milliseconds(failure.retry_after)
            fn = lambda w: lib.fanout_worker_failure(  # noqa: E731
                w, ctx.id, _convert.cstr(failure.message), _convert.cstr(failure.code), int(failure.retryable),
                retry_ms,
            )
        with self.mu:  # marked reported and queued at once: a draining serve() sees one or the other
            if ctx._reported or self.closed:
                return
            ctx._reported = True
            self.outbox.put((fn, None, f"report {ctx.id}"))
        self.wake()

    # -- the I/O thread ---------------------------------------------------------

    def serve(self) -> None:
        """Serves until the worker stops (drained) or the session ends (raises FanoutError)."""
        drained = False
        drain_deadline = 0.0
        self.next_heartbeat = time.monotonic()
        fd = self.lib.fanout_client_fd(self.client._handle())
        try:
            while True:
                self._flush_outbox()
                self._read_messages()
                now = time.monotonic()
                if self.worker._stopping.is_set():
                    if not drained:
                        self._check(self.lib.fanout_worker_drain(self.handle))
                        drained = True
                        drain_deadline = now + self.worker.drain_timeout
                    with self.mu:
                        busy = [c for c in self.tasks.values() if not c._waiting and not c._reported]
                        idle = not busy and self.outbox.empty() and not self.unacked
                    if idle or now >= drain_deadline:  # every report sent and answered
                        return
                if now >= self.next_heartbeat:
                    self._heartbeat()
                    self.next_heartbeat = now + self._heartbeat_interval()
                wait = max(0.0, min(0.2, self.next_heartbeat - time.monotonic()))
                readable, _, _ = select.select([fd, self._rfd], [], [], wait)
                if self._rfd in readable:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._rfd, 4096)
        finally:
            self.close()

    def _check(self, status: int) -> None:
        with self.client._lock:
            self.client._check(status)

    def _flush_outbox(self) -> None:
        while True:
            try:
                fn, ctx, what = self.outbox.get_nowait()
            except queue.Empty:
                return
            st = fn(self.handle)  # type: ignore[arg-type]
            if what.startswith("report "):
                with self.mu:
                    task_id = int(what.split()[1])
                    self.tasks.pop(task_id, None)
                    if st == Status.OK:
                        self.unacked.add(task_id)
            if st == Status.OK:
                continue
            message = _convert.text(self.lib.fanout_client_last_message(self.client._handle()))
            if ctx is not None:
                ctx._inbox.put(("error", st, message))
            if st != Status.BAD_ARGUMENT:
                raise error_for(st, message)  # the session is gone
            log.warning("worker report refused by libfanout: %s", message)

    def _read_messages(self) -> None:
        out = ctypes.POINTER(_lib.WorkerMessage)()
        while True:
            st = self.lib.fanout_worker_next(self.handle, 0, ctypes.byref(out))
            if st == Status.TIMEOUT:
                return
            if st == Status.DONE:
                raise error_for(st, "the daemon ended the worker session")
            self._check(st)
            self._dispatch(out.contents)  # copies what it keeps: borrowed until the next call

    def _dispatch(self, m: _lib.WorkerMessage) -> None:
        kind = m.kind
        with self.mu:
            ctx = self.tasks.get(m.task_id)
        if kind == _lib.WORKER_ASSIGNMENT:
            info = _convert.task_info(m.task.contents)
            self.lease_ms = m.lease_ms if not self.lease_ms else min(self.lease_ms, m.lease_ms)
            self.next_heartbeat = min(self.next_heartbeat, time.monotonic() + self._heartbeat_interval())
            if m.resumed and ctx is not None:
                ctx.info = info  # the waiting handler resumes once the pages are in
                ctx._children = []
                return
            ctx = TaskContext(self, info, [])
            with self.mu:
                self.tasks[info.id] = ctx
            if m.resumed:  # a task this session does not remember: collect its children first
                ctx._waiting = True
                return
            self._start(ctx)
        elif kind == _lib.WORKER_CHILDREN_DONE:
            if ctx is None:
                return
            if m.n_results:
                page = [_convert.task_result(m.results[i]) for i in range(m.n_results)]
                if ctx._children and ctx._children[-1][0] == m.child_batch_id:
                    ctx._children[-1][1].extend(page)
                else:
                    ctx._children.append((m.child_batch_id, page))
            if m.last:
                groups, ctx._children = ctx._children, []
                with self.mu:
                    ctx._waiting = False
                if ctx._spawns == 0 and not ctx._earlier and not self._has_thread(ctx):
                    ctx._earlier = groups
                    self._start(ctx)
                else:
                    ctx._inbox.put(("children", groups))
        elif kind == _lib.WORKER_SPAWNED:
            if ctx is not None:
                ctx._inbox.put(("spawned", m.status, _convert.text(m.status_message), m.child_batch_id))
        elif kind == _lib.WORKER_ACK:
            with self.mu:
                self.unacked.discard(m.task_id)
            if ctx is not None and m.status != Status.OK:
                ctx._inbox.put(("ack", m.status, _convert.text(m.status_message)))
            elif m.status != Status.OK and m.task_id:
                log.info("report for task %d not taken: %s", m.task_id, _convert.text(m.status_message))
        elif kind == _lib.WORKER_CANCEL:
            if ctx is None:
                return
            ctx._cancelled.set()
            with self.mu:
                already, ctx._reported = ctx._reported, True
                waiting = ctx._waiting
                self.tasks.pop(ctx.id, None)
            ctx._inbox.put(("cancel",))
            if not already and not waiting:  # the failure acknowledges the cancel and frees the slot
                self._check(self.lib.fanout_worker_failure(self.handle, ctx.id, b"cancelled", b"cancelled", 0, 0))
                with self.mu:
                    self.unacked.add(ctx.id)

    def _has_thread(self, ctx: TaskContext) -> bool:
        return getattr(ctx, "_thread", None) is not None

    def _start(self, ctx: TaskContext) -> None:
        spec = self.worker.agents.get(ctx.agent)
        thread = threading.Thread(target=self._run_handler, args=(ctx, spec), name=f"fanout-task-{ctx.id}",
                                  daemon=True)
        ctx._thread = thread  # type: ignore[attr-defined]
        self.worker._threads.add(thread)
        thread.start()

    def _run_handler(self, ctx: TaskContext, spec: AgentSpec | None) -> None:
        try:
            if spec is None:
                raise TaskFailed(f"this worker has no handler for agent {ctx.agent!r}", code="no_handler")
            value = spec.handler(ctx)
            self.finish(ctx, encode_payload(value) if value is not None else b"", None)
        except TaskFailed as e:
            self.finish(ctx, None, e)
        except TaskCancelled:
            pass  # the cancel was acknowledged already, or the session is gone
        except Exception as e:
            log.warning("handler for task %d (%s) raised", ctx.id, ctx.custom_id, exc_info=True)
            self.finish(ctx, None, TaskFailed(f"{type(e).__name__}: {e}", code="exception"))
        finally:
            self.worker._threads.discard(threading.current_thread())

    def _heartbeat_interval(self) -> float:
        """A third of the lease (PROTOCOL.md §5.12 step 4)."""
        return max(0.05, self.lease_ms / 3000) if self.lease_ms else 5.0

    def _heartbeat(self) -> None:
        with self.mu:
            ids = [c.id for c in self.tasks.values() if not c._waiting and not c._reported]
        if ids:
            arr = (ctypes.c_uint64 * len(ids))(*ids)
            self._check(self.lib.fanout_worker_heartbeat(self.handle, arr, len(ids)))

    def close(self) -> None:
        with self.mu:
            self.closed = True
            contexts = list(self.tasks.values())
            self.tasks.clear()
        for ctx in contexts:  # handlers blocked in spawn() stop; the daemon re-runs or resumes their tasks
            ctx._cancelled.set()
            ctx._inbox.put(("stop",))
        if self.handle is not None:
            with self.client._lock:
                self.lib.fanout_worker_free(self.handle)
            self.handle = None
        self.client.close()
        for fd in (self._rfd, self._wfd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._rfd = self._wfd = -1


class Worker:
    """Serves agents' tasks with Python functions.

    >>> worker = Worker(name="summarizer")
    >>> @worker.agent("summarize", concurrency=4)
    ... def summarize(task):
    ...     return {"summary": task.json()["text"][:100]}
    >>> worker.run()  # blocks; SIGINT or worker.stop() drains
    """

    def __init__(
        self,
        name: str = "fanout-python-worker",
        *,
        socket: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        drain_timeout: float = 30.0,
        reconnect: bool = True,
    ) -> None:
        self.name = name
        self.socket = socket
        self.timeout = timeout
        self.drain_timeout = drain_timeout
        self.reconnect = reconnect
        self.agents: dict[str, AgentSpec] = {}
        self.ready = threading.Event()  # set while registered with the daemon
        self._stopping = threading.Event()
        self._session: _Session | None = None
        self._threads: set[threading.Thread] = set()

    def agent(self, name: str, *, concurrency: int = 1, max_turns: int = 0) -> Callable[[H], H]:
        """Decorator: ``handler(task)`` runs each task of agent ``name``; its return value
        (bytes, str or JSON-able) is the result, an exception fails the task."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")

        def register(handler: H) -> H:
            self.agents[name] = AgentSpec(name, handler, concurrency, max_turns)
            return handler

        return register

    def stop(self) -> None:
        """Takes no new tasks; run() returns once the running ones are reported (or drain_timeout)."""
        self._stopping.set()
        session = self._session
        if session is not None:
            session.wake()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        """Connects, registers the agents and serves tasks until stop() or SIGINT/SIGTERM.
        Reconnects with backoff when the daemon goes away (unless reconnect=False)."""
        if not self.agents:
            raise ValueError("no agents: decorate a handler with @worker.agent(name)")
        try:
            with self._signals():
                backoff = 0.2
                while not self._stopping.is_set():
                    try:
                        self._session = _Session(self)
                    except FanoutError as e:
                        if e.status not in _RECONNECT or not self.reconnect:
                            raise
                        log.warning("cannot open a worker session (%s); retrying in %.1f s", e, backoff)
                        self._stopping.wait(backoff)
                        backoff = min(backoff * 2, 10.0)
                        continue
                    backoff = 0.2
                    self.ready.set()
                    try:
                        self._session.serve()
                        return
                    except FanoutError as e:
                        if not self.reconnect or e.status not in _RECONNECT:
                            raise
                        log.warning("worker session ended (%s); reconnecting", e)
                    finally:
                        self.ready.clear()
                        self._session = None
        finally:
            self._stopping.clear()  # stopped: run() may serve again

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Any] = {}

        def handle(signum: int, frame: FrameType | None) -> None:
            if self._stopping.is_set():  # second signal: give up draining
                raise KeyboardInterrupt
            log.info("signal %d: draining", signum)
            self.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handle)
        try:
            yield
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Blocks until the worker is registered (raises FanoutTimeout otherwise)."""
        if not self.ready.wait(timeout):
            raise FanoutTimeout(Status.TIMEOUT, f"worker {self.name!r} not registered within {timeout} s")


__all__ = ["Worker", "TaskContext", "AgentSpec", "TaskFailed", "TaskCancelled", "Payload"]
