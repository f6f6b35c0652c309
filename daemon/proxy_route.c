/* The proxy's verdicts, route matching and header rules (see proxy_route.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy_route.h"

static bool
eq_nocase(const char *s, size_t len, const char *lit)
{
	return strlen(lit) == len && strncasecmp(s, lit, len) == 0;
}

int
proxy_route_absolute(const char *target, size_t len, char *host, size_t host_size, unsigned *port,
		     const char **rest, size_t *rest_len)
{
	const char *a, *end = target + len, *aend;
	int r;

	if (len < 8 || strncasecmp(target, "http://", 7) != 0)
		return -EINVAL;
	a = target + 7;
	aend = a;
	while (aend < end && *aend != '/' && *aend != '?')
		aend++;
	if (memchr(a, '@', (size_t)(aend - a)) != NULL || memchr(target, '#', len) != NULL)
		return -EINVAL;
	r = config_proxy_hostport_buf(a, (size_t)(aend - a), host, host_size, port);
	if (r < 0)
		return r;
	if (*port == 0)
		*port = 80;
	*rest = aend;
	*rest_len = (size_t)(end - aend);
	return 0;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)(c | 0x20);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

bool
proxy_route_path_unsafe(const char *path, size_t len)
{
	const char *q = memchr(path, '?', len);
	size_t seg_dots = 0, seg_len = 0;
	bool params = false; /* past a ';' in this segment: matrix parameters, not its name */

	if (q != NULL)
		len = (size_t)(q - path);
	for (size_t i = 0; i <= len; i++) {
		int c = i < len ? (unsigned char)path[i] : '/';

		if (i < len && c == '%') {
			int hi, lo;

			if (i + 2 >= len)
				return true;
			hi = hexval(path[i + 1]);
			lo = hexval(path[i + 2]);
			if (hi < 0 || lo < 0)
				return true;
			c = hi << 4 | lo;
			if (c == '/' || c == '\\' || c == 0)
				return true;
			i += 2;
		} else if (c == '\\') {
			return true;
		} else if (c == '/') {
			if (seg_len > 0 && seg_len == seg_dots && seg_dots <= 2)
				return true;
			seg_len = seg_dots = 0;
			params = false;
			continue;
		}
		/*
		 * Tomcat, Jetty and Spring drop ";params" from each segment before
		 * resolving dot segments, so "..;x" is ".." to them, raw or encoded
		 * (";" or "%3b").
		 */
		if (c == ';')
			params = true;
		if (params)
			continue;
		seg_len++;
		if (c == '.')
			seg_dots++;
	}
	return false;
}

const struct config_route *
proxy_route_match(const struct config_proxy *cp, const char *host, unsigned port,
		  unsigned default_port, const char *path, size_t path_len)
{
	const struct config_route *best = NULL;
	size_t best_len = 0;
	const char *q = memchr(path, '?', path_len);

	if (q != NULL)
		path_len = (size_t)(q - path);
	for (size_t i = 0; cp != NULL && i < cp->n_routes; i++) {
		const struct config_route *r = &cp->routes[i];
		size_t pl;

		if (r->match_host == NULL || strcmp(r->match_host, host) != 0 ||
		    (r->match_port_set ? r->match_port != port : port != default_port))
			continue;
		pl = strlen(r->match_path);
		if (pl > path_len || memcmp(r->match_path, path, pl) != 0 ||
		    (pl < path_len && path[pl] != '/'))
			continue;
		if (best == NULL || pl > best_len) {
			best = r;
			best_len = pl;
		}
	}
	return best;
}

bool
proxy_route_host_agrees(const char *value, size_t len, const char *host, unsigned port,
			unsigned default_port)
{
	char h[CONFIG_PROXY_HOST_MAX + 1];
	unsigned p;

	if (config_proxy_hostport_buf(value, len, h, sizeof(h), &p) < 0)
		return false;
	return strcmp(h, host) == 0 && (p == port || (p == 0 && port == default_port));
}

bool
proxy_route_host_is_listener(const char *value, size_t len, const struct config_listen *l)
{
	const struct sockaddr_in *in4 = (const struct sockaddr_in *)&l->addr;
	const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&l->addr;
	bool v4 = l->addr.ss_family == AF_INET;
	unsigned want = ntohs(v4 ? in4->sin_port : in6->sin6_port);
	bool any = v4 ? in4->sin_addr.s_addr == htonl(INADDR_ANY)
		      : IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr);
	bool loopback =
	    v4 ? (ntohl(in4->sin_addr.s_addr) >> 24) == 127 : IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
	struct in_addr a4;
	struct in6_addr a6;
	char h[CONFIG_PROXY_HOST_MAX + 1];
	unsigned port;
	bool ok;

	if (config_proxy_hostport_buf(value, len, h, sizeof(h), &port) < 0)
		return false;
	if (port != want && !(port == 0 && want == 80))
		ok = false;
	else if (strcmp(h, "localhost") == 0)
		ok = loopback || any;
	else if (v4)
		ok = inet_pton(AF_INET, h, &a4) == 1 && (any || a4.s_addr == in4->sin_addr.s_addr);
	else
		ok = (inet_pton(AF_INET6, h, &a6) == 1 &&
		      (any || memcmp(&a6, &in6->sin6_addr, sizeof(a6)) == 0)) ||
		     (any && inet_pton(AF_INET, h, &a4) == 1);
	return ok;
}

bool
proxy_route_from_web_page(const struct http_head *h)
{
	for (int i = 0; i < h->nheaders; i++) {
		const struct http_header *f = &h->headers[i];

		if (eq_nocase(f->name, f->name_len, "origin"))
			return true;
		if (eq_nocase(f->name, f->name_len, "sec-fetch-site") &&
		    !eq_nocase(f->value, f->value_len, "none"))
			return true;
	}
	return false;
}

/* True when the Connection field(s) of h list name (name_len bytes). */
static bool
connection_lists(const struct http_head *h, const char *name, size_t name_len)
{
	for (int i = 0; i < h->nheaders; i++) {
		const struct http_header *f = &h->headers[i];
		size_t j = 0;

		if (!eq_nocase(f->name, f->name_len, "connection"))
			continue;
		while (j < f->value_len) {
			size_t s, e;

			while (j < f->value_len &&
			       (f->value[j] == ',' || f->value[j] == ' ' || f->value[j] == '\t'))
				j++;
			s = j;
			while (j < f->value_len && f->value[j] != ',')
				j++;
			e = j;
			while (e > s && (f->value[e - 1] == ' ' || f->value[e - 1] == '\t'))
				e--;
			if (e - s == name_len && strncasecmp(f->value + s, name, name_len) == 0)
				return true;
		}
	}
	return false;
}

bool
proxy_route_hop_by_hop(const struct http_head *h, const struct http_header *f)
{
	static const char *const names[] = {
	    "connection",	   "keep-alive", "proxy-connection",
	    "proxy-authorization", "te",	 "trailer",
	    "transfer-encoding",   "upgrade",	 "host",
	    "content-length",	   "expect",	 "proxy-authenticate",
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (eq_nocase(f->name, f->name_len, names[i]))
			return true;
	return connection_lists(h, f->name, f->name_len);
}

bool
proxy_route_invalid_token(const char *value, size_t len)
{
	static const char needle[] = "error=\"invalid_token\"";
	size_t n = sizeof(needle) - 1;

	if (len < 6 || strncasecmp(value, "bearer", 6) != 0)
		return false;
	for (size_t i = 6; i + n <= len; i++)
		if (strncasecmp(value + i, needle, n) == 0)
			return true;
	return false;
}

/* Verdicts */

static void
verdict_init(struct proxy_verdict *v)
{
	v->status = 0;
	v->error = v->description = v->allow = v->log = NULL;
	v->route = NULL;
	v->path = NULL;
	v->path_len = 0;
	v->host[0] = '\0';
	v->port = 0;
	v->msg[0] = '\0';
}

static int
refuse(struct proxy_verdict *v, int status, const char *error, const char *description)
{
	v->status = status;
	v->error = error;
	v->description = description;
	return status;
}

static bool
method_is_nocase(const struct http_head *h, const char *m)
{
	return h->method_len == strlen(m) && strncasecmp(h->method, m, h->method_len) == 0;
}

bool
proxy_route_method_is(const struct http_head *h, const char *m)
{
	return h->method_len == strlen(m) && memcmp(h->method, m, h->method_len) == 0;
}

int
proxy_route_method(const struct http_head *h, struct proxy_verdict *v)
{
	verdict_init(v);
	/* in any case, as some servers read methods so */
	if (method_is_nocase(h, "TRACE") || method_is_nocase(h, "TRACK")) {
		v->allow = PROXY_ROUTE_ALLOW;
		return refuse(v, 405, "invalid_request",
			      "TRACE is not forwarded: the answer would carry the token");
	}
	return 0;
}

/* The checks of every path, once the route and path are known. */
static int
every_path(const struct http_head *h, struct proxy_verdict *v)
{
	const struct http_header *f;

	/*
	 * A browser whose http_proxy is bearerd, like one that reaches a
	 * base-URL listener, would let any site make stamped calls: requests
	 * that bear a web page's marks are refused on every path.
	 */
	if (proxy_route_from_web_page(h)) {
		v->log = "proxy request from a web page refused";
		return refuse(v, 403, "forbidden",
			      "requests from web pages (Origin, Sec-Fetch-Site) are not forwarded");
	}
	if (proxy_route_path_unsafe(v->path, v->path_len))
		return refuse(v, 400, "invalid_request",
			      "dot segments and encoded slashes are not forwarded");
	f = http_head_find(h, "expect");
	if (f != NULL && !eq_nocase(f->value, f->value_len, "100-continue"))
		return refuse(v, 417, "invalid_request", "unsupported Expect");
	return 0;
}

int
proxy_route_forward(const struct config_proxy *cp, const struct http_head *h,
		    struct proxy_verdict *v)
{
	const struct http_header *hf;

	if (proxy_route_method(h, v) != 0)
		return v->status;
	if (proxy_route_absolute(h->target, h->target_len, v->host, sizeof(v->host), &v->port,
				 &v->path, &v->path_len) < 0)
		return refuse(v, 400, "invalid_request",
			      "this is a proxy: expected an absolute http:// request target (or "
			      "CONNECT)");
	hf = http_head_find(h, "host");
	if (hf != NULL && !proxy_route_host_agrees(hf->value, hf->value_len, v->host, v->port, 80))
		return refuse(v, 400, "invalid_request",
			      "the Host header disagrees with the request target");
	v->route = proxy_route_match(cp, v->host, v->port, 80, v->path, v->path_len);
	if (v->route == NULL)
		return refuse(v, 403, "forbidden",
			      "no route matches this host and path: nothing was forwarded");
	return every_path(h, v);
}

/*
 * A base-URL listener is an ordinary http:// origin to a browser: a page from
 * anywhere could send it requests (cross-site, or reading the answers after
 * DNS rebinding) and have them stamped with the route's token.  So the Host
 * must be the listener itself, and, as on every path, nothing may look like
 * a page's request.
 */
int
proxy_route_base_url(const struct config_route *r, const struct http_head *h,
		     struct proxy_verdict *v)
{
	const struct http_header *hf;

	if (proxy_route_method(h, v) != 0)
		return v->status;
	v->route = r;
	if (h->target[0] != '/')
		return refuse(v, 400, "invalid_request", "expected a path as request target");
	hf = http_head_find(h, "host");
	if (hf == NULL || !proxy_route_host_is_listener(hf->value, hf->value_len, r->listen)) {
		snprintf(v->msg, sizeof(v->msg),
			 "the Host header must name this listener (%s, or localhost with its port)",
			 r->listen->text);
		return refuse(v, 400, "invalid_request", v->msg);
	}
	v->path = h->target;
	v->path_len = h->target_len;
	return every_path(h, v);
}

int
proxy_route_intercepted(const struct config_proxy *cp, const char *host, unsigned port,
			const struct http_head *h, struct proxy_verdict *v)
{
	const struct http_header *hf = http_head_find(h, "host");

	if (proxy_route_method(h, v) != 0)
		return v->status;
	if (h->target[0] != '/')
		return refuse(v, 400, "invalid_request", "expected a path as request target");
	if (hf != NULL && !proxy_route_host_agrees(hf->value, hf->value_len, host, port, 443))
		return refuse(v, 400, "invalid_request",
			      "the Host header disagrees with the CONNECT target");
	snprintf(v->host, sizeof(v->host), "%s", host);
	v->port = port;
	v->path = h->target;
	v->path_len = h->target_len;
	v->route = proxy_route_match(cp, host, port, 443, v->path, v->path_len);
	if (v->route == NULL)
		return refuse(v, 403, "forbidden",
			      "no route matches this host and path: nothing was forwarded");
	return every_path(h, v);
}

/* connect = intercept: some route matches host:port (443 when the match has no port). */
static bool
routed_host(const struct config_proxy *cp, const char *host, unsigned port)
{
	for (size_t i = 0; i < cp->n_routes; i++) {
		const struct config_route *r = &cp->routes[i];

		if (r->match_host != NULL && strcmp(r->match_host, host) == 0 &&
		    (r->match_port_set ? r->match_port == port : port == 443))
			return true;
	}
	return false;
}

/* connect = tunnel: host:port is in tunnel_hosts (stored as "host:port"). */
static bool
tunnel_allowed(const struct config_proxy *cp, const char *host, unsigned port)
{
	char want[CONFIG_PROXY_HOST_MAX + 8];

	snprintf(want, sizeof(want), "%s:%u", host, port);
	for (size_t i = 0; cp->tunnel_hosts != NULL && cp->tunnel_hosts[i] != NULL; i++)
		if (strcmp(cp->tunnel_hosts[i], want) == 0)
			return true;
	return false;
}

int
proxy_route_connect(const struct config_proxy *cp, bool on_forward, const struct http_head *h,
		    struct proxy_verdict *v)
{
	verdict_init(v);
	if (!on_forward || cp->connect == CONFIG_CONNECT_DENY)
		return refuse(v, 403, "forbidden", "CONNECT is not allowed by this proxy");
	if (config_proxy_hostport_buf(h->target, h->target_len, v->host, sizeof(v->host),
				      &v->port) < 0 ||
	    v->port == 0)
		return refuse(v, 400, "invalid_request", "CONNECT needs host:port");
	if (cp->connect == CONFIG_CONNECT_INTERCEPT) {
		if (!routed_host(cp, v->host, v->port)) {
			v->log = "proxy interception refused";
			return refuse(v, 403, "forbidden",
				      "no route for this host: nothing was forwarded");
		}
		return 0;
	}
	if (!tunnel_allowed(cp, v->host, v->port)) {
		v->log = "proxy tunnel refused";
		return refuse(v, 403, "forbidden", "this host is not in tunnel_hosts");
	}
	return 0;
}

bool
proxy_route_stamps(const struct config_route *r, const struct http_head *h)
{
	return !r->passthrough && (r->overwrite || http_head_find(h, "authorization") == NULL);
}

bool
proxy_route_retryable(const struct http_head *h)
{
	bool idempotent = proxy_route_method_is(h, "GET") || proxy_route_method_is(h, "HEAD") ||
			  proxy_route_method_is(h, "OPTIONS") || proxy_route_method_is(h, "PUT") ||
			  proxy_route_method_is(h, "DELETE");

	return idempotent && !h->chunked && h->content_length <= PROXY_ROUTE_RETRY_BODY_MAX;
}
