/* Unit tests for common/hex.c: every byte as a digit, and pairs as bytes. */
#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "hex.h"

static void
test_value_of_every_byte(void **state)
{
	for (int c = 0; c < 256; c++) {
		char s[2] = {(char)c, '\0'};
		int want = isxdigit(c) ? (int)strtol(s, NULL, 16) : -1;

		assert_int_equal(hex_value((char)c), want);
	}
}

static void
test_byte(void **state)
{
	assert_int_equal(hex_byte("00"), 0);
	assert_int_equal(hex_byte("7f"), 0x7f);
	assert_int_equal(hex_byte("A0"), 0xa0);
	assert_int_equal(hex_byte("fF"), 0xff);
	assert_int_equal(hex_byte("g0"), -1);
	assert_int_equal(hex_byte("0g"), -1);
	assert_int_equal(hex_byte("0"), -1); /* stops at the NUL */
	assert_int_equal(hex_byte(""), -1);
	assert_int_equal(hex_byte(" 1"), -1);
	assert_int_equal(hex_byte("\xff"
				  "1"),
			 -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_value_of_every_byte),
	    cmocka_unit_test(test_byte),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
