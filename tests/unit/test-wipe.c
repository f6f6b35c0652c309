/*
 * Unit tests for common/wipe.c.  Interposes explicit_bzero, as test-token.c
 * interposes OPENSSL_cleanse, to see which bytes were wiped before the free.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wipe.h"

static const void *wiped_ptr;
static size_t wiped_len;
static char wiped_seen[64];
static int wipes;

void
explicit_bzero(void *p, size_t len)
{
	wiped_ptr = p;
	wiped_len = len;
	memcpy(wiped_seen, p, len < sizeof(wiped_seen) ? len : sizeof(wiped_seen));
	memset(p, 0, len);
	wipes++;
}

static void
test_wipe_free(void **state)
{
	char *p = malloc(16);

	assert_non_null(p);
	memcpy(p, "secret\0trailing", 16);
	wipes = 0;
	assert_null(wipe_free(p, 16));
	assert_int_equal(wipes, 1);
	assert_ptr_equal(wiped_ptr, p);
	assert_int_equal(wiped_len, 16);
	assert_memory_equal(wiped_seen, "secret\0trailing", 16);
}

static void
test_wipe_free_str(void **state)
{
	char *s = strdup("token-value");

	assert_non_null(s);
	wipes = 0;
	assert_null(wipe_free_str(s));
	assert_int_equal(wipes, 1);
	assert_ptr_equal(wiped_ptr, s);
	assert_int_equal(wiped_len, strlen("token-value"));
	assert_memory_equal(wiped_seen, "token-value", wiped_len);
}

static void
test_wipe_realloc(void **state)
{
	char *p = NULL, *old;
	size_t cap = 0;

	/* from nothing */
	wipes = 0;
	assert_int_equal(wipe_realloc(&p, &cap, 0, 8), 0);
	assert_non_null(p);
	assert_int_equal(cap, 8);
	assert_int_equal(wipes, 0);
	memcpy(p, "abcdefg", 8);
	/* the first len bytes move, and the whole old block is wiped */
	old = p;
	assert_int_equal(wipe_realloc(&p, &cap, 5, 32), 0);
	assert_int_equal(cap, 32);
	assert_memory_equal(p, "abcde", 5);
	assert_int_equal(wipes, 1);
	assert_ptr_equal(wiped_ptr, old);
	assert_int_equal(wiped_len, 8);
	assert_memory_equal(wiped_seen, "abcdefg", 8);
	wipe_free(p, cap);
}

static void
test_null(void **state)
{
	wipes = 0;
	assert_null(wipe_free(NULL, 99));
	assert_null(wipe_free_str(NULL));
	assert_int_equal(wipes, 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_wipe_free),
	    cmocka_unit_test(test_wipe_free_str),
	    cmocka_unit_test(test_wipe_realloc),
	    cmocka_unit_test(test_null),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
