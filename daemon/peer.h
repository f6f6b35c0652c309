/*
 * Who is on the other end of a connected socket: SO_PEERCRED for AF_UNIX,
 * and for a TCP connection from this host the owner of the local socket at
 * the other end (NETLINK_SOCK_DIAG, or /proc/net/tcp where netlink is not
 * allowed).  Used to count connections per user on every listener.
 */
#ifndef BEARERD_PEER_H
#define BEARERD_PEER_H

#include <stdbool.h>
#include <sys/socket.h>
#include <sys/types.h>

struct peer;

/* What peer_new may use: the default tries sock_diag first, then /proc. */
enum peer_method {
	PEER_AUTO,
	PEER_PROC, /* /proc/net/tcp{,6} only (tests; where netlink is refused) */
};

/*
 * A lookup context for TCP peers: the netlink socket, opened once, or none
 * when netlink is not available (then /proc is read).  Never fails for lack
 * of netlink; -ENOMEM only.
 */
int peer_new(struct peer **out, enum peer_method method);
struct peer *peer_free(struct peer *p);
/* "sock_diag" or "proc", for the log. */
const char *peer_method_name(const struct peer *p);

/* SO_PEERCRED of a connected AF_UNIX socket: 0 or -errno. */
int peer_unix(int fd, struct ucred *out);

/*
 * The uid owning the local socket at the other end of the TCP connection fd
 * (IPv4 or IPv6).  -ENOENT when the other end is not a socket of this host's
 * network namespace, or no longer has an owner (closed, TIME_WAIT); another
 * -errno when the lookup failed.  Bounded: at most a few milliseconds on the
 * netlink socket, a bounded read of /proc otherwise.
 */
int peer_tcp_uid(struct peer *p, int fd, uid_t *uid);

#endif
