/* JSON: writing escaped strings into libevent buffers. */
#ifndef BEARERD_JSON_WRITE_H
#define BEARERD_JSON_WRITE_H

#include <stddef.h>

struct evbuffer;

/* Appends s[0..len) to out as a quoted, escaped JSON string. */
int json_append_string(struct evbuffer *out, const char *s, size_t len);

/* Appends the OAuth2-style error object {"error":...,"error_description":...}. */
int json_append_error(struct evbuffer *out, const char *error, const char *description);

#endif
