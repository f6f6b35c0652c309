/*
 * The proxy's decisions that need no sockets: whether a request head may be
 * forwarded and on which route (a verdict per listener mode, and one for
 * CONNECT), whether it is stamped and may be retried, and the rules they
 * are made of: which route a target belongs to, whether its Host header
 * agrees, whether its path is safe to match by prefix, which header fields
 * are hop-by-hop.  None allocates or logs, so that unit tests and fuzzers
 * can drive every rule (tests/unit/test-proxy_route.c, tests/fuzz/fuzz-proxy.c),
 * and proxy_conn.c and proxy_connect.c only act on the verdicts.
 */
#ifndef BEARERD_PROXY_ROUTE_H
#define BEARERD_PROXY_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "config_proxy.h"
#include "http_parse.h"

/* Requests with a body larger than this are not kept for a retry. */
#define PROXY_ROUTE_RETRY_BODY_MAX 65536

/* The Allow field of a 405 to TRACE. */
#define PROXY_ROUTE_ALLOW "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

/*
 * What the proxy does with a request, decided from its head and the
 * configuration alone.  A verdict function fills one and returns its
 * status: 0 to go on, or the status of the JSON error the caller answers
 * with (error, description, and Allow when allow is set), after logging log
 * at info when it is set.  The checks run in a fixed order, and the first
 * that fails decides.
 */
struct proxy_verdict {
	int status;		 /* 0: go on; else our answer's status */
	const char *error;	 /* the answer's "error" */
	const char *description; /* its "error_description": static text, or msg */
	const char *allow;	 /* 405: the Allow field's value; else NULL */
	const char *log;	 /* non-NULL: the caller logs this at info (with what it refused) */
	/*
	 * The route: set once known, so also on refusals after it (the caller
	 * counts those for the route); NULL before, and for CONNECT.
	 */
	const struct config_route *route;
	const char *path; /* passing: what follows the upstream's base path, into the head */
	size_t path_len;
	char host[CONFIG_PROXY_HOST_MAX + 1]; /* the target's host (lower case, no brackets) */
	unsigned port;			      /* ...and port; "" and 0 for a base-URL request */
	char msg[200];			      /* a formatted description */
};

/* True when h's method is m, exactly (methods are case-sensitive). */
bool proxy_route_method_is(const struct http_head *h, const char *m);

/* TRACE and TRACK (in any case) get 405: an upstream that echoes would hand the token back. */
int proxy_route_method(const struct http_head *h, struct proxy_verdict *v);

/*
 * A request on the forward proxy's listener: the method, then an absolute
 * http:// target whose Host agrees, a route for its host, port and path,
 * no mark of a web page, a safe path and no Expect but 100-continue.
 */
int proxy_route_forward(const struct config_proxy *cp, const struct http_head *h,
			struct proxy_verdict *v);

/*
 * A request on route r's own listener (a base URL): the method, then an
 * origin-form target, a Host that names the listener itself (see
 * proxy_route_host_is_listener), and the checks of every path as above.
 */
int proxy_route_base_url(const struct config_route *r, const struct http_head *h,
			 struct proxy_verdict *v);

/*
 * A request inside an intercepted CONNECT to host:port: the method, then an
 * origin-form target, a Host (when there is one) that agrees with the
 * CONNECT, a route for host:port and the path (443 when the match has no
 * port), and the checks of every path as above.
 */
int proxy_route_intercepted(const struct config_proxy *cp, const char *host, unsigned port,
			    const struct http_head *h, struct proxy_verdict *v);

/*
 * A CONNECT request: only on the forward proxy's listener (on_forward) and
 * when cp->connect allows it, to a host:port target that is routed (connect
 * = intercept: nothing is intercepted that would not be stamped) or in
 * tunnel_hosts (connect = tunnel).  A passing verdict has host and port.
 */
int proxy_route_connect(const struct config_proxy *cp, bool on_forward, const struct http_head *h,
			struct proxy_verdict *v);

/*
 * True when route r writes bearerd's token onto h: not a passthrough route,
 * and the caller sent no Authorization of its own unless r overwrites it.
 */
bool proxy_route_stamps(const struct config_route *r, const struct http_head *h);

/*
 * True when h may be sent once more (after invalid_token, or on a new
 * upstream connection): GET, HEAD, OPTIONS, PUT or DELETE (never TRACE),
 * with no body or a Content-Length one of at most PROXY_ROUTE_RETRY_BODY_MAX,
 * which the proxy then keeps.
 */
bool proxy_route_retryable(const struct http_head *h);

/*
 * Splits an absolute-form target "http://host[:port][/path][?query]" into
 * the lower-case host (into host, host_size bytes: CONFIG_PROXY_HOST_MAX + 1
 * take every host), the port (80 when absent) and the rest (path and query,
 * pointing into target; may be empty).  -EINVAL for another scheme,
 * userinfo, a fragment or a bad authority.
 */
int proxy_route_absolute(const char *target, size_t len, char *host, size_t host_size,
			 unsigned *port, const char **rest, size_t *rest_len);

/*
 * True when path (up to '?', raw or percent-encoded) has a "." or ".."
 * segment, also once ";params" are stripped from it ("..;x", "%2e%2e%3b"), or
 * an encoded '/' or '\\': such paths could be normalised by the upstream into
 * one that a path-prefix route does not cover, so they are refused.
 */
bool proxy_route_path_unsafe(const char *path, size_t len);

/*
 * The route whose match covers host:port and path, the longest path prefix
 * winning (prefixes end at a segment boundary); NULL when none does.  A match
 * without a port covers default_port (80 for http:// targets, 443 for
 * intercepted CONNECT).
 */
const struct config_route *proxy_route_match(const struct config_proxy *cp, const char *host,
					     unsigned port, unsigned default_port, const char *path,
					     size_t path_len);

/* True when a Host field value names host:port (default_port may be omitted). */
bool proxy_route_host_agrees(const char *value, size_t len, const char *host, unsigned port,
			     unsigned default_port);

/*
 * True when field f of head h must not be forwarded: the hop-by-hop fields of
 * RFC 9110 section 7.6.1, those named in Connection, and the framing and
 * routing fields the proxy writes itself (Host, Content-Length,
 * Transfer-Encoding, Expect).
 */
bool proxy_route_hop_by_hop(const struct http_head *h, const struct http_header *f);

/*
 * True when a Host field value names the base-URL listener l itself:
 * "localhost" (when l is on loopback) or l's address as a literal (any
 * literal of its family when l is a wildcard address), with l's port, which
 * may be omitted only when it is 80.  A page that reaches the listener through
 * a name of its own (DNS rebinding) sends that name, so it is refused.
 */
bool proxy_route_host_is_listener(const char *value, size_t len, const struct config_listen *l);

/*
 * True when h bears the marks of a request that a web page made: an Origin
 * field, or Sec-Fetch-Site other than "none" (what a browser sends when the
 * user typed the URL).  Programs send neither.
 */
bool proxy_route_from_web_page(const struct http_head *h);

/* True when a WWW-Authenticate value is a Bearer challenge with error="invalid_token". */
bool proxy_route_invalid_token(const char *value, size_t len);

#endif
