/* Status names and the client's last status/message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

const char *fanout_status_string(fanout_status status)
{
    switch (status) {
    case FANOUT_OK: return "OK";
    case FANOUT_CANCELLED: return "CANCELLED";
    case FANOUT_UNKNOWN: return "UNKNOWN";
    case FANOUT_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case FANOUT_DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case FANOUT_NOT_FOUND: return "NOT_FOUND";
    case FANOUT_ALREADY_EXISTS: return "ALREADY_EXISTS";
    case FANOUT_PERMISSION_DENIED: return "PERMISSION_DENIED";
    case FANOUT_RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case FANOUT_FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case FANOUT_ABORTED: return "ABORTED";
    case FANOUT_OUT_OF_RANGE: return "OUT_OF_RANGE";
    case FANOUT_UNIMPLEMENTED: return "UNIMPLEMENTED";
    case FANOUT_INTERNAL: return "INTERNAL";
    case FANOUT_UNAVAILABLE: return "UNAVAILABLE";
    case FANOUT_DATA_LOSS: return "DATA_LOSS";
    case FANOUT_UNAUTHENTICATED: return "UNAUTHENTICATED";
    case FANOUT_CONNECT_FAILED: return "CONNECT_FAILED";
    case FANOUT_IO_ERROR: return "IO_ERROR";
    case FANOUT_TIMEOUT: return "TIMEOUT";
    case FANOUT_BAD_ARGUMENT: return "BAD_ARGUMENT";
    case FANOUT_PROTOCOL_ERROR: return "PROTOCOL_ERROR";
    case FANOUT_NO_MEMORY: return "NO_MEMORY";
    case FANOUT_DONE: return "DONE";
    }
    return "UNKNOWN_STATUS";
}

static void set_message(fanout_client *c, char *message)
{
    free(c->last_message);
    c->last_message = message;
}

fanout_status fanout_fail(fanout_client *c, fanout_status status, const char *fmt, ...)
{
    if (c == NULL)
        return status;
    c->last_status = status;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *text = NULL;
    if (n >= 0) {
        text = malloc((size_t)n + 1);
        if (text != NULL) {
            va_start(ap, fmt);
            if (vsnprintf(text, (size_t)n + 1, fmt, ap) < 0)
                text[0] = '\0';
            va_end(ap);
        }
    }
    set_message(c, text); /* NULL (no memory) reads as "" */
    return status;
}

/* Maps a daemon status code; an unknown one becomes UNKNOWN (PROTOCOL.md §9). */
static fanout_status map_code(int code)
{
    if (code >= 0 && code <= 16)
        return (fanout_status)code;
    return FANOUT_UNKNOWN;
}

fanout_status fanout_fail_server(fanout_client *c, const Fanout__V1__Status *status)
{
    fanout_status code = status ? map_code((int)status->code) : FANOUT_OK;
    const char *msg = (status && status->message) ? status->message : "";
    if (c == NULL)
        return code;
    c->last_status = code;
    size_t len = strlen(msg);
    char *copy = malloc(len + 1);
    if (copy != NULL)
        memcpy(copy, msg, len + 1);
    set_message(c, copy);
    return code;
}

void fanout_succeed(fanout_client *c)
{
    if (c == NULL)
        return;
    c->last_status = FANOUT_OK;
    set_message(c, NULL);
}

const char *fanout_client_last_message(const fanout_client *client)
{
    if (client == NULL || client->last_message == NULL)
        return "";
    return client->last_message;
}

fanout_status fanout_client_last_status(const fanout_client *client)
{
    return client ? client->last_status : FANOUT_BAD_ARGUMENT;
}
