"""ctypes declarations for libfanout (clients/c/include/fanout.h) and the library loader.

Everything here mirrors the C header one to one; the rest of the package never
touches ctypes structs outside this module and ``_convert.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from ctypes import (
    POINTER,
    Structure,
    c_char_p,
    c_double,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path

from .errors import LibraryNotFoundError

SONAME = "libfanout.so.1"

# ---------------------------------------------------------------------------
# Structs
# ---------------------------------------------------------------------------


class Limits(Structure):
    _fields_ = [
        ("max_frame_bytes", c_uint32),
        ("max_tasks_per_batch", c_uint32),
        ("max_payload_bytes", c_uint32),
        ("max_custom_id_bytes", c_uint32),
        ("max_streams_per_connection", c_uint32),
        ("max_connections", c_uint32),
        ("subscriber_buffer", c_uint32),
        ("global_concurrency", c_uint32),
        ("max_results_page", c_uint32),
    ]


class Counts(Structure):
    _fields_ = [
        (name, c_uint32)
        for name in (
            "total",
            "pending",
            "running",
            "waiting_children",
            "retry_wait",
            "completed",
            "failed",
            "cancelled",
            "expired",
        )
    ]


class Usage(Structure):
    _fields_ = [
        ("prompt_tokens", c_uint64),
        ("completion_tokens", c_uint64),
        ("total_tokens", c_uint64),
    ]


class TaskError(Structure):
    _fields_ = [
        ("has_error", c_int),
        ("message", c_char_p),
        ("code", c_char_p),
        ("retryable", c_int),
    ]


class KV(Structure):
    _fields_ = [("key", c_char_p), ("value", c_char_p)]


class TaskSpec(Structure):
    # payload is `const void *`; c_char_p accepts a bytes object (NULs included,
    # the length is payload_len) and keeps it alive with the struct.
    _fields_ = [
        ("custom_id", c_char_p),
        ("agent", c_char_p),
        ("payload", c_char_p),
        ("payload_len", c_size_t),
        ("priority", c_int32),
        ("max_attempts", c_uint32),
        ("timeout_ms", c_uint64),
        ("url", c_char_p),
    ]


class BatchInfo(Structure):
    _fields_ = [
        ("id", c_uint64),
        ("owner_id", c_char_p),
        ("agent", c_char_p),
        ("status", c_int),
        ("counts", Counts),
        ("progress", c_double),
        ("n_metadata", c_size_t),
        ("metadata", POINTER(KV)),
        ("parent_task_id", c_uint64),
        ("created_at_ms", c_int64),
        ("started_at_ms", c_int64),
        ("finished_at_ms", c_int64),
        ("deadline_at_ms", c_int64),
        ("creator_uid", c_uint32),
        ("max_turns", c_uint32),
        ("usage", Usage),
    ]


class BatchList(Structure):
    _fields_ = [
        ("n_batches", c_size_t),
        ("batches", POINTER(POINTER(BatchInfo))),
        ("next_before_id", c_uint64),
    ]


class TaskInfo(Structure):
    _fields_ = [
        ("id", c_uint64),
        ("batch_id", c_uint64),
        ("custom_id", c_char_p),
        ("owner_id", c_char_p),
        ("agent", c_char_p),
        ("status", c_int),
        ("priority", c_int32),
        ("attempt", c_uint32),
        ("max_attempts", c_uint32),
        ("timeout_ms", c_uint64),
        ("turns_completed", c_uint32),
        ("max_turns", c_uint32),
        ("result", c_void_p),
        ("result_len", c_size_t),
        ("error", TaskError),
        ("parent_task_id", c_uint64),
        ("created_at_ms", c_int64),
        ("started_at_ms", c_int64),
        ("finished_at_ms", c_int64),
        ("payload", c_void_p),
        ("payload_len", c_size_t),
        ("url", c_char_p),
        ("status_code", c_uint32),
        ("request_id", c_char_p),
        ("usage", Usage),
    ]


class TaskResult(Structure):
    _fields_ = [
        ("task_id", c_uint64),
        ("custom_id", c_char_p),
        ("status", c_int),
        ("result", c_void_p),
        ("result_len", c_size_t),
        ("error", TaskError),
        ("attempt", c_uint32),
        ("status_code", c_uint32),
        ("request_id", c_char_p),
        ("usage", Usage),
        ("url", c_char_p),
    ]


class Event(Structure):
    _fields_ = [
        ("sequence", c_uint64),
        ("type", c_int),
        ("timestamp_ms", c_int64),
        ("owner_id", c_char_p),
        ("batch_id", c_uint64),
        ("task_id", c_uint64),
        ("custom_id", c_char_p),
        ("parent_task_id", c_uint64),
        ("progress", c_double),
        ("counts", Counts),
        ("attempt", c_uint32),
        ("turn", c_uint32),
        ("retry_delay_ms", c_uint64),
        ("error", TaskError),
    ]


class AgentInfo(Structure):
    _fields_ = [
        ("name", c_char_p),
        ("runner", c_char_p),
        ("concurrency", c_uint32),
        ("max_turns", c_uint32),
        ("max_attempts", c_uint32),
        ("running", c_uint32),
        ("workers", c_uint32),
    ]


class WorkerSlots(Structure):
    _fields_ = [("agent", c_char_p), ("slots", c_uint32), ("free_slots", c_uint32)]


class ConnectedWorker(Structure):
    _fields_ = [
        ("id", c_uint64),
        ("name", c_char_p),
        ("uid", c_uint32),
        ("n_agents", c_size_t),
        ("agents", POINTER(WorkerSlots)),
        ("n_running_task_ids", c_size_t),
        ("running_task_ids", POINTER(c_uint64)),
    ]


class ServerInfo(Structure):
    _fields_ = [
        ("server_version", c_char_p),
        ("protocol_version", c_uint32),
        ("started_at_ms", c_int64),
        ("pending_tasks", c_uint64),
        ("running_tasks", c_uint64),
        ("retry_wait_tasks", c_uint64),
        ("connections", c_uint32),
        ("workers", c_uint32),
        ("limits", Limits),
        ("n_agents", c_size_t),
        ("agents", POINTER(AgentInfo)),
        ("last_sequence", c_uint64),
        ("n_worker_list", c_size_t),
        ("worker_list", POINTER(ConnectedWorker)),
    ]


class BatchOptions(Structure):
    _fields_ = [
        ("metadata", POINTER(KV)),
        ("n_metadata", c_size_t),
        ("priority", c_int32),
        ("completion_window_ms", c_uint64),
    ]


class ListOptions(Structure):
    _fields_ = [
        ("owner_id", c_char_p),
        ("limit", c_uint32),
        ("before_id", c_uint64),
        ("parent_batch_id", c_uint64),
    ]


class SubscribeOptions(Structure):
    _fields_ = [
        ("owner_id", c_char_p),
        ("event_types", POINTER(c_int)),
        ("n_event_types", c_size_t),
        ("batch_id", c_uint64),
        ("since", c_uint64),
        ("follow", c_int),
    ]


class AgentRegistration(Structure):
    _fields_ = [("name", c_char_p), ("concurrency", c_uint32), ("max_turns", c_uint32)]


class WorkerMessage(Structure):
    _fields_ = [
        ("kind", c_int),
        ("task_id", c_uint64),
        ("task", POINTER(TaskInfo)),
        ("lease_ms", c_uint64),
        ("resumed", c_int),
        ("child_batch_id", c_uint64),
        ("n_results", c_size_t),
        ("results", POINTER(TaskResult)),
        ("last", c_int),
        ("status", c_int),
        ("status_message", c_char_p),
    ]


# Worker message kinds (fanout_worker_message_kind).
WORKER_ASSIGNMENT = 1
WORKER_CANCEL = 2
WORKER_CHILDREN_DONE = 3
WORKER_ACK = 4
WORKER_SPAWNED = 5

# Opaque handles are plain void pointers.
ClientP = c_void_p
ResultsP = c_void_p
SubscriptionP = c_void_p
WorkerP = c_void_p

_S = c_int  # fanout_status

# name: (restype, argtypes)
_PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "fanout_status_string": (c_char_p, [_S]),
    "fanout_batch_info_free": (None, [POINTER(BatchInfo)]),
    "fanout_batch_list_free": (None, [POINTER(BatchList)]),
    "fanout_task_info_free": (None, [POINTER(TaskInfo)]),
    "fanout_server_info_free": (None, [POINTER(ServerInfo)]),
    "fanout_string_free": (None, [c_void_p]),
    "fanout_default_socket_path": (_S, [POINTER(c_void_p)]),
    "fanout_client_new": (_S, [POINTER(ClientP)]),
    "fanout_client_connect": (_S, [ClientP, c_char_p, c_char_p]),
    "fanout_client_free": (None, [ClientP]),
    "fanout_client_set_timeout": (_S, [ClientP, c_int]),
    "fanout_client_timeout": (c_int, [ClientP]),
    "fanout_client_last_message": (c_char_p, [ClientP]),
    "fanout_client_last_status": (_S, [ClientP]),
    "fanout_client_fd": (c_int, [ClientP]),
    "fanout_client_server_version": (c_char_p, [ClientP]),
    "fanout_client_limits": (_S, [ClientP, POINTER(Limits)]),
    "fanout_enqueue_batch": (
        _S,
        [ClientP, c_char_p, c_char_p, POINTER(TaskSpec), c_size_t, POINTER(BatchOptions),
         POINTER(POINTER(BatchInfo))],
    ),
    "fanout_enqueue_task": (_S, [ClientP, c_char_p, POINTER(TaskSpec), POINTER(POINTER(TaskInfo))]),
    "fanout_get_batch": (_S, [ClientP, c_uint64, POINTER(POINTER(BatchInfo))]),
    "fanout_get_task": (_S, [ClientP, c_uint64, c_int, POINTER(POINTER(TaskInfo))]),
    "fanout_list_batches": (_S, [ClientP, POINTER(ListOptions), POINTER(POINTER(BatchList))]),
    "fanout_cancel_batch": (_S, [ClientP, c_uint64, POINTER(POINTER(BatchInfo))]),
    "fanout_cancel_task": (_S, [ClientP, c_uint64, POINTER(POINTER(TaskInfo))]),
    "fanout_retry_failed": (
        _S,
        [ClientP, c_uint64, c_int, c_int, POINTER(c_uint32), POINTER(POINTER(BatchInfo))],
    ),
    "fanout_get_server_info": (_S, [ClientP, POINTER(POINTER(ServerInfo))]),
    "fanout_results_open": (_S, [ClientP, c_uint64, c_uint32, c_uint64, POINTER(ResultsP)]),
    "fanout_results_open_paged": (_S, [ClientP, c_uint64, c_uint32, c_uint32, c_uint64, POINTER(ResultsP)]),
    "fanout_results_next": (_S, [ResultsP, POINTER(POINTER(TaskResult))]),
    "fanout_results_free": (None, [ResultsP]),
    "fanout_subscribe": (_S, [ClientP, POINTER(SubscribeOptions), POINTER(SubscriptionP)]),
    "fanout_subscription_next": (_S, [SubscriptionP, c_int, POINTER(POINTER(Event))]),
    "fanout_subscription_lagged": (c_int, [SubscriptionP]),
    "fanout_subscription_last_sequence": (c_uint64, [SubscriptionP]),
    "fanout_subscription_free": (None, [SubscriptionP]),
    "fanout_worker_open": (
        _S, [ClientP, c_char_p, POINTER(AgentRegistration), c_size_t, POINTER(WorkerP)]
    ),
    "fanout_worker_next": (_S, [WorkerP, c_int, POINTER(POINTER(WorkerMessage))]),
    "fanout_worker_heartbeat": (_S, [WorkerP, POINTER(c_uint64), c_size_t]),
    "fanout_worker_turn": (_S, [WorkerP, c_uint64, c_uint32]),
    "fanout_worker_result": (_S, [WorkerP, c_uint64, c_char_p, c_size_t, POINTER(Usage)]),
    "fanout_worker_failure": (_S, [WorkerP, c_uint64, c_char_p, c_char_p, c_int, c_uint64]),
    "fanout_worker_spawn": (
        _S, [WorkerP, c_uint64, c_char_p, POINTER(TaskSpec), c_size_t, POINTER(BatchOptions)]
    ),
    "fanout_worker_wait_children": (_S, [WorkerP, c_uint64, c_uint64]),
    "fanout_worker_drain": (_S, [WorkerP]),
    "fanout_worker_free": (None, [WorkerP]),
}


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _candidates() -> list[tuple[str, str]]:
    """(how it was found, what to dlopen), in the documented order."""
    here = Path(__file__).resolve().parent
    out: list[tuple[str, str]] = []
    bundled = here / SONAME
    if bundled.exists():
        out.append(("bundled with the package", str(bundled)))
    found = ctypes.util.find_library("fanout")
    if found:
        out.append(("ctypes.util.find_library", found))
    out.append(("the loader path", SONAME))
    # A checkout: the package (or a venv holding it) lives inside the repository.
    for parent in here.parents:
        lib = parent / "clients" / "c" / "libfanout.so"
        if lib.exists():
            out.append(("the repository checkout", str(lib)))
            break
    return out


def _declare(cdll: ctypes.CDLL) -> ctypes.CDLL:
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(cdll, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return cdll


_loaded: ctypes.CDLL | None = None
_load_lock = threading.Lock()


def load() -> ctypes.CDLL:
    """Loads libfanout once (see the README for the search order)."""
    global _loaded
    with _load_lock:
        if _loaded is not None:
            return _loaded
        explicit = os.environ.get("FANOUT_LIBRARY")
        if explicit:
            try:
                _loaded = _declare(ctypes.CDLL(explicit))
            except (OSError, AttributeError) as e:
                raise LibraryNotFoundError(
                    f"FANOUT_LIBRARY={explicit!r} cannot be loaded as libfanout: {e}"
                ) from e
            return _loaded
        tried: list[str] = []
        for how, path in _candidates():
            try:
                _loaded = _declare(ctypes.CDLL(path))
                return _loaded
            except (OSError, AttributeError) as e:
                tried.append(f"  {path} ({how}): {e}")
        raise LibraryNotFoundError(
            "libfanout (the Fanout C client library) was not found. Build it with "
            "`make -C clients/c` in a Fanout checkout (and `make -C clients/c install` to "
            "put libfanout.so.1 on the loader path), or set FANOUT_LIBRARY to the path of "
            "libfanout.so.1.\nTried:\n" + "\n".join(tried)
        )


def lib() -> ctypes.CDLL:
    return _loaded if _loaded is not None else load()


def path_of(cdll: ctypes.CDLL) -> str:
    return str(cdll._name)
