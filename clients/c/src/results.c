/* GetResults: an iterator over ResultsPage messages, one result at a time. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct fanout_results {
    fanout_stream stream;
    pb_frame *page;              /* the current ResultsPage frame */
    size_t index;                /* next result in page */
    fanout_task_result current;  /* what next() lent out */
    int done;
    fanout_status end;           /* FANOUT_DONE or the error that ended it */
};

fanout_status fanout_results_open(fanout_client *client, uint64_t batch_id, uint32_t page_size,
                                  uint64_t after_task_id, fanout_results **out)
{
    return fanout_results_open_paged(client, batch_id, page_size, 0, after_task_id, out);
}

fanout_status fanout_results_open_paged(fanout_client *client, uint64_t batch_id, uint32_t page_size,
                                        uint32_t page_bytes, uint64_t after_task_id, fanout_results **out)
{
    if (out != NULL)
        *out = NULL;
    fanout_status st = fanout_check_client(client);
    if (st != FANOUT_OK)
        return st;
    if (out == NULL)
        return fanout_fail(client, FANOUT_BAD_ARGUMENT, "out is NULL");
    fanout_results *r = calloc(1, sizeof *r);
    if (r == NULL)
        return fanout_fail(client, FANOUT_NO_MEMORY, "out of memory");
    uint32_t id = fanout_next_stream(client);
    if (id == 0) {
        free(r);
        return fanout_fail(client, FANOUT_UNAVAILABLE, "this connection used up its stream ids; connect again");
    }
    Fanout__V1__GetResultsRequest req = FANOUT__V1__GET_RESULTS_REQUEST__INIT;
    req.batch_id = batch_id;
    req.page_size = page_size;
    req.page_bytes = page_bytes;
    req.after_task_id = after_task_id;
    Fanout__V1__Request request = FANOUT__V1__REQUEST__INIT;
    request.call_case = FANOUT__V1__REQUEST__CALL_GET_RESULTS;
    request.get_results = &req;
    st = fanout_write_request(client, id, &request);
    if (st != FANOUT_OK) {
        free(r);
        return st;
    }
    r->stream.id = id;
    fanout_stream_attach(client, &r->stream);
    *out = r;
    return FANOUT_OK;
}

static fanout_status finish(fanout_results *r, fanout_status st)
{
    r->done = 1;
    r->end = st;
    fanout_stream_detach(&r->stream);
    return st;
}

fanout_status fanout_results_next(fanout_results *results, const fanout_task_result **out)
{
    if (out != NULL)
        *out = NULL;
    if (results == NULL || out == NULL)
        return FANOUT_BAD_ARGUMENT;
    fanout_result_clear(&results->current);
    if (results->done)
        return results->end;
    fanout_client *c = results->stream.client;
    if (c == NULL)
        return FANOUT_BAD_ARGUMENT; /* the client was freed */
    int64_t deadline = fanout_deadline(c->timeout_ms);
    for (;;) {
        if (results->page != NULL) {
            const Fanout__V1__ResultsPage *page = results->page->message->results_page;
            if (results->index < page->n_results) {
                fanout_status st = fanout_convert_result(page->results[results->index++], &results->current);
                if (st != FANOUT_OK)
                    return fanout_fail(c, st, "cannot convert a result");
                fanout_succeed(c);
                *out = &results->current;
                return FANOUT_OK;
            }
            fanout_frame_free(results->page);
            results->page = NULL;
        }
        pb_frame *f = NULL;
        fanout_status st = fanout_wait_frame(c, &results->stream, results->stream.id, deadline, &f);
        if (st == FANOUT_TIMEOUT)
            return st; /* the stream stays open: call again */
        if (st != FANOUT_OK)
            return finish(results, st);
        if (f->kind_case == FANOUT__V1__FRAME__KIND_MESSAGE && f->message != NULL &&
            f->message->body_case == FANOUT__V1__STREAM_MESSAGE__BODY_RESULTS_PAGE &&
            f->message->results_page != NULL) {
            results->page = f;
            results->index = 0;
            continue;
        }
        if (f->kind_case == FANOUT__V1__FRAME__KIND_END) {
            st = fanout_fail_server(c, fanout_end_status(f));
            fanout_frame_free(f);
            if (st == FANOUT_OK) {
                fanout_succeed(c);
                st = FANOUT_DONE;
            }
            return finish(results, st);
        }
        if (f->kind_case == FANOUT__V1__FRAME__KIND_RESPONSE) {
            fanout_frame_free(f);
            return finish(results, fanout_fail(c, FANOUT_PROTOCOL_ERROR, "fanoutd answered GetResults with a Response"));
        }
        fanout_frame_free(f); /* another StreamMessage body: ignored */
    }
}

void fanout_results_free(fanout_results *results)
{
    if (results == NULL)
        return;
    fanout_client *c = results->stream.client;
    if (c != NULL && !results->done && !results->stream.finished)
        fanout_send_cancel(c, results->stream.id);
    fanout_stream_detach(&results->stream);
    fanout_stream_clear(&results->stream);
    fanout_frame_free(results->page);
    fanout_result_clear(&results->current);
    free(results);
}
