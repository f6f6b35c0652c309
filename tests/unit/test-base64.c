/* Unit tests for common/base64.c: base64url both ways, its strictness, and standard base64. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base64.h"

/* Like assert_int_equal, naming the table case when it fails. */
static void
expect_int(long got, long want, const char *what)
{
	if (got != want)
		print_message("case: %s\n", what);
	assert_int_equal(got, want);
}

static void
test_base64url_vectors(void **state)
{
	/* RFC 4648 section 10, and bytes that use the two url-safe characters */
	static const struct {
		const char *bin;
		size_t len;
		const char *b64;
	} v[] = {
	    {"", 0, ""},
	    {"f", 1, "Zg"},
	    {"fo", 2, "Zm8"},
	    {"foo", 3, "Zm9v"},
	    {"foob", 4, "Zm9vYg"},
	    {"fooba", 5, "Zm9vYmE"},
	    {"foobar", 6, "Zm9vYmFy"},
	    {"\xfb\xff", 2, "-_8"},
	    {"\xff\xfe", 2, "__4"},
	    {"\xfb\xef\xbe", 3, "----"},
	    {"\x14\xfb\x9c\x03\xd9\x7e", 6, "FPucA9l-"},
	    {"\0binary", 7, "AGJpbmFyeQ"},
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		char *enc = NULL;
		unsigned char *dec = NULL;
		size_t n = 99;

		assert_int_equal(base64url_encode(v[i].bin, v[i].len, &enc), 0);
		assert_string_equal(enc, v[i].b64);
		assert_int_equal(base64url_decode(enc, strlen(enc), &dec, &n), 0);
		assert_int_equal(n, v[i].len);
		assert_memory_equal(dec, v[i].bin, n);
		free(enc);
		free(dec);
	}
}

static void
test_base64url_padding(void **state)
{
	static const struct {
		const char *in;
		const char *out;
	} ok[] = {
	    {"Zg==", "f"},	  {"Zm8=", "fo"},	 {"Zm9v", "foo"},
	    {"Zm9vYg==", "foob"}, {"Zm9vYmE=", "fooba"}, {"-_8=", "\xfb\xff"},
	};

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		unsigned char *dec = NULL;
		size_t n = 0;

		assert_int_equal(base64url_decode(ok[i].in, strlen(ok[i].in), &dec, &n), 0);
		assert_int_equal(n, strlen(ok[i].out));
		assert_memory_equal(dec, ok[i].out, n);
		/* decoded data is NUL-terminated for text users */
		assert_int_equal(dec[n], 0);
		free(dec);
	}
}

static void
test_base64url_rejects(void **state)
{
	static const char *const bad[] = {
	    "Z",	  /* a single character cannot hold a byte */
	    "Zm9vY",	  /* same after a whole group */
	    "Zg=",	  /* too little padding */
	    "Zg===",	  /* too much */
	    "Zm8==",	  /* too much */
	    "Zm9v=",	  /* padding where none belongs */
	    "=",	  /* padding only */
	    "====",	  /* padding only */
	    "Z=g=",	  /* padding inside */
	    "Zm+v",	  /* standard alphabet */
	    "Zm/v",	  /* standard alphabet */
	    "Zm9v\n",	  /* whitespace */
	    " Zm9v",	  /* whitespace */
	    "Zm 9v",	  /* whitespace */
	    "Zm9v.",	  /* other characters */
	    "Zh",	  /* non-zero bits after the last byte */
	    "Zm9=",	  /* same, padded */
	    "Zm\xc3\xa9", /* non-ASCII */
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		unsigned char *dec = NULL;
		size_t n = 77;

		expect_int(base64url_decode(bad[i], strlen(bad[i]), &dec, &n), -EINVAL, bad[i]);
		assert_null(dec);
		assert_int_equal(n, 77);
	}
	/* an embedded NUL is just another bad character */
	{
		unsigned char *dec = NULL;
		size_t n = 0;

		assert_int_equal(base64url_decode("Zm\0v", 4, &dec, &n), -EINVAL);
		assert_null(dec);
	}
}

static void
test_base64_vectors(void **state)
{
	/* RFC 4648 section 10, and the two characters where the alphabets differ */
	static const struct {
		const char *bin;
		size_t len;
		const char *b64;
	} v[] = {
	    {"", 0, ""},
	    {"f", 1, "Zg=="},
	    {"fo", 2, "Zm8="},
	    {"foo", 3, "Zm9v"},
	    {"foob", 4, "Zm9vYg=="},
	    {"fooba", 5, "Zm9vYmE="},
	    {"foobar", 6, "Zm9vYmFy"},
	    {"\xfb\xff", 2, "+/8="},
	    {"\xfb\xef\xbe", 3, "++++"},
	    {"client%3Aid:s%2Bcr%2Ft", 22, "Y2xpZW50JTNBaWQ6cyUyQmNyJTJGdA=="},
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		char *enc = NULL;

		assert_int_equal(base64_encode(v[i].bin, v[i].len, &enc), 0);
		assert_string_equal(enc, v[i].b64);
		free(enc);
	}
}

static void
test_base64_bounds(void **state)
{
	size_t big = BASE64_MAX_LEN + 1;
	unsigned char *in = calloc(1, big), *dec = NULL;
	char *enc = NULL, *text = malloc(big);
	size_t n = 5;

	assert_non_null(in);
	assert_non_null(text);
	assert_int_equal(base64_encode(in, big, &enc), -E2BIG);
	assert_int_equal(base64url_encode(in, big, &enc), -E2BIG);
	assert_null(enc);
	memset(text, 'A', big);
	assert_int_equal(base64url_decode(text, big, &dec, &n), -E2BIG);
	assert_null(dec);
	assert_int_equal(n, 5);
	/* the largest inputs are taken */
	assert_int_equal(base64url_encode(in, BASE64_MAX_LEN, &enc), 0);
	assert_int_equal(strlen(enc), (BASE64_MAX_LEN * 4 + 2) / 3); /* unpadded */
	assert_int_equal(base64url_decode(text, BASE64_MAX_LEN, &dec, &n), 0);
	assert_int_equal(n, BASE64_MAX_LEN / 4 * 3);
	assert_memory_equal(dec, in, n);
	free(enc);
	free(dec);
	free(in);
	free(text);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_base64url_vectors), cmocka_unit_test(test_base64url_padding),
	    cmocka_unit_test(test_base64url_rejects), cmocka_unit_test(test_base64_vectors),
	    cmocka_unit_test(test_base64_bounds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
