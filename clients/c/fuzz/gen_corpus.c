/* Writes the seed corpus of fuzz_frames.c: `gen_corpus DIR`. Each file is a
 * selector byte (see fuzz_frames.c) and frames as fanoutd would send them,
 * packed by the generated protobuf-c code. Run by `make fuzz-seeds`; the
 * output, fuzz/corpus/, is committed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fanout/v1/fanout.pb-c.h"

typedef Fanout__V1__Frame Frame;

static unsigned char buf[1 << 16];
static size_t len;
static const char *dir;

static void start(unsigned sel)
{
    buf[0] = (unsigned char)sel;
    len = 1;
}

static void put(const Frame *f)
{
    size_t n = fanout__v1__frame__get_packed_size(f);
    if (len + 4 + n > sizeof buf) {
        fprintf(stderr, "seed too large\n");
        exit(1);
    }
    buf[len] = (unsigned char)(n >> 24);
    buf[len + 1] = (unsigned char)(n >> 16);
    buf[len + 2] = (unsigned char)(n >> 8);
    buf[len + 3] = (unsigned char)n;
    fanout__v1__frame__pack(f, buf + len + 4);
    len += 4 + n;
}

static void raw(const char *hex)
{
    for (const char *p = hex; p[0] && p[1];) {
        unsigned v;
        if (sscanf(p, "%2x", &v) != 1)
            break;
        buf[len++] = (unsigned char)v;
        p += 2;
        while (*p == ' ')
            p++;
    }
}

static void save(const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    if (fp == NULL || fwrite(buf, 1, len, fp) != len || fclose(fp) != 0) {
        perror(path);
        exit(1);
    }
}

/* ---- frames ------------------------------------------------------------ */

static void welcome(uint32_t subscriber_buffer, uint32_t version)
{
    Fanout__V1__Limits lim = FANOUT__V1__LIMITS__INIT;
    lim.max_frame_bytes = 4194304;
    lim.max_tasks_per_batch = 100000;
    lim.max_payload_bytes = 1048576;
    lim.max_custom_id_bytes = 256;
    lim.max_streams_per_connection = 64;
    lim.max_connections = 256;
    lim.subscriber_buffer = subscriber_buffer;
    lim.global_concurrency = 64;
    lim.max_results_page = 1000;
    char *features[] = { "worker_session", "chunked_enqueue" };
    Fanout__V1__Welcome w = FANOUT__V1__WELCOME__INIT;
    w.server_version = "0.1.0";
    w.protocol_version = version;
    w.max_frame_bytes = 4194304;
    w.n_features = 2;
    w.features = features;
    w.limits = &lim;
    Fanout__V1__Response r = FANOUT__V1__RESPONSE__INIT;
    r.result_case = FANOUT__V1__RESPONSE__RESULT_WELCOME;
    r.welcome = &w;
    Frame f = FANOUT__V1__FRAME__INIT;
    f.kind_case = FANOUT__V1__FRAME__KIND_RESPONSE;
    f.response = &r;
    put(&f);
}

static void end(uint32_t stream, int code, const char *message, int lagged, uint64_t last_sequence)
{
    Fanout__V1__Status st = FANOUT__V1__STATUS__INIT;
    st.code = (Fanout__V1__StatusCode)code;
    st.message = (char *)message;
    st.lagged = lagged;
    st.last_sequence = last_sequence;
    Fanout__V1__EndOfStream e = FANOUT__V1__END_OF_STREAM__INIT;
    e.status = &st;
    Frame f = FANOUT__V1__FRAME__INIT;
    f.stream_id = stream;
    f.kind_case = FANOUT__V1__FRAME__KIND_END;
    f.end = &e;
    put(&f);
}

static Fanout__V1__TaskError err_failed = { PROTOBUF_C_MESSAGE_INIT(&fanout__v1__task_error__descriptor),
                                            "upstream said no", "rate_limited", 1 };
static Fanout__V1__TokenUsage usage = { PROTOBUF_C_MESSAGE_INIT(&fanout__v1__token_usage__descriptor), 10, 5, 15 };

static void fill_result(Fanout__V1__TaskResult *r, uint64_t id, const char *cid, int ok)
{
    fanout__v1__task_result__init(r);
    r->task_id = id;
    r->custom_id = (char *)cid;
    r->attempt = 1;
    if (ok) {
        r->status = FANOUT__V1__TASK_STATUS__TASK_STATUS_COMPLETED;
        r->result.data = (uint8_t *)"{\"echo\":1}";
        r->result.len = 10;
        r->status_code = 200;
        r->request_id = "req-1";
        r->usage = &usage;
        r->url = "/v1/chat/completions";
    } else {
        r->status = FANOUT__V1__TASK_STATUS__TASK_STATUS_FAILED;
        r->error = &err_failed;
    }
}

static void results_page(uint32_t stream, uint64_t first)
{
    Fanout__V1__TaskResult a, b;
    fill_result(&a, first, "a", 1);
    fill_result(&b, first + 1, "b", 0);
    Fanout__V1__TaskResult *rs[] = { &a, &b };
    Fanout__V1__ResultsPage p = FANOUT__V1__RESULTS_PAGE__INIT;
    p.n_results = 2;
    p.results = rs;
    Fanout__V1__StreamMessage m = FANOUT__V1__STREAM_MESSAGE__INIT;
    m.body_case = FANOUT__V1__STREAM_MESSAGE__BODY_RESULTS_PAGE;
    m.results_page = &p;
    Frame f = FANOUT__V1__FRAME__INIT;
    f.stream_id = stream;
    f.kind_case = FANOUT__V1__FRAME__KIND_MESSAGE;
    f.message = &m;
    put(&f);
}

static Fanout__V1__BatchCounts counts = { PROTOBUF_C_MESSAGE_INIT(&fanout__v1__batch_counts__descriptor),
                                          3, 0, 1, 0, 0, 1, 1, 0, 0 };

static void event(uint32_t stream, uint64_t seq, int type)
{
    Fanout__V1__Event e = FANOUT__V1__EVENT__INIT;
    e.sequence = seq;
    e.type = (Fanout__V1__EventType)type;
    e.timestamp_ms = 1764000000000;
    e.owner_id = "me";
    e.batch_id = 7;
    if (type >= 5) {
        e.task_id = 70 + seq;
        e.custom_id = "t";
        e.attempt = 2;
        e.turn = 1;
        e.retry_delay_ms = 500;
        e.error = &err_failed;
        e.parent_task_id = 3;
    } else {
        e.progress = 66.5;
        e.counts = &counts;
    }
    Fanout__V1__StreamMessage m = FANOUT__V1__STREAM_MESSAGE__INIT;
    m.body_case = FANOUT__V1__STREAM_MESSAGE__BODY_EVENT;
    m.event = &e;
    Frame f = FANOUT__V1__FRAME__INIT;
    f.stream_id = stream;
    f.kind_case = FANOUT__V1__FRAME__KIND_MESSAGE;
    f.message = &m;
    put(&f);
}

static void fill_task(Fanout__V1__Task *t, uint64_t id)
{
    fanout__v1__task__init(t);
    t->id = id;
    t->batch_id = 7;
    t->custom_id = "job-1";
    t->owner_id = "me";
    t->agent = "fanout-c-demo";
    t->status = FANOUT__V1__TASK_STATUS__TASK_STATUS_RUNNING;
    t->attempt = 1;
    t->max_attempts = 3;
    t->timeout_ms = 30000;
    t->max_turns = 4;
    t->payload.data = (uint8_t *)"{\"q\":\"hello\"}";
    t->payload.len = 13;
    t->result.data = (uint8_t *)"{}";
    t->result.len = 2;
    t->error = &err_failed;
    t->usage = &usage;
    t->url = "/v1/x";
    t->request_id = "r";
    t->created_at_ms = 1764000000000;
}

static void to_worker(uint32_t stream, Fanout__V1__ServerToWorker *s)
{
    Fanout__V1__StreamMessage m = FANOUT__V1__STREAM_MESSAGE__INIT;
    m.body_case = FANOUT__V1__STREAM_MESSAGE__BODY_TO_WORKER;
    m.to_worker = s;
    Frame f = FANOUT__V1__FRAME__INIT;
    f.stream_id = stream;
    f.kind_case = FANOUT__V1__FRAME__KIND_MESSAGE;
    f.message = &m;
    put(&f);
}

static void w_ack(uint32_t stream, uint64_t task_id, int code, const char *msg)
{
    Fanout__V1__Status st = FANOUT__V1__STATUS__INIT;
    st.code = (Fanout__V1__StatusCode)code;
    st.message = (char *)msg;
    Fanout__V1__WorkerAck a = FANOUT__V1__WORKER_ACK__INIT;
    a.task_id = task_id;
    a.status = &st;
    Fanout__V1__ServerToWorker s = FANOUT__V1__SERVER_TO_WORKER__INIT;
    s.kind_case = FANOUT__V1__SERVER_TO_WORKER__KIND_ACK;
    s.ack = &a;
    to_worker(stream, &s);
}

static void w_assignment(uint32_t stream, uint64_t id, int resumed)
{
    Fanout__V1__Task t;
    fill_task(&t, id);
    Fanout__V1__WorkerAssignment a = FANOUT__V1__WORKER_ASSIGNMENT__INIT;
    a.task = &t;
    a.lease_ms = 30000;
    a.resumed = resumed;
    Fanout__V1__ServerToWorker s = FANOUT__V1__SERVER_TO_WORKER__INIT;
    s.kind_case = FANOUT__V1__SERVER_TO_WORKER__KIND_ASSIGNMENT;
    s.assignment = &a;
    to_worker(stream, &s);
}

static void w_spawned(uint32_t stream, uint64_t id, uint64_t child_batch)
{
    Fanout__V1__Status st = FANOUT__V1__STATUS__INIT;
    Fanout__V1__WorkerSpawned sp = FANOUT__V1__WORKER_SPAWNED__INIT;
    sp.task_id = id;
    sp.child_batch_id = child_batch;
    sp.status = &st;
    Fanout__V1__ServerToWorker s = FANOUT__V1__SERVER_TO_WORKER__INIT;
    s.kind_case = FANOUT__V1__SERVER_TO_WORKER__KIND_SPAWNED;
    s.spawned = &sp;
    to_worker(stream, &s);
}

static void w_cancel(uint32_t stream, uint64_t id)
{
    Fanout__V1__WorkerCancel c = FANOUT__V1__WORKER_CANCEL__INIT;
    c.task_id = id;
    Fanout__V1__ServerToWorker s = FANOUT__V1__SERVER_TO_WORKER__INIT;
    s.kind_case = FANOUT__V1__SERVER_TO_WORKER__KIND_CANCEL;
    s.cancel = &c;
    to_worker(stream, &s);
}

static void w_children_done(uint32_t stream, uint64_t id, uint64_t child_batch, int n, int last)
{
    Fanout__V1__TaskResult a, b;
    fill_result(&a, 100, "c0", 1);
    fill_result(&b, 101, "c1", 0);
    Fanout__V1__TaskResult *rs[] = { &a, &b };
    Fanout__V1__WorkerChildrenDone d = FANOUT__V1__WORKER_CHILDREN_DONE__INIT;
    d.task_id = id;
    d.child_batch_id = child_batch;
    d.n_results = (size_t)n;
    d.results = rs;
    d.last = last;
    Fanout__V1__ServerToWorker s = FANOUT__V1__SERVER_TO_WORKER__INIT;
    s.kind_case = FANOUT__V1__SERVER_TO_WORKER__KIND_CHILDREN_DONE;
    s.children_done = &d;
    to_worker(stream, &s);
}

static void response(uint32_t stream, Fanout__V1__Response *r)
{
    Frame f = FANOUT__V1__FRAME__INIT;
    f.stream_id = stream;
    f.kind_case = FANOUT__V1__FRAME__KIND_RESPONSE;
    f.response = r;
    put(&f);
}

static void fill_batch(Fanout__V1__Batch *b, uint64_t id, Fanout__V1__MetadataEntry **meta)
{
    fanout__v1__batch__init(b);
    b->id = id;
    b->owner_id = "me";
    b->agent = "echo";
    b->status = FANOUT__V1__BATCH_STATUS__BATCH_STATUS_PROCESSING;
    b->counts = &counts;
    b->progress = 33.3;
    b->n_metadata = 1;
    b->metadata = meta;
    b->created_at_ms = 1764000000000;
    b->creator_uid = 1000;
    b->usage = &usage;
}

static void server_info(uint32_t stream)
{
    Fanout__V1__Limits lim = FANOUT__V1__LIMITS__INIT;
    lim.max_frame_bytes = 4194304;
    Fanout__V1__AgentInfo ag = FANOUT__V1__AGENT_INFO__INIT;
    ag.name = "echo";
    ag.runner = "echo";
    ag.concurrency = 8;
    Fanout__V1__AgentInfo *ags[] = { &ag };
    Fanout__V1__WorkerSlots slots = FANOUT__V1__WORKER_SLOTS__INIT;
    slots.agent = "fanout-c-demo";
    slots.slots = 2;
    slots.free_slots = 1;
    Fanout__V1__WorkerSlots *sl[] = { &slots };
    uint64_t running[] = { 5, 6 };
    Fanout__V1__ConnectedWorker cw = FANOUT__V1__CONNECTED_WORKER__INIT;
    cw.id = 1;
    cw.name = "w";
    cw.uid = 1000;
    cw.n_agents = 1;
    cw.agents = sl;
    cw.n_running_task_ids = 2;
    cw.running_task_ids = running;
    Fanout__V1__ConnectedWorker *cws[] = { &cw };
    Fanout__V1__ServerInfoResponse si = FANOUT__V1__SERVER_INFO_RESPONSE__INIT;
    si.server_version = "0.1.0";
    si.protocol_version = 1;
    si.limits = &lim;
    si.n_agents = 1;
    si.agents = ags;
    si.last_sequence = 42;
    si.n_worker_list = 1;
    si.worker_list = cws;
    Fanout__V1__Response r = FANOUT__V1__RESPONSE__INIT;
    r.result_case = FANOUT__V1__RESPONSE__RESULT_SERVER_INFO;
    r.server_info = &si;
    response(stream, &r);
}

static void all_unary(uint32_t first)
{
    uint32_t s = first;
    server_info(s);
    s += 2;
    Fanout__V1__Task t;
    fill_task(&t, 9);
    Fanout__V1__GetTaskResponse gt = FANOUT__V1__GET_TASK_RESPONSE__INIT;
    gt.task = &t;
    Fanout__V1__Response r = FANOUT__V1__RESPONSE__INIT;
    r.result_case = FANOUT__V1__RESPONSE__RESULT_GET_TASK;
    r.get_task = &gt;
    response(s, &r);
    s += 2;
    Fanout__V1__CancelTaskResponse ct = FANOUT__V1__CANCEL_TASK_RESPONSE__INIT;
    ct.task = &t;
    r.result_case = FANOUT__V1__RESPONSE__RESULT_CANCEL_TASK;
    r.cancel_task = &ct;
    response(s, &r);
    s += 2;
    Fanout__V1__MetadataEntry me = FANOUT__V1__METADATA_ENTRY__INIT;
    me.key = "k";
    me.value = "v";
    Fanout__V1__MetadataEntry *meta[] = { &me };
    Fanout__V1__Batch b;
    fill_batch(&b, 7, meta);
    Fanout__V1__GetBatchResponse gb = FANOUT__V1__GET_BATCH_RESPONSE__INIT;
    gb.batch = &b;
    r.result_case = FANOUT__V1__RESPONSE__RESULT_GET_BATCH;
    r.get_batch = &gb;
    response(s, &r);
    s += 2;
    end(s, 5, "no batch 1", 0, 0); /* cancel_batch: NOT_FOUND */
    s += 2;
    Fanout__V1__RetryFailedResponse rf = FANOUT__V1__RETRY_FAILED_RESPONSE__INIT;
    rf.batch = &b;
    rf.retried = 2;
    r.result_case = FANOUT__V1__RESPONSE__RESULT_RETRY_FAILED;
    r.retry_failed = &rf;
    response(s, &r);
    s += 2;
    Fanout__V1__Batch *bs[] = { &b, &b };
    Fanout__V1__ListBatchesResponse lb = FANOUT__V1__LIST_BATCHES_RESPONSE__INIT;
    lb.n_batches = 2;
    lb.batches = bs;
    lb.next_before_id = 7;
    r.result_case = FANOUT__V1__RESPONSE__RESULT_LIST_BATCHES;
    r.list_batches = &lb;
    response(s, &r);
    s += 2;
    Fanout__V1__EnqueueBatchResponse eb = FANOUT__V1__ENQUEUE_BATCH_RESPONSE__INIT;
    eb.batch = &b;
    r.result_case = FANOUT__V1__RESPONSE__RESULT_ENQUEUE_BATCH;
    r.enqueue_batch = &eb;
    response(s, &r);
    s += 2;
    Fanout__V1__EnqueueTaskResponse et = FANOUT__V1__ENQUEUE_TASK_RESPONSE__INIT;
    et.task = &t;
    r.result_case = FANOUT__V1__RESPONSE__RESULT_ENQUEUE_TASK;
    r.enqueue_task = &et;
    response(s, &r);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    dir = argv[1];

    start(0x08); welcome(10000, 1); save("welcome");
    start(0x08); raw("00 00 00 12 1a 10 0a 0e 0a 05 30 2e 31 2e 30 10 01 18 80 80 80 02"); save("welcome_doc");
    start(0x08); welcome(0, 2); save("welcome_bad_version");
    start(0x08); end(0, 16, "who are you", 0, 0); save("handshake_refused");

    start(0x08); welcome(10000, 1); results_page(1, 10); results_page(1, 12); end(1, 0, "", 0, 0);
    save("results_pages");
    start(0x00); raw("00 00 00 15 08 01 32 11 0a 0f 08 05 12 0b 6e 6f 20 62 61 74 63 68 20 34 32"); save("results_not_found");

    start(0x09); welcome(2, 1); event(1, 1, 1); event(1, 2, 9); event(1, 3, 7); event(1, 4, 2); end(1, 0, "", 0, 0);
    save("events");
    start(0x01); event(1, 299, 8); raw("00 00 00 0d 08 05 32 09 0a 07 08 08 18 01 20 ac 02");
    end(1, 8, "subscriber lagged", 1, 300); save("events_lagged");
    start(0x01); end(1, 11, "events before 5 were dropped", 0, 5); save("events_out_of_range");

    start(0x0a); welcome(10000, 1); w_ack(1, 0, 0, NULL); w_assignment(1, 21, 0); w_spawned(1, 21, 8);
    w_ack(1, 21, 9, "lease lost"); w_assignment(1, 21, 1); w_children_done(1, 21, 8, 2, 0);
    w_children_done(1, 21, 0, 0, 1); w_cancel(1, 22); end(1, 14, "shutting down", 0, 0);
    save("worker_session");
    start(0x02); end(1, 7, "agent declared by another uid", 0, 0); save("worker_refused");
    start(0x02); w_ack(1, 0, 0, NULL); w_assignment(1, 5, 1); w_children_done(1, 5, 9, 2, 1); end(1, 0, NULL, 0, 0);
    save("worker_resumed");

    start(0x0b); welcome(10000, 1); all_unary(1); save("unary_calls");
    start(0x03); end(0, 3, "undecodable frame", 0, 0); save("stream0_end");

    /* Mixed: results 1, subscription 3, worker 5, unary from 7. */
    start(0x0c); welcome(3, 1); results_page(1, 1); event(3, 1, 5); w_ack(5, 0, 0, NULL); event(3, 2, 8);
    w_assignment(5, 30, 0); results_page(1, 3); end(1, 0, "", 0, 0); all_unary(7); event(3, 3, 1);
    w_children_done(5, 30, 4, 1, 1); end(3, 14, "bye", 0, 0); end(5, 14, "bye", 0, 0);
    save("mixed_streams");
    return 0;
}
