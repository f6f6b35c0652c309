/* Unit tests for proxy_route.c and the host parsing of config_proxy.c: route matching,
 * absolute-form targets, Host agreement, unsafe paths, hop-by-hop fields, the base-URL
 * listener's guard against web pages. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config_proxy.h"
#include "http_parse.h"
#include "proxy_route.h"

static void
test_hostport(void **state)
{
	char *h = NULL;
	unsigned port;

	assert_int_equal(config_proxy_hostport("API.Example.com:8443", 20, &h, &port), 0);
	assert_string_equal(h, "api.example.com");
	assert_int_equal(port, 8443);
	free(h);
	assert_int_equal(config_proxy_hostport("[::1]:443", 9, &h, &port), 0);
	assert_string_equal(h, "::1");
	assert_int_equal(port, 443);
	free(h);
	assert_int_equal(config_proxy_hostport("h", 1, &h, &port), 0);
	assert_int_equal(port, 0);
	free(h);
	assert_int_equal(config_proxy_hostport("h:0", 3, &h, &port), -EINVAL);
	assert_int_equal(config_proxy_hostport("h:65536", 7, &h, &port), -EINVAL);
	assert_int_equal(config_proxy_hostport("h:", 2, &h, &port), -EINVAL);
	assert_int_equal(config_proxy_hostport(":80", 3, &h, &port), -EINVAL);
	assert_int_equal(config_proxy_hostport("a b", 3, &h, &port), -EINVAL);
	assert_int_equal(config_proxy_hostport("a@b", 3, &h, &port), -EINVAL);
	assert_int_equal(config_proxy_hostport("[::1", 4, &h, &port), -EINVAL);
	assert_int_equal(config_proxy_hostport("[x]:1", 5, &h, &port), -EINVAL);
	assert_int_equal(config_proxy_hostport("::1", 3, &h, &port), -EINVAL);
	assert_true(config_proxy_host_is_loopback("localhost"));
	assert_true(config_proxy_host_is_loopback("127.1.2.3"));
	assert_true(config_proxy_host_is_loopback("::1"));
	assert_false(config_proxy_host_is_loopback("10.0.0.1"));
	assert_false(config_proxy_host_is_loopback("localhost.example.com"));
	assert_true(config_proxy_host_is_loopback("api.localhost"));
}

/* RFC 6761: the names bearerd maps to 127.0.0.1 itself (issue 11, finding 12). */
static void
test_localhost_names(void **state)
{
	static const char *const yes[] = {
	    "localhost",     "LocalHost",      "localhost.",
	    "api.localhost", "a.b.localhost.", "X.LOCALHOST",
	};
	static const char *const no[] = {
	    "localhost.example.com",
	    "notlocalhost",
	    "localhostx",
	    ".localhost",
	    "localhost..",
	    "",
	    "127.0.0.1",
	    "xlocalhost.",
	    "local",
	};

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		assert_true(config_proxy_host_is_localhost(yes[i]));
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		assert_false(config_proxy_host_is_localhost(no[i]));
}

static int
absolute(const char *t, char *h, size_t hs, unsigned *port, const char **rest, size_t *rl)
{
	return proxy_route_absolute(t, strlen(t), h, hs, port, rest, rl);
}

static void
test_absolute(void **state)
{
	const char *t = "http://API.example.com:8080/a/b?x=1", *rest;
	char h[CONFIG_PROXY_HOST_MAX + 1], small[4];
	unsigned port;
	size_t rl;

	assert_int_equal(absolute(t, h, sizeof(h), &port, &rest, &rl), 0);
	assert_string_equal(h, "api.example.com");
	assert_int_equal(port, 8080);
	assert_int_equal(rl, 8);
	assert_memory_equal(rest, "/a/b?x=1", 8);
	t = "HTTP://h?q";
	assert_int_equal(absolute(t, h, sizeof(h), &port, &rest, &rl), 0);
	assert_string_equal(h, "h");
	assert_int_equal(port, 80);
	assert_int_equal(rl, 2);
	t = "https://h/";
	assert_int_equal(absolute(t, h, sizeof(h), &port, &rest, &rl), -EINVAL);
	t = "http://user@h/";
	assert_int_equal(absolute(t, h, sizeof(h), &port, &rest, &rl), -EINVAL);
	t = "http://h/#frag";
	assert_int_equal(absolute(t, h, sizeof(h), &port, &rest, &rl), -EINVAL);
	t = "/origin";
	assert_int_equal(absolute(t, h, sizeof(h), &port, &rest, &rl), -EINVAL);
	t = "http:///x";
	assert_int_equal(absolute(t, h, sizeof(h), &port, &rest, &rl), -EINVAL);
	/* the host must fit the caller's buffer, and is left alone when it does not */
	memcpy(small, "old", 4);
	t = "http://abcd/";
	assert_int_equal(absolute(t, small, sizeof(small), &port, &rest, &rl), -EINVAL);
	assert_string_equal(small, "old");
	t = "http://abc/";
	assert_int_equal(absolute(t, small, sizeof(small), &port, &rest, &rl), 0);
	assert_string_equal(small, "abc");
}

static void
test_match(void **state)
{
	struct config_route routes[3] = {
	    {.name = "all", .match_host = "api", .match_port = 80, .match_path = ""},
	    {.name = "v1", .match_host = "api", .match_port = 80, .match_path = "/v1"},
	    {.name = "other",
	     .match_host = "api",
	     .match_port = 8080,
	     .match_port_set = true,
	     .match_path = ""},
	};
	struct config_proxy cp = {.routes = routes, .n_routes = 3};

	assert_ptr_equal(proxy_route_match(&cp, "api", 80, 80, "/v1", 3), &routes[1]);
	assert_ptr_equal(proxy_route_match(&cp, "api", 80, 80, "/v1/x", 5), &routes[1]);
	assert_ptr_equal(proxy_route_match(&cp, "api", 80, 80, "/v1?q", 5), &routes[1]);
	assert_ptr_equal(proxy_route_match(&cp, "api", 80, 80, "/v1x", 4), &routes[0]);
	assert_ptr_equal(proxy_route_match(&cp, "api", 80, 80, "", 0), &routes[0]);
	assert_ptr_equal(proxy_route_match(&cp, "api", 8080, 80, "/v1", 3), &routes[2]);
	assert_null(proxy_route_match(&cp, "api", 81, 80, "/", 1));
	assert_null(proxy_route_match(&cp, "api.evil", 80, 80, "/", 1));
	cp.n_routes = 2;
	routes[0].match_path = "/v2";
	assert_null(proxy_route_match(&cp, "api", 80, 80, "/v2x", 4));
	assert_null(proxy_route_match(&cp, "api", 80, 80, "/", 1));
	/* without a port: 443 when intercepting, never an explicit other port */
	assert_ptr_equal(proxy_route_match(&cp, "api", 443, 443, "/v1", 3), &routes[1]);
	assert_null(proxy_route_match(&cp, "api", 443, 80, "/v1", 3));
	cp.n_routes = 3;
	assert_ptr_equal(proxy_route_match(&cp, "api", 8080, 443, "/x", 2), &routes[2]);
}

static void
test_host_agrees(void **state)
{
	assert_true(proxy_route_host_agrees("API", 3, "api", 80, 80));
	assert_true(proxy_route_host_agrees("api:80", 6, "api", 80, 80));
	assert_true(proxy_route_host_agrees("api:8080", 8, "api", 8080, 80));
	assert_false(proxy_route_host_agrees("api", 3, "api", 8080, 80));
	assert_false(proxy_route_host_agrees("evil", 4, "api", 80, 80));
	assert_false(proxy_route_host_agrees("api:81", 6, "api", 80, 80));
	assert_false(proxy_route_host_agrees("", 0, "api", 80, 80));
	assert_true(proxy_route_host_agrees("api", 3, "api", 443, 443));
	assert_false(proxy_route_host_agrees("api", 3, "api", 443, 80));
}

static void
test_path_unsafe(void **state)
{
	static const char *const unsafe[] = {
	    "/a/../b",
	    "/a/..",
	    "/./a",
	    "/a/%2e%2E/b",
	    "/a/.%2e",
	    "/a%2fb",
	    "/a%5cb",
	    "/a\\b",
	    "/a%00",
	    "/a%zz",
	    "/a%2",
	    /* ";params" stripped per segment, raw and decoded (issue 11, finding 9) */
	    "/a/..;/b",
	    "/a/..;x=1/b",
	    "/a/.;/b",
	    "/a/%2e%2e;/b",
	    "/a/..%3b/b",
	    "/a/..%3B/b",
	    "/a/%2e%2e%3bx/b",
	    "/a/.%2e;jsessionid=1",
	    "/a/..;",
	    "/a/.;a;b/c",
	    "/a/..;%2f/b",
	};
	static const char *const safe[] = {
	    "/a/b",	"/a/...",    "/a/.b",	     "/a/b.",	  "/a?x=/../",
	    "",		"/a%20b",    "/a/%2e%2e%2e", "/a/b;x=..", "/a/b;../c",
	    "/a/...;x", "/a/b%3b..", "/a/;/b",	     "/a/.x;y/b",
	};

	for (size_t i = 0; i < sizeof(unsafe) / sizeof(unsafe[0]); i++)
		assert_true(proxy_route_path_unsafe(unsafe[i], strlen(unsafe[i])));
	for (size_t i = 0; i < sizeof(safe) / sizeof(safe[0]); i++)
		assert_false(proxy_route_path_unsafe(safe[i], strlen(safe[i])));
}

static void
test_hop_by_hop(void **state)
{
	const char *req =
	    "GET / HTTP/1.1\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
	    "X-Kept: 2\r\nKeep-Alive: 5\r\nProxy-Authorization: x\r\nTE: trailers\r\n"
	    "Upgrade: h2c\r\nHost: h\r\nContent-Length: 0\r\nAuthorization: y\r\n\r\n";
	struct http_head h;

	assert_true(http_parse_request_head(req, strlen(req), &h) > 0);
	assert_true(proxy_route_hop_by_hop(&h, &h.headers[0]));	 /* Connection */
	assert_true(proxy_route_hop_by_hop(&h, &h.headers[1]));	 /* listed in Connection */
	assert_false(proxy_route_hop_by_hop(&h, &h.headers[2])); /* X-Kept */
	for (int i = 3; i < 9; i++)
		assert_true(proxy_route_hop_by_hop(&h, &h.headers[i]));
	assert_false(proxy_route_hop_by_hop(&h, &h.headers[9])); /* Authorization */
}

static void
test_invalid_token(void **state)
{
	const char *yes = "Bearer realm=\"x\", error=\"invalid_token\"";
	const char *yes2 = "bearer ERROR=\"INVALID_TOKEN\"";
	const char *no1 = "Bearer error=\"insufficient_scope\"";
	const char *no2 = "Basic error=\"invalid_token\"";

	assert_true(proxy_route_invalid_token(yes, strlen(yes)));
	assert_true(proxy_route_invalid_token(yes2, strlen(yes2)));
	assert_false(proxy_route_invalid_token(no1, strlen(no1)));
	assert_false(proxy_route_invalid_token(no2, strlen(no2)));
}

static struct config_listen
listen_at(const char *addr, unsigned port)
{
	struct config_listen l = {.text = (char *)addr};
	struct sockaddr_in *in4 = (struct sockaddr_in *)&l.addr;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&l.addr;

	if (inet_pton(AF_INET, addr, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
	} else {
		assert_int_equal(inet_pton(AF_INET6, addr, &in6->sin6_addr), 1);
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
	}
	return l;
}

static bool
host_ok(const struct config_listen *l, const char *value)
{
	return proxy_route_host_is_listener(value, strlen(value), l);
}

static void
test_host_is_listener(void **state)
{
	struct config_listen v4 = listen_at("127.0.0.1", 8081), v6 = listen_at("::1", 8081);
	struct config_listen p80 = listen_at("127.0.0.1", 80), any = listen_at("0.0.0.0", 8081);
	struct config_listen other = listen_at("10.1.2.3", 8081);

	assert_true(host_ok(&v4, "127.0.0.1:8081"));
	assert_true(host_ok(&v4, "localhost:8081"));
	assert_true(host_ok(&v4, "LOCALHOST:8081"));
	assert_false(host_ok(&v4, "127.0.0.1"));      /* the port is not 80 */
	assert_false(host_ok(&v4, "127.0.0.1:8082")); /* another port */
	assert_false(host_ok(&v4, "127.0.0.2:8081")); /* another address */
	assert_false(host_ok(&v4, "[::1]:8081"));
	assert_false(host_ok(&v4, "rebound.example:8081"));
	assert_false(host_ok(&v4, "localhost.example:8081"));
	assert_false(host_ok(&v4, ""));
	assert_false(host_ok(&v4, "127.0.0.1:8081 "));
	assert_true(host_ok(&v6, "[::1]:8081"));
	assert_true(host_ok(&v6, "[0:0::1]:8081"));
	assert_true(host_ok(&v6, "localhost:8081"));
	assert_false(host_ok(&v6, "127.0.0.1:8081"));
	assert_true(host_ok(&p80, "127.0.0.1"));
	assert_true(host_ok(&p80, "localhost:80"));
	assert_true(host_ok(&any, "192.0.2.7:8081")); /* a wildcard: any literal of it */
	assert_true(host_ok(&any, "localhost:8081"));
	assert_false(host_ok(&any, "rebound.example:8081"));
	assert_true(host_ok(&other, "10.1.2.3:8081"));
	assert_false(host_ok(&other, "localhost:8081")); /* not where localhost goes */
}

static void
test_from_web_page(void **state)
{
	static const char *const pages[] = {
	    "GET / HTTP/1.1\r\nHost: h\r\nOrigin: https://evil.example\r\n\r\n",
	    "GET / HTTP/1.1\r\nHost: h\r\norigin: null\r\n\r\n",
	    "GET / HTTP/1.1\r\nHost: h\r\nSec-Fetch-Site: cross-site\r\n\r\n",
	    "GET / HTTP/1.1\r\nHost: h\r\nSec-Fetch-Site: same-origin\r\n\r\n",
	    "GET / HTTP/1.1\r\nHost: h\r\nSec-Fetch-Site: none\r\nSec-Fetch-Site: "
	    "same-site\r\n\r\n",
	};
	static const char *const programs[] = {
	    "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
	    "GET / HTTP/1.1\r\nHost: h\r\nSec-Fetch-Site: None\r\nSec-Fetch-Mode: cors\r\n\r\n",
	    "GET / HTTP/1.1\r\nHost: h\r\nX-Origin: x\r\nReferer: http://a/\r\n\r\n",
	};
	struct http_head h;

	for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
		assert_true(http_parse_request_head(pages[i], strlen(pages[i]), &h) > 0);
		assert_true(proxy_route_from_web_page(&h));
	}
	for (size_t i = 0; i < sizeof(programs) / sizeof(programs[0]); i++) {
		assert_true(http_parse_request_head(programs[i], strlen(programs[i]), &h) > 0);
		assert_false(proxy_route_from_web_page(&h));
	}
}

/* Verdicts: one case per check of each, in the order they run, and what passes */

static struct config_listen verdict_listen = {.text = "127.0.0.1:8081"};
static struct config_route vroutes[] = {
    {.name = "api", .match_host = "api.example.com", .match_port = 80, .match_path = ""},
    {.name = "v1",
     .match_host = "api.example.com",
     .match_port = 80,
     .match_path = "/v1",
     .overwrite = true},
    {.name = "secure", .match_host = "secure.example.com", .match_port = 80, .match_path = ""},
    {.name = "alt",
     .match_host = "alt.example.com",
     .match_port = 8443,
     .match_port_set = true,
     .match_path = ""},
    {.name = "pass",
     .match_host = "pass.example.com",
     .match_port = 80,
     .match_path = "",
     .passthrough = true},
};
static char *verdict_tunnels[] = {"tunnel.example:443", NULL};
static struct config_proxy vcp = {
    .routes = vroutes,
    .n_routes = sizeof(vroutes) / sizeof(vroutes[0]),
    .tunnel_hosts = verdict_tunnels,
};

static const char *const trace_heads[] = {
    "TRACE / HTTP/1.1\r\nHost: localhost:8081\r\n\r\n",
    "TRACK / HTTP/1.1\r\nHost: localhost:8081\r\n\r\n",
    "trace / HTTP/1.1\r\nHost: localhost:8081\r\n\r\n",
    "Track http://api.example.com/ HTTP/1.1\r\n\r\n",
};

static struct http_head
head_of(const char *text)
{
	struct http_head h;

	if (http_parse_request_head(text, strlen(text), &h) <= 0)
		fail_msg("does not parse: %s", text);
	return h;
}

/* r and v say status, error and description (status 0: the verdict passed). */
static void
expect_verdict(int r, const struct proxy_verdict *v, int status, const char *error,
	       const char *description)
{
	assert_int_equal(r, status);
	assert_int_equal(v->status, status);
	if (status == 0) {
		assert_null(v->error);
		assert_null(v->description);
		assert_null(v->allow);
		assert_null(v->log);
		return;
	}
	assert_string_equal(v->error, error);
	assert_string_equal(v->description, description);
}

#define NOT_ABSOLUTE "this is a proxy: expected an absolute http:// request target (or CONNECT)"
#define NO_PATH	     "expected a path as request target"
#define NO_ROUTE     "no route matches this host and path: nothing was forwarded"
#define WEB_PAGE     "requests from web pages (Origin, Sec-Fetch-Site) are not forwarded"
#define UNSAFE	     "dot segments and encoded slashes are not forwarded"
#define BASE_HOST                                                                                  \
	"the Host header must name this listener (127.0.0.1:8081, or localhost with its port)"

static void
test_verdict_method(void **state)
{
	static const char *const others[] = {
	    "GET / HTTP/1.1\r\n\r\n",
	    "TRACES / HTTP/1.1\r\n\r\n",
	    "OPTIONS * HTTP/1.1\r\n\r\n",
	    "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
	};
	struct proxy_verdict v;
	struct http_head h;

	for (size_t i = 0; i < sizeof(trace_heads) / sizeof(trace_heads[0]); i++) {
		h = head_of(trace_heads[i]);
		expect_verdict(proxy_route_method(&h, &v), &v, 405, "invalid_request",
			       "TRACE is not forwarded: the answer would carry the token");
		assert_string_equal(v.allow, PROXY_ROUTE_ALLOW);
		assert_false(proxy_route_retryable(&h));
	}
	for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
		h = head_of(others[i]);
		expect_verdict(proxy_route_method(&h, &v), &v, 0, NULL, NULL);
	}
}

static void
test_verdict_forward(void **state)
{
	struct proxy_verdict v;
	struct http_head h;

	/* method: before anything else, so no route is known */
	h = head_of(trace_heads[3]);
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 405, "invalid_request",
		       "TRACE is not forwarded: the answer would carry the token");
	assert_string_equal(v.allow, PROXY_ROUTE_ALLOW);
	assert_null(v.route);
	/* absolute-form http:// only */
	h = head_of("GET /v1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 400, "invalid_request", NOT_ABSOLUTE);
	assert_null(v.route);
	h = head_of("GET https://api.example.com/ HTTP/1.1\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 400, "invalid_request", NOT_ABSOLUTE);
	/* a Host that names another host */
	h = head_of("GET http://api.example.com/v1 HTTP/1.1\r\nHost: evil.example\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 400, "invalid_request",
		       "the Host header disagrees with the request target");
	assert_null(v.route);
	/* no route for the host, the port, or the path */
	h = head_of("GET http://other.example/ HTTP/1.1\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 403, "forbidden", NO_ROUTE);
	assert_null(v.route);
	assert_string_equal(v.host, "other.example");
	assert_int_equal(v.port, 80);
	h = head_of("GET http://api.example.com:8080/ HTTP/1.1\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 403, "forbidden", NO_ROUTE);
	/* a web page's request: refused once routed, and logged */
	h = head_of(
	    "GET http://api.example.com/v1 HTTP/1.1\r\nOrigin: https://evil.example\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 403, "forbidden", WEB_PAGE);
	assert_ptr_equal(v.route, &vroutes[1]);
	assert_string_equal(v.log, "proxy request from a web page refused");
	h = head_of("GET http://api.example.com/ HTTP/1.1\r\nSec-Fetch-Site: same-site\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 403, "forbidden", WEB_PAGE);
	/* a path the upstream could normalise out of the prefix */
	h = head_of("GET http://api.example.com/a/..;/v1 HTTP/1.1\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 400, "invalid_request", UNSAFE);
	assert_ptr_equal(v.route, &vroutes[0]);
	assert_null(v.log);
	/* Expect other than 100-continue */
	h = head_of("PUT http://api.example.com/v1 HTTP/1.1\r\nExpect: 200-ok\r\n"
		    "Content-Length: 1\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 417, "invalid_request",
		       "unsupported Expect");
	assert_ptr_equal(v.route, &vroutes[1]);
	/* passing: the longest prefix, the path as sent, the host in lower case */
	h = head_of(
	    "PUT http://API.example.com/v1/items?q=1 HTTP/1.1\r\nHost: api.example.com:80\r\n"
	    "Expect: 100-Continue\r\nSec-Fetch-Site: none\r\nContent-Length: 1\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 0, NULL, NULL);
	assert_ptr_equal(v.route, &vroutes[1]);
	assert_int_equal(v.path_len, strlen("/v1/items?q=1"));
	assert_memory_equal(v.path, "/v1/items?q=1", v.path_len);
	assert_string_equal(v.host, "api.example.com");
	assert_int_equal(v.port, 80);
	h = head_of("GET http://api.example.com HTTP/1.1\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 0, NULL, NULL);
	assert_ptr_equal(v.route, &vroutes[0]);
	assert_int_equal(v.path_len, 0);
}

static void
test_verdict_base_url(void **state)
{
	struct config_route r = vroutes[0];
	struct proxy_verdict v;
	struct http_head h;

	r.listen = &verdict_listen;
	verdict_listen.addr.ss_family = AF_INET;
	((struct sockaddr_in *)&verdict_listen.addr)->sin_port = htons(8081);
	((struct sockaddr_in *)&verdict_listen.addr)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	/* method first: before the route is taken (counted for no route) */
	h = head_of(trace_heads[0]);
	expect_verdict(proxy_route_base_url(&r, &h, &v), &v, 405, "invalid_request",
		       "TRACE is not forwarded: the answer would carry the token");
	assert_null(v.route);
	/* origin-form only; from here on the route is the listener's */
	h = head_of("GET http://localhost:8081/ HTTP/1.1\r\nHost: localhost:8081\r\n\r\n");
	expect_verdict(proxy_route_base_url(&r, &h, &v), &v, 400, "invalid_request", NO_PATH);
	assert_ptr_equal(v.route, &r);
	/* the Host must be the listener: absent, rebound, another port */
	h = head_of("GET /x HTTP/1.1\r\n\r\n");
	expect_verdict(proxy_route_base_url(&r, &h, &v), &v, 400, "invalid_request", BASE_HOST);
	assert_ptr_equal(v.description, v.msg);
	h = head_of("GET /x HTTP/1.1\r\nHost: rebound.example:8081\r\n\r\n");
	expect_verdict(proxy_route_base_url(&r, &h, &v), &v, 400, "invalid_request", BASE_HOST);
	h = head_of("GET /x HTTP/1.1\r\nHost: 127.0.0.1:8082\r\n\r\n");
	expect_verdict(proxy_route_base_url(&r, &h, &v), &v, 400, "invalid_request", BASE_HOST);
	/* a web page, an unsafe path, Expect */
	h = head_of(
	    "GET /x HTTP/1.1\r\nHost: localhost:8081\r\nSec-Fetch-Site: cross-site\r\n\r\n");
	expect_verdict(proxy_route_base_url(&r, &h, &v), &v, 403, "forbidden", WEB_PAGE);
	assert_string_equal(v.log, "proxy request from a web page refused");
	assert_ptr_equal(v.route, &r);
	h = head_of("GET /a/%2e%2e/b HTTP/1.1\r\nHost: localhost:8081\r\n\r\n");
	expect_verdict(proxy_route_base_url(&r, &h, &v), &v, 400, "invalid_request", UNSAFE);
	h = head_of(
	    "POST /x HTTP/1.1\r\nHost: localhost:8081\r\nExpect: x\r\nContent-Length: 1\r\n\r\n");
	expect_verdict(proxy_route_base_url(&r, &h, &v), &v, 417, "invalid_request",
		       "unsupported Expect");
	/* passing: the target is the path */
	h = head_of("GET /api/items?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8081\r\n\r\n");
	expect_verdict(proxy_route_base_url(&r, &h, &v), &v, 0, NULL, NULL);
	assert_ptr_equal(v.route, &r);
	assert_int_equal(v.path_len, strlen("/api/items?x=1"));
	assert_memory_equal(v.path, "/api/items?x=1", v.path_len);
	assert_string_equal(v.host, "");
}

static void
test_verdict_intercepted(void **state)
{
	struct proxy_verdict v;
	struct http_head h;

	h = head_of("TRACE / HTTP/1.1\r\nHost: secure.example.com\r\n\r\n");
	expect_verdict(proxy_route_intercepted(&vcp, "secure.example.com", 443, &h, &v), &v, 405,
		       "invalid_request",
		       "TRACE is not forwarded: the answer would carry the token");
	h = head_of("GET http://secure.example.com/ HTTP/1.1\r\n\r\n");
	expect_verdict(proxy_route_intercepted(&vcp, "secure.example.com", 443, &h, &v), &v, 400,
		       "invalid_request", NO_PATH);
	assert_null(v.route);
	h = head_of("GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
	expect_verdict(proxy_route_intercepted(&vcp, "secure.example.com", 443, &h, &v), &v, 400,
		       "invalid_request", "the Host header disagrees with the CONNECT target");
	h = head_of("GET / HTTP/1.1\r\nHost: secure.example.com:8443\r\n\r\n");
	expect_verdict(proxy_route_intercepted(&vcp, "secure.example.com", 443, &h, &v), &v, 400,
		       "invalid_request", "the Host header disagrees with the CONNECT target");
	/* a match without a port covers 443 only; alt's covers 8443 only */
	h = head_of("GET / HTTP/1.1\r\n\r\n");
	expect_verdict(proxy_route_intercepted(&vcp, "secure.example.com", 8443, &h, &v), &v, 403,
		       "forbidden", NO_ROUTE);
	assert_null(v.route);
	expect_verdict(proxy_route_intercepted(&vcp, "alt.example.com", 443, &h, &v), &v, 403,
		       "forbidden", NO_ROUTE);
	h = head_of("GET / HTTP/1.1\r\nOrigin: null\r\n\r\n");
	expect_verdict(proxy_route_intercepted(&vcp, "secure.example.com", 443, &h, &v), &v, 403,
		       "forbidden", WEB_PAGE);
	assert_ptr_equal(v.route, &vroutes[2]);
	assert_string_equal(v.log, "proxy request from a web page refused");
	h = head_of("GET /a%2fb HTTP/1.1\r\n\r\n");
	expect_verdict(proxy_route_intercepted(&vcp, "secure.example.com", 443, &h, &v), &v, 400,
		       "invalid_request", UNSAFE);
	h = head_of("POST / HTTP/1.1\r\nExpect: 100-continue, x\r\nContent-Length: 1\r\n\r\n");
	expect_verdict(proxy_route_intercepted(&vcp, "secure.example.com", 443, &h, &v), &v, 417,
		       "invalid_request", "unsupported Expect");
	/* passing, with and without a Host */
	h = head_of("GET /x HTTP/1.1\r\nHost: Secure.Example.com\r\n\r\n");
	expect_verdict(proxy_route_intercepted(&vcp, "secure.example.com", 443, &h, &v), &v, 0,
		       NULL, NULL);
	assert_ptr_equal(v.route, &vroutes[2]);
	assert_string_equal(v.host, "secure.example.com");
	assert_int_equal(v.port, 443);
	assert_int_equal(v.path_len, 2);
	h = head_of("GET /y HTTP/1.1\r\n\r\n");
	expect_verdict(proxy_route_intercepted(&vcp, "alt.example.com", 8443, &h, &v), &v, 0, NULL,
		       NULL);
	assert_ptr_equal(v.route, &vroutes[3]);
}

static int
connect_verdict(enum config_connect mode, bool on_forward, const char *text,
		struct proxy_verdict *v)
{
	struct config_proxy cp = vcp;
	struct http_head h = head_of(text);

	cp.connect = mode;
	return proxy_route_connect(&cp, on_forward, &h, v);
}

#define CONNECT_TO(t) "CONNECT " t " HTTP/1.1\r\nHost: " t "\r\n\r\n"

/* When a head fails several checks, the first in the order above decides. */
static void
test_verdict_order(void **state)
{
	struct config_route r = vroutes[0];
	struct proxy_verdict v;
	struct http_head h;

	r.listen = &verdict_listen;
	h = head_of("TRACE /a/../b HTTP/1.1\r\nOrigin: x\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 405, "invalid_request",
		       "TRACE is not forwarded: the answer would carry the token");
	expect_verdict(proxy_route_base_url(&r, &h, &v), &v, 405, "invalid_request",
		       "TRACE is not forwarded: the answer would carry the token");
	h = head_of(
	    "GET http://evil.example/ HTTP/1.1\r\nHost: api.example.com\r\nOrigin: x\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 400, "invalid_request",
		       "the Host header disagrees with the request target");
	h = head_of("GET http://evil.example/a/../b HTTP/1.1\r\nOrigin: x\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 403, "forbidden", NO_ROUTE);
	h = head_of("GET http://api.example.com/a/../b HTTP/1.1\r\nOrigin: x\r\nExpect: x\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 403, "forbidden", WEB_PAGE);
	h = head_of("GET http://api.example.com/a/../b HTTP/1.1\r\nExpect: x\r\n\r\n");
	expect_verdict(proxy_route_forward(&vcp, &h, &v), &v, 400, "invalid_request", UNSAFE);
	h = head_of("GET /a/../b HTTP/1.1\r\nHost: evil.example\r\nOrigin: x\r\n\r\n");
	expect_verdict(proxy_route_base_url(&r, &h, &v), &v, 400, "invalid_request", BASE_HOST);
	expect_verdict(proxy_route_intercepted(&vcp, "secure.example.com", 443, &h, &v), &v, 400,
		       "invalid_request", "the Host header disagrees with the CONNECT target");
	h = head_of("GET http://x/ HTTP/1.1\r\nHost: evil.example\r\n\r\n");
	expect_verdict(proxy_route_base_url(&r, &h, &v), &v, 400, "invalid_request", NO_PATH);
	expect_verdict(proxy_route_intercepted(&vcp, "secure.example.com", 443, &h, &v), &v, 400,
		       "invalid_request", NO_PATH);
	h = head_of("GET /a/../b HTTP/1.1\r\nOrigin: x\r\n\r\n");
	expect_verdict(proxy_route_intercepted(&vcp, "nowhere.example", 443, &h, &v), &v, 403,
		       "forbidden", NO_ROUTE);
	/* CONNECT: the listener and policy before the target, the target before the lists */
	expect_verdict(connect_verdict(CONFIG_CONNECT_DENY, true, CONNECT_TO("x"), &v), &v, 403,
		       "forbidden", "CONNECT is not allowed by this proxy");
	expect_verdict(connect_verdict(CONFIG_CONNECT_TUNNEL, false, CONNECT_TO("x"), &v), &v, 403,
		       "forbidden", "CONNECT is not allowed by this proxy");
}

static void
test_verdict_connect(void **state)
{
	static const char *const bad[] = {
	    CONNECT_TO("tunnel.example"),	CONNECT_TO("tunnel.example:0"),
	    CONNECT_TO("tunnel.example:65536"), CONNECT_TO("[::1"),
	    CONNECT_TO("tunnel.example:x"),
	};
	struct proxy_verdict v;

	/* only on the forward proxy, and only when connect allows it */
	expect_verdict(
	    connect_verdict(CONFIG_CONNECT_TUNNEL, false, CONNECT_TO("tunnel.example:443"), &v), &v,
	    403, "forbidden", "CONNECT is not allowed by this proxy");
	expect_verdict(connect_verdict(CONFIG_CONNECT_INTERCEPT, false,
				       CONNECT_TO("secure.example.com:443"), &v),
		       &v, 403, "forbidden", "CONNECT is not allowed by this proxy");
	expect_verdict(
	    connect_verdict(CONFIG_CONNECT_DENY, true, CONNECT_TO("tunnel.example:443"), &v), &v,
	    403, "forbidden", "CONNECT is not allowed by this proxy");
	assert_null(v.log);
	/* host:port, with a port */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		expect_verdict(connect_verdict(CONFIG_CONNECT_TUNNEL, true, bad[i], &v), &v, 400,
			       "invalid_request", "CONNECT needs host:port");
		expect_verdict(connect_verdict(CONFIG_CONNECT_INTERCEPT, true, bad[i], &v), &v, 400,
			       "invalid_request", "CONNECT needs host:port");
	}
	/* tunnel: tunnel_hosts only */
	expect_verdict(
	    connect_verdict(CONFIG_CONNECT_TUNNEL, true, CONNECT_TO("other.example:443"), &v), &v,
	    403, "forbidden", "this host is not in tunnel_hosts");
	assert_string_equal(v.log, "proxy tunnel refused");
	assert_string_equal(v.host, "other.example");
	assert_int_equal(v.port, 443);
	expect_verdict(
	    connect_verdict(CONFIG_CONNECT_TUNNEL, true, CONNECT_TO("tunnel.example:8443"), &v), &v,
	    403, "forbidden", "this host is not in tunnel_hosts");
	expect_verdict(
	    connect_verdict(CONFIG_CONNECT_TUNNEL, true, CONNECT_TO("Tunnel.Example:443"), &v), &v,
	    0, NULL, NULL);
	assert_string_equal(v.host, "tunnel.example");
	assert_int_equal(v.port, 443);
	assert_null(v.route);
	/* intercept: routed hosts only (443 for a match without a port) */
	expect_verdict(connect_verdict(CONFIG_CONNECT_INTERCEPT, true,
				       CONNECT_TO("secure.example.com:8443"), &v),
		       &v, 403, "forbidden", "no route for this host: nothing was forwarded");
	assert_string_equal(v.log, "proxy interception refused");
	expect_verdict(
	    connect_verdict(CONFIG_CONNECT_INTERCEPT, true, CONNECT_TO("tunnel.example:443"), &v),
	    &v, 403, "forbidden", "no route for this host: nothing was forwarded");
	expect_verdict(connect_verdict(CONFIG_CONNECT_INTERCEPT, true,
				       CONNECT_TO("secure.example.com:443"), &v),
		       &v, 0, NULL, NULL);
	assert_string_equal(v.host, "secure.example.com");
	assert_int_equal(v.port, 443);
	assert_null(v.route);
	expect_verdict(
	    connect_verdict(CONFIG_CONNECT_INTERCEPT, true, CONNECT_TO("alt.example.com:8443"), &v),
	    &v, 0, NULL, NULL);
	expect_verdict(
	    connect_verdict(CONFIG_CONNECT_INTERCEPT, true, CONNECT_TO("api.example.com:443"), &v),
	    &v, 0, NULL, NULL);
}

static void
test_stamps(void **state)
{
	struct http_head with = head_of("GET / HTTP/1.1\r\nauthorization: Bearer own\r\n\r\n");
	struct http_head without = head_of("GET / HTTP/1.1\r\nX-Authorization: x\r\n\r\n");

	assert_true(proxy_route_stamps(&vroutes[0], &without));
	assert_false(proxy_route_stamps(&vroutes[0], &with)); /* the caller's own stays */
	assert_true(proxy_route_stamps(&vroutes[1], &with));  /* overwrite = yes */
	assert_true(proxy_route_stamps(&vroutes[1], &without));
	assert_false(proxy_route_stamps(&vroutes[4], &without)); /* passthrough */
	assert_false(proxy_route_stamps(&vroutes[4], &with));
}

static void
test_retryable(void **state)
{
	static const char *const yes[] = {
	    "GET / HTTP/1.1\r\n\r\n",
	    "HEAD / HTTP/1.1\r\n\r\n",
	    "OPTIONS / HTTP/1.1\r\n\r\n",
	    "DELETE / HTTP/1.1\r\n\r\n",
	    "PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
	    "PUT / HTTP/1.1\r\nContent-Length: 65536\r\n\r\n",
	};
	static const char *const no[] = {
	    "POST / HTTP/1.1\r\n\r\n",
	    "PATCH / HTTP/1.1\r\n\r\n",
	    "TRACE / HTTP/1.1\r\n\r\n",
	    "get / HTTP/1.1\r\n\r\n",
	    "PUT / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",
	    "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
	    "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
	};

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		struct http_head h = head_of(yes[i]);

		if (!proxy_route_retryable(&h))
			fail_msg("not retryable: %s", yes[i]);
	}
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
		struct http_head h = head_of(no[i]);

		if (proxy_route_retryable(&h))
			fail_msg("retryable: %s", no[i]);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_hostport),
	    cmocka_unit_test(test_absolute),
	    cmocka_unit_test(test_match),
	    cmocka_unit_test(test_host_agrees),
	    cmocka_unit_test(test_path_unsafe),
	    cmocka_unit_test(test_hop_by_hop),
	    cmocka_unit_test(test_invalid_token),
	    cmocka_unit_test(test_host_is_listener),
	    cmocka_unit_test(test_from_web_page),
	    cmocka_unit_test(test_localhost_names),
	    cmocka_unit_test(test_verdict_method),
	    cmocka_unit_test(test_verdict_forward),
	    cmocka_unit_test(test_verdict_base_url),
	    cmocka_unit_test(test_verdict_intercepted),
	    cmocka_unit_test(test_verdict_connect),
	    cmocka_unit_test(test_stamps),
	    cmocka_unit_test(test_retryable),
	    cmocka_unit_test(test_verdict_order),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
