/*
 * The proxy's decisions that need no sockets: which route a request target
 * belongs to, whether its Host header agrees, whether its path is safe to
 * match by prefix, and which header fields are hop-by-hop.  Kept apart so
 * that unit tests can drive every rule (tests/unit/test-proxy_route.c).
 */
#ifndef BEARERD_PROXY_ROUTE_H
#define BEARERD_PROXY_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "config_proxy.h"
#include "http_parse.h"

/*
 * Splits an absolute-form target "http://host[:port][/path][?query]" into a
 * malloc'd lower-case host, the port (80 when absent) and the rest (path and
 * query, pointing into target; may be empty).  -EINVAL for another scheme,
 * userinfo, a fragment or a bad authority; -ENOMEM.
 */
int proxy_route_absolute(const char *target, size_t len, char **host, unsigned *port,
			 const char **rest, size_t *rest_len);

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
