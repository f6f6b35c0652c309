/*
 * The proxy (see proxy.h).  libevent's evhttp cannot do CONNECT nor hand a
 * connection over, and it buffers whole bodies, so this is a small HTTP/1.1
 * relay of its own on bufferevents: request heads are parsed by the strict
 * parser of the local API (http_parse.c), bodies stream both ways through
 * proxy_body.c with watermarks for back-pressure (a slow side stops reads on
 * the other), upstream connections are kept per route and reused.
 *
 * A connection's mode (forward, base URL, intercept, tunnel) is set when it
 * is accepted and changed only by CONNECT.  It waits for a request head
 * (PROXY_CONN_HEAD), then serves the request (PROXY_CONN_REQUEST: BODY_BUFFER
 * -> TOKEN -> FORWARD -> RESPONSE, with REFRESH for a retry) and goes back
 * for the next one on the connection.  Tokens come from the
 * shared cache; they are written into the upstream request and nowhere else
 * (never logged).  Every error before the response head is ours is a JSON
 * reply, after which the connection closes.
 */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "cache.h"
#include "config.h"
#include "config_proxy.h"
#include "http.h"
#include "http_parse.h"
#include "json_write.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "proxy_body.h"
#include "proxy_ca.h"
#include "proxy_route.h"

#define PROXY_MAX_HEAD	     16384	  /* request head; larger -> 431 */
#define PROXY_MAX_RESP_HEAD  65536	  /* upstream response head; larger -> 502 */
#define PROXY_HIGH_WATER     (256 * 1024) /* buffered toward a slow side before reads stop */
#define PROXY_LOW_WATER	     (64 * 1024)  /* ...and resume */
#define PROXY_RETRY_BODY_MAX 65536	  /* bodies kept for a retry */
#define PROXY_POOL_MAX	     256	  /* idle upstream connections per route */
#define PROXY_LINGER_S	     2		  /* reading what a client still sends after our close */
#define PROXY_POLL_MS	     10		  /* checks for a refreshed token */
#define PROXY_BACKLOG	     1024
#define PROXY_VIA	     "Via: 1.1 bearerd\r\n"
#define PROXY_ALLOW	     "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS" /* 405 to TRACE */

/* What a client connection is for: set at accept, changed only by CONNECT. */
enum proxy_mode {
	PROXY_MODE_FORWARD,   /* [proxy] listen: absolute-form targets, CONNECT per policy */
	PROXY_MODE_BASE_URL,  /* a route's own listen: origin-form targets, that route only */
	PROXY_MODE_INTERCEPT, /* after CONNECT (intercept): HTTP inside TLS, by the CONNECT host */
	PROXY_MODE_TUNNEL,    /* after CONNECT (tunnel): bytes relayed as they are, no token */
};

enum proxy_conn_state {
	PROXY_CONN_HEAD,    /* waiting for a request head */
	PROXY_CONN_REQUEST, /* serving a request: see its own state */
	PROXY_CONN_TUNNEL,  /* TUNNEL: relaying both ways */
	PROXY_CONN_CLOSING, /* flushing the last reply, then lingering */
};

/* Flags of a connection: they outlive its requests. */
#define PROXY_CF_HANDSHAKE   0x01u /* INTERCEPT: the TLS handshake is not done yet */
#define PROXY_CF_LINGERING   0x02u /* CLOSING: our side is shut, reading what the client sends */
#define PROXY_CF_CLIENT_EOF  0x04u /* the client shut its sending side (plain connections only) */
#define PROXY_CF_FAR_SHUT    0x08u /* TUNNEL: the far side's sending side shut after CLIENT_EOF */
#define PROXY_CF_READ_PAUSED 0x10u /* client reads stopped: the upstream or far side is behind */
#define PROXY_CF_FAR_PAUSED  0x20u /* upstream or far-side reads stopped: the client is behind */

enum proxy_req_state {
	PROXY_REQ_BODY_BUFFER, /* reading the small body of a retryable request */
	PROXY_REQ_TOKEN,       /* waiting for the cache */
	PROXY_REQ_REFRESH,     /* waiting for a refreshed token after invalid_token */
	PROXY_REQ_FORWARD,     /* the request goes to the upstream; no response head yet */
	PROXY_REQ_RESPONSE,    /* the response head went to the client; the body follows */
	PROXY_REQ_CONNECT,     /* CONNECT, tunnel: the far side is connecting */
};

/* Flags of a request: cleared for the next one. */
#define PROXY_RF_HEAD_STARTED 0x01u /* the first byte of the head arrived (started_ms) */
#define PROXY_RF_STAMP	      0x02u /* bearerd's token goes in */
#define PROXY_RF_RETRYABLE    0x04u /* idempotent, with no body or a small one kept */
#define PROXY_RF_RETRIED      0x08u /* the invalid_token retry was used */
#define PROXY_RF_FRESH_CONN   0x10u /* the retry on a new connection (a stale pooled one) was used \
				     */
#define PROXY_RF_SENT	    0x20u   /* the whole request is with the upstream */
#define PROXY_RF_RESP_CLOSE 0x40u   /* the upstream connection cannot serve another request */
#define PROXY_RF_KEEP_ALIVE 0x80u   /* the client connection serves another request after this */

struct proxy_conn;

/* An upstream connection; idle ones wait in their route's pool. */
struct proxy_upconn {
	struct proxy_upstream *upstream; /* NULL once out of the pool for good */
	struct bufferevent *bev;
	struct proxy_conn *conn; /* whose request it serves; NULL when idle */
	TAILQ_ENTRY(proxy_upconn) link;
	unsigned uses;
	bool connected;
};

TAILQ_HEAD(proxy_upconn_list, proxy_upconn);

/* Per route: TLS context, pool, cache entry. */
struct proxy_upstream {
	struct proxy *proxy;
	const struct config_route *route;
	SSL_CTX *ssl;
	struct cache_entry *entry; /* NULL with passthrough */
	char *host_field;	   /* "Host: h[:port]\r\n" */
	size_t host_field_len;
	struct proxy_upconn_list idle;
	unsigned n_idle;
};

struct proxy_listener {
	struct proxy *proxy;
	struct evconnlistener *evl;
	enum proxy_mode mode;		 /* FORWARD or BASE_URL: its connections' first mode */
	struct proxy_upstream *upstream; /* BASE_URL: the route; NULL: the forward proxy */
	char *name;			 /* own copy: outlives a reloaded configuration */
	unsigned n_conns;
	bool starved;	    /* out of descriptors was logged; cleared by the next accept */
	struct event *rest; /* out of descriptors: accepting again a little later */
};

/* The request a connection serves (PROXY_CONN_HEAD: the head of the next one). */
struct proxy_req {
	enum proxy_req_state state;
	unsigned flags; /* PROXY_RF_* */
	char *head_buf; /* the request head's bytes; head points into them */
	struct http_head head;
	struct proxy_upstream *upstream; /* the route's, once routed */
	struct proxy_upconn *upconn;	 /* the upstream connection it is on, or NULL */
	struct evbuffer *upstream_head; /* its head for the upstream, without Authorization and end;
					 * the buffer is kept for the next request */
	struct evbuffer *retry_body;	/* the whole body of a retryable request, or NULL */
	struct proxy_body req_body, resp_body;
	struct cache_waiter *waiter;
	int64_t started_ms; /* first byte of the request head */
	int64_t refresh_deadline_ms, up_started_ms, up_ms;
	uint64_t sent_generation; /* of the token stamped on the request */
	int status;
};

/* A client connection. */
struct proxy_conn {
	struct proxy *proxy;
	struct proxy_listener *listener;
	struct bufferevent *bev; /* INTERCEPT: our TLS server side, a filter (no direct writes) */
	TAILQ_ENTRY(proxy_conn) link;
	enum proxy_mode mode;
	enum proxy_conn_state state;
	unsigned flags; /* PROXY_CF_* */
	struct proxy_req req;
	struct event *timer;	   /* deadlines (head, handshake, linger) and the refresh poll */
	struct event *linger_poll; /* INTERCEPT: waits for the last records to leave */
	int64_t deadline_ms;	   /* head, handshake or linger must be over by then (on_timer) */
	int64_t timer_at_ms;	   /* when the armed timer fires; 0 when it is not armed */
	char *connect_host;	   /* INTERCEPT: the host and port CONNECT named */
	unsigned connect_port;
	struct bufferevent *tunnel; /* TUNNEL: the far side */
};

TAILQ_HEAD(proxy_conn_list, proxy_conn);

struct proxy {
	struct event_base *base;
	struct cache *cache;
	const struct config *cfg;
	struct source **sources;
	struct evdns_base *dns;
	struct proxy_upstream *upstreams; /* one per route, in the configuration's order */
	size_t n_upstreams;
	struct proxy_listener *listeners;
	size_t n_listeners;
	struct proxy_conn_list conns;
	unsigned n_conns;	  /* over all listeners, bounded by max_connections */
	struct evbuffer *scratch; /* one outgoing message being put together */
	struct proxy_ca *ca;	  /* connect = intercept */
	struct metrics *metrics;  /* or NULL */
	bool stopping;
};

static void conn_free(struct proxy_conn *c);
static void request_token(struct proxy_conn *c);
static void process_head(struct proxy_conn *c);
static bool pump_response(struct proxy_conn *c);
static void up_read_cb(struct bufferevent *bev, void *arg);
static void up_write_cb(struct bufferevent *bev, void *arg);
static void up_event_cb(struct bufferevent *bev, short what, void *arg);
static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_write_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void on_timer(evutil_socket_t fd, short what, void *arg);

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct timeval
tv_s(unsigned s)
{
	struct timeval tv = {.tv_sec = s, .tv_usec = 0};

	return tv;
}

static const struct config_proxy *
pcfg(const struct proxy *p)
{
	return p->cfg->proxy;
}

static void
set_timeouts(struct bufferevent *bev, unsigned rd, unsigned wr)
{
	struct timeval r = tv_s(rd), w = tv_s(wr);

	bufferevent_set_timeouts(bev, rd ? &r : NULL, wr ? &w : NULL);
}

static void
add(struct evbuffer *b, const void *s, size_t len)
{
	evbuffer_add(b, s, len);
}

static void
adds(struct evbuffer *b, const char *s)
{
	evbuffer_add(b, s, strlen(s));
}

static const char *
route_name(const struct proxy_conn *c)
{
	return c->req.upstream != NULL ? c->req.upstream->route->name : "-";
}

/*
 * Makes c's timer fire no later than at_ms.  Lazy, as in http.c: the timer
 * stays armed and on_timer re-evaluates when it fires, so a request head that
 * arrives whole costs no timer at all, and a deadline later than the armed
 * one costs nothing.  -ENOMEM when there is no timer.
 */
static int
conn_arm(struct proxy_conn *c, int64_t at_ms)
{
	int64_t now = now_ms(), d = at_ms > now ? at_ms - now : 0;
	struct timeval tv = {.tv_sec = (time_t)(d / 1000),
			     .tv_usec = (suseconds_t)(d % 1000) * 1000};

	if (c->timer == NULL && (c->timer = evtimer_new(c->proxy->base, on_timer, c)) == NULL)
		return -ENOMEM;
	if (c->timer_at_ms != 0 && c->timer_at_ms <= at_ms)
		return 0;
	if (evtimer_add(c->timer, &tv) < 0)
		return -ENOMEM;
	c->timer_at_ms = at_ms;
	return 0;
}

/* The connection serves its request, which is now in state st. */
static void
request_enter(struct proxy_conn *c, enum proxy_req_state st)
{
	c->state = PROXY_CONN_REQUEST;
	c->req.state = st;
}

/* One request answered (status 0: cut short); upstream time when there was an answer. */
static void
count_request(struct proxy_conn *c, int status)
{
	if (c->proxy->metrics != NULL)
		metrics_proxy_request(
		    c->proxy->metrics,
		    c->req.upstream != NULL ? c->req.upstream->route->name : "none", status,
		    c->req.up_ms >= 0 ? (double)c->req.up_ms / 1000.0 : -1.0);
}

/* Upstream connections */

static struct proxy_upconn *
upconn_free(struct proxy_upconn *up)
{
	if (up == NULL)
		return NULL;
	if (up->conn == NULL && up->upstream != NULL) {
		TAILQ_REMOVE(&up->upstream->idle, up, link);
		up->upstream->n_idle--;
	}
	if (up->bev != NULL)
		bufferevent_free(up->bev);
	free(up);
	return NULL;
}

/* Detaches the connection from its request: back to the pool or closed. */
static void
upconn_release(struct proxy_conn *c, bool reuse)
{
	struct proxy_upconn *up = c->req.upconn;
	struct proxy_upstream *u;

	if (up == NULL)
		return;
	c->req.upconn = NULL;
	u = up->upstream;
	if (!reuse || u->n_idle >= PROXY_POOL_MAX || u->proxy->stopping) {
		up->conn = NULL;
		up->upstream = NULL; /* not in the idle list */
		upconn_free(up);
		return;
	}
	up->conn = NULL;
	TAILQ_INSERT_TAIL(&u->idle, up, link); /* reading on: notices a close while idle */
	u->n_idle++;
}

static bool
host_is_ip(const char *h)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

static struct bufferevent *
upstream_bev(struct proxy_upstream *u)
{
	struct proxy *p = u->proxy;
	const struct config_route *r = u->route;
	int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
	struct bufferevent *bev;
	SSL *ssl;

	if (!r->upstream_tls)
		return bufferevent_socket_new(p->base, -1, opts);
	ssl = SSL_new(u->ssl);
	if (ssl == NULL)
		return NULL;
	if ((!host_is_ip(r->upstream_host) &&
	     SSL_set_tlsext_host_name(ssl, r->upstream_host) != 1) ||
	    SSL_set1_host(ssl, r->upstream_host) != 1) {
		SSL_free(ssl);
		return NULL;
	}
	bev = bufferevent_openssl_socket_new(p->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, opts);
	if (bev == NULL) {
		SSL_free(ssl);
		return NULL;
	}
	/* servers often close without close_notify; framing tells truncation apart */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

/*
 * True when an idle connection has something waiting (bytes or EOF) that
 * the loop has not seen yet: the upstream said what no request asked for, and
 * it would be read as the next request's response.
 */
static bool
upconn_stale(struct proxy_upconn *up)
{
	int fd = bufferevent_getfd(up->bev);
	SSL *ssl;
	char b;

	if (evbuffer_get_length(bufferevent_get_input(up->bev)) > 0 || fd < 0)
		return true;
	if (up->upstream->route->upstream_tls &&
	    (ssl = bufferevent_openssl_get_ssl(up->bev)) != NULL && SSL_pending(ssl) > 0)
		return true;
	/* TLS: any record (data, close_notify) is as bad */
	if (recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) >= 0)
		return true;
	return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

/*
 * The name to hand to the resolver for host: localhost names (RFC 6761) are
 * 127.0.0.1 without asking anyone, since a hosts file without them sends the
 * query to DNS (search domains first), and a token to what DNS answers.
 */
static const char *
connect_name(const char *host)
{
	return config_proxy_host_is_localhost(host) ? "127.0.0.1" : host;
}

/* An idle pooled connection (fresh = false) or a new one. */
static struct proxy_upconn *
upconn_get(struct proxy_upstream *u, bool fresh)
{
	struct proxy *p = u->proxy;
	struct proxy_upconn *up;

	while (!fresh && (up = TAILQ_LAST(&u->idle, proxy_upconn_list)) != NULL) {
		TAILQ_REMOVE(&u->idle, up, link);
		u->n_idle--;
		if (upconn_stale(up)) {
			up->upstream = NULL; /* not in the idle list any more */
			upconn_free(up);
			continue;
		}
		up->uses++;
		return up;
	}
	up = calloc(1, sizeof(*up));
	if (up == NULL)
		return NULL;
	up->upstream = u;
	up->bev = upstream_bev(u);
	if (up->bev == NULL) {
		free(up);
		return NULL;
	}
	bufferevent_setcb(up->bev, up_read_cb, up_write_cb, up_event_cb, up);
	bufferevent_setwatermark(up->bev, EV_READ, 0, PROXY_HIGH_WATER);
	bufferevent_setwatermark(up->bev, EV_WRITE, PROXY_LOW_WATER, 0);
	bufferevent_enable(up->bev, EV_READ);
	set_timeouts(up->bev, pcfg(p)->connect_timeout, pcfg(p)->connect_timeout);
	if (bufferevent_socket_connect_hostname(up->bev, p->dns, AF_UNSPEC,
						connect_name(u->route->upstream_host),
						(int)u->route->upstream_port) < 0) {
		up->upstream = NULL; /* not in the idle list */
		upconn_free(up);
		return NULL;
	}
	return up;
}

/* Client replies */

static void conn_linger(struct proxy_conn *c);

static void
on_linger_poll(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	conn_linger(arg);
}

/* Shuts our side and reads what the client still sends, so it sees the reply, not a reset. */
static void
conn_linger(struct proxy_conn *c)
{
	struct bufferevent *under =
	    c->mode == PROXY_MODE_INTERCEPT ? bufferevent_get_underlying(c->bev) : NULL;
	struct timeval tv = {0, PROXY_POLL_MS * 1000};
	int fd = bufferevent_getfd(c->bev);

	/* TLS: the records may still sit below the filter; no callback says when they left */
	if (under != NULL && evbuffer_get_length(bufferevent_get_output(under)) > 0) {
		if (c->linger_poll == NULL)
			c->linger_poll = evtimer_new(c->proxy->base, on_linger_poll, c);
		if (c->linger_poll != NULL && evtimer_add(c->linger_poll, &tv) == 0)
			return;
	}
	if (fd >= 0)
		shutdown(fd, SHUT_WR);
	if (!(c->flags & PROXY_CF_LINGERING)) {
		/* at most PROXY_LINGER_S in all: a client that keeps trickling is cut too */
		c->flags |= PROXY_CF_LINGERING;
		c->deadline_ms = now_ms() + PROXY_LINGER_S * 1000;
		(void)conn_arm(c, c->deadline_ms); /* else the read timeout below still ends it */
	}
	set_timeouts(c->bev, PROXY_LINGER_S, PROXY_LINGER_S);
	bufferevent_enable(c->bev, EV_READ); /* last: a TLS filter defers its callbacks anyway */
}

static void
conn_close_after_flush(struct proxy_conn *c)
{
	c->state = PROXY_CONN_CLOSING;
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	bufferevent_enable(c->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_linger(c);
}

/*
 * A JSON error to the client, then the connection closes (nothing forwarded
 * afterwards).  extra: more header fields ("Name: value\r\n"), or NULL.
 */
static void
reply_error_with(struct proxy_conn *c, int status, const char *error, const char *description,
		 int64_t retry_after, const char *extra)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	struct evbuffer *b = evbuffer_new();
	const char *reason = http_status_text(status);

	upconn_release(c, false);
	if (b != NULL)
		json_append_error(b, error, description);
	evbuffer_add_printf(out,
			    "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
			    "Content-Length: %zu\r\n",
			    status, reason, b != NULL ? evbuffer_get_length(b) : 0);
	if (retry_after > 0)
		evbuffer_add_printf(out, "Retry-After: %" PRId64 "\r\n", retry_after);
	if (extra != NULL)
		adds(out, extra);
	adds(out, "Connection: close\r\n\r\n");
	if (b != NULL) {
		if (c->req.head.method == NULL || c->req.head.method_len != 4 ||
		    memcmp(c->req.head.method, "HEAD", 4))
			evbuffer_add_buffer(out, b);
		evbuffer_free(b);
	}
	log_debug("proxy request refused", "route=%s status=%d error=%s", route_name(c), status,
		  error);
	c->req.up_ms = -1;
	count_request(c, status);
	conn_close_after_flush(c);
}

static void
reply_error(struct proxy_conn *c, int status, const char *error, const char *description,
	    int64_t retry_after)
{
	reply_error_with(c, status, error, description, retry_after, NULL);
}

/* Requests */

static void
request_reset(struct proxy_conn *c)
{
	const struct config_proxy *cp = pcfg(c->proxy);

	free(c->req.head_buf);
	c->req.head_buf = NULL;
	memset(&c->req.head, 0, sizeof(c->req.head));
	if (c->req.retry_body != NULL)
		evbuffer_free(c->req.retry_body);
	c->req.retry_body = NULL;
	c->req.upstream = NULL;
	c->req.up_ms = -1;
	c->req.flags = 0;
	c->flags &= ~(PROXY_CF_READ_PAUSED | PROXY_CF_FAR_PAUSED);
	c->state = PROXY_CONN_HEAD;
	set_timeouts(c->bev, cp->idle_timeout, cp->idle_timeout);
	bufferevent_setwatermark(c->bev, EV_WRITE, PROXY_LOW_WATER, 0);
	if (!(c->flags & PROXY_CF_CLIENT_EOF))
		bufferevent_enable(c->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
		process_head(c);
}

static bool
method_is(const struct http_head *h, const char *m)
{
	return h->method_len == strlen(m) && memcmp(h->method, m, h->method_len) == 0;
}

static bool
method_is_nocase(const struct http_head *h, const char *m)
{
	return h->method_len == strlen(m) && strncasecmp(h->method, m, h->method_len) == 0;
}

static bool
idempotent(const struct http_head *h)
{
	return method_is(h, "GET") || method_is(h, "HEAD") || method_is(h, "OPTIONS") ||
	       method_is(h, "PUT") || method_is(h, "DELETE");
}

/* The upstream request head, all but Authorization and the blank line. */
static int
render_request(struct proxy_conn *c, const char *path, size_t path_len)
{
	const struct http_head *h = &c->req.head;
	const struct config_route *r = c->req.upstream->route;
	struct evbuffer *out;
	char num[64];

	if (c->req.upstream_head == NULL && (c->req.upstream_head = evbuffer_new()) == NULL)
		return -ENOMEM;
	out = c->req.upstream_head;
	evbuffer_drain(out, evbuffer_get_length(out));
	add(out, h->method, h->method_len);
	add(out, " ", 1);
	adds(out, r->upstream_base);
	if (path_len == 0 || path[0] != '/')
		add(out, "/", 1);
	add(out, path, path_len);
	add(out, " HTTP/1.1\r\n", 11);
	add(out, c->req.upstream->host_field, c->req.upstream->host_field_len);
	for (int i = 0; i < h->nheaders; i++) {
		const struct http_header *f = &h->headers[i];

		if (proxy_route_hop_by_hop(h, f))
			continue;
		if ((c->req.flags & PROXY_RF_STAMP) && f->name_len == 13 &&
		    strncasecmp(f->name, "authorization", 13) == 0)
			continue;
		add(out, f->name, f->name_len);
		add(out, ": ", 2);
		add(out, f->value, f->value_len);
		add(out, "\r\n", 2);
	}
	if (h->chunked) {
		adds(out, "Transfer-Encoding: chunked\r\n");
	} else if (h->content_length >= 0) {
		snprintf(num, sizeof(num), "Content-Length: %" PRId64 "\r\n", h->content_length);
		adds(out, num);
	}
	adds(out, PROXY_VIA);
	return 0;
}

/*
 * Read timeouts only where silence is wrong: on the client while its request
 * is incomplete, on the upstream once it has the whole request (a long upload
 * is not a silent upstream).  Write timeouts run only while output waits.
 */
static void
arm_timeouts(struct proxy_conn *c)
{
	unsigned idle = pcfg(c->proxy)->idle_timeout;
	bool sent = c->req.flags & PROXY_RF_SENT;

	set_timeouts(c->bev, sent ? 0 : idle, idle);
	if (c->req.upconn != NULL && c->req.upconn->connected)
		set_timeouts(c->req.upconn->bev, sent ? idle : 0, idle);
}

/*
 * Sends msg on bev: straight to the socket when nothing is queued before it,
 * the rest queued on the bufferevent.  A direct write saves the write event's
 * epoll_ctl pair and a loop turn per message (most messages fit the socket
 * buffer); TLS and connecting sockets always queue.
 */
static void
send_msg(struct bufferevent *bev, struct evbuffer *msg, bool direct)
{
	struct evbuffer *out = bufferevent_get_output(bev);

	if (direct && evbuffer_get_length(out) == 0 && evbuffer_get_length(msg) > 0)
		evbuffer_write(msg, bufferevent_getfd(bev));
	if (evbuffer_get_length(msg) > 0)
		evbuffer_add_buffer(out, msg);
}

static bool
up_direct(const struct proxy_upconn *up)
{
	return up->connected && !up->upstream->route->upstream_tls;
}

/* Moves request body bytes to the upstream; false when c was freed. */
static bool
pump_request(struct proxy_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct evbuffer *s = c->proxy->scratch;
	int r = proxy_body_relay(&c->req.req_body, in, s);

	send_msg(c->req.upconn->bev, s, up_direct(c->req.upconn));
	if (r < 0) {
		if (c->req.state == PROXY_REQ_RESPONSE) {
			conn_free(c);
			return false;
		}
		reply_error(c, 400, "invalid_request", "malformed chunked request body", 0);
		return false;
	}
	if (r == 1) {
		c->req.flags |= PROXY_RF_SENT; /* a pipelined request waits in the input */
		arm_timeouts(c);
		return true;
	}
	if (c->flags & PROXY_CF_CLIENT_EOF) { /* the rest of the body will never come */
		if (c->req.state == PROXY_REQ_RESPONSE) {
			conn_free(c);
			return false;
		}
		reply_error(c, 400, "invalid_request", "the request body ended early", 0);
		return false;
	}
	if (evbuffer_get_length(bufferevent_get_output(c->req.upconn->bev)) > PROXY_HIGH_WATER) {
		bufferevent_disable(c->bev, EV_READ);
		c->flags |= PROXY_CF_READ_PAUSED;
	}
	return true;
}

static void
request_send(struct proxy_conn *c, const struct cache_token *tok)
{
	struct evbuffer *s = c->proxy->scratch;
	struct proxy_upconn *up;

	up = upconn_get(c->req.upstream, c->req.flags & PROXY_RF_FRESH_CONN);
	if (up == NULL) {
		reply_error(c, 502, "bad_gateway", "cannot connect to the upstream", 0);
		return;
	}
	up->conn = c;
	c->req.upconn = up;
	c->req.up_started_ms = now_ms();
	request_enter(c, PROXY_REQ_FORWARD);
	c->req.flags &= ~PROXY_RF_SENT;
	evbuffer_add(s, evbuffer_pullup(c->req.upstream_head, -1),
		     evbuffer_get_length(c->req.upstream_head));
	if (tok != NULL) {
		c->req.sent_generation = tok->generation;
		add(s, "Authorization: Bearer ", 22);
		add(s, tok->value, tok->len);
		add(s, "\r\n", 2);
	}
	add(s, "\r\n", 2);
	if (c->req.retry_body != NULL) {
		evbuffer_add(s, evbuffer_pullup(c->req.retry_body, -1),
			     evbuffer_get_length(c->req.retry_body));
		c->req.flags |= PROXY_RF_SENT;
	} else if (c->req.req_body.mode == PROXY_BODY_NONE) {
		c->req.flags |= PROXY_RF_SENT;
	}
	arm_timeouts(c);
	if (c->req.flags & PROXY_RF_SENT)
		send_msg(up->bev, s, up_direct(up));
	else
		pump_request(c); /* the head goes out with the first body bytes */
}

static void
on_answer(struct proxy_conn *c, const struct cache_answer *a)
{
	if (a->status != 200) {
		reply_error(c, 503, a->error != NULL ? a->error : "temporarily_unavailable",
			    a->description != NULL ? a->description : "no valid token",
			    a->retry_after > 0 ? a->retry_after : 1);
		return;
	}
	request_send(c, a->token);
}

static void
on_token(void *arg, const struct cache_answer *a)
{
	struct proxy_conn *c = arg;

	c->req.waiter = NULL;
	on_answer(c, a);
}

static void
request_token(struct proxy_conn *c)
{
	struct cache_answer now;
	int r;

	if (!(c->req.flags & PROXY_RF_STAMP)) {
		request_send(c, NULL);
		return;
	}
	request_enter(c, PROXY_REQ_TOKEN);
	r = cache_request(c->proxy->cache, c->req.upstream->entry, 0, on_token, c, &now,
			  &c->req.waiter);
	if (r == -EINPROGRESS)
		return;
	if (r < 0) {
		reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
		return;
	}
	on_answer(c, &now);
}

/* PROXY_REQ_REFRESH: polls the entry until the refresh is over (or wait_timeout). */
static void
refresh_poll(struct proxy_conn *c, int64_t now)
{
	enum cache_state st = cache_entry_state(c->req.upstream->entry);

	if ((st == CACHE_FETCHING || st == CACHE_REFRESHING) && now < c->req.refresh_deadline_ms) {
		if (conn_arm(c, now + PROXY_POLL_MS) < 0)
			reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
		return;
	}
	request_token(c);
}

/* The upstream said invalid_token: refresh, then send the request once more. */
static void
retry_after_refresh(struct proxy_conn *c)
{
	int64_t now = now_ms();

	log_info("upstream rejected the token, refreshing it", "route=%s", route_name(c));
	c->req.flags |= PROXY_RF_RETRIED;
	upconn_release(c, false);
	/* at most once per token: a refreshed token that is rejected again is not refreshed */
	cache_refresh_token(c->proxy->cache, c->req.upstream->entry, c->req.sent_generation,
			    &(int64_t){0});
	request_enter(c, PROXY_REQ_REFRESH);
	c->req.refresh_deadline_ms = now + c->proxy->cfg->wait_timeout * 1000;
	if (conn_arm(c, now + PROXY_POLL_MS) < 0)
		reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
}

/*
 * The connection's one timer: the absolute deadlines of a request head (from
 * its first byte, as in http.c: trickling bytes does not extend it), of the
 * intercept TLS handshake and of lingering after our close, and the refresh
 * poll.  What it is for follows from the state; a deadline that moved on
 * (the head arrived, a later one started) is re-armed or dropped here.
 */
static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_conn *c = arg;
	int64_t now = now_ms();

	(void)fd;
	(void)what;
	c->timer_at_ms = 0;
	switch (c->state) {
	case PROXY_CONN_REQUEST:
		if (c->req.state == PROXY_REQ_REFRESH)
			refresh_poll(c, now);
		return; /* else a deadline of a head that has arrived meanwhile */
	case PROXY_CONN_HEAD:
		if (!(c->flags & PROXY_CF_HANDSHAKE) && !(c->req.flags & PROXY_RF_HEAD_STARTED))
			return;
		if (now < c->deadline_ms) {
			(void)conn_arm(c, c->deadline_ms);
			return;
		}
		if (c->flags & PROXY_CF_HANDSHAKE) {
			log_debug("proxy TLS handshake timed out", "listener=%s",
				  c->listener->name);
			conn_free(c);
			return;
		}
		log_debug("proxy request head timed out", "listener=%s", c->listener->name);
		reply_error(c, 408, "invalid_request",
			    "the request head did not arrive within header_timeout", 0);
		return;
	case PROXY_CONN_CLOSING:
		if (!(c->flags & PROXY_CF_LINGERING))
			return;
		if (now < c->deadline_ms) {
			(void)conn_arm(c, c->deadline_ms);
			return;
		}
		conn_free(c);
		return;
	case PROXY_CONN_TUNNEL:
		return; /* a deadline of the CONNECT head, which has arrived */
	}
}

static void
buffer_body(struct proxy_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);

	if (evbuffer_get_length(in) < (size_t)c->req.head.content_length)
		return;
	c->req.retry_body = evbuffer_new();
	if (c->req.retry_body == NULL) {
		reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
		return;
	}
	evbuffer_remove_buffer(in, c->req.retry_body, (size_t)c->req.head.content_length);
	request_token(c);
}

/* CONNECT */

static bool
tunnel_allowed(const struct config_proxy *cp, const char *host, unsigned port)
{
	char want[300];

	snprintf(want, sizeof(want), "%s:%u", host, port);
	for (size_t i = 0; cp->tunnel_hosts != NULL && cp->tunnel_hosts[i] != NULL; i++)
		if (strcmp(cp->tunnel_hosts[i], want) == 0)
			return true;
	return false;
}

static void
tun_read_cb(struct bufferevent *bev, void *arg)
{
	struct proxy_conn *c = arg;
	struct evbuffer *out = bufferevent_get_output(c->bev);

	evbuffer_add_buffer(out, bufferevent_get_input(bev));
	if (evbuffer_get_length(out) > PROXY_HIGH_WATER) {
		bufferevent_disable(bev, EV_READ);
		c->flags |= PROXY_CF_FAR_PAUSED;
	}
}

/* After the client's half-close: once its last bytes are out, the far side sees EOF too. */
static void
tunnel_shut_far(struct proxy_conn *c)
{
	if ((c->flags & PROXY_CF_FAR_SHUT) || c->tunnel == NULL)
		return;
	if (evbuffer_get_length(bufferevent_get_output(c->tunnel)) > 0) {
		bufferevent_setwatermark(c->tunnel, EV_WRITE, 0, 0); /* tun_write_cb when empty */
		return;
	}
	c->flags |= PROXY_CF_FAR_SHUT;
	shutdown(bufferevent_getfd(c->tunnel), SHUT_WR);
}

static void
tun_write_cb(struct bufferevent *bev, void *arg)
{
	struct proxy_conn *c = arg;

	(void)bev;
	if (c->flags & PROXY_CF_CLIENT_EOF) {
		tunnel_shut_far(c);
		return;
	}
	if (c->flags & PROXY_CF_READ_PAUSED) {
		c->flags &= ~PROXY_CF_READ_PAUSED;
		bufferevent_enable(c->bev, EV_READ);
	}
}

static void
tunnel_from_client(struct proxy_conn *c)
{
	struct evbuffer *out = bufferevent_get_output(c->tunnel);

	evbuffer_add_buffer(out, bufferevent_get_input(c->bev));
	if (evbuffer_get_length(out) > PROXY_HIGH_WATER) {
		bufferevent_disable(c->bev, EV_READ);
		c->flags |= PROXY_CF_READ_PAUSED;
	}
}

static void
tun_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct proxy_conn *c = arg;
	const struct config_proxy *cp = pcfg(c->proxy);
	int fd, one = 1;

	if (what & BEV_EVENT_CONNECTED) {
		fd = bufferevent_getfd(bev);
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c->state = PROXY_CONN_TUNNEL;
		adds(bufferevent_get_output(c->bev), "HTTP/1.1 200 Connection Established\r\n\r\n");
		set_timeouts(bev, cp->idle_timeout, cp->idle_timeout);
		set_timeouts(c->bev, cp->idle_timeout, cp->idle_timeout);
		bufferevent_setwatermark(bev, EV_WRITE, PROXY_LOW_WATER, 0);
		if (c->flags & PROXY_CF_CLIENT_EOF) {
			tunnel_from_client(c);
			tunnel_shut_far(c);
			return;
		}
		bufferevent_enable(c->bev, EV_READ);
		tunnel_from_client(c);
		return;
	}
	if (c->state == PROXY_CONN_REQUEST) { /* the CONNECT: the far side never answered */
		bufferevent_free(c->tunnel);
		c->tunnel = NULL;
		if (what & BEV_EVENT_TIMEOUT)
			reply_error(c, 504, "gateway_timeout", "the tunnel host did not answer", 0);
		else
			reply_error(c, 502, "bad_gateway", "cannot connect to the tunnel host", 0);
		return;
	}
	/* the far side closed: hand the client what arrived, then close */
	evbuffer_add_buffer(bufferevent_get_output(c->bev), bufferevent_get_input(bev));
	bufferevent_free(c->tunnel);
	c->tunnel = NULL;
	conn_close_after_flush(c);
}

static bool
route_for_host(const struct config_proxy *cp, const char *host, unsigned port)
{
	for (size_t i = 0; i < cp->n_routes; i++) {
		const struct config_route *r = &cp->routes[i];

		if (r->match_host != NULL && strcmp(r->match_host, host) == 0 &&
		    (r->match_port_set ? r->match_port == port : port == 443))
			return true;
	}
	return false;
}

/*
 * connect = intercept: answer 200, then speak TLS to the client with a leaf
 * for host from the local CA and serve the requests inside like forward
 * ones, routed by the CONNECT host.  Hosts without a route are refused
 * before any TLS: nothing is intercepted that would not be stamped.
 */
static void
intercept(struct proxy_conn *c, char *host, unsigned port)
{
	struct bufferevent *tls;
	SSL *ssl;
	char clean[128];

	if (!route_for_host(pcfg(c->proxy), host, port)) {
		log_info("proxy interception refused", "host=%s port=%u",
			 log_clean(clean, sizeof(clean), host), port);
		free(host);
		reply_error(c, 403, "forbidden", "no route for this host: nothing was forwarded",
			    0);
		return;
	}
	ssl = proxy_ca_ssl(c->proxy->ca, host);
	if (ssl == NULL) {
		free(host);
		reply_error(c, 503, "temporarily_unavailable", "cannot mint a certificate", 1);
		return;
	}
	/* the handshake has header_timeout in all, however slowly its bytes come */
	c->deadline_ms = now_ms() + (int64_t)pcfg(c->proxy)->header_timeout * 1000;
	if (conn_arm(c, c->deadline_ms) < 0) {
		SSL_free(ssl);
		free(host);
		reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
		return;
	}
	adds(bufferevent_get_output(c->bev), "HTTP/1.1 200 Connection Established\r\n\r\n");
	/*
	 * Deferred callbacks (STYLE.md rule 12): enabling the filter runs the
	 * handshake on bytes the client sent along with CONNECT, and a failed
	 * handshake would otherwise free c inside that call.  Every update to c
	 * is done before the filter is enabled, in request_reset at the end.
	 */
	tls = bufferevent_openssl_filter_new(c->proxy->base, c->bev, ssl, BUFFEREVENT_SSL_ACCEPTING,
					     BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (tls == NULL) {
		SSL_free(ssl);
		free(host);
		conn_free(c);
		return;
	}
	/*
	 * The socket below keeps no read timeout once TLS is up (the filter has
	 * them, per request): one left from the CONNECT would cut a response
	 * that streams longer than idle_timeout.  Until then both bound the
	 * handshake; its write timeout stays (a client that reads nothing).
	 */
	set_timeouts(c->bev, pcfg(c->proxy)->header_timeout, pcfg(c->proxy)->header_timeout);
	/* the filter stops encrypting at the high mark, so a slow client slows the upstream */
	bufferevent_setwatermark(c->bev, EV_WRITE, PROXY_LOW_WATER, PROXY_HIGH_WATER);
	c->bev = tls;
	c->mode = PROXY_MODE_INTERCEPT;
	c->flags |= PROXY_CF_HANDSHAKE;
	c->connect_host = host;
	c->connect_port = port;
	free(c->req.head_buf);
	c->req.head_buf = NULL;
	memset(&c->req.head, 0, sizeof(c->req.head));
	bufferevent_setcb(tls, conn_read_cb, conn_write_cb, conn_event_cb, c);
	bufferevent_setwatermark(tls, EV_READ, 0, PROXY_HIGH_WATER);
	request_reset(c); /* enables reading: the handshake starts; nothing touches c after it */
}

static void
handle_connect(struct proxy_conn *c)
{
	const struct config_proxy *cp = pcfg(c->proxy);
	char *host = NULL;
	unsigned port;
	char clean[128];

	if (c->mode != PROXY_MODE_FORWARD || cp->connect == CONFIG_CONNECT_DENY) {
		reply_error(c, 403, "forbidden", "CONNECT is not allowed by this proxy", 0);
		return;
	}
	if (config_proxy_hostport(c->req.head.target, c->req.head.target_len, &host, &port) < 0 ||
	    port == 0) {
		free(host);
		reply_error(c, 400, "invalid_request", "CONNECT needs host:port", 0);
		return;
	}
	if (cp->connect == CONFIG_CONNECT_INTERCEPT) {
		intercept(c, host, port);
		return;
	}
	if (!tunnel_allowed(cp, host, port)) {
		log_info("proxy tunnel refused", "host=%s port=%u",
			 log_clean(clean, sizeof(clean), host), port);
		free(host);
		reply_error(c, 403, "forbidden", "this host is not in tunnel_hosts", 0);
		return;
	}
	c->tunnel = bufferevent_socket_new(c->proxy->base, -1,
					   BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (c->tunnel == NULL) {
		free(host);
		reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
		return;
	}
	bufferevent_setcb(c->tunnel, tun_read_cb, tun_write_cb, tun_event_cb, c);
	bufferevent_setwatermark(c->tunnel, EV_READ, 0, PROXY_HIGH_WATER);
	set_timeouts(c->tunnel, cp->connect_timeout, cp->connect_timeout);
	c->mode = PROXY_MODE_TUNNEL;
	request_enter(c, PROXY_REQ_CONNECT);
	bufferevent_disable(c->bev, EV_READ);
	if (bufferevent_socket_connect_hostname(c->tunnel, c->proxy->dns, AF_UNSPEC,
						connect_name(host), (int)port) < 0) {
		bufferevent_free(c->tunnel);
		c->tunnel = NULL;
		reply_error(c, 502, "bad_gateway", "cannot connect to the tunnel host", 0);
	} else {
		bufferevent_enable(c->tunnel, EV_READ | EV_WRITE);
	}
	free(host);
}

/* Request heads */

static struct proxy_upstream *
upstream_of(struct proxy *p, const struct config_route *r)
{
	for (size_t i = 0; i < p->n_upstreams; i++)
		if (p->upstreams[i].route == r)
			return &p->upstreams[i];
	return NULL;
}

/* A request inside an intercepted CONNECT: the host is the one CONNECT named. */
static bool
route_intercepted(struct proxy_conn *c, const char **path, size_t *path_len)
{
	const struct http_head *h = &c->req.head;
	const struct http_header *hf = http_head_find(h, "host");
	const struct config_route *r;

	if (h->target[0] != '/') {
		reply_error(c, 400, "invalid_request", "expected a path as request target", 0);
		return false;
	}
	if (hf != NULL && !proxy_route_host_agrees(hf->value, hf->value_len, c->connect_host,
						   c->connect_port, 443)) {
		reply_error(c, 400, "invalid_request",
			    "the Host header disagrees with the CONNECT target", 0);
		return false;
	}
	*path = h->target;
	*path_len = h->target_len;
	r = proxy_route_match(pcfg(c->proxy), c->connect_host, c->connect_port, 443, *path,
			      *path_len);
	if (r == NULL) {
		reply_error(c, 403, "forbidden",
			    "no route matches this host and path: nothing was forwarded", 0);
		return false;
	}
	c->req.upstream = upstream_of(c->proxy, r);
	return true;
}

/*
 * A base-URL listener is an ordinary http:// origin to a browser: a page from
 * anywhere could send it requests (cross-site, or reading the answers after
 * DNS rebinding) and have them stamped with the route's token.  So the Host
 * must be the listener itself (and, as on every path, nothing may look like a
 * page's request: request_begin).  False after replying.
 */
static bool
base_url_caller_ok(struct proxy_conn *c)
{
	const struct config_listen *l = c->req.upstream->route->listen;
	const struct http_header *hf = http_head_find(&c->req.head, "host");
	char desc[200];

	if (hf == NULL || !proxy_route_host_is_listener(hf->value, hf->value_len, l)) {
		snprintf(desc, sizeof(desc),
			 "the Host header must name this listener (%s, or localhost with its port)",
			 l->text);
		reply_error(c, 400, "invalid_request", desc, 0);
		return false;
	}
	return true;
}

/* Finds the route and the path to send; false after replying. */
static bool
route_request(struct proxy_conn *c, const char **path, size_t *path_len)
{
	const struct http_head *h = &c->req.head;
	const struct config_route *r;
	const struct http_header *hf;
	char *host = NULL;
	unsigned port;

	if (c->mode == PROXY_MODE_INTERCEPT)
		return route_intercepted(c, path, path_len);
	if (c->mode == PROXY_MODE_BASE_URL) {
		c->req.upstream = c->listener->upstream;
		if (h->target[0] != '/') {
			reply_error(c, 400, "invalid_request", "expected a path as request target",
				    0);
			return false;
		}
		if (!base_url_caller_ok(c))
			return false;
		*path = h->target;
		*path_len = h->target_len;
		return true;
	}
	if (proxy_route_absolute(h->target, h->target_len, &host, &port, path, path_len) < 0) {
		reply_error(c, 400, "invalid_request",
			    "this is a proxy: expected an absolute http:// request target (or "
			    "CONNECT)",
			    0);
		return false;
	}
	hf = http_head_find(h, "host");
	if (hf != NULL && !proxy_route_host_agrees(hf->value, hf->value_len, host, port, 80)) {
		free(host);
		reply_error(c, 400, "invalid_request",
			    "the Host header disagrees with the request target", 0);
		return false;
	}
	r = proxy_route_match(pcfg(c->proxy), host, port, 80, *path, *path_len);
	free(host);
	if (r == NULL) {
		reply_error(c, 403, "forbidden",
			    "no route matches this host and path: nothing was forwarded", 0);
		return false;
	}
	c->req.upstream = upstream_of(c->proxy, r);
	return true;
}

static void
request_begin(struct proxy_conn *c)
{
	const struct http_head *h = &c->req.head;
	const struct http_header *f;
	const char *path;
	size_t path_len;

	if (h->keep_alive && !c->proxy->stopping)
		c->req.flags |= PROXY_RF_KEEP_ALIVE;
	else
		c->req.flags &= ~PROXY_RF_KEEP_ALIVE;
	if (method_is(h, "CONNECT")) {
		handle_connect(c);
		return;
	}
	/*
	 * An upstream that echoes the request (as TRACE asks) would hand the
	 * token back; in any case, as some servers read methods so.
	 */
	if (method_is_nocase(h, "TRACE") || method_is_nocase(h, "TRACK")) {
		reply_error_with(c, 405, "invalid_request",
				 "TRACE is not forwarded: the answer would carry the token", 0,
				 "Allow: " PROXY_ALLOW "\r\n");
		return;
	}
	if (!route_request(c, &path, &path_len))
		return;
	/*
	 * A browser whose http_proxy is bearerd, like one that reaches a
	 * base-URL listener, would let any site make stamped calls: requests
	 * that bear a web page's marks are refused on every path.
	 */
	if (proxy_route_from_web_page(h)) {
		log_info("proxy request from a web page refused", "route=%s", route_name(c));
		reply_error(c, 403, "forbidden",
			    "requests from web pages (Origin, Sec-Fetch-Site) are not forwarded",
			    0);
		return;
	}
	if (proxy_route_path_unsafe(path, path_len)) {
		reply_error(c, 400, "invalid_request",
			    "dot segments and encoded slashes are not forwarded", 0);
		return;
	}
	f = http_head_find(h, "expect");
	if (f != NULL && !(f->value_len == 12 && strncasecmp(f->value, "100-continue", 12) == 0)) {
		reply_error(c, 417, "invalid_request", "unsupported Expect", 0);
		return;
	}
	if (h->chunked)
		proxy_body_init(&c->req.req_body, PROXY_BODY_CHUNKED, 0);
	else if (h->content_length > 0)
		proxy_body_init(&c->req.req_body, PROXY_BODY_LENGTH, (uint64_t)h->content_length);
	else
		proxy_body_init(&c->req.req_body, PROXY_BODY_NONE, 0);
	if (!c->req.upstream->route->passthrough &&
	    (c->req.upstream->route->overwrite || http_head_find(h, "authorization") == NULL))
		c->req.flags |= PROXY_RF_STAMP;
	if (idempotent(h) && (c->req.req_body.mode == PROXY_BODY_NONE ||
			      (c->req.req_body.mode == PROXY_BODY_LENGTH &&
			       h->content_length <= PROXY_RETRY_BODY_MAX)))
		c->req.flags |= PROXY_RF_RETRYABLE;
	if (render_request(c, path, path_len) < 0) {
		reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
		return;
	}
	if (f != NULL && c->req.req_body.mode != PROXY_BODY_NONE)
		adds(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n");
	if ((c->req.flags & PROXY_RF_RETRYABLE) && c->req.req_body.mode == PROXY_BODY_LENGTH) {
		request_enter(c, PROXY_REQ_BODY_BUFFER);
		buffer_body(c);
		return;
	}
	request_token(c);
}

/* Re-points the parsed head from the input buffer into c->req.head_buf. */
static void
rebase_head(struct proxy_conn *c, const char *from)
{
	ptrdiff_t d = c->req.head_buf - from;

	c->req.head.method += d;
	c->req.head.target += d;
	for (int i = 0; i < c->req.head.nheaders; i++) {
		c->req.head.headers[i].name += d;
		c->req.head.headers[i].value += d;
	}
}

static void
process_head(struct proxy_conn *c)
{
	const struct config_proxy *cp = pcfg(c->proxy);
	struct evbuffer *in = bufferevent_get_input(c->bev);
	size_t len = evbuffer_get_length(in), n = len < PROXY_MAX_HEAD ? len : PROXY_MAX_HEAD;
	const char *buf;
	int r;

	if (len == 0)
		return;
	if (!(c->req.flags & PROXY_RF_HEAD_STARTED)) {
		c->req.flags |= PROXY_RF_HEAD_STARTED;
		c->req.started_ms = now_ms();
		c->deadline_ms = c->req.started_ms + (int64_t)cp->header_timeout * 1000;
	}
	buf = (const char *)evbuffer_pullup(in, (ssize_t)n);
	r = http_parse_request_head(buf, n, &c->req.head);
	if (r == 0 && len < PROXY_MAX_HEAD) {
		/* an absolute deadline from the first byte: trickling does not extend it */
		if (conn_arm(c, c->deadline_ms) < 0)
			conn_free(c);
		return;
	}
	if (r <= 0) {
		memset(&c->req.head, 0, sizeof(c->req.head));
		if (r == 0 || r == -E2BIG)
			reply_error(c, 431, "invalid_request", "request head too large", 0);
		else if (r == -ENOTSUP)
			reply_error(c, 505, "invalid_request", "only HTTP/1.0 and 1.1", 0);
		else
			reply_error(c, 400, "invalid_request", "malformed request head", 0);
		return;
	}
	c->req.head_buf = malloc((size_t)r);
	if (c->req.head_buf == NULL) {
		conn_free(c);
		return;
	}
	memcpy(c->req.head_buf, buf, (size_t)r);
	rebase_head(c, buf);
	evbuffer_drain(in, (size_t)r);
	request_begin(c);
}

/* Responses */

/* The client-bound head: the upstream's without hop-by-hop fields, our framing. */
static void
render_response(struct proxy_conn *c, const struct http_head *rh, bool dechunk, bool close)
{
	struct evbuffer *out = c->proxy->scratch; /* sent with the first body bytes */
	char line[64];

	snprintf(line, sizeof(line), "HTTP/1.1 %03d ", rh->status);
	adds(out, line);
	add(out, rh->target, rh->target_len);
	add(out, "\r\n", 2);
	for (int i = 0; i < rh->nheaders; i++) {
		const struct http_header *f = &rh->headers[i];
		bool cl = f->name_len == 14 && strncasecmp(f->name, "content-length", 14) == 0;

		if (!cl && proxy_route_hop_by_hop(rh, f))
			continue;
		add(out, f->name, f->name_len);
		add(out, ": ", 2);
		add(out, f->value, f->value_len);
		add(out, "\r\n", 2);
	}
	adds(out, PROXY_VIA);
	if (c->req.resp_body.mode == PROXY_BODY_CHUNKED && !dechunk)
		adds(out, "Transfer-Encoding: chunked\r\n");
	if (close)
		adds(out, "Connection: close\r\n");
	else if (c->req.head.minor == 0)
		adds(out, "Connection: keep-alive\r\n");
	add(out, "\r\n", 2);
}

static bool
invalid_token_challenge(const struct http_head *rh)
{
	for (int i = 0; i < rh->nheaders; i++) {
		const struct http_header *f = &rh->headers[i];

		if (f->name_len == 16 && strncasecmp(f->name, "www-authenticate", 16) == 0 &&
		    proxy_route_invalid_token(f->value, f->value_len))
			return true;
	}
	return false;
}

/*
 * Whether the upstream connection may serve another request.  Not when bytes
 * beyond the response arrived (they would be read as the next one's head), nor
 * when more may come: a broken upstream may send a body after a HEAD, 204 or
 * 304 answer, and one that refused a request early may still read its body as
 * a request and answer that.
 */
static bool
upconn_reusable(const struct proxy_conn *c)
{
	if (!(c->req.flags & PROXY_RF_SENT) || (c->req.flags & PROXY_RF_RESP_CLOSE) ||
	    evbuffer_get_length(bufferevent_get_input(c->req.upconn->bev)) > 0)
		return false;
	if (method_is(&c->req.head, "HEAD") || c->req.status == 204 || c->req.status == 304)
		return false;
	return c->req.status < 400 || c->req.req_body.mode == PROXY_BODY_NONE;
}

static void
response_done(struct proxy_conn *c)
{
	log_debug("proxy request", "route=%s status=%d ms=%" PRId64, route_name(c), c->req.status,
		  now_ms() - c->req.started_ms);
	count_request(c, c->req.status);
	upconn_release(c, upconn_reusable(c));
	if (!(c->req.flags & PROXY_RF_SENT) || c->proxy->stopping)
		c->req.flags &= ~PROXY_RF_KEEP_ALIVE;
	/* a client that is done sending gets the answers to what it sent, then the close */
	if ((c->flags & PROXY_CF_CLIENT_EOF) &&
	    evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
		c->req.flags &= ~PROXY_RF_KEEP_ALIVE;
	if (!(c->req.flags & PROXY_RF_KEEP_ALIVE)) {
		conn_close_after_flush(c);
		return;
	}
	request_reset(c);
}

/*
 * Parses the response head (skipping 1xx) and sends it on: 1 done, 0 more
 * input needed, -1 when c was answered, retried or freed.
 */
static int
response_head(struct proxy_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->req.upconn->bev);
	struct http_head rh;
	size_t len, n;
	const char *buf;
	bool dechunk, close;
	int r;

	for (;;) {
		len = evbuffer_get_length(in);
		n = len < PROXY_MAX_RESP_HEAD ? len : PROXY_MAX_RESP_HEAD;
		if (n == 0)
			return 0;
		buf = (const char *)evbuffer_pullup(in, (ssize_t)n);
		r = http_parse_response_head(buf, n, &rh);
		if (r == 0 && len < PROXY_MAX_RESP_HEAD)
			return 0;
		if (r <= 0 || rh.status == 101) {
			log_warnx("malformed response from the upstream", "route=%s",
				  route_name(c));
			reply_error(c, 502, "bad_gateway", "malformed response from the upstream",
				    0);
			return -1;
		}
		if (rh.status >= 200)
			break;
		evbuffer_drain(in, (size_t)r); /* 1xx: our own 100 Continue was sent already */
	}
	if (rh.status == 401 &&
	    (c->req.flags & (PROXY_RF_STAMP | PROXY_RF_RETRYABLE | PROXY_RF_RETRIED)) ==
		(PROXY_RF_STAMP | PROXY_RF_RETRYABLE) &&
	    invalid_token_challenge(&rh)) {
		retry_after_refresh(c);
		return -1;
	}
	c->req.status = rh.status;
	c->req.up_ms = now_ms() - c->req.up_started_ms;
	if (method_is(&c->req.head, "HEAD") || rh.status == 204 || rh.status == 304)
		proxy_body_init(&c->req.resp_body, PROXY_BODY_NONE, 0);
	else if (rh.chunked)
		proxy_body_init(&c->req.resp_body, PROXY_BODY_CHUNKED, 0);
	else if (rh.content_length >= 0)
		proxy_body_init(&c->req.resp_body, PROXY_BODY_LENGTH, (uint64_t)rh.content_length);
	else
		proxy_body_init(&c->req.resp_body, PROXY_BODY_EOF, 0);
	if (!rh.keep_alive || c->req.resp_body.mode == PROXY_BODY_EOF)
		c->req.flags |= PROXY_RF_RESP_CLOSE;
	else
		c->req.flags &= ~PROXY_RF_RESP_CLOSE;
	dechunk = c->req.resp_body.mode == PROXY_BODY_CHUNKED && c->req.head.minor == 0;
	c->req.resp_body.dechunk = dechunk;
	close = !(c->req.flags & PROXY_RF_KEEP_ALIVE) || c->req.resp_body.mode == PROXY_BODY_EOF ||
		dechunk || c->proxy->stopping;
	if (close)
		c->req.flags &= ~PROXY_RF_KEEP_ALIVE;
	render_response(c, &rh, dechunk, close);
	evbuffer_drain(in, (size_t)r);
	c->req.state = PROXY_REQ_RESPONSE;
	return 1;
}

/* Moves response body bytes to the client; false when c was freed or finished. */
static bool
pump_response(struct proxy_conn *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev), *s = c->proxy->scratch;
	int r = proxy_body_relay(&c->req.resp_body, bufferevent_get_input(c->req.upconn->bev), s);

	send_msg(c->bev, s, c->mode != PROXY_MODE_INTERCEPT);
	if (r < 0) {
		log_warnx("malformed response body from the upstream", "route=%s", route_name(c));
		conn_free(c);
		return false;
	}
	if (r == 1) {
		response_done(c);
		return false;
	}
	if (evbuffer_get_length(out) > PROXY_HIGH_WATER) {
		bufferevent_disable(c->req.upconn->bev, EV_READ);
		c->flags |= PROXY_CF_FAR_PAUSED;
	}
	return true;
}

static void
up_read_cb(struct bufferevent *bev, void *arg)
{
	struct proxy_upconn *up = arg;
	struct proxy_conn *c = up->conn;

	(void)bev;
	if (c == NULL) {
		upconn_free(up); /* an idle connection got data or EOF: unusable */
		return;
	}
	if (c->req.state == PROXY_REQ_FORWARD && response_head(c) <= 0)
		return;
	pump_response(c);
}

static void
up_write_cb(struct bufferevent *bev, void *arg)
{
	struct proxy_upconn *up = arg;
	struct proxy_conn *c = up->conn;

	(void)bev;
	if (c == NULL || !(c->flags & PROXY_CF_READ_PAUSED))
		return;
	c->flags &= ~PROXY_CF_READ_PAUSED;
	bufferevent_enable(c->bev, EV_READ);
	pump_request(c);
}

static void
up_failed(struct proxy_conn *c, short what)
{
	struct proxy_upconn *up = c->req.upconn;
	unsigned long e = bufferevent_get_openssl_error(up->bev);
	char desc[256];

	/* a pooled connection the upstream closed meanwhile: once more on a new one */
	if (!(what & BEV_EVENT_TIMEOUT) && up->uses > 0 &&
	    (c->req.flags & (PROXY_RF_RETRYABLE | PROXY_RF_FRESH_CONN)) == PROXY_RF_RETRYABLE &&
	    evbuffer_get_length(bufferevent_get_input(up->bev)) == 0) {
		upconn_release(c, false);
		c->req.flags |= PROXY_RF_FRESH_CONN;
		request_token(c);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		log_warnx("upstream timed out", "route=%s", route_name(c));
		reply_error(c, 504, "gateway_timeout", "the upstream did not answer in time", 0);
		return;
	}
	if (e != 0)
		snprintf(desc, sizeof(desc), "TLS with the upstream failed: %s",
			 ERR_reason_error_string(e) != NULL ? ERR_reason_error_string(e)
							    : "unknown error");
	else
		snprintf(desc, sizeof(desc),
			 "the upstream is unreachable or closed the connection");
	log_warnx("upstream failed", "route=%s error=\"%s\"", route_name(c), desc);
	reply_error(c, 502, "bad_gateway", desc, 0);
}

static void
up_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct proxy_upconn *up = arg;
	struct proxy_conn *c = up->conn;
	int one = 1;

	if (what & BEV_EVENT_CONNECTED) {
		up->connected = true;
		setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (c != NULL)
			arm_timeouts(c);
		return;
	}
	if (c == NULL) {
		upconn_free(up);
		return;
	}
	if (c->req.state == PROXY_REQ_FORWARD) {
		int r = response_head(c);

		if (r < 0)
			return;
		if (r == 0) {
			up_failed(c, what);
			return;
		}
	}
	if (!pump_response(c))
		return; /* complete, or c is gone */
	if ((what & BEV_EVENT_EOF) && c->req.resp_body.mode == PROXY_BODY_EOF) {
		c->req.flags |= PROXY_RF_RESP_CLOSE;
		response_done(c);
		return;
	}
	log_warnx("upstream closed mid-response", "route=%s", route_name(c));
	count_request(c, 0);
	conn_free(c);
}

/* Client connections */

static void
conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct proxy_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	switch (c->state) {
	case PROXY_CONN_HEAD:
		process_head(c);
		return;
	case PROXY_CONN_TUNNEL:
		tunnel_from_client(c);
		return;
	case PROXY_CONN_CLOSING:
		evbuffer_drain(in, evbuffer_get_length(in));
		return;
	case PROXY_CONN_REQUEST:
		break;
	}
	switch (c->req.state) {
	case PROXY_REQ_BODY_BUFFER:
		buffer_body(c);
		return;
	case PROXY_REQ_FORWARD:
	case PROXY_REQ_RESPONSE:
		if (c->req.upconn != NULL && !(c->req.flags & PROXY_RF_SENT))
			pump_request(c);
		return;
	case PROXY_REQ_TOKEN:
	case PROXY_REQ_REFRESH:
	case PROXY_REQ_CONNECT:
		return; /* waits in the buffer, bounded by the read watermark */
	}
}

static void
conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct proxy_conn *c = arg;

	if (c->state == PROXY_CONN_CLOSING) {
		if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			conn_linger(c);
		return;
	}
	if (!(c->flags & PROXY_CF_FAR_PAUSED))
		return;
	c->flags &= ~PROXY_CF_FAR_PAUSED;
	if (c->state == PROXY_CONN_TUNNEL && c->tunnel != NULL) {
		bufferevent_enable(c->tunnel, EV_READ);
		return;
	}
	if (c->req.upconn != NULL) {
		bufferevent_enable(c->req.upconn->bev, EV_READ);
		pump_response(c);
	}
}

/* Bytes not yet handed to the kernel. */
static size_t
conn_output_pending(struct proxy_conn *c)
{
	struct bufferevent *under =
	    c->mode == PROXY_MODE_INTERCEPT ? bufferevent_get_underlying(c->bev) : NULL;

	return evbuffer_get_length(bufferevent_get_output(c->bev)) +
	       (under != NULL ? evbuffer_get_length(bufferevent_get_output(under)) : 0);
}

/*
 * The client shut its sending side (a half-close; all it sent is in the
 * input now).  A request already complete is still answered, and a tunnel
 * passes the rest on, shuts the far side's sending side and relays its answer;
 * anything else ends here.
 */
static void
client_done_sending(struct proxy_conn *c)
{
	c->flags |= PROXY_CF_CLIENT_EOF;
	switch (c->state) {
	case PROXY_CONN_HEAD:
		conn_free(c); /* no request, or an incomplete head */
		return;
	case PROXY_CONN_TUNNEL:
		tunnel_from_client(c);
		tunnel_shut_far(c);
		return;
	case PROXY_CONN_CLOSING:
		if (conn_output_pending(c) > 0)
			return; /* conn_write_cb lingers when it is out */
		conn_free(c);
		return;
	case PROXY_CONN_REQUEST:
		break;
	}
	switch (c->req.state) {
	case PROXY_REQ_BODY_BUFFER:
		conn_free(c); /* an incomplete request */
		return;
	case PROXY_REQ_CONNECT:
		return; /* tun_event_cb passes it on */
	case PROXY_REQ_TOKEN:
	case PROXY_REQ_REFRESH:
		return; /* request_send sends what there is and finds out if it is complete */
	case PROXY_REQ_FORWARD:
	case PROXY_REQ_RESPONSE:
		if (c->req.flags & PROXY_RF_SENT)
			return;
		if (c->req.upconn != NULL)
			pump_request(c); /* answers or frees c when the body is cut short */
		else
			conn_free(c);
		return;
	}
}

static void
conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct proxy_conn *c = arg;

	if (what & BEV_EVENT_CONNECTED) {
		/* the TLS handshake of an intercepted CONNECT is done: see intercept() */
		c->flags &= ~PROXY_CF_HANDSHAKE;
		if (bufferevent_get_underlying(bev) != NULL)
			set_timeouts(bufferevent_get_underlying(bev), 0,
				     pcfg(c->proxy)->idle_timeout);
		return;
	}
	if ((what & BEV_EVENT_EOF) && !(what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) &&
	    c->mode != PROXY_MODE_INTERCEPT) {
		client_done_sending(c);
		return;
	}
	conn_free(c);
}

static void
conn_free(struct proxy_conn *c)
{
	struct proxy_listener *l = c->listener;
	struct proxy *p = c->proxy;

	if (c->req.waiter != NULL)
		cache_waiter_cancel(c->proxy->cache, c->req.waiter);
	if (c->timer != NULL)
		event_free(c->timer);
	if (c->linger_poll != NULL)
		event_free(c->linger_poll);
	upconn_release(c, false);
	if (c->tunnel != NULL)
		bufferevent_free(c->tunnel);
	bufferevent_free(c->bev);
	free(c->connect_host);
	free(c->req.head_buf);
	if (c->req.upstream_head != NULL)
		evbuffer_free(c->req.upstream_head);
	if (c->req.retry_body != NULL)
		evbuffer_free(c->req.retry_body);
	TAILQ_REMOVE(&c->proxy->conns, c, link);
	l->n_conns--;
	p->n_conns--;
	free(c);
}

/*
 * A connection over max_connections: a best-effort 503 (the same answer as
 * http.c's), then close.  Listeners keep accepting, so a client beyond the
 * cap learns why at once instead of waiting in the backlog.
 */
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

static void
on_accept(struct evconnlistener *ev, evutil_socket_t fd, struct sockaddr *sa, int socklen,
	  void *arg)
{
	struct proxy_listener *l = arg;
	struct proxy *p = l->proxy;
	struct proxy_conn *c;
	int one = 1;

	(void)sa;
	(void)socklen;
	(void)ev;
	l->starved = false;
	if (p->n_conns >= pcfg(p)->max_connections) {
		log_debug("proxy connection refused", "listener=%s reason=max_connections conns=%u",
			  l->name, p->n_conns);
		reject_busy(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		close(fd);
		return;
	}
	c->bev = bufferevent_socket_new(p->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL) {
		close(fd);
		free(c);
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->proxy = p;
	c->listener = l;
	c->mode = l->mode;
	TAILQ_INSERT_TAIL(&p->conns, c, link);
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_READ, 0, PROXY_HIGH_WATER);
	bufferevent_enable(c->bev, EV_WRITE);
	l->n_conns++;
	p->n_conns++;
	request_reset(c);
}

static void
on_accept_rest(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_listener *l = arg;

	(void)fd;
	(void)what;
	if (!l->proxy->stopping)
		evconnlistener_enable(l->evl);
}

/* accept failed: out of descriptors would make the listener spin, so it rests 100 ms */
static void
on_accept_error(struct evconnlistener *ev, void *arg)
{
	struct proxy_listener *l = arg;
	struct timeval tv = {0, 100000};
	int e = EVUTIL_SOCKET_ERROR();

	if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM)
		return;
	if (!l->starved)
		log_warnx("proxy cannot accept: out of descriptors", "listener=%s", l->name);
	l->starved = true;
	evconnlistener_disable(ev);
	if (l->rest == NULL)
		l->rest = evtimer_new(l->proxy->base, on_accept_rest, l);
	if (l->rest != NULL)
		evtimer_add(l->rest, &tv);
}

/* Setup */

static int
listen_tcp(const struct config_listen *cl)
{
	int fd, one = 1, r;

	fd = socket(cl->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (const struct sockaddr *)&cl->addr, cl->addr_len) < 0 ||
	    listen(fd, PROXY_BACKLOG) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

static int
listener_start(struct proxy *p, struct proxy_upstream *u, const struct config_listen *cl)
{
	struct proxy_listener *l = &p->listeners[p->n_listeners];
	int fd;

	fd = listen_tcp(cl);
	if (fd < 0) {
		log_error("cannot listen", "listener=proxy address=%s error=\"%s\"", cl->text,
			  strerror(-fd));
		return fd;
	}
	l->proxy = p;
	l->mode = u != NULL ? PROXY_MODE_BASE_URL : PROXY_MODE_FORWARD;
	l->upstream = u;
	l->name = strdup(u != NULL ? u->route->name : "forward");
	l->evl = l->name != NULL
		     ? evconnlistener_new(p->base, on_accept, l, LEV_OPT_CLOSE_ON_FREE, 0, fd)
		     : NULL;
	if (l->evl == NULL) {
		free(l->name);
		l->name = NULL;
		close(fd);
		return -ENOMEM;
	}
	evconnlistener_set_error_cb(l->evl, on_accept_error);
	p->n_listeners++;
	log_info("proxy listening", "mode=%s address=%s", u != NULL ? "base-url" : "forward",
		 cl->text);
	if (u != NULL)
		log_info("proxy route", "route=%s upstream=%s", u->route->name, u->route->upstream);
	return 0;
}

/* The cache entry route r of cfg stamps with (NULL for passthrough). */
static int
route_entry(struct proxy *p, const struct config *cfg, struct source **sources,
	    const struct config_route *r, struct cache_entry **out)
{
	const struct config_audience *a = r->audience;

	*out = NULL;
	if (r->passthrough || a == NULL)
		return 0;
	return cache_entry_get(p->cache, sources[config_identity_index(cfg, a->identity)],
			       a->identity->name, a->resource, true, out);
}

static int
upstream_init(struct proxy *p, struct proxy_upstream *u, const struct config_route *r)
{
	const char *ca = r->ca_file != NULL	    ? r->ca_file
			 : pcfg(p)->ca_file != NULL ? pcfg(p)->ca_file
						    : p->cfg->ca_file;
	bool v6 = strchr(r->upstream_host, ':') != NULL;
	bool dflt = r->upstream_port == (r->upstream_tls ? 443u : 80u);
	int n;

	u->proxy = p;
	u->route = r;
	TAILQ_INIT(&u->idle);
	n = dflt
		? asprintf(&u->host_field, v6 ? "Host: [%s]\r\n" : "Host: %s\r\n", r->upstream_host)
		: asprintf(&u->host_field, v6 ? "Host: [%s]:%u\r\n" : "Host: %s:%u\r\n",
			   r->upstream_host, r->upstream_port);
	if (n < 0) {
		u->host_field = NULL;
		return -ENOMEM;
	}
	u->host_field_len = (size_t)n;
	if (r->upstream_tls) {
		u->ssl = SSL_CTX_new(TLS_client_method());
		if (u->ssl == NULL)
			return -ENOMEM;
		SSL_CTX_set_min_proto_version(u->ssl, TLS1_2_VERSION);
		SSL_CTX_set_verify(u->ssl, SSL_VERIFY_PEER, NULL);
		if (SSL_CTX_set_default_verify_paths(u->ssl) != 1 ||
		    (ca != NULL && SSL_CTX_load_verify_locations(u->ssl, ca, NULL) != 1)) {
			log_error("cannot load the trust anchors", "route=%s ca_file=%s", r->name,
				  ca != NULL ? ca : "-");
			ERR_clear_error();
			return -EINVAL;
		}
	}
	return route_entry(p, p->cfg, p->sources, r, &u->entry);
}

static void
upstream_fini(struct proxy_upstream *u)
{
	struct proxy_upconn *up;

	while ((up = TAILQ_FIRST(&u->idle)) != NULL)
		upconn_free(up);
	if (u->ssl != NULL)
		SSL_CTX_free(u->ssl);
	free(u->host_field);
}

static bool
has_listener(const struct config_proxy *cp)
{
	if (cp == NULL)
		return false;
	if (cp->listen != NULL)
		return true;
	for (size_t i = 0; i < cp->n_routes; i++)
		if (cp->routes[i].listen != NULL)
			return true;
	return false;
}

static struct evdns_base *
dns_new(struct event_base *base)
{
	struct evdns_base *dns = evdns_base_new(base, 0);

	/* hosts file and the system's resolvers; literal addresses need neither */
	if (dns != NULL)
		evdns_base_resolv_conf_parse(dns, DNS_OPTIONS_ALL, "/etc/resolv.conf");
	return dns;
}

/* The intercept CA, constrained to the hosts the routes match (the only ones intercepted). */
static int
ca_start(struct proxy *p, const struct config_proxy *cp)
{
	const char **hosts = calloc(cp->n_routes + 1, sizeof(*hosts));
	size_t n = 0;
	int r;

	if (hosts == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < cp->n_routes; i++)
		if (cp->routes[i].match_host != NULL)
			hosts[n++] = cp->routes[i].match_host;
	r = proxy_ca_new(&p->ca, cp->intercept_ca_dir, hosts, n);
	free(hosts);
	return r;
}

int
proxy_new(struct proxy **out, struct event_base *base, struct cache *cache,
	  const struct config *cfg, struct source **sources)
{
	const struct config_proxy *cp = cfg->proxy;
	struct proxy *p;
	int r = -ENOMEM;

	*out = NULL;
	if (!has_listener(cp))
		return 0;
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return -ENOMEM;
	p->base = base;
	p->cache = cache;
	p->cfg = cfg;
	p->sources = sources;
	TAILQ_INIT(&p->conns);
	p->dns = dns_new(base);
	p->scratch = evbuffer_new();
	if (cp->connect == CONFIG_CONNECT_INTERCEPT && (r = ca_start(p, cp)) < 0)
		goto fail;
	r = -ENOMEM;
	p->upstreams = calloc(cp->n_routes + 1, sizeof(*p->upstreams));
	p->listeners = calloc(cp->n_routes + 1, sizeof(*p->listeners));
	if (p->dns == NULL || p->upstreams == NULL || p->listeners == NULL || p->scratch == NULL)
		goto fail;
	for (size_t i = 0; i < cp->n_routes; i++) {
		p->n_upstreams++;
		r = upstream_init(p, &p->upstreams[i], &cp->routes[i]);
		if (r < 0)
			goto fail;
	}
	if (cp->listen != NULL && (r = listener_start(p, NULL, cp->listen)) < 0)
		goto fail;
	for (size_t i = 0; i < cp->n_routes; i++)
		if (cp->routes[i].listen != NULL &&
		    (r = listener_start(p, &p->upstreams[i], cp->routes[i].listen)) < 0)
			goto fail;
	*out = p;
	return 0;
fail:
	proxy_free(p);
	return r;
}

void
proxy_stop_accepting(struct proxy *p)
{
	struct proxy_conn *c, *next;

	if (p == NULL)
		return;
	p->stopping = true;
	for (size_t i = 0; i < p->n_listeners; i++)
		evconnlistener_disable(p->listeners[i].evl);
	for (c = TAILQ_FIRST(&p->conns); c != NULL; c = next) {
		next = TAILQ_NEXT(c, link);
		if (c->state == PROXY_CONN_HEAD &&
		    evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
			conn_free(c);
	}
}

unsigned
proxy_pending(const struct proxy *p)
{
	const struct proxy_conn *c;
	unsigned n = 0;

	if (p == NULL)
		return 0;
	TAILQ_FOREACH(c, &p->conns, link)
	if (c->state == PROXY_CONN_REQUEST && c->req.state != PROXY_REQ_CONNECT)
		n++; /* a tunnel's far side is not a request in flight */
	return n;
}

unsigned
proxy_connections(const struct proxy *p)
{
	return p != NULL ? p->n_conns : 0;
}

struct proxy *
proxy_free(struct proxy *p)
{
	struct proxy_conn *c;

	if (p == NULL)
		return NULL;
	p->stopping = true;
	while ((c = TAILQ_FIRST(&p->conns)) != NULL)
		conn_free(c);
	for (size_t i = 0; i < p->n_listeners; i++) {
		evconnlistener_free(p->listeners[i].evl);
		if (p->listeners[i].rest != NULL)
			event_free(p->listeners[i].rest);
		free(p->listeners[i].name);
	}
	for (size_t i = 0; i < p->n_upstreams; i++)
		upstream_fini(&p->upstreams[i]);
	free(p->listeners);
	free(p->upstreams);
	if (p->scratch != NULL)
		evbuffer_free(p->scratch);
	proxy_ca_free(p->ca);
	if (p->dns != NULL)
		evdns_base_free(p->dns, 0);
	free(p);
	return NULL;
}

void
proxy_set_metrics(struct proxy *p, struct metrics *m)
{
	if (p != NULL)
		p->metrics = m;
}

void
proxy_collect(const struct proxy *p, struct metrics *m)
{
	char name[160];

	for (size_t i = 0; p != NULL && i < p->n_listeners; i++) {
		snprintf(name, sizeof(name), "proxy-%s", p->listeners[i].name);
		metrics_gauge_set(m, METRICS_CONNECTIONS_OPEN, name,
				  (double)p->listeners[i].n_conns);
	}
}

/*
 * All or nothing: on failure the proxy keeps the old configuration, which the
 * caller keeps alive.  The pointers into the configuration are p->cfg,
 * p->sources and each upstream's route (listener names are copies; the
 * connections reach the configuration only through these), all replaced
 * together.
 */
int
proxy_reconfigure(struct proxy *p, const struct config *cfg, struct source **sources)
{
	struct cache_entry **entries;
	int r = 0;

	if (p == NULL)
		return has_listener(cfg->proxy) ? -ENOTSUP : 0;
	if (!config_proxy_equal(p->cfg->proxy, cfg->proxy))
		return -ENOTSUP;
	entries = calloc(p->n_upstreams + 1, sizeof(*entries));
	if (entries == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < p->n_upstreams && r == 0; i++)
		r = route_entry(p, cfg, sources, &cfg->proxy->routes[i], &entries[i]);
	if (r == 0) {
		p->cfg = cfg;
		p->sources = sources;
		for (size_t i = 0; i < p->n_upstreams; i++) {
			p->upstreams[i].route = &cfg->proxy->routes[i];
			p->upstreams[i].entry = entries[i];
		}
	}
	free(entries);
	return r;
}
