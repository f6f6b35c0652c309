/*
 * Metrics: a registry of counters, gauges and histograms with up to two
 * labels, rendered on demand in the Prometheus text exposition format 0.0.4
 * (GET /metrics).  Observing an event is an increment of a counter that was
 * looked up (and on first use allocated) by its labels; hot paths look their
 * counters up once and keep the pointer.  The number of series is bounded:
 * past the bound, new label values are folded into the value "other".
 */
#ifndef BEARERD_METRICS_H
#define BEARERD_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct metrics;

enum metrics_family {
	METRICS_TOKEN_REQUESTS,		 /* counter {audience,result} */
	METRICS_UPSTREAM_REQUESTS,	 /* counter {identity,status} */
	METRICS_UPSTREAM_DURATION,	 /* histogram {identity}, seconds */
	METRICS_TOKEN_EXPIRY,		 /* gauge {audience}, seconds left, -1 without a token */
	METRICS_REFRESHES,		 /* counter {identity,reason} */
	METRICS_REFRESH_FAILURES,	 /* counter {identity,reason} */
	METRICS_CONNECTIONS_OPEN,	 /* gauge {listener} */
	METRICS_PROXY_REQUESTS,		 /* counter {route,status} */
	METRICS_PROXY_UPSTREAM_DURATION, /* histogram {route}, seconds */
	METRICS_CACHE_ENTRIES,		 /* gauge */
	METRICS_BUILD_INFO,		 /* gauge {version} = 1 */
	METRICS_RELOADS,		 /* counter {result} */
	METRICS_READY,			 /* gauge {mode}: latched / strict readiness, 1 or 0 */
	METRICS_N_FAMILIES,
};

/* Label value standing for every value past the series bound. */
#define METRICS_OTHER "other"

/* max_series bounds the series of all families together (0: a default of 65536). */
int metrics_new(struct metrics **out, size_t max_series);
struct metrics *metrics_free(struct metrics *m);

/*
 * The counter of a counter family for the given label values (NULL for a
 * family with fewer labels).  Never NULL: when out of memory it is a scratch
 * counter that is not rendered.  Valid until metrics_free, so callers may
 * keep it and increment it without a look-up.  m may be NULL (scratch).
 */
uint64_t *metrics_counter(struct metrics *m, enum metrics_family f, const char *l1, const char *l2);
/* Looks up and increments; for paths that are not hot. */
void metrics_inc(struct metrics *m, enum metrics_family f, const char *l1, const char *l2);
/* The result label of METRICS_TOKEN_REQUESTS for an answer's HTTP status (API and compat). */
const char *metrics_token_result(int status);

/* Records one observation (seconds) in a histogram family. */
void metrics_observe(struct metrics *m, enum metrics_family f, const char *l1, double seconds);

/*
 * Gauges hold what was set since the last metrics_gauges_clear: collectors
 * clear them and set the current values just before rendering, so a gauge
 * for an audience that went away disappears.
 */
void metrics_gauges_clear(struct metrics *m);
void metrics_gauge_set(struct metrics *m, enum metrics_family f, const char *l1, double value);

/* Appends every family with at least one series, HELP and TYPE lines included. */
int metrics_render(struct metrics *m, struct evbuffer *out);

/* Series in use (for tests and the bound). */
size_t metrics_series_count(const struct metrics *m);

/*
 * For the proxy: one request answered on a route, with the status sent to
 * the client (0 when none was: counted as "error") and the time the upstream
 * took in seconds (< 0: no upstream request was made, nothing observed).
 */
void metrics_proxy_request(struct metrics *m, const char *route, int status, double seconds);

#endif
