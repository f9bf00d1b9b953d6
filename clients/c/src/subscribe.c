/* Subscribe: events, replayed then live, one at a time (PROTOCOL.md §5.10). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct fanout_subscription {
    fanout_stream stream;
    fanout_event current;   /* what next() lent out */
    uint64_t last_sequence;
    int lagged;
    int done;
    fanout_status end;      /* FANOUT_DONE or the status that ended it */
};

fanout_status fanout_subscribe(fanout_client *client, const fanout_subscribe_options *options,
                               fanout_subscription **out)
{
    if (out != NULL)
        *out = NULL;
    fanout_status st = fanout_check_client(client);
    if (st != FANOUT_OK)
        return st;
    if (out == NULL)
        return fanout_fail(client, FANOUT_BAD_ARGUMENT, "out is NULL");
    Fanout__V1__SubscribeRequest req = FANOUT__V1__SUBSCRIBE_REQUEST__INIT;
    Fanout__V1__EventType *types = NULL;
    if (options != NULL) {
        if (options->event_types == NULL && options->n_event_types > 0)
            return fanout_fail(client, FANOUT_BAD_ARGUMENT, "options->event_types is NULL");
        if ((st = fanout_check_string(client, "owner_id", options->owner_id)) != FANOUT_OK)
            return st;
        req.owner_id = (char *)(options->owner_id ? options->owner_id : "");
        req.batch_id = options->batch_id;
        req.since = options->since;
        req.follow = options->follow != 0;
        if (options->n_event_types > 0) {
            types = calloc(options->n_event_types, sizeof *types);
            if (types == NULL)
                return fanout_fail(client, FANOUT_NO_MEMORY, "out of memory");
            for (size_t i = 0; i < options->n_event_types; i++)
                types[i] = (Fanout__V1__EventType)options->event_types[i];
            req.event_types = types;
            req.n_event_types = options->n_event_types;
        }
    }
    fanout_subscription *s = calloc(1, sizeof *s);
    uint32_t id = s ? fanout_next_stream(client) : 0;
    if (s == NULL || id == 0) {
        free(types);
        free(s);
        return s ? fanout_fail(client, FANOUT_UNAVAILABLE, "this connection used up its stream ids; connect again")
                 : fanout_fail(client, FANOUT_NO_MEMORY, "out of memory");
    }
    Fanout__V1__Request request = FANOUT__V1__REQUEST__INIT;
    request.call_case = FANOUT__V1__REQUEST__CALL_SUBSCRIBE;
    request.subscribe = &req;
    st = fanout_write_request(client, id, &request);
    free(types);
    if (st != FANOUT_OK) {
        free(s);
        return st;
    }
    s->stream.id = id;
    s->stream.q_limit = client->limits.subscriber_buffer ? client->limits.subscriber_buffer : 10000;
    s->last_sequence = req.since;
    fanout_stream_attach(client, &s->stream);
    *out = s;
    return FANOUT_OK;
}

static fanout_status finish(fanout_subscription *s, fanout_status st)
{
    s->done = 1;
    s->end = st;
    fanout_stream_detach(&s->stream);
    return st;
}

fanout_status fanout_subscription_next(fanout_subscription *subscription, int timeout_ms, const fanout_event **out)
{
    if (out != NULL)
        *out = NULL;
    if (subscription == NULL || out == NULL)
        return FANOUT_BAD_ARGUMENT;
    fanout_subscription *s = subscription;
    fanout_event_clear(&s->current);
    if (s->done)
        return s->end;
    fanout_client *c = s->stream.client;
    if (c == NULL)
        return FANOUT_BAD_ARGUMENT; /* the client was freed */
    int64_t deadline = fanout_deadline(timeout_ms);
    for (;;) {
        if (s->stream.overflowed && s->stream.q_len == 0) {
            s->lagged = 1;
            return finish(s, fanout_fail(c, FANOUT_RESOURCE_EXHAUSTED,
                                         "subscriber fell behind: more than %zu events waited in this client; "
                                         "resume with since=%llu", s->stream.q_limit,
                                         (unsigned long long)s->last_sequence));
        }
        pb_frame *f = NULL;
        fanout_status st = fanout_wait_frame(c, &s->stream, s->stream.id, deadline, &f);
        if (st == FANOUT_TIMEOUT)
            return st; /* nothing yet; the subscription goes on */
        if (st != FANOUT_OK)
            return finish(s, st);
        if (f->kind_case == FANOUT__V1__FRAME__KIND_MESSAGE && f->message != NULL &&
            f->message->body_case == FANOUT__V1__STREAM_MESSAGE__BODY_EVENT && f->message->event != NULL) {
            st = fanout_convert_event(f->message->event, &s->current);
            fanout_frame_free(f);
            if (st != FANOUT_OK)
                return fanout_fail(c, st, "cannot convert an event");
            if (s->current.sequence > s->last_sequence)
                s->last_sequence = s->current.sequence;
            fanout_succeed(c);
            *out = &s->current;
            return FANOUT_OK;
        }
        if (f->kind_case == FANOUT__V1__FRAME__KIND_END) {
            const Fanout__V1__Status *status = fanout_end_status(f);
            if (status != NULL) {
                s->lagged = status->lagged != 0;
                if (status->lagged || status->last_sequence != 0)
                    s->last_sequence = status->last_sequence;
            }
            st = fanout_fail_server(c, status);
            fanout_frame_free(f);
            if (st == FANOUT_OK) {
                fanout_succeed(c);
                st = FANOUT_DONE;
            }
            return finish(s, st);
        }
        if (f->kind_case == FANOUT__V1__FRAME__KIND_RESPONSE) {
            fanout_frame_free(f);
            return finish(s, fanout_fail(c, FANOUT_PROTOCOL_ERROR, "fanoutd answered Subscribe with a Response"));
        }
        fanout_frame_free(f);
    }
}

int fanout_subscription_lagged(const fanout_subscription *subscription)
{
    return subscription ? subscription->lagged : 0;
}

uint64_t fanout_subscription_last_sequence(const fanout_subscription *subscription)
{
    return subscription ? subscription->last_sequence : 0;
}

void fanout_subscription_free(fanout_subscription *subscription)
{
    if (subscription == NULL)
        return;
    fanout_client *c = subscription->stream.client;
    if (c != NULL && !subscription->done && !subscription->stream.finished)
        fanout_send_cancel(c, subscription->stream.id);
    fanout_stream_detach(&subscription->stream);
    fanout_stream_clear(&subscription->stream);
    fanout_event_clear(&subscription->current);
    free(subscription);
}
