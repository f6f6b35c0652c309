/*
 * Internal to the proxy: what proxy.c, proxy_conn.c, proxy_upstream.c and
 * proxy_connect.c share, and nothing else includes.  Grouped by the file
 * that defines it, like relayd's relayd.h, so this header is the proxy's
 * index:
 *
 *   proxy.c          listeners and lifecycle, metrics, reconfigure
 *   proxy_conn.c     the client connection and its requests
 *   proxy_upstream.c the upstream pool, requests sent and responses relayed
 *   proxy_connect.c  CONNECT: the tunnel, and intercept's TLS
 *
 * The decisions that need no sockets are in proxy_route.c, bodies in
 * proxy_body.c, the intercept CA in proxy_ca.c.
 */
#ifndef BEARERD_PROXY_INT_H
#define BEARERD_PROXY_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <openssl/ssl.h>

#include "config.h"
#include "config_proxy.h"
#include "http_parse.h"
#include "proxy_body.h"

struct cache_token;

#define PROXY_HIGH_WATER (256 * 1024) /* buffered toward a slow side before reads stop */
#define PROXY_LOW_WATER	 (64 * 1024)  /* ...and resume */

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
#define PROXY_RF_FRESH_CONN                                                                        \
	0x10u			  /* the retry on a new connection (a stale pooled one) was used   \
				   */
#define PROXY_RF_SENT	    0x20u /* the whole request is with the upstream */
#define PROXY_RF_RESP_CLOSE 0x40u /* the upstream connection cannot serve another request */
#define PROXY_RF_KEEP_ALIVE 0x80u /* the client connection serves another request after this */

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

/* Helpers of all four files */

/* For deadlines and latencies. */
static inline int64_t
proxy_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline const struct config_proxy *
proxy_cfg(const struct proxy *p)
{
	return p->cfg->proxy;
}

/* Read and write timeouts of bev in seconds; 0 for none. */
static inline void
proxy_set_timeouts(struct bufferevent *bev, unsigned rd, unsigned wr)
{
	struct timeval r = {.tv_sec = rd, .tv_usec = 0}, w = {.tv_sec = wr, .tv_usec = 0};

	bufferevent_set_timeouts(bev, rd ? &r : NULL, wr ? &w : NULL);
}

static inline void
proxy_add_str(struct evbuffer *b, const char *s)
{
	evbuffer_add(b, s, strlen(s));
}

/*
 * The name to hand to the resolver for host: localhost names (RFC 6761) are
 * 127.0.0.1 without asking anyone, since a hosts file without them sends the
 * query to DNS (search domains first), and a token to what DNS answers.
 */
static inline const char *
proxy_dial_name(const char *host)
{
	return config_proxy_host_is_localhost(host) ? "127.0.0.1" : host;
}

/* The route of c's request, for logs; "-" before it is routed. */
static inline const char *
proxy_conn_route_name(const struct proxy_conn *c)
{
	return c->req.upstream != NULL ? c->req.upstream->route->name : "-";
}

/* c serves its request, which is now in state st. */
static inline void
proxy_req_enter(struct proxy_conn *c, enum proxy_req_state st)
{
	c->state = PROXY_CONN_REQUEST;
	c->req.state = st;
}

/* proxy.c */

/* One request of c answered (status 0: cut short), for the metrics. */
void proxy_count_request(struct proxy_conn *c, int status);

/* proxy_conn.c */

/*
 * Serves a connection accepted on l (the cap is checked by the caller);
 * closes fd when it cannot.
 */
void proxy_conn_accept(struct proxy_listener *l, int fd);
/* Closes c and everything it holds: its upstream connection, tunnel, waiter. */
void proxy_conn_free(struct proxy_conn *c);
/* Sets c->bev's callbacks and read watermark (at accept, and on intercept's TLS filter). */
void proxy_conn_watch(struct proxy_conn *c);
/* Makes c's one timer fire no later than at_ms; -ENOMEM. */
int proxy_conn_arm(struct proxy_conn *c, int64_t at_ms);
/* A JSON error to the client, then the connection closes (nothing forwarded afterwards). */
void proxy_conn_reply_error(struct proxy_conn *c, int status, const char *error,
			    const char *description, int64_t retry_after);
/* Closes c once its output is out (and the client had time to read it). */
void proxy_conn_close_after_flush(struct proxy_conn *c);
/* The request is over: c waits for the next head, or parses the one buffered already. */
void proxy_conn_next_request(struct proxy_conn *c);
/* Gets the request's token (when it is stamped), then sends the request. */
void proxy_conn_request_token(struct proxy_conn *c);
/* The upstream said invalid_token: refresh the token, then send the request once more. */
void proxy_conn_retry_after_refresh(struct proxy_conn *c);

/* proxy_upstream.c */

/* The pool of route r; -ENOMEM, or -EINVAL when its trust anchors do not load. */
int proxy_upstream_init(struct proxy *p, struct proxy_upstream *u, const struct config_route *r);
/* Closes the pool; the cache entry stays the cache's. */
void proxy_upstream_fini(struct proxy_upstream *u);
/* Renders c's request head for the upstream (path: what follows the base path); -ENOMEM. */
int proxy_upstream_render_request(struct proxy_conn *c, const char *path, size_t path_len);
/* Sends c's request (stamped with tok unless NULL) on a pooled or new upstream connection. */
void proxy_upstream_send(struct proxy_conn *c, const struct cache_token *tok);
/* Detaches c's upstream connection: back to the pool when reuse, else closed. */
void proxy_upconn_release(struct proxy_conn *c, bool reuse);
/* Moves request body bytes to the upstream; false when c was answered or freed. */
bool proxy_upstream_pump_request(struct proxy_conn *c);
/* Moves response body bytes to the client; false when c was freed or finished. */
bool proxy_upstream_pump_response(struct proxy_conn *c);

/* proxy_connect.c */

/* A CONNECT request on c: refused, tunnelled, or intercepted, per [proxy] connect. */
void proxy_connect_handle(struct proxy_conn *c);
/* TUNNEL: moves what the client sent to the far side. */
void proxy_connect_from_client(struct proxy_conn *c);
/* TUNNEL, after the client's half-close: the far side sees EOF once its last bytes are out. */
void proxy_connect_shut_far(struct proxy_conn *c);

#endif
