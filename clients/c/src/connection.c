/* The client handle: socket path, connect and handshake, and the routing of
 * frames to the streams that iterators keep open. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"

static char *dup_string(const char *s)
{
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p != NULL)
        memcpy(p, s, n + 1);
    return p;
}

static char *join(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *p = malloc(na + nb + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, a, na);
    memcpy(p + na, b, nb + 1);
    return p;
}

fanout_status fanout_default_socket_path(char **out)
{
    if (out == NULL)
        return FANOUT_BAD_ARGUMENT;
    *out = NULL;
    const char *env = getenv("FANOUT_SOCKET");
    char *path = NULL;
    if (env != NULL && env[0] != '\0') {
        path = dup_string(env);
    } else if ((env = getenv("XDG_RUNTIME_DIR")) != NULL && env[0] != '\0') {
        path = join(env, "/fanout/fanoutd.sock");
    } else {
        const char *tmp = getenv("TMPDIR");
        if (tmp == NULL || tmp[0] == '\0')
            tmp = "/tmp";
        size_t n = strlen(tmp);
        if (n > 0 && tmp[n - 1] == '/')
            n--; /* one trailing slash, as the daemon drops it */
        char tail[64];
        int t = snprintf(tail, sizeof tail, "/fanout-%lu/fanoutd.sock", (unsigned long)getuid());
        if (t < 0 || (size_t)t >= sizeof tail)
            return FANOUT_INTERNAL;
        path = malloc(n + (size_t)t + 1);
        if (path != NULL) {
            memcpy(path, tmp, n);
            memcpy(path + n, tail, (size_t)t + 1);
        }
    }
    if (path == NULL)
        return FANOUT_NO_MEMORY;
    *out = path;
    return FANOUT_OK;
}

void fanout_string_free(char *string)
{
    free(string);
}

fanout_status fanout_client_new(fanout_client **out)
{
    if (out == NULL)
        return FANOUT_BAD_ARGUMENT;
    fanout_client *c = calloc(1, sizeof *c);
    *out = c;
    if (c == NULL)
        return FANOUT_NO_MEMORY;
    c->fd = -1;
    c->timeout_ms = FANOUT_DEFAULT_TIMEOUT_MS;
    c->frame_limit = FANOUT_DEFAULT_FRAME_LIMIT;
    c->next_stream_id = 1;
    return FANOUT_OK;
}

void fanout_client_free(fanout_client *client)
{
    if (client == NULL)
        return;
    while (client->streams != NULL)
        fanout_stream_detach(client->streams);
    fanout_disconnect(client);
    free(client->last_message);
    free(client->server_version);
    free(client);
}

fanout_status fanout_client_set_timeout(fanout_client *client, int timeout_ms)
{
    if (client == NULL)
        return FANOUT_BAD_ARGUMENT;
    client->timeout_ms = timeout_ms < 0 ? -1 : timeout_ms;
    return FANOUT_OK;
}

int fanout_client_timeout(const fanout_client *client)
{
    return client ? client->timeout_ms : 0;
}

int fanout_client_fd(const fanout_client *client)
{
    return client ? client->fd : -1;
}

const char *fanout_client_server_version(const fanout_client *client)
{
    return (client && client->server_version) ? client->server_version : "";
}

fanout_status fanout_client_limits(const fanout_client *client, fanout_limits *out)
{
    if (client == NULL || out == NULL)
        return FANOUT_BAD_ARGUMENT;
    *out = client->limits;
    return FANOUT_OK;
}

fanout_status fanout_check_client(fanout_client *c)
{
    if (c == NULL)
        return FANOUT_BAD_ARGUMENT;
    if (c->fd < 0)
        return fanout_fail(c, FANOUT_IO_ERROR, "not connected to fanoutd");
    fanout_succeed(c);
    return FANOUT_OK;
}

/* PROTOCOL.md §1: talk only to a socket owned by us, root, or a uid the user
 * trusts in $FANOUT_SOCKET_OWNERS. */
static fanout_status check_owner(fanout_client *c, const char *path)
{
    const char *owners = getenv("FANOUT_SOCKET_OWNERS");
    while (owners != NULL && (*owners == ' ' || *owners == '\t'))
        owners++;
    if (owners != NULL && strncmp(owners, "any", 3) == 0 && strspn(owners + 3, " \t") == strlen(owners + 3))
        return FANOUT_OK;
    struct stat st;
    if (stat(path, &st) != 0)
        return FANOUT_OK; /* the connect that follows reports it */
    uid_t me = getuid();
    if (st.st_uid == me || st.st_uid == 0)
        return FANOUT_OK;
    for (const char *p = owners; p != NULL && *p != '\0';) {
        char *end = NULL;
        errno = 0;
        unsigned long v = strtoul(p, &end, 10);
        if (end != p && errno == 0 && v == (unsigned long)st.st_uid)
            return FANOUT_OK;
        p = strchr(p, ',');
        if (p != NULL)
            p++;
    }
    return fanout_fail(c, FANOUT_PERMISSION_DENIED,
                       "the socket %s belongs to uid %lu, not to you (uid %lu) or root; refusing to send it anything. "
                       "If that user's daemon is the one you mean, set FANOUT_SOCKET_OWNERS=%lu",
                       path, (unsigned long)st.st_uid, (unsigned long)me, (unsigned long)st.st_uid);
}

static fanout_status open_socket(fanout_client *c, const char *path)
{
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof addr.sun_path)
        return fanout_fail(c, FANOUT_CONNECT_FAILED, "socket path of %zu bytes does not fit sun_path (%zu)", n,
                           sizeof addr.sun_path - 1);
    memcpy(addr.sun_path, path, n + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fanout_fail(c, FANOUT_CONNECT_FAILED, "socket: %s", strerror(errno));
    int r = connect(fd, (const struct sockaddr *)&addr, sizeof addr);
    if (r != 0 && errno == EINTR) {
        /* The connect goes on in the background: wait for it, then ask how it ended. */
        struct pollfd p = { .fd = fd, .events = POLLOUT, .revents = 0 };
        int w;
        do {
            w = poll(&p, 1, c->timeout_ms < 0 ? -1 : c->timeout_ms);
        } while (w < 0 && errno == EINTR);
        int err = 0;
        socklen_t len = sizeof err;
        if (w == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
            r = 0;
        else
            errno = w == 0 ? ETIMEDOUT : (err != 0 ? err : errno);
    }
    if (r != 0) {
        int e = errno;
        close(fd);
        return fanout_fail(c, FANOUT_CONNECT_FAILED, "cannot connect to fanoutd at %s: %s; is the daemon running?",
                           path, strerror(e));
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        return fanout_fail(c, FANOUT_CONNECT_FAILED, "fcntl: %s", strerror(e));
    }
    c->fd = fd;
    return FANOUT_OK;
}

static fanout_status handshake(fanout_client *c, const char *name, int64_t deadline)
{
    Fanout__V1__Hello hello = FANOUT__V1__HELLO__INIT;
    hello.protocol_version = FANOUT_PROTOCOL_VERSION;
    hello.client_name = (char *)name;
    Fanout__V1__Request req = FANOUT__V1__REQUEST__INIT;
    req.call_case = FANOUT__V1__REQUEST__CALL_HELLO;
    req.hello = &hello;
    pb_frame frame = FANOUT__V1__FRAME__INIT;
    frame.stream_id = 0;
    frame.kind_case = FANOUT__V1__FRAME__KIND_REQUEST;
    frame.request = &req;
    fanout_status st = fanout_write_frame(c, &frame, deadline);
    if (st != FANOUT_OK)
        return st;
    for (;;) {
        pb_frame *f = NULL;
        st = fanout_read_frame(c, deadline, &f);
        if (st != FANOUT_OK)
            return st;
        if (f->stream_id != 0) {
            fanout_frame_free(f);
            continue;
        }
        if (f->kind_case == FANOUT__V1__FRAME__KIND_END) {
            st = fanout_fail_server(c, fanout_end_status(f));
            fanout_frame_free(f);
            if (st == FANOUT_OK)
                st = fanout_fail(c, FANOUT_PROTOCOL_ERROR, "fanoutd ended the handshake without a Welcome");
            return st;
        }
        if (f->kind_case == FANOUT__V1__FRAME__KIND_RESPONSE &&
            f->response->result_case == FANOUT__V1__RESPONSE__RESULT_WELCOME) {
            const Fanout__V1__Welcome *w = f->response->welcome;
            if (w->protocol_version != 0 && w->protocol_version != FANOUT_PROTOCOL_VERSION) {
                unsigned v = w->protocol_version;
                fanout_frame_free(f);
                return fanout_fail(c, FANOUT_PROTOCOL_ERROR, "fanoutd speaks protocol version %u, this library 1", v);
            }
            free(c->server_version);
            c->server_version = dup_string(w->server_version ? w->server_version : "");
            fanout_convert_limits(w->limits, &c->limits);
            if (w->max_frame_bytes > 0)
                c->frame_limit = w->max_frame_bytes;
            if (c->limits.max_frame_bytes == 0)
                c->limits.max_frame_bytes = c->frame_limit;
            fanout_frame_free(f);
            if (c->server_version == NULL)
                return fanout_fail(c, FANOUT_NO_MEMORY, "out of memory");
            return FANOUT_OK;
        }
        fanout_frame_free(f); /* anything else on stream 0 is ignored */
    }
}

fanout_status fanout_client_connect(fanout_client *client, const char *socket_path, const char *client_name)
{
    if (client == NULL)
        return FANOUT_BAD_ARGUMENT;
    if (client->fd >= 0)
        return fanout_fail(client, FANOUT_BAD_ARGUMENT, "the client is already connected");
    const char *name = client_name ? client_name : "fanout-c";
    fanout_status st = fanout_check_string(client, "client_name", name);
    if (st != FANOUT_OK)
        return st;
    char *owned = NULL;
    if (socket_path == NULL) {
        st = fanout_default_socket_path(&owned);
        if (st != FANOUT_OK)
            return fanout_fail(client, st, "cannot resolve the default socket path");
        socket_path = owned;
    }
    /* Iterators of an earlier connection cannot continue on this one. */
    while (client->streams != NULL)
        fanout_stream_detach(client->streams);
    client->frame_limit = FANOUT_DEFAULT_FRAME_LIMIT;
    client->next_stream_id = 1;
    memset(&client->limits, 0, sizeof client->limits);
    free(client->server_version);
    client->server_version = NULL;
    st = check_owner(client, socket_path);
    if (st == FANOUT_OK)
        st = open_socket(client, socket_path);
    free(owned);
    if (st != FANOUT_OK)
        return st;
    st = handshake(client, name, fanout_deadline(client->timeout_ms));
    if (st != FANOUT_OK) {
        fanout_disconnect(client);
        return st;
    }
    fanout_succeed(client);
    return FANOUT_OK;
}

fanout_status fanout_adopt_fd(fanout_client *c, int fd, const void *prefill, size_t len, int do_handshake)
{
    if (c == NULL || fd < 0 || c->fd >= 0 || (prefill == NULL && len > 0)) {
        if (fd >= 0)
            close(fd);
        return c ? fanout_fail(c, FANOUT_BAD_ARGUMENT, "bad arguments to fanout_adopt_fd") : FANOUT_BAD_ARGUMENT;
    }
    while (c->streams != NULL)
        fanout_stream_detach(c->streams);
    c->frame_limit = FANOUT_DEFAULT_FRAME_LIMIT;
    c->next_stream_id = 1;
    memset(&c->limits, 0, sizeof c->limits);
    free(c->server_version);
    c->server_version = NULL;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        return fanout_fail(c, FANOUT_CONNECT_FAILED, "fcntl: %s", strerror(e));
    }
    c->fd = fd;
    if (len > 0) {
        c->rbuf = malloc(len);
        if (c->rbuf == NULL) {
            fanout_disconnect(c);
            return fanout_fail(c, FANOUT_NO_MEMORY, "out of memory");
        }
        memcpy(c->rbuf, prefill, len);
        c->rpos = 0;
        c->rlen = c->rcap = len;
    }
    if (do_handshake) {
        fanout_status st = handshake(c, "fanout-c", fanout_deadline(c->timeout_ms));
        if (st != FANOUT_OK) {
            fanout_disconnect(c);
            return st;
        }
    }
    fanout_succeed(c);
    return FANOUT_OK;
}

/* ---- streams ---------------------------------------------------------- */

uint32_t fanout_next_stream(fanout_client *c)
{
    uint32_t id = c->next_stream_id;
    if (id == 0)
        return 0;
    c->next_stream_id = id >= UINT32_MAX - 1 ? 0 : id + 2;
    return id;
}

void fanout_stream_attach(fanout_client *c, fanout_stream *s)
{
    s->client = c;
    s->next = c->streams;
    c->streams = s;
}

void fanout_stream_clear(fanout_stream *s)
{
    for (size_t i = 0; i < s->q_len; i++)
        fanout_frame_free(s->queue[(s->q_head + i) % s->q_cap]);
    free(s->queue);
    s->queue = NULL;
    s->q_head = s->q_len = s->q_cap = 0;
}

void fanout_stream_detach(fanout_stream *s)
{
    fanout_client *c = s->client;
    if (c == NULL)
        return;
    for (fanout_stream **p = &c->streams; *p != NULL; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            break;
        }
    }
    s->next = NULL;
    s->client = NULL;
}

static int enqueue(fanout_stream *s, pb_frame *f)
{
    if (s->q_len == s->q_cap) {
        size_t cap = s->q_cap ? s->q_cap * 2 : 16;
        pb_frame **q = malloc(cap * sizeof *q);
        if (q == NULL)
            return -1;
        for (size_t i = 0; i < s->q_len; i++)
            q[i] = s->queue[(s->q_head + i) % s->q_cap];
        free(s->queue);
        s->queue = q;
        s->q_cap = cap;
        s->q_head = 0;
    }
    s->queue[(s->q_head + s->q_len) % s->q_cap] = f;
    s->q_len++;
    return 0;
}

const Fanout__V1__Status *fanout_end_status(const pb_frame *f)
{
    if (f->kind_case != FANOUT__V1__FRAME__KIND_END || f->end == NULL)
        return NULL;
    return f->end->status;
}

static int is_final(const pb_frame *f)
{
    return f->kind_case == FANOUT__V1__FRAME__KIND_END || f->kind_case == FANOUT__V1__FRAME__KIND_RESPONSE;
}

fanout_status fanout_wait_frame(fanout_client *c, fanout_stream *s, uint32_t id, int64_t deadline, pb_frame **out)
{
    *out = NULL;
    if (s != NULL && s->q_len > 0) {
        *out = s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % s->q_cap;
        s->q_len--;
        return FANOUT_OK;
    }
    for (;;) {
        pb_frame *f = NULL;
        fanout_status st = fanout_read_frame(c, deadline, &f);
        if (st != FANOUT_OK)
            return st;
        if (f->stream_id == id) {
            *out = f;
            return FANOUT_OK;
        }
        if (f->stream_id == 0) {
            if (f->kind_case == FANOUT__V1__FRAME__KIND_END) {
                /* A connection-level problem: the daemon closes the connection. */
                st = fanout_fail_server(c, fanout_end_status(f));
                fanout_frame_free(f);
                fanout_disconnect(c);
                if (st == FANOUT_OK)
                    st = fanout_fail(c, FANOUT_IO_ERROR, "fanoutd ended the connection");
                return st;
            }
            fanout_frame_free(f);
            continue;
        }
        fanout_stream *other = c->streams;
        while (other != NULL && other->id != f->stream_id)
            other = other->next;
        if (other == NULL || other->finished) {
            fanout_frame_free(f); /* unknown or forgotten stream: ignored (§4.1) */
            continue;
        }
        if (other->q_limit > 0 && other->q_len >= other->q_limit && !is_final(f)) {
            /* Its reader fell behind: cut it off (it learns when it drains
             * its queue) rather than let memory grow without bound. */
            fanout_frame_free(f);
            other->overflowed = 1;
            other->finished = 1;
            fanout_send_cancel(c, other->id);
            if (c->fd < 0)
                return fanout_fail(c, FANOUT_IO_ERROR, "writing to fanoutd failed; connection closed");
            continue;
        }
        if (is_final(f))
            other->finished = 1;
        if (enqueue(other, f) != 0) {
            fanout_frame_free(f);
            fanout_disconnect(c);
            return fanout_fail(c, FANOUT_NO_MEMORY, "out of memory queueing a frame; connection closed");
        }
    }
}

fanout_status fanout_send_cancel(fanout_client *c, uint32_t id)
{
    if (c->fd < 0)
        return FANOUT_OK;
    Fanout__V1__Cancel cancel = FANOUT__V1__CANCEL__INIT;
    pb_frame frame = FANOUT__V1__FRAME__INIT;
    frame.stream_id = id;
    frame.kind_case = FANOUT__V1__FRAME__KIND_CANCEL;
    frame.cancel = &cancel;
    /* Best effort: keep the status and message the caller reports. */
    char *saved = c->last_message;
    fanout_status saved_status = c->last_status;
    c->last_message = NULL;
    fanout_status st = fanout_write_frame(c, &frame, fanout_deadline(c->timeout_ms));
    free(c->last_message);
    c->last_message = saved;
    c->last_status = saved_status;
    return st;
}
