/* Copies decoded protobuf messages into the public plain structs, and the
 * matching free functions. Strings are always allocated ("" when absent). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static char *copy_str(const char *s, int *ok)
{
    if (s == NULL)
        s = "";
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p == NULL) {
        *ok = 0;
        return NULL;
    }
    memcpy(p, s, n + 1);
    return p;
}

static unsigned char *copy_bytes(ProtobufCBinaryData in, size_t *len, int *ok)
{
    *len = 0;
    if (in.len == 0 || in.data == NULL)
        return NULL;
    unsigned char *p = malloc(in.len);
    if (p == NULL) {
        *ok = 0;
        return NULL;
    }
    memcpy(p, in.data, in.len);
    *len = in.len;
    return p;
}

static void copy_counts(const Fanout__V1__BatchCounts *in, fanout_counts *out)
{
    memset(out, 0, sizeof *out);
    if (in == NULL)
        return;
    out->total = in->total;
    out->pending = in->pending;
    out->running = in->running;
    out->waiting_children = in->waiting_children;
    out->retry_wait = in->retry_wait;
    out->completed = in->completed;
    out->failed = in->failed;
    out->cancelled = in->cancelled;
    out->expired = in->expired;
}

static void copy_usage(const Fanout__V1__TokenUsage *in, fanout_usage *out)
{
    memset(out, 0, sizeof *out);
    if (in == NULL)
        return;
    out->prompt_tokens = in->prompt_tokens;
    out->completion_tokens = in->completion_tokens;
    out->total_tokens = in->total_tokens;
}

static void copy_error(const Fanout__V1__TaskError *in, fanout_task_error *out, int *ok)
{
    out->has_error = in != NULL;
    out->message = copy_str(in ? in->message : NULL, ok);
    out->code = copy_str(in ? in->code : NULL, ok);
    out->retryable = in ? (in->retryable != 0) : 0;
}

static void clear_error(fanout_task_error *e)
{
    free(e->message);
    free(e->code);
    memset(e, 0, sizeof *e);
}

void fanout_convert_limits(const Fanout__V1__Limits *in, fanout_limits *out)
{
    memset(out, 0, sizeof *out);
    if (in == NULL)
        return;
    out->max_frame_bytes = in->max_frame_bytes;
    out->max_tasks_per_batch = in->max_tasks_per_batch;
    out->max_payload_bytes = in->max_payload_bytes;
    out->max_custom_id_bytes = in->max_custom_id_bytes;
    out->max_streams_per_connection = in->max_streams_per_connection;
    out->max_connections = in->max_connections;
    out->subscriber_buffer = in->subscriber_buffer;
    out->global_concurrency = in->global_concurrency;
    out->max_results_page = in->max_results_page;
}

/* ---- batch ------------------------------------------------------------ */

void fanout_batch_info_free(fanout_batch_info *b)
{
    if (b == NULL)
        return;
    free(b->owner_id);
    free(b->agent);
    for (size_t i = 0; i < b->n_metadata; i++) {
        free((char *)b->metadata[i].key);
        free((char *)b->metadata[i].value);
    }
    free(b->metadata);
    free(b);
}

fanout_status fanout_convert_batch(const Fanout__V1__Batch *in, fanout_batch_info **out)
{
    *out = NULL;
    if (in == NULL)
        return FANOUT_PROTOCOL_ERROR;
    fanout_batch_info *b = calloc(1, sizeof *b);
    if (b == NULL)
        return FANOUT_NO_MEMORY;
    int ok = 1;
    b->id = in->id;
    b->owner_id = copy_str(in->owner_id, &ok);
    b->agent = copy_str(in->agent, &ok);
    b->status = (fanout_batch_status)in->status;
    copy_counts(in->counts, &b->counts);
    b->progress = in->progress;
    if (in->n_metadata > 0) {
        b->metadata = calloc(in->n_metadata, sizeof *b->metadata);
        if (b->metadata == NULL) {
            ok = 0;
        } else {
            b->n_metadata = in->n_metadata;
            for (size_t i = 0; i < in->n_metadata; i++) {
                const Fanout__V1__MetadataEntry *e = in->metadata[i];
                b->metadata[i].key = copy_str(e ? e->key : NULL, &ok);
                b->metadata[i].value = copy_str(e ? e->value : NULL, &ok);
            }
        }
    }
    b->parent_task_id = in->parent_task_id;
    b->created_at_ms = in->created_at_ms;
    b->started_at_ms = in->started_at_ms;
    b->finished_at_ms = in->finished_at_ms;
    b->deadline_at_ms = in->deadline_at_ms;
    b->creator_uid = in->creator_uid;
    b->max_turns = in->max_turns;
    copy_usage(in->usage, &b->usage);
    if (!ok) {
        fanout_batch_info_free(b);
        return FANOUT_NO_MEMORY;
    }
    *out = b;
    return FANOUT_OK;
}

void fanout_batch_list_free(fanout_batch_list *list)
{
    if (list == NULL)
        return;
    for (size_t i = 0; i < list->n_batches; i++)
        fanout_batch_info_free(list->batches[i]);
    free(list->batches);
    free(list);
}

/* ---- task ------------------------------------------------------------- */

void fanout_task_info_free(fanout_task_info *t)
{
    if (t == NULL)
        return;
    free(t->custom_id);
    free(t->owner_id);
    free(t->agent);
    free(t->result);
    clear_error(&t->error);
    free(t->payload);
    free(t->url);
    free(t->request_id);
    free(t);
}

fanout_status fanout_convert_task(const Fanout__V1__Task *in, fanout_task_info **out)
{
    *out = NULL;
    if (in == NULL)
        return FANOUT_PROTOCOL_ERROR;
    fanout_task_info *t = calloc(1, sizeof *t);
    if (t == NULL)
        return FANOUT_NO_MEMORY;
    int ok = 1;
    t->id = in->id;
    t->batch_id = in->batch_id;
    t->custom_id = copy_str(in->custom_id, &ok);
    t->owner_id = copy_str(in->owner_id, &ok);
    t->agent = copy_str(in->agent, &ok);
    t->status = (fanout_task_status)in->status;
    t->priority = in->priority;
    t->attempt = in->attempt;
    t->max_attempts = in->max_attempts;
    t->timeout_ms = in->timeout_ms;
    t->turns_completed = in->turns_completed;
    t->max_turns = in->max_turns;
    t->result = copy_bytes(in->result, &t->result_len, &ok);
    copy_error(in->error, &t->error, &ok);
    t->parent_task_id = in->parent_task_id;
    t->created_at_ms = in->created_at_ms;
    t->started_at_ms = in->started_at_ms;
    t->finished_at_ms = in->finished_at_ms;
    t->payload = copy_bytes(in->payload, &t->payload_len, &ok);
    t->url = copy_str(in->url, &ok);
    t->status_code = in->status_code;
    t->request_id = copy_str(in->request_id, &ok);
    copy_usage(in->usage, &t->usage);
    if (!ok) {
        fanout_task_info_free(t);
        return FANOUT_NO_MEMORY;
    }
    *out = t;
    return FANOUT_OK;
}

/* ---- result (borrowed, cleared in place) ------------------------------ */

void fanout_result_clear(fanout_task_result *r)
{
    free(r->custom_id);
    free(r->result);
    clear_error(&r->error);
    free(r->request_id);
    free(r->url);
    memset(r, 0, sizeof *r);
}

fanout_status fanout_convert_result(const Fanout__V1__TaskResult *in, fanout_task_result *r)
{
    memset(r, 0, sizeof *r);
    if (in == NULL)
        return FANOUT_PROTOCOL_ERROR;
    int ok = 1;
    r->task_id = in->task_id;
    r->custom_id = copy_str(in->custom_id, &ok);
    r->status = (fanout_task_status)in->status;
    r->result = copy_bytes(in->result, &r->result_len, &ok);
    copy_error(in->error, &r->error, &ok);
    r->attempt = in->attempt;
    r->status_code = in->status_code;
    r->request_id = copy_str(in->request_id, &ok);
    copy_usage(in->usage, &r->usage);
    r->url = copy_str(in->url, &ok);
    if (!ok) {
        fanout_result_clear(r);
        return FANOUT_NO_MEMORY;
    }
    return FANOUT_OK;
}

/* ---- event (borrowed, cleared in place) ------------------------------- */

void fanout_event_clear(fanout_event *e)
{
    free(e->owner_id);
    free(e->custom_id);
    clear_error(&e->error);
    memset(e, 0, sizeof *e);
}

fanout_status fanout_convert_event(const Fanout__V1__Event *in, fanout_event *e)
{
    memset(e, 0, sizeof *e);
    if (in == NULL)
        return FANOUT_PROTOCOL_ERROR;
    int ok = 1;
    e->sequence = in->sequence;
    e->type = (fanout_event_type)in->type;
    e->timestamp_ms = in->timestamp_ms;
    e->owner_id = copy_str(in->owner_id, &ok);
    e->batch_id = in->batch_id;
    e->task_id = in->task_id;
    e->custom_id = copy_str(in->custom_id, &ok);
    e->parent_task_id = in->parent_task_id;
    e->progress = in->progress;
    copy_counts(in->counts, &e->counts);
    e->attempt = in->attempt;
    e->turn = in->turn;
    e->retry_delay_ms = in->retry_delay_ms;
    copy_error(in->error, &e->error, &ok);
    if (!ok) {
        fanout_event_clear(e);
        return FANOUT_NO_MEMORY;
    }
    return FANOUT_OK;
}

/* ---- server info ------------------------------------------------------ */

void fanout_server_info_free(fanout_server_info *info)
{
    if (info == NULL)
        return;
    free(info->server_version);
    for (size_t i = 0; i < info->n_agents; i++) {
        free(info->agents[i].name);
        free(info->agents[i].runner);
    }
    free(info->agents);
    for (size_t i = 0; i < info->n_worker_list; i++) {
        fanout_connected_worker *w = &info->worker_list[i];
        free(w->name);
        for (size_t j = 0; j < w->n_agents; j++)
            free(w->agents[j].agent);
        free(w->agents);
        free(w->running_task_ids);
    }
    free(info->worker_list);
    free(info);
}

fanout_status fanout_convert_server_info(const Fanout__V1__ServerInfoResponse *in, fanout_server_info **out)
{
    *out = NULL;
    if (in == NULL)
        return FANOUT_PROTOCOL_ERROR;
    fanout_server_info *s = calloc(1, sizeof *s);
    if (s == NULL)
        return FANOUT_NO_MEMORY;
    int ok = 1;
    s->server_version = copy_str(in->server_version, &ok);
    s->protocol_version = in->protocol_version;
    s->started_at_ms = in->started_at_ms;
    s->pending_tasks = in->pending_tasks;
    s->running_tasks = in->running_tasks;
    s->retry_wait_tasks = in->retry_wait_tasks;
    s->connections = in->connections;
    s->workers = in->workers;
    fanout_convert_limits(in->limits, &s->limits);
    s->last_sequence = in->last_sequence;
    if (in->n_agents > 0) {
        s->agents = calloc(in->n_agents, sizeof *s->agents);
        if (s->agents == NULL) {
            ok = 0;
        } else {
            s->n_agents = in->n_agents;
            for (size_t i = 0; i < in->n_agents; i++) {
                const Fanout__V1__AgentInfo *a = in->agents[i];
                fanout_agent_info *o = &s->agents[i];
                o->name = copy_str(a ? a->name : NULL, &ok);
                o->runner = copy_str(a ? a->runner : NULL, &ok);
                if (a != NULL) {
                    o->concurrency = a->concurrency;
                    o->max_turns = a->max_turns;
                    o->max_attempts = a->max_attempts;
                    o->running = a->running;
                    o->workers = a->workers;
                }
            }
        }
    }
    if (ok && in->n_worker_list > 0) {
        s->worker_list = calloc(in->n_worker_list, sizeof *s->worker_list);
        if (s->worker_list == NULL)
            ok = 0;
        else
            s->n_worker_list = in->n_worker_list;
        for (size_t i = 0; ok && i < in->n_worker_list; i++) {
            const Fanout__V1__ConnectedWorker *w = in->worker_list[i];
            fanout_connected_worker *o = &s->worker_list[i];
            o->name = copy_str(w ? w->name : NULL, &ok);
            if (w == NULL)
                continue;
            o->id = w->id;
            o->uid = w->uid;
            if (w->n_agents > 0) {
                o->agents = calloc(w->n_agents, sizeof *o->agents);
                if (o->agents == NULL) {
                    ok = 0;
                    break;
                }
                o->n_agents = w->n_agents;
                for (size_t j = 0; j < w->n_agents; j++) {
                    const Fanout__V1__WorkerSlots *a = w->agents[j];
                    o->agents[j].agent = copy_str(a ? a->agent : NULL, &ok);
                    o->agents[j].slots = a ? a->slots : 0;
                    o->agents[j].free_slots = a ? a->free_slots : 0;
                }
            }
            if (w->n_running_task_ids > 0) {
                o->running_task_ids = malloc(w->n_running_task_ids * sizeof *o->running_task_ids);
                if (o->running_task_ids == NULL) {
                    ok = 0;
                    break;
                }
                memcpy(o->running_task_ids, w->running_task_ids, w->n_running_task_ids * sizeof *o->running_task_ids);
                o->n_running_task_ids = w->n_running_task_ids;
            }
        }
    }
    if (!ok) {
        fanout_server_info_free(s);
        return FANOUT_NO_MEMORY;
    }
    *out = s;
    return FANOUT_OK;
}
