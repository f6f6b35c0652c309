/*
 * Configuration of the proxy: [proxy] (the forward listener, CONNECT policy,
 * bounds) and [route "NAME"] (which requests get which audience's token, and
 * where they go).  Everything is validated here with FILE:LINE errors so that
 * the proxy can trust it: a route never stamps a token onto plain HTTP to a
 * non-loopback host, never listens beyond loopback unless told, and no two
 * routes claim the same match.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_parse.h"
#include "config_proxy.h"

#define PROXY_DEFAULT_MAX_CONNS	      1024
#define PROXY_DEFAULT_CONNECT_TIMEOUT 10
#define PROXY_DEFAULT_IDLE_TIMEOUT    60
#define PROXY_DEFAULT_HEADER_TIMEOUT  10
#define PROXY_MAX_ROUTES	      1024

enum pkey {
	PK_LISTEN,
	PK_CONNECT,
	PK_TUNNEL_HOSTS,
	PK_CA_FILE,
	PK_INTERCEPT_CA_DIR,
	PK_MAX_CONNECTIONS,
	PK_CONNECT_TIMEOUT,
	PK_IDLE_TIMEOUT,
	PK_HEADER_TIMEOUT,
	PK_ALLOW_NON_LOOPBACK,
	PK__N,
};

static const char *const pkey_names[PK__N] = {
    "listen",	       "connect",	  "tunnel_hosts", "ca_file",	    "intercept_ca_dir",
    "max_connections", "connect_timeout", "idle_timeout", "header_timeout", "allow_non_loopback",
};

enum rkey {
	RK_MATCH,
	RK_AUDIENCE,
	RK_UPSTREAM,
	RK_LISTEN,
	RK_OVERWRITE,
	RK_PASSTHROUGH,
	RK_CA_FILE,
	RK__N,
};

static const char *const rkey_names[RK__N] = {
    "match", "audience", "upstream", "listen", "overwrite", "passthrough", "ca_file",
};

/* Parsing state, in p->ext. */
struct pstate {
	struct config_proxy *cp;
	bool in_route; /* else in [proxy] */
	int proxy_lines[PK__N];
	int (*route_lines)[RK__N]; /* per route */
	size_t routes_cap;
};

/* Helpers */

static bool
host_char_ok(const char *h)
{
	return h[0] != '\0' && h[strspn(h, "abcdefghijklmnopqrstuvwxyz0123456789.-_")] == '\0';
}

int
config_proxy_hostport_buf(const char *s, size_t len, char *host, size_t size, unsigned *port)
{
	const char *end = s + len, *hs = s, *he, *ps = NULL;
	unsigned long n = 0;
	bool v6 = false;
	char h[CONFIG_PROXY_HOST_MAX + 1];
	size_t hl;

	if (len == 0)
		return -EINVAL;
	if (s[0] == '[') {
		v6 = true;
		hs = s + 1;
		he = memchr(hs, ']', len - 1);
		if (he == NULL)
			return -EINVAL;
		if (he + 1 < end) {
			if (he[1] != ':')
				return -EINVAL;
			ps = he + 2;
		}
	} else {
		he = memchr(s, ':', len);
		if (he != NULL)
			ps = he + 1;
		else
			he = end;
	}
	if (ps != NULL) {
		if (ps == end || end - ps > 5)
			return -EINVAL;
		for (const char *d = ps; d < end; d++) {
			if (*d < '0' || *d > '9')
				return -EINVAL;
			n = n * 10 + (unsigned long)(*d - '0');
		}
		if (n == 0 || n > 65535)
			return -EINVAL;
	}
	hl = (size_t)(he - hs);
	if (hl == 0 || hl > CONFIG_PROXY_HOST_MAX || hl >= size)
		return -EINVAL;
	for (size_t i = 0; i < hl; i++)
		h[i] = hs[i] >= 'A' && hs[i] <= 'Z' ? (char)(hs[i] | 0x20) : hs[i];
	h[hl] = '\0';
	if (v6 ? h[strspn(h, "0123456789abcdef:.")] != '\0' || strchr(h, ':') == NULL
	       : !host_char_ok(h))
		return -EINVAL;
	memcpy(host, h, hl + 1);
	*port = (unsigned)n;
	return 0;
}

int
config_proxy_hostport(const char *s, size_t len, char **host, unsigned *port)
{
	char h[CONFIG_PROXY_HOST_MAX + 1];
	unsigned pt;
	int r = config_proxy_hostport_buf(s, len, h, sizeof(h), &pt);

	if (r < 0)
		return r;
	*host = strdup(h);
	if (*host == NULL)
		return -ENOMEM;
	*port = pt;
	return 0;
}

bool
config_proxy_host_is_localhost(const char *host)
{
	static const char name[] = "localhost";
	size_t n = strlen(host), k = sizeof(name) - 1;

	if (n > 0 && host[n - 1] == '.')
		n--;
	if (n < k || strncasecmp(host + n - k, name, k) != 0)
		return false;
	return n == k || (n > k + 1 && host[n - k - 1] == '.');
}

bool
config_proxy_host_is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;

	if (config_proxy_host_is_localhost(host))
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return false;
}

static struct pstate *
state(struct parser *p)
{
	return p->ext;
}

static struct config_route *
cur_route(struct parser *p)
{
	struct config_proxy *cp = state(p)->cp;

	return &cp->routes[cp->n_routes - 1];
}

static int
ensure_state(struct parser *p)
{
	struct pstate *st = p->ext;

	if (st != NULL)
		return 0;
	st = calloc(1, sizeof(*st));
	if (st == NULL || (st->cp = calloc(1, sizeof(*st->cp))) == NULL) {
		free(st);
		p->oom = true;
		return -ENOMEM;
	}
	st->cp->max_connections = PROXY_DEFAULT_MAX_CONNS;
	st->cp->connect_timeout = PROXY_DEFAULT_CONNECT_TIMEOUT;
	st->cp->idle_timeout = PROXY_DEFAULT_IDLE_TIMEOUT;
	st->cp->header_timeout = PROXY_DEFAULT_HEADER_TIMEOUT;
	p->ext = st;
	return 0;
}

/* Sections */

static void
proxy_header(struct parser *p, const char *rest)
{
	struct config_proxy *cp = state(p)->cp;

	if (*rest != '\0') {
		perr(p, "section [proxy] takes no name");
		return;
	}
	if (cp->line != 0) {
		perr(p, "duplicate section [proxy] (first on line %d)", cp->line);
		return;
	}
	cp->line = p->line;
	state(p)->in_route = false;
	p->sec = SEC_EXT;
}

static int
grow_routes(struct parser *p)
{
	struct pstate *st = state(p);
	struct config_route *r;
	int(*l)[RK__N];
	size_t cap = st->routes_cap ? st->routes_cap * 2 : 8;

	r = reallocarray(st->cp->routes, cap, sizeof(*r));
	if (r == NULL)
		return -ENOMEM;
	st->cp->routes = r;
	l = reallocarray(st->route_lines, cap, sizeof(*l));
	if (l == NULL)
		return -ENOMEM;
	st->route_lines = l;
	st->routes_cap = cap;
	return 0;
}

static void
route_header(struct parser *p, char *rest)
{
	struct pstate *st = state(p);
	struct config_route *r;
	size_t n = strlen(rest);
	char *name;

	if (n < 2 || rest[0] != '"' || rest[n - 1] != '"' ||
	    strchr(rest + 1, '"') != rest + n - 1) {
		perr(p, "section name must be quoted: [route \"NAME\"]");
		return;
	}
	rest[n - 1] = '\0';
	name = rest + 1;
	if (!name_valid(name)) {
		perr(p, "bad route name '%.64s': use letters, digits, '.', '_' and '-'", name);
		return;
	}
	for (size_t i = 0; i < st->cp->n_routes; i++) {
		if (strcmp(st->cp->routes[i].name, name) == 0) {
			perr(p, "duplicate section [route \"%s\"] (first on line %d)", name,
			     st->cp->routes[i].line);
			return;
		}
	}
	if (st->cp->n_routes == PROXY_MAX_ROUTES) {
		perr(p, "too many routes (at most %d)", PROXY_MAX_ROUTES);
		return;
	}
	if (st->cp->n_routes == st->routes_cap && grow_routes(p) < 0) {
		p->oom = true;
		return;
	}
	r = &st->cp->routes[st->cp->n_routes];
	memset(r, 0, sizeof(*r));
	memset(st->route_lines[st->cp->n_routes], 0, sizeof(st->route_lines[0]));
	r->name = strdup(name);
	if (r->name == NULL) {
		p->oom = true;
		return;
	}
	r->line = p->line;
	st->cp->n_routes++;
	st->in_route = true;
	p->sec = SEC_EXT;
}

bool
config_proxy_section(struct parser *p, const char *kind, char *rest)
{
	if (strcmp(kind, "proxy") != 0 && strcmp(kind, "route") != 0)
		return false;
	p->sec = SEC_SKIP;
	if (ensure_state(p) < 0)
		return true;
	if (strcmp(kind, "proxy") == 0)
		proxy_header(p, rest);
	else
		route_header(p, rest);
	return true;
}

/* Keys */

static int
parse_seconds(struct parser *p, const char *key, const char *v, unsigned *out)
{
	int64_t n;

	if (parse_int(p, key, v, 1, 86400, &n) < 0)
		return -EINVAL;
	*out = (unsigned)n;
	return 0;
}

static void
parse_connect(struct parser *p, const char *key, const char *v, struct config_proxy *cp)
{
	if (strcmp(v, "deny") == 0)
		cp->connect = CONFIG_CONNECT_DENY;
	else if (strcmp(v, "tunnel") == 0)
		cp->connect = CONFIG_CONNECT_TUNNEL;
	else if (strcmp(v, "intercept") == 0)
		cp->connect = CONFIG_CONNECT_INTERCEPT;
	else
		perr(p, "%s: expected deny, tunnel or intercept, got '%.64s'", key, v);
}

/* "host[:port]" words, stored normalised as "host:port" (443 by default). */
static void
parse_tunnel_hosts(struct parser *p, const char *key, const char *v, struct config_proxy *cp)
{
	char **words = NULL;

	if (split_words(v, &words) < 0) {
		p->oom = true;
		return;
	}
	if (words[0] == NULL)
		perr(p, "%s: empty list", key);
	for (size_t i = 0; words[i] != NULL; i++) {
		char *host = NULL, *norm = NULL;
		unsigned port;
		int r = config_proxy_hostport(words[i], strlen(words[i]), &host, &port);

		if (r == -ENOMEM) {
			p->oom = true;
			break;
		}
		if (r < 0) {
			perr(p, "%s: expected host[:port], got '%.64s'", key, words[i]);
			continue;
		}
		if (asprintf(&norm, "%s:%u", host, port ? port : 443) < 0) {
			p->oom = true;
			free(host);
			break;
		}
		free(host);
		free(words[i]);
		words[i] = norm;
	}
	strv_free(cp->tunnel_hosts);
	cp->tunnel_hosts = words;
}

static void
proxy_key(struct parser *p, int k, const char *v)
{
	struct config_proxy *cp = state(p)->cp;
	const char *key = pkey_names[k];
	int64_t n;

	switch ((enum pkey)k) {
	case PK_LISTEN:
		parse_listen(p, key, v, &cp->listen);
		break;
	case PK_CONNECT:
		parse_connect(p, key, v, cp);
		break;
	case PK_TUNNEL_HOSTS:
		parse_tunnel_hosts(p, key, v, cp);
		break;
	case PK_CA_FILE:
		parse_string(p, key, v, &cp->ca_file);
		break;
	case PK_INTERCEPT_CA_DIR:
		parse_string(p, key, v, &cp->intercept_ca_dir);
		break;
	case PK_MAX_CONNECTIONS:
		if (parse_int(p, key, v, 1, 1000000, &n) == 0)
			cp->max_connections = (unsigned)n;
		break;
	case PK_CONNECT_TIMEOUT:
		parse_seconds(p, key, v, &cp->connect_timeout);
		break;
	case PK_IDLE_TIMEOUT:
		parse_seconds(p, key, v, &cp->idle_timeout);
		break;
	case PK_HEADER_TIMEOUT:
		parse_seconds(p, key, v, &cp->header_timeout);
		break;
	case PK_ALLOW_NON_LOOPBACK:
		parse_bool(p, key, v, &cp->allow_non_loopback);
		break;
	case PK__N:
		break;
	}
}

/* match = host[:port][/path-prefix] */
static void
parse_match(struct parser *p, const char *key, const char *v, struct config_route *r)
{
	const char *slash = strchr(v, '/');
	size_t hlen = slash != NULL ? (size_t)(slash - v) : strlen(v);
	size_t plen;
	int e;

	e = config_proxy_hostport(v, hlen, &r->match_host, &r->match_port);
	if (e == -ENOMEM) {
		p->oom = true;
		return;
	}
	if (e < 0) {
		perr(p, "%s: expected host[:port][/path-prefix], got '%.64s'", key, v);
		return;
	}
	r->match_port_set = r->match_port != 0;
	if (r->match_port == 0)
		r->match_port = 80;
	plen = slash != NULL ? strlen(slash) : 0;
	while (plen > 0 && slash[plen - 1] == '/')
		plen--;
	if (slash != NULL && strcspn(slash, "?# \t") != strlen(slash)) {
		perr(p, "%s: the path prefix must not contain '?', '#' or blanks", key);
		return;
	}
	r->match_path = strndup(plen > 0 ? slash : "", plen);
	if (r->match_path == NULL)
		p->oom = true;
}

/* upstream = http(s)://host[:port][/base-path] */
static void
parse_upstream(struct parser *p, const char *key, const char *v, struct config_route *r)
{
	const char *rest, *slash;
	size_t blen;
	int e;

	if (strncasecmp(v, "https://", 8) == 0) {
		r->upstream_tls = true;
		rest = v + 8;
	} else if (strncasecmp(v, "http://", 7) == 0) {
		rest = v + 7;
	} else {
		perr(p, "%s: expected http(s)://host[:port][/base-path], got '%.64s'", key, v);
		return;
	}
	slash = strchr(rest, '/');
	e = config_proxy_hostport(rest, slash != NULL ? (size_t)(slash - rest) : strlen(rest),
				  &r->upstream_host, &r->upstream_port);
	if (e == -ENOMEM) {
		p->oom = true;
		return;
	}
	if (e < 0 || strpbrk(v, "?# \t@") != NULL) {
		perr(p, "%s: expected http(s)://host[:port][/base-path], got '%.64s'", key, v);
		return;
	}
	if (r->upstream_port == 0)
		r->upstream_port = r->upstream_tls ? 443 : 80;
	blen = slash != NULL ? strlen(slash) : 0;
	while (blen > 0 && slash[blen - 1] == '/')
		blen--;
	r->upstream_base = strndup(blen > 0 ? slash : "", blen);
	if (r->upstream_base == NULL || parse_string(p, key, v, &r->upstream) < 0)
		p->oom = r->upstream_base == NULL;
}

static void
route_key(struct parser *p, int k, const char *v)
{
	struct config_route *r = cur_route(p);
	const char *key = rkey_names[k];

	switch ((enum rkey)k) {
	case RK_MATCH:
		parse_match(p, key, v, r);
		break;
	case RK_AUDIENCE:
		parse_word(p, key, v, &r->audience_name);
		break;
	case RK_UPSTREAM:
		parse_upstream(p, key, v, r);
		break;
	case RK_LISTEN:
		parse_listen(p, key, v, &r->listen);
		break;
	case RK_OVERWRITE:
		parse_bool(p, key, v, &r->overwrite);
		break;
	case RK_PASSTHROUGH:
		parse_bool(p, key, v, &r->passthrough);
		break;
	case RK_CA_FILE:
		parse_string(p, key, v, &r->ca_file);
		break;
	case RK__N:
		break;
	}
}

void
config_proxy_key(struct parser *p, const char *key, const char *v)
{
	struct pstate *st = state(p);
	int *lines;
	int k;

	if (st->in_route) {
		k = key_index(rkey_names, RK__N, key);
		lines = st->route_lines[st->cp->n_routes - 1];
	} else {
		k = key_index(pkey_names, PK__N, key);
		lines = st->proxy_lines;
	}
	if (k < 0) {
		if (st->in_route)
			perr(p, "unknown key '%.64s' in [route \"%s\"]", key, cur_route(p)->name);
		else
			perr(p, "unknown key '%.64s' in [proxy]", key);
		return;
	}
	if (lines[k] != 0) {
		perr(p, "duplicate key '%s' (first set on line %d)", key, lines[k]);
		return;
	}
	lines[k] = p->line;
	if (st->in_route)
		route_key(p, k, v);
	else
		proxy_key(p, k, v);
}

/* Validation */

static void
check_listen(struct parser *p, int line, const char *where, const struct config_listen *l,
	     bool allow)
{
	if (l != NULL && !allow && !config_addr_is_loopback(&l->addr))
		perr_at(p, line,
			"%s: %s is not a loopback address (set allow_non_loopback = yes in "
			"[proxy] to listen there)",
			where, l->text);
}

static bool
same_addr(const struct config_listen *a, const struct config_listen *b)
{
	return a != NULL && b != NULL && a->addr_len == b->addr_len &&
	       memcmp(&a->addr, &b->addr, a->addr_len) == 0;
}

/* A match without a port covers 80 (http:// targets) and 443 (intercepted CONNECT). */
static bool
ports_overlap(const struct config_route *a, const struct config_route *b)
{
	if (a->match_port_set && b->match_port_set)
		return a->match_port == b->match_port;
	if (!a->match_port_set && !b->match_port_set)
		return true;
	if (!a->match_port_set)
		a = b;
	return a->match_port == 80 || a->match_port == 443;
}

static void
route_finish(struct parser *p, size_t i)
{
	struct pstate *st = state(p);
	struct config_proxy *cp = st->cp;
	struct config_route *r = &cp->routes[i];
	int *lines = st->route_lines[i];

	if (lines[RK_UPSTREAM] == 0)
		perr_at(p, r->line, "[route \"%s\"]: missing key 'upstream'", r->name);
	if (lines[RK_MATCH] == 0 && r->listen == NULL && lines[RK_LISTEN] == 0)
		perr_at(p, r->line, "[route \"%s\"]: needs 'match' (forward proxy) or 'listen'",
			r->name);
	if (lines[RK_MATCH] != 0 && cp->listen == NULL && st->proxy_lines[PK_LISTEN] == 0)
		perr_at(p, lines[RK_MATCH],
			"match: route \"%s\" matches forward-proxy requests but [proxy] has no "
			"listen",
			r->name);
	if (r->passthrough && lines[RK_AUDIENCE] != 0)
		perr_at(p, lines[RK_AUDIENCE], "audience: a passthrough route sends no token");
	else if (!r->passthrough && lines[RK_AUDIENCE] == 0)
		perr_at(p, r->line,
			"[route \"%s\"]: missing key 'audience' (or passthrough = yes to forward "
			"without a token)",
			r->name);
	if (r->audience_name != NULL) {
		r->audience = config_audience_find(p->c, r->audience_name);
		if (r->audience == NULL)
			perr_at(p, lines[RK_AUDIENCE], "audience: no [audience \"%.128s\"] section",
				r->audience_name);
		else if (r->audience->allow_uids != NULL || r->audience->allow_gids != NULL)
			perr_at(p, lines[RK_AUDIENCE],
				"audience: \"%s\" restricts its callers (allow_uids, allow_gids), "
				"which a TCP proxy listener cannot identify",
				r->audience_name);
	}
	if (r->upstream_host != NULL && !r->upstream_tls && !r->passthrough &&
	    !config_proxy_host_is_loopback(r->upstream_host))
		perr_at(p, lines[RK_UPSTREAM],
			"upstream: a token is never sent over plain HTTP to a non-loopback host; "
			"use https://");
	if (r->ca_file != NULL && r->upstream_host != NULL && !r->upstream_tls)
		perr_at(p, lines[RK_CA_FILE], "ca_file: the upstream is not https");
	check_listen(p, lines[RK_LISTEN], "listen", r->listen, cp->allow_non_loopback);
	if (same_addr(r->listen, cp->listen))
		perr_at(p, lines[RK_LISTEN], "listen: %s is [proxy] listen too", r->listen->text);
	for (size_t j = 0; j < i; j++) {
		const struct config_route *o = &cp->routes[j];

		if (r->match_host != NULL && o->match_host != NULL &&
		    strcmp(r->match_host, o->match_host) == 0 && ports_overlap(r, o) &&
		    strcmp(r->match_path, o->match_path) == 0)
			perr_at(p, lines[RK_MATCH], "match: same as route \"%s\" (line %d)",
				o->name, st->route_lines[j][RK_MATCH]);
		if (same_addr(r->listen, o->listen))
			perr_at(p, lines[RK_LISTEN], "listen: %s is route \"%s\"'s listen too",
				r->listen->text, o->name);
	}
}

int
config_proxy_finish(struct parser *p)
{
	struct pstate *st = state(p);
	struct config_proxy *cp;

	if (st == NULL)
		return 0;
	cp = st->cp;
	if (cp->line != 0 && cp->listen == NULL && st->proxy_lines[PK_LISTEN] == 0)
		perr_at(p, cp->line, "[proxy]: missing key 'listen'");
	check_listen(p, st->proxy_lines[PK_LISTEN], "listen", cp->listen, cp->allow_non_loopback);
	if (st->proxy_lines[PK_TUNNEL_HOSTS] != 0 && cp->connect != CONFIG_CONNECT_TUNNEL)
		perr_at(p, st->proxy_lines[PK_TUNNEL_HOSTS],
			"tunnel_hosts: only used with connect = tunnel");
	if (cp->connect == CONFIG_CONNECT_TUNNEL && cp->tunnel_hosts == NULL)
		perr_at(p, st->proxy_lines[PK_CONNECT],
			"connect: tunnel needs tunnel_hosts (the hosts CONNECT may reach)");
	if (st->proxy_lines[PK_INTERCEPT_CA_DIR] != 0 && cp->connect != CONFIG_CONNECT_INTERCEPT)
		perr_at(p, st->proxy_lines[PK_INTERCEPT_CA_DIR],
			"intercept_ca_dir: only used with connect = intercept");
	if (cp->connect == CONFIG_CONNECT_INTERCEPT && st->proxy_lines[PK_INTERCEPT_CA_DIR] == 0)
		perr_at(p, st->proxy_lines[PK_CONNECT],
			"connect: intercept needs intercept_ca_dir (where the local CA is kept)");
	if (cp->intercept_ca_dir != NULL && cp->intercept_ca_dir[0] != '/')
		perr_at(p, st->proxy_lines[PK_INTERCEPT_CA_DIR],
			"intercept_ca_dir: must be an absolute path");
	for (size_t i = 0; i < cp->n_routes; i++)
		route_finish(p, i);
	if (cp->n_routes == 0 && cp->line != 0 && cp->connect != CONFIG_CONNECT_TUNNEL)
		perr_at(p, cp->line, "[proxy]: no [route \"NAME\"] section: nothing to forward");
	p->c->proxy = cp;
	st->cp = NULL;
	return 0;
}

void
config_proxy_parse_free(struct parser *p)
{
	struct pstate *st = p->ext;

	if (st == NULL)
		return;
	config_proxy_free(st->cp);
	free(st->route_lines);
	free(st);
	p->ext = NULL;
}

/* Equality and freeing, over the field lists in config_proxy.h */

#define FREE_STR(f)    free(x->f);
#define FREE_STRV(f)   strv_free(x->f);
#define FREE_LISTEN(f) config_listen_free(x->f);

static void
route_free(struct config_route *x)
{
	CONFIG_ROUTE_STRINGS(FREE_STR)
	CONFIG_ROUTE_PARSED_STRINGS(FREE_STR)
	CONFIG_ROUTE_LISTENS(FREE_LISTEN)
}

void
config_proxy_free(struct config_proxy *x)
{
	if (x == NULL)
		return;
	for (size_t i = 0; i < x->n_routes; i++)
		route_free(&x->routes[i]);
	free(x->routes);
	CONFIG_PROXY_STRINGS(FREE_STR)
	CONFIG_PROXY_STRVS(FREE_STRV)
	CONFIG_PROXY_LISTENS(FREE_LISTEN)
	free(x);
}

#undef FREE_STR
#undef FREE_STRV
#undef FREE_LISTEN

/* As written: a listener moved to another spelling of the same address is a change too. */
static bool
listen_equal(const struct config_listen *a, const struct config_listen *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a->text, b->text) == 0;
}

#define EQ_STR(f)                                                                                  \
	if (!str_eq_opt(a->f, b->f))                                                               \
		return false;
#define EQ_STRV(f)                                                                                 \
	if (!strv_equal(a->f, b->f))                                                               \
		return false;
#define EQ_LISTEN(f)                                                                               \
	if (!listen_equal(a->f, b->f))                                                             \
		return false;
#define EQ_SCALAR(f)                                                                               \
	if (a->f != b->f)                                                                          \
		return false;

bool
config_route_equal(const struct config_route *a, const struct config_route *b)
{
	CONFIG_ROUTE_STRINGS(EQ_STR)
	CONFIG_ROUTE_LISTENS(EQ_LISTEN)
	CONFIG_ROUTE_SCALARS(EQ_SCALAR)
	return true;
}

bool
config_proxy_equal(const struct config_proxy *a, const struct config_proxy *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	CONFIG_PROXY_STRINGS(EQ_STR)
	CONFIG_PROXY_STRVS(EQ_STRV)
	CONFIG_PROXY_LISTENS(EQ_LISTEN)
	CONFIG_PROXY_SCALARS(EQ_SCALAR)
	if (a->n_routes != b->n_routes)
		return false;
	for (size_t i = 0; i < a->n_routes; i++)
		if (!config_route_equal(&a->routes[i], &b->routes[i]))
			return false;
	return true;
}

#undef EQ_STR
#undef EQ_STRV
#undef EQ_LISTEN
#undef EQ_SCALAR
