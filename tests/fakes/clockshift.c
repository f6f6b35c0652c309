/*
 * clockshift: an LD_PRELOAD shim for the integration tests that shows a
 * process what it sees across a suspend: CLOCK_BOOTTIME and the wall clock
 * (CLOCK_REALTIME, time(), gettimeofday()) jump ahead while CLOCK_MONOTONIC,
 * which libevent's timers run on, does not.  libfaketime cannot do this: with
 * FAKETIME_DONT_FAKE_MONOTONIC=1 it leaves CLOCK_BOOTTIME with the monotonic
 * clock, and without it it moves the monotonic clock as well.
 *
 * CLOCKSHIFT_FILE names a file of 16 bytes, two little-endian int64 offsets in
 * milliseconds: the boot clock's and the wall clock's (the same for a plain
 * suspend; a different wall offset is a suspend after which the wall clock was
 * set otherwise).  It is mapped shared, so a test that rewrites it in place
 * moves the clocks of the running process at once.  Test plumbing only: built
 * by the test that uses it (tests/integration/test_clock.py).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef int clock_gettime_fn(clockid_t, struct timespec *);

static clock_gettime_fn *real_clock_gettime;
static const int64_t *offset_ms; /* [0] boot clock, [1] wall clock */

__attribute__((constructor)) static void
clockshift_init(void)
{
	const char *path = getenv("CLOCKSHIFT_FILE");
	void *p;
	int fd;

	real_clock_gettime = (clock_gettime_fn *)dlsym(RTLD_NEXT, "clock_gettime");
	if (path == NULL || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return;
	p = mmap(NULL, 2 * sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p != MAP_FAILED)
		offset_ms = p;
}

/* The offset of clock id: -1 for a clock left alone. */
static int
which_offset(clockid_t id)
{
	switch (id) {
	case CLOCK_BOOTTIME:
	case CLOCK_BOOTTIME_ALARM:
		return 0;
	case CLOCK_REALTIME:
	case CLOCK_REALTIME_COARSE:
	case CLOCK_REALTIME_ALARM:
		return 1;
	default:
		return -1;
	}
}

int
clock_gettime(clockid_t id, struct timespec *ts)
{
	int64_t ns, shift;
	int r;

	if (real_clock_gettime == NULL)
		real_clock_gettime = (clock_gettime_fn *)dlsym(RTLD_NEXT, "clock_gettime");
	r = real_clock_gettime(id, ts);
	if (r != 0 || which_offset(id) < 0 || offset_ms == NULL)
		return r;
	shift = __atomic_load_n(&offset_ms[which_offset(id)], __ATOMIC_RELAXED);
	ns = (int64_t)ts->tv_nsec + shift % 1000 * 1000000;
	ts->tv_sec += (time_t)(shift / 1000 + ns / 1000000000);
	ts->tv_nsec = (long)(ns % 1000000000);
	if (ts->tv_nsec < 0) {
		ts->tv_nsec += 1000000000;
		ts->tv_sec--;
	}
	return 0;
}

time_t
time(time_t *t)
{
	struct timespec ts;
	time_t now;

	clock_gettime(CLOCK_REALTIME, &ts);
	now = ts.tv_sec;
	if (t != NULL)
		*t = now;
	return now;
}

int
gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
	struct timespec ts;

	(void)tz;
	clock_gettime(CLOCK_REALTIME, &ts);
	tv->tv_sec = ts.tv_sec;
	tv->tv_usec = ts.tv_nsec / 1000;
	return 0;
}
