/*
 * CONNECT on the forward proxy (see proxy_int.h), per [proxy] connect:
 * refused, tunnelled to the hosts of tunnel_hosts (bytes relayed as they
 * are, no token), or intercepted: a 200, then TLS with a leaf for the host
 * from the local CA (proxy_ca.c) and the requests inside served by
 * proxy_conn.c like forward ones, routed by the CONNECT host.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>

#include "log.h"
#include "proxy_ca.h"
#include "proxy_int.h"
#include "proxy_route.h"

/* Tunnel */

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
void
proxy_connect_shut_far(struct proxy_conn *c)
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
		proxy_connect_shut_far(c);
		return;
	}
	if (c->flags & PROXY_CF_READ_PAUSED) {
		c->flags &= ~PROXY_CF_READ_PAUSED;
		bufferevent_enable(c->bev, EV_READ);
	}
}

void
proxy_connect_from_client(struct proxy_conn *c)
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
	const struct config_proxy *cp = proxy_cfg(c->proxy);
	int fd, one = 1;

	if (what & BEV_EVENT_CONNECTED) {
		fd = bufferevent_getfd(bev);
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c->state = PROXY_CONN_TUNNEL;
		proxy_add_str(bufferevent_get_output(c->bev),
			      "HTTP/1.1 200 Connection Established\r\n\r\n");
		proxy_set_timeouts(bev, cp->idle_timeout, cp->idle_timeout);
		proxy_set_timeouts(c->bev, cp->idle_timeout, cp->idle_timeout);
		bufferevent_setwatermark(bev, EV_WRITE, PROXY_LOW_WATER, 0);
		if (c->flags & PROXY_CF_CLIENT_EOF) {
			proxy_connect_from_client(c);
			proxy_connect_shut_far(c);
			return;
		}
		bufferevent_enable(c->bev, EV_READ);
		proxy_connect_from_client(c);
		return;
	}
	if (c->state == PROXY_CONN_REQUEST) { /* the CONNECT: the far side never answered */
		bufferevent_free(c->tunnel);
		c->tunnel = NULL;
		if (what & BEV_EVENT_TIMEOUT)
			proxy_conn_reply_error(c, 504, "gateway_timeout",
					       "the tunnel host did not answer", 0);
		else
			proxy_conn_reply_error(c, 502, "bad_gateway",
					       "cannot connect to the tunnel host", 0);
		return;
	}
	/* the far side closed: hand the client what arrived, then close */
	evbuffer_add_buffer(bufferevent_get_output(c->bev), bufferevent_get_input(bev));
	bufferevent_free(c->tunnel);
	c->tunnel = NULL;
	proxy_conn_close_after_flush(c);
}

/* Intercept */

/*
 * connect = intercept: answer 200, then speak TLS to the client with a leaf
 * for host from the local CA and serve the requests inside like forward
 * ones, routed by the CONNECT host.  Hosts without a route were refused
 * before any TLS (proxy_route_connect): nothing is intercepted that would
 * not be stamped.
 */
static void
intercept(struct proxy_conn *c, const char *name, unsigned port)
{
	struct bufferevent *tls;
	char *host;
	SSL *ssl;

	ssl = proxy_ca_ssl(c->proxy->ca, name);
	if (ssl == NULL) {
		proxy_conn_reply_error(c, 503, "temporarily_unavailable",
				       "cannot mint a certificate", 1);
		return;
	}
	host = strdup(name);
	if (host == NULL) {
		SSL_free(ssl);
		proxy_conn_reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
		return;
	}
	/* the handshake has header_timeout in all, however slowly its bytes come */
	c->deadline_ms = proxy_now_ms() + (int64_t)proxy_cfg(c->proxy)->header_timeout * 1000;
	if (proxy_conn_arm(c, c->deadline_ms) < 0) {
		SSL_free(ssl);
		free(host);
		proxy_conn_reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
		return;
	}
	proxy_add_str(bufferevent_get_output(c->bev),
		      "HTTP/1.1 200 Connection Established\r\n\r\n");
	/*
	 * Deferred callbacks (STYLE.md rule 12): enabling the filter runs the
	 * handshake on bytes the client sent along with CONNECT, and a failed
	 * handshake would otherwise free c inside that call.  Every update to c
	 * is done before the filter is enabled, in proxy_conn_next_request at
	 * the end.
	 */
	tls = bufferevent_openssl_filter_new(c->proxy->base, c->bev, ssl, BUFFEREVENT_SSL_ACCEPTING,
					     BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (tls == NULL) {
		SSL_free(ssl);
		free(host);
		proxy_conn_free(c);
		return;
	}
	/*
	 * The socket below keeps no read timeout once TLS is up (the filter has
	 * them, per request): one left from the CONNECT would cut a response
	 * that streams longer than idle_timeout.  Until then both bound the
	 * handshake; its write timeout stays (a client that reads nothing).
	 */
	proxy_set_timeouts(c->bev, proxy_cfg(c->proxy)->header_timeout,
			   proxy_cfg(c->proxy)->header_timeout);
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
	proxy_conn_watch(c);
	/* enables reading: the handshake starts; nothing touches c after it */
	proxy_conn_next_request(c);
}

/* CONNECT */

void
proxy_connect_handle(struct proxy_conn *c)
{
	const struct config_proxy *cp = proxy_cfg(c->proxy);
	struct proxy_verdict v;
	char clean[128];

	if (proxy_route_connect(cp, c->mode == PROXY_MODE_FORWARD, &c->req.head, &v) != 0) {
		if (v.log != NULL)
			log_info(v.log, "host=%s port=%u", log_clean(clean, sizeof(clean), v.host),
				 v.port);
		proxy_conn_reply_error(c, v.status, v.error, v.description, 0);
		return;
	}
	if (cp->connect == CONFIG_CONNECT_INTERCEPT) {
		intercept(c, v.host, v.port);
		return;
	}
	c->tunnel = bufferevent_socket_new(c->proxy->base, -1,
					   BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (c->tunnel == NULL) {
		proxy_conn_reply_error(c, 503, "temporarily_unavailable", "out of memory", 1);
		return;
	}
	bufferevent_setcb(c->tunnel, tun_read_cb, tun_write_cb, tun_event_cb, c);
	bufferevent_setwatermark(c->tunnel, EV_READ, 0, PROXY_HIGH_WATER);
	proxy_set_timeouts(c->tunnel, cp->connect_timeout, cp->connect_timeout);
	c->mode = PROXY_MODE_TUNNEL;
	proxy_req_enter(c, PROXY_REQ_CONNECT);
	bufferevent_disable(c->bev, EV_READ);
	if (bufferevent_socket_connect_hostname(c->tunnel, c->proxy->dns, AF_UNSPEC,
						proxy_dial_name(v.host), (int)v.port) < 0) {
		bufferevent_free(c->tunnel);
		c->tunnel = NULL;
		proxy_conn_reply_error(c, 502, "bad_gateway", "cannot connect to the tunnel host",
				       0);
	} else {
		bufferevent_enable(c->tunnel, EV_READ | EV_WRITE);
	}
}
