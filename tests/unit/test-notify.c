/*
 * Unit tests for notify.c: the datagrams sent to $NOTIFY_SOCKET and the
 * sockets taken over from socket activation.  Built without libsystemd, the
 * same tests check that nothing is sent and nothing is taken.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "build-config.h"
#include "notify.h"

#define ACTIVATED_FD 3 /* SD_LISTEN_FDS_START */

struct fixture {
	char dir[64];
	char path[128];
	int fd; /* our end of $NOTIFY_SOCKET */
};

static int
setup(void **state)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/test-notify.XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	snprintf(f->path, sizeof(f->path), "%s/notify", f->dir);
	memcpy(sa.sun_path, f->path, strlen(f->path) + 1);
	f->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (f->fd < 0 || bind(f->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -1;
	setenv("NOTIFY_SOCKET", f->path, 1);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	unsetenv("NOTIFY_SOCKET");
	close(f->fd);
	unlink(f->path);
	rmdir(f->dir);
	free(f);
	return 0;
}

/* The next datagram, NUL-terminated, or "" when none arrived (sd_notify is synchronous). */
static const char *
next_message(struct fixture *f)
{
	static char buf[512];
	ssize_t n = recv(f->fd, buf, sizeof(buf) - 1, 0);

	buf[n < 0 ? 0 : n] = '\0';
	return buf;
}

static uint64_t
now_usec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void
test_ready_stopping(void **state)
{
	struct fixture *f = *state;

	notify_ready();
#if HAVE_SYSTEMD
	assert_string_equal(next_message(f), "READY=1");
#else
	assert_string_equal(next_message(f), "");
#endif
	notify_stopping();
#if HAVE_SYSTEMD
	assert_string_equal(next_message(f), "STOPPING=1");
#else
	assert_string_equal(next_message(f), "");
#endif
	/* the socket is not consumed: later messages still reach the manager */
	assert_non_null(getenv("NOTIFY_SOCKET"));
}

static void
test_reloading_carries_monotonic_time(void **state)
{
	struct fixture *f = *state;
	uint64_t before = now_usec(), after, t = 0;
	const char *m;

	notify_reloading();
	after = now_usec();
	m = next_message(f);
#if HAVE_SYSTEMD
	assert_int_equal(sscanf(m, "RELOADING=1\nMONOTONIC_USEC=%" SCNu64, &t), 1);
	assert_true(t >= before && t <= after);
	assert_null(strchr(strchr(m, '\n') + 1, '\n')); /* exactly two assignments */
#else
	(void)before;
	(void)after;
	(void)t;
	assert_string_equal(m, "");
#endif
}

static void
test_status_is_one_line(void **state)
{
	struct fixture *f = *state;

	notify_status("ready: %d audience%s\nREADY=1", 2, "s");
#if HAVE_SYSTEMD
	/* an embedded newline must not become a second assignment */
	assert_string_equal(next_message(f), "STATUS=ready: 2 audiences READY=1");
#else
	assert_string_equal(next_message(f), "");
#endif
}

static void
test_watchdog(void **state)
{
	struct fixture *f = *state;
	char pid[32];
	uint64_t usec = 7;

	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	assert_int_equal(notify_watchdog_usec(&usec), 0);
	assert_int_equal(usec, 7); /* untouched when disabled */

	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	setenv("WATCHDOG_USEC", "2000000", 1);
	setenv("WATCHDOG_PID", pid, 1);
#if HAVE_SYSTEMD
	assert_int_equal(notify_watchdog_usec(&usec), 1);
	assert_int_equal(usec, 2000000);
	/* meant for another process: not ours to ping */
	setenv("WATCHDOG_PID", "1", 1);
	assert_int_equal(notify_watchdog_usec(&usec), 0);
#else
	assert_int_equal(notify_watchdog_usec(&usec), 0);
#endif
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");

	notify_watchdog();
#if HAVE_SYSTEMD
	assert_string_equal(next_message(f), "WATCHDOG=1");
#else
	assert_string_equal(next_message(f), "");
#endif
}

/*
 * Puts a socket of the given type at fd 3 and sets LISTEN_PID/LISTEN_FDS as
 * systemd would; returns a copy of whatever fd 3 was before (or -1).
 */
static int
activate(int type, bool listening, const char *path, pid_t pid)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char buf[32];
	int saved = fcntl(ACTIVATED_FD, F_DUPFD_CLOEXEC, 10);
	int fd = socket(AF_UNIX, type, 0);

	assert_true(fd >= 0);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	if (listening)
		assert_int_equal(listen(fd, 16), 0);
	if (fd != ACTIVATED_FD) {
		assert_int_equal(dup2(fd, ACTIVATED_FD), ACTIVATED_FD);
		close(fd);
	}
	snprintf(buf, sizeof(buf), "%d", (int)pid);
	setenv("LISTEN_PID", buf, 1);
	setenv("LISTEN_FDS", "1", 1);
	return saved;
}

static void
deactivate(int saved, const char *path)
{
	close(ACTIVATED_FD);
	if (saved >= 0) {
		dup2(saved, ACTIVATED_FD);
		close(saved);
	}
	unlink(path);
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
}

static void
test_listen_fds_takes_the_activated_socket(void **state)
{
	struct fixture *f = *state;
	char path[160];
	int *fds = NULL, n, saved;

	snprintf(path, sizeof(path), "%s/api.sock", f->dir);
	saved = activate(SOCK_STREAM, true, path, getpid());
	n = notify_listen_fds(&fds);
#if HAVE_SYSTEMD
	assert_int_equal(n, 1);
	assert_non_null(fds);
	assert_int_equal(fds[0], ACTIVATED_FD);
	assert_true(fcntl(fds[0], F_GETFD) & FD_CLOEXEC);
	assert_true(fcntl(fds[0], F_GETFL) & O_NONBLOCK);
	/* consumed: a child (or a second call) does not see it */
	assert_null(getenv("LISTEN_FDS"));
	assert_null(getenv("LISTEN_PID"));
	free(fds);
	fds = NULL;
	assert_int_equal(notify_listen_fds(&fds), 0);
#else
	assert_int_equal(n, 0);
#endif
	assert_null(fds);
	deactivate(saved, path);
}

static void
test_listen_fds_not_for_us(void **state)
{
	struct fixture *f = *state;
	char path[160];
	int *fds = NULL, saved;

	snprintf(path, sizeof(path), "%s/other.sock", f->dir);
	/* LISTEN_PID names another process: the fds are not ours */
	saved = activate(SOCK_STREAM, true, path, getpid() + 1);
	assert_int_equal(notify_listen_fds(&fds), 0);
	assert_null(fds);
	deactivate(saved, path);

	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	assert_int_equal(notify_listen_fds(&fds), 0);
	assert_null(fds);
}

static void
test_listen_fds_rejects_wrong_socket(void **state)
{
	struct fixture *f = *state;
	char path[160];
	int *fds = NULL, saved;

	snprintf(path, sizeof(path), "%s/dgram.sock", f->dir);
	saved = activate(SOCK_DGRAM, false, path, getpid());
#if HAVE_SYSTEMD
	assert_int_equal(notify_listen_fds(&fds), -EINVAL);
#else
	assert_int_equal(notify_listen_fds(&fds), 0);
#endif
	assert_null(fds);
	deactivate(saved, path);

	snprintf(path, sizeof(path), "%s/unlistened.sock", f->dir);
	saved = activate(SOCK_STREAM, false, path, getpid());
#if HAVE_SYSTEMD
	assert_int_equal(notify_listen_fds(&fds), -EINVAL);
#else
	assert_int_equal(notify_listen_fds(&fds), 0);
#endif
	assert_null(fds);
	deactivate(saved, path);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_ready_stopping, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_reloading_carries_monotonic_time, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_status_is_one_line, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_watchdog, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_listen_fds_takes_the_activated_socket, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_listen_fds_not_for_us, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_listen_fds_rejects_wrong_socket, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
