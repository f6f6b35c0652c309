/* Percent-encoding (RFC 3986) for query strings, form bodies and path segments; libc only. */
#ifndef BEARERD_URLENCODE_H
#define BEARERD_URLENCODE_H

#include <stddef.h>

#define URLENC_LOWER 0x1u /* lower-case hex digits (how some peers echo what they got) */
#define URLENC_PLUS  0x2u /* ' ' as '+', as HTML forms do */

/*
 * s[0..len) with every byte but the unreserved ones (A-Z a-z 0-9 - . _ ~)
 * percent-encoded, as a new NUL-terminated string; NULL when out of memory.
 * The caller wipes it if s was a secret.
 */
char *url_encode(const char *s, size_t len, unsigned flags);

/*
 * The same into out, which has room for 3 * len + 1 bytes (as for one path
 * segment: libbearer encodes an audience on its stack).  Returns the length
 * written before the NUL.
 */
size_t url_encode_into(char *out, const char *s, size_t len, unsigned flags);

#endif
