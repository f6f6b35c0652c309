/*
 * Unit tests for json.c and json_write.c: the grammar check, lookups, unescaping, integers
 * and escaping.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "json.h"
#include "json_write.h"

#define NTOK 128

/* Like assert_int_equal, naming the table case when it fails. */
static void
expect_int(long got, long want, const char *what)
{
	if (got != want)
		print_message("case: %s\n", what);
	assert_int_equal(got, want);
}

static int
parse(struct json_doc *doc, jsmntok_t *toks, const char *js)
{
	return json_parse(doc, js, strlen(js), toks, NTOK);
}

static void
test_parse_good(void **state)
{
	static const char *const good[] = {
	    "{}",
	    " \t\r\n{ }\n",
	    "{\"a\":1}",
	    "{\"a\" : -0.5e+10 , \"b\":\"x\"}",
	    "{\"a\":[1,2,{\"d\":null}],\"e\":{\"f\":true,\"g\":false},\"h\":[]}",
	    "{\"s\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\"}",
	    "{\"a\":0,\"b\":-0,\"c\":10,\"d\":1E2,\"e\":1.25}",
	    "{\"utf8\":\"\xc3\xa9\xe2\x82\xac\"}",
	};
	struct json_doc doc;
	jsmntok_t toks[NTOK];

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		expect_int(parse(&doc, toks, good[i]), 0, good[i]);
		assert_ptr_equal(doc.js, good[i]);
		assert_int_equal(doc.len, strlen(good[i]));
		assert_true(doc.ntok >= 1);
	}
}

static void
test_parse_bad(void **state)
{
	static const char *const bad[] = {
	    "",
	    "   ",
	    "[]",
	    "[1,2]",
	    "1",
	    "\"s\"",
	    "true",
	    "{",
	    "}",
	    "{\"a\"}",
	    "{\"a\":}",
	    "{\"a\":1,}",
	    "{,}",
	    "{,\"a\":1}",
	    "{\"a\" 1}",
	    "{\"a\":1 \"b\":2}",
	    "{\"a\"::1}",
	    "{\"a\":1,,\"b\":2}",
	    "{\"a\":\"b\":\"c\"}",
	    "{\"a\":01}",
	    "{\"a\":1.}",
	    "{\"a\":.5}",
	    "{\"a\":1e}",
	    "{\"a\":-}",
	    "{\"a\":+1}",
	    "{\"a\":tru}",
	    "{\"a\":nulll}",
	    "{\"a\":True}",
	    "{\"a\":[1,]}",
	    "{\"a\":[1 2]}",
	    "{\"a\":[,1]}",
	    "{\"a\":[\"k\":1]}",
	    "{\"a\":{\"b\"}}",
	    "{\"a\":\"\\q\"}",
	    "{\"a\":\"\\u12\"}",
	    "{\"a\":\"x\ty\"}",
	    "{\"a\":\"x\ny\"}",
	    "{\"a\\u0001\x01\":1}",
	    "{1:2}",
	    "{\"a\":1}x",
	    "{\"a\":1}{}",
	    "{\"a\":1}}",
	    "{\"a\":[1}",
	    "{\"a\":{1]}",
	    "\xef\xbb\xbf{}",
	    "x{}",
	};
	struct json_doc doc;
	jsmntok_t toks[NTOK];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		expect_int(parse(&doc, toks, bad[i]), -EINVAL, bad[i]);
	}
}

static void
test_parse_embedded_nul(void **state)
{
	static const char js[] = "{\"a\":1}\0{}";
	static const char js2[] = "{\"a\":\"x\0y\"}";
	struct json_doc doc;
	jsmntok_t toks[NTOK];

	assert_int_equal(json_parse(&doc, js, sizeof(js) - 1, toks, NTOK), -EINVAL);
	assert_int_equal(json_parse(&doc, js2, sizeof(js2) - 1, toks, NTOK), -EINVAL);
}

static void
test_parse_bounds(void **state)
{
	const char *js = "{\"a\":[1,2,3],\"b\":2}";
	struct json_doc doc = {0};
	jsmntok_t toks[NTOK];
	char deep[256];
	size_t n = 0;

	/* 8 tokens: object, a, array, 1, 2, 3, b, 2 */
	assert_int_equal(json_parse(&doc, js, strlen(js), toks, 7), -E2BIG);
	assert_null(doc.js); /* untouched on failure */
	assert_int_equal(json_parse(&doc, js, strlen(js), toks, 8), 0);
	assert_int_equal(doc.ntok, 8);
	assert_int_equal(json_parse(&doc, js, strlen(js), toks, 0), -E2BIG);

	/* nesting is bounded: 31 arrays inside the top object pass, 32 do not */
	for (int depth = 31; depth <= 32; depth++) {
		n = 0;
		memcpy(deep, "{\"a\":", 5);
		n += 5;
		for (int i = 0; i < depth; i++)
			deep[n++] = '[';
		for (int i = 0; i < depth; i++)
			deep[n++] = ']';
		deep[n++] = '}';
		deep[n] = '\0';
		assert_int_equal(parse(&doc, toks, deep), depth == 31 ? 0 : -EINVAL);
	}
}

/* The array variant: the same grammar, an array at the top, and its own bounds. */
static void
test_parse_array(void **state)
{
	static const char *const good[] = {"[]", " [ ]\n", "[{\"a\":1},{\"b\":[2]}]",
					   "[1,\"s\",null]"};
	static const char *const bad[] = {"{}", "[1,]", "[1 2]", "[{\"a\"}]", "[]x", "1"};
	const char *js = "[{\"a\":1},2]";
	struct json_doc doc;
	jsmntok_t toks[NTOK];

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		expect_int(json_parse_array(&doc, good[i], strlen(good[i]), toks, NTOK), 0,
			   good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_int(json_parse_array(&doc, bad[i], strlen(bad[i]), toks, NTOK), -EINVAL,
			   bad[i]);
	/* 5 tokens: array, object, a, 1, 2 */
	assert_int_equal(json_parse_array(&doc, js, strlen(js), toks, 4), -E2BIG);
	assert_int_equal(json_parse_array(&doc, js, strlen(js), toks, 5), 0);
	assert_int_equal(doc.ntok, 5);
	assert_int_equal(json_skip(&doc, 1), 4);
}

/* json_count sizes the token array for json_parse exactly. */
static void
test_count(void **state)
{
	const char *js = "{\"a\":[1,2,3],\"b\":2}";
	struct json_doc doc;
	jsmntok_t toks[NTOK];
	int n;

	n = json_count(js, strlen(js));
	assert_int_equal(n, 8);
	assert_int_equal(json_parse(&doc, js, strlen(js), toks, n), 0);
	assert_int_equal(json_count("[{},[]]", 7), 3);
	/* what jsmn refuses even when only counting; json_parse checks the rest */
	assert_int_equal(json_count("{\"a\":\"\\q\"}", 10), -EINVAL);
	assert_int_equal(json_count("{\"a\":\"x", 7), -EINVAL);
}

static void
test_find_and_skip(void **state)
{
	const char *js = "{\"o\":{\"k\":1,\"x\":[1,{\"k\":3}]},\"v\":\"k\",\"k\":2,"
			 "\"acc\\u0065ss\":\"esc\",\"last\":[]}";
	struct json_doc doc;
	jsmntok_t toks[NTOK];
	int i, o;
	int64_t v;
	char buf[16];

	assert_int_equal(parse(&doc, toks, js), 0);
	/* the top-level k, not the nested one nor the string value "k" */
	i = json_find(&doc, 0, "k");
	assert_true(i > 0);
	assert_int_equal(json_int64(&doc, i, &v), 0);
	assert_int_equal(v, 2);

	o = json_find(&doc, 0, "o");
	assert_true(o > 0);
	assert_int_equal(doc.tok[o].type, JSMN_OBJECT);
	i = json_find(&doc, o, "k");
	assert_int_equal(json_int64(&doc, i, &v), 0);
	assert_int_equal(v, 1);

	/* an escaped key names the same member */
	i = json_find(&doc, 0, "access");
	assert_true(i > 0);
	assert_int_equal(json_string_copy(&doc, i, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "esc");

	assert_int_equal(json_find(&doc, 0, "missing"), -1);
	assert_int_equal(json_find(&doc, 0, "acc"), -1);
	assert_int_equal(json_find(&doc, 0, ""), -1);
	/* not an object */
	i = json_find(&doc, 0, "last");
	assert_int_equal(doc.tok[i].type, JSMN_ARRAY);
	assert_int_equal(json_find(&doc, i, "k"), -1);
	assert_int_equal(json_find(&doc, -1, "k"), -1);
	assert_int_equal(json_find(&doc, doc.ntok, "k"), -1);

	/* skip: past the whole nested object to the next key "v" */
	i = json_skip(&doc, o);
	assert_int_equal(doc.tok[i].type, JSMN_STRING);
	assert_int_equal(doc.tok[i].end - doc.tok[i].start, 1);
	assert_memory_equal(js + doc.tok[i].start, "v", 1);
	assert_int_equal(json_skip(&doc, 0), doc.ntok);
	assert_int_equal(json_skip(&doc, i), i + 1);
	i = json_find(&doc, 0, "last");
	assert_int_equal(json_skip(&doc, i), doc.ntok);
}

static void
test_string_unescape(void **state)
{
	const char *js = "{\"a\":\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t\","
			 "\"u\":\"\\u0041\\u00e9\\u20AC\\ud83d\\ude00\","
			 "\"raw\":\"\xc3\xa9\",\"n\":1,\"e\":\"\"}";
	struct json_doc doc;
	jsmntok_t toks[NTOK];
	char *s = NULL, buf[8];
	size_t n = 0;

	assert_int_equal(parse(&doc, toks, js), 0);
	assert_int_equal(json_string_dup(&doc, json_find(&doc, 0, "a"), &s, &n), 0);
	assert_string_equal(s, "q\" b\\ s/ \b\f\n\r\t");
	assert_int_equal(n, strlen(s));
	free(s);

	assert_int_equal(json_string_dup(&doc, json_find(&doc, 0, "u"), &s, &n), 0);
	assert_string_equal(s, "A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
	assert_int_equal(n, 1 + 2 + 3 + 4);
	free(s);

	assert_int_equal(json_string_dup(&doc, json_find(&doc, 0, "raw"), &s, NULL), 0);
	assert_string_equal(s, "\xc3\xa9");
	free(s);

	assert_int_equal(json_string_dup(&doc, json_find(&doc, 0, "e"), &s, &n), 0);
	assert_string_equal(s, "");
	assert_int_equal(n, 0);
	free(s);

	/* not a string */
	s = NULL;
	assert_int_equal(json_string_dup(&doc, json_find(&doc, 0, "n"), &s, &n), -EINVAL);
	assert_int_equal(json_string_dup(&doc, 0, &s, &n), -EINVAL);
	assert_int_equal(json_string_dup(&doc, -1, &s, &n), -EINVAL);
	assert_null(s);

	/* copy: exactly fitting, one byte short */
	assert_int_equal(json_string_copy(&doc, json_find(&doc, 0, "raw"), buf, 3), 0);
	assert_string_equal(buf, "\xc3\xa9");
	strcpy(buf, "keep");
	assert_int_equal(json_string_copy(&doc, json_find(&doc, 0, "raw"), buf, 2), -ENOSPC);
	assert_string_equal(buf, "keep");
	assert_int_equal(json_string_copy(&doc, json_find(&doc, 0, "u"), buf, sizeof(buf)),
			 -ENOSPC);
	assert_int_equal(json_string_copy(&doc, json_find(&doc, 0, "e"), buf, 1), 0);
	assert_string_equal(buf, "");
}

static void
test_string_rejects(void **state)
{
	static const char *const bad[] = {
	    "{\"s\":\"\\u0000\"}",	  /* embedded NUL */
	    "{\"s\":\"a\\u0000b\"}",	  /* embedded NUL */
	    "{\"s\":\"\\ud800\"}",	  /* lone high surrogate */
	    "{\"s\":\"\\ud800x\"}",	  /* high surrogate, then no escape */
	    "{\"s\":\"\\ud800\\u0041\"}", /* high surrogate, then no low one */
	    "{\"s\":\"\\ud800\\ud800\"}", /* two high surrogates */
	    "{\"s\":\"\\udc00\"}",	  /* lone low surrogate */
	    "{\"s\":\"\\udfff\\ud800\"}", /* reversed pair */
	    "{\"s\":\"\\ud83d\\n\"}",	  /* high surrogate, other escape */
	};
	struct json_doc doc;
	jsmntok_t toks[NTOK];
	char *s = NULL, buf[64];
	size_t n = 0;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		expect_int(parse(&doc, toks, bad[i]), 0, bad[i]);
		expect_int(json_string_dup(&doc, json_find(&doc, 0, "s"), &s, &n), -EINVAL, bad[i]);
		assert_null(s);
		expect_int(json_string_copy(&doc, json_find(&doc, 0, "s"), buf, sizeof(buf)),
			   -EINVAL, bad[i]);
	}
	/* bad escapes do not even parse */
	assert_int_equal(parse(&doc, toks, "{\"s\":\"\\x41\"}"), -EINVAL);
	assert_int_equal(parse(&doc, toks, "{\"s\":\"\\u00g0\"}"), -EINVAL);
	assert_int_equal(parse(&doc, toks, "{\"s\":\"\\'\"}"), -EINVAL);
}

static void
test_unescape_text(void **state)
{
	static const struct {
		const char *in;
		size_t in_len;
		const char *out;
		size_t out_len;
	} v[] = {
	    {"plain text", 10, "plain text", 10},
	    {"{\"e\":\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t\"}", 31,
	     "{\"e\":\"q\" b\\ s/ \b\f\n\r\t\"}", 23},
	    {"\\u0041\\u00e9\\u20AC\\ud83d\\ude00", 30, "A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80",
	     10},
	    /* lenient where json_string_dup is strict */
	    {"\\ud800x", 7, "\xed\xa0\x80x", 4}, /* lone high surrogate, as is */
	    {"\\udc00", 6, "\xed\xb0\x80", 3},	 /* lone low surrogate */
	    {"\\ud800\\u0041", 12,
	     "\xed\xa0\x80"
	     "A",
	     4},			  /* no low surrogate follows */
	    {"a\\u0000b", 8, "a\0b", 3},  /* a NUL */
	    {"\\x41", 4, "x41", 3},	  /* undefined escape: its character */
	    {"\\u00g0", 6, "\\u00g0", 6}, /* not four hex digits: kept */
	    {"\\u12", 4, "\\u12", 4},	  /* too short: kept */
	    {"end\\", 4, "end\\", 4},	  /* a final backslash */
	    {"", 0, "", 0},
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		char *out = NULL;
		size_t n = 99;

		expect_int(json_unescape_text(v[i].in, v[i].in_len, &out, &n), 0, v[i].in);
		expect_int((long)n, (long)v[i].out_len, v[i].in);
		assert_memory_equal(out, v[i].out, n);
		assert_int_equal(out[n], '\0');
		free(out);
	}
}

static void
test_int64(void **state)
{
	static const struct {
		const char *value;
		int ret;
		int64_t expect;
	} cases[] = {
	    {"3599", 0, 3599},
	    {"\"3599\"", 0, 3599},
	    {"0", 0, 0},
	    {"-0", 0, 0},
	    {"-5", 0, -5},
	    {"\"-5\"", 0, -5},
	    {"\"007\"", 0, 7},
	    {"9223372036854775807", 0, INT64_MAX},
	    {"-9223372036854775808", 0, INT64_MIN},
	    {"\"9223372036854775807\"", 0, INT64_MAX},
	    {"9223372036854775808", -ERANGE, 0},
	    {"-9223372036854775809", -ERANGE, 0},
	    {"\"99999999999999999999\"", -ERANGE, 0},
	    {"1.5", -EINVAL, 0},
	    {"1.0", -EINVAL, 0},
	    {"1e3", -EINVAL, 0},
	    {"1E3", -EINVAL, 0},
	    {"\"1.5\"", -EINVAL, 0},
	    {"\"1e3\"", -EINVAL, 0},
	    {"\"12a\"", -EINVAL, 0},
	    {"\" 1\"", -EINVAL, 0},
	    {"\"1 \"", -EINVAL, 0},
	    {"\"+1\"", -EINVAL, 0},
	    {"\"\"", -EINVAL, 0},
	    {"\"-\"", -EINVAL, 0},
	    {"\"--1\"", -EINVAL, 0},
	    {"\"0x10\"", -EINVAL, 0},
	    {"\"\\u0031\"", -EINVAL, 0},
	    {"true", -EINVAL, 0},
	    {"null", -EINVAL, 0},
	    {"[1]", -EINVAL, 0},
	    {"{}", -EINVAL, 0},
	};
	struct json_doc doc;
	jsmntok_t toks[NTOK];
	char js[128];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int64_t v = 42;

		snprintf(js, sizeof(js), "{\"v\":%s}", cases[i].value);
		expect_int(parse(&doc, toks, js), 0, js);
		expect_int(json_int64(&doc, json_find(&doc, 0, "v"), &v), cases[i].ret, js);
		expect_int(v == (cases[i].ret == 0 ? cases[i].expect : 42), 1, js);
	}
}

/* Appends s as a member value, parses the result and returns the unescaped value. */
static void
round_trip(const char *s, size_t len, const char *expect_json)
{
	struct evbuffer *b = evbuffer_new();
	struct json_doc doc;
	jsmntok_t toks[NTOK];
	char *js, *out = NULL;
	size_t n, out_len = 0;
	int i;

	assert_non_null(b);
	assert_int_equal(evbuffer_add(b, "{\"k\":", 5), 0);
	assert_int_equal(json_append_string(b, s, len), 0);
	assert_int_equal(evbuffer_add(b, "}", 1), 0);
	n = evbuffer_get_length(b);
	js = (char *)evbuffer_pullup(b, -1);
	if (expect_json != NULL) {
		assert_int_equal(n, 5 + strlen(expect_json) + 1);
		assert_memory_equal(js + 5, expect_json, strlen(expect_json));
	}
	assert_int_equal(json_parse(&doc, js, n, toks, NTOK), 0);
	i = json_find(&doc, 0, "k");
	assert_true(i > 0);
	assert_int_equal(json_string_dup(&doc, i, &out, &out_len), 0);
	assert_int_equal(out_len, len);
	assert_memory_equal(out, s, len);
	free(out);
	evbuffer_free(b);
}

static void
test_append_string(void **state)
{
	char ctl[32];

	round_trip("", 0, "\"\"");
	round_trip("plain", 5, "\"plain\"");
	round_trip("q\"b\\s/", 6, "\"q\\\"b\\\\s/\"");
	round_trip("\b\f\n\r\t", 5, "\"\\b\\f\\n\\r\\t\"");
	round_trip("\x01\x1f\x7f", 3, "\"\\u0001\\u001f\x7f\"");
	round_trip("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9,
		   "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
	round_trip("api://apim-managedidentity-nwe-i2jdr", 36,
		   "\"api://apim-managedidentity-nwe-i2jdr\"");
	for (int c = 1; c < 32; c++)
		ctl[c - 1] = (char)c;
	round_trip(ctl, 31, NULL);
}

static void
test_append_error(void **state)
{
	struct evbuffer *b = evbuffer_new();
	const char *want =
	    "{\"error\":\"invalid_request\",\"error_description\":\"a \\\"quoted\\\" word\"}";
	size_t len;

	(void)state;
	assert_non_null(b);
	assert_int_equal(json_append_error(b, "invalid_request", "a \"quoted\" word"), 0);
	len = evbuffer_get_length(b);
	assert_int_equal(len, strlen(want));
	assert_memory_equal(evbuffer_pullup(b, -1), want, len);
	evbuffer_free(b);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_good),
	    cmocka_unit_test(test_parse_bad),
	    cmocka_unit_test(test_parse_embedded_nul),
	    cmocka_unit_test(test_parse_bounds),
	    cmocka_unit_test(test_parse_array),
	    cmocka_unit_test(test_count),
	    cmocka_unit_test(test_find_and_skip),
	    cmocka_unit_test(test_string_unescape),
	    cmocka_unit_test(test_string_rejects),
	    cmocka_unit_test(test_unescape_text),
	    cmocka_unit_test(test_int64),
	    cmocka_unit_test(test_append_string),
	    cmocka_unit_test(test_append_error),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
