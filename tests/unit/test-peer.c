/*
 * Unit tests for daemon/peer.c: the uid at the other end of an AF_UNIX and of
 * a loopback TCP connection, through sock_diag and through /proc/net/tcp.
 * As root a child connects as another uid, which both methods must report.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "peer.h"

#define OTHER_UID 65534

static void
test_unix(void **state)
{
	struct ucred cred;
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(peer_unix(sv[0], &cred), 0);
	assert_int_equal(cred.uid, geteuid());
	assert_int_equal(cred.pid, getpid());
	close(sv[0]);
	close(sv[1]);
	assert_int_equal(peer_unix(-1, &cred), -EBADF);
}

/* A listening socket on the loopback address of family, port chosen by the kernel. */
static int
listen_loopback(int family, struct sockaddr_storage *addr, socklen_t *len)
{
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	memset(addr, 0, sizeof(*addr));
	if (family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)addr;

		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		*len = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)addr;

		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		*len = sizeof(*a);
	}
	if (bind(fd, (struct sockaddr *)addr, *len) < 0) {
		close(fd);
		return -1; /* no IPv6 on lo */
	}
	assert_int_equal(listen(fd, 8), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)addr, len), 0);
	return fd;
}

/*
 * Connects to the listener as uid (forking when it is not ours), accepts, and
 * returns what peer_tcp_uid says with method; the client stays connected
 * until the lookup is done.
 */
static int
lookup_as(int family, enum peer_method method, uid_t as, uid_t *got)
{
	struct sockaddr_storage addr;
	socklen_t len;
	int lfd = listen_loopback(family, &addr, &len), cfd = -1, afd, sync[2], r;
	struct peer *p = NULL;
	pid_t child = -1;
	char byte = 0;

	if (lfd < 0)
		return -EAFNOSUPPORT;
	assert_int_equal(pipe(sync), 0);
	if (as == geteuid()) {
		cfd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		assert_int_equal(connect(cfd, (struct sockaddr *)&addr, len), 0);
	} else {
		child = fork();
		assert_true(child >= 0);
		if (child == 0) {
			if (setgid(as) < 0 || setuid(as) < 0)
				_exit(2);
			cfd = socket(family, SOCK_STREAM, 0);
			if (connect(cfd, (struct sockaddr *)&addr, len) < 0)
				_exit(3);
			/* hold the connection until the parent has looked */
			(void)read(sync[0], &byte, 1);
			_exit(0);
		}
	}
	afd = accept(lfd, NULL, NULL);
	assert_true(afd >= 0);
	assert_int_equal(peer_new(&p, method), 0);
	if (method == PEER_AUTO)
		assert_string_equal(peer_method_name(p), "sock_diag");
	else
		assert_string_equal(peer_method_name(p), "proc");
	r = peer_tcp_uid(p, afd, got);
	peer_free(p);
	assert_int_equal(write(sync[1], "x", 1), 1);
	if (child > 0) {
		int status = 0;

		assert_int_equal(waitpid(child, &status, 0), child);
		assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	if (cfd >= 0)
		close(cfd);
	close(afd);
	close(lfd);
	close(sync[0]);
	close(sync[1]);
	return r;
}

static void
check_family(int family)
{
	static const enum peer_method methods[] = {PEER_AUTO, PEER_PROC};

	for (size_t i = 0; i < 2; i++) {
		uid_t uid = (uid_t)-1;
		int r = lookup_as(family, methods[i], geteuid(), &uid);

		if (r == -EAFNOSUPPORT && family == AF_INET6)
			return; /* no ::1 here */
		assert_int_equal(r, 0);
		assert_int_equal(uid, geteuid());
		if (geteuid() != 0)
			continue;
		uid = (uid_t)-1;
		assert_int_equal(lookup_as(family, methods[i], OTHER_UID, &uid), 0);
		assert_int_equal(uid, OTHER_UID);
	}
}

static void
test_tcp_ipv4(void **state)
{
	(void)state;
	check_family(AF_INET);
}

static void
test_tcp_ipv6(void **state)
{
	(void)state;
	check_family(AF_INET6);
}

/* A peer that has gone (closed: orphaned, no owner) and a socket that is no TCP one. */
static void
test_gone_and_not_tcp(void **state)
{
	static const enum peer_method methods[] = {PEER_AUTO, PEER_PROC};
	struct sockaddr_storage addr;
	socklen_t len;
	int sv[2];

	(void)state;
	for (size_t i = 0; i < 2; i++) {
		int lfd = listen_loopback(AF_INET, &addr, &len), cfd, afd;
		struct peer *p = NULL;
		uid_t uid = 4242;
		char b;

		cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		assert_int_equal(connect(cfd, (struct sockaddr *)&addr, len), 0);
		afd = accept(lfd, NULL, NULL);
		assert_true(afd >= 0);
		/* the client closes first: its end lingers in FIN_WAIT2 with no owner (uid 0) */
		close(cfd);
		assert_int_equal(read(afd, &b, 1), 0);
		assert_int_equal(peer_new(&p, methods[i]), 0);
		assert_int_equal(peer_tcp_uid(p, afd, &uid), -ENOENT);
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
		assert_int_equal(peer_tcp_uid(p, sv[0], &uid), -EAFNOSUPPORT);
		close(sv[0]);
		close(sv[1]);
		assert_int_equal(uid, 4242);
		peer_free(p);
		close(afd);
		close(lfd);
	}
	assert_null(peer_free(NULL));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_unix),
	    cmocka_unit_test(test_tcp_ipv4),
	    cmocka_unit_test(test_tcp_ipv6),
	    cmocka_unit_test(test_gone_and_not_tcp),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
