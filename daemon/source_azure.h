/*
 * What the azure-imds and azure-appservice sources share: one managed-identity
 * upstream client per identity (GET {endpoint}?api-version=..&resource=..),
 * with the per-identity request limits IMDS enforces, the in-fetch retry of
 * 410 "IMDS is updating", and the mapping of answers to token_results.
 */
#ifndef BEARERD_SOURCE_AZURE_H
#define BEARERD_SOURCE_AZURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "source.h"

struct event_base;
struct fetch;
struct azure_mi;

/* IMDS managed-identity limits: 5 concurrent and 20 requests per second per VM. */
#define AZURE_MAX_CONCURRENT 5
#define AZURE_MAX_PER_WINDOW 20
/*
 * The rate window, a little over one second: IMDS counts arrivals, and
 * scheduling jitter on the way can bunch requests started exactly 1 s apart.
 */
#define AZURE_WINDOW_MS	     1100
#define AZURE_LIMITER_MAX    64	   /* largest max_per_window the ring holds */
#define AZURE_GONE_BUDGET_MS 70000 /* 410: keep trying at least this long */
#define AZURE_MAX_RESOURCE   2048  /* longest resource or selector put in a URL */
/*
 * What SOURCE_PRIO_LOW requests (new dynamic resources) leave to the others:
 * one of the concurrent slots and two starts of every window, so that a
 * configured audience starts at once even under a flood.
 */
#define AZURE_RESERVED_CONCURRENT 1
#define AZURE_RESERVED_PER_WINDOW 2

/*
 * A limiter: at most max_concurrent requests in flight and max_per_window
 * starts in any window_ms (a sliding log of start times, so the bound holds
 * for every window, not just on average as a token bucket's would).  Pure
 * arithmetic on the caller's clock, for unit tests.
 */
struct azure_limiter {
	unsigned max_concurrent;
	unsigned max_per_window;
	int64_t window_ms;
	unsigned in_flight;
	int64_t starts[AZURE_LIMITER_MAX]; /* ring of the last start times */
	unsigned oldest;		   /* index of the oldest recorded start */
	unsigned count;			   /* recorded starts, <= max_per_window */
	int64_t paused_until_ms;	   /* after a 429 with Retry-After */
};

/* max_per_window is clamped to AZURE_LIMITER_MAX; zero limits mean 1. */
void azure_limiter_init(struct azure_limiter *l, unsigned max_concurrent, unsigned max_per_window,
			int64_t window_ms);
/*
 * Asks to start one request at now_ms.  Returns 0 when it may start (and
 * counts it as started and in flight), the milliseconds to wait before asking
 * again, or -1 when every concurrent slot is taken (ask after a release).
 */
int64_t azure_limiter_acquire(struct azure_limiter *l, int64_t now_ms);
/*
 * The same, leaving reserve_concurrent slots and reserve_window starts of
 * the window to others (each limit stays at least 1).
 */
int64_t azure_limiter_acquire_reserve(struct azure_limiter *l, int64_t now_ms,
				      unsigned reserve_concurrent, unsigned reserve_window);
/* A request that acquire let start has finished. */
void azure_limiter_release(struct azure_limiter *l);
/* No start before until_ms: the upstream throttled the whole identity. */
void azure_limiter_pause(struct azure_limiter *l, int64_t until_ms);

/*
 * The 410 schedule: the delay before retry number attempt (0-based), given
 * the time since the first try and the answer's Retry-After (-1 if none);
 * -1 once at least AZURE_GONE_BUDGET_MS have passed.  1 s doubling to 10 s,
 * so a short update costs seconds and a long one is tried for over 70 s.
 */
int64_t azure_gone_delay(int attempt, int64_t elapsed_ms, int64_t retry_after_s);

/*
 * The field bearerd puts on its own managed-identity requests (and on what the
 * IMDS listener relays), "X-Bearerd-Loop: <32 hex digits>", random per process:
 * a compat listener that receives it is being asked by this very daemon, whose
 * upstream leads back to itself (an endpoint aimed at a listener, or an IMDS
 * redirect that does not exempt bearerd), and refuses at once instead of
 * waiting for its own fetch.  NULL when no random bytes could be had.
 */
#define AZURE_LOOP_FIELD "X-Bearerd-Loop"
const char *azure_mi_loop_line(void);
/* True when value (of an AZURE_LOOP_FIELD field) is this process's own. */
bool azure_mi_loop_is_ours(const char *value, size_t len);

struct fetch_response;
struct token_result;

/*
 * Turns one upstream answer into r (initialised): the token, or the
 * upstream's error with the hints the cache's backoff uses: http_status,
 * retry_after (Retry-After; at least 1 s for 429 and 5xx, 60 s for the 4xx
 * that retrying cannot fix) and permanent.
 */
void azure_result_from_response(const struct fetch_response *resp, struct token_result *r);

/*
 * "&name=<encoded value>" for the one of n selectors whose value is not NULL,
 * or "" when none is; -EINVAL when several are, or a value is empty or too long.
 */
int azure_selector(char **out, const char *const *names, const char *const *values, size_t n);

/*
 * Produces the secret header line of one request ("X-IDENTITY-HEADER: ...")
 * into *line (freed by the caller after wiping), or fills msg and returns a
 * negative errno.  The request keeps the line until its answer, whose error
 * message is withheld when it holds the value after the ':'.
 */
typedef int azure_secret_fn(void *ctx, char **line, char *msg, size_t msg_size);

struct azure_mi_params {
	const char *name;	    /* identity name, for logs */
	const char *endpoint;	    /* token URL */
	const char *api_version;    /* "2018-02-01" (IMDS), "2019-08-01" (App Service) */
	const char *selector;	    /* from azure_selector */
	const char *const *headers; /* fixed request headers, NULL-terminated */
	const char *ca_file;	    /* or NULL */
	long timeout_ms;	    /* one upstream request */
	bool retry_gone;	    /* retry 410 inside the fetch (IMDS) */
	unsigned max_concurrent;
	unsigned max_per_window;
	azure_secret_fn *secret; /* or NULL */
	void *secret_ctx;
};

/* Copies everything in p. */
int azure_mi_new(struct azure_mi **out, struct event_base *base, struct fetch *fetch,
		 const struct azure_mi_params *p);
/* Queued and waiting requests are freed; ones in flight finish later, silently. */
struct azure_mi *azure_mi_free(struct azure_mi *m);
/* Like source_fetch: queued when the limits are reached, never dropped. */
int azure_mi_fetch(struct azure_mi *m, const char *resource, source_done_fn *done, void *arg);
/*
 * Like source_fetch_prio: SOURCE_PRIO_HIGH requests are queued ahead of
 * SOURCE_PRIO_LOW ones, which leave the reserved slots free and fail with
 * -ENOBUFS when SOURCE_MAX_QUEUED_LOW of them wait already.
 */
int azure_mi_fetch_prio(struct azure_mi *m, const char *resource, enum source_priority prio,
			source_done_fn *done, void *arg);
/* Like source_cancel: withdraws a queued request, or one sleeping between 410 retries. */
int azure_mi_cancel(struct azure_mi *m, source_done_fn *done, void *arg);

#endif
