/*
 * The token cache.  Entries are keyed by (identity, resource) in a tsearch
 * tree; dynamic entries also sit on an LRU list bounded by max_entries.
 * Nothing here reads a clock or calls upstream directly: cache_ops does, so
 * unit tests drive days of refresh cycles with a fake clock.  One timer (armed
 * through ops->arm) calls cache_run, which performs whatever is due.
 *
 * An entry's state is derived, never stored: whether it holds a usable token,
 * whether a fetch is in flight and whether the last fetch failed.
 *
 * Clocks: the cache's "now" is the boot clock, which counts suspended time;
 * every deadline here is on it.  A token also carries its wall-clock expiry,
 * and what is left of it is the lesser of the two (token_left_ms): the one
 * place every hand-out (API, compat, proxy, readiness) passes through.
 */
#include <errno.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <openssl/crypto.h>

#include "cache.h"
#include "log.h"
#include "wipe.h"

#define BACKOFF_MIN_MS	     250
#define BACKOFF_BASE_MS	     1000
#define BACKOFF_CAP_MS	     60000
#define BACKOFF_PERMANENT_MS 30000 /* a caller/config error: asking again soon will not help */
#define LONG_LIFETIME_S	     7200  /* half-life refresh from here on, as MSAL does */
#define SAME_TOKEN_FLOOR_MS  10000
#define FORCED_INTERVAL_MS   (CACHE_FORCED_INTERVAL_S * 1000)
#define CALLER_BUCKETS	     64 /* callers tracked for dynamic_rate; the idlest is forgotten */
#define STR(x)		     #x
#define XSTR(x)		     STR(x)
#define LATE_TIMER_MS	     1000 /* a timer this late slept through a suspend */

struct cache_waiter {
	TAILQ_ENTRY(cache_waiter) link;
	struct cache_entry *entry;
	int64_t min_validity_ms;
	int64_t deadline_ms;
	cache_answer_fn *cb;
	void *arg;
};

TAILQ_HEAD(cache_waiters, cache_waiter);

struct cache_entry {
	struct cache *cache;
	char *identity;
	char *resource;
	struct source *src;
	bool pinned;
	bool keep_fresh; /* prefetch: refreshed even when nobody asks */
	bool in_flight;
	bool dropped;		  /* out of the tree; freed when its fetch returns */
	bool failed;		  /* the last fetch failed */
	bool fetch_for_token;	  /* the fetch in flight is cache_refresh_token's */
	bool forced_pending;	  /* a forced fetch is due at refresh_at_ms */
	bool forced_for_token;	  /* ... for cache_refresh_token */
	bool was_ready;		  /* has held a valid token (the latched readiness) */
	bool loss_logged;	  /* keep_fresh: said that its last valid token ran out */
	const char *fetch_reason; /* of the fetch in flight (a string literal) */

	struct cache_token tok; /* value NULL when none */

	int64_t refresh_at_ms; /* next planned fetch, INT64_MAX when none */
	int64_t backoff_until_ms;
	int backoff_attempt;
	int64_t last_used_ms;
	int64_t last_fetch_ms;	/* when the last fetch started, INT64_MIN before the first */
	int64_t max_lifetime_s; /* the longest expires_in received, 0 before a token */
	uint64_t refreshed_gen; /* the token cache_refresh_token refreshed, or that it brought */

	long last_status;
	char *last_error; /* NULL after a success: most entries never fail */
	uint64_t fetches, failures;

	struct cache_waiters waiters;
	TAILQ_ENTRY(cache_entry) lru; /* dynamic entries; dropped ones on cache.dropped */
	void *user;
};

TAILQ_HEAD(cache_lru, cache_entry);

/* A caller's allowance of new dynamic entries (a token bucket). */
struct caller_bucket {
	uint64_t key;
	int64_t at_ms; /* of the last refill */
	double tokens;
	bool used;
};

struct cache {
	struct cache_params p;
	const struct cache_ops *ops;
	void *ctx;
	void *tree;
	size_t n_entries;
	size_t n_dynamic;
	struct cache_lru lru;
	struct cache_lru dropped; /* out of the tree, a fetch still in flight */
	int64_t armed_ms;
	int64_t wall_now_ms; /* the wall clock read with the boot clock by cache_now */
	uint64_t generation;
	bool running; /* inside cache_run: it re-arms at the end */
	struct caller_bucket callers[CALLER_BUCKETS];
};

/*
 * The boot clock now.  The wall clock is read at the same moment and kept for
 * token_left_ms, so one "now" judges a token by both clocks consistently.
 */
static int64_t
cache_now(struct cache *c)
{
	c->wall_now_ms = c->ops->wall_ms(c->ctx);
	return c->ops->boot_ms(c->ctx);
}

static int
entry_cmp(const void *a, const void *b)
{
	const struct cache_entry *x = a, *y = b;
	int r = strcmp(x->identity, y->identity);

	return r != 0 ? r : strcmp(x->resource, y->resource);
}

static void
token_wipe(struct cache_token *t)
{
	wipe_free((void *)t->value, t->len);
	t->value = NULL;
	t->len = 0;
	t->expires_boot_ms = 0;
	t->expires_wall_ms = 0;
	t->expires_on = 0;
}

static void
clear_error(struct cache_entry *e)
{
	free(e->last_error);
	e->last_error = NULL;
}

static void
entry_free(struct cache *c, struct cache_entry *e)
{
	struct cache_waiter *w;

	while ((w = TAILQ_FIRST(&e->waiters)) != NULL) {
		TAILQ_REMOVE(&e->waiters, w, link);
		free(w);
	}
	token_wipe(&e->tok);
	clear_error(e);
	if (e->user != NULL && c->ops->user_free != NULL)
		c->ops->user_free(e->user);
	free(e->identity);
	free(e->resource);
	free(e);
}

/* Asks for cache_run no later than at. */
static void
cache_want_run(struct cache *c, int64_t at)
{
	if (c->running || at >= c->armed_ms)
		return;
	c->armed_ms = at;
	c->ops->arm(c->ctx, at);
}

int
cache_new(struct cache **out, const struct cache_params *p, const struct cache_ops *ops, void *ctx)
{
	struct cache *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return -ENOMEM;
	c->p = *p;
	c->ops = ops;
	c->ctx = ctx;
	c->armed_ms = INT64_MAX;
	TAILQ_INIT(&c->lru);
	TAILQ_INIT(&c->dropped);
	*out = c;
	return 0;
}

struct cache *
cache_free(struct cache *c)
{
	if (c == NULL)
		return NULL;
	/* their fetches were aborted (fetch_free): no callback will free them */
	while (!TAILQ_EMPTY(&c->dropped)) {
		struct cache_entry *e = TAILQ_FIRST(&c->dropped);

		TAILQ_REMOVE(&c->dropped, e, lru);
		entry_free(c, e);
	}
	while (c->tree != NULL) {
		struct cache_entry *e = *(struct cache_entry **)c->tree;

		tdelete(e, &c->tree, entry_cmp);
		entry_free(c, e);
	}
	free(c);
	return NULL;
}

void
cache_set_params(struct cache *c, const struct cache_params *p)
{
	c->p = *p;
	cache_want_run(c, cache_now(c));
}

static void
entry_unlink(struct cache *c, struct cache_entry *e)
{
	tdelete(e, &c->tree, entry_cmp);
	c->n_entries--;
	if (!e->pinned) {
		TAILQ_REMOVE(&c->lru, e, lru);
		c->n_dynamic--;
	}
}

/* An entry may go only when nothing waits on it. */
static bool
entry_evictable(const struct cache_entry *e)
{
	return TAILQ_EMPTY(&e->waiters);
}

static void entry_fetch_done(void *arg, struct token_result *res);

void
cache_entry_drop(struct cache *c, struct cache_entry *e)
{
	struct cache_waiter *w;

	entry_unlink(c, e);
	/* a fetch still queued in its source is withdrawn: it would only delay others */
	if (e->in_flight && c->ops->cancel != NULL &&
	    c->ops->cancel(c->ctx, e->src, entry_fetch_done, e) == 0)
		e->in_flight = false;
	token_wipe(&e->tok);
	while ((w = TAILQ_FIRST(&e->waiters)) != NULL) {
		struct cache_answer a = {.status = 503,
					 .retry_after = 1,
					 .error = "temporarily_unavailable",
					 .description = "the audience was removed"};

		TAILQ_REMOVE(&e->waiters, w, link);
		w->cb(w->arg, &a);
		free(w);
	}
	if (e->in_flight) {
		/* freed when the fetch returns */
		e->dropped = true;
		TAILQ_INSERT_TAIL(&c->dropped, e, lru);
		return;
	}
	entry_free(c, e);
}

int
cache_entry_get(struct cache *c, struct source *src, const char *identity, const char *resource,
		bool pinned, struct cache_entry **out)
{
	struct cache_entry key = {.identity = (char *)identity, .resource = (char *)resource};
	struct cache_entry *e, **found;

	found = tfind(&key, &c->tree, entry_cmp);
	if (found != NULL) {
		e = *found;
		if (pinned && !e->pinned) {
			TAILQ_REMOVE(&c->lru, e, lru);
			c->n_dynamic--;
			e->pinned = true;
		}
		*out = e;
		return 0;
	}
	if (!pinned && c->n_dynamic >= c->p.max_entries) {
		struct cache_entry *victim;

		TAILQ_FOREACH(victim, &c->lru, lru)
		{
			if (entry_evictable(victim))
				break;
		}
		if (victim == NULL)
			return -ENOSPC;
		cache_entry_drop(c, victim);
	}
	e = calloc(1, sizeof(*e));
	if (e == NULL)
		return -ENOMEM;
	e->identity = strdup(identity);
	e->resource = strdup(resource);
	if (e->identity == NULL || e->resource == NULL) {
		free(e->identity);
		free(e->resource);
		free(e);
		return -ENOMEM;
	}
	e->cache = c;
	e->src = src;
	e->pinned = pinned;
	e->refresh_at_ms = INT64_MAX;
	e->last_used_ms = cache_now(c);
	e->last_fetch_ms = INT64_MIN;
	TAILQ_INIT(&e->waiters);
	if (tsearch(e, &c->tree, entry_cmp) == NULL) {
		entry_free(c, e);
		return -ENOMEM;
	}
	c->n_entries++;
	if (!pinned) {
		TAILQ_INSERT_TAIL(&c->lru, e, lru);
		c->n_dynamic++;
	}
	cache_want_run(c, e->last_used_ms + c->p.idle_timeout * 1000);
	*out = e;
	return 0;
}

/* Takes one new dynamic entry from caller's allowance; false when it has none left. */
static bool
caller_admit(struct cache *c, uint64_t key)
{
	double rate = (double)c->p.dynamic_rate, cap = 2.0 * rate;
	int64_t now = cache_now(c);
	struct caller_bucket *b = NULL, *idlest = NULL;

	if (c->p.dynamic_rate == 0)
		return true;
	for (size_t i = 0; i < CALLER_BUCKETS; i++) {
		struct caller_bucket *x = &c->callers[i];

		if (x->used && x->key == key) {
			b = x;
			break;
		}
		if (x->used) {
			x->tokens += (double)(now - x->at_ms) * rate / 1000.0;
			if (x->tokens > cap)
				x->tokens = cap;
			x->at_ms = now;
		}
		/* a free slot, or a full bucket (as good as none), else the fullest */
		if (idlest == NULL || !x->used || (idlest->used && x->tokens > idlest->tokens))
			idlest = x;
	}
	if (b == NULL) {
		b = idlest;
		*b = (struct caller_bucket){.key = key, .at_ms = now, .tokens = cap, .used = true};
	}
	b->tokens += (double)(now - b->at_ms) * rate / 1000.0;
	if (b->tokens > cap)
		b->tokens = cap;
	b->at_ms = now;
	if (b->tokens < 1.0)
		return false;
	b->tokens -= 1.0;
	return true;
}

int
cache_entry_get_dynamic(struct cache *c, struct source *src, const char *identity,
			const char *resource, uint64_t caller, struct cache_entry **out)
{
	struct cache_entry key = {.identity = (char *)identity, .resource = (char *)resource};
	struct cache_entry **found = tfind(&key, &c->tree, entry_cmp);

	if (found != NULL) {
		*out = *found;
		return 0;
	}
	if (!caller_admit(c, caller))
		return -EAGAIN;
	return cache_entry_get(c, src, identity, resource, false, out);
}

/*
 * What is left of the token at now (boot clock, from cache_now): the lesser of
 * its boot-clock and its wall-clock remainder.  The boot clock keeps a wall
 * clock stepped back from stretching a token; the wall clock catches one that
 * jumped ahead (and what sees expires_on judges by it).  -1 without a token.
 */
static int64_t
token_left_ms(const struct cache_entry *e, int64_t now)
{
	int64_t boot_left, wall_left;

	if (e->tok.value == NULL)
		return -1;
	boot_left = e->tok.expires_boot_ms - now;
	wall_left = e->tok.expires_wall_ms - e->cache->wall_now_ms;
	return boot_left < wall_left ? boot_left : wall_left;
}

/*
 * The one test of every hand-out.  Whole seconds count, as clients see
 * expires_in: 3.9 s left is 3, not more than 3.
 */
static bool
token_usable(const struct cache_entry *e, int64_t now, int64_t min_validity_ms)
{
	return e->tok.value != NULL && token_left_ms(e, now) / 1000 > min_validity_ms / 1000;
}

/* When token_usable turns false, the clocks running on together (INT64_MAX: no token). */
static int64_t
token_unusable_at(const struct cache_entry *e, int64_t now, int64_t min_validity_ms)
{
	if (e->tok.value == NULL)
		return INT64_MAX;
	return now + token_left_ms(e, now) - (min_validity_ms / 1000 + 1) * 1000 + 1;
}

static enum cache_state
entry_state(const struct cache *c, const struct cache_entry *e, int64_t now)
{
	bool usable = token_usable(e, now, c->p.min_validity * 1000);

	if (e->in_flight)
		return usable ? CACHE_REFRESHING : CACHE_FETCHING;
	if (usable)
		return CACHE_VALID;
	return e->failed ? CACHE_FAILED : CACHE_EMPTY;
}

enum cache_state
cache_entry_state(const struct cache_entry *e)
{
	return entry_state(e->cache, e, cache_now(e->cache));
}

const char *
cache_state_name(enum cache_state s)
{
	switch (s) {
	case CACHE_EMPTY:
		return "empty";
	case CACHE_FETCHING:
		return "fetching";
	case CACHE_VALID:
		return "valid";
	case CACHE_REFRESHING:
		return "refreshing";
	case CACHE_FAILED:
		return "failed";
	}
	return "unknown";
}

bool
cache_entry_ready(struct cache *c, const struct cache_entry *e)
{
	return token_usable(e, cache_now(c), c->p.min_validity * 1000);
}

bool
cache_entry_was_ready(const struct cache_entry *e)
{
	return e->was_ready;
}

static int64_t
ceil_s(int64_t ms)
{
	return ms <= 0 ? 0 : (ms + 999) / 1000;
}

/* Epoch milliseconds to seconds, rounded down (also before 1970). */
static int64_t
floor_s(int64_t ms)
{
	return ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
}

void
cache_entry_status(struct cache *c, const struct cache_entry *e, struct cache_status *st)
{
	int64_t now = cache_now(c), left;

	st->identity = e->identity;
	st->resource = e->resource;
	st->state = entry_state(c, e, now);
	st->pinned = e->pinned;
	left = token_left_ms(e, now);
	st->expires_in = left >= 0 ? left / 1000 : -1; /* -1: none, or expired by a clock jump */
	st->refresh_in =
	    e->in_flight || e->refresh_at_ms == INT64_MAX ? -1 : ceil_s(e->refresh_at_ms - now);
	st->last_status = e->last_status;
	st->last_error = e->last_error != NULL ? e->last_error : "";
	st->fetches = e->fetches;
	st->failures = e->failures;
}

void *
cache_entry_user(const struct cache_entry *e)
{
	return e->user;
}

const char *
cache_entry_resource(const struct cache_entry *e)
{
	return e->resource;
}

void
cache_entry_set_user(struct cache_entry *e, void *user)
{
	e->user = user;
}

static void
answer_ok(struct cache_entry *e, int64_t now, struct cache_answer *a)
{
	*a = (struct cache_answer){
	    .status = 200, .token = &e->tok, .expires_in = token_left_ms(e, now) / 1000};
}

static void
answer_failure(struct cache_entry *e, int64_t now, struct cache_answer *a)
{
	int64_t wait = e->backoff_until_ms - now;

	*a = (struct cache_answer){
	    .status = 503,
	    .retry_after = wait > 0 ? ceil_s(wait) : 1,
	    .error = "temporarily_unavailable",
	    .description = e->last_error != NULL ? e->last_error : "no valid token",
	};
}

/* A token that does not have what one caller asks for; a new one comes at most so often. */
static void
answer_too_short(struct cache_entry *e, int64_t now, struct cache_answer *a)
{
	int64_t wait =
	    e->last_fetch_ms != INT64_MIN ? e->last_fetch_ms + FORCED_INTERVAL_MS - now : 0;

	*a = (struct cache_answer){
	    .status = 503,
	    .retry_after = wait > 0 ? ceil_s(wait) : 1,
	    .error = "temporarily_unavailable",
	    .description =
		"the upstream's token does not have the requested validity left "
		"(a new one is fetched at most every " XSTR(CACHE_FORCED_INTERVAL_S) " s)",
	};
}

/* More than any token of this entry has lived: no fetch will help. */
static bool
beyond_lifetime(const struct cache_entry *e, int64_t min_validity_ms)
{
	return e->max_lifetime_s > 0 && min_validity_ms / 1000 >= e->max_lifetime_s;
}

static void
answer_beyond_lifetime(struct cache_answer *a)
{
	*a = (struct cache_answer){
	    .status = 400,
	    .error = "invalid_request",
	    .description = "min_validity is more than this audience's tokens live: ask for less",
	};
}

static void
answer_busy(struct cache_answer *a)
{
	*a = (struct cache_answer){
	    .status = 503,
	    .retry_after = 1,
	    .error = "temporarily_unavailable",
	    .description = "too many new resources are waiting for this identity's upstream; "
			   "retry shortly",
	};
}

/* Starts a fetch; on a synchronous failure records it like an upstream one. */
static int
entry_start_fetch(struct cache *c, struct cache_entry *e, const char *reason)
{
	/* configured audiences and tokens in use go ahead of new dynamic resources */
	enum source_priority prio =
	    e->pinned || e->tok.value != NULL ? SOURCE_PRIO_HIGH : SOURCE_PRIO_LOW;
	int64_t last = e->last_fetch_ms;
	int r;

	if (e->in_flight)
		return 0;
	e->in_flight = true;
	e->fetch_reason = reason;
	e->refresh_at_ms = INT64_MAX;
	e->last_fetch_ms = cache_now(c);
	/* whatever starts this fetch, it is also the forced refresh that was due */
	e->fetch_for_token = e->forced_for_token;
	r = c->ops->fetch(c->ctx, e->src, e->resource, prio, entry_fetch_done, e);
	if (r == -ENOBUFS) {
		/* the source's queue is full: nothing started, nothing to record */
		e->in_flight = false;
		e->fetch_reason = NULL;
		e->fetch_for_token = false;
		e->last_fetch_ms = last;
		return r;
	}
	e->forced_pending = false;
	e->forced_for_token = false;
	if (r < 0) {
		struct token_result res;

		token_result_start_failed(&res, r);
		entry_fetch_done(e, &res);
		return r;
	}
	return 0;
}

/* Why a request starts a fetch: no token yet, a failed one, or one with too little left. */
static const char *
fetch_reason_for_request(const struct cache_entry *e)
{
	if (e->failed)
		return "retry";
	return e->tok.value != NULL ? "expired" : "initial";
}

int
cache_request(struct cache *c, struct cache_entry *e, int64_t min_validity, cache_answer_fn *cb,
	      void *arg, struct cache_answer *now_answer, struct cache_waiter **out)
{
	int64_t now = cache_now(c);
	int64_t minv_ms =
	    (min_validity > c->p.min_validity ? min_validity : c->p.min_validity) * 1000;
	struct cache_waiter *w;
	int r;

	/*
	 * A deadline long overdue means the timer fired late, as after a
	 * suspend: have the loop run what is due (not from here, which the
	 * caller does not expect to call back).
	 */
	if (c->armed_ms != INT64_MAX && now - c->armed_ms > LATE_TIMER_MS && !c->running)
		c->ops->arm(c->ctx, now);
	e->last_used_ms = now;
	if (!e->pinned && TAILQ_LAST(&c->lru, cache_lru) != e) {
		TAILQ_REMOVE(&c->lru, e, lru);
		TAILQ_INSERT_TAIL(&c->lru, e, lru);
	}
	if (token_usable(e, now, minv_ms)) {
		answer_ok(e, now, now_answer);
		/* the entry was idle and is wanted again: plan its refresh */
		if (!e->in_flight && e->refresh_at_ms == INT64_MAX) {
			e->refresh_at_ms =
			    now + (token_left_ms(e, now) - c->p.min_validity * 1000) / 2;
			cache_want_run(c, e->refresh_at_ms);
		}
		return 0;
	}
	/* asking for more than tokens of this audience live: a fetch would not help */
	if (beyond_lifetime(e, minv_ms)) {
		answer_beyond_lifetime(now_answer);
		return 0;
	}
	if (!e->in_flight) {
		if (e->failed && now < e->backoff_until_ms) {
			answer_failure(e, now, now_answer);
			return 0;
		}
		/* only this caller wants more than the token has: at most one such fetch so often
		 */
		if (token_usable(e, now, c->p.min_validity * 1000) &&
		    now < e->last_fetch_ms + FORCED_INTERVAL_MS) {
			answer_too_short(e, now, now_answer);
			return 0;
		}
		r = entry_start_fetch(c, e, fetch_reason_for_request(e));
		if (r == -ENOBUFS) {
			answer_busy(now_answer);
			return 0;
		}
		if (r < 0 || !e->in_flight) {
			/* failed at once: e->failed and the backoff are set */
			if (token_usable(e, now, minv_ms))
				answer_ok(e, now, now_answer);
			else
				answer_failure(e, now, now_answer);
			return 0;
		}
	}
	w = calloc(1, sizeof(*w));
	if (w == NULL)
		return -ENOMEM;
	w->entry = e;
	w->min_validity_ms = minv_ms;
	w->deadline_ms = now + c->p.wait_timeout_ms;
	w->cb = cb;
	w->arg = arg;
	TAILQ_INSERT_TAIL(&e->waiters, w, link);
	cache_want_run(c, w->deadline_ms);
	*out = w;
	return -EINPROGRESS;
}

void
cache_waiter_cancel(struct cache *c, struct cache_waiter *w)
{
	(void)c;
	TAILQ_REMOVE(&w->entry->waiters, w, link);
	free(w);
}

/*
 * When a forced fetch may start: after a failure, once its backoff ends
 * (a wrong secret waits its 30 s whoever asks); after a success, no sooner
 * than FORCED_INTERVAL_MS after the last fetch started, unless it replaces
 * a rejected token (for_token), which its once-per-token rule bounds: a
 * revoked token is replaced at once.
 */
static int64_t
forced_earliest(const struct cache_entry *e, bool for_token)
{
	if (e->failed)
		return e->backoff_until_ms;
	if (for_token || e->last_fetch_ms == INT64_MIN)
		return INT64_MIN;
	return e->last_fetch_ms + FORCED_INTERVAL_MS;
}

/* A fetch a caller forces: started, joined, or deferred (coalesced) to when it may start. */
static int
forced_fetch(struct cache *c, struct cache_entry *e, uint64_t generation, int64_t *retry_after_s)
{
	int64_t now = cache_now(c), at = forced_earliest(e, generation != 0);
	int r = -EAGAIN;

	e->last_used_ms = now;
	if (e->in_flight) {
		if (generation != 0)
			e->refreshed_gen = generation; /* what comes back is that token's refresh */
		return -EALREADY;
	}
	e->forced_pending = true;
	if (generation != 0) {
		e->forced_for_token = true;
		e->refreshed_gen = generation;
	}
	if (at <= now) {
		r = entry_start_fetch(c, e, "forced");
		if (r != -ENOBUFS)
			return r; /* 0, or a failure recorded like an upstream one */
		at = now + 1000;
	}
	/* every forced refresh until then is this one */
	if (at < e->refresh_at_ms)
		e->refresh_at_ms = at;
	cache_want_run(c, e->refresh_at_ms);
	*retry_after_s = ceil_s(e->refresh_at_ms - now);
	return -EAGAIN;
}

int
cache_refresh(struct cache *c, struct cache_entry *e, int64_t *retry_after_s)
{
	return forced_fetch(c, e, 0, retry_after_s);
}

int
cache_refresh_token(struct cache *c, struct cache_entry *e, uint64_t generation,
		    int64_t *retry_after_s)
{
	if (e->tok.value == NULL || generation == 0 || generation != e->tok.generation)
		return -ESTALE;
	/* one in flight is joined; a token refreshed once this way is not refreshed again */
	if (!e->in_flight && generation == e->refreshed_gen)
		return -ESTALE;
	return forced_fetch(c, e, generation, retry_after_s);
}

void
cache_entry_prefetch(struct cache *c, struct cache_entry *e)
{
	e->keep_fresh = true;
	if (e->tok.value == NULL)
		entry_start_fetch(c, e, "prefetch");
}

void
cache_entry_unprefetch(struct cache_entry *e)
{
	e->keep_fresh = false;
}

/* Full jitter, doubling from 1 s to the 60 s cap. */
static int64_t
backoff_ms(struct cache *c, int attempt)
{
	int64_t cap = BACKOFF_BASE_MS << (attempt < 6 ? attempt : 6);
	int64_t d;

	if (cap > BACKOFF_CAP_MS)
		cap = BACKOFF_CAP_MS;
	d = (int64_t)((double)c->ops->random(c->ctx) / 4294967296.0 * (double)cap);
	return d < BACKOFF_MIN_MS ? BACKOFF_MIN_MS : d;
}

/*
 * When to refresh a token of lifetime_s received at now: the earliest of the
 * upstream's refresh_in, half-life for long lifetimes, and expiry minus
 * refresh_margin (half-life when the margin exceeds it), minus up to 10 %
 * jitter; and always before the token drops below min_validity.
 */
static int64_t
refresh_time(struct cache *c, int64_t now, int64_t lifetime_s, int64_t refresh_in_s)
{
	int64_t life_ms = lifetime_s * 1000;
	int64_t at = life_ms - c->p.refresh_margin * 1000;
	int64_t latest = life_ms - c->p.min_validity * 1000;
	double jitter;

	if (at < life_ms / 2)
		at = life_ms / 2;
	if (lifetime_s >= LONG_LIFETIME_S && life_ms / 2 < at)
		at = life_ms / 2;
	if (refresh_in_s > 0 && refresh_in_s * 1000 < at)
		at = refresh_in_s * 1000;
	if (at > latest)
		at = latest;
	jitter = (double)c->ops->random(c->ctx) / 4294967296.0 * 0.1;
	at -= (int64_t)((double)at * jitter);
	if (at < 0)
		at = 0;
	return now + at;
}

static void
entry_answer_waiters(struct cache *c, struct cache_entry *e, int64_t now)
{
	struct cache_waiter *w;

	while ((w = TAILQ_FIRST(&e->waiters)) != NULL) {
		struct cache_answer a;

		TAILQ_REMOVE(&e->waiters, w, link);
		if (token_usable(e, now, w->min_validity_ms))
			answer_ok(e, now, &a);
		else if (e->failed)
			answer_failure(e, now, &a);
		else if (beyond_lifetime(e, w->min_validity_ms))
			answer_beyond_lifetime(&a);
		else
			answer_too_short(e, now, &a);
		w->cb(w->arg, &a);
		free(w);
	}
}

static void
entry_record_failure(struct cache *c, struct cache_entry *e, int64_t now,
		     const struct token_result *res)
{
	int64_t delay = backoff_ms(c, e->backoff_attempt);
	char clean[256], err[600];
	int r;

	if (res->retry_after > 0 && res->retry_after * 1000 > delay)
		delay = res->retry_after * 1000;
	/* a wrong secret: a few requests a minute, no storm */
	if (res->permanent && delay < BACKOFF_PERMANENT_MS)
		delay = BACKOFF_PERMANENT_MS;
	e->backoff_attempt++;
	e->failed = true;
	e->failures++;
	e->last_status = res->http_status;
	free(e->last_error);
	if (res->error_code[0] != '\0' && res->message[0] != '\0')
		r = asprintf(&e->last_error, "%s: %s", res->error_code, res->message);
	else if (res->message[0] != '\0' || res->error_code[0] != '\0')
		r = asprintf(&e->last_error, "%s",
			     res->message[0] != '\0' ? res->message : res->error_code);
	else
		r = asprintf(&e->last_error, "upstream failed: %s",
			     strerror(res->error < 0 ? -res->error : EIO));
	if (r < 0)
		e->last_error = NULL;
	/* logged once per fetch, however many requests were waiting */
	log_warnx("token fetch failed",
		  "identity=%s resource=\"%s\" status=%ld attempt=%d retry_in_ms=%lld error=\"%s\"",
		  e->identity, log_clean(clean, sizeof(clean), e->resource), res->http_status,
		  e->backoff_attempt, (long long)delay,
		  log_clean(err, sizeof(err), e->last_error != NULL ? e->last_error : ""));
	e->backoff_until_ms = now + delay;
	e->refresh_at_ms = e->backoff_until_ms;
}

/* The failure label of a result (NULL for a success). */
static const char *
failure_kind(const struct token_result *res)
{
	if (res->error == -ETIMEDOUT)
		return "timeout";
	if (res->http_status == 429)
		return "throttled";
	if (res->http_status >= 400 || (res->http_status > 0 && res->http_status < 200))
		return "upstream_error";
	if (res->error == -ESTALE)
		return "stale_token";
	if (res->http_status > 0 || res->error == -ERANGE || res->error == -EINVAL ||
	    res->error == -EBADMSG)
		return "invalid_response";
	return "transport";
}

static void
entry_report(struct cache *c, struct cache_entry *e, const struct token_result *res, bool failed)
{
	struct cache_fetch_info info = {
	    .identity = e->identity,
	    .resource = e->resource,
	    .reason = e->fetch_reason != NULL ? e->fetch_reason : "scheduled",
	    .failure = failed ? failure_kind(res) : NULL,
	    .http_status = res->http_status,
	};

	if (c->ops->fetched != NULL)
		c->ops->fetched(c->ctx, &info);
}

static void
entry_fetch_done(void *arg, struct token_result *res)
{
	struct cache_entry *e = arg;
	struct cache *c = e->cache;
	int64_t now = cache_now(c);
	bool for_token = e->fetch_for_token;
	char clean[256];

	e->in_flight = false;
	e->fetch_for_token = false;
	e->fetches++;
	if (e->dropped) {
		entry_report(c, e, res, res->error != 0 || res->access_token == NULL);
		TAILQ_REMOVE(&c->dropped, e, lru);
		entry_free(c, e);
		return;
	}
	if (res->error == 0 && res->access_token != NULL && res->expires_in <= c->p.min_validity) {
		res->error = -ERANGE;
		snprintf(res->error_code, sizeof(res->error_code), "invalid_lifetime");
		snprintf(res->message, sizeof(res->message),
			 "the upstream's token lives %lld s, not more than min_validity (%lld s)",
			 (long long)res->expires_in, (long long)c->p.min_validity);
	}
	if (res->error != 0 || res->access_token == NULL) {
		entry_record_failure(c, e, now, res);
	} else if (e->tok.value != NULL && e->tok.len == res->token_len &&
		   CRYPTO_memcmp(e->tok.value, res->access_token, res->token_len) == 0) {
		/*
		 * The upstream answered from its own cache.  Keep our expiry
		 * (set when the token first arrived) and ask again halfway to the
		 * point where it becomes unusable, so a stale upstream cache
		 * costs a few requests, not a storm.
		 */
		int64_t window = token_left_ms(e, now) - c->p.min_validity * 1000;
		int64_t next = window / 2;

		if (window <= 0) {
			/* and it is no longer good enough: a failure, with backoff */
			res->error = -ESTALE;
			snprintf(res->error_code, sizeof(res->error_code), "stale_token");
			snprintf(res->message, sizeof(res->message),
				 "the upstream keeps returning a token with less than "
				 "min_validity left");
			entry_record_failure(c, e, now, res);
		} else {
			if (next < SAME_TOKEN_FLOOR_MS)
				next = window < SAME_TOKEN_FLOOR_MS ? window : SAME_TOKEN_FLOOR_MS;
			e->failed = false;
			e->backoff_attempt = 0;
			e->last_status = 0;
			clear_error(e);
			e->refresh_at_ms = now + next;
			/* asked to replace this token, the upstream would not: do not ask again */
			if (for_token)
				e->refreshed_gen = e->tok.generation;
		}
	} else {
		token_wipe(&e->tok);
		e->tok.value = res->access_token;
		e->tok.len = res->token_len;
		res->access_token = NULL;
		res->token_len = 0;
		/* the same lifetime on both clocks, from the moment it arrived */
		e->tok.expires_boot_ms = now + res->expires_in * 1000;
		e->tok.expires_wall_ms = c->wall_now_ms + res->expires_in * 1000;
		e->tok.expires_on = floor_s(e->tok.expires_wall_ms);
		e->tok.generation = ++c->generation;
		if (res->expires_in > e->max_lifetime_s)
			e->max_lifetime_s = res->expires_in;
		/* a token that replaced a rejected one is not replaced the same way again */
		if (for_token)
			e->refreshed_gen = e->tok.generation;
		e->was_ready = true;
		e->loss_logged = false;
		/* once per fetch, however many requests were waiting for it */
		if (e->failed)
			log_info("token fetch recovered",
				 "identity=%s resource=\"%s\" reason=%s expires_in=%lld",
				 e->identity, log_clean(clean, sizeof(clean), e->resource),
				 e->fetch_reason, (long long)res->expires_in);
		else
			log_info("token fetched",
				 "identity=%s resource=\"%s\" reason=%s expires_in=%lld",
				 e->identity, log_clean(clean, sizeof(clean), e->resource),
				 e->fetch_reason, (long long)res->expires_in);
		e->failed = false;
		e->backoff_attempt = 0;
		e->last_status = 0;
		clear_error(e);
		e->refresh_at_ms = refresh_time(c, now, res->expires_in, res->refresh_in);
	}
	entry_report(c, e, res, e->failed);
	entry_answer_waiters(c, e, now);
	cache_want_run(c, e->refresh_at_ms);
	if (e->tok.value != NULL)
		cache_want_run(c, now + token_left_ms(e, now));
}

/*
 * A prefetch audience whose last valid token ran out is said once in the
 * log (the refresh failures before it were, one line each); until then the
 * moment it will run out is a deadline, so the line comes when it happens.
 */
static int64_t
entry_watch_loss(struct cache *c, struct cache_entry *e, int64_t now, int64_t next)
{
	int64_t minv_ms = c->p.min_validity * 1000, at;
	char clean[256], err[600];

	if (!e->keep_fresh || !e->was_ready || e->loss_logged)
		return next;
	if (token_usable(e, now, minv_ms)) {
		at = token_unusable_at(e, now, minv_ms);
		return at < next ? at : next;
	}
	e->loss_logged = true;
	log_clean(clean, sizeof(clean), e->resource);
	log_clean(err, sizeof(err), e->last_error != NULL ? e->last_error : "");
	/* a warning while the upstream fails; after a suspend the fetch merely starts now */
	if (e->failed)
		log_warnx("no valid token left for a prefetch audience",
			  "identity=%s resource=\"%s\" state=%s error=\"%s\"", e->identity, clean,
			  cache_state_name(entry_state(c, e, now)), err);
	else
		log_info("no valid token left for a prefetch audience",
			 "identity=%s resource=\"%s\" state=%s", e->identity, clean,
			 cache_state_name(entry_state(c, e, now)));
	return next;
}

/* Does what is due for one entry; returns its next deadline. */
static int64_t
entry_run(struct cache *c, struct cache_entry *e, int64_t now, bool *drop)
{
	int64_t next = INT64_MAX;
	int64_t idle_at = e->last_used_ms + c->p.idle_timeout * 1000;
	struct cache_waiter *w, *tw;

	for (w = TAILQ_FIRST(&e->waiters); w != NULL; w = tw) {
		tw = TAILQ_NEXT(w, link);
		if (w->deadline_ms <= now) {
			struct cache_answer a = {
			    .status = 504,
			    .retry_after = 1,
			    .error = "timeout",
			    .description = "the upstream has not answered yet; the request "
					   "goes on, retry shortly",
			};

			TAILQ_REMOVE(&e->waiters, w, link);
			w->cb(w->arg, &a);
			free(w);
		} else if (w->deadline_ms < next) {
			next = w->deadline_ms;
		}
	}
	if (e->tok.value != NULL && token_left_ms(e, now) <= 0)
		token_wipe(&e->tok);
	next = entry_watch_loss(c, e, now, next);
	if (idle_at <= now && !e->keep_fresh && TAILQ_EMPTY(&e->waiters)) {
		if (!e->pinned) {
			*drop = true;
			return INT64_MAX;
		}
		/* a configured audience nobody uses: stop refreshing it */
		e->refresh_at_ms = INT64_MAX;
	} else if (idle_at > now && !e->keep_fresh && idle_at < next) {
		next = idle_at;
	}
	if (!e->in_flight && e->refresh_at_ms <= now)
		entry_start_fetch(c, e,
				  e->forced_pending ? "forced"
				  : e->failed	    ? "retry"
						    : "scheduled");
	if (!e->in_flight && e->refresh_at_ms < next)
		next = e->refresh_at_ms;
	if (e->tok.value != NULL && now + token_left_ms(e, now) < next)
		next = now + token_left_ms(e, now);
	return next;
}

struct run_ctx {
	struct cache *c;
	int64_t now;
	int64_t next;
	struct cache_entry **drops;
	size_t ndrops, cap;
	bool oom;
};

static struct run_ctx *run_ctx_current;

static void
run_visit(const void *node, VISIT which, int depth)
{
	struct run_ctx *r = run_ctx_current;
	struct cache_entry *e = *(struct cache_entry *const *)node;
	bool drop = false;
	int64_t next;

	(void)depth;
	if (which != postorder && which != leaf)
		return;
	next = entry_run(r->c, e, r->now, &drop);
	if (drop) {
		if (r->ndrops == r->cap) {
			size_t cap = r->cap ? r->cap * 2 : 16;
			struct cache_entry **d = realloc(r->drops, cap * sizeof(*d));

			if (d == NULL) {
				r->oom = true;
				return;
			}
			r->drops = d;
			r->cap = cap;
		}
		r->drops[r->ndrops++] = e;
	} else if (next < r->next) {
		r->next = next;
	}
}

void
cache_run(struct cache *c)
{
	struct run_ctx r = {.c = c, .now = cache_now(c), .next = INT64_MAX};

	c->running = true;
	run_ctx_current = &r;
	twalk(c->tree, run_visit);
	run_ctx_current = NULL;
	for (size_t i = 0; i < r.ndrops; i++)
		cache_entry_drop(c, r.drops[i]);
	free(r.drops);
	if (r.oom && r.next > r.now + 1000)
		r.next = r.now + 1000;
	c->running = false;
	c->armed_ms = r.next;
	c->ops->arm(c->ctx, r.next);
}

/*
 * After a clock jump: both expiries of the token become the earlier one, so
 * expires_on never promises more than the boot clock allows, and a refresh
 * planned for a lifetime the wall clock has since cut short is brought
 * forward.  A refresh that was not planned (idle) or is backing off stays.
 */
static void
entry_reconcile(void *arg, struct cache_entry *e)
{
	struct cache *c = arg;
	int64_t now = cache_now(c), left = token_left_ms(e, now), at;
	struct cache_token *t = &e->tok;

	if (t->value == NULL)
		return;
	if (t->expires_boot_ms - now > left) {
		/* the wall clock jumped ahead of the token's boot-clock lifetime */
		t->expires_boot_ms = now + left;
		if (!e->in_flight && !e->failed && e->refresh_at_ms != INT64_MAX) {
			at = refresh_time(c, now, left / 1000, 0);
			if (at < e->refresh_at_ms)
				e->refresh_at_ms = at;
		}
	} else if (t->expires_wall_ms - c->wall_now_ms > left) {
		/* the wall clock was stepped back: expires_on follows the boot clock */
		t->expires_wall_ms = c->wall_now_ms + left;
		if (floor_s(t->expires_wall_ms) != t->expires_on) {
			t->expires_on = floor_s(t->expires_wall_ms);
			t->generation = ++c->generation; /* rendered answers carry expires_on */
		}
	}
}

void
cache_clock_jumped(struct cache *c)
{
	cache_foreach(c, entry_reconcile, c);
	/* whatever was armed may fire late (a suspend) or early: cache_run re-arms */
	cache_run(c);
}

struct foreach_ctx {
	cache_foreach_fn *fn;
	void *arg;
};

static struct foreach_ctx *foreach_current;

static void
foreach_visit(const void *node, VISIT which, int depth)
{
	(void)depth;
	if (which == postorder || which == leaf)
		foreach_current->fn(foreach_current->arg, *(struct cache_entry *const *)node);
}

void
cache_foreach(struct cache *c, cache_foreach_fn *fn, void *arg)
{
	struct foreach_ctx f = {fn, arg};
	struct foreach_ctx *saved = foreach_current;

	foreach_current = &f;
	twalk(c->tree, foreach_visit);
	foreach_current = saved;
}

size_t
cache_size(const struct cache *c)
{
	return c->n_entries;
}
