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

static void
test_absolute(void **state)
{
	const char *t = "http://API.example.com:8080/a/b?x=1", *rest;
	char *h = NULL;
	unsigned port;
	size_t rl;

	assert_int_equal(proxy_route_absolute(t, strlen(t), &h, &port, &rest, &rl), 0);
	assert_string_equal(h, "api.example.com");
	assert_int_equal(port, 8080);
	assert_int_equal(rl, 8);
	assert_memory_equal(rest, "/a/b?x=1", 8);
	free(h);
	t = "HTTP://h?q";
	assert_int_equal(proxy_route_absolute(t, strlen(t), &h, &port, &rest, &rl), 0);
	assert_int_equal(port, 80);
	assert_int_equal(rl, 2);
	free(h);
	t = "https://h/";
	assert_int_equal(proxy_route_absolute(t, strlen(t), &h, &port, &rest, &rl), -EINVAL);
	t = "http://user@h/";
	assert_int_equal(proxy_route_absolute(t, strlen(t), &h, &port, &rest, &rl), -EINVAL);
	t = "http://h/#frag";
	assert_int_equal(proxy_route_absolute(t, strlen(t), &h, &port, &rest, &rl), -EINVAL);
	t = "/origin";
	assert_int_equal(proxy_route_absolute(t, strlen(t), &h, &port, &rest, &rl), -EINVAL);
	t = "http:///x";
	assert_int_equal(proxy_route_absolute(t, strlen(t), &h, &port, &rest, &rl), -EINVAL);
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

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_hostport),	  cmocka_unit_test(test_absolute),
	    cmocka_unit_test(test_match),	  cmocka_unit_test(test_host_agrees),
	    cmocka_unit_test(test_path_unsafe),	  cmocka_unit_test(test_hop_by_hop),
	    cmocka_unit_test(test_invalid_token), cmocka_unit_test(test_host_is_listener),
	    cmocka_unit_test(test_from_web_page), cmocka_unit_test(test_localhost_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
