/* Unit tests for http_parse.c: accepted heads, every rejection, and query decoding. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http_parse.h"

static int
parse(const char *s, struct http_head *h)
{
	return http_parse_request_head(s, strlen(s), h);
}

static void
assert_span(const char *p, size_t len, const char *expect)
{
	assert_int_equal(len, strlen(expect));
	assert_memory_equal(p, expect, len);
}

static void
test_get_11(void **state)
{
	const char *req = "GET /v1/token/apim?min_validity=600 HTTP/1.1\r\n"
			  "Host: localhost\r\n"
			  "Accept:text/plain  \r\n"
			  "X-Empty:\r\n"
			  "X-Spaces: \t a  b \t\r\n"
			  "\r\n";
	struct http_head h;

	assert_int_equal(parse(req, &h), (int)strlen(req));
	assert_span(h.method, h.method_len, "GET");
	assert_span(h.target, h.target_len, "/v1/token/apim?min_validity=600");
	assert_int_equal(h.minor, 1);
	assert_int_equal(h.nheaders, 4);
	assert_span(h.headers[0].name, h.headers[0].name_len, "Host");
	assert_span(h.headers[0].value, h.headers[0].value_len, "localhost");
	assert_span(h.headers[1].value, h.headers[1].value_len, "text/plain");
	assert_int_equal(h.headers[2].value_len, 0);
	assert_span(h.headers[3].value, h.headers[3].value_len, "a  b");
	assert_int_equal(h.content_length, -1);
	assert_int_equal(h.chunked, 0);
	assert_int_equal(h.keep_alive, 1);
}

static void
test_get_10(void **state)
{
	struct http_head h;

	assert_int_equal(parse("GET / HTTP/1.0\r\n\r\n", &h), 18);
	assert_int_equal(h.minor, 0);
	assert_int_equal(h.nheaders, 0);
	assert_int_equal(h.keep_alive, 0);
}

static void
test_head_length_excludes_body(void **state)
{
	const char *head = "POST /v1/refresh/apim HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
	char buf[256];
	struct http_head h;

	snprintf(buf, sizeof(buf), "%shello%s", head, head);
	assert_int_equal(parse(buf, &h), (int)strlen(head));
	assert_int_equal(h.content_length, 5);
	assert_int_equal(h.chunked, 0);
}

static void
test_obs_text_and_tchars(void **state)
{
	struct http_head h;

	assert_true(parse("M-SEARCH! * HTTP/1.1\r\nX_odd~name: caf\xc3\xa9\r\n\r\n", &h) > 0);
	assert_span(h.method, h.method_len, "M-SEARCH!");
	assert_span(h.target, h.target_len, "*");
	assert_span(h.headers[0].value, h.headers[0].value_len, "caf\xc3\xa9");
	assert_true(parse("CONNECT example.com:443 HTTP/1.1\r\n\r\n", &h) > 0);
	assert_true(parse("GET http://a.example/x?y=%20 HTTP/1.1\r\n\r\n", &h) > 0);
}

static void
test_framing(void **state)
{
	struct http_head h;

	assert_true(parse("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n", &h) > 0);
	assert_int_equal(h.chunked, 1);
	assert_int_equal(h.content_length, -1);
	assert_true(parse("POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n", &h) > 0);
	assert_int_equal(h.content_length, 0);
	assert_true(parse("POST / HTTP/1.1\r\nContent-Length: 007\r\n\r\n", &h) > 0);
	assert_int_equal(h.content_length, 7);
	/* identical duplicates are one value */
	assert_true(parse("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", &h) >
		    0);
	assert_int_equal(h.content_length, 3);
	assert_true(parse("POST / HTTP/1.1\r\nContent-Length: 9223372036854775807\r\n\r\n", &h) >
		    0);
	assert_int_equal(h.content_length, INT64_MAX);
}

static void
test_keep_alive(void **state)
{
	struct http_head h;

	assert_true(parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", &h) > 0);
	assert_int_equal(h.keep_alive, 0);
	assert_true(parse("GET / HTTP/1.1\r\nConnection: Upgrade , CLOSE\r\n\r\n", &h) > 0);
	assert_int_equal(h.keep_alive, 0);
	assert_true(parse("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", &h) > 0);
	assert_int_equal(h.keep_alive, 1);
	assert_true(parse("GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", &h) > 0);
	assert_int_equal(h.keep_alive, 1);
	assert_true(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &h) > 0);
	assert_int_equal(h.keep_alive, 1);
	assert_true(parse("GET / HTTP/1.0\r\nconnection: te,,keep-alive\r\n\r\n", &h) > 0);
	assert_int_equal(h.keep_alive, 1);
	assert_true(
	    parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", &h) > 0);
	assert_int_equal(h.keep_alive, 0);
	assert_true(parse("GET / HTTP/1.0\r\nX-Connection: keep-alive\r\n\r\n", &h) > 0);
	assert_int_equal(h.keep_alive, 0);
}

/* Every strict prefix of a valid head means "need more", never an error. */
static void
test_every_prefix_incomplete(void **state)
{
	static const char *const reqs[] = {
	    "GET /v1/token/apim HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nX-E:\r\n\r\n",
	    "POST /x?a=b HTTP/1.0\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n",
	    "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
	};
	struct http_head h;
	size_t i, n;

	for (i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
		size_t len = strlen(reqs[i]);
		char *copy = malloc(len);

		assert_non_null(copy);
		memcpy(copy, reqs[i], len);
		for (n = 0; n < len; n++) {
			/* a separate allocation per length so ASan catches reads past n */
			char *p = malloc(n + 1);

			assert_non_null(p);
			memcpy(p, copy, n);
			assert_int_equal(http_parse_request_head(p, n, &h), 0);
			free(p);
		}
		free(copy);
	}
}

static void
test_reject_line_endings(void **state)
{
	struct http_head h;

	assert_int_equal(parse("GET / HTTP/1.1\n\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.1\r\nHost: x\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.1\r\nHost: x\r\n\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.1\rX", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.1\r\nHost: x\r\n\rX", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.1\r\nHost: x\r\n\r\r", &h), -EINVAL);
	/* leading empty line before the request-line */
	assert_int_equal(parse("\r\nGET / HTTP/1.1\r\n\r\n", &h), -EINVAL);
}

static void
test_reject_headers(void **state)
{
	struct http_head h;

	/* obs-fold */
	assert_int_equal(parse("GET / HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.1\r\nX-A: 1\r\n\t2\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.1\r\n Host: x\r\n\r\n", &h), -EINVAL);
	/* whitespace before ':' */
	assert_int_equal(parse("GET / HTTP/1.1\r\nHost : x\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.1\r\nHost\t: x\r\n\r\n", &h), -EINVAL);
	/* bad name */
	assert_int_equal(parse("GET / HTTP/1.1\r\n: x\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.1\r\nX(y): x\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.1\r\nNoColon\r\n\r\n", &h), -EINVAL);
	/* control characters in the value */
	assert_int_equal(parse("GET / HTTP/1.1\r\nX-A: a\x01\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.1\r\nX-A: a\x7f\r\n\r\n", &h), -EINVAL);
	assert_int_equal(http_parse_request_head("GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n", 28, &h),
			 -EINVAL);
	/* a second Host */
	assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", &h), -EINVAL);
}

static void
test_reject_request_line(void **state)
{
	struct http_head h;

	/* bad method characters fail before the rest has arrived */
	assert_int_equal(parse("G@T", &h), -EINVAL);
	assert_int_equal(parse("\x16\x03\x01", &h), -EINVAL);
	assert_int_equal(parse(" GET / HTTP/1.1\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET  / HTTP/1.1\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET\t/ HTTP/1.1\r\n\r\n", &h), -EINVAL);
	/* target */
	assert_int_equal(parse("GET /a\x80 HTTP/1.1\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET /a\tb HTTP/1.1\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET / x HTTP/1.1\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET /\r\n\r\n", &h), -EINVAL);
	/* version */
	assert_int_equal(parse("GET / http/1.1\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.10\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/1.1 \r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTX", &h), -EINVAL);
	assert_int_equal(parse("GET / HTTP/2.0\r\n\r\n", &h), -ENOTSUP);
	assert_int_equal(parse("GET / HTTP/1.2\r\n\r\n", &h), -ENOTSUP);
	assert_int_equal(parse("GET / HTTP/0.9\r\n\r\n", &h), -ENOTSUP);
	assert_int_equal(parse("GET / HTTP/2.0\r\n", &h), -ENOTSUP);
}

static void
test_reject_framing(void **state)
{
	struct http_head h;

	assert_int_equal(
	    parse("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", &h),
	    -EINVAL);
	assert_int_equal(
	    parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", &h),
	    -EINVAL);
	assert_int_equal(
	    parse("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", &h),
	    -EINVAL);
	assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: 5a\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", &h), -EINVAL);
	assert_int_equal(
	    parse("POST / HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n", &h), -EINVAL);
	assert_int_equal(
	    parse("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", &h),
	    -EINVAL);
	assert_int_equal(parse("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", &h),
			 -EINVAL);
	assert_int_equal(
	    parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
			       "Transfer-Encoding: chunked\r\n\r\n",
			       &h),
			 -EINVAL);
	assert_int_equal(parse("POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", &h),
			 -EINVAL);
}

static void
test_too_many_headers(void **state)
{
	char buf[4096];
	struct http_head h;
	size_t off;
	int i;

	off = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\n");
	for (i = 0; i < HTTP_MAX_HEADERS; i++)
		off += (size_t)snprintf(buf + off, sizeof(buf) - off, "X-%d: %d\r\n", i, i);
	snprintf(buf + off, sizeof(buf) - off, "\r\n");
	assert_int_equal(parse(buf, &h), (int)strlen(buf));
	assert_int_equal(h.nheaders, HTTP_MAX_HEADERS);

	snprintf(buf + off, sizeof(buf) - off, "X-Last: 1\r\n\r\n");
	assert_int_equal(parse(buf, &h), -E2BIG);
	/* known as soon as the 65th line starts */
	buf[off + 1] = '\0';
	assert_int_equal(parse(buf, &h), -E2BIG);
}

/* Random corruption of a valid head: no crash, no read past len, sane results. */
static void
test_mutations(void **state)
{
	const char *base = "POST /v1/token?resource=x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
			   "Connection: keep-alive\r\n\r\n";
	size_t len = strlen(base);
	struct http_head h;
	unsigned seed = 1;
	int i, j;

	for (i = 0; i < 20000; i++) {
		char *p = malloc(len);
		size_t n;
		int r;

		assert_non_null(p);
		memcpy(p, base, len);
		for (j = 0; j < 3; j++) {
			seed = seed * 1103515245 + 12345;
			p[(seed >> 8) % len] = (char)(seed >> 20);
		}
		n = (seed >> 4) % (len + 1);
		r = http_parse_request_head(p, n, &h);
		assert_true(r == 0 || r == -EINVAL || r == -ENOTSUP || r == -E2BIG ||
			    (r > 0 && (size_t)r <= n));
		if (r > 0) {
			assert_true(h.method >= p && h.method + h.method_len <= p + n);
			assert_true(h.nheaders >= 0 && h.nheaders <= HTTP_MAX_HEADERS);
		}
		free(p);
	}
}

static void
test_head_find(void **state)
{
	struct http_head h;
	const struct http_header *f;

	assert_true(
	    parse("GET / HTTP/1.1\r\nX-A: 1\r\nx-identity-header: s\r\nX-A: 2\r\n\r\n", &h) > 0);
	f = http_head_find(&h, "X-IDENTITY-HEADER");
	assert_non_null(f);
	assert_span(f->value, f->value_len, "s");
	f = http_head_find(&h, "x-a");
	assert_non_null(f);
	assert_span(f->value, f->value_len, "1");
	assert_null(http_head_find(&h, "X-Identity"));
	assert_null(http_head_find(&h, "Metadata"));
}

static int
query(const char *q, const char *name, char *out, size_t out_size, int *count)
{
	return http_query_get(q, strlen(q), name, out, out_size, count);
}

static void
test_query_get(void **state)
{
	char out[64];
	int count = -1;

	assert_int_equal(query("api-version=2018-02-01&resource=api%3A%2F%2Fapim+x%2b", "resource",
			       out, sizeof(out), &count),
			 0);
	assert_string_equal(out, "api://apim x+");
	assert_int_equal(count, 1);

	assert_int_equal(
	    query("resource=a&x=1&resource=b&resource=c", "resource", out, sizeof(out), &count), 0);
	assert_string_equal(out, "a");
	assert_int_equal(count, 3);

	/* encoded names, empty pairs, a name without '=', an empty value */
	assert_int_equal(query("&&api%2Dversion=1&&", "api-version", out, sizeof(out), &count), 0);
	assert_string_equal(out, "1");
	assert_int_equal(query("a=1&flag&b=", "flag", out, sizeof(out), &count), 0);
	assert_string_equal(out, "");
	assert_int_equal(query("a=1&flag&b=", "b", out, sizeof(out), &count), 0);
	assert_string_equal(out, "");
	/* names are exact: neither prefix nor suffix */
	assert_int_equal(
	    query("resources=1&resourc=2&xresource=3", "resource", out, sizeof(out), &count),
	    -ENOENT);
	assert_int_equal(count, 0);
	assert_int_equal(query("", "resource", out, sizeof(out), &count), -ENOENT);
	assert_int_equal(count, 0);
	/* only counting */
	assert_int_equal(query("a=1&a=%20", "a", NULL, 0, &count), 0);
	assert_int_equal(count, 2);
	assert_int_equal(query("a=1", "a", out, sizeof(out), NULL), 0);
	/* '=' inside a value */
	assert_int_equal(query("a=b=c", "a", out, sizeof(out), &count), 0);
	assert_string_equal(out, "b=c");
}

/* MSAL.NET's unencoded values: '+' is a plus, %XX still decodes, names as before. */
static void
test_query_get_rfc3986(void **state)
{
	const char *q = "api-version=2019-08-01&resource=api://a+b%2Bc%20d&mi%5Fres+id=/x+y";
	char out[64];
	int count = -1;

	(void)state;
	assert_int_equal(http_query_get_rfc3986(q, strlen(q), "resource", out, sizeof(out), &count),
			 0);
	assert_string_equal(out, "api://a+b+c d");
	assert_int_equal(count, 1);
	/* the form rule, for comparison: the same bytes with '+' as a space */
	assert_int_equal(query(q, "resource", out, sizeof(out), &count), 0);
	assert_string_equal(out, "api://a b+c d");
	/* names are form-decoded alike ('+' in a name is a space), so duplicates stay duplicates */
	assert_int_equal(
	    http_query_get_rfc3986(q, strlen(q), "mi_res id", out, sizeof(out), &count), 0);
	assert_string_equal(out, "/x+y");
	assert_int_equal(http_query_get_rfc3986("a=1&a=+", 7, "a", out, sizeof(out), &count), 0);
	assert_int_equal(count, 2);
	assert_int_equal(http_query_get_rfc3986("a=%zz", 5, "a", out, sizeof(out), &count),
			 -EINVAL);
	assert_int_equal(http_query_get_rfc3986("b=1", 3, "a", out, sizeof(out), &count), -ENOENT);
}

static void
test_query_get_errors(void **state)
{
	char out[8];
	int count = 42;

	assert_int_equal(query("a=%zz", "a", out, sizeof(out), &count), -EINVAL);
	assert_int_equal(query("a=%4", "a", out, sizeof(out), &count), -EINVAL);
	assert_int_equal(query("a=x%", "a", out, sizeof(out), &count), -EINVAL);
	assert_int_equal(query("a=x%00y", "a", out, sizeof(out), &count), -EINVAL);
	assert_int_equal(http_query_get("a=x\0y", 5, "a", out, sizeof(out), &count), -EINVAL);
	/* a bad escape in a later duplicate or in any key */
	assert_int_equal(query("a=1&a=%g0", "a", out, sizeof(out), &count), -EINVAL);
	assert_int_equal(query("b%=1&a=1", "a", out, sizeof(out), &count), -EINVAL);
	/* other parameters' values are not our business */
	assert_int_equal(query("b=%zz&a=1", "a", out, sizeof(out), &count), 0);
	assert_int_equal(count, 1);
	/* too long: 7 bytes fit in 8 with the NUL, 8 do not */
	assert_int_equal(query("a=1234567", "a", out, sizeof(out), &count), 0);
	assert_string_equal(out, "1234567");
	assert_int_equal(query("a=12345678", "a", out, sizeof(out), &count), -ENOSPC);
	assert_int_equal(query("a=%41%41%41%41%41%41%41", "a", out, sizeof(out), &count), 0);
	assert_string_equal(out, "AAAAAAA");
	assert_int_equal(query("a=", "a", out, 0, &count), -ENOSPC);
}

static void
test_percent_decode(void **state)
{
	char out[16];
	size_t n = 99;

	assert_int_equal(http_percent_decode("ap%69+%2fx", 10, out, sizeof(out), &n), 0);
	assert_string_equal(out, "api+/x");
	assert_int_equal(n, 6);
	assert_int_equal(http_percent_decode("", 0, out, sizeof(out), &n), 0);
	assert_string_equal(out, "");
	assert_int_equal(n, 0);
	assert_int_equal(http_percent_decode("%C3%a9", 6, out, sizeof(out), NULL), 0);
	assert_string_equal(out, "\xc3\xa9");

	n = 99;
	assert_int_equal(http_percent_decode("a%2", 3, out, sizeof(out), &n), -EINVAL);
	assert_int_equal(n, 99);
	assert_int_equal(http_percent_decode("a%", 2, out, sizeof(out), &n), -EINVAL);
	assert_int_equal(http_percent_decode("%x1", 3, out, sizeof(out), &n), -EINVAL);
	assert_int_equal(http_percent_decode("%00", 3, out, sizeof(out), &n), -EINVAL);
	assert_int_equal(http_percent_decode("a\0b", 3, out, sizeof(out), &n), -EINVAL);
	assert_int_equal(http_percent_decode("0123456789abcdef", 16, out, sizeof(out), &n),
			 -ENOSPC);
	assert_int_equal(http_percent_decode("0123456789abcde", 15, out, sizeof(out), &n), 0);
	assert_int_equal(n, 15);
}

/* Response heads (the proxy's upstreams) */

static int
parse_resp(const char *s, struct http_head *h)
{
	return http_parse_response_head(s, strlen(s), h);
}

static void
test_response_heads(void **state)
{
	const char *r = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nHost: a\r\nHost: b\r\n\r\nbody";
	struct http_head h;

	assert_int_equal(parse_resp(r, &h), (int)strlen(r) - 4);
	assert_int_equal(h.status, 200);
	assert_int_equal(h.minor, 1);
	assert_span(h.target, h.target_len, "OK");
	assert_int_equal(h.content_length, 12);
	assert_int_equal(h.keep_alive, 1);
	assert_int_equal(h.nheaders, 3); /* Host is not special in a response */

	assert_true(parse_resp("HTTP/1.1 204 \r\n\r\n", &h) > 0);
	assert_int_equal(h.status, 204);
	assert_true(parse_resp("HTTP/1.1 404\r\n\r\n", &h) > 0); /* no reason phrase */
	assert_true(parse_resp("HTTP/1.0 200 OK\r\n\r\n", &h) > 0);
	assert_int_equal(h.keep_alive, 0);
	assert_int_equal(h.content_length, -1);
	assert_true(parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &h) > 0);
	assert_int_equal(h.chunked, 1);
	assert_true(parse_resp("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", &h) > 0);
	assert_int_equal(h.keep_alive, 0);
}

static void
test_response_incomplete_and_rejected(void **state)
{
	const char *full = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n\r\n";
	struct http_head h;

	for (size_t i = 0; i < strlen(full); i++)
		assert_int_equal(http_parse_response_head(full, i, &h), 0);
	assert_int_equal(parse_resp("HTTP/1.2 200 OK\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse_resp("HTTP/2 200 OK\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse_resp("HTTP/1.x 200 OK\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse_resp("HTTP/1.1 20 OK\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse_resp("HTTP/1.1 099 OK\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse_resp("HTTP/1.1 200 OK\n\r\n", &h), -EINVAL);
	assert_int_equal(parse_resp("HTTP/1.1 200 O\x01K\r\n\r\n", &h), -EINVAL);
	assert_int_equal(parse_resp("HTTP/1.1 200 OK\r\nA: 1\r\n b\r\n\r\n", &h), -EINVAL);
	assert_int_equal(
	    parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		       &h),
	    -EINVAL);
	assert_int_equal(
	    parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", &h),
	    -EINVAL);
	assert_int_equal(parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", &h),
			 -EINVAL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_get_11),
	    cmocka_unit_test(test_get_10),
	    cmocka_unit_test(test_head_length_excludes_body),
	    cmocka_unit_test(test_obs_text_and_tchars),
	    cmocka_unit_test(test_framing),
	    cmocka_unit_test(test_keep_alive),
	    cmocka_unit_test(test_every_prefix_incomplete),
	    cmocka_unit_test(test_reject_line_endings),
	    cmocka_unit_test(test_reject_headers),
	    cmocka_unit_test(test_reject_request_line),
	    cmocka_unit_test(test_reject_framing),
	    cmocka_unit_test(test_too_many_headers),
	    cmocka_unit_test(test_mutations),
	    cmocka_unit_test(test_head_find),
	    cmocka_unit_test(test_query_get),
	    cmocka_unit_test(test_query_get_rfc3986),
	    cmocka_unit_test(test_query_get_errors),
	    cmocka_unit_test(test_percent_decode),
	    cmocka_unit_test(test_response_heads),
	    cmocka_unit_test(test_response_incomplete_and_rejected),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
