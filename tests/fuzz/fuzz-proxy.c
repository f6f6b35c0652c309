/*
 * libFuzzer target for the proxy's request-head decisions
 * (daemon/proxy_route.c) and the upstream response-head parser
 * (http_parse_response_head).  The input is parsed as a request head; its
 * target is split the way the forward proxy does (absolute-form for plain
 * HTTP, authority-form for CONNECT) and matched against a few routes; every
 * header goes through the hop-by-hop and Bearer-challenge checks.  The same
 * bytes are then parsed as an upstream's response head.
 *
 * The invariant that matters beside memory safety: a route is chosen only
 * for its own host and port, and for a path inside its prefix on a segment
 * boundary, so that a token is never stamped onto a request for another
 * host or path.
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
				  "[route \"v1\"]\n"
				  "match = api.example.com:8080/v1\n"
				  "audience = apim\n"
				  "upstream = https://api.example.com/base\n"
				  "[route \"v1-admin\"]\n"
				  "match = api.example.com:8080/v1/admin\n"
				  "audience = apim\n"
				  "upstream = https://api.example.com/admin\n";

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
	check(cfg->proxy != NULL && cfg->proxy->n_routes == 3, "routes");
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
	char *host;

	if (proxy_route_absolute(target, len, &host, &port, &rest, &rest_len) < 0)
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
	free(host);
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

static void
fuzz_request(const char *buf, size_t size)
{
	struct http_head h;
	int n = http_parse_request_head(buf, size, &h);

	if (n <= 0)
		return;
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
