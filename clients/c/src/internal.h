/* Internal declarations shared by the library's source files. */
#ifndef FANOUT_INTERNAL_H
#define FANOUT_INTERNAL_H

#include <stdarg.h>
#include <stdint.h>
#include <stddef.h>

#include "fanout.h"
#include "fanout/v1/fanout.pb-c.h"

typedef Fanout__V1__Frame pb_frame;

#define FANOUT_DEFAULT_FRAME_LIMIT (4u * 1024u * 1024u)
#define FANOUT_DEFAULT_TIMEOUT_MS 60000

/* A stream an iterator keeps open: frames for it that arrive while the
 * client waits for another stream are queued here. */
typedef struct fanout_stream {
    fanout_client *client;       /* NULL once the client was freed */
    uint32_t id;
    int finished;                /* its final frame was received (or it overflowed) */
    size_t q_limit;              /* most frames queued; 0: no limit */
    int overflowed;              /* the queue hit q_limit: the stream was cancelled */
    pb_frame **queue;            /* FIFO of frames not yet consumed */
    size_t q_head, q_len, q_cap;
    struct fanout_stream *next;  /* in client->streams */
} fanout_stream;

struct fanout_client {
    int fd;
    int timeout_ms;
    uint32_t frame_limit;        /* max frame bytes, both directions */
    uint32_t next_stream_id;     /* odd, increasing; 0 when used up */
    fanout_status last_status;
    char *last_message;          /* NULL means "" */
    char *server_version;
    fanout_limits limits;
    unsigned char *rbuf;         /* rbuf[rpos..rlen) read but not yet consumed */
    size_t rpos, rlen, rcap;
    fanout_stream *streams;
};

/* status.c: sets last status and message; returns status. */
fanout_status fanout_fail(fanout_client *c, fanout_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
fanout_status fanout_fail_server(fanout_client *c, const Fanout__V1__Status *status);
void fanout_succeed(fanout_client *c);

/* frame.c */
int64_t fanout_now_ms(void);
int64_t fanout_deadline(int timeout_ms);   /* -1: none */
fanout_status fanout_write_frame(fanout_client *c, const pb_frame *frame, int64_t deadline);
/* Opens stream `stream_id` with `request`, within the client's timeout. */
fanout_status fanout_write_request(fanout_client *c, uint32_t stream_id, Fanout__V1__Request *request);
/* Reads one frame (any stream); FANOUT_TIMEOUT leaves buffered bytes intact. */
fanout_status fanout_read_frame(fanout_client *c, int64_t deadline, pb_frame **out);
void fanout_frame_free(pb_frame *frame);
void fanout_disconnect(fanout_client *c);

/* connection.c: for the fuzzer (and tests). Adopts the connected socket fd
 * (the client owns it from now on, even on failure) and makes the client read
 * `prefill` first, as if those bytes had come from the socket; with
 * do_handshake, sends Hello and reads the Welcome as fanout_client_connect. */
fanout_status fanout_adopt_fd(fanout_client *c, int fd, const void *prefill, size_t len, int do_handshake);

/* connection.c: streams */
uint32_t fanout_next_stream(fanout_client *c);   /* 0 when exhausted */
void fanout_stream_attach(fanout_client *c, fanout_stream *s);
void fanout_stream_detach(fanout_stream *s);
void fanout_stream_clear(fanout_stream *s);
/* Next frame for stream `id` (from `s`'s queue if s != NULL); frames for
 * other attached streams are queued, unknown ones dropped. EndOfStream on
 * stream 0 ends the connection and returns its status. */
fanout_status fanout_wait_frame(fanout_client *c, fanout_stream *s, uint32_t id, int64_t deadline,
                                pb_frame **out);
fanout_status fanout_send_cancel(fanout_client *c, uint32_t id);
fanout_status fanout_check_client(fanout_client *c);
/* Status of an EndOfStream frame (absent status = OK). */
const Fanout__V1__Status *fanout_end_status(const pb_frame *f);

/* validate.c */
int fanout_utf8_valid(const char *s);
fanout_status fanout_check_string(fanout_client *c, const char *what, const char *s);

/* calls.c: task specs, shared with worker.c */
fanout_status fanout_check_spec(fanout_client *c, const fanout_task_spec *t, size_t index);
void fanout_fill_spec(Fanout__V1__TaskSpec *pb, const fanout_task_spec *t);

/* convert.c: protobuf -> public structs */
fanout_status fanout_convert_batch(const Fanout__V1__Batch *in, fanout_batch_info **out);
fanout_status fanout_convert_task(const Fanout__V1__Task *in, fanout_task_info **out);
fanout_status fanout_convert_result(const Fanout__V1__TaskResult *in, fanout_task_result *out);
void fanout_result_clear(fanout_task_result *r);
fanout_status fanout_convert_event(const Fanout__V1__Event *in, fanout_event *out);
void fanout_event_clear(fanout_event *e);
fanout_status fanout_convert_server_info(const Fanout__V1__ServerInfoResponse *in, fanout_server_info **out);
void fanout_convert_limits(const Fanout__V1__Limits *in, fanout_limits *out);

#endif
