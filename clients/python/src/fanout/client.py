"""The Client: submit batches, read them back, follow events."""

from __future__ import annotations

import asyncio
import ctypes
import getpass
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

from . import _convert, _lib
from .errors import FanoutError, Status, SubscriptionLagged, error_for
from .types import (
    Batch,
    Event,
    EventType,
    Limits,
    Retried,
    ServerInfo,
    TaskInfo,
    TaskResult,
)

T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0
_POLL_MS = 200  # how long one blocking wait in C lasts before the lock is released again


def _timeout_ms(timeout: float | None) -> int:
    return -1 if timeout is None else max(0, int(timeout * 1000))


def default_owner() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return f"uid-{os.getuid()}"


def default_socket_path() -> str:
    """The socket path used when none is given (resolved by libfanout, like the daemon)."""
    lib = _lib.lib()
    out = ctypes.c_void_p()
    st = lib.fanout_default_socket_path(ctypes.byref(out))
    if st != Status.OK:
        raise error_for(st, "cannot resolve the default socket path")
    try:
        return _convert.text(ctypes.string_at(out.value) if out.value else b"")
    finally:
        lib.fanout_string_free(out)


class Client:
    """A connection to fanoutd.

    ``socket`` None resolves like the daemon ($FANOUT_SOCKET, then
    $XDG_RUNTIME_DIR/fanout/fanoutd.sock, else ${TMPDIR:-/tmp}/fanout-<uid>/fanoutd.sock).
    ``timeout`` bounds each call, in seconds (None: wait forever). A Client may
    be shared between threads: calls are serialized by a lock.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        name: str = "fanout-python",
    ) -> None:
        self._lib = _lib.lib()
        self._lock = threading.RLock()
        self._ptr: int | None = None
        ptr = ctypes.c_void_p()
        st = self._lib.fanout_client_new(ctypes.byref(ptr))
        if st != Status.OK:
            raise error_for(st, "cannot allocate a client")
        self._ptr = ptr.value
        self.socket = None if socket is None else os.fspath(socket)
        try:
            self._check(self._lib.fanout_client_set_timeout(self._ptr, _timeout_ms(timeout)))
            self._check(
                self._lib.fanout_client_connect(self._ptr, _convert.cstr(self.socket), _convert.cstr(name))
            )
        except BaseException:
            self.close()
            raise

    # -- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection. Open iterators then fail; close them too."""
        with self._lock:
            if self._ptr is not None:
                self._lib.fanout_client_free(self._ptr)
                self._ptr = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    @property
    def closed(self) -> bool:
        return self._ptr is None

    @property
    def server_version(self) -> str:
        with self._lock:
            return _convert.text(self._lib.fanout_client_server_version(self._handle()))

    @property
    def limits(self) -> Limits:
        with self._lock:
            out = _lib.Limits()
            self._check(self._lib.fanout_client_limits(self._handle(), ctypes.byref(out)))
            return _convert._copy_fields(Limits, out)

    @property
    def timeout(self) -> float | None:
        with self._lock:
            ms = self._lib.fanout_client_timeout(self._handle())
        return None if ms < 0 else ms / 1000

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        with self._lock:
            self._check(self._lib.fanout_client_set_timeout(self._handle(), _timeout_ms(value)))

    # -- plumbing -------------------------------------------------------------

    def _handle(self) -> int:
        if self._ptr is None:
            raise error_for(Status.BAD_ARGUMENT, "the client is closed")
        return self._ptr

    def _check(self, status: int) -> None:
        """Raises for a failed status; call with the lock held (the message is the client's)."""
        if status != Status.OK:
            message = ""
            if self._ptr is not None:
                message = _convert.text(self._lib.fanout_client_last_message(self._ptr))
            raise error_for(status, message or _convert.text(self._lib.fanout_status_string(status)))

    def _owned(
        self,
        ctype: type[ctypes.Structure],
        free: Callable[[Any], None],
        convert: Callable[[Any], T],
        call: Callable[[int, Any], int],
    ) -> T:
        """Runs ``call(handle, &out)``, copies *out with ``convert`` and frees it."""
        out = ctypes.POINTER(ctype)()
        with self._lock:
            try:
                self._check(call(self._handle(), ctypes.byref(out)))
                return convert(out.contents)
            finally:
                free(out)  # every fanout_*_free accepts NULL

    def _batch_call(self, call: Callable[[int, Any], int]) -> Batch:
        return self._owned(_lib.BatchInfo, self._lib.fanout_batch_info_free, _convert.batch, call)

    def _task_call(self, call: Callable[[int, Any], int]) -> TaskInfo:
        return self._owned(_lib.TaskInfo, self._lib.fanout_task_info_free, _convert.task_info, call)

    # -- calls ----------------------------------------------------------------

    def submit(
        self,
        tasks: Iterable[_convert.TaskLike],
        *,
        agent: str | None = None,
        owner: str | None = None,
        metadata: Mapping[str, str] | None = None,
        priority: int = 0,
        completion_window: float | timedelta | None = None,
    ) -> Batch:
        """Creates a batch (all tasks or none). ``agent`` is the default for tasks naming
        none; ``owner`` defaults to the user name; ``completion_window`` is in seconds."""
        specs = _convert.task_specs(tasks)
        options = _convert.batch_options(metadata, priority, completion_window)
        owner_id = default_owner() if owner is None else owner
        return self._batch_call(
            lambda h, out: self._lib.fanout_enqueue_batch(
                h, _convert.cstr(owner_id), _convert.cstr(agent), specs, len(specs), ctypes.byref(options), out
            )
        )

    def batch(self, batch_id: int) -> Batch:
        return self._batch_call(lambda h, out: self._lib.fanout_get_batch(h, batch_id, out))

    def task(self, task_id: int, *, include_payload: bool = False) -> TaskInfo:
        return self._task_call(lambda h, out: self._lib.fanout_get_task(h, task_id, int(include_payload), out))

    def batches(
        self,
        owner: str | None = None,
        *,
        parent_batch_id: int = 0,
        limit: int | None = None,
        page_size: int = 0,
    ) -> Iterator[Batch]:
        """Batches newest first, fetched page by page; ``limit`` caps how many are yielded."""
        before = 0
        yielded = 0
        while limit is None or yielded < limit:
            options = _lib.ListOptions(
                owner_id=_convert.cstr(owner), limit=page_size, before_id=before, parent_batch_id=parent_batch_id
            )

            def page(lst: _lib.BatchList) -> tuple[list[Batch], int]:
                return [_convert.batch(lst.batches[i].contents) for i in range(lst.n_batches)], lst.next_before_id

            items, before = self._owned(
                _lib.BatchList,
                self._lib.fanout_batch_list_free,
                page,
                lambda h, out: self._lib.fanout_list_batches(h, ctypes.byref(options), out),
            )
            for b in items:
                if limit is not None and yielded >= limit:
                    return
                yielded += 1
                yield b
            if before == 0 or not items:
                return

    def cancel(self, batch_id: int) -> Batch:
        """Cancels a batch (idempotent) and returns it as it is then."""
        return self._batch_call(lambda h, out: self._lib.fanout_cancel_batch(h, batch_id, out))

    def cancel_task(self, task_id: int) -> TaskInfo:
        return self._task_call(lambda h, out: self._lib.fanout_cancel_task(h, task_id, out))

    def retry_failed(
        self, batch_id: int, *, include_expired: bool = False, include_cancelled: bool = False
    ) -> Retried:
        """Re-queues a finished batch's failed tasks (and expired/cancelled ones if asked)."""
        retried = ctypes.c_uint32()
        batch = self._batch_call(
            lambda h, out: self._lib.fanout_retry_failed(
                h, batch_id, int(include_expired), int(include_cancelled), ctypes.byref(retried), out
            )
        )
        return Retried(count=retried.value, batch=batch)

    def server_info(self) -> ServerInfo:
        return self._owned(
            _lib.ServerInfo,
            self._lib.fanout_server_info_free,
            _convert.server_info,
            self._lib.fanout_get_server_info,
        )

    # -- streams --------------------------------------------------------------

    def results(self, batch_id: int, *, page_size: int = 0, page_bytes: int = 0,
                after_task_id: int = 0) -> Iterator[TaskResult]:
        """The batch's terminal tasks, in task id order (what is finished so far).

        Pages hold at most ``page_size`` results and about ``page_bytes`` bytes of
        them (0: the daemon's limits, which also cap both); at least one result."""
        handle = ctypes.c_void_p()
        with self._lock:
            self._check(self._lib.fanout_results_open_paged(self._handle(), batch_id, page_size, page_bytes,
                                                            after_task_id, ctypes.byref(handle)))
        try:
            out = ctypes.POINTER(_lib.TaskResult)()
            while True:
                with self._lock:
                    st = self._lib.fanout_results_next(handle, ctypes.byref(out))
                    if st == Status.DONE:
                        return
                    self._check(st)
                    item = _convert.task_result(out.contents)  # copied before the next call
                yield item
        finally:
            with self._lock:
                self._lib.fanout_results_free(handle)

    def events(
        self,
        *,
        owner: str | None = None,
        batch_id: int = 0,
        since: int = 0,
        follow: bool = True,
        types: Sequence[EventType | int] | None = None,
        idle_timeout: float | None = None,
    ) -> Subscription:
        """Events matching the filter with sequence > ``since``; with ``follow``, live ones
        after the replay. Iterate the returned Subscription (a context manager)."""
        return Subscription(self, owner=owner, batch_id=batch_id, since=since, follow=follow, types=types,
                            idle_timeout=idle_timeout)

    async def aevents(
        self,
        *,
        owner: str | None = None,
        batch_id: int = 0,
        since: int = 0,
        follow: bool = True,
        types: Sequence[EventType | int] | None = None,
    ) -> AsyncIterator[Event]:
        """events() for asyncio: the blocking C calls run in the loop's default executor,
        in short waits, so the loop never blocks and cancellation is prompt."""
        loop = asyncio.get_running_loop()
        sub = await loop.run_in_executor(
            None, lambda: Subscription(self, owner=owner, batch_id=batch_id, since=since, follow=follow,
                                       types=types)
        )
        try:
            while True:
                item = await loop.run_in_executor(None, sub.poll, _POLL_MS / 1000)
                if item is _END:
                    return
                if item is not None:
                    yield item
        finally:
            await loop.run_in_executor(None, sub.close)

    def wait(self, batch_id: int, *, timeout: float | None = None) -> Batch:
        """Blocks until the batch is terminal (completed, cancelled or failed) and returns it."""
        start = self.server_info().last_sequence
        batch = self.batch(batch_id)
        if batch.done:
            return batch
        ends = [EventType.BATCH_COMPLETED, EventType.BATCH_CANCELLED, EventType.BATCH_FAILED]
        with self.events(batch_id=batch_id, since=start, types=ends, idle_timeout=timeout) as sub:
            for _ in sub:
                break
            else:
                raise error_for(Status.TIMEOUT, f"batch {batch_id} did not finish within {timeout} s")
        return self.batch(batch_id)

    async def await_batch(self, batch_id: int, *, timeout: float | None = None) -> Batch:
        """wait() for asyncio."""
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.wait(batch_id, timeout=timeout))


class _EndMarker:
    pass


_END: Any = _EndMarker()


class Subscription(Iterator[Event]):
    """An open Subscribe stream. Iterating yields Events; ``close()`` (or ``with``) ends it.

    ``last_sequence`` is the resume point. ``idle_timeout`` (seconds) ends the
    iteration when no event came for that long.
    """

    def __init__(
        self,
        client: Client,
        *,
        owner: str | None,
        batch_id: int,
        since: int,
        follow: bool,
        types: Sequence[EventType | int] | None,
        idle_timeout: float | None = None,
    ) -> None:
        self._client = client
        self._lib = client._lib
        self._handle: int | None = None
        self.idle_timeout = idle_timeout
        type_list = list(types or [])
        arr = (ctypes.c_int * len(type_list))(*[int(t) for t in type_list])
        options = _lib.SubscribeOptions(
            owner_id=_convert.cstr(owner),
            event_types=ctypes.cast(arr, ctypes.POINTER(ctypes.c_int)) if type_list else None,
            n_event_types=len(type_list),
            batch_id=batch_id,
            since=since,
            follow=int(follow),
        )
        handle = ctypes.c_void_p()
        with client._lock:
            client._check(self._lib.fanout_subscribe(client._handle(), ctypes.byref(options), ctypes.byref(handle)))
        self._handle = handle.value
        self._out = ctypes.POINTER(_lib.Event)()

    def poll(self, timeout: float | None) -> Event | None | Any:
        """One wait of at most ``timeout`` seconds: an Event, None (nothing yet) or _END."""
        with self._client._lock:
            if self._handle is None:
                return _END
            st = self._lib.fanout_subscription_next(self._handle, _timeout_ms(timeout), ctypes.byref(self._out))
            if st == Status.OK:
                return _convert.event(self._out.contents)  # copied: borrowed until the next call
            if st == Status.TIMEOUT:
                return None
            if st == Status.DONE:
                self._free()
                return _END
            message = ""
            if self._client._ptr is not None:
                message = _convert.text(self._lib.fanout_client_last_message(self._client._ptr))
            lagged = bool(self._lib.fanout_subscription_lagged(self._handle))
            last = self.last_sequence
            self._free()
        if lagged:
            raise SubscriptionLagged(st, message, last)
        raise error_for(st, message)

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Event:
        deadline = None if self.idle_timeout is None else time.monotonic() + self.idle_timeout
        while True:
            wait = _POLL_MS / 1000
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            item = self.poll(wait)
            if item is _END:
                raise StopIteration
            if item is not None:
                return item
            if deadline is not None and time.monotonic() >= deadline:
                raise StopIteration

    @property
    def lagged(self) -> bool:
        with self._client._lock:
            return self._handle is not None and bool(self._lib.fanout_subscription_lagged(self._handle))

    @property
    def last_sequence(self) -> int:
        with self._client._lock:
            if self._handle is None:
                return self._last
            return int(self._lib.fanout_subscription_last_sequence(self._handle))

    _last = 0

    def _free(self) -> None:
        if self._handle is not None:
            self._last = int(self._lib.fanout_subscription_last_sequence(self._handle))
            self._lib.fanout_subscription_free(self._handle)
            self._handle = None

    def close(self) -> None:
        with self._client._lock:
            self._free()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


__all__ = ["Client", "Subscription", "FanoutError", "default_socket_path"]
