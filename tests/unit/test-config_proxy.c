/*
 * Unit tests for the equality of proxy configurations (config_proxy.c):
 * config_route_equal and config_proxy_equal, field by field over the lists
 * in config_proxy.h, and over configurations as the parser builds them, so
 * that a reload that changes any [proxy] or [route] key is seen as a change.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "config_proxy.h"
#include "log.h"

static struct config_listen listen_a = {.text = "127.0.0.1:8081"};
static struct config_listen listen_a2 = {.text = "127.0.0.1:8081"}; /* same text, own copy */
static struct config_listen listen_b = {.text = "127.0.0.1:8082"};
static struct config_audience audience_a, audience_b;

/* A route with every field set to something other than its zero value. */
static struct config_route
route_fixture(void)
{
	return (struct config_route){
	    .name = "api",
	    .line = 7,
	    .match_host = "api.example.com",
	    .match_port = 8080,
	    .match_port_set = true,
	    .match_path = "/v1",
	    .audience_name = "apim",
	    .audience = &audience_a,
	    .upstream = "https://api.example.com:8443/base",
	    .upstream_tls = true,
	    .upstream_host = "api.example.com",
	    .upstream_port = 8443,
	    .upstream_base = "/base",
	    .listen = &listen_a,
	    .overwrite = true,
	    .passthrough = true,
	    .ca_file = "/etc/ssl/api.pem",
	};
}

static void
test_route_equal_itself(void **state)
{
	struct config_route a = route_fixture(), b = route_fixture();

	(void)state;
	assert_true(config_route_equal(&a, &b));
	b.listen = &listen_a2; /* listens compare as written, not by pointer */
	assert_true(config_route_equal(&a, &b));
}

/* Each compared field, changed alone, makes the routes differ. */
static void
test_route_every_compared_field(void **state)
{
	struct config_route a, b;

	(void)state;
#define CHANGE_STR(f)                                                                              \
	a = route_fixture();                                                                       \
	b = a;                                                                                     \
	b.f = "something else";                                                                    \
	assert_false(config_route_equal(&a, &b));                                                  \
	b.f = NULL;                                                                                \
	assert_false(config_route_equal(&a, &b));                                                  \
	assert_false(config_route_equal(&b, &a));                                                  \
	a.f = NULL;                                                                                \
	assert_true(config_route_equal(&a, &b));
#define CHANGE_LISTEN(f)                                                                           \
	a = route_fixture();                                                                       \
	b = a;                                                                                     \
	b.f = &listen_b;                                                                           \
	assert_false(config_route_equal(&a, &b));                                                  \
	b.f = NULL;                                                                                \
	assert_false(config_route_equal(&a, &b));                                                  \
	assert_false(config_route_equal(&b, &a));                                                  \
	a.f = NULL;                                                                                \
	assert_true(config_route_equal(&a, &b));
#define CHANGE_SCALAR(f)                                                                           \
	a = route_fixture();                                                                       \
	b = a;                                                                                     \
	b.f = !a.f;                                                                                \
	assert_false(config_route_equal(&a, &b));
	CONFIG_ROUTE_STRINGS(CHANGE_STR)
	CONFIG_ROUTE_LISTENS(CHANGE_LISTEN)
	CONFIG_ROUTE_SCALARS(CHANGE_SCALAR)
#undef CHANGE_STR
#undef CHANGE_LISTEN
#undef CHANGE_SCALAR
}

/*
 * The fields that do not count: what is parsed from another field (changed
 * together with it in a real configuration), resolved, or only a position.
 */
static void
test_route_uncompared_fields(void **state)
{
	struct config_route a, b;

	(void)state;
#define CHANGE_STR(f)                                                                              \
	a = route_fixture();                                                                       \
	b = a;                                                                                     \
	b.f = "something else";                                                                    \
	assert_true(config_route_equal(&a, &b));
	CONFIG_ROUTE_PARSED_STRINGS(CHANGE_STR)
#undef CHANGE_STR
	a = route_fixture();
	b = a;
	b.line = 99;
	b.audience = &audience_b;
	b.upstream_tls = false;
	b.upstream_port = 443;
	assert_true(config_route_equal(&a, &b));
	/* every member of CONFIG_ROUTE_UNCOMPARED was changed just above */
#define NAMED(f) +1
	assert_int_equal(0 CONFIG_ROUTE_UNCOMPARED(NAMED), 4);
#undef NAMED
}

static char *hosts_ab[] = {"a.example:443", "b.example:443", NULL};
static char *hosts_a[] = {"a.example:443", NULL};
static char *hosts_ba[] = {"b.example:443", "a.example:443", NULL};
static char *hosts_none[] = {NULL};
static struct config_route routes_a[2], routes_b[2];

/* A [proxy] with every field set to something other than its zero value. */
static struct config_proxy
proxy_fixture(struct config_route *routes)
{
	routes[0] = route_fixture();
	routes[1] = route_fixture();
	routes[1].name = "other";
	routes[1].match_path = "/v2";
	return (struct config_proxy){
	    .line = 3,
	    .listen = &listen_b,
	    .connect = CONFIG_CONNECT_TUNNEL,
	    .tunnel_hosts = hosts_ab,
	    .ca_file = "/etc/ssl/proxy.pem",
	    .intercept_ca_dir = "/var/lib/bearerd/ca",
	    .max_connections = 1024,
	    .connect_timeout = 10,
	    .idle_timeout = 60,
	    .header_timeout = 10,
	    .allow_non_loopback = true,
	    .routes = routes,
	    .n_routes = 2,
	};
}

static void
test_proxy_equal_itself(void **state)
{
	struct config_proxy a = proxy_fixture(routes_a), b = proxy_fixture(routes_b);

	(void)state;
	assert_true(config_proxy_equal(&a, &b));
	assert_true(config_proxy_equal(NULL, NULL));
	assert_false(config_proxy_equal(&a, NULL));
	assert_false(config_proxy_equal(NULL, &b));
}

static void
test_proxy_every_compared_field(void **state)
{
	struct config_proxy a, b;

	(void)state;
#define CHANGE_STR(f)                                                                              \
	a = proxy_fixture(routes_a);                                                               \
	b = proxy_fixture(routes_b);                                                               \
	b.f = "something else";                                                                    \
	assert_false(config_proxy_equal(&a, &b));                                                  \
	b.f = NULL;                                                                                \
	assert_false(config_proxy_equal(&a, &b));                                                  \
	assert_false(config_proxy_equal(&b, &a));                                                  \
	a.f = NULL;                                                                                \
	assert_true(config_proxy_equal(&a, &b));
#define CHANGE_STRV(f)                                                                             \
	a = proxy_fixture(routes_a);                                                               \
	b = proxy_fixture(routes_b);                                                               \
	b.f = hosts_a; /* one fewer */                                                             \
	assert_false(config_proxy_equal(&a, &b));                                                  \
	assert_false(config_proxy_equal(&b, &a)); /* one more */                                   \
	b.f = hosts_ba;                                                                            \
	assert_false(config_proxy_equal(&a, &b)); /* the same, in another order */                 \
	b.f = hosts_none;                                                                          \
	assert_false(config_proxy_equal(&a, &b));                                                  \
	b.f = NULL;                                                                                \
	assert_false(config_proxy_equal(&a, &b));                                                  \
	assert_false(config_proxy_equal(&b, &a));                                                  \
	a.f = hosts_none;                                                                          \
	assert_false(config_proxy_equal(&a, &b));                                                  \
	a.f = NULL;                                                                                \
	assert_true(config_proxy_equal(&a, &b));
#define CHANGE_LISTEN(f)                                                                           \
	a = proxy_fixture(routes_a);                                                               \
	b = proxy_fixture(routes_b);                                                               \
	b.f = &listen_a;                                                                           \
	assert_false(config_proxy_equal(&a, &b));                                                  \
	b.f = NULL;                                                                                \
	assert_false(config_proxy_equal(&a, &b));                                                  \
	assert_false(config_proxy_equal(&b, &a));                                                  \
	a.f = NULL;                                                                                \
	assert_true(config_proxy_equal(&a, &b));
#define CHANGE_SCALAR(f)                                                                           \
	a = proxy_fixture(routes_a);                                                               \
	b = proxy_fixture(routes_b);                                                               \
	b.f = !a.f;                                                                                \
	assert_false(config_proxy_equal(&a, &b));
	CONFIG_PROXY_STRINGS(CHANGE_STR)
	CONFIG_PROXY_STRVS(CHANGE_STRV)
	CONFIG_PROXY_LISTENS(CHANGE_LISTEN)
	CONFIG_PROXY_SCALARS(CHANGE_SCALAR)
#undef CHANGE_STR
#undef CHANGE_STRV
#undef CHANGE_LISTEN
#undef CHANGE_SCALAR
}

static void
test_proxy_routes(void **state)
{
	struct config_proxy a = proxy_fixture(routes_a), b = proxy_fixture(routes_b);
	struct config_route swap;

	(void)state;
	routes_b[1].overwrite = false; /* one field of one route */
	assert_false(config_proxy_equal(&a, &b));
	b = proxy_fixture(routes_b);
	b.n_routes = 1; /* one route fewer */
	assert_false(config_proxy_equal(&a, &b));
	assert_false(config_proxy_equal(&b, &a));
	b = proxy_fixture(routes_b);
	swap = routes_b[0]; /* the same routes in another order: matching may differ */
	routes_b[0] = routes_b[1];
	routes_b[1] = swap;
	assert_false(config_proxy_equal(&a, &b));
	a.n_routes = b.n_routes = 0;
	assert_true(config_proxy_equal(&a, &b));
}

static void
test_proxy_uncompared_fields(void **state)
{
	struct config_proxy a = proxy_fixture(routes_a), b = proxy_fixture(routes_b);

	(void)state;
	b.line = 40;
	b.allow_non_loopback = false;
	assert_true(config_proxy_equal(&a, &b));
	/* every member of CONFIG_PROXY_UNCOMPARED was changed just above */
#define NAMED(f) +1
	assert_int_equal(0 CONFIG_PROXY_UNCOMPARED(NAMED), 2);
#undef NAMED
}

/* The same configurations, as the parser builds them */

#define BASE_IDENTITY                                                                              \
	"[bearerd]\nsocket = /nonexistent/t.sock\n"                                                \
	"[identity \"dev\"]\nsource = dev\n"                                                       \
	"[audience \"apim\"]\nidentity = dev\nresource = api://apim\n"                             \
	"[audience \"other\"]\nidentity = dev\nresource = api://other\n"

static const char *const base_proxy[] = {
    "[proxy]",
    "listen = 127.0.0.1:3128",
    "connect = tunnel",
    "tunnel_hosts = a.example b.example:8443",
    "ca_file = /etc/ssl/proxy.pem",
    "max_connections = 100",
    "connect_timeout = 5",
    "idle_timeout = 30",
    "header_timeout = 5",
    "allow_non_loopback = no",
    "[route \"api\"]",
    "match = api.example.com:8080/v1",
    "audience = apim",
    "upstream = https://api.example.com/base",
    "listen = 127.0.0.1:8081",
    "overwrite = no",
    "ca_file = /etc/ssl/api.pem",
    "[route \"pass\"]",
    "match = pass.example.com",
    "passthrough = yes",
    "upstream = https://pass.example.com",
};
#define N_BASE (sizeof(base_proxy) / sizeof(base_proxy[0]))

/* Up to two lines of base_proxy replaced (text NULL: dropped; line 0: no second edit). */
struct variant {
	size_t line;
	const char *text;
	bool equal; /* still the same proxy */
	size_t line2;
	const char *text2;
};

static const struct variant variants[] = {
    {1, "listen = 127.0.0.1:3129", false, 0, NULL},
    {1, "listen = localhost:3128", false, 0, NULL}, /* the same address, written otherwise */
    {2, "connect = deny", false, 3, NULL},
    {2, "connect = intercept\nintercept_ca_dir = /var/lib/bearerd/ca", false, 3, NULL},
    {3, "tunnel_hosts = a.example", false, 0, NULL},
    {3, "tunnel_hosts = b.example:8443 a.example", false, 0, NULL},
    {3, "tunnel_hosts = a.example:443 b.example:8443", true, 0,
     NULL}, /* the same once normalised */
    {4, "ca_file = /etc/ssl/other.pem", false, 0, NULL},
    {4, NULL, false, 0, NULL},
    {5, "max_connections = 101", false, 0, NULL},
    {6, "connect_timeout = 6", false, 0, NULL},
    {7, "idle_timeout = 31", false, 0, NULL},
    {8, "header_timeout = 6", false, 0, NULL},
    {9, "allow_non_loopback = yes", true, 0, NULL},
    {11, "match = api.example.com:8081/v1", false, 0, NULL},
    {11, "match = api.example.com/v1", false, 0, NULL},
    {11, "match = api.example.com:8080/v2", false, 0, NULL},
    {11, "match = API.example.com:8080/v1/", true, 0, NULL}, /* the same once normalised */
    {12, "audience = other", false, 0, NULL},
    {13, "upstream = https://api.example.com:8443/base", false, 0, NULL},
    {13, "upstream = https://api.example.com/other", false, 0, NULL},
    {13, "upstream = https://127.0.0.1/base", false, 0, NULL},
    {13, "upstream = http://127.0.0.1/base", false, 16, NULL},
    {14, "listen = 127.0.0.1:8082", false, 0, NULL},
    {14, NULL, false, 0, NULL},
    {15, "overwrite = yes", false, 0, NULL},
    {16, NULL, false, 0, NULL},
    {18, "match = pass.example.com:8080", false, 0, NULL},
    {20, "upstream = https://pass.example.com:8443", false, 0, NULL},
};

static struct config *
load_variant(const struct variant *v)
{
	char text[4096];
	size_t n = (size_t)snprintf(text, sizeof(text), "%s", BASE_IDENTITY);
	struct config *c = NULL;

	for (size_t i = 0; i < N_BASE; i++) {
		const char *line = base_proxy[i];

		if (v != NULL && v->line == i)
			line = v->text;
		else if (v != NULL && v->line2 != 0 && v->line2 == i)
			line = v->text2;

		if (line != NULL)
			n += (size_t)snprintf(text + n, sizeof(text) - n, "%s\n", line);
	}
	assert_true(n < sizeof(text));
	if (config_load_string(&c, "t.conf", text, stderr) != 0)
		fail_msg("does not load:\n%s", text);
	return c;
}

static void
test_parsed_variants(void **state)
{
	struct config *base = load_variant(NULL), *again = load_variant(NULL), *c;

	(void)state;
	assert_non_null(base->proxy);
	assert_true(config_proxy_equal(base->proxy, again->proxy));
	for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
		c = load_variant(&variants[i]);
		if (config_proxy_equal(base->proxy, c->proxy) != variants[i].equal)
			fail_msg("line %zu as '%s': expected %s", variants[i].line,
				 variants[i].text != NULL ? variants[i].text : "(none)",
				 variants[i].equal ? "equal" : "a change");
		config_free(c);
	}
	config_free(again);
	config_free(base);
}

/* No [proxy] at all, against one. */
static void
test_parsed_no_proxy(void **state)
{
	struct config *base = load_variant(NULL), *none = NULL;

	(void)state;
	assert_int_equal(config_load_string(&none, "t.conf", BASE_IDENTITY, stderr), 0);
	assert_null(none->proxy);
	assert_false(config_proxy_equal(base->proxy, none->proxy));
	assert_true(config_proxy_equal(none->proxy, NULL));
	config_free(none);
	config_free(base);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_route_equal_itself),
	    cmocka_unit_test(test_route_every_compared_field),
	    cmocka_unit_test(test_route_uncompared_fields),
	    cmocka_unit_test(test_proxy_equal_itself),
	    cmocka_unit_test(test_proxy_every_compared_field),
	    cmocka_unit_test(test_proxy_routes),
	    cmocka_unit_test(test_proxy_uncompared_fields),
	    cmocka_unit_test(test_parsed_variants),
	    cmocka_unit_test(test_parsed_no_proxy),
	};

	log_init(LOG_LEVEL_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
