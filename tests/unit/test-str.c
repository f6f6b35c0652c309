/* Unit tests for common/str.c: optional strings and string vectors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "str.h"

static void
test_eq_opt(void **state)
{
	assert_true(str_eq_opt(NULL, NULL));
	assert_true(str_eq_opt("a", "a"));
	assert_true(str_eq_opt("", ""));
	assert_false(str_eq_opt("a", NULL));
	assert_false(str_eq_opt(NULL, "a"));
	assert_false(str_eq_opt("", NULL));
	assert_false(str_eq_opt("a", "b"));
	assert_false(str_eq_opt("a", "ab"));
}

static void
test_dup_opt(void **state)
{
	bool oom = false;
	char *d = str_dup_opt("value", &oom);

	assert_string_equal(d, "value");
	assert_false(oom);
	free(d);
	assert_null(str_dup_opt(NULL, &oom));
	assert_false(oom); /* NULL is not a failure */
	oom = true;
	d = str_dup_opt("x", &oom);
	assert_true(oom); /* a success leaves an earlier failure standing */
	free(d);
}

static void
test_strv(void **state)
{
	char *a[] = {"one", "two", NULL}, *same[] = {"one", "two", NULL};
	char *shorter[] = {"one", NULL}, *other[] = {"one", "three", NULL}, *empty[] = {NULL};
	char **owned = calloc(3, sizeof(*owned));

	assert_int_equal(strv_length(a), 2);
	assert_int_equal(strv_length(empty), 0);
	assert_int_equal(strv_length(NULL), 0);
	assert_true(strv_equal(a, same));
	assert_true(strv_equal(NULL, NULL));
	assert_true(strv_equal(empty, empty));
	assert_false(strv_equal(a, shorter));
	assert_false(strv_equal(shorter, a));
	assert_false(strv_equal(a, other));
	assert_false(strv_equal(empty, NULL));
	assert_true(strv_contains(a, "two"));
	assert_false(strv_contains(a, "tw"));
	assert_false(strv_contains(empty, "one"));
	assert_false(strv_contains(NULL, "one"));
	assert_non_null(owned);
	owned[0] = strdup("x");
	owned[1] = strdup("y");
	assert_null(strv_free(owned));
	assert_null(strv_free(NULL));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_eq_opt),
	    cmocka_unit_test(test_dup_opt),
	    cmocka_unit_test(test_strv),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
