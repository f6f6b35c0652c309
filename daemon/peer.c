/*
 * Who is on the other end of a connection (see peer.h).  A loopback TCP peer
 * has no SO_PEERCRED, but its end is a socket of this host, and the kernel
 * knows that socket's owner: sock_diag answers an exact lookup of the
 * 4-tuple seen from the other side (what `ss -e` shows), and /proc/net/tcp
 * lists the same uid for every socket (slower: the whole table is read).
 * systemd's RestrictAddressFamilies= without AF_NETLINK leaves only /proc.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>

#include "peer.h"

#define PEER_NL_WAIT_MS	  20	     /* the kernel answers within sendto; this is a bound */
#define PEER_PROC_MAX	  (1u << 20) /* bytes of /proc/net/tcp read at most: ~7000 sockets, ~15 ms */
#define PEER_PROC_LINE	  512	     /* a line of /proc/net/tcp6 is about 180 bytes */
#define PEER_ANSWER_BYTES 8192

struct peer {
	int nl; /* NETLINK_SOCK_DIAG, or -1: read /proc */
	uint32_t seq;
};

/* Both ends of a TCP connection, addresses and ports in network order. */
struct ends {
	int family; /* AF_INET (also for v4-mapped IPv6) or AF_INET6 */
	unsigned char local[16], remote[16];
	uint16_t lport, rport;
};

int
peer_new(struct peer **out, enum peer_method method)
{
	struct peer *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return -ENOMEM;
	p->nl = -1;
	if (method == PEER_AUTO)
		p->nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
			       NETLINK_SOCK_DIAG);
	*out = p;
	return 0;
}

struct peer *
peer_free(struct peer *p)
{
	if (p == NULL)
		return NULL;
	if (p->nl >= 0)
		close(p->nl);
	free(p);
	return NULL;
}

const char *
peer_method_name(const struct peer *p)
{
	return p->nl >= 0 ? "sock_diag" : "proc";
}

int
peer_unix(int fd, struct ucred *out)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	*out = cred;
	return 0;
}

static int
ends_of(int fd, struct ends *e)
{
	struct sockaddr_storage l, r;
	socklen_t ll = sizeof(l), rl = sizeof(r);

	if (getsockname(fd, (struct sockaddr *)&l, &ll) < 0 ||
	    getpeername(fd, (struct sockaddr *)&r, &rl) < 0)
		return -errno;
	memset(e, 0, sizeof(*e));
	if (l.ss_family == AF_INET && r.ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)&l;
		const struct sockaddr_in *b = (const struct sockaddr_in *)&r;

		e->family = AF_INET;
		memcpy(e->local, &a->sin_addr, 4);
		memcpy(e->remote, &b->sin_addr, 4);
		e->lport = a->sin_port;
		e->rport = b->sin_port;
		return 0;
	}
	if (l.ss_family == AF_INET6 && r.ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&l;
		const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)&r;
		bool mapped =
		    IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) && IN6_IS_ADDR_V4MAPPED(&b->sin6_addr);

		/* an IPv4 client of a dual-stack listener: its socket is an IPv4 one */
		e->family = mapped ? AF_INET : AF_INET6;
		memcpy(e->local, a->sin6_addr.s6_addr + (mapped ? 12 : 0), mapped ? 4 : 16);
		memcpy(e->remote, b->sin6_addr.s6_addr + (mapped ? 12 : 0), mapped ? 4 : 16);
		e->lport = a->sin6_port;
		e->rport = b->sin6_port;
		return 0;
	}
	return -EAFNOSUPPORT;
}

/* One SOCK_DIAG_BY_FAMILY exact lookup of the socket whose local end is e->remote. */
static int
nl_lookup(struct peer *p, const struct ends *e, uid_t *uid)
{
	struct {
		struct nlmsghdr nlh;
		struct inet_diag_req_v2 r;
	} req;
	struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
	union {
		struct nlmsghdr h;
		char buf[PEER_ANSWER_BYTES];
	} ans;
	size_t alen = e->family == AF_INET ? 4 : 16;
	bool waited = false;

	memset(&req, 0, sizeof(req));
	req.nlh.nlmsg_len = sizeof(req);
	req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	req.nlh.nlmsg_flags = NLM_F_REQUEST;
	req.nlh.nlmsg_seq = ++p->seq;
	req.r.sdiag_family = (uint8_t)e->family;
	req.r.sdiag_protocol = IPPROTO_TCP;
	req.r.idiag_states = ~0u;
	/* the socket at the other end: its source is our remote side */
	req.r.id.idiag_sport = e->rport;
	req.r.id.idiag_dport = e->lport;
	memcpy(req.r.id.idiag_src, e->remote, alen);
	memcpy(req.r.id.idiag_dst, e->local, alen);
	req.r.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
	req.r.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
	if (sendto(p->nl, &req, sizeof(req), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
		return -errno;
	for (;;) {
		ssize_t n = recv(p->nl, &ans, sizeof(ans), MSG_DONTWAIT);
		size_t left;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			struct pollfd pfd = {.fd = p->nl, .events = POLLIN};

			if (waited)
				return -ETIMEDOUT;
			waited = true;
			(void)poll(&pfd, 1, PEER_NL_WAIT_MS);
			continue;
		}
		if (n < 0)
			return -errno;
		left = (size_t)n;
		for (struct nlmsghdr *h = &ans.h; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
			const struct inet_diag_msg *m;

			if (h->nlmsg_seq != p->seq)
				continue; /* a late answer to an earlier lookup */
			if (h->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *err = NLMSG_DATA(h);

				if (h->nlmsg_len < NLMSG_LENGTH(sizeof(*err)))
					return -EIO;
				return err->error < 0 ? err->error : -ENOENT;
			}
			if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
			    h->nlmsg_len < NLMSG_LENGTH(sizeof(*m)))
				continue;
			m = NLMSG_DATA(h);
			/* no inode: a TIME_WAIT or orphaned socket, whose uid reads as 0 */
			if (m->idiag_inode == 0)
				return -ENOENT;
			*uid = (uid_t)m->idiag_uid;
			return 0;
		}
	}
}

/* "0100007F:1F90" as /proc/net/tcp{,6} print an address (its raw 32-bit words) and port. */
static void
proc_format(char *out, size_t size, int family, const unsigned char *addr, uint16_t port)
{
	uint32_t w[4];
	int n = 0;

	memcpy(w, addr, family == AF_INET ? 4 : 16);
	for (int i = 0; i < (family == AF_INET ? 1 : 4); i++)
		n += snprintf(out + n, size - (size_t)n, "%08X", (unsigned)w[i]);
	snprintf(out + n, size - (size_t)n, ":%04X", (unsigned)ntohs(port));
}

/* The uid of the line whose local and remote addresses are want_l and want_r; -ENOENT. */
static int
proc_line(char *line, const char *want_l, const char *want_r, uid_t *uid)
{
	char *field[10], *save = NULL, *t;
	int n = 0;

	for (t = strtok_r(line, " \t", &save); t != NULL && n < 10;
	     t = strtok_r(NULL, " \t", &save))
		field[n++] = t;
	/* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
	if (n < 10 || strcmp(field[1], want_l) != 0 || strcmp(field[2], want_r) != 0)
		return -ENOENT;
	if (strcmp(field[9], "0") == 0)
		return -ENOENT; /* TIME_WAIT or orphaned: no owner */
	*uid = (uid_t)strtoul(field[7], NULL, 10);
	return 0;
}

static int
proc_lookup(const struct ends *e, uid_t *uid)
{
	char want_l[64], want_r[64], buf[PEER_PROC_LINE * 16];
	size_t have = 0, total = 0;
	int fd, r = -ENOENT;

	/* the other end's local address is our remote one */
	proc_format(want_l, sizeof(want_l), e->family, e->remote, e->rport);
	proc_format(want_r, sizeof(want_r), e->family, e->local, e->lport);
	fd = open(e->family == AF_INET ? "/proc/net/tcp" : "/proc/net/tcp6", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while (r == -ENOENT && total < PEER_PROC_MAX) {
		ssize_t got = read(fd, buf + have, sizeof(buf) - 1 - have);
		char *line = buf, *nl;

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			r = got < 0 ? -errno : -ENOENT;
			break;
		}
		have += (size_t)got;
		total += (size_t)got;
		buf[have] = '\0';
		while (r == -ENOENT && (nl = strchr(line, '\n')) != NULL) {
			*nl = '\0';
			r = proc_line(line, want_l, want_r, uid);
			line = nl + 1;
		}
		have -= (size_t)(line - buf);
		memmove(buf, line, have);
		if (have >= sizeof(buf) - 1)
			have = 0; /* no line is this long: skip it */
	}
	close(fd);
	return r;
}

int
peer_tcp_uid(struct peer *p, int fd, uid_t *uid)
{
	struct ends e;
	int r = ends_of(fd, &e);

	if (r < 0)
		return r;
	if (p->nl >= 0) {
		r = nl_lookup(p, &e, uid);
		/* not found is an answer; a refused or lost lookup tries /proc */
		if (r == 0 || r == -ENOENT)
			return r;
	}
	return proc_lookup(&e, uid);
}
