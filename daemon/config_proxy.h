/* Configuration of the proxy: [proxy] and [route "NAME"] (parsed by config_proxy.c). */
#ifndef BEARERD_CONFIG_PROXY_H
#define BEARERD_CONFIG_PROXY_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* What [proxy] does with CONNECT (key connect). */
enum config_connect {
	CONFIG_CONNECT_DENY = 0,  /* 403: the default */
	CONFIG_CONNECT_TUNNEL,	  /* bytes relayed untouched to tunnel_hosts, no token */
	CONFIG_CONNECT_INTERCEPT, /* TLS terminated with a leaf from the local CA, stamped */
};

/* [route "NAME"]: which requests get whose token, and where they go. */
struct config_route {
	char *name;
	int line;
	/*
	 * match = host[:port][/path-prefix]; without a port it matches 80 for
	 * http:// targets and 443 for intercepted CONNECT (match_port is 80)
	 */
	char *match_host; /* lower case; IPv6 without brackets */
	unsigned match_port;
	bool match_port_set;
	char *match_path; /* "" for every path, else starts with '/' and has no trailing '/' */
	char *audience_name;
	const struct config_audience *audience; /* resolved; NULL with passthrough */
	/* upstream = http(s)://host[:port][/base-path] */
	char *upstream;
	bool upstream_tls;
	char *upstream_host; /* as written, without brackets */
	unsigned upstream_port;
	char *upstream_base;	      /* "" or "/x/y" without trailing '/' */
	struct config_listen *listen; /* base-URL listener, or NULL */
	bool overwrite;		      /* replace a caller's own Authorization; default no */
	bool passthrough;	      /* forward without a token */
	char *ca_file;		      /* default [proxy] ca_file, then [bearerd] ca_file */
};

/*
 * Every field of struct config_route, by what config_route_equal and the
 * destructor do with it.  A new field goes into one of these lists, and
 * tests/unit/test-config_proxy.c checks each list member by member.
 */
#define CONFIG_ROUTE_STRINGS(X) /* compared and freed */                                           \
	X(name)                                                                                    \
	X(match_host)                                                                              \
	X(match_path)                                                                              \
	X(audience_name)                                                                           \
	X(upstream)                                                                                \
	X(ca_file)
#define CONFIG_ROUTE_LISTENS(X) /* compared as written, and freed */ X(listen)
#define CONFIG_ROUTE_SCALARS(X) /* compared */                                                     \
	X(match_port)                                                                              \
	X(match_port_set)                                                                          \
	X(overwrite)                                                                               \
	X(passthrough)
#define CONFIG_ROUTE_PARSED_STRINGS(X) /* parsed from upstream (compared there), freed */          \
	X(upstream_host)                                                                           \
	X(upstream_base)
#define CONFIG_ROUTE_UNCOMPARED(X)                                                                 \
	X(line)		 /* where it was written does not change what it does */                   \
	X(audience)	 /* resolved from audience_name; proxy_reconfigure resolves it anew */     \
	X(upstream_tls)	 /* parsed from upstream */                                                \
	X(upstream_port) /* parsed from upstream */

struct config_proxy {
	int line;		      /* of [proxy]; 0 when there is none */
	struct config_listen *listen; /* forward-proxy listener, or NULL */
	enum config_connect connect;
	char **tunnel_hosts; /* "host:port" (port default 443), NULL-terminated, or NULL */
	char *ca_file;
	char *intercept_ca_dir;	  /* connect = intercept: ca.key and ca.pem, created at start */
	unsigned max_connections; /* over all proxy listeners, default 1024 */
	unsigned connect_timeout; /* s, default 10 */
	unsigned idle_timeout;	  /* s without progress on a request or keep-alive, default 60 */
	unsigned header_timeout;  /* s to receive a request head, default 10 */
	bool allow_non_loopback;
	struct config_route *routes;
	size_t n_routes;
};

/* Every field of struct config_proxy, as for struct config_route above. */
#define CONFIG_PROXY_STRINGS(X) /* compared and freed */                                           \
	X(ca_file)                                                                                 \
	X(intercept_ca_dir)
#define CONFIG_PROXY_STRVS(X)	/* compared in order, and freed */ X(tunnel_hosts)
#define CONFIG_PROXY_LISTENS(X) /* compared as written, and freed */ X(listen)
#define CONFIG_PROXY_SCALARS(X) /* compared */                                                     \
	X(connect)                                                                                 \
	X(max_connections)                                                                         \
	X(connect_timeout)                                                                         \
	X(idle_timeout)                                                                            \
	X(header_timeout)
#define CONFIG_PROXY_UNCOMPARED(X)                                                                 \
	X(line)		      /* where it was written does not change what it does */              \
	X(allow_non_loopback) /* only checked at load: the listens it allowed are compared */
/* routes and n_routes: compared route by route with config_route_equal, in order. */

/*
 * True when routes a and b do the same (the lists above say which fields
 * count).  For proxy_reconfigure, which cannot apply a changed route.
 */
bool config_route_equal(const struct config_route *a, const struct config_route *b);

/*
 * True when a and b configure the proxy alike, their routes equal one by one
 * in the same order; NULL is no proxy and equals only NULL.  A running proxy
 * adopts a reloaded configuration only when this holds (proxy_reconfigure).
 */
bool config_proxy_equal(const struct config_proxy *a, const struct config_proxy *b);

/* The longest host config_proxy_hostport accepts (a DNS name's limit). */
#define CONFIG_PROXY_HOST_MAX 253

/*
 * Splits "host[:port]" or "[v6]:port" (len bytes of s) into a malloc'd lower
 * case host without brackets and the port (0 when absent).  -EINVAL when the
 * host has characters a DNS name or address cannot have, or the port is bad.
 */
int config_proxy_hostport(const char *s, size_t len, char **host, unsigned *port);

/*
 * The same into host, size bytes (CONFIG_PROXY_HOST_MAX + 1 take every host),
 * without allocating: for the proxy's decisions on each request.  -EINVAL
 * also when the host does not fit.
 */
int config_proxy_hostport_buf(const char *s, size_t len, char *host, size_t size, unsigned *port);

/*
 * True for the names RFC 6761 reserves for loopback: "localhost" and
 * "*.localhost", in any case, with or without a final dot.  bearerd connects
 * to 127.0.0.1 for them itself (proxy upstreams and tunnels, token requests),
 * so no hosts file, DNS server or search domain is ever asked for them.
 */
bool config_proxy_host_is_localhost(const char *host);

/* True for the localhost names above, 127.0.0.0/8 and ::1 written as literals. */
bool config_proxy_host_is_loopback(const char *host);

#endif
