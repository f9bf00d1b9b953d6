/* Frames on the socket: a 4-byte big-endian length, then one encoded Frame
 * (PROTOCOL.md §2). Reads and writes wait with poll() up to a deadline. */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define READ_CHUNK 65536u

int64_t fanout_now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t fanout_deadline(int timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    return fanout_now_ms() + timeout_ms;
}

/* Milliseconds left for poll(): -1 forever, 0 when passed. */
static int remaining(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - fanout_now_ms();
    if (left <= 0)
        return 0;
    return left > INT_MAX ? INT_MAX : (int)left;
}

/* Waits for `events`; 1 ready, 0 timed out, -1 error (errno set). */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd p = { .fd = fd, .events = events, .revents = 0 };
        int r = poll(&p, 1, remaining(deadline));
        if (r > 0)
            return 1;
        if (r == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

void fanout_disconnect(fanout_client *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    free(c->rbuf);
    c->rbuf = NULL;
    c->rpos = c->rlen = c->rcap = 0;
}

fanout_status fanout_write_frame(fanout_client *c, const pb_frame *frame, int64_t deadline)
{
    if (c->fd < 0)
        return fanout_fail(c, FANOUT_IO_ERROR, "not connected to fanoutd");
    size_t size = fanout__v1__frame__get_packed_size(frame);
    if (size > c->frame_limit)
        return fanout_fail(c, FANOUT_BAD_ARGUMENT,
                           "the request encodes to a frame of %zu bytes, above the daemon's max_frame_bytes (%u)",
                           size, (unsigned)c->frame_limit);
    unsigned char *buf = malloc(size + 4);
    if (buf == NULL)
        return fanout_fail(c, FANOUT_NO_MEMORY, "out of memory encoding a frame of %zu bytes", size);
    buf[0] = (unsigned char)(size >> 24);
    buf[1] = (unsigned char)(size >> 16);
    buf[2] = (unsigned char)(size >> 8);
    buf[3] = (unsigned char)size;
    size_t packed = fanout__v1__frame__pack(frame, buf + 4);
    if (packed != size) {
        free(buf);
        return fanout_fail(c, FANOUT_PROTOCOL_ERROR, "encoding a frame gave %zu bytes, expected %zu", packed, size);
    }
    size_t total = size + 4, done = 0;
    fanout_status st = FANOUT_OK;
    while (done < total) {
        ssize_t n = send(c->fd, buf + done, total - done, MSG_NOSIGNAL);
        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int w = wait_fd(c->fd, POLLOUT, deadline);
            if (w > 0)
                continue;
            if (w == 0) {
                st = fanout_fail(c, FANOUT_TIMEOUT, "timed out writing to fanoutd%s",
                                 done ? " (connection closed: a frame was half written)" : "");
            } else {
                st = fanout_fail(c, FANOUT_IO_ERROR, "poll: %s", strerror(errno));
            }
            break;
        }
        st = fanout_fail(c, FANOUT_IO_ERROR, "writing to fanoutd: %s", n < 0 ? strerror(errno) : "wrote nothing");
        done = 1; /* the connection is unusable */
        break;
    }
    free(buf);
    if (st != FANOUT_OK && done > 0)
        fanout_disconnect(c);
    return st;
}

void fanout_frame_free(pb_frame *frame)
{
    if (frame != NULL)
        fanout__v1__frame__free_unpacked(frame, NULL);
}

static int reserve(fanout_client *c, size_t need)
{
    if (c->rpos > 0) { /* compact */
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    size_t room = c->rcap - c->rlen;
    if (room >= 1 && (c->rcap >= need || room >= READ_CHUNK))
        return 0;
    /* Grow toward `need` as its bytes arrive, at most doubling: a header
     * announcing a large frame costs memory only once the frame comes. */
    size_t cap = c->rlen + READ_CHUNK;
    if (need > cap) {
        size_t doubled = c->rcap > SIZE_MAX / 2 ? SIZE_MAX : c->rcap * 2;
        if (doubled > cap)
            cap = doubled;
        if (cap > need)
            cap = need;
    }
    unsigned char *p = realloc(c->rbuf, cap);
    if (p == NULL)
        return -1;
    c->rbuf = p;
    c->rcap = cap;
    return 0;
}

fanout_status fanout_read_frame(fanout_client *c, int64_t deadline, pb_frame **out)
{
    *out = NULL;
    for (;;) {
        if (c->fd < 0)
            return fanout_fail(c, FANOUT_IO_ERROR, "not connected to fanoutd");
        size_t avail = c->rlen - c->rpos;
        size_t need = 4;
        if (avail >= 4) {
            const unsigned char *h = c->rbuf + c->rpos;
            uint32_t n = ((uint32_t)h[0] << 24) | ((uint32_t)h[1] << 16) | ((uint32_t)h[2] << 8) | h[3];
            if (n > c->frame_limit) {
                fanout_disconnect(c);
                return fanout_fail(c, FANOUT_PROTOCOL_ERROR,
                                   "fanoutd announced a frame of %u bytes, above the limit of %u; connection closed",
                                   (unsigned)n, (unsigned)c->frame_limit);
            }
            if (avail - 4 >= n) {
                pb_frame *f = fanout__v1__frame__unpack(NULL, n, c->rbuf + c->rpos + 4);
                c->rpos += 4 + (size_t)n;
                if (c->rpos == c->rlen)
                    c->rpos = c->rlen = 0;
                if (f == NULL) {
                    fanout_disconnect(c);
                    return fanout_fail(c, FANOUT_PROTOCOL_ERROR,
                                       "fanoutd sent an undecodable frame of %u bytes; connection closed", (unsigned)n);
                }
                *out = f;
                return FANOUT_OK;
            }
            need = 4 + (size_t)n;
        }
        if (reserve(c, need) != 0)
            return fanout_fail(c, FANOUT_NO_MEMORY, "out of memory reading a frame of %zu bytes", need);
        ssize_t r = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
        if (r > 0) {
            c->rlen += (size_t)r;
            continue;
        }
        if (r == 0) {
            fanout_disconnect(c);
            return fanout_fail(c, FANOUT_IO_ERROR, "fanoutd closed the connection");
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            int e = errno;
            fanout_disconnect(c);
            return fanout_fail(c, FANOUT_IO_ERROR, "reading from fanoutd: %s", strerror(e));
        }
        int w = wait_fd(c->fd, POLLIN, deadline);
        if (w == 0)
            return fanout_fail(c, FANOUT_TIMEOUT, "timed out waiting for fanoutd");
        if (w < 0) {
            int e = errno;
            return fanout_fail(c, FANOUT_IO_ERROR, "poll: %s", strerror(e));
        }
    }
}

fanout_status fanout_write_request(fanout_client *c, uint32_t stream_id, Fanout__V1__Request *request)
{
    pb_frame frame = FANOUT__V1__FRAME__INIT;
    frame.stream_id = stream_id;
    frame.kind_case = FANOUT__V1__FRAME__KIND_REQUEST;
    frame.request = request;
    return fanout_write_frame(c, &frame, fanout_deadline(c->timeout_ms));
}
