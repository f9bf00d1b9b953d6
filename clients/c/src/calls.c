/* Unary calls (PROTOCOL.md §5) and EnqueueBatch, chunked when needed. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_TASKS_PER_CHUNK 20000u
#define FRAME_OVERHEAD 64u /* stream id and the nesting of Frame/StreamMessage/BatchChunk */

static fanout_status open_stream(fanout_client *c, Fanout__V1__Request *req, uint32_t *id_out)
{
    uint32_t id = fanout_next_stream(c);
    if (id == 0)
        return fanout_fail(c, FANOUT_UNAVAILABLE, "this connection used up its stream ids; connect again");
    *id_out = id;
    return fanout_write_request(c, id, req);
}

/* Waits for the Response ending stream `id`; *out holds it on success. */
static fanout_status await_response(fanout_client *c, uint32_t id, Fanout__V1__Response__ResultCase expected,
                                    pb_frame **out)
{
    *out = NULL;
    int64_t deadline = fanout_deadline(c->timeout_ms);
    for (;;) {
        pb_frame *f = NULL;
        fanout_status st = fanout_wait_frame(c, NULL, id, deadline, &f);
        if (st == FANOUT_TIMEOUT) {
            fanout_send_cancel(c, id);
            return st;
        }
        if (st != FANOUT_OK)
            return st;
        if (f->kind_case == FANOUT__V1__FRAME__KIND_RESPONSE) {
            if (f->response == NULL || f->response->result_case != expected) {
                fanout_frame_free(f);
                return fanout_fail(c, FANOUT_PROTOCOL_ERROR, "fanoutd answered with an unexpected response");
            }
            *out = f;
            fanout_succeed(c);
            return FANOUT_OK;
        }
        if (f->kind_case == FANOUT__V1__FRAME__KIND_END) {
            st = fanout_fail_server(c, fanout_end_status(f));
            fanout_frame_free(f);
            if (st == FANOUT_OK)
                st = fanout_fail(c, FANOUT_PROTOCOL_ERROR, "fanoutd ended the call without an answer");
            return st;
        }
        fanout_frame_free(f); /* a StreamMessage on a unary stream: ignored */
    }
}

static fanout_status unary(fanout_client *c, Fanout__V1__Request *req, Fanout__V1__Response__ResultCase expected,
                           pb_frame **out)
{
    uint32_t id = 0;
    fanout_status st = open_stream(c, req, &id);
    if (st != FANOUT_OK)
        return st;
    return await_response(c, id, expected, out);
}

/* Converts, stores or discards; frees the frame. */
static fanout_status finish_batch(fanout_client *c, pb_frame *f, const Fanout__V1__Batch *batch,
                                  fanout_batch_info **out)
{
    fanout_status st = FANOUT_OK;
    if (out != NULL) {
        st = fanout_convert_batch(batch, out);
        if (st != FANOUT_OK)
            fanout_fail(c, st, "%s", st == FANOUT_NO_MEMORY ? "out of memory" : "fanoutd sent no batch");
    }
    fanout_frame_free(f);
    return st;
}

static fanout_status finish_task(fanout_client *c, pb_frame *f, const Fanout__V1__Task *task, fanout_task_info **out)
{
    fanout_status st = FANOUT_OK;
    if (out != NULL) {
        st = fanout_convert_task(task, out);
        if (st != FANOUT_OK)
            fanout_fail(c, st, "%s", st == FANOUT_NO_MEMORY ? "out of memory" : "fanoutd sent no task");
    }
    fanout_frame_free(f);
    return st;
}

/* ---- task specs --------------------------------------------------------- */

fanout_status fanout_check_spec(fanout_client *c, const fanout_task_spec *t, size_t index)
{
    if (t->custom_id == NULL)
        return fanout_fail(c, FANOUT_BAD_ARGUMENT, "task %zu: custom_id is NULL", index);
    if (t->payload == NULL && t->payload_len > 0)
        return fanout_fail(c, FANOUT_BAD_ARGUMENT, "task %zu: payload is NULL with payload_len %zu", index,
                           t->payload_len);
    if (!fanout_utf8_valid(t->custom_id) || (t->agent && !fanout_utf8_valid(t->agent)) ||
        (t->url && !fanout_utf8_valid(t->url)))
        return fanout_fail(c, FANOUT_BAD_ARGUMENT, "task %zu: a string is not valid UTF-8", index);
    return FANOUT_OK;
}

static char *str_or_empty(const char *s)
{
    return (char *)(s ? s : "");
}

void fanout_fill_spec(Fanout__V1__TaskSpec *pb, const fanout_task_spec *t)
{
    fanout__v1__task_spec__init(pb);
    pb->custom_id = str_or_empty(t->custom_id);
    pb->agent = str_or_empty(t->agent);
    pb->payload.data = (uint8_t *)t->payload;
    pb->payload.len = t->payload_len;
    pb->priority = t->priority;
    pb->max_attempts = t->max_attempts;
    pb->timeout_ms = t->timeout_ms;
    pb->url = str_or_empty(t->url);
}

/* ---- EnqueueBatch ------------------------------------------------------- */

/* Sends BatchChunk messages for specs[from..n) on stream id, then waits for
 * the answer. Stops early if the daemon already ended the stream. */
static fanout_status send_chunks(fanout_client *c, uint32_t id, Fanout__V1__TaskSpec **ptrs, const size_t *costs,
                                 size_t from, size_t n, pb_frame **answer)
{
    size_t budget = c->frame_limit - FRAME_OVERHEAD;
    while (from < n) {
        /* Did the daemon refuse already (a limit)? Then stop sending. */
        pb_frame *early = NULL;
        fanout_status st = fanout_wait_frame(c, NULL, id, fanout_now_ms(), &early);
        if (st == FANOUT_OK) {
            *answer = early;
            return FANOUT_OK;
        }
        if (st != FANOUT_TIMEOUT)
            return st;
        size_t end = from, bytes = 0;
        while (end < n && end - from < MAX_TASKS_PER_CHUNK && (end == from || bytes + costs[end] <= budget))
            bytes += costs[end++];
        Fanout__V1__BatchChunk chunk = FANOUT__V1__BATCH_CHUNK__INIT;
        chunk.tasks = ptrs + from;
        chunk.n_tasks = end - from;
        chunk.more = end < n;
        Fanout__V1__StreamMessage msg = FANOUT__V1__STREAM_MESSAGE__INIT;
        msg.body_case = FANOUT__V1__STREAM_MESSAGE__BODY_BATCH_CHUNK;
        msg.batch_chunk = &chunk;
        pb_frame frame = FANOUT__V1__FRAME__INIT;
        frame.stream_id = id;
        frame.kind_case = FANOUT__V1__FRAME__KIND_MESSAGE;
        frame.message = &msg;
        st = fanout_write_frame(c, &frame, fanout_deadline(c->timeout_ms));
        if (st != FANOUT_OK) {
            fanout_send_cancel(c, id);
            return st;
        }
        from = end;
    }
    return FANOUT_OK;
}

fanout_status fanout_enqueue_batch(fanout_client *client, const char *owner_id, const char *agent,
                                   const fanout_task_spec *tasks, size_t n_tasks,
                                   const fanout_batch_options *options, fanout_batch_info **out)
{
    if (out != NULL)
        *out = NULL;
    fanout_status st = fanout_check_client(client);
    if (st != FANOUT_OK)
        return st;
    fanout_client *c = client;
    if (owner_id == NULL)
        return fanout_fail(c, FANOUT_BAD_ARGUMENT, "owner_id is NULL");
    if (tasks == NULL && n_tasks > 0)
        return fanout_fail(c, FANOUT_BAD_ARGUMENT, "tasks is NULL");
    if (options != NULL && options->metadata == NULL && options->n_metadata > 0)
        return fanout_fail(c, FANOUT_BAD_ARGUMENT, "options->metadata is NULL");
    if ((st = fanout_check_string(c, "owner_id", owner_id)) != FANOUT_OK ||
        (st = fanout_check_string(c, "agent", agent)) != FANOUT_OK)
        return st;
    size_t n_meta = options ? options->n_metadata : 0;
    for (size_t i = 0; i < n_meta; i++) {
        const fanout_kv *kv = &options->metadata[i];
        if (kv->key == NULL || kv->value == NULL || !fanout_utf8_valid(kv->key) || !fanout_utf8_valid(kv->value))
            return fanout_fail(c, FANOUT_BAD_ARGUMENT, "metadata entry %zu: NULL or not valid UTF-8", i);
    }
    for (size_t i = 0; i < n_tasks; i++)
        if ((st = fanout_check_spec(c, &tasks[i], i)) != FANOUT_OK)
            return st;

    /* Everything the encoder points at, freed at the end. */
    Fanout__V1__TaskSpec *specs = n_tasks ? calloc(n_tasks, sizeof *specs) : NULL;
    Fanout__V1__TaskSpec **ptrs = n_tasks ? calloc(n_tasks, sizeof *ptrs) : NULL;
    size_t *costs = n_tasks ? calloc(n_tasks, sizeof *costs) : NULL;
    Fanout__V1__MetadataEntry *meta = n_meta ? calloc(n_meta, sizeof *meta) : NULL;
    Fanout__V1__MetadataEntry **meta_ptrs = n_meta ? calloc(n_meta, sizeof *meta_ptrs) : NULL;
    pb_frame *answer = NULL;
    if ((n_tasks && (!specs || !ptrs || !costs)) || (n_meta && (!meta || !meta_ptrs))) {
        st = fanout_fail(c, FANOUT_NO_MEMORY, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n_meta; i++) {
        fanout__v1__metadata_entry__init(&meta[i]);
        meta[i].key = (char *)options->metadata[i].key;
        meta[i].value = (char *)options->metadata[i].value;
        meta_ptrs[i] = &meta[i];
    }
    Fanout__V1__EnqueueBatchRequest req = FANOUT__V1__ENQUEUE_BATCH_REQUEST__INIT;
    req.owner_id = (char *)owner_id;
    req.agent = str_or_empty(agent);
    req.metadata = meta_ptrs;
    req.n_metadata = n_meta;
    if (options != NULL) {
        req.priority = options->priority;
        req.completion_window_ms = options->completion_window_ms;
    }
    size_t header = fanout__v1__enqueue_batch_request__get_packed_size(&req) + FRAME_OVERHEAD;
    if (header >= c->frame_limit) {
        st = fanout_fail(c, FANOUT_BAD_ARGUMENT, "the batch's fields (metadata, owner, agent) take %zu bytes, "
                         "above the daemon's max_frame_bytes (%u)", header, (unsigned)c->frame_limit);
        goto done;
    }
    size_t first_budget = c->frame_limit - header, budget = c->frame_limit - FRAME_OVERHEAD;
    for (size_t i = 0; i < n_tasks; i++) {
        fanout_fill_spec(&specs[i], &tasks[i]);
        ptrs[i] = &specs[i];
        costs[i] = fanout__v1__task_spec__get_packed_size(&specs[i]) + 6; /* tag and length */
        if (costs[i] > budget) {
            st = fanout_fail(c, FANOUT_BAD_ARGUMENT,
                             "task %zu (custom_id \"%s\") encodes to %zu bytes, more than fits in one frame "
                             "(daemon's max_frame_bytes %u)", i, tasks[i].custom_id, costs[i],
                             (unsigned)c->frame_limit);
            goto done;
        }
    }
    /* The first frame: as many tasks as fit next to the batch's fields. */
    size_t first = 0, bytes = 0;
    while (first < n_tasks && first < MAX_TASKS_PER_CHUNK && bytes + costs[first] <= first_budget)
        bytes += costs[first++];
    req.tasks = ptrs;
    req.n_tasks = first;
    req.more = first < n_tasks;
    Fanout__V1__Request request = FANOUT__V1__REQUEST__INIT;
    request.call_case = FANOUT__V1__REQUEST__CALL_ENQUEUE_BATCH;
    request.enqueue_batch = &req;
    uint32_t id = 0;
    st = open_stream(c, &request, &id);
    if (st != FANOUT_OK)
        goto done;
    if (req.more) {
        st = send_chunks(c, id, ptrs, costs, first, n_tasks, &answer);
        if (st != FANOUT_OK)
            goto done;
    }
    if (answer != NULL) { /* the daemon ended the stream before the last chunk */
        if (answer->kind_case == FANOUT__V1__FRAME__KIND_END) {
            st = fanout_fail_server(c, fanout_end_status(answer));
            if (st == FANOUT_OK)
                st = fanout_fail(c, FANOUT_PROTOCOL_ERROR, "fanoutd ended the enqueue without an answer");
        } else {
            st = fanout_fail(c, FANOUT_PROTOCOL_ERROR, "fanoutd answered before the last chunk");
        }
        goto done;
    }
    st = await_response(c, id, FANOUT__V1__RESPONSE__RESULT_ENQUEUE_BATCH, &answer);
    if (st == FANOUT_OK) {
        const Fanout__V1__EnqueueBatchResponse *r = answer->response->enqueue_batch;
        pb_frame *f = answer;
        answer = NULL;
        st = finish_batch(c, f, r ? r->batch : NULL, out);
    }
done:
    fanout_frame_free(answer);
    free(specs);
    free(ptrs);
    free(costs);
    free(meta);
    free(meta_ptrs);
    return st;
}

/* ---- the other calls ---------------------------------------------------- */

fanout_status fanout_enqueue_task(fanout_client *client, const char *owner_id, const fanout_task_spec *task,
                                  fanout_task_info **out)
{
    if (out != NULL)
        *out = NULL;
    fanout_status st = fanout_check_client(client);
    if (st != FANOUT_OK)
        return st;
    if (owner_id == NULL || task == NULL)
        return fanout_fail(client, FANOUT_BAD_ARGUMENT, "%s is NULL", owner_id ? "task" : "owner_id");
    if ((st = fanout_check_string(client, "owner_id", owner_id)) != FANOUT_OK ||
        (st = fanout_check_spec(client, task, 0)) != FANOUT_OK)
        return st;
    Fanout__V1__TaskSpec spec;
    fanout_fill_spec(&spec, task);
    Fanout__V1__EnqueueTaskRequest req = FANOUT__V1__ENQUEUE_TASK_REQUEST__INIT;
    req.owner_id = (char *)owner_id;
    req.task = &spec;
    Fanout__V1__Request request = FANOUT__V1__REQUEST__INIT;
    request.call_case = FANOUT__V1__REQUEST__CALL_ENQUEUE_TASK;
    request.enqueue_task = &req;
    pb_frame *f = NULL;
    st = unary(client, &request, FANOUT__V1__RESPONSE__RESULT_ENQUEUE_TASK, &f);
    if (st != FANOUT_OK)
        return st;
    return finish_task(client, f, f->response->enqueue_task ? f->response->enqueue_task->task : NULL, out);
}

fanout_status fanout_get_batch(fanout_client *client, uint64_t batch_id, fanout_batch_info **out)
{
    if (out != NULL)
        *out = NULL;
    fanout_status st = fanout_check_client(client);
    if (st != FANOUT_OK)
        return st;
    Fanout__V1__GetBatchRequest req = FANOUT__V1__GET_BATCH_REQUEST__INIT;
    req.batch_id = batch_id;
    Fanout__V1__Request request = FANOUT__V1__REQUEST__INIT;
    request.call_case = FANOUT__V1__REQUEST__CALL_GET_BATCH;
    request.get_batch = &req;
    pb_frame *f = NULL;
    st = unary(client, &request, FANOUT__V1__RESPONSE__RESULT_GET_BATCH, &f);
    if (st != FANOUT_OK)
        return st;
    return finish_batch(client, f, f->response->get_batch ? f->response->get_batch->batch : NULL, out);
}

fanout_status fanout_get_task(fanout_client *client, uint64_t task_id, int include_payload, fanout_task_info **out)
{
    if (out != NULL)
        *out = NULL;
    fanout_status st = fanout_check_client(client);
    if (st != FANOUT_OK)
        return st;
    Fanout__V1__GetTaskRequest req = FANOUT__V1__GET_TASK_REQUEST__INIT;
    req.task_id = task_id;
    req.include_payload = include_payload != 0;
    Fanout__V1__Request request = FANOUT__V1__REQUEST__INIT;
    request.call_case = FANOUT__V1__REQUEST__CALL_GET_TASK;
    request.get_task = &req;
    pb_frame *f = NULL;
    st = unary(client, &request, FANOUT__V1__RESPONSE__RESULT_GET_TASK, &f);
    if (st != FANOUT_OK)
        return st;
    return finish_task(client, f, f->response->get_task ? f->response->get_task->task : NULL, out);
}

fanout_status fanout_list_batches(fanout_client *client, const fanout_list_options *options,
                                  fanout_batch_list **out)
{
    if (out != NULL)
        *out = NULL;
    fanout_status st = fanout_check_client(client);
    if (st != FANOUT_OK)
        return st;
    if (out == NULL)
        return fanout_fail(client, FANOUT_BAD_ARGUMENT, "out is NULL");
    Fanout__V1__ListBatchesRequest req = FANOUT__V1__LIST_BATCHES_REQUEST__INIT;
    if (options != NULL) {
        if ((st = fanout_check_string(client, "owner_id", options->owner_id)) != FANOUT_OK)
            return st;
        req.owner_id = str_or_empty(options->owner_id);
        req.limit = options->limit;
        req.before_id = options->before_id;
        req.parent_batch_id = options->parent_batch_id;
    }
    Fanout__V1__Request request = FANOUT__V1__REQUEST__INIT;
    request.call_case = FANOUT__V1__REQUEST__CALL_LIST_BATCHES;
    request.list_batches = &req;
    pb_frame *f = NULL;
    st = unary(client, &request, FANOUT__V1__RESPONSE__RESULT_LIST_BATCHES, &f);
    if (st != FANOUT_OK)
        return st;
    const Fanout__V1__ListBatchesResponse *r = f->response->list_batches;
    fanout_batch_list *list = calloc(1, sizeof *list);
    size_t n = r ? r->n_batches : 0;
    if (list == NULL || (n > 0 && (list->batches = calloc(n, sizeof *list->batches)) == NULL)) {
        free(list);
        fanout_frame_free(f);
        return fanout_fail(client, FANOUT_NO_MEMORY, "out of memory");
    }
    list->next_before_id = r ? r->next_before_id : 0;
    for (size_t i = 0; i < n; i++) {
        st = fanout_convert_batch(r->batches[i], &list->batches[i]);
        if (st != FANOUT_OK) {
            fanout_batch_list_free(list);
            fanout_frame_free(f);
            return fanout_fail(client, st, "cannot convert batch %zu of the list", i);
        }
        list->n_batches = i + 1;
    }
    fanout_frame_free(f);
    *out = list;
    return FANOUT_OK;
}

fanout_status fanout_cancel_batch(fanout_client *client, uint64_t batch_id, fanout_batch_info **out)
{
    if (out != NULL)
        *out = NULL;
    fanout_status st = fanout_check_client(client);
    if (st != FANOUT_OK)
        return st;
    Fanout__V1__CancelBatchRequest req = FANOUT__V1__CANCEL_BATCH_REQUEST__INIT;
    req.batch_id = batch_id;
    Fanout__V1__Request request = FANOUT__V1__REQUEST__INIT;
    request.call_case = FANOUT__V1__REQUEST__CALL_CANCEL_BATCH;
    request.cancel_batch = &req;
    pb_frame *f = NULL;
    st = unary(client, &request, FANOUT__V1__RESPONSE__RESULT_CANCEL_BATCH, &f);
    if (st != FANOUT_OK)
        return st;
    return finish_batch(client, f, f->response->cancel_batch ? f->response->cancel_batch->batch : NULL, out);
}

fanout_status fanout_cancel_task(fanout_client *client, uint64_t task_id, fanout_task_info **out)
{
    if (out != NULL)
        *out = NULL;
    fanout_status st = fanout_check_client(client);
    if (st != FANOUT_OK)
        return st;
    Fanout__V1__CancelTaskRequest req = FANOUT__V1__CANCEL_TASK_REQUEST__INIT;
    req.task_id = task_id;
    Fanout__V1__Request request = FANOUT__V1__REQUEST__INIT;
    request.call_case = FANOUT__V1__REQUEST__CALL_CANCEL_TASK;
    request.cancel_task = &req;
    pb_frame *f = NULL;
    st = unary(client, &request, FANOUT__V1__RESPONSE__RESULT_CANCEL_TASK, &f);
    if (st != FANOUT_OK)
        return st;
    return finish_task(client, f, f->response->cancel_task ? f->response->cancel_task->task : NULL, out);
}

fanout_status fanout_retry_failed(fanout_client *client, uint64_t batch_id, int include_expired,
                                  int include_cancelled, uint32_t *retried, fanout_batch_info **out)
{
    if (out != NULL)
        *out = NULL;
    if (retried != NULL)
        *retried = 0;
    fanout_status st = fanout_check_client(client);
    if (st != FANOUT_OK)
        return st;
    Fanout__V1__RetryFailedRequest req = FANOUT__V1__RETRY_FAILED_REQUEST__INIT;
    req.batch_id = batch_id;
    req.include_expired = include_expired != 0;
    req.include_cancelled = include_cancelled != 0;
    Fanout__V1__Request request = FANOUT__V1__REQUEST__INIT;
    request.call_case = FANOUT__V1__REQUEST__CALL_RETRY_FAILED;
    request.retry_failed = &req;
    pb_frame *f = NULL;
    st = unary(client, &request, FANOUT__V1__RESPONSE__RESULT_RETRY_FAILED, &f);
    if (st != FANOUT_OK)
        return st;
    const Fanout__V1__RetryFailedResponse *r = f->response->retry_failed;
    if (retried != NULL && r != NULL)
        *retried = r->retried;
    return finish_batch(client, f, r ? r->batch : NULL, out);
}

fanout_status fanout_get_server_info(fanout_client *client, fanout_server_info **out)
{
    if (out != NULL)
        *out = NULL;
    fanout_status st = fanout_check_client(client);
    if (st != FANOUT_OK)
        return st;
    if (out == NULL)
        return fanout_fail(client, FANOUT_BAD_ARGUMENT, "out is NULL");
    Fanout__V1__ServerInfoRequest req = FANOUT__V1__SERVER_INFO_REQUEST__INIT;
    Fanout__V1__Request request = FANOUT__V1__REQUEST__INIT;
    request.call_case = FANOUT__V1__REQUEST__CALL_SERVER_INFO;
    request.server_info = &req;
    pb_frame *f = NULL;
    st = unary(client, &request, FANOUT__V1__RESPONSE__RESULT_SERVER_INFO, &f);
    if (st != FANOUT_OK)
        return st;
    st = fanout_convert_server_info(f->response->server_info, out);
    fanout_frame_free(f);
    if (st != FANOUT_OK)
        return fanout_fail(client, st, "cannot convert the server info");
    return FANOUT_OK;
}
