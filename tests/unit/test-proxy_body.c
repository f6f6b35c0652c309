/* Unit tests for proxy_body.c: every framing, byte-at-a-time input, and strict chunk parsing. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "proxy_body.h"

/* Feeds s one byte at a time (or all at once); returns the final relay result, out the output. */
static int
feed(struct proxy_body *b, const char *s, size_t len, bool bytewise, struct evbuffer *in,
     struct evbuffer *out)
{
	int r = 0;

	if (!bytewise) {
		evbuffer_add(in, s, len);
		return proxy_body_relay(b, in, out);
	}
	for (size_t i = 0; i < len; i++) {
		evbuffer_add(in, s + i, 1);
		r = proxy_body_relay(b, in, out);
		if (r != 0)
			return r;
	}
	return r;
}

static void
expect(struct evbuffer *buf, const char *want)
{
	size_t n = evbuffer_get_length(buf);

	assert_int_equal(n, strlen(want));
	assert_memory_equal(evbuffer_pullup(buf, -1), want, n);
	evbuffer_drain(buf, n);
}

static void
test_length(void **state)
{
	struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
	struct proxy_body b;

	for (int bytewise = 0; bytewise < 2; bytewise++) {
		proxy_body_init(&b, PROXY_BODY_LENGTH, 5);
		assert_int_equal(feed(&b, "helloNEXT", 9, bytewise, in, out), 1);
		expect(out, "hello");
		assert_int_equal(b.total, 5);
		evbuffer_drain(in, evbuffer_get_length(in));
	}
	proxy_body_init(&b, PROXY_BODY_NONE, 0);
	assert_int_equal(proxy_body_relay(&b, in, out), 1);
	proxy_body_init(&b, PROXY_BODY_EOF, 0);
	assert_int_equal(feed(&b, "abc", 3, false, in, out), 0);
	expect(out, "abc");
	evbuffer_free(in);
	evbuffer_free(out);
}

static void
test_chunked(void **state)
{
	const char *body = "5\r\nhello\r\n6;name=v\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
	struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
	struct proxy_body b;

	for (int bytewise = 0; bytewise < 2; bytewise++) {
		proxy_body_init(&b, PROXY_BODY_CHUNKED, 0);
		assert_int_equal(feed(&b, body, strlen(body), bytewise, in, out), 1);
		/* extensions and trailers dropped, framing rewritten */
		expect(out, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
		if (!bytewise)
			expect(in, "NEXT");
		assert_int_equal(b.total, 11);
	}
	proxy_body_init(&b, PROXY_BODY_CHUNKED, 0);
	b.dechunk = true;
	assert_int_equal(feed(&b, body, strlen(body), false, in, out), 1);
	expect(out, "hello world");
	evbuffer_drain(in, evbuffer_get_length(in));
	evbuffer_free(in);
	evbuffer_free(out);
}

static void
test_chunked_rejects(void **state)
{
	static const char *const bad[] = {
	    "zz\r\n",		     /* not hex */
	    "\r\n",		     /* empty size */
	    "5\nhello\r\n",	     /* bare LF */
	    "5\r\nhelloXX",	     /* no CRLF after the data */
	    "11111111111111111\r\n", /* 17 hex digits */
	    "5 x\r\n",		     /* junk after the size */
	    "-5\r\n",
	};
	struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
	struct proxy_body b;
	char big[2048];
	int r = 0;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		proxy_body_init(&b, PROXY_BODY_CHUNKED, 0);
		assert_int_equal(feed(&b, bad[i], strlen(bad[i]), false, in, out), -EINVAL);
		evbuffer_drain(in, evbuffer_get_length(in));
		evbuffer_drain(out, evbuffer_get_length(out));
	}
	/* a chunk-size line without end is bounded */
	memset(big, '1', sizeof(big));
	big[0] = '0';
	big[1] = ';';
	proxy_body_init(&b, PROXY_BODY_CHUNKED, 0);
	assert_int_equal(feed(&b, big, sizeof(big), false, in, out), -EINVAL);
	evbuffer_drain(in, evbuffer_get_length(in));
	/* and so are trailers */
	proxy_body_init(&b, PROXY_BODY_CHUNKED, 0);
	assert_int_equal(feed(&b, "0\r\n", 3, false, in, out), 0);
	memset(big, 'a', 1000);
	memcpy(big + 1000, ": b\r\n", 5);
	for (int i = 0; i < 20 && r == 0; i++) {
		evbuffer_add(in, big, 1005);
		r = proxy_body_relay(&b, in, out);
	}
	assert_int_equal(r, -EINVAL);
	evbuffer_free(in);
	evbuffer_free(out);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_length),
	    cmocka_unit_test(test_chunked),
	    cmocka_unit_test(test_chunked_rejects),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
