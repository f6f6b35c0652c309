/*
 * The proxy (see proxy.h): its listeners and lifecycle, the metrics and the
 * reload check.  libevent's evhttp cannot do CONNECT nor hand a connection
 * over, and it buffers whole bodies, so the proxy is a small HTTP/1.1 relay
 * of its own on bufferevents, in four files that share proxy_int.h:
 * connections and their requests (proxy_conn.c), the upstream pool and
 * responses (proxy_upstream.c), CONNECT (proxy_connect.c), and this one.
 *
 * A connection over max_connections gets a 503 at once; one beyond the
 * process's descriptors makes its listener rest a little.  Each route gets
 * its upstream pool and cache entry at start; a reload that keeps [proxy]
 * and [route] as they are only swaps the configuration they point into.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "cache.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "proxy_ca.h"
#include "proxy_int.h"

#define PROXY_BACKLOG 1024

/* Accepting */

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

	(void)sa;
	(void)socklen;
	(void)ev;
	l->starved = false;
	if (p->n_conns >= proxy_cfg(p)->max_connections) {
		log_debug("proxy connection refused", "listener=%s reason=max_connections conns=%u",
			  l->name, p->n_conns);
		reject_busy(fd);
		return;
	}
	proxy_conn_accept(l, fd);
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
		r = proxy_upstream_init(p, &p->upstreams[i], &cp->routes[i]);
		if (r == 0)
			r = route_entry(p, p->cfg, p->sources, &cp->routes[i],
					&p->upstreams[i].entry);
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

/* Lifecycle */

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
			proxy_conn_free(c);
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
		proxy_conn_free(c);
	for (size_t i = 0; i < p->n_listeners; i++) {
		evconnlistener_free(p->listeners[i].evl);
		if (p->listeners[i].rest != NULL)
			event_free(p->listeners[i].rest);
		free(p->listeners[i].name);
	}
	for (size_t i = 0; i < p->n_upstreams; i++)
		proxy_upstream_fini(&p->upstreams[i]);
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

/* Metrics and reload */

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

/* One request answered (status 0: cut short); upstream time when there was an answer. */
void
proxy_count_request(struct proxy_conn *c, int status)
{
	if (c->proxy->metrics != NULL)
		metrics_proxy_request(
		    c->proxy->metrics,
		    c->req.upstream != NULL ? c->req.upstream->route->name : "none", status,
		    c->req.up_ms >= 0 ? (double)c->req.up_ms / 1000.0 : -1.0);
}
