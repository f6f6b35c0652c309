/*
 * The token cache: one entry per (identity, resource), single flight, proactive
 * refresh, backoff, idle eviction and an LRU bound.  Time, randomness and the
 * upstream call come through cache_ops so tests can drive hours in milliseconds.
 *
 * Time: a token's validity runs on the boot clock (CLOCK_BOOTTIME, which goes
 * on while the host is suspended or the VM paused), and at every hand-out its
 * wall-clock expiry must also be more than min_validity away: a token expired
 * by either clock is never served.
 */
#ifndef BEARERD_CACHE_H
#define BEARERD_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "source.h"

struct cache;
struct cache_entry;
struct cache_waiter;

struct cache_params {
	int64_t min_validity;	 /* s: never hand out a token with less left */
	int64_t refresh_margin;	 /* s: refresh at the latest this long before expiry */
	int64_t idle_timeout;	 /* s: drop entries nobody asked for this long */
	int64_t wait_timeout_ms; /* how long a request waits for a fetch */
	size_t max_entries;	 /* bound on dynamic entries */
	unsigned dynamic_rate;	 /* new dynamic entries per second per caller; 0: no limit */
};

/* What became of one fetch, for metrics (cache_ops.fetched). */
struct cache_fetch_info {
	const char *identity;
	const char *resource;
	const char
	    *reason; /* why it started: initial, prefetch, scheduled, expired, forced, retry */
	const char *failure; /* NULL on success, else timeout, throttled, upstream_error,
				invalid_response, stale_token, transport */
	long http_status;    /* 0 when no answer arrived */
};

struct cache_ops {
	/*
	 * The boot clock in milliseconds (CLOCK_BOOTTIME): it counts time spent
	 * suspended, so a lifetime measured on it ends when the token's does.
	 * Every deadline the cache keeps, and the one it passes to arm, is on it.
	 */
	int64_t (*boot_ms)(void *ctx);
	/* The wall clock (CLOCK_REALTIME) in milliseconds since the epoch. */
	int64_t (*wall_ms)(void *ctx);
	uint32_t (*random)(void *ctx);
	/*
	 * Starts an upstream fetch; done is called later, exactly once.  prio
	 * orders it in the source's queue; -ENOBUFS when that queue has no room
	 * for a SOURCE_PRIO_LOW fetch (nothing started, done never called).
	 */
	int (*fetch)(void *ctx, struct source *src, const char *resource, enum source_priority prio,
		     source_done_fn *done, void *arg);
	/*
	 * Optional: withdraws a fetch that has not left yet (0: done will not be
	 * called), or says it cannot (-EBUSY: done will be).
	 */
	int (*cancel)(void *ctx, struct source *src, source_done_fn *done, void *arg);
	/* Asks for cache_run at deadline_ms on the boot clock (INT64_MAX: nothing due). */
	void (*arm)(void *ctx, int64_t deadline_ms);
	/* Frees what was stored with cache_entry_set_user (may be NULL). */
	void (*user_free)(void *user);
	/* Optional: called once per finished fetch (also for a dropped entry's). */
	void (*fetched)(void *ctx, const struct cache_fetch_info *info);
};

enum cache_state {
	CACHE_EMPTY = 0,
	CACHE_FETCHING,
	CACHE_VALID,
	CACHE_REFRESHING,
	CACHE_FAILED,
};

struct cache_token {
	const char *value; /* NUL-terminated */
	size_t len;
	int64_t expires_boot_ms; /* expiry on the boot clock (cache_ops.boot_ms) */
	int64_t expires_wall_ms; /* expiry on the wall clock: receipt + expires_in, in epoch ms */
	int64_t expires_on;	 /* expires_wall_ms in epoch seconds, rounded down */
	uint64_t generation;	 /* changes whenever the token or its expires_on changes */
};

struct cache_answer {
	int status;			 /* 200, 400 (min_validity no token meets), 503 or 504 */
	const struct cache_token *token; /* with 200; valid until the callback returns */
	int64_t expires_in;		 /* s, with 200 */
	int64_t retry_after;		 /* s, with 503 and 504 */
	const char *error;		 /* with 400/503/504: short code */
	const char *description;	 /* with 400/503/504 */
};

typedef void cache_answer_fn(void *arg, const struct cache_answer *a);

struct cache_status {
	const char *identity;
	const char *resource;
	enum cache_state state;
	bool pinned;
	int64_t expires_in;	/* s, -1 without a token */
	int64_t refresh_in;	/* s until the next fetch, -1 when none is planned */
	long last_status;	/* upstream HTTP status of the last failure, 0 if none */
	const char *last_error; /* "" when the last fetch succeeded */
	uint64_t fetches, failures;
};

int cache_new(struct cache **out, const struct cache_params *p, const struct cache_ops *ops,
	      void *ctx);
/* Frees every entry (tokens wiped); waiters are not called. */
struct cache *cache_free(struct cache *c);
void cache_set_params(struct cache *c, const struct cache_params *p);

/*
 * Finds or creates the entry for (identity, resource).  Pinned entries are
 * configured audiences: never evicted.  Dynamic ones count against
 * max_entries; the least recently used idle one is evicted to make room, or
 * -ENOSPC when none can be.
 */
int cache_entry_get(struct cache *c, struct source *src, const char *identity, const char *resource,
		    bool pinned, struct cache_entry **out);
/*
 * Keys for cache_entry_get_dynamic's per-caller limit: a uid on the Unix
 * socket, a TCP listener (whose callers cannot be told apart), or a peer
 * whose uid could not be read.
 */
#define CACHE_CALLER_UID(uid)	 ((uint64_t)(uid))
#define CACHE_CALLER_LISTENER(n) ((UINT64_C(1) << 32) | (uint64_t)(n))
#define CACHE_CALLER_UNKNOWN	 (UINT64_C(2) << 32)

/*
 * cache_entry_get for a dynamic entry asked for by caller: creating one
 * counts against that caller's dynamic_rate (a token bucket: dynamic_rate
 * per second, bursts of twice that), so that one caller's flood of new
 * resources cannot crowd out everyone else.  -EAGAIN when over it (retry in
 * a second); -ENOSPC as cache_entry_get.
 */
int cache_entry_get_dynamic(struct cache *c, struct source *src, const char *identity,
			    const char *resource, uint64_t caller, struct cache_entry **out);
/*
 * Drops an entry (reload removed its audience, or eviction): waiters get a
 * 503, a fetch still queued in its source is withdrawn, one in flight is
 * ignored.
 */
void cache_entry_drop(struct cache *c, struct cache_entry *e);
/* Starts fetching now if there is no token (prefetch), and keeps it fresh while idle. */
void cache_entry_prefetch(struct cache *c, struct cache_entry *e);
/* Ends what cache_entry_prefetch began: the entry is refreshed only while used (reload). */
void cache_entry_unprefetch(struct cache_entry *e);
enum cache_state cache_entry_state(const struct cache_entry *e);
const char *cache_state_name(enum cache_state s);
/* True when the entry holds a token with more than min_validity left (by both clocks). */
bool cache_entry_ready(struct cache *c, const struct cache_entry *e);
/*
 * True once the entry has held a valid token, whatever became of it since:
 * the latched start-up gate of /readyz, which an upstream outage does not undo.
 */
bool cache_entry_was_ready(const struct cache_entry *e);
void cache_entry_status(struct cache *c, const struct cache_entry *e, struct cache_status *st);
void *cache_entry_user(const struct cache_entry *e);
/* The resource the entry holds tokens for (valid while the entry lives). */
const char *cache_entry_resource(const struct cache_entry *e);
void cache_entry_set_user(struct cache_entry *e, void *user);

/*
 * Asks for a token with more than min_validity seconds left (0: the
 * configured minimum).  Returns 0 with *now filled when it can answer at
 * once (a token, or a fast failure while backing off); returns -EINPROGRESS
 * when cb will be called later (fetch finished or wait timed out) and sets
 * *w for cancelling.
 */
int cache_request(struct cache *c, struct cache_entry *e, int64_t min_validity, cache_answer_fn *cb,
		  void *arg, struct cache_answer *now, struct cache_waiter **w);
/* Forgets a waiter whose client went away. */
void cache_waiter_cancel(struct cache *c, struct cache_waiter *w);

/* Forced fetches of one entry start at least this far apart. */
#define CACHE_FORCED_INTERVAL_S 5

/*
 * Forces a refresh (POST /v1/refresh): 0 when one starts, -EALREADY when one
 * is in flight (joined).  So that callers cannot make bearerd hammer the
 * upstream, it never starts inside a backoff (after a failure) nor within
 * CACHE_FORCED_INTERVAL_S of the last fetch (after a success): then it is
 * deferred to that time, every forced refresh until then being the same one,
 * and -EAGAIN says so with *retry_after_s.  Another negative errno when the
 * fetch could not start (recorded as a failure).
 */
int cache_refresh(struct cache *c, struct cache_entry *e, int64_t *retry_after_s);

/*
 * Refreshes because the token of that generation was rejected (a proxied
 * API's invalid_token, a CAE challenge): at most once per token, which bounds
 * it instead of CACHE_FORCED_INTERVAL_S (a revoked token is replaced at
 * once), and never inside a backoff.  -ESTALE, and nothing happens, when the
 * entry no longer holds that token (a newer one is there already), when the
 * token came from such a refresh itself or had one (done, deferred, or
 * answered with the same token by an upstream cache); otherwise as
 * cache_refresh.
 */
int cache_refresh_token(struct cache *c, struct cache_entry *e, uint64_t generation,
			int64_t *retry_after_s);

/* Performs everything due now: refreshes, wait timeouts, idle eviction. */
void cache_run(struct cache *c);

/*
 * The clocks moved apart: a resume from suspend (the boot clock ran on while
 * the timers' monotonic clock stood still, so every armed timer fires late)
 * or a step of the wall clock.  Each token's expiry becomes the earlier of
 * its boot-clock and wall-clock expiries (a wall clock stepped back never
 * stretches a token; one stepped forward shortens it), refreshes are planned
 * from that, whatever is due now runs at once, and the timer is armed anew.
 */
void cache_clock_jumped(struct cache *c);

typedef void cache_foreach_fn(void *arg, struct cache_entry *e);
void cache_foreach(struct cache *c, cache_foreach_fn *fn, void *arg);
size_t cache_size(const struct cache *c);

#endif
