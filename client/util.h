/* Helpers libbearer and bearerctl share; both compile util.c, libbearer keeps it private. */
#ifndef BEARER_UTIL_H
#define BEARER_UTIL_H

#include <stddef.h>

/* Wipes p[0..len) and frees it: for buffers that held a token or a secret.  NULL is fine. */
void util_wipe_free(void *p, size_t len);

/*
 * Percent-encodes s for one path segment into out[size] (RFC 3986 unreserved characters
 * stay), NUL-terminated.  -ENAMETOOLONG when out may be too small: 3 * strlen(s) + 1 bytes
 * always do.
 */
int util_encode_segment(const char *s, char *out, size_t size);

#endif
