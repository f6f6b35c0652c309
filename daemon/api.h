/* Local API: the HTTP/1.1 routes served on the Unix socket (tokens, status, health). */
#ifndef BEARERD_API_H
#define BEARERD_API_H

#include <stdbool.h>

struct api;
struct cache;
struct compat;
struct config;
struct evbuffer;
struct http_request;
struct metrics;
struct source;

/*
 * Binds the configured audiences to cache entries (and starts their
 * prefetch).  sources[i] belongs to cfg->identities[i].  cfg and sources
 * must outlive the api.
 */
int api_new(struct api **out, struct cache *cache, const struct config *cfg,
	    struct source **sources);
struct api *api_free(struct api *a);

/*
 * Switches to a new configuration (reload): audiences are bound to cache
 * entries anew (found when unchanged), entries of removed audiences whose
 * source is still in use are dropped, new prefetch audiences start.  The
 * caller drops the entries of identities it replaced before calling.
 * Requests already waiting keep pointers into the old configuration: it
 * must outlive them (wait_timeout).
 */
int api_reconfigure(struct api *a, const struct config *cfg, struct source **sources);

/* Sets extra gauges (open connections) just before /metrics is rendered. */
typedef void api_collect_fn(void *arg, struct metrics *m);

/* Counts token requests in m and serves GET /metrics from it (NULL: 404). */
void api_set_metrics(struct api *a, struct metrics *m, api_collect_fn *collect, void *arg);

/* Gives /v1/compat/env its answer (NULL: 404); set after compat_new, cleared before compat_free. */
void api_set_compat(struct api *a, struct compat *compat);

/* The http_handler_fn of the Unix-socket server. */
void api_handle(struct http_request *req, void *arg);
/* The handler of [bearerd] metrics_listen: GET /metrics and nothing else (never a token). */
void api_handle_metrics(struct http_request *req, void *arg);

/* Frees the per-token rendering the api keeps in cache entries (cache_ops.user_free). */
void api_user_free(void *user);

/*
 * Readiness, with the reasons appended when not ready.  Latched (strict
 * false): true once every prefetch audience has held a valid token, and from
 * then on for as long as the daemon runs, reloads included.  Strict: true
 * only while every prefetch audience holds a valid token now.
 */
bool api_ready(struct api *a, bool strict, struct evbuffer *reasons);

#endif
