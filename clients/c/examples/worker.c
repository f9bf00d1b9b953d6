/* worker: serves an agent through a worker session (PROTOCOL.md §5.12).
 * For each task it spawns N child tasks on another agent, waits for them,
 * and answers with a result that combines theirs:
 *
 *   {"custom_id":"<task>","children":[<child result>,...],"completed":N,"failed":0}
 *
 * Child i's payload is {"index":i,"parent":<the task's payload>}, so with the
 * `echo` agent its result is that payload.
 *
 *   worker [-s SOCKET] [-a AGENT] [-c CHILD_AGENT] [-n N] [-j CONCURRENCY]
 *
 * AGENT (default fanout-c-demo) is declared by the worker unless fanoutd's
 * config has it as a "worker" agent; CHILD_AGENT defaults to echo, N to 3.
 * SIGINT or SIGTERM drains: no new tasks, the ones held are finished, then
 * the worker exits 0 (a second signal exits at once; held tasks go back to
 * pending). It heartbeats its running tasks every lease_ms / 3.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fanout.h"

static volatile sig_atomic_t signals;

static void on_signal(int sig)
{
    (void)sig;
    signals++;
}

static void usage(FILE *to)
{
    fprintf(to, "usage: worker [-s SOCKET] [-a AGENT] [-c CHILD_AGENT] [-n N] [-j CONCURRENCY] [-d MS]\n"
                "  Serves AGENT (default fanout-c-demo): each task spawns N (default 3) children on\n"
                "  CHILD_AGENT (default echo), waits for them, and returns their results combined.\n"
                "  -j CONCURRENCY  tasks run at once (default 4)\n"
                "  -d MS           \"work\" MS milliseconds on the children's results before answering\n"
                "                  (heartbeating meanwhile; default 0)\n"
                "  SIGINT/SIGTERM: drain (finish the tasks held) and exit 0; a second signal exits at once.\n");
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A growing string. */
typedef struct buf {
    char *p;
    size_t len, cap;
    int oom;
} buf;

static void put(buf *b, const void *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(buf *b, const char *s)
{
    put(b, s, strlen(s));
}

static void put_json_string(buf *b, const char *s)
{
    put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(b, esc, 6);
        } else {
            put(b, s, 1);
        }
    }
    put(b, "\"", 1);
}

enum job_state { SPAWNING, WAITING, COLLECTING, READY };

typedef struct job {
    uint64_t task_id;
    enum job_state state;
    char *custom_id;
    buf children;            /* the JSON array being built, without its brackets */
    unsigned n_children, completed, failed;
    buf result;              /* READY: the answer, sent at ready_at */
    int64_t ready_at;
    struct job *next;
} job;

static job *jobs;

static job *find(uint64_t id)
{
    for (job *j = jobs; j != NULL; j = j->next)
        if (j->task_id == id)
            return j;
    return NULL;
}

static job *add(const fanout_task_info *t)
{
    job *j = calloc(1, sizeof *j);
    if (j == NULL || (j->custom_id = strdup(t->custom_id)) == NULL) {
        free(j);
        return NULL;
    }
    j->task_id = t->id;
    j->next = jobs;
    jobs = j;
    return j;
}

static void drop(uint64_t id)
{
    for (job **p = &jobs; *p != NULL; p = &(*p)->next) {
        if ((*p)->task_id == id) {
            job *j = *p;
            *p = j->next;
            free(j->custom_id);
            free(j->children.p);
            free(j->result.p);
            free(j);
            return;
        }
    }
}

static size_t count_jobs(int leased_only)
{
    size_t n = 0;
    for (job *j = jobs; j != NULL; j = j->next)
        n += !leased_only || j->state != WAITING;
    return n;
}

static const char *agent = "fanout-c-demo", *child_agent = "echo";
static unsigned n_children = 3;
static int64_t work_ms; /* -d: time spent "working" on the children's results */

static fanout_status report_failure(fanout_worker *w, uint64_t id, const char *message)
{
    drop(id);
    return fanout_worker_failure(w, id, message, "worker_error", 0, 0);
}

/* A new task: spawn its children. */
static fanout_status start(fanout_worker *w, const fanout_task_info *t)
{
    drop(t->id); /* a new attempt of a task we lost (its lease ran out) */
    job *j = add(t);
    if (j == NULL)
        return fanout_worker_failure(w, t->id, "out of memory", "worker_error", 1, 0);
    if (n_children == 0) {
        static const char empty[] = "{\"children\":[],\"completed\":0,\"failed\":0}";
        drop(t->id);
        return fanout_worker_result(w, t->id, empty, sizeof empty - 1, NULL);
    }
    fanout_task_spec *specs = calloc(n_children, sizeof *specs);
    char(*ids)[32] = calloc(n_children, sizeof *ids);
    buf *payloads = calloc(n_children, sizeof *payloads);
    fanout_status st = FANOUT_OK;
    int oom = specs == NULL || ids == NULL || payloads == NULL;
    for (unsigned i = 0; !oom && i < n_children; i++) {
        char head[48];
        snprintf(ids[i], sizeof ids[i], "child-%u", i);
        snprintf(head, sizeof head, "{\"index\":%u,\"parent\":", i);
        puts_(&payloads[i], head);
        if (t->payload_len > 0)
            put(&payloads[i], t->payload, t->payload_len);
        else
            puts_(&payloads[i], "null");
        puts_(&payloads[i], "}");
        oom = payloads[i].oom;
        specs[i].custom_id = ids[i];
        specs[i].payload = payloads[i].p;
        specs[i].payload_len = payloads[i].len;
    }
    if (oom)
        st = report_failure(w, t->id, "out of memory");
    else
        st = fanout_worker_spawn(w, t->id, child_agent, specs, n_children, NULL);
    for (unsigned i = 0; payloads != NULL && i < n_children; i++)
        free(payloads[i].p);
    free(payloads);
    free(ids);
    free(specs);
    return st;
}

static fanout_status handle(fanout_worker *w, const fanout_worker_message *m)
{
    job *j = find(m->task_id);
    switch (m->kind) {
    case FANOUT_WORKER_ASSIGNMENT:
        if (!m->resumed)
            return start(w, m->task);
        /* Resumed after its children: CHILDREN_DONE pages follow. A task we
         * do not remember (another worker spawned them) is answered the same way. */
        if (j == NULL && (j = add(m->task)) == NULL)
            return fanout_worker_failure(w, m->task_id, "out of memory", "worker_error", 1, 0);
        j->state = COLLECTING;
        j->children.len = 0;
        j->n_children = j->completed = j->failed = 0;
        return FANOUT_OK;
    case FANOUT_WORKER_SPAWNED:
        if (j == NULL)
            return FANOUT_OK;
        if (m->status != FANOUT_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "spawning children on %s: %s: %s", child_agent,
                     fanout_status_string(m->status), m->status_message);
            return report_failure(w, m->task_id, msg);
        }
        j->state = WAITING;
        return fanout_worker_wait_children(w, m->task_id, 0);
    case FANOUT_WORKER_CHILDREN_DONE:
        if (j == NULL || j->state != COLLECTING)
            return FANOUT_OK;
        for (size_t i = 0; i < m->n_results; i++) {
            const fanout_task_result *r = &m->results[i];
            if (j->n_children++ > 0)
                puts_(&j->children, ",");
            if (r->status == FANOUT_TASK_COMPLETED && r->result_len > 0) {
                put(&j->children, r->result, r->result_len);
                j->completed++;
            } else {
                puts_(&j->children, "{\"error\":");
                put_json_string(&j->children, r->error.has_error ? r->error.message : "not completed");
                puts_(&j->children, "}");
                j->failed += r->status != FANOUT_TASK_COMPLETED;
                j->completed += r->status == FANOUT_TASK_COMPLETED;
            }
        }
        if (!m->last)
            return FANOUT_OK;
        {
            buf *out = &j->result;
            char tail[96];
            out->len = 0;
            puts_(out, "{\"custom_id\":");
            put_json_string(out, j->custom_id);
            puts_(out, ",\"children\":[");
            if (j->children.len > 0)
                put(out, j->children.p, j->children.len);
            snprintf(tail, sizeof tail, "],\"completed\":%u,\"failed\":%u}", j->completed, j->failed);
            puts_(out, tail);
            if (out->oom || j->children.oom) {
                drop(m->task_id);
                return fanout_worker_failure(w, m->task_id, "out of memory", "worker_error", 1, 0);
            }
            j->state = READY; /* answered by send_ready(), after work_ms */
            j->ready_at = now_ms() + work_ms;
            return FANOUT_OK;
        }
    case FANOUT_WORKER_CANCEL:
        if (j == NULL)
            return FANOUT_OK;
        if (j->state == WAITING) { /* needs no answer */
            drop(m->task_id);
            return FANOUT_OK;
        }
        return report_failure(w, m->task_id, "cancelled");
    case FANOUT_WORKER_ACK:
        if (m->status != FANOUT_OK)
            fprintf(stderr, "worker: task %llu: report refused: %s: %s\n", (unsigned long long)m->task_id,
                    fanout_status_string(m->status), m->status_message);
        return FANOUT_OK;
    }
    return FANOUT_OK;
}

/* Sends the results whose time has come; *next_at = the earliest still due. */
static fanout_status send_ready(fanout_worker *w, int64_t *next_at)
{
    int64_t now = now_ms();
    for (job *j = jobs, *next; j != NULL; j = next) {
        next = j->next;
        if (j->state != READY)
            continue;
        if (j->ready_at > now) {
            if (j->ready_at < *next_at)
                *next_at = j->ready_at;
            continue;
        }
        uint64_t id = j->task_id;
        fanout_status st = fanout_worker_result(w, id, j->result.p, j->result.len, NULL);
        drop(id);
        if (st != FANOUT_OK)
            return st;
    }
    return FANOUT_OK;
}

static fanout_status heartbeat(fanout_worker *w)
{
    uint64_t ids[256];
    size_t n = 0;
    for (job *j = jobs; j != NULL && n < 256; j = j->next)
        if (j->state != WAITING)
            ids[n++] = j->task_id;
    return n ? fanout_worker_heartbeat(w, ids, n) : FANOUT_OK;
}

int main(int argc, char **argv)
{
    const char *socket_path = NULL;
    unsigned concurrency = 4;
    int opt;
    while ((opt = getopt(argc, argv, "s:a:c:n:j:d:h")) != -1) {
        char *end = NULL;
        switch (opt) {
        case 's': socket_path = optarg; break;
        case 'a': agent = optarg; break;
        case 'c': child_agent = optarg; break;
        case 'n':
        case 'j':
        case 'd': {
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 10);
            if (errno || end == optarg || *end || (opt != 'd' && v > 10000) || v > 86400000 || (opt == 'j' && v == 0)) {
                fprintf(stderr, "worker: bad -%c %s\n", opt, optarg);
                usage(stderr);
                return 2;
            }
            if (opt == 'n')
                n_children = (unsigned)v;
            else if (opt == 'j')
                concurrency = (unsigned)v;
            else
                work_ms = (int64_t)v;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || agent[0] == '\0' || child_agent[0] == '\0') {
        usage(stderr);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: waits return early */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    fanout_client *c = NULL;
    fanout_worker *w = NULL;
    fanout_status st = fanout_client_new(&c);
    if (st == FANOUT_OK)
        st = fanout_client_connect(c, socket_path, "fanout-c-worker");
    fanout_agent_registration reg = { .name = agent, .concurrency = concurrency };
    if (st == FANOUT_OK)
        st = fanout_worker_open(c, "fanout-c-worker", &reg, 1, &w);
    if (st != FANOUT_OK) {
        fprintf(stderr, "worker: %s: %s\n", fanout_status_string(st), c ? fanout_client_last_message(c) : "");
        fanout_client_free(c);
        return 1;
    }
    fprintf(stderr, "worker: serving %s (children on %s, %u per task)\n", agent, child_agent, n_children);

    int draining = 0;
    int64_t lease_ms = 30000, last_beat = now_ms(), drain_at = 0;
    int clean = 0;
    for (;;) {
        if (signals >= 2) {
            clean = 1;
            break; /* a second signal: leave at once */
        }
        if (signals && !draining) {
            draining = 1;
            drain_at = now_ms();
            fprintf(stderr, "worker: draining (%zu tasks held)\n", count_jobs(0));
            if ((st = fanout_worker_drain(w)) != FANOUT_OK)
                break;
        }
        /* Done draining once nothing is held; tasks waiting for children
         * get 5 s to come back, then resume with another worker. */
        if (draining && (count_jobs(0) == 0 || (count_jobs(1) == 0 && now_ms() - drain_at > 5000))) {
            clean = 1;
            break;
        }
        int64_t next_beat = last_beat + lease_ms / 3, now = now_ms();
        if (now >= next_beat) {
            if ((st = heartbeat(w)) != FANOUT_OK)
                break;
            last_beat = now;
            next_beat = now + lease_ms / 3;
        }
        int64_t due = next_beat;
        if ((st = send_ready(w, &due)) != FANOUT_OK)
            break;
        int wait = (int)(due - now);
        if (wait < 0)
            wait = 0;
        if (wait > 500)
            wait = 500; /* also notices signals promptly */
        const fanout_worker_message *m = NULL;
        st = fanout_worker_next(w, wait, &m);
        if (st == FANOUT_TIMEOUT)
            continue;
        if (st != FANOUT_OK)
            break;
        if (m->kind == FANOUT_WORKER_ASSIGNMENT && m->lease_ms > 0 && (int64_t)m->lease_ms < lease_ms)
            lease_ms = (int64_t)m->lease_ms;
        if ((st = handle(w, m)) != FANOUT_OK)
            break;
    }
    if (clean)
        fprintf(stderr, "worker: stopped\n");
    else
        fprintf(stderr, "worker: session ended: %s: %s\n", fanout_status_string(st), fanout_client_last_message(c));
    while (jobs != NULL)
        drop(jobs->task_id);
    fanout_worker_free(w);
    fanout_client_free(c);
    return clean ? 0 : 1;
}
