/*
 * HTTP/1.1 server layer: listeners and connections on libevent, one request at
 * a time per connection, bounded heads and bodies, timeouts, and replies
 * written straight to the socket when it can take them.  evhttp is too slow
 * for the performance targets and cannot do CONNECT, hence this layer.  The
 * hot path is one read and one sendmsg per request: connections use plain
 * events with evbuffers rather than bufferevents, whose evbuffer_read adds a
 * FIONREAD ioctl to every read (a third of the syscalls of a cache hit).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "clock.h"
#include "config.h"
#include "hex.h"
#include "http.h"
#include "log.h"
#include "peer.h"

#define HEAD_STACK_SIZE	 512   /* reply heads up to this size are rendered on the stack */
#define SEND_IOV_MAX	 16    /* iovecs of an evbuffer body sent directly */
#define CHUNK_LINE_MAX	 1024  /* chunk-size line including extensions */
#define BUF_KEEP	 16384 /* request buffers above this are freed after the reply */
#define LINGER_MS	 2000  /* discard input this long after a final error reply */
#define LINGER_MAX_BYTES (1u << 20)
#define ACCEPT_RETRY_MS	 100 /* accept pause after EMFILE and friends */
#define TIMER_SLACK_MS	 5
#define READ_SIZE	 4000	     /* bytes per read: a 4 KiB chain with evbuffer's header */
#define UID_UNKNOWN	 ((uid_t)-1) /* the bucket of TCP peers whose owner is not known */

enum conn_state {
	CONN_HEAD,	 /* waiting for a request head (idle when nothing has arrived) */
	CONN_BODY,	 /* reading a Content-Length body */
	CONN_CHUNK_SIZE, /* chunked body: the chunk-size line */
	CONN_CHUNK_DATA, /* chunked body: chunk data */
	CONN_CHUNK_CRLF, /* chunked body: CRLF after the data */
	CONN_TRAILER,	 /* chunked body: trailer section */
	CONN_PENDING,	 /* the handler holds the request */
	CONN_WRITING,	 /* the reply drains; keep-alive afterwards */
	CONN_CLOSING,	 /* the final reply drains; close afterwards */
	CONN_LINGER,	 /* write side shut; input discarded until EOF or timeout */
	CONN_DEAD,	 /* socket gone; the handler still holds the request */
	CONN_CLOSED,	 /* socket gone; freed when our callbacks unwind */
};

struct http_request {
	struct http_conn *conn;
	struct http_head head; /* strings point into conn->buf, NUL-terminated */
	const char *body;
	size_t body_len;
	http_cancel_fn *cancel_fn;
	void *cancel_arg;
};

struct http_conn {
	LIST_ENTRY(http_conn) link;
	struct http_server *server;
	int fd;		      /* -1 once closed */
	struct evbuffer *in;  /* received, not yet consumed */
	struct evbuffer *out; /* reply bytes the socket did not take at once */
	struct event *rev;    /* readable; removed while input is over its bound, and after EOF */
	struct event *wev;    /* writable, while out is not empty; write_timeout */
	struct event *timer;  /* idle, request and linger timeouts */
	struct event *resume; /* parses buffered input after an asynchronous reply */
	enum conn_state state;
	unsigned depth; /* our callbacks on the stack: free only when it drops to 0 */
	bool in_process;
	bool reading;	  /* rev is added */
	bool eof;	  /* the peer shut down its side */
	bool close_after; /* close once the current reply is written */
	bool linger;	  /* the peer may still be sending: shut down gently */
	bool started;	  /* bytes of the current request have arrived */
	bool fresh;	  /* no request yet: header_timeout runs from the accept */
	bool is_unix;
	struct ucred cred;
	uid_t uid; /* the per-uid bucket this connection counts in (UID_UNKNOWN for some TCP) */
	uint64_t since;	   /* ms: start of the idle period or of the request */
	uint64_t deadline; /* ms: when the timer fires, 0 when it is not armed */
	size_t parsed_len; /* input length at the last incomplete parse */
	size_t scanned;	   /* input already searched for the blank line */
	size_t lingered;
	char *buf; /* head copy and body of the current request */
	size_t buf_len, buf_cap, head_len;
	uint64_t chunk_left;
	size_t trailer_len;
	struct http_request req;
};

struct http_listener {
	LIST_ENTRY(http_listener) link;
	struct http_server *server;
	struct evconnlistener *evl;
	struct event *retry;
};

/* Open connections of one peer uid. */
struct uid_count {
	uid_t uid;
	unsigned n;
};

struct http_server {
	struct event_base *base;
	struct http_limits limits;
	http_handler_fn *handler;
	void *arg;
	LIST_HEAD(, http_listener) listeners;
	LIST_HEAD(, http_conn) conns;
	unsigned nconns;
	struct uid_count *uids; /* one per uid with open connections: few, searched linearly */
	size_t nuids, uids_cap;
	struct peer *peer; /* owner lookups of TCP peers, opened at the first TCP connection */
	unsigned npending;
	size_t in_max; /* input buffered beyond this pauses reading */
	struct timeval write_tv;
	bool stopping;
};

static void
arm_timer(struct event *ev, uint64_t ms)
{
	struct timeval tv = {.tv_sec = (time_t)(ms / 1000),
			     .tv_usec = (suseconds_t)(ms % 1000) * 1000};

	event_add(ev, &tv);
}

/*
 * Makes the connection timer fire no later than deadline.  The timer is lazy:
 * it stays armed and re-evaluates when it fires, so the hot path only records
 * timestamps.
 */
static void
conn_arm(struct http_conn *c, uint64_t deadline)
{
	uint64_t now;

	if (c->timer == NULL || (c->deadline != 0 && c->deadline <= deadline))
		return;
	now = (uint64_t)clock_coarse_ms();
	arm_timer(c->timer, (deadline > now ? deadline - now : 0) + TIMER_SLACK_MS);
	c->deadline = deadline;
}

static void
event_free_null(struct event **ev)
{
	if (*ev != NULL)
		event_free(*ev);
	*ev = NULL;
}

static struct uid_count *
uid_find(struct http_server *s, uid_t uid)
{
	for (size_t i = 0; i < s->nuids; i++)
		if (s->uids[i].uid == uid)
			return &s->uids[i];
	return NULL;
}

/* Counts a connection of uid; -ENOMEM. */
static int
uid_add(struct http_server *s, uid_t uid)
{
	struct uid_count *u = uid_find(s, uid);

	if (u == NULL) {
		if (s->nuids == s->uids_cap) {
			size_t cap = s->uids_cap > 0 ? s->uids_cap * 2 : 8;
			struct uid_count *n = realloc(s->uids, cap * sizeof(*n));

			if (n == NULL)
				return -ENOMEM;
			s->uids = n;
			s->uids_cap = cap;
		}
		u = &s->uids[s->nuids++];
		*u = (struct uid_count){.uid = uid};
	}
	u->n++;
	return 0;
}

static void
uid_remove(struct http_server *s, uid_t uid)
{
	struct uid_count *u = uid_find(s, uid);

	if (u != NULL && --u->n == 0)
		*u = s->uids[--s->nuids];
}

/* Frees the socket side: events, buffers and the descriptor. */
static void
conn_shut(struct http_conn *c)
{
	if (c->fd < 0)
		return;
	event_free_null(&c->rev);
	event_free_null(&c->wev);
	event_free_null(&c->timer);
	event_free_null(&c->resume);
	if (c->in != NULL)
		evbuffer_free(c->in);
	if (c->out != NULL)
		evbuffer_free(c->out);
	c->in = NULL;
	c->out = NULL;
	close(c->fd);
	c->fd = -1;
	c->server->nconns--;
	uid_remove(c->server, c->uid);
}

static void
conn_set_reading(struct http_conn *c, bool on)
{
	if (c->reading == on || c->rev == NULL)
		return;
	if (on)
		event_add(c->rev, NULL);
	else
		event_del(c->rev);
	c->reading = on;
}

static void
conn_free(struct http_conn *c)
{
	conn_shut(c);
	LIST_REMOVE(c, link);
	free(c->buf);
	free(c);
}

/* Leaves one of our callbacks; frees the connection if it closed meanwhile. */
static void
conn_leave(struct http_conn *c)
{
	if (--c->depth == 0 && c->state == CONN_CLOSED)
		conn_free(c);
}

/* Closes now; a pending request is cancelled (or kept for its handler). */
static void
conn_close(struct http_conn *c)
{
	if (c->state == CONN_CLOSED || c->state == CONN_DEAD)
		return;
	if (c->state == CONN_PENDING) {
		c->server->npending--;
		if (c->req.cancel_fn == NULL) {
			/* Nobody to tell: keep req valid until the handler replies. */
			conn_shut(c);
			c->state = CONN_DEAD;
			return;
		}
		c->state = CONN_CLOSED;
		c->req.cancel_fn(&c->req, c->req.cancel_arg);
	}
	c->state = CONN_CLOSED;
	conn_shut(c);
	if (c->depth == 0)
		conn_free(c);
}

static char *
put(char *p, const char *s, size_t n)
{
	if (n > 0)
		memcpy(p, s, n);
	return p + n;
}

static char *
put_uint(char *p, uint64_t v)
{
	char tmp[20];
	int i = 0;

	do {
		tmp[i++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	while (i > 0)
		*p++ = tmp[--i];
	return p;
}

#define PUT_LIT(p, s) put((p), (s), sizeof(s) - 1)

/* sendmsg without SIGPIPE: bytes sent (0 when the socket is full) or a negative errno. */
static ssize_t
send_iov(int fd, struct iovec *iov, size_t n)
{
	struct msghdr mh = {.msg_iov = iov, .msg_iovlen = n};
	ssize_t r = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);

	if (r >= 0)
		return r;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
		return 0;
	return -errno;
}

/* Writes as much of c->out as the socket takes; 0 or a negative errno. */
static int
conn_flush(struct http_conn *c)
{
	struct evbuffer_iovec v[SEND_IOV_MAX];
	struct iovec iov[SEND_IOV_MAX];
	int i, n = evbuffer_peek(c->out, -1, NULL, v, SEND_IOV_MAX);
	ssize_t r;

	if (n > SEND_IOV_MAX)
		n = SEND_IOV_MAX;
	for (i = 0; i < n; i++) {
		iov[i].iov_base = v[i].iov_base;
		iov[i].iov_len = v[i].iov_len;
	}
	r = send_iov(c->fd, iov, (size_t)n);
	if (r < 0)
		return (int)r;
	evbuffer_drain(c->out, (size_t)r);
	return 0;
}

/*
 * Writes head and body: straight to the socket while nothing is queued, the
 * rest into c->out for conn_write_cb.  body_buf (if not NULL) is emptied.
 * Returns 0 or a negative errno when the socket failed.
 */
static int
conn_send(struct http_conn *c, const char *head, size_t head_len, const void *body, size_t body_len,
	  struct evbuffer *body_buf)
{
	struct evbuffer *out = c->out;
	size_t sent = 0;

	if (evbuffer_get_length(out) == 0) {
		struct iovec iov[1 + SEND_IOV_MAX];
		size_t niov = 1;
		ssize_t n;

		iov[0].iov_base = (void *)(uintptr_t)head;
		iov[0].iov_len = head_len;
		if (body_buf != NULL) {
			struct evbuffer_iovec v[SEND_IOV_MAX];
			int i, nv = evbuffer_peek(body_buf, -1, NULL, v, SEND_IOV_MAX);

			for (i = 0; i < nv && i < SEND_IOV_MAX; i++) {
				iov[1 + i].iov_base = v[i].iov_base;
				iov[1 + i].iov_len = v[i].iov_len;
			}
			niov += (size_t)i;
		} else if (body_len > 0) {
			iov[1].iov_base = (void *)(uintptr_t)body;
			iov[1].iov_len = body_len;
			niov = 2;
		}
		n = send_iov(c->fd, iov, niov);
		if (n < 0)
			return (int)n;
		sent = (size_t)n;
	}
	if (sent < head_len) {
		if (evbuffer_add(out, head + sent, head_len - sent) < 0)
			return -ENOMEM;
		sent = 0;
	} else {
		sent -= head_len;
	}
	if (body_buf != NULL) {
		evbuffer_drain(body_buf, sent);
		if (evbuffer_add_buffer(out, body_buf) < 0)
			return -ENOMEM;
	} else if (sent < body_len) {
		if (evbuffer_add(out, (const char *)body + sent, body_len - sent) < 0)
			return -ENOMEM;
	}
	if (evbuffer_get_length(out) > 0 && !event_pending(c->wev, EV_WRITE, NULL))
		event_add(c->wev,
			  c->server->limits.write_timeout > 0 ? &c->server->write_tv : NULL);
	return 0;
}

/* Renders the status line and headers; returns the length. */
static size_t
render_head(char *p0, int status, const char *ct, size_t ct_len, const char *extra,
	    size_t extra_len, bool with_length, uint64_t length, const char *connection)
{
	const char *text = http_status_text(status);
	char *p = p0;

	p = PUT_LIT(p, "HTTP/1.1 ");
	*p++ = (char)('0' + status / 100);
	*p++ = (char)('0' + status / 10 % 10);
	*p++ = (char)('0' + status % 10);
	*p++ = ' ';
	p = put(p, text, strlen(text));
	p = PUT_LIT(p, "\r\n");
	if (ct_len > 0) {
		p = PUT_LIT(p, "Content-Type: ");
		p = put(p, ct, ct_len);
		p = PUT_LIT(p, "\r\n");
	}
	if (with_length) {
		p = PUT_LIT(p, "Content-Length: ");
		p = put_uint(p, length);
		p = PUT_LIT(p, "\r\n");
	}
	p = put(p, extra, extra_len);
	if (connection != NULL)
		p = put(p, connection, strlen(connection));
	p = PUT_LIT(p, "\r\n");
	return (size_t)(p - p0);
}

/* Called when a reply has been written completely. */
static void
conn_reply_done(struct http_conn *c)
{
	struct evbuffer *in = c->in;

	if (c->close_after) {
		if (c->eof || (!c->linger && evbuffer_get_length(in) == 0)) {
			conn_close(c);
			return;
		}
		/* A close with unread input resets the connection and can destroy our reply. */
		shutdown(c->fd, SHUT_WR);
		evbuffer_drain(in, evbuffer_get_length(in));
		conn_set_reading(c, true);
		c->state = CONN_LINGER;
		c->since = (uint64_t)clock_coarse_ms();
		c->lingered = 0;
		conn_arm(c, c->since + LINGER_MS);
		return;
	}
	c->state = CONN_HEAD;
	c->started = false;
	c->parsed_len = 0;
	c->scanned = 0;
	c->since = (uint64_t)clock_coarse_ms();
	if (c->buf_cap > BUF_KEEP) {
		free(c->buf);
		c->buf = NULL;
		c->buf_cap = 0;
	}
}

/*
 * Sends a reply (the handler's or our own) and moves on: next request,
 * draining, or close.  Closing if the socket failed.
 */
static void
conn_reply(struct http_conn *c, int status, const char *content_type, const char *extra_headers,
	   const void *body, size_t body_len, struct evbuffer *body_buf, bool head_only)
{
	struct http_server *s = c->server;
	char stack[HEAD_STACK_SIZE], *head = stack;
	size_t ct_len = content_type != NULL ? strlen(content_type) : 0;
	size_t extra_len = extra_headers != NULL ? strlen(extra_headers) : 0;
	size_t need, head_len;
	uint64_t length = body_buf != NULL ? evbuffer_get_length(body_buf) : body_len;
	bool bodiless = status < 200 || status == 204 || status == 304;
	const char *connection = NULL;
	int r;

	if (status < 100 || status > 999)
		status = 500;
	if (s->stopping || !c->req.head.keep_alive)
		c->close_after = true;
	if (c->close_after)
		connection = "Connection: close\r\n";
	else if (c->req.head.minor == 0)
		connection = "Connection: keep-alive\r\n";

	need = 64 + strlen(http_status_text(status)) + ct_len + extra_len + 64;
	if (need > sizeof(stack)) {
		head = malloc(need);
		if (head == NULL) {
			conn_close(c);
			return;
		}
	}
	head_len = render_head(head, status, content_type, ct_len, extra_headers, extra_len,
			       status != 204 && status >= 200, length, connection);
	if (head_only || bodiless) {
		if (body_buf != NULL)
			evbuffer_drain(body_buf, evbuffer_get_length(body_buf));
		r = conn_send(c, head, head_len, NULL, 0, NULL);
	} else {
		r = conn_send(c, head, head_len, body, body_len, body_buf);
	}
	if (head != stack)
		free(head);
	if (r < 0) {
		log_debug("http reply failed", "status=%d error=%d", status, -r);
		conn_close(c);
		return;
	}
	if (evbuffer_get_length(c->out) == 0) {
		conn_reply_done(c);
		return;
	}
	c->state = c->close_after ? CONN_CLOSING : CONN_WRITING;
}

/* Rejects the request being read with a JSON error and closes after it. */
static void
conn_fail(struct http_conn *c, int status, const char *description)
{
	char body[192];
	int n;

	log_debug("http request rejected", "status=%d reason=\"%s\"", status, description);
	n = snprintf(body, sizeof(body), "{\"error\":\"%s\",\"error_description\":\"%s\"}",
		     status == 503 ? "temporarily_unavailable" : "invalid_request", description);
	if (n < 0 || (size_t)n >= sizeof(body))
		n = 0;
	c->close_after = true;
	c->linger = true;
	c->req.head.minor = 1;
	conn_reply(c, status, "application/json", NULL, body, (size_t)n, NULL, false);
}

/* Notes that the current request is incomplete and bounds how long it may take. */
static int
conn_wait(struct http_conn *c)
{
	if (!c->started) {
		c->started = true;
		/* a new connection's first head is due header_timeout after the accept */
		if (!c->fresh)
			c->since = (uint64_t)clock_coarse_ms();
		if (c->server->limits.head_timeout > 0)
			conn_arm(c, c->since + (uint64_t)c->server->limits.head_timeout * 1000);
	}
	return 0;
}

static int
conn_reserve(struct http_conn *c, size_t need)
{
	size_t cap;
	char *p;

	if (need < c->buf_cap)
		return 0;
	cap = c->buf_cap > 0 ? c->buf_cap : 1024;
	while (cap <= need)
		cap *= 2;
	p = realloc(c->buf, cap);
	if (p == NULL)
		return -ENOMEM;
	c->buf = p;
	c->buf_cap = cap;
	return 0;
}

/* Hands the complete request to the handler. */
static void
conn_dispatch(struct http_conn *c)
{
	struct http_server *s = c->server;
	struct http_request *req = &c->req;

	c->buf[c->buf_len] = '\0';
	req->body = c->buf + c->head_len;
	req->body_len = c->buf_len - c->head_len;
	req->cancel_fn = NULL;
	req->cancel_arg = NULL;
	c->state = CONN_PENDING;
	c->started = false;
	c->fresh = false;
	s->npending++;
	s->handler(req, s->arg);
}

/* Moves the parsed head from the input buffer into conn->buf, NUL-terminating its strings. */
static void
conn_take_head(struct http_conn *c, const char *src, size_t len)
{
	struct http_head *h = &c->req.head;
	char *dst = c->buf;
	size_t off;
	int i;

	memcpy(dst, src, len);
	/* Each string is followed by SP, ':', OWS or CR inside the head: room for a NUL. */
	off = (size_t)(h->method - src);
	h->method = dst + off;
	dst[off + h->method_len] = '\0';
	off = (size_t)(h->target - src);
	h->target = dst + off;
	dst[off + h->target_len] = '\0';
	for (i = 0; i < h->nheaders; i++) {
		struct http_header *f = &h->headers[i];

		off = (size_t)(f->name - src);
		f->name = dst + off;
		dst[off + f->name_len] = '\0';
		off = (size_t)(f->value - src);
		f->value = dst + off;
		dst[off + f->value_len] = '\0';
	}
	c->head_len = len;
	c->buf_len = len;
}

/* Answers Expect: 100-continue; returns -1 after rejecting another expectation. */
static int
conn_expect(struct http_conn *c, size_t body_have, uint64_t body_need)
{
	static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
	const struct http_header *e = http_head_find(&c->req.head, "expect");

	if (e == NULL || c->req.head.minor == 0)
		return 0;
	if (e->value_len != 12 || strncasecmp(e->value, "100-continue", 12) != 0) {
		conn_fail(c, 417, "unsupported expectation");
		return -1;
	}
	if (body_have >= body_need)
		return 0;
	if (conn_send(c, cont, sizeof(cont) - 1, NULL, 0, NULL) < 0) {
		conn_close(c);
		return -1;
	}
	return 0;
}

/* Returns 1 when it made progress, 0 when it needs more input, -1 when it closed. */
static int
conn_read_head(struct http_conn *c)
{
	struct http_server *s = c->server;
	struct evbuffer *in = c->in;
	struct http_head *h = &c->req.head;
	size_t len = evbuffer_get_length(in), max = s->limits.max_head, want, contig;
	const char *p = NULL;
	uint64_t body_need;
	int r = 0;

	if (len == 0)
		return 0;
	want = len < max ? len : max;
	contig = evbuffer_get_contiguous_space(in);
	if (c->parsed_len == 0 && contig < want) {
		/* Most heads sit in the first chain: try it before linearising pipelined input. */
		p = (const char *)evbuffer_pullup(in, (ev_ssize_t)contig);
		r = http_parse_request_head(p, contig, h);
	}
	if (r == 0) {
		p = (const char *)evbuffer_pullup(in, (ev_ssize_t)want);
		if (p == NULL) {
			conn_close(c);
			return -1;
		}
		if (c->parsed_len > 0 && want < max && want < 2 * c->parsed_len) {
			/* Re-parse a trickling head only when it may be complete or has doubled. */
			size_t from = c->scanned > 3 ? c->scanned - 3 : 0;

			if (memmem(p + from, want - from, "\r\n\r\n", 4) == NULL) {
				c->scanned = want;
				return conn_wait(c);
			}
		}
		r = http_parse_request_head(p, want, h);
		if (r == 0) {
			if (want >= max) {
				conn_fail(c, 431, "request head too large");
				return -1;
			}
			c->parsed_len = want;
			c->scanned = want;
			return conn_wait(c);
		}
	}
	if (r < 0) {
		if (r == -ENOTSUP)
			conn_fail(c, 505, "unsupported HTTP version");
		else if (r == -E2BIG)
			conn_fail(c, 431, "too many header fields");
		else
			conn_fail(c, 400, "malformed request");
		return -1;
	}

	body_need = h->chunked ? 0 : h->content_length > 0 ? (uint64_t)h->content_length : 0;
	if (body_need > s->limits.max_body) {
		conn_fail(c, 413, "request body too large");
		return -1;
	}
	if (conn_reserve(c, (size_t)r + (h->chunked ? s->limits.max_body : body_need)) < 0) {
		conn_close(c);
		return -1;
	}
	conn_take_head(c, p, (size_t)r);
	evbuffer_drain(in, (size_t)r);
	c->parsed_len = 0;
	c->scanned = 0;
	if (h->chunked || body_need > 0) {
		if (conn_expect(c, h->chunked ? 0 : len - (size_t)r, h->chunked ? 1 : body_need) <
		    0)
			return -1;
		c->chunk_left = body_need;
		c->trailer_len = 0;
		c->state = h->chunked ? CONN_CHUNK_SIZE : CONN_BODY;
		return 1;
	}
	conn_dispatch(c);
	return 1;
}

static int
conn_read_body(struct http_conn *c)
{
	struct evbuffer *in = c->in;

	if (evbuffer_get_length(in) < c->chunk_left)
		return conn_wait(c);
	evbuffer_remove(in, c->buf + c->buf_len, (size_t)c->chunk_left);
	c->buf_len += (size_t)c->chunk_left;
	conn_dispatch(c);
	return 1;
}

/*
 * Reads one CRLF-terminated line of a chunked body, at most CHUNK_LINE_MAX
 * bytes: returns its length without CRLF (the line is at *line, in the input
 * buffer), -EAGAIN when incomplete, -EINVAL when malformed.
 */
static ssize_t
conn_read_line(struct http_conn *c, const char **line)
{
	struct evbuffer *in = c->in;
	size_t len = evbuffer_get_length(in), n = len < CHUNK_LINE_MAX ? len : CHUNK_LINE_MAX, i;
	const unsigned char *p;
	const unsigned char *lf;

	if (n == 0)
		return -EAGAIN;
	p = evbuffer_pullup(in, (ev_ssize_t)n);
	if (p == NULL)
		return -ENOMEM;
	lf = memchr(p, '\n', n);
	if (lf == NULL)
		return n >= CHUNK_LINE_MAX ? -EINVAL : -EAGAIN;
	if (lf == p || lf[-1] != '\r')
		return -EINVAL;
	for (i = 0; p + i < lf - 1; i++)
		if ((p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f)
			return -EINVAL;
	*line = (const char *)p;
	return lf - 1 - p;
}

/* chunk-size [ BWS ";" chunk-ext ]: returns 0 or -EINVAL. */
static int
parse_chunk_size(const char *p, size_t len, uint64_t *size)
{
	uint64_t v = 0;
	size_t i = 0;

	for (; i < len && hex_value(p[i]) >= 0; i++) {
		if (i >= 15)
			return -EINVAL;
		v = v << 4 | (uint64_t)hex_value(p[i]);
	}
	if (i == 0)
		return -EINVAL;
	while (i < len && (p[i] == ' ' || p[i] == '\t'))
		i++;
	if (i < len && p[i] != ';')
		return -EINVAL;
	*size = v;
	return 0;
}

static int
conn_read_chunked(struct http_conn *c)
{
	struct http_server *s = c->server;
	struct evbuffer *in = c->in;
	const char *line = NULL;
	ssize_t n;
	uint64_t size;

	for (;;) {
		size_t len = evbuffer_get_length(in), take;

		switch (c->state) {
		case CONN_CHUNK_SIZE:
			n = conn_read_line(c, &line);
			if (n == -EAGAIN)
				return conn_wait(c);
			if (n < 0 || parse_chunk_size(line, (size_t)n, &size) < 0) {
				conn_fail(c, 400, "malformed chunked body");
				return -1;
			}
			evbuffer_drain(in, (size_t)n + 2);
			if (size > s->limits.max_body - (c->buf_len - c->head_len)) {
				conn_fail(c, 413, "request body too large");
				return -1;
			}
			c->chunk_left = size;
			c->state = size > 0 ? CONN_CHUNK_DATA : CONN_TRAILER;
			break;
		case CONN_CHUNK_DATA:
			if (len == 0)
				return conn_wait(c);
			take = len < c->chunk_left ? len : (size_t)c->chunk_left;
			evbuffer_remove(in, c->buf + c->buf_len, take);
			c->buf_len += take;
			c->chunk_left -= take;
			if (c->chunk_left == 0)
				c->state = CONN_CHUNK_CRLF;
			break;
		case CONN_CHUNK_CRLF: {
			const unsigned char *p;

			if (len < 2)
				return conn_wait(c);
			p = evbuffer_pullup(in, 2);
			if (p == NULL || p[0] != '\r' || p[1] != '\n') {
				conn_fail(c, 400, "malformed chunked body");
				return -1;
			}
			evbuffer_drain(in, 2);
			c->state = CONN_CHUNK_SIZE;
			break;
		}
		case CONN_TRAILER:
			/* Trailer fields are read (bounded like a head) and dropped. */
			n = conn_read_line(c, &line);
			if (n == -EAGAIN)
				return conn_wait(c);
			if (n < 0 || (n > 0 && (line[0] == ' ' || line[0] == '\t' ||
						memchr(line, ':', (size_t)n) == NULL))) {
				conn_fail(c, 400, "malformed trailer");
				return -1;
			}
			evbuffer_drain(in, (size_t)n + 2);
			c->trailer_len += (size_t)n + 2;
			if (c->trailer_len > s->limits.max_head) {
				conn_fail(c, 431, "trailer too large");
				return -1;
			}
			if (n == 0) {
				conn_dispatch(c);
				return 1;
			}
			break;
		default:
			return 1;
		}
	}
}

/* Consumes buffered input for as long as requests complete. */
static void
conn_process(struct http_conn *c)
{
	int r;

	c->in_process = true;
	do {
		switch (c->state) {
		case CONN_HEAD:
			r = conn_read_head(c);
			break;
		case CONN_BODY:
			r = conn_read_body(c);
			break;
		case CONN_CHUNK_SIZE:
		case CONN_CHUNK_DATA:
		case CONN_CHUNK_CRLF:
		case CONN_TRAILER:
			r = conn_read_chunked(c);
			break;
		default:
			r = 0;
			break;
		}
	} while (r > 0);
	c->in_process = false;
	/* Buffer at most about one request's worth while the current one is in progress. */
	if (c->fd >= 0 && c->state != CONN_LINGER && !c->eof)
		conn_set_reading(c, evbuffer_get_length(c->in) < c->server->in_max);
}

/* Discards input after a final reply until the peer closes (bounded). */
static void
conn_linger_read(struct http_conn *c)
{
	char sink[4096];
	ssize_t n = read(c->fd, sink, sizeof(sink));

	if (n > 0) {
		c->lingered += (size_t)n;
		if (c->lingered > LINGER_MAX_BYTES)
			conn_close(c);
	} else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
		conn_close(c);
	}
}

/* The peer shut down its side (or closed). */
static void
conn_eof(struct http_conn *c)
{
	c->eof = true;
	conn_set_reading(c, false);
	if (c->state == CONN_WRITING || c->state == CONN_CLOSING) {
		/* Maybe only half-closed: finish the reply, then close. */
		c->close_after = true;
		c->linger = false;
		c->state = CONN_CLOSING;
		return;
	}
	conn_close(c);
}

static void
conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;
	struct evbuffer_iovec v;
	ssize_t n;

	c->depth++;
	if (c->state == CONN_LINGER) {
		conn_linger_read(c);
		goto out;
	}
	if (evbuffer_reserve_space(c->in, READ_SIZE, &v, 1) < 1) {
		conn_close(c);
		goto out;
	}
	n = read(c->fd, v.iov_base, v.iov_len);
	if (n > 0) {
		v.iov_len = (size_t)n;
		evbuffer_commit_space(c->in, &v, 1);
		conn_process(c);
	} else if (n == 0) {
		conn_eof(c);
	} else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
		conn_close(c);
	}
out:
	conn_leave(c);
}

static void
conn_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;

	c->depth++;
	if ((what & EV_TIMEOUT) || conn_flush(c) < 0) {
		log_debug("http write failed", "timeout=%d", (what & EV_TIMEOUT) != 0);
		conn_close(c);
	} else if (evbuffer_get_length(c->out) == 0) {
		event_del(c->wev);
		if (c->state == CONN_WRITING || c->state == CONN_CLOSING) {
			conn_reply_done(c);
			conn_process(c);
		}
	}
	conn_leave(c);
}

static void
conn_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;

	c->depth++;
	conn_process(c);
	conn_leave(c);
}

static void
conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;
	const struct http_limits *l = &c->server->limits;
	uint64_t now = (uint64_t)clock_coarse_ms(), head = (uint64_t)l->head_timeout * 1000,
		 idle = (uint64_t)l->idle_timeout * 1000;
	/* With nothing to enforce the timer still ticks, so that it is armed when needed. */
	uint64_t next = now + (idle > 0 ? idle : 60000);

	c->deadline = 0;
	c->depth++;
	switch (c->state) {
	case CONN_HEAD:
	case CONN_BODY:
	case CONN_CHUNK_SIZE:
	case CONN_CHUNK_DATA:
	case CONN_CHUNK_CRLF:
	case CONN_TRAILER:
		if (c->started && head > 0) {
			if (now >= c->since + head) {
				conn_fail(c, 408, "request timed out");
				goto out;
			}
			next = c->since + head;
		} else if (!c->started) {
			/*
			 * Idle between requests: keepalive.  Silent since the accept: a
			 * socket held open, not a client; header_timeout if shorter.
			 */
			uint64_t limit =
			    c->fresh && head > 0 && (idle == 0 || head < idle) ? head : idle;

			if (limit > 0 && now >= c->since + limit) {
				conn_close(c);
				goto out;
			}
			if (limit > 0)
				next = c->since + limit;
		}
		break;
	case CONN_LINGER:
		if (now >= c->since + LINGER_MS) {
			conn_close(c);
			goto out;
		}
		next = c->since + LINGER_MS;
		break;
	default:
		/* Pending and writing are not ours to time out (handler, write_timeout). */
		break;
	}
	conn_arm(c, next);
out:
	conn_leave(c);
}

/* Best-effort 503 for a connection over the limits, then close. */
static void
reject_busy(int fd)
{
#define BUSY_BODY                                                                                  \
	"{\"error\":\"temporarily_unavailable\",\"error_description\":\"too many connections\"}"
	static const char msg[] =
	    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
	    "Retry-After: 1\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n%s";
	char buf[512];
	int n;

	n = snprintf(buf, sizeof(buf), msg, sizeof(BUSY_BODY) - 1, BUSY_BODY);
#undef BUSY_BODY
	(void)send(fd, buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
	/* what the client already sent is read, so that close() does not reset the answer */
	(void)shutdown(fd, SHUT_WR);
	for (int i = 0; i < 4 && recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0; i++)
		;
	close(fd);
}

/*
 * The uid a new connection counts under: SO_PEERCRED on the Unix socket,
 * the owner of the other end for TCP (UID_UNKNOWN when that is not a socket
 * of this host or the lookup fails).  False when the connection must go.
 */
static bool
accept_peer(struct http_server *s, int fd, const struct sockaddr *sa, struct ucred *cred,
	    uid_t *uid)
{
	int r;

	if (sa != NULL && sa->sa_family == AF_UNIX) {
		r = peer_unix(fd, cred);
		if (r < 0) {
			log_warn("SO_PEERCRED failed", "fd=%d", fd);
			return false;
		}
		*uid = cred->uid;
		return true;
	}
	*uid = UID_UNKNOWN;
	if (s->peer == NULL) {
		if (peer_new(&s->peer, PEER_AUTO) < 0)
			return true;
		if (strcmp(peer_method_name(s->peer), "proc") == 0)
			log_info("TCP peers are identified through /proc/net/tcp (netlink is not "
				 "available; allow AF_NETLINK for sock_diag)",
				 "");
		else
			log_debug("TCP peers are identified through sock_diag", "");
	}
	r = peer_tcp_uid(s->peer, fd, uid);
	if (r < 0) {
		log_debug("http peer not identified", "error=\"%s\"", strerror(-r));
		*uid = UID_UNKNOWN;
	}
	return true;
}

static void
listener_accept_cb(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa, int socklen,
		   void *arg)
{
	struct http_listener *lst = arg;
	struct http_server *s = lst->server;
	const struct http_limits *l = &s->limits;
	struct http_conn *c;
	struct ucred cred = {0};
	const struct uid_count *u;
	bool is_unix = sa != NULL && sa->sa_family == AF_UNIX;
	uid_t uid;
	int one = 1;

	if (s->nconns >= l->max_conns) {
		log_debug("http connection refused", "reason=max_conns conns=%u", s->nconns);
		reject_busy(fd);
		return;
	}
	if (!accept_peer(s, fd, sa, &cred, &uid)) {
		close(fd);
		return;
	}
	u = uid_find(s, uid);
	if (l->max_conns_per_uid > 0 && u != NULL && u->n >= l->max_conns_per_uid) {
		if (uid == UID_UNKNOWN)
			log_debug("http connection refused",
				  "reason=max_conns_per_uid uid=unknown");
		else
			log_debug("http connection refused", "reason=max_conns_per_uid uid=%u",
				  (unsigned)uid);
		reject_busy(fd);
		return;
	}
	if (!is_unix && sa != NULL && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6))
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	c = calloc(1, sizeof(*c));
	if (c == NULL || uid_add(s, uid) < 0) {
		free(c);
		close(fd);
		return;
	}
	c->server = s;
	c->req.conn = c;
	c->is_unix = is_unix;
	c->cred = cred;
	c->uid = uid;
	c->fd = fd;
	LIST_INSERT_HEAD(&s->conns, c, link);
	s->nconns++;
	c->in = evbuffer_new();
	c->out = evbuffer_new();
	c->rev = event_new(s->base, fd, EV_READ | EV_PERSIST, conn_read_cb, c);
	c->wev = event_new(s->base, fd, EV_WRITE | EV_PERSIST, conn_write_cb, c);
	c->timer = evtimer_new(s->base, conn_timer_cb, c);
	c->resume = event_new(s->base, -1, 0, conn_resume_cb, c);
	if (c->in == NULL || c->out == NULL || c->rev == NULL || c->wev == NULL ||
	    c->timer == NULL || c->resume == NULL) {
		c->state = CONN_CLOSED;
		conn_free(c);
		return;
	}
	conn_set_reading(c, true);
	c->state = CONN_HEAD;
	c->fresh = true;
	c->since = (uint64_t)clock_coarse_ms();
	/* the lazy timer must be due by the earliest deadline the connection may reach */
	if (l->idle_timeout > 0 && (l->head_timeout == 0 || l->idle_timeout < l->head_timeout))
		conn_arm(c, c->since + (uint64_t)l->idle_timeout * 1000);
	else if (l->head_timeout > 0)
		conn_arm(c, c->since + (uint64_t)l->head_timeout * 1000);
}

static void
listener_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_listener *lst = arg;

	evconnlistener_enable(lst->evl);
}

static void
listener_error_cb(struct evconnlistener *evl, void *arg)
{
	struct http_listener *lst = arg;
	int err = errno;

	log_warn("accept failed", "fd=%d", (int)evconnlistener_get_fd(evl));
	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
		/* Out of descriptors or memory: pause instead of spinning on the backlog. */
		evconnlistener_disable(evl);
		arm_timer(lst->retry, ACCEPT_RETRY_MS);
	}
}

static void
listener_free(struct http_listener *lst)
{
	LIST_REMOVE(lst, link);
	evconnlistener_free(lst->evl);
	event_free(lst->retry);
	free(lst);
}

void
http_limits_default(struct http_limits *l)
{
	*l = (struct http_limits){
	    .max_head = 16384,
	    .max_body = 65536,
	    .max_conns = 1024,
	    .idle_timeout = 60,
	    .head_timeout = 10,
	    .write_timeout = 30,
	    .max_conns_per_uid = 256,
	};
}

void
http_limits_from_config(struct http_limits *l, const struct config *cfg)
{
	http_limits_default(l);
	if (cfg->max_connections > 0)
		l->max_conns = cfg->max_connections;
	l->max_conns_per_uid = cfg->max_connections_per_uid;
	if (cfg->header_timeout > 0)
		l->head_timeout = cfg->header_timeout;
	if (cfg->keepalive_timeout > 0)
		l->idle_timeout = cfg->keepalive_timeout;
}

int
http_server_new(struct http_server **out, struct event_base *base, const struct http_limits *limits,
		http_handler_fn *handler, void *arg)
{
	struct http_server *s;

	if (base == NULL || handler == NULL)
		return -EINVAL;
	if (limits != NULL && (limits->max_head < 64 || limits->max_conns == 0 ||
			       limits->max_head > SIZE_MAX / 4 || limits->max_body > SIZE_MAX / 4))
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return -ENOMEM;
	s->base = base;
	if (limits != NULL)
		s->limits = *limits;
	else
		http_limits_default(&s->limits);
	s->handler = handler;
	s->arg = arg;
	s->in_max =
	    (s->limits.max_head > s->limits.max_body ? s->limits.max_head : s->limits.max_body) +
	    READ_SIZE;
	s->write_tv.tv_sec = (time_t)s->limits.write_timeout;
	LIST_INIT(&s->listeners);
	LIST_INIT(&s->conns);
	*out = s;
	return 0;
}

struct http_server *
http_server_free(struct http_server *s)
{
	struct http_conn *c;

	if (s == NULL)
		return NULL;
	while (!LIST_EMPTY(&s->listeners))
		listener_free(LIST_FIRST(&s->listeners));
	while ((c = LIST_FIRST(&s->conns)) != NULL) {
		if (c->state == CONN_PENDING) {
			s->npending--;
			c->state = CONN_CLOSED;
			if (c->req.cancel_fn != NULL)
				c->req.cancel_fn(&c->req, c->req.cancel_arg);
		}
		conn_free(c);
	}
	free(s->uids);
	peer_free(s->peer);
	free(s);
	return NULL;
}

int
http_server_add_listener(struct http_server *s, int fd)
{
	struct http_listener *lst;
	int flags;

	if (s->stopping) {
		close(fd);
		return -ESHUTDOWN;
	}
	flags = fcntl(fd, F_GETFD);
	if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
		goto fail_errno;
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		goto fail_errno;
	lst = calloc(1, sizeof(*lst));
	if (lst == NULL)
		goto fail_nomem;
	lst->server = s;
	lst->retry = evtimer_new(s->base, listener_retry_cb, lst);
	if (lst->retry == NULL)
		goto fail_listener;
	/* Backlog 0: the socket is already listening (maybe from systemd); keep its backlog. */
	lst->evl = evconnlistener_new(s->base, listener_accept_cb, lst,
				      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
	if (lst->evl == NULL)
		goto fail_listener;
	evconnlistener_set_error_cb(lst->evl, listener_error_cb);
	LIST_INSERT_HEAD(&s->listeners, lst, link);
	return 0;

fail_listener:
	if (lst->retry != NULL)
		event_free(lst->retry);
	free(lst);
fail_nomem:
	close(fd);
	return -ENOMEM;
fail_errno:
	flags = -errno;
	close(fd);
	return flags;
}

void
http_server_stop_accepting(struct http_server *s)
{
	struct http_conn *c, *next;

	s->stopping = true;
	while (!LIST_EMPTY(&s->listeners))
		listener_free(LIST_FIRST(&s->listeners));
	for (c = LIST_FIRST(&s->conns); c != NULL; c = next) {
		next = LIST_NEXT(c, link);
		if (c->state == CONN_HEAD && !c->started && c->depth == 0 && c->fd >= 0 &&
		    evbuffer_get_length(c->in) == 0)
			conn_close(c);
	}
}

unsigned
http_server_pending(const struct http_server *s)
{
	return s->npending;
}

unsigned
http_server_connections(const struct http_server *s)
{
	return s->nconns;
}

const struct http_head *
http_request_head(const struct http_request *req)
{
	return &req->head;
}

void
http_request_path(const struct http_request *req, const char **path, size_t *path_len,
		  const char **query, size_t *query_len)
{
	const char *t = req->head.target;
	size_t n = req->head.target_len;
	const char *q = memchr(t, '?', n);
	size_t plen = q != NULL ? (size_t)(q - t) : n;

	if (path != NULL)
		*path = t;
	if (path_len != NULL)
		*path_len = plen;
	if (query != NULL)
		*query = q != NULL ? q + 1 : t + n;
	if (query_len != NULL)
		*query_len = q != NULL ? n - plen - 1 : 0;
}

bool
http_request_method_is(const struct http_request *req, const char *method)
{
	size_t n = strlen(method);

	return req->head.method_len == n && memcmp(req->head.method, method, n) == 0;
}

const struct http_header *
http_request_header(const struct http_request *req, const char *name)
{
	return http_head_find(&req->head, name);
}

const char *
http_request_body(const struct http_request *req, size_t *len)
{
	if (len != NULL)
		*len = req->body_len;
	return req->body;
}

int
http_request_peer(const struct http_request *req, uid_t *uid, gid_t *gid, pid_t *pid)
{
	const struct http_conn *c = req->conn;

	if (!c->is_unix)
		return -ENOTSUP;
	if (uid != NULL)
		*uid = c->cred.uid;
	if (gid != NULL)
		*gid = c->cred.gid;
	if (pid != NULL)
		*pid = c->cred.pid;
	return 0;
}

void
http_request_on_cancel(struct http_request *req, http_cancel_fn *fn, void *arg)
{
	req->cancel_fn = fn;
	req->cancel_arg = arg;
}

/* Common tail of http_reply and http_reply_buffer. */
static void
request_reply(struct http_request *req, int status, const char *content_type,
	      const char *extra_headers, const void *body, size_t body_len,
	      struct evbuffer *body_buf)
{
	struct http_conn *c = req->conn;

	if (c->state == CONN_DEAD) {
		/* The peer left before the reply and nobody registered to hear it. */
		if (body_buf != NULL)
			evbuffer_drain(body_buf, evbuffer_get_length(body_buf));
		c->state = CONN_CLOSED;
		if (c->depth == 0)
			conn_free(c);
		return;
	}
	if (c->state != CONN_PENDING)
		return; /* from a cancel callback, or a second reply */
	c->server->npending--;
	c->state = CONN_WRITING;
	c->depth++;
	conn_reply(c, status, content_type, extra_headers, body, body_len, body_buf,
		   http_request_method_is(req, "HEAD"));
	/* Asynchronous reply: pipelined input waits in the buffer; parse it from the loop. */
	if (!c->in_process && c->state == CONN_HEAD && c->fd >= 0 && evbuffer_get_length(c->in) > 0)
		event_active(c->resume, 0, 0);
	conn_leave(c);
}

void
http_reply(struct http_request *req, int status, const char *content_type,
	   const char *extra_headers, const void *body, size_t body_len)
{
	request_reply(req, status, content_type, extra_headers, body, body_len, NULL);
}

void
http_reply_buffer(struct http_request *req, int status, const char *content_type,
		  const char *extra_headers, struct evbuffer *body)
{
	request_reply(req, status, content_type, extra_headers, NULL, 0, body);
}

const char *
http_status_text(int status)
{
	switch (status) {
	case 100:
		return "Continue";
	case 200:
		return "OK";
	case 201:
		return "Created";
	case 202:
		return "Accepted";
	case 204:
		return "No Content";
	case 301:
		return "Moved Permanently";
	case 302:
		return "Found";
	case 304:
		return "Not Modified";
	case 307:
		return "Temporary Redirect";
	case 308:
		return "Permanent Redirect";
	case 400:
		return "Bad Request";
	case 401:
		return "Unauthorized";
	case 403:
		return "Forbidden";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 406:
		return "Not Acceptable";
	case 408:
		return "Request Timeout";
	case 409:
		return "Conflict";
	case 410:
		return "Gone";
	case 411:
		return "Length Required";
	case 413:
		return "Content Too Large";
	case 414:
		return "URI Too Long";
	case 415:
		return "Unsupported Media Type";
	case 417:
		return "Expectation Failed";
	case 429:
		return "Too Many Requests";
	case 431:
		return "Request Header Fields Too Large";
	case 500:
		return "Internal Server Error";
	case 501:
		return "Not Implemented";
	case 502:
		return "Bad Gateway";
	case 503:
		return "Service Unavailable";
	case 504:
		return "Gateway Timeout";
	case 505:
		return "HTTP Version Not Supported";
	case 508:
		return "Loop Detected";
	default:
		return "Unknown";
	}
}

int
http_listen_tcp(const struct sockaddr_storage *addr, socklen_t addr_len,
		struct sockaddr_storage *bound)
{
	socklen_t blen = sizeof(*bound);
	int fd, one = 1, r;

	fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (const struct sockaddr *)addr, addr_len) < 0 || listen(fd, 512) < 0 ||
	    getsockname(fd, (struct sockaddr *)bound, &blen) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	return fd;
}
