/* Helpers libbearer and bearerctl share; both compile util.c, libbearer keeps it private. */
#ifndef BEARER_UTIL_H
#define BEARER_UTIL_H

#include <stddef.h>

/*
 * Percent-encodes s for one path segment into out[size] (RFC 3986 unreserved characters
 * stay), NUL-terminated.  -ENAMETOOLONG when out may be too small: 3 * strlen(s) + 1 bytes
 * always do.
 */
int util_encode_segment(const char *s, char *out, size_t size);

#endif
