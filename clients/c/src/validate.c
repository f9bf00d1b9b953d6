/* Checks on strings before they are sent (PROTOCOL.md §4.2: UTF-8, no NUL). */
#include <stddef.h>

#include "internal.h"

int fanout_utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p != 0) {
        unsigned char b = *p;
        if (b < 0x80) {
            p++;
            continue;
        }
        size_t n;
        unsigned cp;
        if (b >= 0xC2 && b <= 0xDF) {
            n = 1;
            cp = b & 0x1Fu;
        } else if (b >= 0xE0 && b <= 0xEF) {
            n = 2;
            cp = b & 0x0Fu;
        } else if (b >= 0xF0 && b <= 0xF4) {
            n = 3;
            cp = b & 0x07u;
        } else {
            return 0;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return 0; /* also stops at the terminating NUL */
            cp = (cp << 6) | (p[i] & 0x3Fu);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        p += n + 1;
    }
    return 1;
}

fanout_status fanout_check_string(fanout_client *c, const char *what, const char *s)
{
    if (s != NULL && !fanout_utf8_valid(s))
        return fanout_fail(c, FANOUT_BAD_ARGUMENT, "%s is not valid UTF-8", what);
    return FANOUT_OK;
}
