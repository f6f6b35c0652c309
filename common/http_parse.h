/*
 * HTTP/1.1 head parsing (RFC 9112), strict and bounded.  Debian packages no
 * maintained HTTP/1.1 parser library (llhttp is not packaged, http-parser is
 * abandoned upstream), so this is the one parser we write ourselves; it is
 * fuzzed (tests/fuzz) and every rejection has a unit test.  libc only: the
 * daemon reads requests (and the proxy upstream answers) with it, libbearer
 * reads bearerd's answers.
 */
#ifndef BEARERD_HTTP_PARSE_H
#define BEARERD_HTTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEADERS 64

struct http_header {
	const char *name; /* points into the parsed buffer; not NUL-terminated */
	size_t name_len;
	const char *value; /* leading/trailing whitespace trimmed */
	size_t value_len;
};

struct http_head {
	const char *method;
	size_t method_len;
	const char *target; /* request-target as sent (origin-, absolute- or authority-form) */
	size_t target_len;
	int minor;  /* HTTP/1.<minor>: 0 or 1 */
	int status; /* responses only: 100..999 (method is NULL, target the reason phrase) */
	struct http_header headers[HTTP_MAX_HEADERS];
	int nheaders;
	/* framing, derived from the headers */
	int64_t content_length; /* -1 when absent */
	int chunked;		/* Transfer-Encoding: chunked (the final coding) */
	int keep_alive;		/* per version and Connection */
};

/*
 * Parses one request head from buf[0..len).  Returns the number of bytes the
 * head occupies including the blank line (> 0), 0 when more input is needed,
 * or a negative errno: -EINVAL malformed (bad token, bare CR or LF, obs-fold,
 * control characters, bad version, conflicting Content-Length /
 * Transfer-Encoding, unknown transfer coding, Transfer-Encoding on HTTP/1.0,
 * a second Host), -E2BIG more than HTTP_MAX_HEADERS headers, -ENOTSUP a
 * well-formed HTTP version other than 1.0/1.1.  An invalid prefix fails at
 * once, before the blank line arrives.  The caller bounds len (the head size
 * limit) and treats 0 at the limit as 431.  *out is scratch space: its
 * contents are meaningful only when the return is > 0.
 */
int http_parse_request_head(const char *buf, size_t len, struct http_head *out);

/*
 * Parses one response head (an upstream's, for the proxy) the same strict
 * way: "HTTP/1.0" or "HTTP/1.1", a three-digit status, then the fields.  The
 * return values are those of http_parse_request_head; Host is not special.
 */
int http_parse_response_head(const char *buf, size_t len, struct http_head *out);

/* Case-insensitive lookup of the first header called name; NULL if absent. */
const struct http_header *http_head_find(const struct http_head *h, const char *name);

/*
 * Finds the parameter called name in an application/x-www-form-urlencoded
 * query (without the '?'; split it off with http_request_path) and decodes the
 * value of its first occurrence into out, NUL-terminated (%XX, '+' is a space;
 * names are decoded the same way before comparing).  *count, when count is not
 * NULL, gets the number of occurrences on 0 and -ENOENT, so that callers can
 * reject duplicates; out may be NULL to only count.  Used by the API and compat
 * layers.  Returns 0 found, -ENOENT absent, -EINVAL a bad escape or NUL in any
 * key or in any value of name, -ENOSPC the value does not fit out_size.
 */
int http_query_get(const char *query, size_t query_len, const char *name, char *out,
		   size_t out_size, int *count);
/*
 * http_query_get for a query whose values follow RFC 3986 rather than HTML
 * forms: '+' in a value stays '+' (only %XX is decoded; names are compared as
 * http_query_get compares them).  The compat listeners use it because
 * MSAL.NET puts managed-identity query values on the wire unencoded, so a '+'
 * in a resource or an ARM id is a plus there, not a space.
 */
int http_query_get_rfc3986(const char *query, size_t query_len, const char *name, char *out,
			   size_t out_size, int *count);
/*
 * Decodes %XX escapes of one path segment into out, NUL-terminated ('+' stays
 * '+'); *out_len (may be NULL) gets the decoded length.  -EINVAL on a bad escape
 * or %00, -ENOSPC when it does not fit out_size.
 */
int http_percent_decode(const char *in, size_t len, char *out, size_t out_size, size_t *out_len);

#endif
