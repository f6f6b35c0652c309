/*
 * The proxy: stamps Authorization: Bearer onto the outbound calls of programs
 * that know nothing about tokens.  A forward proxy on [proxy] listen
 * (absolute-form requests matched against [route] sections; CONNECT denied or
 * tunnelled to allow-listed hosts) and a reverse proxy on each route's own
 * listen, both answering from the shared token cache.
 */
#ifndef BEARERD_PROXY_H
#define BEARERD_PROXY_H

struct cache;
struct config;
struct event_base;
struct metrics;
struct proxy;
struct source;

/*
 * Binds every proxy listener of cfg; *out = NULL (and 0) when there is no
 * [proxy] and no route with its own listen.  sources[i] belongs to
 * cfg->identities[i]; cache, cfg and sources must outlive the proxy (or be
 * replaced through proxy_reconfigure).
 */
int proxy_new(struct proxy **out, struct event_base *base, struct cache *cache,
	      const struct config *cfg, struct source **sources);
/* Stops accepting (shutdown); requests in flight finish, then their connections close. */
void proxy_stop_accepting(struct proxy *p);
/* Requests in flight (for the drain at shutdown). */
unsigned proxy_pending(const struct proxy *p);
/* Open client connections over all listeners (0 for NULL): what max_connections bounds. */
unsigned proxy_connections(const struct proxy *p);
/* Counts requests per route and status, and upstream latency, into m (NULL: none). */
void proxy_set_metrics(struct proxy *p, struct metrics *m);
/* Sets the open-connections gauge of each proxy listener ("proxy-forward", "proxy-ROUTE"). */
void proxy_collect(const struct proxy *p, struct metrics *m);
/* Closes everything; accepts NULL. */
struct proxy *proxy_free(struct proxy *p);
/*
 * Adopts a reloaded configuration.  Returns -ENOTSUP when the proxy sections
 * changed (listeners, routes, policies): the proxy keeps running on the old
 * configuration, which the caller must then keep alive, and a restart is
 * needed to apply the change.
 */
int proxy_reconfigure(struct proxy *p, const struct config *cfg, struct source **sources);

#endif
