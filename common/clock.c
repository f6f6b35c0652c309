/*
 * The clocks (see clock.h): one place where main.c, http.c, source_azure.c,
 * libbearer.c and the fuzzers each read them their own way.
 */
#include "clock.h"

int64_t
clock_ms(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
clock_mono_ms(void)
{
	return clock_ms(CLOCK_MONOTONIC);
}

int64_t
clock_coarse_ms(void)
{
	return clock_ms(CLOCK_MONOTONIC_COARSE);
}

int64_t
clock_boot_ms(void)
{
	return clock_ms(CLOCK_BOOTTIME);
}

int64_t
clock_wall_ms(void)
{
	return clock_ms(CLOCK_REALTIME);
}
