/*
 * libFuzzer target for the proxy's request-head decisions
 * (daemon/proxy_route.c) and the upstream response-head parser
 * (http_parse_response_head).  The input is parsed as a request head; its
 * target is split the way the forward proxy does (absolute-form for plain
 * HTTP, authority-form for CONNECT) and matched against a few routes; every
 * header goes through the hop-by-hop and Bearer-challenge checks.  The head
 * then gets every verdict: the forward proxy's, a base-URL listener's, an
 * intercepted CONNECT's (two hosts), CONNECT's (tunnel and intercept), and
 * whether it is stamped and retryable.  The same bytes are then parsed as an
 * upstream's response head.
 *
 * The invariants that matter beside memory safety: a route is chosen only
 * for its own host and port, and for a path inside its prefix on a segment
 * boundary, so that a token is never stamped onto a request for another
 * host or path; a passing verdict has a safe path, and never comes for a
 * head with Origin or for TRACE; TRACE is never retryable; CONNECT passes
 * only to a tunnel host (tunnel) or a routed host (intercept).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "config_proxy.h"
#include "http_parse.h"
#include "log.h"
#include "proxy_route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char config_text[] = "[bearerd]\n"
				  "socket = /nonexistent/bearerd-fuzz.sock\n"
				  "[identity \"dev\"]\n"
				  "source = dev\n"
				  "[audience \"apim\"]\n"
				  "identity = dev\n"
				  "resource = api://apim\n"
				  "[proxy]\n"
				  "listen = 127.0.0.1:0\n"
				  "connect = tunnel\n"
				  "tunnel_hosts = tunnel.example:443\n"
				  "[route \"apim\"]\n"
				  "match = apim.example.net\n"
				  "audience = apim\n"
				  "upstream = https://apim.example.net\n"
				  "listen = 127.0.0.1:8081\n"
				  "[route \"v1\"]\n"
				  "match = api.example.com:8080/v1\n"
				  "audience = apim\n"
				  "upstream = https://api.example.com/base\n"
				  "[route \"v1-admin\"]\n"
				  "match = api.example.com:8080/v1/admin\n"
				  "audience = apim\n"
				  "upstream = https://api.example.com/admin\n"
				  "[route \"pass\"]\n"
				  "match = pass.example.org/p\n"
				  "passthrough = yes\n"
				  "upstream = http://pass.example.org\n";

static struct config *cfg;

static void
check(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "fuzz-proxy: invariant broken: %s\n", what);
		abort();
	}
}

static void
setup(void)
{
	log_init(LOG_LEVEL_ERROR);
	check(config_load_string(&cfg, "fuzz-proxy.conf", config_text, stderr) == 0, "config");
	check(cfg->proxy != NULL && cfg->proxy->n_routes == 4, "routes");
}

static int
name_is(const struct http_header *f, const char *name)
{
	return f->name_len == strlen(name) && strncasecmp(f->name, name, f->name_len) == 0;
}

/* The chosen route covers host:port and the path, on a segment boundary. */
static void
check_route(const struct config_route *r, const char *host, unsigned port, unsigned default_port,
	    const char *path, size_t len)
{
	size_t plen = strlen(r->match_path);

	check(strcmp(r->match_host, host) == 0, "a route for another host");
	check(port == (r->match_port_set ? r->match_port : default_port), "another port");
	if (plen == 0)
		return;
	check(len >= plen && memcmp(path, r->match_path, plen) == 0, "a path outside the prefix");
	check(len == plen || path[plen] == '/' || path[plen] == '?',
	      "a prefix that ends inside a segment");
}

/*
 * An oracle for proxy_route_path_unsafe, written the simple way: decode the
 * path, cut each segment at its first ';' (matrix parameters, which Tomcat,
 * Jetty and Spring drop), and look for "." and "..".  When it finds one, the
 * guard must have refused the path.
 */
static int
has_dot_segment(const char *path, size_t len)
{
	char seg[8];
	size_t n = 0;
	int params = 0;

	for (size_t i = 0; i <= len && (i == len || path[i] != '?'); i++) {
		int c = i < len ? (unsigned char)path[i] : '/';

		if (c == '%' && i + 2 < len) {
			char hex[3] = {path[i + 1], path[i + 2], 0};
			char *e;
			long v = strtol(hex, &e, 16);

			if (*e != '\0' || hex[0] == '+' || hex[0] == '-' || hex[0] == ' ')
				return 0; /* malformed: refused for that, not the oracle's business
					   */
			c = (int)v;
			i += 2;
		} else if (c == '/') {
			if ((n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
				return 1;
			n = 0;
			params = 0;
			continue;
		}
		if (c == ';')
			params = 1;
		if (params)
			continue;
		if (n < sizeof(seg))
			seg[n] = (char)c;
		n++;
	}
	return 0;
}

static void
fuzz_absolute(const char *target, size_t len)
{
	const struct config_route *r;
	const char *rest;
	size_t rest_len;
	unsigned port;
	char host[CONFIG_PROXY_HOST_MAX + 1];

	if (proxy_route_absolute(target, len, host, sizeof(host), &port, &rest, &rest_len) < 0)
		return;
	check(host[0] != '\0', "an empty host");
	for (const char *p = host; *p; p++)
		check(*p < 'A' || *p > 'Z', "a host not in lower case");
	check(port >= 1 && port <= 65535, "port range");
	check(rest >= target && rest + rest_len <= target + len, "rest inside the target");
	if (has_dot_segment(rest, rest_len))
		check(proxy_route_path_unsafe(rest, rest_len),
		      "a dot segment passed the path guard");
	r = proxy_route_match(cfg->proxy, host, port, 80, rest, rest_len);
	if (r != NULL)
		check_route(r, host, port, 80, rest, rest_len);
}

static void
fuzz_authority(const char *target, size_t len)
{
	const struct config_route *r;
	unsigned port;
	char *host;

	if (config_proxy_hostport(target, len, &host, &port) < 0)
		return;
	for (const char *p = host; *p; p++)
		check(*p < 'A' || *p > 'Z', "a CONNECT host not in lower case");
	check(port <= 65535, "CONNECT port range");
	r = proxy_route_match(cfg->proxy, host, port, 443, "/", 1);
	if (r != NULL)
		check_route(r, host, port, 443, "/", 1);
	proxy_route_host_agrees(target, len, host, port, 443);
	free(host);
}

static int
method_nocase(const struct http_head *h, const char *m)
{
	return h->method_len == strlen(m) && strncasecmp(h->method, m, h->method_len) == 0;
}

static int
is_trace(const struct http_head *h)
{
	return method_nocase(h, "TRACE") || method_nocase(h, "TRACK");
}

/* A refusal: one of the statuses the proxy answers with, and an error to say. */
static void
check_refusal(const struct proxy_verdict *v)
{
	check(v->status == 400 || v->status == 403 || v->status == 405 || v->status == 417,
	      "a verdict status");
	check(v->error != NULL && v->description != NULL && v->description[0] != '\0',
	      "a refusal without its error");
	check((v->allow != NULL) == (v->status == 405), "Allow only with 405");
	for (const char *p = v->description; *p; p++)
		check(*p >= 0x20 && *p < 0x7f, "a description that is not printable");
}

/* What holds for every verdict that lets a request through to route r. */
static void
check_pass(const char *buf, size_t n, const struct http_head *h, const struct proxy_verdict *v)
{
	check(v->route != NULL && v->error == NULL && v->log == NULL, "a pass without a route");
	check(http_head_find(h, "origin") == NULL, "a head with Origin passed");
	check(!is_trace(h), "TRACE passed");
	check(v->path_len == 0 || (v->path >= buf && v->path + v->path_len <= buf + n),
	      "a path outside the head");
	check(!proxy_route_path_unsafe(v->path, v->path_len), "an unsafe path passed");
	check(!has_dot_segment(v->path, v->path_len), "a dot segment passed");
	if (v->route->passthrough)
		check(!proxy_route_stamps(v->route, h), "a passthrough route stamped");
}

static void
fuzz_verdicts(const char *buf, size_t n, const struct http_head *h)
{
	static const struct {
		const char *host;
		unsigned port;
	} intercepted[] = {{"api.example.com", 8080}, {"apim.example.net", 443}};
	const struct config_proxy *cp = cfg->proxy;
	struct config_proxy icp = *cp;
	const struct config_route *base = &cp->routes[0];
	const struct http_header *hf;
	struct proxy_verdict v;
	char want[CONFIG_PROXY_HOST_MAX + 8];
	int found = 0;

	if (proxy_route_method(h, &v) != 0) {
		check(is_trace(h) && v.status == 405, "405 for TRACE only");
		check_refusal(&v);
	} else {
		check(!is_trace(h), "TRACE went on");
	}
	if (is_trace(h) || h->chunked)
		check(!proxy_route_retryable(h), "TRACE or a chunked body retryable");
	if (proxy_route_forward(cp, h, &v) == 0) {
		check_pass(buf, n, h, &v);
		check_route(v.route, v.host, v.port, 80, v.path, v.path_len);
	} else {
		check_refusal(&v);
	}
	if (proxy_route_base_url(base, h, &v) == 0) {
		check_pass(buf, n, h, &v);
		check(v.route == base, "a base-URL request on another route");
		check(v.path == h->target && v.path_len == h->target_len, "the base-URL path");
		hf = http_head_find(h, "host");
		check(hf != NULL &&
			  proxy_route_host_is_listener(hf->value, hf->value_len, base->listen),
		      "a base-URL request for another host");
	} else {
		check_refusal(&v);
	}
	for (size_t i = 0; i < sizeof(intercepted) / sizeof(intercepted[0]); i++) {
		const char *host = intercepted[i].host;
		unsigned port = intercepted[i].port;

		if (proxy_route_intercepted(cp, host, port, h, &v) == 0) {
			check_pass(buf, n, h, &v);
			check_route(v.route, host, port, 443, v.path, v.path_len);
		} else {
			check_refusal(&v);
		}
	}
	/* CONNECT: [proxy] has connect = tunnel; the same routes with intercept */
	if (proxy_route_connect(cp, true, h, &v) == 0) {
		snprintf(want, sizeof(want), "%s:%u", v.host, v.port);
		check(strcmp(want, "tunnel.example:443") == 0, "a tunnel to a host not listed");
	} else {
		check_refusal(&v);
	}
	icp.connect = CONFIG_CONNECT_INTERCEPT;
	if (proxy_route_connect(&icp, true, h, &v) == 0) {
		for (size_t i = 0; i < icp.n_routes; i++) {
			const struct config_route *r = &icp.routes[i];

			found |= strcmp(r->match_host, v.host) == 0 &&
				 (r->match_port_set ? r->match_port == v.port : v.port == 443);
		}
		check(found, "an interception of a host without a route");
	} else {
		check_refusal(&v);
	}
	check(proxy_route_connect(cp, false, h, &v) == 403, "CONNECT on a base URL");
}

static void
fuzz_request(const char *buf, size_t size)
{
	struct http_head h;
	int n = http_parse_request_head(buf, size, &h);

	if (n <= 0)
		return;
	fuzz_verdicts(buf, (size_t)n, &h);
	if (h.method_len == 7 && memcmp(h.method, "CONNECT", 7) == 0)
		fuzz_authority(h.target, h.target_len);
	else
		fuzz_absolute(h.target, h.target_len);
	for (int i = 0; i < h.nheaders; i++) {
		const struct http_header *f = &h.headers[i];
		bool hop = proxy_route_hop_by_hop(&h, f);

		/* a caller must not be able to smuggle framing or routing past the proxy */
		if (name_is(f, "Connection") || name_is(f, "Transfer-Encoding") ||
		    name_is(f, "Content-Length") || name_is(f, "Host") || name_is(f, "Upgrade") ||
		    name_is(f, "Keep-Alive"))
			check(hop, "a hop-by-hop or framing field forwarded");
		if (name_is(f, "WWW-Authenticate"))
			proxy_route_invalid_token(f->value, f->value_len);
		if (name_is(f, "Host"))
			proxy_route_host_agrees(f->value, f->value_len, "apim.example.net", 80, 80);
	}
}

static void
fuzz_response(const char *buf, size_t size)
{
	struct http_head h;
	int n = http_parse_response_head(buf, size, &h);

	if (n <= 0)
		return;
	check((size_t)n <= size, "length");
	check(h.status >= 100 && h.status <= 999, "status range");
	check(h.nheaders >= 0 && h.nheaders <= HTTP_MAX_HEADERS, "header count");
	for (int i = 0; i < h.nheaders; i++) {
		const struct http_header *f = &h.headers[i];

		check(f->name >= buf && f->name + f->name_len <= buf + n, "name bounds");
		check(f->value >= buf && f->value + f->value_len <= buf + n, "value bounds");
		if (name_is(f, "WWW-Authenticate"))
			proxy_route_invalid_token(f->value, f->value_len);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (cfg == NULL)
		setup();
	fuzz_request((const char *)data, size);
	fuzz_response((const char *)data, size);
	return 0;
}
