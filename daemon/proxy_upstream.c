/*
 * The proxy's upstream side (see proxy_int.h): a pool of connections per
 * route (plain or TLS, verified against the route's trust anchors), the
 * request head rendered for the upstream and sent with its body, and the
 * response relayed back with our framing.  Bodies stream both ways through
 * proxy_body.c with watermarks for back-pressure: a slow side stops reads
 * on the other.  A 401 invalid_token answer to a stamped retryable request
 * sends it once more with a refreshed token, and a pooled connection the
 * upstream had closed once more on a new one.
 */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "cache.h"
#include "log.h"
#include "proxy_int.h"
#include "proxy_route.h"

#define PROXY_MAX_RESP_HEAD 65536 /* upstream response head; larger -> 502 */
#define PROXY_POOL_MAX	    256	  /* idle upstream connections per route */
#define PROXY_VIA	    "Via: 1.1 bearerd\r\n"

static void up_read_cb(struct bufferevent *bev, void *arg);
static void up_write_cb(struct bufferevent *bev, void *arg);
static void up_event_cb(struct bufferevent *bev, short what, void *arg);

/* The pool */

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
void
proxy_upconn_release(struct proxy_conn *c, bool reuse)
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
	proxy_set_timeouts(up->bev, proxy_cfg(p)->connect_timeout, proxy_cfg(p)->connect_timeout);
	if (bufferevent_socket_connect_hostname(up->bev, p->dns, AF_UNSPEC,
						proxy_dial_name(u->route->upstream_host),
						(int)u->route->upstream_port) < 0) {
		up->upstream = NULL; /* not in the idle list */
		upconn_free(up);
		return NULL;
	}
	return up;
}

/* Requests */

/* The upstream request head, all but Authorization and the blank line. */
int
proxy_upstream_render_request(struct proxy_conn *c, const char *path, size_t path_len)
{
	const struct http_head *h = &c->req.head;
	const struct config_route *r = c->req.upstream->route;
	struct evbuffer *out;
	char num[64];

	if (c->req.upstream_head == NULL && (c->req.upstream_head = evbuffer_new()) == NULL)
		return -ENOMEM;
	out = c->req.upstream_head;
	evbuffer_drain(out, evbuffer_get_length(out));
	evbuffer_add(out, h->method, h->method_len);
	evbuffer_add(out, " ", 1);
	proxy_add_str(out, r->upstream_base);
	if (path_len == 0 || path[0] != '/')
		evbuffer_add(out, "/", 1);
	evbuffer_add(out, path, path_len);
	evbuffer_add(out, " HTTP/1.1\r\n", 11);
	evbuffer_add(out, c->req.upstream->host_field, c->req.upstream->host_field_len);
	for (int i = 0; i < h->nheaders; i++) {
		const struct http_header *f = &h->headers[i];

		if (proxy_route_hop_by_hop(h, f))
			continue;
		if ((c->req.flags & PROXY_RF_STAMP) && f->name_len == 13 &&
		    strncasecmp(f->name, "authorization", 13) == 0)
			continue;
		evbuffer_add(out, f->name, f->name_len);
		evbuffer_add(out, ": ", 2);
		evbuffer_add(out, f->value, f->value_len);
		evbuffer_add(out, "\r\n", 2);
	}
	if (h->chunked) {
		proxy_add_str(out, "Transfer-Encoding: chunked\r\n");
	} else if (h->content_length >= 0) {
		snprintf(num, sizeof(num), "Content-Length: %" PRId64 "\r\n", h->content_length);
		proxy_add_str(out, num);
	}
	proxy_add_str(out, PROXY_VIA);
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
	unsigned idle = proxy_cfg(c->proxy)->idle_timeout;
	bool sent = c->req.flags & PROXY_RF_SENT;

	proxy_set_timeouts(c->bev, sent ? 0 : idle, idle);
	if (c->req.upconn != NULL && c->req.upconn->connected)
		proxy_set_timeouts(c->req.upconn->bev, sent ? idle : 0, idle);
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
bool
proxy_upstream_pump_request(struct proxy_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct evbuffer *s = c->proxy->scratch;
	int r = proxy_body_relay(&c->req.req_body, in, s);

	send_msg(c->req.upconn->bev, s, up_direct(c->req.upconn));
	if (r < 0) {
		if (c->req.state == PROXY_REQ_RESPONSE) {
			proxy_conn_free(c);
			return false;
		}
		proxy_conn_reply_error(c, 400, "invalid_request", "malformed chunked request body",
				       0);
		return false;
	}
	if (r == 1) {
		c->req.flags |= PROXY_RF_SENT; /* a pipelined request waits in the input */
		arm_timeouts(c);
		return true;
	}
	if (c->flags & PROXY_CF_CLIENT_EOF) { /* the rest of the body will never come */
		if (c->req.state == PROXY_REQ_RESPONSE) {
			proxy_conn_free(c);
			return false;
		}
		proxy_conn_reply_error(c, 400, "invalid_request", "the request body ended early",
				       0);
		return false;
	}
	if (evbuffer_get_length(bufferevent_get_output(c->req.upconn->bev)) > PROXY_HIGH_WATER) {
		bufferevent_disable(c->bev, EV_READ);
		c->flags |= PROXY_CF_READ_PAUSED;
	}
	return true;
}

void
proxy_upstream_send(struct proxy_conn *c, const struct cache_token *tok)
{
	struct evbuffer *s = c->proxy->scratch;
	struct proxy_upconn *up;

	up = upconn_get(c->req.upstream, c->req.flags & PROXY_RF_FRESH_CONN);
	if (up == NULL) {
		proxy_conn_reply_error(c, 502, "bad_gateway", "cannot connect to the upstream", 0);
		return;
	}
	up->conn = c;
	c->req.upconn = up;
	c->req.up_started_ms = proxy_now_ms();
	proxy_req_enter(c, PROXY_REQ_FORWARD);
	c->req.flags &= ~PROXY_RF_SENT;
	evbuffer_add(s, evbuffer_pullup(c->req.upstream_head, -1),
		     evbuffer_get_length(c->req.upstream_head));
	if (tok != NULL) {
		c->req.sent_generation = tok->generation;
		evbuffer_add(s, "Authorization: Bearer ", 22);
		evbuffer_add(s, tok->value, tok->len);
		evbuffer_add(s, "\r\n", 2);
	}
	evbuffer_add(s, "\r\n", 2);
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
		proxy_upstream_pump_request(c); /* the head goes out with the first body bytes */
}

/* Responses */

/* The client-bound head: the upstream's without hop-by-hop fields, our framing. */
static void
render_response(struct proxy_conn *c, const struct http_head *rh, bool dechunk, bool close)
{
	struct evbuffer *out = c->proxy->scratch; /* sent with the first body bytes */
	char line[64];

	snprintf(line, sizeof(line), "HTTP/1.1 %03d ", rh->status);
	proxy_add_str(out, line);
	evbuffer_add(out, rh->target, rh->target_len);
	evbuffer_add(out, "\r\n", 2);
	for (int i = 0; i < rh->nheaders; i++) {
		const struct http_header *f = &rh->headers[i];
		bool cl = f->name_len == 14 && strncasecmp(f->name, "content-length", 14) == 0;

		if (!cl && proxy_route_hop_by_hop(rh, f))
			continue;
		evbuffer_add(out, f->name, f->name_len);
		evbuffer_add(out, ": ", 2);
		evbuffer_add(out, f->value, f->value_len);
		evbuffer_add(out, "\r\n", 2);
	}
	proxy_add_str(out, PROXY_VIA);
	if (c->req.resp_body.mode == PROXY_BODY_CHUNKED && !dechunk)
		proxy_add_str(out, "Transfer-Encoding: chunked\r\n");
	if (close)
		proxy_add_str(out, "Connection: close\r\n");
	else if (c->req.head.minor == 0)
		proxy_add_str(out, "Connection: keep-alive\r\n");
	evbuffer_add(out, "\r\n", 2);
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
	if (proxy_route_method_is(&c->req.head, "HEAD") || c->req.status == 204 ||
	    c->req.status == 304)
		return false;
	return c->req.status < 400 || c->req.req_body.mode == PROXY_BODY_NONE;
}

static void
response_done(struct proxy_conn *c)
{
	log_debug("proxy request", "route=%s status=%d ms=%" PRId64, proxy_conn_route_name(c),
		  c->req.status, proxy_now_ms() - c->req.started_ms);
	proxy_count_request(c, c->req.status);
	proxy_upconn_release(c, upconn_reusable(c));
	if (!(c->req.flags & PROXY_RF_SENT) || c->proxy->stopping)
		c->req.flags &= ~PROXY_RF_KEEP_ALIVE;
	/* a client that is done sending gets the answers to what it sent, then the close */
	if ((c->flags & PROXY_CF_CLIENT_EOF) &&
	    evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
		c->req.flags &= ~PROXY_RF_KEEP_ALIVE;
	if (!(c->req.flags & PROXY_RF_KEEP_ALIVE)) {
		proxy_conn_close_after_flush(c);
		return;
	}
	proxy_conn_next_request(c);
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
				  proxy_conn_route_name(c));
			proxy_conn_reply_error(c, 502, "bad_gateway",
					       "malformed response from the upstream", 0);
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
		proxy_conn_retry_after_refresh(c);
		return -1;
	}
	c->req.status = rh.status;
	c->req.up_ms = proxy_now_ms() - c->req.up_started_ms;
	if (proxy_route_method_is(&c->req.head, "HEAD") || rh.status == 204 || rh.status == 304)
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
bool
proxy_upstream_pump_response(struct proxy_conn *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev), *s = c->proxy->scratch;
	int r = proxy_body_relay(&c->req.resp_body, bufferevent_get_input(c->req.upconn->bev), s);

	send_msg(c->bev, s, c->mode != PROXY_MODE_INTERCEPT);
	if (r < 0) {
		log_warnx("malformed response body from the upstream", "route=%s",
			  proxy_conn_route_name(c));
		proxy_conn_free(c);
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

/* Upstream callbacks */

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
	proxy_upstream_pump_response(c);
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
	proxy_upstream_pump_request(c);
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
		proxy_upconn_release(c, false);
		c->req.flags |= PROXY_RF_FRESH_CONN;
		proxy_conn_request_token(c);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		log_warnx("upstream timed out", "route=%s", proxy_conn_route_name(c));
		proxy_conn_reply_error(c, 504, "gateway_timeout",
				       "the upstream did not answer in time", 0);
		return;
	}
	if (e != 0)
		snprintf(desc, sizeof(desc), "TLS with the upstream failed: %s",
			 ERR_reason_error_string(e) != NULL ? ERR_reason_error_string(e)
							    : "unknown error");
	else
		snprintf(desc, sizeof(desc),
			 "the upstream is unreachable or closed the connection");
	log_warnx("upstream failed", "route=%s error=\"%s\"", proxy_conn_route_name(c), desc);
	proxy_conn_reply_error(c, 502, "bad_gateway", desc, 0);
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
	if (!proxy_upstream_pump_response(c))
		return; /* complete, or c is gone */
	if ((what & BEV_EVENT_EOF) && c->req.resp_body.mode == PROXY_BODY_EOF) {
		c->req.flags |= PROXY_RF_RESP_CLOSE;
		response_done(c);
		return;
	}
	log_warnx("upstream closed mid-response", "route=%s", proxy_conn_route_name(c));
	proxy_count_request(c, 0);
	proxy_conn_free(c);
}

/* Setup */

int
proxy_upstream_init(struct proxy *p, struct proxy_upstream *u, const struct config_route *r)
{
	const char *ca = r->ca_file != NULL		 ? r->ca_file
			 : proxy_cfg(p)->ca_file != NULL ? proxy_cfg(p)->ca_file
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
	return 0;
}

void
proxy_upstream_fini(struct proxy_upstream *u)
{
	struct proxy_upconn *up;

	while ((up = TAILQ_FIRST(&u->idle)) != NULL)
		upconn_free(up);
	if (u->ssl != NULL)
		SSL_CTX_free(u->ssl);
	free(u->host_field);
}
