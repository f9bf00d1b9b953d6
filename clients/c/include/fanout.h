/*
 * fanout.h — C client library for fanoutd, the Fanout batch runner.
 *
 * The library speaks the protocol of docs/PROTOCOL.md (length-prefixed
 * protobuf frames on a Unix domain socket). It depends on libc and
 * libprotobuf-c only.
 *
 * CONVENTIONS
 *
 *   Names      Every public name starts with `fanout_` (types, functions) or
 *              `FANOUT_` (constants).
 *
 *   Status     Every function that can fail returns a `fanout_status`.
 *              FANOUT_OK (0) is success. Codes 1–16 are the daemon's own
 *              status codes, numbered as the protocol's StatusCode. Codes
 *              from 100 up are raised by the library itself (connect
 *              failure, I/O error, timeout, bad argument, protocol error,
 *              out of memory). FANOUT_DONE is not an error: an iterator has
 *              no more items. `fanout_status_string()` names a status.
 *
 *   Messages   After a failed call, `fanout_client_last_message()` returns a
 *              message for a person: the daemon's Status.message, whole and
 *              never truncated, or the library's own description of a local
 *              error. A successful call sets it to "".
 *
 *   Ownership  Pointers a function stores through an `out` parameter of type
 *              `T **` are OWNED by the caller, who frees them with the
 *              matching `fanout_T_free()` (every free function accepts NULL).
 *              The exceptions are the iterators (`fanout_results_next()`,
 *              `fanout_subscription_next()`, `fanout_worker_next()`), which
 *              store BORROWED pointers
 *              (`const T **`): they stay valid until the next call on the same
 *              iterator or until it is freed. Strings returned by accessors
 *              such as `fanout_client_last_message()` are borrowed too: valid
 *              until the next call on that handle. Strings inside owned
 *              structs are never NULL ("" when absent); byte fields
 *              (payload, result) may be NULL when their length is 0.
 *              Input pointers are only read during the call; the library
 *              keeps no reference to them.
 *
 *   Threads    A handle (a client and the iterators opened on it) is used by
 *              one thread at a time; different clients are independent.
 *              The library installs no signal handler; it writes with
 *              MSG_NOSIGNAL, so a closed socket never raises SIGPIPE.
 *
 *   Timeouts   Every call is synchronous and bounded by the client's timeout
 *              (`fanout_client_set_timeout()`, default 60 s; negative: wait
 *              forever): connecting, each frame written, and the wait for
 *              each answer (a chunked enqueue applies it per chunk). On
 *              FANOUT_TIMEOUT during a unary call the library cancels that
 *              call's stream (the daemon may still have done it); the
 *              connection remains usable. A write that times out half-way
 *              leaves the connection unusable (closed).
 *
 *   Streams    Iterators (results, subscriptions) share the client's
 *              connection with unary calls. Frames of an iterator that arrive
 *              while another call waits are queued in memory for it. A
 *              subscription queues at most the daemon's subscriber_buffer
 *              events (Welcome limits; 10,000 if unset): past that it is
 *              cancelled and, once its queue is read, ends like a lagging
 *              subscriber (RESOURCE_EXHAUSTED, lagged, resume point kept).
 *              Free iterators before their client; an iterator whose
 *              client was freed returns FANOUT_BAD_ARGUMENT.
 *
 *   Strings    Strings sent to the daemon must be valid UTF-8; the library
 *              refuses others with FANOUT_BAD_ARGUMENT before sending.
 */
#ifndef FANOUT_H
#define FANOUT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && __GNUC__ >= 4
#define FANOUT_API __attribute__((visibility("default")))
#else
#define FANOUT_API
#endif

#define FANOUT_VERSION "0.1.0"
#define FANOUT_PROTOCOL_VERSION 1

/* ------------------------------------------------------------------------
 * Status
 * ---------------------------------------------------------------------- */

typedef enum fanout_status {
    /* The daemon's codes (PROTOCOL.md §9), same numbers as StatusCode. */
    FANOUT_OK = 0,
    FANOUT_CANCELLED = 1,
    FANOUT_UNKNOWN = 2,
    FANOUT_INVALID_ARGUMENT = 3,
    FANOUT_DEADLINE_EXCEEDED = 4,
    FANOUT_NOT_FOUND = 5,
    FANOUT_ALREADY_EXISTS = 6,
    FANOUT_PERMISSION_DENIED = 7,
    FANOUT_RESOURCE_EXHAUSTED = 8,
    FANOUT_FAILED_PRECONDITION = 9,
    FANOUT_ABORTED = 10,
    FANOUT_OUT_OF_RANGE = 11,
    FANOUT_UNIMPLEMENTED = 12,
    FANOUT_INTERNAL = 13,
    FANOUT_UNAVAILABLE = 14,
    FANOUT_DATA_LOSS = 15,
    FANOUT_UNAUTHENTICATED = 16,

    /* Local codes, raised by the library. */
    FANOUT_CONNECT_FAILED = 100, /* no daemon at the socket path, or path unusable */
    FANOUT_IO_ERROR = 101,       /* read/write failed, or the daemon closed the connection */
    FANOUT_TIMEOUT = 102,        /* the client's timeout passed */
    FANOUT_BAD_ARGUMENT = 103,   /* refused before sending: NULL handle, bad UTF-8, too large… */
    FANOUT_PROTOCOL_ERROR = 104, /* the daemon sent something this library cannot accept */
    FANOUT_NO_MEMORY = 105,      /* an allocation failed */
    FANOUT_DONE = 106            /* not an error: an iterator has no more items */
} fanout_status;

/* A static, upper-case name such as "NOT_FOUND"; "UNKNOWN_STATUS" for a
 * number this library does not know. Never NULL. */
FANOUT_API const char *fanout_status_string(fanout_status status);

/* ------------------------------------------------------------------------
 * Domain enums (values as in proto/fanout/v1/fanout.proto). The daemon may
 * send values this header does not list; treat them as "unknown".
 * ---------------------------------------------------------------------- */

typedef enum fanout_task_status {
    FANOUT_TASK_UNSPECIFIED = 0,
    FANOUT_TASK_PENDING = 1,
    FANOUT_TASK_RUNNING = 2,
    FANOUT_TASK_WAITING_CHILDREN = 3,
    FANOUT_TASK_RETRY_WAIT = 4,
    FANOUT_TASK_COMPLETED = 5,
    FANOUT_TASK_FAILED = 6,
    FANOUT_TASK_CANCELLED = 7,
    FANOUT_TASK_EXPIRED = 8
} fanout_task_status;

typedef enum fanout_batch_status {
    FANOUT_BATCH_UNSPECIFIED = 0,
    FANOUT_BATCH_PENDING = 1,
    FANOUT_BATCH_PROCESSING = 2,
    FANOUT_BATCH_COMPLETED = 3,
    FANOUT_BATCH_CANCELLED = 4,
    FANOUT_BATCH_FAILED = 5
} fanout_batch_status;

typedef enum fanout_event_type {
    FANOUT_EVENT_UNSPECIFIED = 0,
    FANOUT_EVENT_BATCH_PROGRESS = 1,
    FANOUT_EVENT_BATCH_COMPLETED = 2,
    FANOUT_EVENT_BATCH_CANCELLED = 3,
    FANOUT_EVENT_BATCH_FAILED = 4,
    FANOUT_EVENT_TASK_STARTED = 5,
    FANOUT_EVENT_TASK_TURN = 6,
    FANOUT_EVENT_TASK_RETRYING = 7,
    FANOUT_EVENT_TASK_COMPLETED = 8,
    FANOUT_EVENT_TASK_FAILED = 9,
    FANOUT_EVENT_TASK_CANCELLED = 10,
    FANOUT_EVENT_TASK_EXPIRED = 11
} fanout_event_type;

/* ------------------------------------------------------------------------
 * Plain structs
 * ---------------------------------------------------------------------- */

typedef struct fanout_limits {
    uint32_t max_frame_bytes;
    uint32_t max_tasks_per_batch;
    uint32_t max_payload_bytes;
    uint32_t max_custom_id_bytes;
    uint32_t max_streams_per_connection;
    uint32_t max_connections;
    uint32_t subscriber_buffer;
    uint32_t global_concurrency;
    uint32_t max_results_page;
} fanout_limits;

typedef struct fanout_counts {
    uint32_t total, pending, running, waiting_children, retry_wait;
    uint32_t completed, failed, cancelled, expired;
} fanout_counts;

typedef struct fanout_usage {
    uint64_t prompt_tokens, completion_tokens, total_tokens;
} fanout_usage;

/* A task's error. All strings "" when there was none (has_error == 0). */
typedef struct fanout_task_error {
    int has_error;
    char *message;
    char *code;      /* runner-defined, e.g. "rate_limited" */
    int retryable;
} fanout_task_error;

/* A key/value pair: batch metadata, as input (borrowed) or output (owned). */
typedef struct fanout_kv {
    const char *key;
    const char *value;
} fanout_kv;

/* What a client submits (input: nothing here is kept after the call). */
typedef struct fanout_task_spec {
    const char *custom_id;  /* required, unique within its batch */
    const char *agent;      /* NULL or "": the batch's agent */
    const void *payload;    /* payload_len bytes, JSON by convention; may be NULL if 0 */
    size_t payload_len;
    int32_t priority;       /* 0: the batch's priority */
    uint32_t max_attempts;  /* 0: the agent's default */
    uint64_t timeout_ms;    /* per attempt; 0: the agent's default */
    const char *url;        /* NULL or "": the runner's default */
} fanout_task_spec;

/* A batch as the daemon reports it. Owned: free with fanout_batch_info_free. */
typedef struct fanout_batch_info {
    uint64_t id;
    char *owner_id;
    char *agent;
    fanout_batch_status status;
    fanout_counts counts;
    double progress;          /* 0–100 */
    size_t n_metadata;
    fanout_kv *metadata;      /* n_metadata entries, owned by this struct */
    uint64_t parent_task_id;
    int64_t created_at_ms, started_at_ms, finished_at_ms, deadline_at_ms;
    uint32_t creator_uid;
    uint32_t max_turns;
    fanout_usage usage;
} fanout_batch_info;

/* A page of ListBatches. Owned: free with fanout_batch_list_free. */
typedef struct fanout_batch_list {
    size_t n_batches;
    fanout_batch_info **batches;  /* newest first */
    uint64_t next_before_id;      /* pass as before_id for the next page; 0: no more */
} fanout_batch_list;

/* A task as the daemon reports it. Owned: free with fanout_task_info_free. */
typedef struct fanout_task_info {
    uint64_t id;
    uint64_t batch_id;
    char *custom_id;
    char *owner_id;
    char *agent;
    fanout_task_status status;
    int32_t priority;
    uint32_t attempt, max_attempts;
    uint64_t timeout_ms;
    uint32_t turns_completed, max_turns;
    unsigned char *result;
    size_t result_len;
    fanout_task_error error;
    uint64_t parent_task_id;
    int64_t created_at_ms, started_at_ms, finished_at_ms;
    unsigned char *payload;   /* only with include_payload */
    size_t payload_len;
    char *url;
    uint32_t status_code;
    char *request_id;
    fanout_usage usage;
} fanout_task_info;

/* One result of GetResults. Borrowed from its iterator. */
typedef struct fanout_task_result {
    uint64_t task_id;
    char *custom_id;
    fanout_task_status status;
    unsigned char *result;
    size_t result_len;
    fanout_task_error error;
    uint32_t attempt;
    uint32_t status_code;
    char *request_id;
    fanout_usage usage;
    char *url;
} fanout_task_result;

/* One event of a subscription. Borrowed from its subscription. */
typedef struct fanout_event {
    uint64_t sequence;
    fanout_event_type type;
    int64_t timestamp_ms;
    char *owner_id;
    uint64_t batch_id;
    uint64_t task_id;         /* task events */
    char *custom_id;          /* task events */
    uint64_t parent_task_id;
    double progress;          /* batch events */
    fanout_counts counts;     /* batch events */
    uint32_t attempt;
    uint32_t turn;
    uint64_t retry_delay_ms;
    fanout_task_error error;  /* task_failed, task_retrying */
} fanout_event;

typedef struct fanout_agent_info {
    char *name;
    char *runner;
    uint32_t concurrency, max_turns, max_attempts, running, workers;
} fanout_agent_info;

typedef struct fanout_worker_slots {
    char *agent;
    uint32_t slots;        /* the concurrency the worker registered */
    uint32_t free_slots;
} fanout_worker_slots;

/* A connected worker session, as ServerInfo lists it. */
typedef struct fanout_connected_worker {
    uint64_t id;
    char *name;
    uint32_t uid;
    size_t n_agents;
    fanout_worker_slots *agents;
    size_t n_running_task_ids;
    uint64_t *running_task_ids;
} fanout_connected_worker;

/* ServerInfo. Owned: free with fanout_server_info_free. */
typedef struct fanout_server_info {
    char *server_version;
    uint32_t protocol_version;
    int64_t started_at_ms;
    uint64_t pending_tasks, running_tasks, retry_wait_tasks;
    uint32_t connections;
    uint32_t workers;
    fanout_limits limits;
    size_t n_agents;
    fanout_agent_info *agents;
    uint64_t last_sequence;   /* subscribe with since = this to get only what comes next */
    size_t n_worker_list;
    fanout_connected_worker *worker_list;  /* every worker session, oldest first */
} fanout_server_info;

FANOUT_API void fanout_batch_info_free(fanout_batch_info *batch);
FANOUT_API void fanout_batch_list_free(fanout_batch_list *list);
FANOUT_API void fanout_task_info_free(fanout_task_info *task);
FANOUT_API void fanout_server_info_free(fanout_server_info *info);
/* Frees a string the library allocated (fanout_default_socket_path). */
FANOUT_API void fanout_string_free(char *string);

/* ------------------------------------------------------------------------
 * Client
 * ---------------------------------------------------------------------- */

typedef struct fanout_client fanout_client;

/* The socket path used when none is given, resolved like the daemon's:
 * $FANOUT_SOCKET if set and non-empty; else $XDG_RUNTIME_DIR/fanout/fanoutd.sock
 * if XDG_RUNTIME_DIR is set and non-empty; else ${TMPDIR:-/tmp} (without a
 * trailing slash) + "/fanout-<uid>/fanoutd.sock". *out is owned: free it with
 * fanout_string_free. */
FANOUT_API fanout_status fanout_default_socket_path(char **out);

/* Allocates an unconnected client (timeout 60 s). Free with fanout_client_free. */
FANOUT_API fanout_status fanout_client_new(fanout_client **out);

/* Connects to socket_path (NULL: fanout_default_socket_path()) and performs
 * the Hello/Welcome handshake; client_name (NULL: "fanout-c") appears in the
 * daemon's logs. Before connecting, the socket file's owner is checked: it
 * must be the caller's uid or root, or a uid listed in $FANOUT_SOCKET_OWNERS
 * (comma-separated, or "any"); otherwise FANOUT_PERMISSION_DENIED without
 * connecting. No daemon listening: FANOUT_CONNECT_FAILED. A handshake
 * refused by the daemon returns its status. On failure the client stays
 * unconnected and may connect again. */
FANOUT_API fanout_status fanout_client_connect(fanout_client *client, const char *socket_path,
                                               const char *client_name);

/* Closes the connection (if any) and frees the client. Iterators still open
 * on it are detached (they then return FANOUT_BAD_ARGUMENT) and must still
 * be freed. NULL is allowed. */
FANOUT_API void fanout_client_free(fanout_client *client);

/* Bounds each call: milliseconds; negative waits forever. */
FANOUT_API fanout_status fanout_client_set_timeout(fanout_client *client, int timeout_ms);
FANOUT_API int fanout_client_timeout(const fanout_client *client);

/* The message of the last call on this handle ("" after success). Borrowed:
 * valid until the next call on the client or one of its iterators. Never NULL. */
FANOUT_API const char *fanout_client_last_message(const fanout_client *client);

/* The status of the last call on this handle. */
FANOUT_API fanout_status fanout_client_last_status(const fanout_client *client);

/* The socket descriptor, for poll()/select() (readable: frames are waiting);
 * -1 when not connected. Do not read, write or close it yourself. */
FANOUT_API int fanout_client_fd(const fanout_client *client);

/* From the daemon's Welcome (zeroes / "" before connecting). Borrowed. */
FANOUT_API const char *fanout_client_server_version(const fanout_client *client);
FANOUT_API fanout_status fanout_client_limits(const fanout_client *client, fanout_limits *out);

/* ------------------------------------------------------------------------
 * Calls. `out` may be NULL where noted: the answer is then discarded.
 * ---------------------------------------------------------------------- */

typedef struct fanout_batch_options {
    const fanout_kv *metadata;     /* n_metadata pairs, kept with the batch */
    size_t n_metadata;
    int32_t priority;              /* default priority of its tasks */
    uint64_t completion_window_ms; /* deadline = creation + window; 0: none */
} fanout_batch_options;

/* Creates a batch of n_tasks tasks atomically. A batch too large for one frame
 * is sent in chunks (Request with more, then BatchChunk messages) and still
 * committed all at once. `agent` is the default for tasks naming none;
 * `options` may be NULL. A single task too large for a frame:
 * FANOUT_BAD_ARGUMENT. *out (may be NULL) is owned. */
FANOUT_API fanout_status fanout_enqueue_batch(fanout_client *client, const char *owner_id, const char *agent,
                                              const fanout_task_spec *tasks, size_t n_tasks,
                                              const fanout_batch_options *options, fanout_batch_info **out);

/* Enqueues one task as a batch of one; the task must name its agent. */
FANOUT_API fanout_status fanout_enqueue_task(fanout_client *client, const char *owner_id,
                                             const fanout_task_spec *task, fanout_task_info **out);

FANOUT_API fanout_status fanout_get_batch(fanout_client *client, uint64_t batch_id, fanout_batch_info **out);

/* include_payload: non-zero to receive the task's payload too. */
FANOUT_API fanout_status fanout_get_task(fanout_client *client, uint64_t task_id, int include_payload,
                                         fanout_task_info **out);

typedef struct fanout_list_options {
    const char *owner_id;     /* NULL or "": every owner the caller may see */
    uint32_t limit;           /* 0: server default */
    uint64_t before_id;       /* paging: batches with a smaller id; 0: newest */
    uint64_t parent_batch_id; /* only children of this batch's tasks; 0: any */
} fanout_list_options;

/* One page of batches, newest first; options may be NULL. */
FANOUT_API fanout_status fanout_list_batches(fanout_client *client, const fanout_list_options *options,
                                             fanout_batch_list **out);

/* Idempotent. *out (may be NULL) is the batch after cancelling. */
FANOUT_API fanout_status fanout_cancel_batch(fanout_client *client, uint64_t batch_id, fanout_batch_info **out);
FANOUT_API fanout_status fanout_cancel_task(fanout_client *client, uint64_t task_id, fanout_task_info **out);

/* Re-queues a finished batch's failed tasks (and expired/cancelled ones if
 * asked). *retried (may be NULL) = how many; *out (may be NULL) the batch. */
FANOUT_API fanout_status fanout_retry_failed(fanout_client *client, uint64_t batch_id, int include_expired,
                                             int include_cancelled, uint32_t *retried, fanout_batch_info **out);

FANOUT_API fanout_status fanout_get_server_info(fanout_client *client, fanout_server_info **out);

/* ------------------------------------------------------------------------
 * Results: an iterator over a batch's terminal tasks, in task id order.
 * ---------------------------------------------------------------------- */

typedef struct fanout_results fanout_results;

/* page_size 0: the server default; after_task_id 0: from the start. */
FANOUT_API fanout_status fanout_results_open(fanout_client *client, uint64_t batch_id, uint32_t page_size,
                                             uint64_t after_task_id, fanout_results **out);

/* As fanout_results_open, with pages also cut at about page_bytes bytes of
 * results (0: the daemon's max_results_page_bytes, which also caps it); a
 * page always carries at least one result. */
FANOUT_API fanout_status fanout_results_open_paged(fanout_client *client, uint64_t batch_id, uint32_t page_size,
                                                   uint32_t page_bytes, uint64_t after_task_id, fanout_results **out);

/* FANOUT_OK and *out set (borrowed, valid until the next call on `results`);
 * FANOUT_DONE at the end; FANOUT_TIMEOUT (client timeout) leaves the stream
 * open: call again. Any other status (NOT_FOUND, PERMISSION_DENIED,
 * FANOUT_IO_ERROR, …) finishes the iterator; to resume on a new one, use
 * after_task_id = the last task_id received. */
FANOUT_API fanout_status fanout_results_next(fanout_results *results, const fanout_task_result **out);

/* Cancels the stream if unfinished and frees. NULL is allowed. */
FANOUT_API void fanout_results_free(fanout_results *results);

/* ------------------------------------------------------------------------
 * Subscriptions
 * ---------------------------------------------------------------------- */

typedef struct fanout_subscription fanout_subscription;

typedef struct fanout_subscribe_options {
    const char *owner_id;                 /* NULL or "": every owner the caller may see */
    const fanout_event_type *event_types; /* n_event_types types; none: all */
    size_t n_event_types;
    uint64_t batch_id;                    /* 0: all batches */
    uint64_t since;                       /* replay stored events with sequence > since */
    int follow;                           /* non-zero: stay open for live events */
} fanout_subscribe_options;

/* Opens the stream; errors of the request itself (NOT_FOUND, …) are
 * reported by the first fanout_subscription_next(). options may be NULL
 * (everything, from the start, no follow). */
FANOUT_API fanout_status fanout_subscribe(fanout_client *client, const fanout_subscribe_options *options,
                                          fanout_subscription **out);

/* Waits up to timeout_ms (negative: forever; the client's timeout is not
 * used) for the next event. FANOUT_OK: *out is set (borrowed, valid until the
 * next call on `subscription`). FANOUT_TIMEOUT: nothing yet, call again.
 * FANOUT_DONE: the stream ended normally (follow = 0, replay finished).
 * Anything else ends the subscription: UNAVAILABLE (daemon shutting down),
 * FANOUT_IO_ERROR (connection lost), RESOURCE_EXHAUSTED with
 * fanout_subscription_lagged() != 0 (too slow), OUT_OF_RANGE (retention), …
 * Resume with since = fanout_subscription_last_sequence(). */
FANOUT_API fanout_status fanout_subscription_next(fanout_subscription *subscription, int timeout_ms,
                                                  const fanout_event **out);

/* Non-zero once the daemon dropped this subscriber for lagging. */
FANOUT_API int fanout_subscription_lagged(const fanout_subscription *subscription);

/* The resume point: the sequence of the last event received, or the one the
 * daemon's final status named (lagged, OUT_OF_RANGE), or the request's since. */
FANOUT_API uint64_t fanout_subscription_last_sequence(const fanout_subscription *subscription);

/* Cancels the stream if still open and frees. NULL is allowed. */
FANOUT_API void fanout_subscription_free(fanout_subscription *subscription);

/* ------------------------------------------------------------------------
 * Worker sessions (PROTOCOL.md §5.12): run an agent's tasks in this process.
 * A worker uses its own client (connection) by convention, though it may
 * share one. The daemon's answers and assignments arrive through
 * fanout_worker_next(); the report functions only send.
 * ---------------------------------------------------------------------- */

typedef struct fanout_worker fanout_worker;

typedef struct fanout_agent_registration {
    const char *name;      /* a configured "worker" agent, or a new name this worker declares */
    uint32_t concurrency;  /* at least 1 */
    uint32_t max_turns;    /* for a declared agent; 0: none */
} fanout_agent_registration;

typedef enum fanout_worker_message_kind {
    FANOUT_WORKER_ASSIGNMENT = 1,    /* task, lease_ms, resumed */
    FANOUT_WORKER_CANCEL = 2,        /* task_id: stop it, then report a failure for it */
    FANOUT_WORKER_CHILDREN_DONE = 3, /* task_id, child_batch_id, results, last */
    FANOUT_WORKER_ACK = 4,           /* task_id, status, status_message */
    FANOUT_WORKER_SPAWNED = 5        /* task_id, child_batch_id, status, status_message */
} fanout_worker_message_kind;

/* What the daemon sent the worker. Borrowed from the worker (valid until
 * its next call). Fields not used by `kind` are zero / NULL / "". */
typedef struct fanout_worker_message {
    fanout_worker_message_kind kind;
    uint64_t task_id;
    fanout_task_info *task;        /* ASSIGNMENT: with payload */
    uint64_t lease_ms;             /* ASSIGNMENT: heartbeat well within it */
    int resumed;                   /* ASSIGNMENT: CHILDREN_DONE pages follow */
    uint64_t child_batch_id;       /* CHILDREN_DONE, SPAWNED */
    size_t n_results;              /* CHILDREN_DONE */
    fanout_task_result *results;
    int last;                      /* CHILDREN_DONE: the final page */
    fanout_status status;          /* ACK, SPAWNED */
    char *status_message;          /* ACK, SPAWNED; "" when none */
} fanout_worker_message;

/* Opens a session and waits (client timeout) for the daemon's registration
 * ack. A refusal returns its status (INVALID_ARGUMENT, PERMISSION_DENIED,
 * FAILED_PRECONDITION, UNIMPLEMENTED…) and *out stays NULL. */
FANOUT_API fanout_status fanout_worker_open(fanout_client *client, const char *worker_name,
                                            const fanout_agent_registration *agents, size_t n_agents,
                                            fanout_worker **out);

/* Waits up to timeout_ms (negative: forever) for the next message.
 * FANOUT_OK: *out is set (borrowed). FANOUT_TIMEOUT: nothing yet. Any other
 * status ends the session (UNAVAILABLE at daemon shutdown: reconnect). */
FANOUT_API fanout_status fanout_worker_next(fanout_worker *worker, int timeout_ms, const fanout_worker_message **out);

FANOUT_API fanout_status fanout_worker_heartbeat(fanout_worker *worker, const uint64_t *task_ids, size_t n_task_ids);
FANOUT_API fanout_status fanout_worker_turn(fanout_worker *worker, uint64_t task_id, uint32_t turns);
/* usage may be NULL. Answered by an ACK. */
FANOUT_API fanout_status fanout_worker_result(fanout_worker *worker, uint64_t task_id, const void *result,
                                              size_t result_len, const fanout_usage *usage);
/* message/code may be NULL. Answered by an ACK. */
FANOUT_API fanout_status fanout_worker_failure(fanout_worker *worker, uint64_t task_id, const char *message,
                                               const char *code, int retryable, uint64_t retry_after_ms);
/* Spawns a child batch of the running task (one frame; too large:
 * FANOUT_BAD_ARGUMENT). Answered by a SPAWNED message. options may be NULL. */
FANOUT_API fanout_status fanout_worker_spawn(fanout_worker *worker, uint64_t task_id, const char *agent,
                                             const fanout_task_spec *tasks, size_t n_tasks,
                                             const fanout_batch_options *options);
/* The task waits for its children; it comes back as a resumed ASSIGNMENT
 * followed by CHILDREN_DONE pages. timeout_ms 0: the agent's default. */
FANOUT_API fanout_status fanout_worker_wait_children(fanout_worker *worker, uint64_t task_id, uint64_t timeout_ms);
/* No new assignments; keep reporting the tasks held. */
FANOUT_API fanout_status fanout_worker_drain(fanout_worker *worker);

/* Ends the session (EndOfStream) if still open and frees. Tasks still held
 * go back to pending. NULL is allowed. */
FANOUT_API void fanout_worker_free(fanout_worker *worker);

#ifdef __cplusplus
}
#endif

#endif /* FANOUT_H */
