/* libFuzzer target: the bytes fanoutd could send, read by the library.
 *
 * Input: one selector byte, then a byte stream as it would come from the
 * socket (4-byte big-endian length + Frame, repeated). The stream is handed
 * to a client through fanout_adopt_fd() (src/internal.h) on one end of a
 * socketpair whose other end is shut for writing: the client reads the
 * stream, then sees the daemon close the connection; what it writes goes
 * nowhere. Everything runs through the library's real paths: frame
 * reading, stream routing and queueing, and the conversion of Welcome,
 * Responses, ResultsPage, Event, EndOfStream and ServerToWorker messages.
 *
 * Selector: bit 3 = handshake first (the stream must start with a Welcome);
 * bits 0-2 = what the client does with the stream:
 *   0 results iterator (stream 1)      1 subscription (stream 1)
 *   2 worker session (stream 1)        3 unary calls (streams 1, 3, 5, ...)
 *   4+ results (1), subscription (3), worker (5), then unary calls (7, ...),
 *      then the three iterators drained: frames for streams not being read
 *      are queued.
 */
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

static void drain_results(fanout_results *r)
{
    const fanout_task_result *res;
    for (int i = 0; r != NULL && i < 100000 && fanout_results_next(r, &res) == FANOUT_OK; i++)
        (void)res->custom_id[0];
}

static void drain_subscription(fanout_subscription *s)
{
    const fanout_event *ev;
    for (int i = 0; s != NULL && i < 100000 && fanout_subscription_next(s, 0, &ev) == FANOUT_OK; i++)
        (void)ev->custom_id[0];
    (void)fanout_subscription_lagged(s);
    (void)fanout_subscription_last_sequence(s);
}

static void drain_worker(fanout_worker *w)
{
    const fanout_worker_message *m;
    for (int i = 0; w != NULL && i < 100000 && fanout_worker_next(w, 0, &m) == FANOUT_OK; i++) {
        (void)m->status_message[0];
        for (size_t k = 0; k < m->n_results; k++)
            (void)m->results[k].custom_id[0];
        if (m->task != NULL)
            (void)m->task->custom_id[0];
    }
}

static void unary_calls(fanout_client *c)
{
    fanout_server_info *info = NULL;
    fanout_get_server_info(c, &info);
    fanout_server_info_free(info);
    fanout_task_info *t = NULL;
    fanout_get_task(c, 1, 1, &t);
    fanout_task_info_free(t);
    t = NULL;
    fanout_cancel_task(c, 1, &t);
    fanout_task_info_free(t);
    fanout_batch_info *b = NULL;
    fanout_get_batch(c, 1, &b);
    fanout_batch_info_free(b);
    b = NULL;
    fanout_cancel_batch(c, 1, &b);
    fanout_batch_info_free(b);
    b = NULL;
    uint32_t retried = 0;
    fanout_retry_failed(c, 1, 1, 1, &retried, &b);
    fanout_batch_info_free(b);
    fanout_batch_list *list = NULL;
    fanout_list_batches(c, NULL, &list);
    fanout_batch_list_free(list);
    fanout_task_spec spec = { .custom_id = "a", .agent = "echo", .payload = "{}", .payload_len = 2 };
    b = NULL;
    fanout_enqueue_batch(c, "o", "echo", &spec, 1, NULL, &b);
    fanout_batch_info_free(b);
    t = NULL;
    fanout_enqueue_task(c, "o", &spec, &t);
    fanout_task_info_free(t);
    (void)fanout_client_last_message(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned sel = data[0];
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return 0;
    shutdown(sv[1], SHUT_WR);
    fanout_client *c = NULL;
    if (fanout_client_new(&c) != FANOUT_OK) {
        close(sv[0]);
        close(sv[1]);
        return 0;
    }
    fanout_client_set_timeout(c, 0);
    if (fanout_adopt_fd(c, sv[0], data + 1, size - 1, (sel & 8) != 0) == FANOUT_OK) {
        fanout_limits lim;
        fanout_client_limits(c, &lim);
        (void)fanout_client_server_version(c)[0];
        fanout_results *r = NULL;
        fanout_subscription *s = NULL;
        fanout_worker *w = NULL;
        fanout_subscribe_options so = { .follow = 1 };
        fanout_agent_registration reg = { .name = "fuzz", .concurrency = 2 };
        switch (sel & 7) {
        case 0:
            fanout_results_open(c, 1, 0, 0, &r);
            drain_results(r);
            break;
        case 1:
            fanout_subscribe(c, &so, &s);
            drain_subscription(s);
            break;
        case 2:
            fanout_worker_open(c, "fuzz", &reg, 1, &w);
            drain_worker(w);
            break;
        case 3:
            unary_calls(c);
            break;
        default:
            fanout_results_open(c, 1, 0, 0, &r);
            fanout_subscribe(c, &so, &s);
            fanout_worker_open(c, "fuzz", &reg, 1, &w);
            unary_calls(c);
            drain_worker(w);
            drain_subscription(s);
            drain_results(r);
            break;
        }
        fanout_worker_free(w);
        fanout_subscription_free(s);
        fanout_results_free(r);
    }
    fanout_client_free(c);
    close(sv[1]);
    return 0;
}
