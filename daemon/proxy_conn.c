/*
 * The proxy's client connections and their requests (see proxy_int.h).
 * Request heads are parsed by the strict parser of the local API
 * (http_parse.c) and routed per the connection's mode; a request then gets
 * its token from the shared cache and goes to proxy_upstream.c.
 *
 * A connection waits for a request head (PROXY_CONN_HEAD), then serves the
 * request (PROXY_CONN_REQUEST: BODY_BUFFER -> TOKEN -> FORWARD -> RESPONSE,
 * with REFRESH for a retry) and goes back for the next one.  Tokens are
 * written into the upstream request and nowhere else (never logged).  Every
 * error before the response head is ours is a JSON reply, after which the
 * connection closes.  Deadlines (the head's, the intercept handshake's, the
 * linger after our close) are absolute, on the connection's one timer.
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
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "cache.h"
#include "http.h"
#include "json_write.h"
#include "log.h"
#include "proxy_int.h"
#include "proxy_route.h"

#define PROXY_MAX_HEAD 16384 /* request head; larger -> 431 */
#define PROXY_LINGER_S 2     /* reading what a client still sends after our close */
#define PROXY_POLL_MS  10    /* checks for a refreshed token */

static void process_head(struct proxy_conn *c);
static void conn_linger(struct proxy_conn *c);
static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_write_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void on_timer(evutil_socket_t fd, short what, void *arg);

/* The timer */

/*
 * Makes c's timer fire no later than at_ms.  Lazy, as in http.c: the timer
 * stays armed and on_timer re-evaluates when it fires, so a request head that
 * arrives whole costs no timer at all, and a deadline later than the armed
 * one costs nothing.  -ENOMEM when there is no timer.
 */
int
proxy_conn_arm(struct proxy_conn *c, int64_t at_ms)
{
	int64_t now = proxy_now_ms(), d = at_ms > now ? at_ms - now : 0;
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

/* Closing and replies */

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
		c->deadline_ms = proxy_now_ms() + PROXY_LINGER_S * 1000;
		/* else the read timeout below still ends it */
		(void)proxy_conn_arm(c, c->deadline_ms);
	}
	proxy_set_timeouts(c->bev, PROXY_LINGER_S, PROXY_LINGER_S);
	bufferevent_enable(c->bev, EV_READ); /* last: a TLS filter defers its callbacks anyway */
}

void
proxy_conn_close_after_flush(struct proxy_conn *c)
{
	c->state = PROXY_CONN_CLOSING;
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	bufferevent_enable(c->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_linger(c);
}

/*
 * A JSON error to the client, then the connection closes (nothing forwarded
 * afterwards).  allow: the Allow field's value (405), or NULL.
 */
static void
reply_error_with(struct proxy_conn *c, int status, const char *error, const char *description,
		 int64_t retry_after, const char *allow)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	struct evbuffer *b = evbuffer_new();
	const char *reason = http_status_text(status);

	proxy_upconn_release(c, false);
	if (b != NULL)
		json_append_error(b, error, description);
	evbuffer_add_printf(out,
			    "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
			    "Content-Length: %zu\r\n",
			    status, reason, b != NULL ? evbuffer_get_length(b) : 0);
	if (retry_after > 0)
		evbuffer_add_printf(out, "Retry-After: %" PRId64 "\r\n", retry_after);
	if (allow != NULL)
		evbuffer_add_printf(out, "Allow: %s\r\n", allow);
	proxy_add_str(out, "Connection: close\r\n\r\n");
	if (b != NULL) {
		if (c->req.head.method == NULL || c->req.head.method_len != 4 ||
		    memcmp(c->req.head.method, "HEAD", 4))
			evbuffer_add_buffer(out, b);
		evbuffer_free(b);
	}
	log_debug("proxy request refused", "route=%s status=%d error=%s", proxy_conn_route_name(c),
		  status, error);
	c->req.up_ms = -1;
	proxy_count_request(c, status);
	proxy_conn_close_after_flush(c);
}

void
proxy_conn_reply_error(struct proxy_conn *c, int status, const char *error, const char *description,
		       int64_t retry_after)
{
	reply_error_with(c, status, error, description, retry_after, NULL);
}

void
proxy_conn_next_request(struct proxy_conn *c)
{
	const struct config_proxy *cp = proxy_cfg(c->proxy);

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
	proxy_set_timeouts(c->bev, cp->idle_timeout, cp->idle_timeout);
	bufferevent_setwatermark(c->bev, EV_WRITE, PROXY_LOW_WATER, 0);
	if (!(c->flags & PROXY_CF_CLIENT_EOF))
		bufferevent_enable(c->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
		process_head(c);
}

/* Tokens */

static void
on_answer(struct proxy_conn *c, const struct cache_answer *a)
{
	if (a->status != 200) {
		proxy_conn_reply_error(c, 503,
				       a->error != NULL ? a->error : "temporarily_unavailable",
				       a->description != NULL ? a->description : "no valid token",
				       a->retry_after > 0 ? a->retry_after : 1);
		return;
	}
	proxy_upstream_send(c, a->token);
}

static void
on_token(void *arg, const struct cache_answer *a)
{
	struct proxy_conn *c = arg;

	c->req.waiter = NULL;
	on_answer(c, a);
}

void
proxy_conn_request_token(struct proxy_conn *c)
{
	struct cache_answer now;
	int r;

	if (!(c->req.flags & PROXY_RF_STAMP)) {
		proxy_upstream_send(c, NULL);
		return;
	}
	proxy_req_enter(c, PROXY_REQ_TOKEN);
	r = cache_request(c->proxy->cache, c->req.upstream->entry, 0, on_token, c, &now,
			  &c->req.waiter);
	if (r == -EINPROGRESS)
		return;
	if (r < 0) {
		proxy_conn_reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
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
		if (proxy_conn_arm(c, now + PROXY_POLL_MS) < 0)
			proxy_conn_reply_error(c, 503, "temporarily_unavailable", "out of memory",
					       1);
		return;
	}
	proxy_conn_request_token(c);
}

/* The upstream said invalid_token: refresh, then send the request once more. */
void
proxy_conn_retry_after_refresh(struct proxy_conn *c)
{
	int64_t now = proxy_now_ms();

	log_info("upstream rejected the token, refreshing it", "route=%s",
		 proxy_conn_route_name(c));
	c->req.flags |= PROXY_RF_RETRIED;
	proxy_upconn_release(c, false);
	/* at most once per token: a refreshed token that is rejected again is not refreshed */
	cache_refresh_token(c->proxy->cache, c->req.upstream->entry, c->req.sent_generation,
			    &(int64_t){0});
	proxy_req_enter(c, PROXY_REQ_REFRESH);
	c->req.refresh_deadline_ms = now + c->proxy->cfg->wait_timeout * 1000;
	if (proxy_conn_arm(c, now + PROXY_POLL_MS) < 0)
		proxy_conn_reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
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
	int64_t now = proxy_now_ms();

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
			(void)proxy_conn_arm(c, c->deadline_ms);
			return;
		}
		if (c->flags & PROXY_CF_HANDSHAKE) {
			log_debug("proxy TLS handshake timed out", "listener=%s",
				  c->listener->name);
			proxy_conn_free(c);
			return;
		}
		log_debug("proxy request head timed out", "listener=%s", c->listener->name);
		proxy_conn_reply_error(c, 408, "invalid_request",
				       "the request head did not arrive within header_timeout", 0);
		return;
	case PROXY_CONN_CLOSING:
		if (!(c->flags & PROXY_CF_LINGERING))
			return;
		if (now < c->deadline_ms) {
			(void)proxy_conn_arm(c, c->deadline_ms);
			return;
		}
		proxy_conn_free(c);
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
		proxy_conn_reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
		return;
	}
	evbuffer_remove_buffer(in, c->req.retry_body, (size_t)c->req.head.content_length);
	proxy_conn_request_token(c);
}

/* Routing */

static struct proxy_upstream *
upstream_of(struct proxy *p, const struct config_route *r)
{
	for (size_t i = 0; i < p->n_upstreams; i++)
		if (p->upstreams[i].route == r)
			return &p->upstreams[i];
	return NULL;
}

/* Request heads */

/* The verdict for h per c's mode (not CONNECT), with the route set when known. */
static int
route_request(struct proxy_conn *c, const struct http_head *h, struct proxy_verdict *v)
{
	const struct config_proxy *cp = proxy_cfg(c->proxy);

	switch (c->mode) {
	case PROXY_MODE_BASE_URL:
		return proxy_route_base_url(c->listener->upstream->route, h, v);
	case PROXY_MODE_INTERCEPT:
		return proxy_route_intercepted(cp, c->connect_host, c->connect_port, h, v);
	case PROXY_MODE_FORWARD:
	case PROXY_MODE_TUNNEL: /* never parses a head */
		break;
	}
	return proxy_route_forward(cp, h, v);
}

static void
request_begin(struct proxy_conn *c)
{
	const struct http_head *h = &c->req.head;
	const struct http_header *f;
	struct proxy_verdict v;

	if (h->keep_alive && !c->proxy->stopping)
		c->req.flags |= PROXY_RF_KEEP_ALIVE;
	else
		c->req.flags &= ~PROXY_RF_KEEP_ALIVE;
	if (proxy_route_method_is(h, "CONNECT")) {
		proxy_connect_handle(c);
		return;
	}
	route_request(c, h, &v);
	if (v.route != NULL)
		c->req.upstream = upstream_of(c->proxy, v.route);
	if (v.status != 0) {
		if (v.log != NULL)
			log_info(v.log, "route=%s", proxy_conn_route_name(c));
		reply_error_with(c, v.status, v.error, v.description, 0, v.allow);
		return;
	}
	if (h->chunked)
		proxy_body_init(&c->req.req_body, PROXY_BODY_CHUNKED, 0);
	else if (h->content_length > 0)
		proxy_body_init(&c->req.req_body, PROXY_BODY_LENGTH, (uint64_t)h->content_length);
	else
		proxy_body_init(&c->req.req_body, PROXY_BODY_NONE, 0);
	if (proxy_route_stamps(c->req.upstream->route, h))
		c->req.flags |= PROXY_RF_STAMP;
	if (proxy_route_retryable(h))
		c->req.flags |= PROXY_RF_RETRYABLE;
	if (proxy_upstream_render_request(c, v.path, v.path_len) < 0) {
		proxy_conn_reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
		return;
	}
	f = http_head_find(h, "expect"); /* 100-continue: every_path refused the others */
	if (f != NULL && c->req.req_body.mode != PROXY_BODY_NONE)
		proxy_add_str(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n");
	if ((c->req.flags & PROXY_RF_RETRYABLE) && c->req.req_body.mode == PROXY_BODY_LENGTH) {
		proxy_req_enter(c, PROXY_REQ_BODY_BUFFER);
		buffer_body(c);
		return;
	}
	proxy_conn_request_token(c);
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
	const struct config_proxy *cp = proxy_cfg(c->proxy);
	struct evbuffer *in = bufferevent_get_input(c->bev);
	size_t len = evbuffer_get_length(in), n = len < PROXY_MAX_HEAD ? len : PROXY_MAX_HEAD;
	const char *buf;
	int r;

	if (len == 0)
		return;
	if (!(c->req.flags & PROXY_RF_HEAD_STARTED)) {
		c->req.flags |= PROXY_RF_HEAD_STARTED;
		c->req.started_ms = proxy_now_ms();
		c->deadline_ms = c->req.started_ms + (int64_t)cp->header_timeout * 1000;
	}
	buf = (const char *)evbuffer_pullup(in, (ssize_t)n);
	r = http_parse_request_head(buf, n, &c->req.head);
	if (r == 0 && len < PROXY_MAX_HEAD) {
		/* an absolute deadline from the first byte: trickling does not extend it */
		if (proxy_conn_arm(c, c->deadline_ms) < 0)
			proxy_conn_free(c);
		return;
	}
	if (r <= 0) {
		memset(&c->req.head, 0, sizeof(c->req.head));
		if (r == 0 || r == -E2BIG)
			proxy_conn_reply_error(c, 431, "invalid_request", "request head too large",
					       0);
		else if (r == -ENOTSUP)
			proxy_conn_reply_error(c, 505, "invalid_request", "only HTTP/1.0 and 1.1",
					       0);
		else
			proxy_conn_reply_error(c, 400, "invalid_request", "malformed request head",
					       0);
		return;
	}
	c->req.head_buf = malloc((size_t)r);
	if (c->req.head_buf == NULL) {
		proxy_conn_free(c);
		return;
	}
	memcpy(c->req.head_buf, buf, (size_t)r);
	rebase_head(c, buf);
	evbuffer_drain(in, (size_t)r);
	request_begin(c);
}

/* Client callbacks */

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
		proxy_connect_from_client(c);
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
			proxy_upstream_pump_request(c);
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
		proxy_upstream_pump_response(c);
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
		proxy_conn_free(c); /* no request, or an incomplete head */
		return;
	case PROXY_CONN_TUNNEL:
		proxy_connect_from_client(c);
		proxy_connect_shut_far(c);
		return;
	case PROXY_CONN_CLOSING:
		if (conn_output_pending(c) > 0)
			return; /* conn_write_cb lingers when it is out */
		proxy_conn_free(c);
		return;
	case PROXY_CONN_REQUEST:
		break;
	}
	switch (c->req.state) {
	case PROXY_REQ_BODY_BUFFER:
		proxy_conn_free(c); /* an incomplete request */
		return;
	case PROXY_REQ_CONNECT:
		return; /* tun_event_cb (proxy_connect.c) passes it on */
	case PROXY_REQ_TOKEN:
	case PROXY_REQ_REFRESH:
		return; /* proxy_upstream_send sends what there is and finds out if it is complete
			 */
	case PROXY_REQ_FORWARD:
	case PROXY_REQ_RESPONSE:
		if (c->req.flags & PROXY_RF_SENT)
			return;
		if (c->req.upconn != NULL)
			proxy_upstream_pump_request(
			    c); /* answers or frees c when the body is cut short */
		else
			proxy_conn_free(c);
		return;
	}
}

static void
conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct proxy_conn *c = arg;

	if (what & BEV_EVENT_CONNECTED) {
		/* the TLS handshake of an intercepted CONNECT is done: see intercept() in
		 * proxy_connect.c */
		c->flags &= ~PROXY_CF_HANDSHAKE;
		if (bufferevent_get_underlying(bev) != NULL)
			proxy_set_timeouts(bufferevent_get_underlying(bev), 0,
					   proxy_cfg(c->proxy)->idle_timeout);
		return;
	}
	if ((what & BEV_EVENT_EOF) && !(what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) &&
	    c->mode != PROXY_MODE_INTERCEPT) {
		client_done_sending(c);
		return;
	}
	proxy_conn_free(c);
}

/* Lifecycle */

void
proxy_conn_free(struct proxy_conn *c)
{
	struct proxy_listener *l = c->listener;
	struct proxy *p = c->proxy;

	if (c->req.waiter != NULL)
		cache_waiter_cancel(c->proxy->cache, c->req.waiter);
	if (c->timer != NULL)
		event_free(c->timer);
	if (c->linger_poll != NULL)
		event_free(c->linger_poll);
	proxy_upconn_release(c, false);
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

void
proxy_conn_watch(struct proxy_conn *c)
{
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_READ, 0, PROXY_HIGH_WATER);
}

void
proxy_conn_accept(struct proxy_listener *l, int fd)
{
	struct proxy *p = l->proxy;
	struct proxy_conn *c;
	int one = 1;

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
	proxy_conn_watch(c);
	bufferevent_enable(c->bev, EV_WRITE);
	l->n_conns++;
	p->n_conns++;
	proxy_conn_next_request(c);
}
