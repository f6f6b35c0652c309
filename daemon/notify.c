/*
 * sd_notify and socket activation through libsystemd, or no-ops when built
 * without it (meson -Dsystemd=disabled).  Nothing here logs: callers decide.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "build-config.h"
#include "notify.h"

#if HAVE_SYSTEMD
#include <systemd/sd-daemon.h>

int
notify_listen_fds(int **fds)
{
	int n, *out;

	/* 1: unset LISTEN_* so nothing this process starts inherits them */
	n = sd_listen_fds(1);
	if (n <= 0)
		return n;
	for (int i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		int r = sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0);
		int fl;

		if (r < 0)
			return r;
		if (r == 0)
			return -EINVAL;
		/* sd_listen_fds already set FD_CLOEXEC */
		fl = fcntl(fd, F_GETFL);
		if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
			return -errno;
	}
	out = calloc((size_t)n, sizeof(*out));
	if (out == NULL)
		return -ENOMEM;
	for (int i = 0; i < n; i++)
		out[i] = SD_LISTEN_FDS_START + i;
	*fds = out;
	return n;
}

void
notify_ready(void)
{
	sd_notify(0, "READY=1");
}

void
notify_reloading(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
		   (unsigned long long)ts.tv_sec * 1000000ULL +
		       (unsigned long long)ts.tv_nsec / 1000ULL);
}

void
notify_stopping(void)
{
	sd_notify(0, "STOPPING=1");
}

void
notify_status(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	int n;

	n = snprintf(buf, sizeof(buf), "STATUS=");
	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	va_end(ap);
	/* one line: a newline would start another assignment */
	for (char *p = buf; *p != '\0'; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	sd_notify(0, buf);
}

int
notify_watchdog_usec(uint64_t *usec)
{
	uint64_t u = 0;
	int r = sd_watchdog_enabled(0, &u);

	if (r > 0)
		*usec = u;
	return r;
}

void
notify_watchdog(void)
{
	sd_notify(0, "WATCHDOG=1");
}

#else /* !HAVE_SYSTEMD */

int
notify_listen_fds(int **fds)
{
	(void)fds;
	return 0;
}

void
notify_ready(void)
{
}

void
notify_reloading(void)
{
}

void
notify_stopping(void)
{
}

void
notify_status(const char *fmt, ...)
{
	(void)fmt;
}

int
notify_watchdog_usec(uint64_t *usec)
{
	(void)usec;
	return 0;
}

void
notify_watchdog(void)
{
}

#endif
