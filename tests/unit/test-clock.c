/* Unit tests for common/clock.c: each function reads the clock it names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <cmocka.h>

#include "clock.h"

static int64_t
read_ms(clockid_t id)
{
	struct timespec ts;

	assert_int_equal(clock_gettime(id, &ts), 0);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* f() lies between two direct readings of id taken around it. */
static void
expect_clock(int64_t (*f)(void), clockid_t id)
{
	int64_t before = read_ms(id), got = f(), after = read_ms(id);

	assert_true(before <= got);
	assert_true(got <= after);
}

static int64_t
mono(void)
{
	return clock_ms(CLOCK_MONOTONIC);
}

static void
test_each_clock(void **state)
{
	expect_clock(mono, CLOCK_MONOTONIC);
	expect_clock(clock_mono_ms, CLOCK_MONOTONIC);
	expect_clock(clock_coarse_ms, CLOCK_MONOTONIC_COARSE);
	expect_clock(clock_boot_ms, CLOCK_BOOTTIME);
	expect_clock(clock_wall_ms, CLOCK_REALTIME);
}

static void
test_wall_is_epoch_ms(void **state)
{
	int64_t before = (int64_t)time(NULL), ms = clock_wall_ms(), after = (int64_t)time(NULL);

	assert_true(ms / 1000 >= before);
	assert_true(ms / 1000 <= after);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_each_clock),
	    cmocka_unit_test(test_wall_is_epoch_ms),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
