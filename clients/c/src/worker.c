/* Worker sessions (PROTOCOL.md §5.12): Request.worker_session, then
 * StreamMessage.worker from us and StreamMessage.to_worker from the daemon. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct fanout_worker {
    fanout_stream stream;
    fanout_worker_message current; /* what next() lent out */
    int done;
    fanout_status end;
};

static void message_clear(fanout_worker_message *m)
{
    fanout_task_info_free(m->task);
    for (size_t i = 0; i < m->n_results; i++)
        fanout_result_clear(&m->results[i]);
    free(m->results);
    free(m->status_message);
    memset(m, 0, sizeof *m);
}

static fanout_status finish(fanout_worker *w, fanout_status st)
{
    w->done = 1;
    w->end = st;
    fanout_stream_detach(&w->stream);
    return st;
}

static fanout_status set_status(fanout_worker_message *m, const Fanout__V1__Status *status)
{
    m->status = FANOUT_OK;
    const char *text = "";
    if (status != NULL) {
        m->status = (status->code >= 0 && status->code <= 16) ? (fanout_status)status->code : FANOUT_UNKNOWN;
        if (status->message != NULL)
            text = status->message;
    }
    size_t n = strlen(text);
    m->status_message = malloc(n + 1);
    if (m->status_message == NULL)
        return FANOUT_NO_MEMORY;
    memcpy(m->status_message, text, n + 1);
    return FANOUT_OK;
}

/* Fills w->current from a ServerToWorker; FANOUT_UNKNOWN for a kind this
 * library does not know (skipped). */
static fanout_status convert(fanout_worker *w, const Fanout__V1__ServerToWorker *in)
{
    fanout_worker_message *m = &w->current;
    fanout_status st = FANOUT_OK;
    switch (in->kind_case) {
    case FANOUT__V1__SERVER_TO_WORKER__KIND_ASSIGNMENT:
        m->kind = FANOUT_WORKER_ASSIGNMENT;
        m->lease_ms = in->assignment->lease_ms;
        m->resumed = in->assignment->resumed != 0;
        st = fanout_convert_task(in->assignment->task, &m->task);
        if (m->task != NULL)
            m->task_id = m->task->id;
        break;
    case FANOUT__V1__SERVER_TO_WORKER__KIND_CANCEL:
        m->kind = FANOUT_WORKER_CANCEL;
        m->task_id = in->cancel->task_id;
        break;
    case FANOUT__V1__SERVER_TO_WORKER__KIND_CHILDREN_DONE: {
        const Fanout__V1__WorkerChildrenDone *d = in->children_done;
        m->kind = FANOUT_WORKER_CHILDREN_DONE;
        m->task_id = d->task_id;
        m->child_batch_id = d->child_batch_id;
        m->last = d->last != 0;
        if (d->n_results > 0) {
            m->results = calloc(d->n_results, sizeof *m->results);
            if (m->results == NULL)
                return FANOUT_NO_MEMORY;
            for (size_t i = 0; i < d->n_results && st == FANOUT_OK; i++) {
                st = fanout_convert_result(d->results[i], &m->results[i]);
                if (st == FANOUT_OK)
                    m->n_results = i + 1;
            }
        }
        break;
    }
    case FANOUT__V1__SERVER_TO_WORKER__KIND_ACK:
        m->kind = FANOUT_WORKER_ACK;
        m->task_id = in->ack->task_id;
        st = set_status(m, in->ack->status);
        break;
    case FANOUT__V1__SERVER_TO_WORKER__KIND_SPAWNED:
        m->kind = FANOUT_WORKER_SPAWNED;
        m->task_id = in->spawned->task_id;
        m->child_batch_id = in->spawned->child_batch_id;
        st = set_status(m, in->spawned->status);
        break;
    default:
        return FANOUT_UNKNOWN;
    }
    if (m->status_message == NULL && st == FANOUT_OK) {
        m->status_message = calloc(1, 1);
        if (m->status_message == NULL)
            st = FANOUT_NO_MEMORY;
    }
    return st;
}

fanout_status fanout_worker_next(fanout_worker *worker, int timeout_ms, const fanout_worker_message **out)
{
    if (out != NULL)
        *out = NULL;
    if (worker == NULL || out == NULL)
        return FANOUT_BAD_ARGUMENT;
    message_clear(&worker->current);
    if (worker->done)
        return worker->end;
    fanout_client *c = worker->stream.client;
    if (c == NULL)
        return FANOUT_BAD_ARGUMENT; /* the client was freed */
    int64_t deadline = fanout_deadline(timeout_ms);
    for (;;) {
        pb_frame *f = NULL;
        fanout_status st = fanout_wait_frame(c, &worker->stream, worker->stream.id, deadline, &f);
        if (st == FANOUT_TIMEOUT)
            return st;
        if (st != FANOUT_OK)
            return finish(worker, st);
        if (f->kind_case == FANOUT__V1__FRAME__KIND_MESSAGE && f->message != NULL &&
            f->message->body_case == FANOUT__V1__STREAM_MESSAGE__BODY_TO_WORKER && f->message->to_worker != NULL) {
            st = convert(worker, f->message->to_worker);
            fanout_frame_free(f);
            if (st == FANOUT_UNKNOWN) { /* a kind added after this library: ignored */
                message_clear(&worker->current);
                continue;
            }
            if (st != FANOUT_OK) {
                message_clear(&worker->current);
                return fanout_fail(c, st, "cannot convert a worker message");
            }
            fanout_succeed(c);
            *out = &worker->current;
            return FANOUT_OK;
        }
        if (f->kind_case == FANOUT__V1__FRAME__KIND_END) {
            st = fanout_fail_server(c, fanout_end_status(f));
            fanout_frame_free(f);
            if (st == FANOUT_OK) {
                fanout_succeed(c);
                st = FANOUT_DONE;
            }
            return finish(worker, st);
        }
        fanout_frame_free(f);
    }
}

fanout_status fanout_worker_open(fanout_client *client, const char *worker_name,
                                 const fanout_agent_registration *agents, size_t n_agents, fanout_worker **out)
{
    if (out != NULL)
        *out = NULL;
    fanout_status st = fanout_check_client(client);
    if (st != FANOUT_OK)
        return st;
    if (out == NULL || (agents == NULL && n_agents > 0))
        return fanout_fail(client, FANOUT_BAD_ARGUMENT, "%s is NULL", out ? "agents" : "out");
    if ((st = fanout_check_string(client, "worker_name", worker_name)) != FANOUT_OK)
        return st;
    for (size_t i = 0; i < n_agents; i++)
        if (agents[i].name == NULL || !fanout_utf8_valid(agents[i].name))
            return fanout_fail(client, FANOUT_BAD_ARGUMENT, "agent %zu: name NULL or not valid UTF-8", i);
    Fanout__V1__AgentRegistration *regs = n_agents ? calloc(n_agents, sizeof *regs) : NULL;
    Fanout__V1__AgentRegistration **ptrs = n_agents ? calloc(n_agents, sizeof *ptrs) : NULL;
    fanout_worker *w = calloc(1, sizeof *w);
    uint32_t id = 0;
    if (w == NULL || (n_agents && (regs == NULL || ptrs == NULL))) {
        st = fanout_fail(client, FANOUT_NO_MEMORY, "out of memory");
        goto fail;
    }
    if ((id = fanout_next_stream(client)) == 0) {
        st = fanout_fail(client, FANOUT_UNAVAILABLE, "this connection used up its stream ids; connect again");
        goto fail;
    }
    for (size_t i = 0; i < n_agents; i++) {
        fanout__v1__agent_registration__init(&regs[i]);
        regs[i].name = (char *)agents[i].name;
        regs[i].concurrency = agents[i].concurrency;
        regs[i].max_turns = agents[i].max_turns;
        ptrs[i] = &regs[i];
    }
    Fanout__V1__WorkerRegister reg = FANOUT__V1__WORKER_REGISTER__INIT;
    reg.worker_name = (char *)(worker_name ? worker_name : "");
    reg.agents = ptrs;
    reg.n_agents = n_agents;
    Fanout__V1__Request request = FANOUT__V1__REQUEST__INIT;
    request.call_case = FANOUT__V1__REQUEST__CALL_WORKER_SESSION;
    request.worker_session = &reg;
    st = fanout_write_request(client, id, &request);
    free(regs);
    free(ptrs);
    regs = NULL;
    ptrs = NULL;
    if (st != FANOUT_OK)
        goto fail;
    w->stream.id = id;
    fanout_stream_attach(client, &w->stream);
    /* The first answer: ack{task_id 0, OK}, or an EndOfStream refusing. */
    const fanout_worker_message *m = NULL;
    st = fanout_worker_next(w, client->timeout_ms, &m);
    if (st == FANOUT_TIMEOUT) {
        fanout_send_cancel(client, id);
        goto fail;
    }
    if (st == FANOUT_DONE)
        st = fanout_fail(client, FANOUT_PROTOCOL_ERROR, "fanoutd ended the worker session at once");
    if (st != FANOUT_OK)
        goto fail;
    if (m->kind != FANOUT_WORKER_ACK || m->task_id != 0 || m->status != FANOUT_OK) {
        st = m->kind == FANOUT_WORKER_ACK && m->status != FANOUT_OK
                 ? fanout_fail(client, m->status, "%s", m->status_message)
                 : fanout_fail(client, FANOUT_PROTOCOL_ERROR, "fanoutd did not acknowledge the registration first");
        fanout_send_cancel(client, id);
        goto fail;
    }
    message_clear(&w->current);
    fanout_succeed(client);
    *out = w;
    return FANOUT_OK;
fail:
    free(regs);
    free(ptrs);
    if (w != NULL) {
        fanout_stream_detach(&w->stream);
        fanout_stream_clear(&w->stream);
        message_clear(&w->current);
        free(w);
    }
    return st;
}

static fanout_status send_message(fanout_worker *w, Fanout__V1__WorkerMessage *msg)
{
    if (w == NULL)
        return FANOUT_BAD_ARGUMENT;
    fanout_client *c = w->stream.client;
    if (c == NULL || w->done)
        return c ? fanout_fail(c, FANOUT_FAILED_PRECONDITION, "the worker session has ended") : FANOUT_BAD_ARGUMENT;
    fanout_status st = fanout_check_client(c);
    if (st != FANOUT_OK)
        return st;
    Fanout__V1__StreamMessage sm = FANOUT__V1__STREAM_MESSAGE__INIT;
    sm.body_case = FANOUT__V1__STREAM_MESSAGE__BODY_WORKER;
    sm.worker = msg;
    pb_frame frame = FANOUT__V1__FRAME__INIT;
    frame.stream_id = w->stream.id;
    frame.kind_case = FANOUT__V1__FRAME__KIND_MESSAGE;
    frame.message = &sm;
    return fanout_write_frame(c, &frame, fanout_deadline(c->timeout_ms));
}

fanout_status fanout_worker_heartbeat(fanout_worker *worker, const uint64_t *task_ids, size_t n_task_ids)
{
    if (task_ids == NULL && n_task_ids > 0)
        return worker && worker->stream.client
                   ? fanout_fail(worker->stream.client, FANOUT_BAD_ARGUMENT, "task_ids is NULL")
                   : FANOUT_BAD_ARGUMENT;
    Fanout__V1__WorkerHeartbeat hb = FANOUT__V1__WORKER_HEARTBEAT__INIT;
    hb.task_ids = (uint64_t *)task_ids;
    hb.n_task_ids = n_task_ids;
    Fanout__V1__WorkerMessage m = FANOUT__V1__WORKER_MESSAGE__INIT;
    m.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_HEARTBEAT;
    m.heartbeat = &hb;
    return send_message(worker, &m);
}

fanout_status fanout_worker_turn(fanout_worker *worker, uint64_t task_id, uint32_t turns)
{
    Fanout__V1__WorkerTurn t = FANOUT__V1__WORKER_TURN__INIT;
    t.task_id = task_id;
    t.turns = turns;
    Fanout__V1__WorkerMessage m = FANOUT__V1__WORKER_MESSAGE__INIT;
    m.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_TURN;
    m.turn = &t;
    return send_message(worker, &m);
}

fanout_status fanout_worker_result(fanout_worker *worker, uint64_t task_id, const void *result, size_t result_len,
                                   const fanout_usage *usage)
{
    if (result == NULL && result_len > 0)
        return worker && worker->stream.client
                   ? fanout_fail(worker->stream.client, FANOUT_BAD_ARGUMENT, "result is NULL")
                   : FANOUT_BAD_ARGUMENT;
    Fanout__V1__TokenUsage u = FANOUT__V1__TOKEN_USAGE__INIT;
    Fanout__V1__WorkerResult r = FANOUT__V1__WORKER_RESULT__INIT;
    r.task_id = task_id;
    r.result.data = (uint8_t *)result;
    r.result.len = result_len;
    if (usage != NULL) {
        u.prompt_tokens = usage->prompt_tokens;
        u.completion_tokens = usage->completion_tokens;
        u.total_tokens = usage->total_tokens;
        r.usage = &u;
    }
    Fanout__V1__WorkerMessage m = FANOUT__V1__WORKER_MESSAGE__INIT;
    m.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_RESULT;
    m.result = &r;
    return send_message(worker, &m);
}

fanout_status fanout_worker_failure(fanout_worker *worker, uint64_t task_id, const char *message, const char *code,
                                    int retryable, uint64_t retry_after_ms)
{
    fanout_client *c = worker ? worker->stream.client : NULL;
    fanout_status st;
    if ((st = fanout_check_string(c, "message", message)) != FANOUT_OK ||
        (st = fanout_check_string(c, "code", code)) != FANOUT_OK)
        return st;
    Fanout__V1__TaskError e = FANOUT__V1__TASK_ERROR__INIT;
    e.message = (char *)(message ? message : "");
    e.code = (char *)(code ? code : "");
    e.retryable = retryable != 0;
    Fanout__V1__WorkerFailure f = FANOUT__V1__WORKER_FAILURE__INIT;
    f.task_id = task_id;
    f.error = &e;
    f.retry_after_ms = retry_after_ms;
    Fanout__V1__WorkerMessage m = FANOUT__V1__WORKER_MESSAGE__INIT;
    m.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_FAILURE;
    m.failure = &f;
    return send_message(worker, &m);
}

fanout_status fanout_worker_spawn(fanout_worker *worker, uint64_t task_id, const char *agent,
                                  const fanout_task_spec *tasks, size_t n_tasks, const fanout_batch_options *options)
{
    fanout_client *c = worker ? worker->stream.client : NULL;
    if (c == NULL)
        return FANOUT_BAD_ARGUMENT;
    if (tasks == NULL && n_tasks > 0)
        return fanout_fail(c, FANOUT_BAD_ARGUMENT, "tasks is NULL");
    size_t n_meta = options ? options->n_metadata : 0;
    if (n_meta > 0 && options->metadata == NULL)
        return fanout_fail(c, FANOUT_BAD_ARGUMENT, "options->metadata is NULL");
    fanout_status st = fanout_check_string(c, "agent", agent);
    if (st != FANOUT_OK)
        return st;
    for (size_t i = 0; i < n_tasks; i++)
        if ((st = fanout_check_spec(c, &tasks[i], i)) != FANOUT_OK)
            return st;
    for (size_t i = 0; i < n_meta; i++) {
        const fanout_kv *kv = &options->metadata[i];
        if (kv->key == NULL || kv->value == NULL || !fanout_utf8_valid(kv->key) || !fanout_utf8_valid(kv->value))
            return fanout_fail(c, FANOUT_BAD_ARGUMENT, "metadata entry %zu: NULL or not valid UTF-8", i);
    }
    Fanout__V1__TaskSpec *specs = n_tasks ? calloc(n_tasks, sizeof *specs) : NULL;
    Fanout__V1__TaskSpec **ptrs = n_tasks ? calloc(n_tasks, sizeof *ptrs) : NULL;
    Fanout__V1__MetadataEntry *meta = n_meta ? calloc(n_meta, sizeof *meta) : NULL;
    Fanout__V1__MetadataEntry **mptrs = n_meta ? calloc(n_meta, sizeof *mptrs) : NULL;
    if ((n_tasks && (!specs || !ptrs)) || (n_meta && (!meta || !mptrs))) {
        st = fanout_fail(c, FANOUT_NO_MEMORY, "out of memory");
    } else {
        for (size_t i = 0; i < n_tasks; i++) {
            fanout_fill_spec(&specs[i], &tasks[i]);
            ptrs[i] = &specs[i];
        }
        for (size_t i = 0; i < n_meta; i++) {
            fanout__v1__metadata_entry__init(&meta[i]);
            meta[i].key = (char *)options->metadata[i].key;
            meta[i].value = (char *)options->metadata[i].value;
            mptrs[i] = &meta[i];
        }
        Fanout__V1__EnqueueBatchRequest children = FANOUT__V1__ENQUEUE_BATCH_REQUEST__INIT;
        children.agent = (char *)(agent ? agent : "");
        children.tasks = ptrs;
        children.n_tasks = n_tasks;
        children.metadata = mptrs;
        children.n_metadata = n_meta;
        if (options != NULL) {
            children.priority = options->priority;
            children.completion_window_ms = options->completion_window_ms;
        }
        Fanout__V1__WorkerSpawn sp = FANOUT__V1__WORKER_SPAWN__INIT;
        sp.task_id = task_id;
        sp.children = &children;
        Fanout__V1__WorkerMessage m = FANOUT__V1__WORKER_MESSAGE__INIT;
        m.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_SPAWN;
        m.spawn = &sp;
        st = send_message(worker, &m);
    }
    free(specs);
    free(ptrs);
    free(meta);
    free(mptrs);
    return st;
}

fanout_status fanout_worker_wait_children(fanout_worker *worker, uint64_t task_id, uint64_t timeout_ms)
{
    Fanout__V1__WorkerWaitChildren wc = FANOUT__V1__WORKER_WAIT_CHILDREN__INIT;
    wc.task_id = task_id;
    wc.timeout_ms = timeout_ms;
    Fanout__V1__WorkerMessage m = FANOUT__V1__WORKER_MESSAGE__INIT;
    m.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_WAIT_CHILDREN;
    m.wait_children = &wc;
    return send_message(worker, &m);
}

fanout_status fanout_worker_drain(fanout_worker *worker)
{
    Fanout__V1__WorkerDrain d = FANOUT__V1__WORKER_DRAIN__INIT;
    Fanout__V1__WorkerMessage m = FANOUT__V1__WORKER_MESSAGE__INIT;
    m.kind_case = FANOUT__V1__WORKER_MESSAGE__KIND_DRAIN;
    m.drain = &d;
    return send_message(worker, &m);
}

void fanout_worker_free(fanout_worker *worker)
{
    if (worker == NULL)
        return;
    fanout_client *c = worker->stream.client;
    if (c != NULL && !worker->done && !worker->stream.finished && c->fd >= 0) {
        /* End the session: EndOfStream{OK} on its stream. Best effort. */
        Fanout__V1__Status ok = FANOUT__V1__STATUS__INIT;
        Fanout__V1__EndOfStream end = FANOUT__V1__END_OF_STREAM__INIT;
        end.status = &ok;
        pb_frame frame = FANOUT__V1__FRAME__INIT;
        frame.stream_id = worker->stream.id;
        frame.kind_case = FANOUT__V1__FRAME__KIND_END;
        frame.end = &end;
        char *saved = c->last_message;
        fanout_status saved_status = c->last_status;
        c->last_message = NULL;
        (void)fanout_write_frame(c, &frame, fanout_deadline(c->timeout_ms));
        free(c->last_message);
        c->last_message = saved;
        c->last_status = saved_status;
    }
    fanout_stream_detach(&worker->stream);
    fanout_stream_clear(&worker->stream);
    message_clear(&worker->current);
    free(worker);
}
