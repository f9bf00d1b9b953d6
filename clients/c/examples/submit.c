/* submit: sends a JSONL file to fanoutd as one batch, shows its progress,
 * and writes the results as JSONL.
 *
 *   submit [-s SOCKET] [-o OUT] [-u OWNER] AGENT [FILE]
 *
 * Each input line is {"custom_id": "...", "payload": <any JSON>} or an
 * OpenAI Batch line {"custom_id": "...", "method": "POST", "url": "...",
 * "body": {...}}; the payload (or body) is sent as it is written. FILE "-"
 * or absent: standard input. Progress goes to standard error; results go
 * to OUT (default standard output), one line per task in task order:
 *
 *   {"custom_id":"a","task_id":3,"status":"completed","attempt":1,"result":<JSON>,"error":null}
 *
 * and, for OpenAI Batch input, the OpenAI Batch output format. Exit status:
 * 0 when every task completed, 1 otherwise, 2 on bad arguments.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fanout.h"

static void usage(FILE *to)
{
    fprintf(to,
            "usage: submit [-s SOCKET] [-o OUT] [-u OWNER] AGENT [FILE]\n"
            "  Submits FILE (JSONL; \"-\" or absent: stdin) to AGENT as one batch and writes\n"
            "  the results as JSONL to OUT (default: stdout). Progress goes to stderr.\n"
            "  Input lines: {\"custom_id\": \"...\", \"payload\": <JSON>} or OpenAI Batch lines (\"body\").\n"
            "  -s SOCKET  fanoutd's socket (default: $FANOUT_SOCKET, then the daemon's default)\n"
            "  -o OUT     write results to OUT\n"
            "  -u OWNER   the batch's owner_id (default: $USER, else \"fanout-c\")\n");
}

/* ---- a small JSON scanner: enough to find top-level keys ---------------- */

static const char *ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* Skips a string starting at its '"'; returns past the closing quote, NULL if bad. */
static const char *skip_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\') {
            p++;
        } else if (*p == '"') {
            return p + 1;
        } else if ((unsigned char)*p < 0x20) {
            return NULL;
        }
    }
    return NULL;
}

/* Skips one JSON value; returns past it, NULL if malformed. */
static const char *skip_value(const char *p, const char *end, int depth)
{
    p = ws(p, end);
    if (p >= end || depth > 200)
        return NULL;
    if (*p == '"')
        return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = ws(p + 1, end);
        if (p < end && *p == close)
            return p + 1;
        for (;;) {
            if (close == '}') {
                if (p >= end || *p != '"' || (p = skip_string(p, end)) == NULL)
                    return NULL;
                p = ws(p, end);
                if (p >= end || *p != ':')
                    return NULL;
                p++;
            }
            if ((p = skip_value(p, end, depth + 1)) == NULL)
                return NULL;
            p = ws(p, end);
            if (p < end && *p == ',') {
                p = ws(p + 1, end);
                continue;
            }
            return (p < end && *p == close) ? p + 1 : NULL;
        }
    }
    /* number, true, false, null */
    const char *start = p;
    while (p < end && (strchr("+-.eE", *p) || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z')))
        p++;
    if (p == start)
        return NULL;
    size_t n = (size_t)(p - start);
    if ((*start >= 'a' && *start <= 'z') &&
        !((n == 4 && !memcmp(start, "true", 4)) || (n == 5 && !memcmp(start, "false", 5)) ||
          (n == 4 && !memcmp(start, "null", 4))))
        return NULL;
    return p;
}

static int valid_json(const unsigned char *s, size_t n)
{
    const char *end = (const char *)s + n;
    const char *p = n ? skip_value((const char *)s, end, 0) : NULL;
    return p != NULL && ws(p, end) == end;
}

static void put_utf8(char **o, unsigned long cp)
{
    unsigned char *q = (unsigned char *)*o;
    if (cp < 0x80) {
        *q++ = (unsigned char)cp;
    } else if (cp < 0x800) {
        *q++ = (unsigned char)(0xC0 | (cp >> 6));
        *q++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *q++ = (unsigned char)(0xE0 | (cp >> 12));
        *q++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *q++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else {
        *q++ = (unsigned char)(0xF0 | (cp >> 18));
        *q++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        *q++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *q++ = (unsigned char)(0x80 | (cp & 0x3F));
    }
    *o = (char *)q;
}

static int hex4(const char *p, const char *end, unsigned long *out)
{
    if (end - p < 4)
        return -1;
    unsigned long v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned long)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned long)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned long)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Decodes the JSON string [p, end) (quotes included) into a new C string. */
static char *decode_string(const char *p, const char *end)
{
    char *out = malloc((size_t)(end - p) + 1), *o = out;
    if (out == NULL)
        return NULL;
    for (p++, end--; p < end; p++) {
        if (*p != '\\') {
            *o++ = *p;
            continue;
        }
        if (++p >= end)
            break;
        unsigned long cp;
        switch (*p) {
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u':
            if (hex4(p + 1, end, &cp) != 0)
                goto bad;
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00) { /* a surrogate pair */
                unsigned long lo;
                if (end - p < 7 || p[1] != '\\' || p[2] != 'u' || hex4(p + 3, end, &lo) != 0 || lo < 0xDC00 ||
                    lo > 0xDFFF)
                    goto bad;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                goto bad;
            }
            if (cp == 0)
                goto bad; /* a C string cannot hold it */
            put_utf8(&o, cp);
            break;
        default: *o++ = *p; break; /* \" \\ \/ */
        }
    }
    *o = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

typedef struct task_line {
    char *custom_id;
    char *url;           /* OpenAI Batch "url", or NULL */
    const char *payload; /* into the line buffer */
    size_t payload_len;
} task_line;

/* Finds custom_id, payload/body and url in one line. 0 ok, -1 with *why. */
static int parse_line(const char *line, size_t n, task_line *t, int *openai, const char **why)
{
    const char *p = ws(line, line + n), *end = line + n;
    memset(t, 0, sizeof *t);
    *why = "not one valid JSON object";
    if (p >= end || *p != '{')
        return -1;
    if (skip_value(p, end, 0) == NULL || ws(skip_value(p, end, 0), end) != end)
        return -1; /* malformed, or something after the object */
    p = ws(p + 1, end);
    while (p < end && *p == '"') {
        const char *k = p, *ke = skip_string(p, end);
        p = ws(ke, end) + 1; /* past ':' (checked by skip_value above) */
        const char *v = ws(p, end), *ve = skip_value(v, end, 0);
        size_t kn = (size_t)(ke - k);
        if (kn == 11 && memcmp(k, "\"custom_id\"", 11) == 0) {
            *why = "custom_id is not a valid JSON string (or holds \\u0000)";
            free(t->custom_id);
            if (*v != '"' || (t->custom_id = decode_string(v, ve)) == NULL)
                return -1;
        } else if ((kn == 9 && memcmp(k, "\"payload\"", 9) == 0) || (kn == 6 && memcmp(k, "\"body\"", 6) == 0)) {
            t->payload = v;
            t->payload_len = (size_t)(ve - v);
            if (kn == 6)
                *openai = 1;
        } else if (kn == 5 && memcmp(k, "\"url\"", 5) == 0 && *v == '"') {
            free(t->url);
            t->url = decode_string(v, ve);
        }
        p = ws(ve, end);
        if (p < end && *p == ',')
            p = ws(p + 1, end);
    }
    if (t->custom_id == NULL) {
        *why = "no \"custom_id\"";
        return -1;
    }
    if (t->payload == NULL) {
        *why = "no \"payload\" or \"body\"";
        return -1;
    }
    return 0;
}

/* ---- output -------------------------------------------------------------- */

static void put_json_string(FILE *out, const char *s, size_t n)
{
    fputc('"', out);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", out);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

/* A result is JSON by convention; anything else is written as a string. */
static void put_result(FILE *out, const fanout_task_result *r)
{
    if (r->result_len == 0)
        fputs("null", out);
    else if (valid_json(r->result, r->result_len))
        fwrite(r->result, 1, r->result_len, out);
    else
        put_json_string(out, (const char *)r->result, r->result_len);
}

static const char *task_status_name(fanout_task_status s)
{
    static const char *names[] = { "unspecified", "pending", "running", "waiting_children", "retry_wait",
                                   "completed", "failed", "cancelled", "expired" };
    return (s >= 0 && s <= FANOUT_TASK_EXPIRED) ? names[s] : "unknown";
}

static void put_error(FILE *out, const fanout_task_result *r)
{
    if (r->status == FANOUT_TASK_COMPLETED) {
        fputs("null", out);
        return;
    }
    const char *msg = r->error.has_error ? r->error.message : task_status_name(r->status);
    const char *code = r->error.has_error && r->error.code[0] ? r->error.code : task_status_name(r->status);
    fputs("{\"code\":", out);
    put_json_string(out, code, strlen(code));
    fputs(",\"message\":", out);
    put_json_string(out, msg, strlen(msg));
    fputc('}', out);
}

static void write_result(FILE *out, const fanout_task_result *r, int openai)
{
    if (openai) {
        fprintf(out, "{\"id\":\"fanout-task-%llu\",\"custom_id\":", (unsigned long long)r->task_id);
        put_json_string(out, r->custom_id, strlen(r->custom_id));
        if (r->status == FANOUT_TASK_COMPLETED) {
            fprintf(out, ",\"response\":{\"status_code\":%u,\"request_id\":", r->status_code ? r->status_code : 200);
            put_json_string(out, r->request_id, strlen(r->request_id));
            fputs(",\"body\":", out);
            put_result(out, r);
            fputs("},\"error\":null}\n", out);
        } else {
            fputs(",\"response\":null,\"error\":", out);
            put_error(out, r);
            fputs("}\n", out);
        }
        return;
    }
    fputs("{\"custom_id\":", out);
    put_json_string(out, r->custom_id, strlen(r->custom_id));
    fprintf(out, ",\"task_id\":%llu,\"status\":\"%s\",\"attempt\":%u,\"result\":", (unsigned long long)r->task_id,
            task_status_name(r->status), r->attempt);
    if (r->status == FANOUT_TASK_COMPLETED)
        put_result(out, r);
    else
        fputs("null", out);
    fputs(",\"error\":", out);
    put_error(out, r);
    fputs("}\n", out);
}

/* ---- main ---------------------------------------------------------------- */

static int fail(fanout_client *c, const char *what, fanout_status st)
{
    fprintf(stderr, "submit: %s: %s: %s\n", what, fanout_status_string(st), c ? fanout_client_last_message(c) : "");
    return 1;
}

static void progress(const fanout_event *ev, uint64_t batch)
{
    const fanout_counts *k = &ev->counts;
    unsigned done = k->completed + k->failed + k->cancelled + k->expired;
    fprintf(stderr, "\rbatch %llu: %5.1f%%  %u/%u done (%u failed)", (unsigned long long)batch, ev->progress, done,
            k->total, k->failed);
    if (ev->type != FANOUT_EVENT_BATCH_PROGRESS)
        fputc('\n', stderr);
    fflush(stderr);
}

/* Follows the batch's events until it ends; resumes a dropped subscription. */
static fanout_status wait_batch(fanout_client *c, uint64_t batch)
{
    static const fanout_event_type types[] = { FANOUT_EVENT_BATCH_PROGRESS, FANOUT_EVENT_BATCH_COMPLETED,
                                               FANOUT_EVENT_BATCH_CANCELLED, FANOUT_EVENT_BATCH_FAILED };
    uint64_t since = 0;
    for (int attempt = 0; attempt < 10; attempt++) {
        fanout_subscribe_options so = { .event_types = types, .n_event_types = 4, .batch_id = batch,
                                        .since = since, .follow = 1 };
        fanout_subscription *s = NULL;
        fanout_status st = fanout_subscribe(c, &so, &s);
        const fanout_event *ev = NULL;
        while (st == FANOUT_OK || st == FANOUT_TIMEOUT) {
            st = fanout_subscription_next(s, 1000, &ev);
            if (st == FANOUT_OK) {
                progress(ev, batch);
                if (ev->type != FANOUT_EVENT_BATCH_PROGRESS) {
                    fanout_subscription_free(s);
                    return FANOUT_OK;
                }
            }
        }
        since = fanout_subscription_last_sequence(s);
        int lagged = fanout_subscription_lagged(s);
        fanout_subscription_free(s);
        if (st == FANOUT_IO_ERROR || st == FANOUT_UNAVAILABLE || st == FANOUT_NOT_FOUND ||
            st == FANOUT_PERMISSION_DENIED)
            return st;
        if (!lagged)
            break; /* e.g. OUT_OF_RANGE: the events are gone; poll instead */
        /* Too slow (lagged): resume from where it stopped. */
    }
    for (;;) {
        fanout_batch_info *b = NULL;
        fanout_status st = fanout_get_batch(c, batch, &b);
        if (st != FANOUT_OK)
            return st;
        fanout_event ev = { .type = FANOUT_EVENT_BATCH_PROGRESS, .progress = b->progress, .counts = b->counts };
        int ended = b->status == FANOUT_BATCH_COMPLETED || b->status == FANOUT_BATCH_CANCELLED ||
                    b->status == FANOUT_BATCH_FAILED;
        if (ended)
            ev.type = FANOUT_EVENT_BATCH_COMPLETED;
        progress(&ev, batch);
        fanout_batch_info_free(b);
        if (ended)
            return FANOUT_OK;
        struct timespec ts = { 0, 500 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char **argv)
{
    const char *socket_path = NULL, *out_path = NULL, *owner = getenv("USER");
    int opt;
    while ((opt = getopt(argc, argv, "s:o:u:h")) != -1) {
        switch (opt) {
        case 's': socket_path = optarg; break;
        case 'o': out_path = optarg; break;
        case 'u': owner = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind >= argc || argc - optind > 2 || argv[optind][0] == '\0') {
        usage(stderr);
        return 2;
    }
    const char *agent = argv[optind];
    const char *in_path = optind + 1 < argc ? argv[optind + 1] : "-";
    if (owner == NULL || owner[0] == '\0')
        owner = "fanout-c";

    FILE *in = strcmp(in_path, "-") == 0 ? stdin : fopen(in_path, "r");
    if (in == NULL) {
        fprintf(stderr, "submit: %s: %s\n", in_path, strerror(errno));
        return 2;
    }
    /* Read every line: the batch is sent at once. Lines stay in `lines`. */
    char **lines = NULL;
    task_line *tl = NULL;
    size_t n = 0, cap = 0, lineno = 0;
    int openai = 0, rc = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, in)) >= 0) {
        lineno++;
        if (ws(line, line + len) == line + len)
            continue; /* blank */
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nl = realloc(lines, cap * sizeof *nl);
            task_line *nt = nl ? realloc(tl, cap * sizeof *nt) : NULL;
            if (nl)
                lines = nl;
            if (nt)
                tl = nt;
            if (!nl || !nt) {
                fprintf(stderr, "submit: out of memory\n");
                rc = 1;
                break;
            }
        }
        const char *why = NULL;
        if (parse_line(line, (size_t)len, &tl[n], &openai, &why) != 0) {
            fprintf(stderr, "submit: %s:%zu: %s\n", in_path, lineno, why);
            free(tl[n].custom_id);
            free(tl[n].url);
            rc = 2;
            break;
        }
        lines[n++] = line; /* tl[n] points into it */
        line = NULL;
        lcap = 0;
    }
    free(line);
    if (in != stdin)
        fclose(in);
    if (rc == 0 && n == 0) {
        fprintf(stderr, "submit: %s: no tasks\n", in_path);
        rc = 2;
    }

    fanout_client *c = NULL;
    fanout_batch_info *b = NULL;
    fanout_task_spec *specs = rc == 0 ? calloc(n, sizeof *specs) : NULL;
    FILE *out = NULL;
    fanout_status st = FANOUT_OK;
    if (rc == 0 && specs == NULL) {
        fprintf(stderr, "submit: out of memory\n");
        rc = 1;
    }
    if (rc == 0 && (st = fanout_client_new(&c)) != FANOUT_OK)
        rc = fail(NULL, "client", st);
    if (rc == 0 && (st = fanout_client_connect(c, socket_path, "fanout-c-submit")) != FANOUT_OK)
        rc = fail(c, "connect", st);
    if (rc == 0) {
        for (size_t i = 0; i < n; i++) {
            specs[i].custom_id = tl[i].custom_id;
            specs[i].payload = tl[i].payload;
            specs[i].payload_len = tl[i].payload_len;
            specs[i].url = tl[i].url;
        }
        if ((st = fanout_enqueue_batch(c, owner, agent, specs, n, NULL, &b)) != FANOUT_OK)
            rc = fail(c, "enqueue", st);
        else
            fprintf(stderr, "batch %llu: %zu tasks for agent %s\n", (unsigned long long)b->id, n, agent);
    }
    if (rc == 0 && (st = wait_batch(c, b->id)) != FANOUT_OK)
        rc = fail(c, "waiting for the batch", st);
    if (rc == 0) {
        out = out_path ? fopen(out_path, "w") : stdout;
        if (out == NULL) {
            fprintf(stderr, "submit: %s: %s\n", out_path, strerror(errno));
            rc = 1;
        }
    }
    if (rc == 0) {
        fanout_results *r = NULL;
        const fanout_task_result *res;
        size_t completed = 0, total = 0;
        st = fanout_results_open(c, b->id, 0, 0, &r);
        while (st == FANOUT_OK && (st = fanout_results_next(r, &res)) == FANOUT_OK) {
            write_result(out, res, openai);
            total++;
            completed += res->status == FANOUT_TASK_COMPLETED;
        }
        fanout_results_free(r);
        if (st != FANOUT_DONE)
            rc = fail(c, "results", st);
        else if (completed != total || total != n)
            rc = 1;
        fprintf(stderr, "%zu of %zu tasks completed\n", completed, n);
        if ((out != stdout ? fclose(out) : fflush(out)) != 0) {
            fprintf(stderr, "submit: writing results: %s\n", strerror(errno));
            rc = 1;
        }
    }
    fanout_batch_info_free(b);
    fanout_client_free(c);
    free(specs);
    for (size_t i = 0; i < n; i++) {
        free(tl[i].custom_id);
        free(tl[i].url);
        free(lines[i]);
    }
    free(tl);
    free(lines);
    return rc;
}
