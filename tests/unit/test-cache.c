/* Unit tests for daemon/cache.c: the refresh state machine, driven by a fake clock. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cache.h"

#define MAX_PENDING 64

struct fake {
	int64_t now_ms;	      /* the boot clock */
	int64_t wall_step_ms; /* the wall clock's distance from WALL_EPOCH_MS + now_ms */
	int64_t armed_ms;
	uint32_t rnd;
	int fetches;
	int fail_start; /* next fetch() call fails synchronously */
	int nobufs;	/* fetch() of a low-priority fetch finds the queue full */
	int cancelable; /* cancel() withdraws pending fetches (else -EBUSY) */
	int cancels;	/* cancel() calls */
	struct {
		source_done_fn *done;
		void *arg;
		char resource[128];
		enum source_priority prio;
	} pending[MAX_PENDING];
	int npending;
	int answers;
	struct cache_answer last;
	char last_token[64];
	uint64_t last_gen; /* of the last token answered */
	int reported;	   /* cache_ops.fetched calls */
	char reason[32], failure[32];
};

static struct fake F;

static int64_t
fake_now(void *ctx)
{
	(void)ctx;
	return F.now_ms;
}

#define WALL_EPOCH_MS 1700000000000LL /* the wall clock at boot-clock 0, before any step */

static int64_t
fake_wall(void *ctx)
{
	(void)ctx;
	return WALL_EPOCH_MS + F.now_ms + F.wall_step_ms;
}

static uint32_t
fake_random(void *ctx)
{
	(void)ctx;
	return F.rnd;
}

static int
fake_fetch(void *ctx, struct source *src, const char *resource, enum source_priority prio,
	   source_done_fn *done, void *arg)
{
	(void)ctx;
	(void)src;
	if (F.fail_start) {
		F.fail_start = 0;
		return -EIO;
	}
	if (F.nobufs && prio == SOURCE_PRIO_LOW)
		return -ENOBUFS;
	assert_true(F.npending < MAX_PENDING);
	F.pending[F.npending].done = done;
	F.pending[F.npending].arg = arg;
	F.pending[F.npending].prio = prio;
	snprintf(F.pending[F.npending].resource, sizeof(F.pending[0].resource), "%s", resource);
	F.npending++;
	F.fetches++;
	return 0;
}

static int
fake_cancel(void *ctx, struct source *src, source_done_fn *done, void *arg)
{
	(void)ctx;
	(void)src;
	F.cancels++;
	for (int i = 0; i < F.npending; i++) {
		if (F.pending[i].done != done || F.pending[i].arg != arg)
			continue;
		if (!F.cancelable)
			return -EBUSY;
		memmove(&F.pending[i], &F.pending[i + 1],
			sizeof(F.pending[0]) * (size_t)(F.npending - i - 1));
		F.npending--;
		return 0;
	}
	return -ENOENT;
}

static void
fake_arm(void *ctx, int64_t deadline)
{
	(void)ctx;
	F.armed_ms = deadline;
}

static void
fake_fetched(void *ctx, const struct cache_fetch_info *info)
{
	(void)ctx;
	F.reported++;
	snprintf(F.reason, sizeof(F.reason), "%s", info->reason);
	snprintf(F.failure, sizeof(F.failure), "%s", info->failure ? info->failure : "");
}

static const struct cache_ops fake_ops = {
    .boot_ms = fake_now,
    .wall_ms = fake_wall,
    .random = fake_random,
    .fetch = fake_fetch,
    .cancel = fake_cancel,
    .arm = fake_arm,
    .user_free = free,
    .fetched = fake_fetched,
};

static void
on_answer(void *arg, const struct cache_answer *a)
{
	(void)arg;
	F.answers++;
	F.last = *a;
	F.last_token[0] = '\0';
	if (a->token != NULL) {
		snprintf(F.last_token, sizeof(F.last_token), "%s", a->token->value);
		F.last_gen = a->token->generation;
	}
	F.last.token = NULL;
}

/* Completes the oldest pending fetch with a token (lifetime > 0) or an error status. */
static void
complete(const char *token, int64_t lifetime, long status, int64_t retry_after, int64_t refresh_in)
{
	struct token_result r;

	assert_true(F.npending > 0);
	token_result_init(&r);
	if (token != NULL) {
		r.access_token = strdup(token);
		r.token_len = strlen(token);
		r.expires_in = lifetime;
		r.refresh_in = refresh_in;
	} else {
		r.error = -EIO;
		r.http_status = status;
		r.retry_after = retry_after;
		snprintf(r.error_code, sizeof(r.error_code), "server_error");
		snprintf(r.message, sizeof(r.message), "upstream said %ld", status);
	}
	source_done_fn *done = F.pending[0].done;
	void *arg = F.pending[0].arg;
	memmove(&F.pending[0], &F.pending[1], sizeof(F.pending[0]) * (size_t)(F.npending - 1));
	F.npending--;
	done(arg, &r);
	token_result_clear(&r);
}

/* Moves the clock to t, firing the cache's timer at each armed deadline on the way. */
static void
advance_to(struct cache *c, int64_t t)
{
	while (F.armed_ms <= t) {
		if (F.armed_ms > F.now_ms)
			F.now_ms = F.armed_ms;
		cache_run(c);
	}
	F.now_ms = t;
}

static struct cache *
new_cache(int64_t minv, int64_t margin, size_t max_entries)
{
	struct cache_params p = {.min_validity = minv,
				 .refresh_margin = margin,
				 .idle_timeout = 3600,
				 .wait_timeout_ms = 5000,
				 .max_entries = max_entries};
	struct cache *c;

	memset(&F, 0, sizeof(F));
	F.armed_ms = INT64_MAX;
	assert_int_equal(cache_new(&c, &p, &fake_ops, NULL), 0);
	return c;
}

/* Requests a token; returns the immediate status or 0 when the request waits. */
static int
request(struct cache *c, struct cache_entry *e, int64_t minv, struct cache_waiter **w)
{
	struct cache_answer a;
	struct cache_waiter *dummy;
	int r = cache_request(c, e, minv, on_answer, NULL, &a, w ? w : &dummy);

	if (r == -EINPROGRESS)
		return 0;
	assert_int_equal(r, 0);
	F.last = a;
	F.last_token[0] = '\0';
	if (a.token != NULL) {
		snprintf(F.last_token, sizeof(F.last_token), "%s", a.token->value);
		F.last_gen = a.token->generation;
	}
	F.last.token = NULL;
	return a.status;
}

static int64_t
first_refresh_at(int64_t lifetime, int64_t minv, int64_t margin, uint32_t rnd, int64_t refresh_in)
{
	struct cache *c = new_cache(minv, margin, 10);
	struct cache_entry *e;
	struct cache_status st;
	int64_t at;

	F.rnd = rnd;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	cache_entry_prefetch(c, e);
	assert_int_equal(F.fetches, 1);
	complete("tok-1", lifetime, 0, 0, refresh_in);
	cache_entry_status(c, e, &st);
	at = st.refresh_in * 1000;
	/* nothing before the planned time (to the second), one fetch at it */
	advance_to(c, at - 1000);
	assert_int_equal(F.fetches, 1);
	advance_to(c, at);
	assert_int_equal(F.fetches, 2);
	cache_free(c);
	return at;
}

static void
test_refresh_times(void **state)
{
	(void)state;
	/* 5 min token, margin 900 > half-life: refresh at half-life */
	assert_int_equal(first_refresh_at(300, 60, 900, 0, 0), 150000);
	/* 1 h token: expiry - margin */
	assert_int_equal(first_refresh_at(3600, 300, 900, 0, 0), 2700000);
	/* 24 h token: half-life, as MSAL does for lifetimes >= 2 h */
	assert_int_equal(first_refresh_at(86400, 300, 900, 0, 0), 43200000);
	/* the upstream's refresh_in wins when earlier */
	assert_int_equal(first_refresh_at(3600, 300, 900, 0, 600), 600000);
	/* a margin below min_validity: refresh before the token becomes unusable */
	assert_int_equal(first_refresh_at(3600, 1200, 60, 0, 0), 2400000);
}

static void
test_jitter_bounds(void **state)
{
	(void)state;
	/* the largest random value takes (just under) 10 % off the interval */
	int64_t at = first_refresh_at(3600, 300, 900, UINT32_MAX, 0);

	assert_true(at < 2700000);
	assert_true(at >= 2430000);
	at = first_refresh_at(86400, 300, 900, UINT32_MAX / 2, 0);
	assert_true(at <= 43200000 - 43200000 / 20 + 1000);
	assert_true(at >= 43200000 - 43200000 / 20 - 1000);
}

static void
test_single_flight(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	for (int i = 0; i < 100; i++)
		assert_int_equal(request(c, e, 0, NULL), 0);
	assert_int_equal(F.fetches, 1);
	assert_int_equal(cache_entry_state(e), CACHE_FETCHING);
	complete("tok-A", 3600, 0, 0, 0);
	assert_int_equal(F.answers, 100);
	assert_int_equal(F.last.status, 200);
	assert_string_equal(F.last_token, "tok-A");
	/* now a cache hit, no fetch */
	assert_int_equal(request(c, e, 0, NULL), 200);
	assert_string_equal(F.last_token, "tok-A");
	assert_int_equal(F.last.expires_in, 3600);
	assert_int_equal(F.fetches, 1);
	cache_free(c);
}

static void
test_min_validity_request(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	request(c, e, 0, NULL);
	complete("tok-A", 3600, 0, 0, 0);
	advance_to(c, 1000 * 1000);
	assert_int_equal(F.fetches, 1);
	/* 2600 s left: asking for 3000 starts a fetch and waits */
	assert_int_equal(request(c, e, 3000, NULL), 0);
	assert_int_equal(F.fetches, 2);
	assert_int_equal(cache_entry_state(e), CACHE_REFRESHING);
	complete("tok-B", 3600, 0, 0, 0);
	assert_int_equal(F.last.status, 200);
	assert_string_equal(F.last_token, "tok-B");
	/* asking for more than any token has lived: a clear 400 at once, no fetch */
	assert_int_equal(request(c, e, 4000, NULL), 400);
	assert_string_equal(F.last.error, "invalid_request");
	assert_string_equal(F.last_token, "");
	assert_int_equal(F.fetches, 2);
	cache_free(c);
}

static void
test_outage_serves_last_good_then_503(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;
	int64_t t;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	cache_entry_prefetch(c, e);
	complete("tok-A", 3600, 0, 0, 0);
	F.rnd = UINT32_MAX / 2;
	/* the upstream fails every time from now on */
	for (t = 0; t < 3600 * 1000; t += 1000) {
		advance_to(c, t);
		while (F.npending > 0)
			complete(NULL, 0, 500, -1, 0);
		int s = request(c, e, 0, NULL);
		if (t < (3600 - 300) * 1000) {
			assert_int_equal(s, 200);
			assert_string_equal(F.last_token, "tok-A");
			assert_true(F.last.expires_in > 300);
		} else {
			/* never the expiring token */
			assert_int_equal(s, 503);
			assert_true(F.last.retry_after >= 1);
			assert_string_equal(F.last.description, "server_error: upstream said 500");
		}
	}
	/* retries were spaced by the backoff (cap 60 s), not a storm */
	assert_true(F.fetches < 2 + 3600 / 30);
	assert_int_equal(cache_entry_state(e), CACHE_FAILED);
	/* the upstream comes back: recovered within the backoff cap */
	advance_to(c, t + 61000);
	assert_int_equal(F.npending, 1);
	complete("tok-B", 3600, 0, 0, 0);
	assert_int_equal(request(c, e, 0, NULL), 200);
	assert_string_equal(F.last_token, "tok-B");
	cache_free(c);
}

static void
test_backoff_sequence_and_fail_fast(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;
	int64_t expect[] = {1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000};

	(void)state;
	F.rnd = UINT32_MAX; /* the top of each full-jitter range */
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	cache_entry_prefetch(c, e);
	for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
		int64_t start = F.now_ms;
		int fetches = F.fetches;

		complete(NULL, 0, 503, -1, 0);
		assert_int_equal(cache_entry_state(e), CACHE_FAILED);
		/* waiters fail fast while backing off, without a fetch */
		assert_int_equal(request(c, e, 0, NULL), 503);
		assert_int_equal(F.fetches, fetches);
		int64_t d = F.armed_ms - start;
		assert_true(d <= expect[i] && d >= expect[i] - expect[i] / 1000 - 1);
		advance_to(c, F.armed_ms - 1);
		assert_int_equal(F.fetches, fetches);
		advance_to(c, F.armed_ms);
		assert_int_equal(F.fetches, fetches + 1);
	}
	/* full jitter: a small random value retries soon, with a floor */
	F.rnd = 0;
	complete(NULL, 0, 503, -1, 0);
	assert_int_equal(F.armed_ms - F.now_ms, 250);
	cache_free(c);
}

static void
test_retry_after_honoured(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	assert_int_equal(request(c, e, 0, NULL), 0);
	complete(NULL, 0, 429, 30, 0);
	assert_int_equal(F.last.status, 503);
	assert_int_equal(F.last.retry_after, 30);
	advance_to(c, 29999);
	assert_int_equal(request(c, e, 0, NULL), 503);
	assert_int_equal(F.fetches, 1);
	advance_to(c, 30000);
	assert_int_equal(F.fetches, 2);
	cache_free(c);
}

static void
test_permanent_error_waits_30s(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;
	struct token_result r;

	(void)state;
	F.rnd = 0; /* the shortest backoff the jitter could pick */
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	assert_int_equal(request(c, e, 0, NULL), 0);
	token_result_init(&r);
	r.error = -EIO;
	r.http_status = 401;
	r.permanent = true;
	snprintf(r.error_code, sizeof(r.error_code), "invalid_client");
	F.npending--;
	F.pending[0].done(F.pending[0].arg, &r);
	token_result_clear(&r);
	assert_int_equal(F.last.status, 503);
	advance_to(c, 29999);
	assert_int_equal(request(c, e, 0, NULL), 503);
	assert_int_equal(F.fetches, 1);
	advance_to(c, 30000);
	assert_int_equal(F.fetches, 2);
	cache_free(c);
}

static void
test_same_token_does_not_loop(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	cache_entry_prefetch(c, e);
	complete("tok-A", 3600, 0, 0, 0);
	F.rnd = UINT32_MAX / 2;
	/* the upstream keeps answering with the same token, as IMDS's own cache does */
	for (int64_t t = 0; t < 3600 * 1000; t += 500) {
		advance_to(c, t);
		while (F.npending > 0)
			complete("tok-A", 3600 - t / 1000, 0, 0, 0);
	}
	/*
	 * halving steps towards min_validity (2700, 3000, 3150, ... s), then
	 * backoff once the token is too old to serve: a few dozen, not thousands
	 */
	assert_true(F.fetches <= 25);
	assert_int_equal(cache_entry_state(e), CACHE_FAILED);
	cache_free(c);
}

static void
test_wait_timeout_504(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	assert_int_equal(request(c, e, 0, NULL), 0);
	advance_to(c, 4999);
	assert_int_equal(F.answers, 0);
	advance_to(c, 5000);
	assert_int_equal(F.answers, 1);
	assert_int_equal(F.last.status, 504);
	assert_int_equal(F.last.retry_after, 1);
	/* the fetch went on and its token serves the next request */
	complete("tok-late", 3600, 0, 0, 0);
	assert_int_equal(F.answers, 1);
	assert_int_equal(request(c, e, 0, NULL), 200);
	assert_string_equal(F.last_token, "tok-late");
	cache_free(c);
}

static void
test_cancelled_waiter_not_called(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;
	struct cache_waiter *w;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	assert_int_equal(request(c, e, 0, &w), 0);
	cache_waiter_cancel(c, w);
	complete("tok", 3600, 0, 0, 0);
	assert_int_equal(F.answers, 0);
	cache_free(c);
}

static void
test_sync_fetch_failure(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	F.fail_start = 1;
	assert_int_equal(request(c, e, 0, NULL), 503);
	assert_int_equal(cache_entry_state(e), CACHE_FAILED);
	cache_free(c);
}

static void
test_idle_eviction(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *dyn, *pinned;
	struct cache_status st;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "dynamic", false, &dyn), 0);
	assert_int_equal(cache_entry_get(c, NULL, "id", "pinned", true, &pinned), 0);
	request(c, dyn, 0, NULL);
	complete("tok-d", 3600, 0, 0, 0);
	request(c, pinned, 0, NULL);
	complete("tok-p", 3600, 0, 0, 0);
	assert_int_equal(cache_size(c), 2);
	advance_to(c, 3599 * 1000);
	assert_int_equal(cache_size(c), 2);
	/* the refresh at 2700 s happened while still wanted */
	assert_int_equal(F.fetches, 4);
	complete("tok-d2", 3600, 0, 0, 0);
	complete("tok-p2", 3600, 0, 0, 0);
	advance_to(c, 3601 * 1000);
	/* dynamic dropped, configured one kept but no longer refreshed */
	assert_int_equal(cache_size(c), 1);
	cache_entry_status(c, pinned, &st);
	assert_int_equal(st.refresh_in, -1);
	advance_to(c, 10 * 3600 * 1000);
	assert_int_equal(F.fetches, 4);
	assert_int_equal(cache_entry_state(pinned), CACHE_EMPTY);
	/* asked again: fetched again */
	assert_int_equal(request(c, pinned, 0, NULL), 0);
	assert_int_equal(F.fetches, 5);
	complete("tok-p3", 3600, 0, 0, 0);
	cache_free(c);
}

static void
test_prefetch_keeps_fresh(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	cache_entry_prefetch(c, e);
	/* a day of refresh cycles with nobody asking */
	for (int64_t t = 0; t < 24 * 3600 * 1000LL; t += 60000) {
		advance_to(c, t);
		while (F.npending > 0) {
			char tok[32];

			snprintf(tok, sizeof(tok), "tok-%d", F.fetches);
			complete(tok, 3600, 0, 0, 0);
		}
	}
	assert_true(F.fetches >= 24 * 3600 / 2700);
	assert_true(F.fetches <= 24 * 3600 / 2430 + 2);
	assert_true(cache_entry_ready(c, e));
	cache_free(c);
}

static void
test_lru_bound(void **state)
{
	struct cache *c = new_cache(300, 900, 3);
	struct cache_entry *e[4], *again;
	char name[16];

	(void)state;
	for (int i = 0; i < 3; i++) {
		snprintf(name, sizeof(name), "r%d", i);
		assert_int_equal(cache_entry_get(c, NULL, "id", name, false, &e[i]), 0);
		F.now_ms += 1000;
	}
	/* touch r0 so r1 is the least recently used */
	request(c, e[0], 0, NULL);
	assert_int_equal(cache_entry_get(c, NULL, "id", "r3", false, &e[3]), 0);
	assert_int_equal(cache_size(c), 3);
	assert_int_equal(cache_entry_get(c, NULL, "id", "r0", false, &again), 0);
	assert_ptr_equal(again, e[0]);
	/* r1 is gone: asking for it evicts the next least recently used (r2) */
	assert_int_equal(cache_entry_get(c, NULL, "id", "r1", false, &again), 0);
	assert_ptr_not_equal(again, e[1]);
	assert_int_equal(cache_size(c), 3);
	/* pinned entries do not count */
	assert_int_equal(cache_entry_get(c, NULL, "id", "p", true, &again), 0);
	assert_int_equal(cache_size(c), 4);
	cache_free(c);
}

static void
test_lru_full_of_waiters(void **state)
{
	struct cache *c = new_cache(300, 900, 2);
	struct cache_entry *a, *b, *x;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "a", false, &a), 0);
	assert_int_equal(cache_entry_get(c, NULL, "id", "b", false, &b), 0);
	request(c, a, 0, NULL);
	request(c, b, 0, NULL);
	assert_int_equal(cache_entry_get(c, NULL, "id", "c", false, &x), -ENOSPC);
	complete("ta", 3600, 0, 0, 0);
	/* a's waiter answered: a can go now */
	assert_int_equal(cache_entry_get(c, NULL, "id", "c", false, &x), 0);
	complete("tb", 3600, 0, 0, 0);
	cache_free(c);
}

static void
test_drop_in_flight(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	assert_int_equal(request(c, e, 0, NULL), 0);
	cache_entry_drop(c, e);
	assert_int_equal(F.last.status, 503);
	assert_int_equal(cache_size(c), 0);
	/* the late answer is ignored (and frees the entry: ASan/valgrind check) */
	complete("tok", 3600, 0, 0, 0);
	cache_free(c);
}

static void
test_too_short_lifetime_is_failure(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	assert_int_equal(request(c, e, 0, NULL), 0);
	complete("tok", 200, 0, 0, 0);
	assert_int_equal(F.last.status, 503);
	assert_int_equal(cache_entry_state(e), CACHE_FAILED);
	cache_free(c);
}

/* Every finished fetch is reported once, with why it started and how it failed. */
static void
test_fetch_reports(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e, *d;
	struct cache_status st;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	cache_entry_prefetch(c, e);
	complete("tok-1", 3600, 0, 0, 0);
	assert_int_equal(F.reported, 1);
	assert_string_equal(F.reason, "prefetch");
	assert_string_equal(F.failure, "");
	cache_entry_status(c, e, &st);
	advance_to(c, st.refresh_in * 1000);
	complete(NULL, 0, 503, 0, 0);
	assert_int_equal(F.reported, 2);
	assert_string_equal(F.reason, "scheduled");
	assert_string_equal(F.failure, "upstream_error");
	cache_entry_status(c, e, &st);
	advance_to(c, F.now_ms + st.refresh_in * 1000);
	assert_int_equal(F.npending, 1);
	complete(NULL, 0, 429, 0, 0);
	assert_string_equal(F.reason, "retry");
	assert_string_equal(F.failure, "throttled");
	cache_entry_status(c, e, &st);
	advance_to(c, F.now_ms + st.refresh_in * 1000);
	complete("tok-1b", 3600, 0, 0, 0);
	assert_string_equal(F.reason, "retry");
	/* a forced refresh, once the last fetch is far enough back */
	advance_to(c, F.now_ms + CACHE_FORCED_INTERVAL_S * 1000);
	assert_int_equal(cache_refresh(c, e, &(int64_t){0}), 0);
	complete("tok-2", 10, 0, 0, 0); /* lives less than min_validity */
	assert_string_equal(F.reason, "forced");
	assert_string_equal(F.failure, "invalid_response");
	/* a request for a new resource, and a transport failure */
	assert_int_equal(cache_entry_get(c, NULL, "id", "other", false, &d), 0);
	assert_int_equal(request(c, d, 0, NULL), 0);
	complete(NULL, 0, 0, 0, 0);
	assert_string_equal(F.reason, "initial");
	assert_string_equal(F.failure, "transport");
	assert_int_equal(F.reported, 6);
	cache_free(c);
}

/* Finding 4 of issue 11: a min_validity that no token of this audience meets costs no fetch. */
static void
test_min_validity_beyond_lifetime_no_fetch(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	/* before any token nobody knows the lifetime: one fetch, single flight */
	for (int i = 0; i < 5; i++)
		assert_int_equal(request(c, e, 31000000, NULL), 0);
	assert_int_equal(F.fetches, 1);
	complete("tok-A", 3600, 0, 0, 0);
	assert_int_equal(F.answers, 5);
	assert_int_equal(F.last.status, 400);
	/* from now on: 400 at once, however often, and the token still serves others */
	for (int i = 0; i < 40; i++) {
		assert_int_equal(request(c, e, 31000000, NULL), 400);
		assert_int_equal(request(c, e, 3600, NULL), 400);
	}
	assert_int_equal(F.fetches, 1);
	assert_int_equal(request(c, e, 0, NULL), 200);
	assert_string_equal(F.last_token, "tok-A");
	/* a longer-lived token moves the bound */
	advance_to(c, 3000 * 1000);
	assert_int_equal(request(c, e, 3500, NULL), 0);
	complete("tok-B", 7200, 0, 0, 0);
	assert_int_equal(F.last.status, 200);
	assert_int_equal(request(c, e, 7100, NULL), 200);
	assert_int_equal(request(c, e, 7200, NULL), 400);
	cache_free(c);
}

/* A caller that wants more than the token has left forces at most one fetch so often. */
static void
test_min_validity_fetches_are_rate_limited(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	request(c, e, 0, NULL);
	complete("tok-A", 3600, 0, 0, 0);
	advance_to(c, 1000 * 1000);
	/* 2600 s left, asking for 3000: one fetch, and the upstream's cache answers the same */
	assert_int_equal(request(c, e, 3000, NULL), 0);
	assert_int_equal(F.fetches, 2);
	complete("tok-A", 3600, 0, 0, 0);
	assert_int_equal(F.last.status, 503);
	/* the next 40 get 503 with a Retry-After, no fetch */
	for (int i = 0; i < 40; i++) {
		assert_int_equal(request(c, e, 3000, NULL), 503);
		assert_true(F.last.retry_after >= 1 && F.last.retry_after <= 10);
	}
	assert_int_equal(F.fetches, 2);
	/* the token itself is fine for everyone else */
	assert_int_equal(request(c, e, 0, NULL), 200);
	/* after the interval one more fetch may try */
	advance_to(c, F.now_ms + CACHE_FORCED_INTERVAL_S * 1000);
	assert_int_equal(request(c, e, 3000, NULL), 0);
	assert_int_equal(F.fetches, 3);
	complete("tok-B", 3600, 0, 0, 0);
	assert_int_equal(F.last.status, 200);
	assert_string_equal(F.last_token, "tok-B");
	cache_free(c);
}

/* POST /v1/refresh: joined, deferred and coalesced, never inside a backoff. */
static void
test_forced_refresh_limits(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;
	int64_t ra = 0;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	request(c, e, 0, NULL);
	complete("tok-A", 3600, 0, 0, 0);
	/* right after a fetch: deferred to CACHE_FORCED_INTERVAL_S after it, and coalesced */
	assert_int_equal(cache_refresh(c, e, &ra), -EAGAIN);
	assert_int_equal(ra, CACHE_FORCED_INTERVAL_S);
	advance_to(c, 4000);
	for (int i = 0; i < 30; i++) {
		assert_int_equal(cache_refresh(c, e, &ra), -EAGAIN);
		assert_int_equal(ra, CACHE_FORCED_INTERVAL_S - 4);
	}
	assert_int_equal(F.fetches, 1);
	/* then one fetch for all of them; more requests while it runs join it */
	advance_to(c, CACHE_FORCED_INTERVAL_S * 1000);
	assert_int_equal(F.fetches, 2);
	for (int i = 0; i < 30; i++)
		assert_int_equal(cache_refresh(c, e, &ra), -EALREADY);
	assert_int_equal(F.fetches, 2);
	/* a permanent error: forced refreshes wait for the end of its backoff */
	{
		struct token_result r;
		source_done_fn *done = F.pending[0].done;
		void *arg = F.pending[0].arg;

		token_result_init(&r);
		r.error = -EIO;
		r.http_status = 400;
		r.permanent = true;
		snprintf(r.error_code, sizeof(r.error_code), "invalid_client");
		F.npending = 0;
		done(arg, &r);
		token_result_clear(&r);
	}
	assert_string_equal(F.reason, "forced");
	advance_to(c, F.now_ms + 1000);
	for (int i = 0; i < 30; i++) {
		assert_int_equal(cache_refresh(c, e, &ra), -EAGAIN);
		assert_true(ra >= 28 && ra <= 30);
	}
	assert_int_equal(F.fetches, 2);
	/* the cached token is still served meanwhile */
	assert_int_equal(request(c, e, 0, NULL), 200);
	assert_string_equal(F.last_token, "tok-A");
	/* at the end of the backoff: one fetch, the forced refresh */
	advance_to(c, F.now_ms + ra * 1000);
	assert_int_equal(F.fetches, 3);
	complete("tok-B", 3600, 0, 0, 0);
	assert_string_equal(F.reason, "forced");
	/* long after the last fetch: at once */
	advance_to(c, F.now_ms + CACHE_FORCED_INTERVAL_S * 1000);
	assert_int_equal(cache_refresh(c, e, &ra), 0);
	assert_int_equal(F.fetches, 4);
	cache_free(c);
}

/* The proxy's invalid_token (and CAE) refresh: at most once per token. */
static void
test_refresh_token_once_per_token(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;
	struct cache_status st;
	uint64_t g1, g2, g3;
	int64_t ra = 0;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	request(c, e, 0, NULL);
	complete("tok-1", 3600, 0, 0, 0);
	assert_int_equal(request(c, e, 0, NULL), 200);
	g1 = F.last_gen;
	/* a rejected token is replaced at once, however new; rejections meanwhile join */
	advance_to(c, 1000);
	assert_int_equal(cache_refresh_token(c, e, g1, &ra), 0);
	assert_int_equal(F.fetches, 2);
	for (int i = 0; i < 50; i++)
		assert_int_equal(cache_refresh_token(c, e, g1, &ra), -EALREADY);
	assert_int_equal(F.fetches, 2);
	complete("tok-2", 3600, 0, 0, 0);
	assert_string_equal(F.reason, "forced");
	assert_int_equal(request(c, e, 0, NULL), 200);
	g2 = F.last_gen;
	assert_true(g2 != g1);
	/* the old token, and the token that replaced it, are rejected for good: no fetch */
	advance_to(c, F.now_ms + 100 * 1000);
	for (int i = 0; i < 50; i++) {
		assert_int_equal(cache_refresh_token(c, e, g1, &ra), -ESTALE);
		assert_int_equal(cache_refresh_token(c, e, g2, &ra), -ESTALE);
	}
	assert_int_equal(cache_refresh_token(c, e, 0, &ra), -ESTALE);
	assert_int_equal(F.fetches, 2);
	/* a token from a scheduled refresh may be refreshed once again */
	cache_entry_status(c, e, &st);
	advance_to(c, F.now_ms + st.refresh_in * 1000);
	assert_int_equal(F.fetches, 3);
	complete("tok-3", 3600, 0, 0, 0);
	assert_int_equal(request(c, e, 0, NULL), 200);
	g3 = F.last_gen;
	assert_int_equal(cache_refresh_token(c, e, g3, &ra), 0);
	/* the upstream answers from its own cache: the same token is not refreshed again */
	complete("tok-3", 3600, 0, 0, 0);
	assert_int_equal(request(c, e, 0, NULL), 200);
	assert_int_equal(F.last_gen, g3);
	advance_to(c, F.now_ms + CACHE_FORCED_INTERVAL_S * 1000);
	assert_int_equal(cache_refresh_token(c, e, g3, &ra), -ESTALE);
	assert_int_equal(F.fetches, 4);
	cache_free(c);
}

/* ...and never inside a backoff: deferred to its end, once. */
static void
test_refresh_token_waits_for_backoff(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;
	struct cache_status st;
	int64_t ra = 0;
	uint64_t g;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	request(c, e, 0, NULL);
	complete("tok-1", 3600, 0, 0, 0);
	cache_entry_status(c, e, &st);
	advance_to(c, st.refresh_in * 1000);
	assert_int_equal(request(c, e, 0, NULL), 200);
	g = F.last_gen;
	complete(NULL, 0, 503, 30, 0); /* the scheduled refresh fails: back off 30 s */
	assert_int_equal(request(c, e, 0, NULL), 200);
	assert_int_equal(cache_refresh_token(c, e, g, &ra), -EAGAIN);
	assert_true(ra >= 29 && ra <= 30);
	assert_int_equal(cache_refresh_token(c, e, g, &ra), -ESTALE);
	assert_int_equal(F.fetches, 2);
	advance_to(c, F.now_ms + ra * 1000);
	assert_int_equal(F.fetches, 3);
	complete("tok-2", 3600, 0, 0, 0);
	assert_string_equal(F.reason, "forced");
	cache_free(c);
}

/* Finding 5 of issue 11: configured audiences and refreshes go ahead of new dynamic resources. */
static void
test_fetch_priorities(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *pinned, *dyn;
	struct cache_status st;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "conf", true, &pinned), 0);
	assert_int_equal(cache_entry_get(c, NULL, "id", "dyn", false, &dyn), 0);
	request(c, pinned, 0, NULL);
	request(c, dyn, 0, NULL);
	assert_int_equal(F.pending[0].prio, SOURCE_PRIO_HIGH);
	assert_int_equal(F.pending[1].prio, SOURCE_PRIO_LOW);
	complete("tok-c", 3600, 0, 0, 0);
	complete("tok-d", 3600, 0, 0, 0);
	/* the refresh of a dynamic token callers hold is no longer "new" */
	cache_entry_status(c, dyn, &st);
	advance_to(c, st.refresh_in * 1000);
	assert_int_equal(F.npending, 2);
	assert_int_equal(F.pending[0].prio, SOURCE_PRIO_HIGH);
	assert_int_equal(F.pending[1].prio, SOURCE_PRIO_HIGH);
	cache_free(c);
}

/* A full queue fails a new dynamic request fast, with nothing recorded against the entry. */
static void
test_full_queue_fails_fast(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e, *p;
	struct cache_status st;

	(void)state;
	F.nobufs = 1;
	assert_int_equal(cache_entry_get(c, NULL, "id", "dyn", false, &e), 0);
	assert_int_equal(request(c, e, 0, NULL), 503);
	assert_non_null(strstr(F.last.description, "too many new resources"));
	assert_int_equal(F.last.retry_after, 1);
	assert_int_equal(F.fetches, 0);
	cache_entry_status(c, e, &st);
	assert_int_equal(st.state, CACHE_EMPTY);
	assert_int_equal(st.failures, 0);
	/* a configured audience is not refused */
	assert_int_equal(cache_entry_get(c, NULL, "id", "conf", true, &p), 0);
	assert_int_equal(request(c, p, 0, NULL), 0);
	assert_int_equal(F.fetches, 1);
	/* room again: the next request fetches, no backoff in the way */
	F.nobufs = 0;
	assert_int_equal(request(c, e, 0, NULL), 0);
	assert_int_equal(F.fetches, 2);
	cache_free(c);
}

/* An evicted or dropped entry withdraws its queued fetch instead of leaving it to run. */
static void
test_drop_cancels_queued_fetch(void **state)
{
	struct cache *c = new_cache(300, 900, 1);
	struct cache_entry *a, *b, *x;
	struct cache_waiter *w;

	(void)state;
	F.cancelable = 1;
	assert_int_equal(cache_entry_get(c, NULL, "id", "a", false, &a), 0);
	assert_int_equal(request(c, a, 0, &w), 0);
	cache_waiter_cancel(c, w); /* the client went away: a is evictable */
	assert_int_equal(F.npending, 1);
	/* b needs a's place: a goes, and so does its fetch */
	assert_int_equal(cache_entry_get(c, NULL, "id", "b", false, &b), 0);
	assert_int_equal(F.cancels, 1);
	assert_int_equal(F.npending, 0);
	assert_int_equal(cache_size(c), 1);
	/* a fetch that has left already (cancel says -EBUSY) is ignored when it returns */
	F.cancelable = 0;
	assert_int_equal(request(c, b, 0, &w), 0);
	cache_waiter_cancel(c, w);
	assert_int_equal(cache_entry_get(c, NULL, "id", "x", false, &x), 0);
	assert_int_equal(F.cancels, 2);
	assert_int_equal(F.npending, 1);
	complete("late", 3600, 0, 0, 0); /* frees b (ASan checks) */
	/* a dropped entry's waiters are told, whether or not its fetch was withdrawn */
	F.cancelable = 1;
	F.answers = 0;
	assert_int_equal(request(c, x, 0, NULL), 0);
	cache_entry_drop(c, x);
	assert_int_equal(F.answers, 1);
	assert_int_equal(F.last.status, 503);
	assert_int_equal(F.npending, 0);
	assert_int_equal(cache_size(c), 0);
	cache_free(c);
}

static struct cache *
new_cache_rate(unsigned rate)
{
	struct cache_params p = {.min_validity = 300,
				 .refresh_margin = 900,
				 .idle_timeout = 3600,
				 .wait_timeout_ms = 5000,
				 .max_entries = 1000,
				 .dynamic_rate = rate};
	struct cache *c;

	memset(&F, 0, sizeof(F));
	F.armed_ms = INT64_MAX;
	assert_int_equal(cache_new(&c, &p, &fake_ops, NULL), 0);
	return c;
}

/* New dynamic entries per caller: dynamic_rate per second, bursts of twice that. */
static void
test_dynamic_rate_per_caller(void **state)
{
	struct cache *c = new_cache_rate(2);
	struct cache_entry *e;
	char res[32];
	int ok = 0;

	(void)state;
	for (int i = 0; i < 10; i++) {
		snprintf(res, sizeof(res), "r%d", i);
		if (cache_entry_get_dynamic(c, NULL, "id", res, CACHE_CALLER_UID(1000), &e) == 0)
			ok++;
	}
	assert_int_equal(ok, 4);
	assert_int_equal(cache_entry_get_dynamic(c, NULL, "id", "r9", CACHE_CALLER_UID(1000), &e),
			 -EAGAIN);
	/* what exists is found, whoever asks */
	assert_int_equal(cache_entry_get_dynamic(c, NULL, "id", "r0", CACHE_CALLER_UID(1000), &e),
			 0);
	assert_string_equal(cache_entry_resource(e), "r0");
	/* other callers have their own allowance: another uid, a listener */
	assert_int_equal(cache_entry_get_dynamic(c, NULL, "id", "u", CACHE_CALLER_UID(1001), &e),
			 0);
	assert_int_equal(cache_entry_get_dynamic(c, NULL, "id", "l", CACHE_CALLER_LISTENER(0), &e),
			 0);
	/* it refills at the rate */
	F.now_ms += 499;
	assert_int_equal(cache_entry_get_dynamic(c, NULL, "id", "r9", CACHE_CALLER_UID(1000), &e),
			 -EAGAIN);
	F.now_ms += 1;
	assert_int_equal(cache_entry_get_dynamic(c, NULL, "id", "r9", CACHE_CALLER_UID(1000), &e),
			 0);
	/* many callers: each keeps its own bucket, the table forgets only full ones */
	for (uint32_t uid = 2000; uid < 2200; uid++) {
		snprintf(res, sizeof(res), "x%u", uid);
		assert_int_equal(
		    cache_entry_get_dynamic(c, NULL, "id", res, CACHE_CALLER_UID(uid), &e), 0);
	}
	cache_free(c);
	/* 0: no limit */
	c = new_cache_rate(0);
	for (int i = 0; i < 100; i++) {
		snprintf(res, sizeof(res), "r%d", i);
		assert_int_equal(
		    cache_entry_get_dynamic(c, NULL, "id", res, CACHE_CALLER_UID(1), &e), 0);
	}
	cache_free(c);
}

/* A prefetched 1 h token received at boot-clock 0 (no jitter), refreshes failing from now on. */
static struct cache_entry *
one_token(struct cache *c)
{
	struct cache_entry *e;

	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	cache_entry_prefetch(c, e);
	complete("tok-A", 3600, 0, 0, 0);
	assert_true(cache_entry_ready(c, e));
	return e;
}

/*
 * A suspend: the boot and the wall clock run on together while no timer
 * fires.  The token that ran out meanwhile is not served, and the clock-jump
 * call refreshes at once instead of waiting for the late timer.
 */
static void
test_suspend_expires_token(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e = one_token(c);
	struct cache_status st;

	(void)state;
	F.now_ms += 2 * 3600 * 1000; /* slept two hours; the timer (at 2700 s) never ran */
	assert_false(cache_entry_ready(c, e));
	cache_entry_status(c, e, &st);
	assert_int_equal(st.expires_in, -1);
	cache_clock_jumped(c);
	assert_int_equal(F.npending, 1);
	assert_int_equal(F.fetches, 2);
	assert_string_equal(F.reason, "prefetch"); /* the last report, the new one is in flight */
	/* a request meanwhile waits for the new token: never the old one */
	assert_int_equal(request(c, e, 0, NULL), 0);
	complete("tok-B", 3600, 0, 0, 0);
	assert_int_equal(F.last.status, 200);
	assert_string_equal(F.last_token, "tok-B");
	assert_int_equal(F.last.expires_in, 3600);
	cache_free(c);
}

/* A request that finds the cache's deadline long past has the loop run it (a timer slept). */
static void
test_late_timer_rearmed_by_request(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e = one_token(c);

	(void)state;
	assert_int_equal(F.armed_ms, 2700 * 1000);
	F.now_ms = 2705 * 1000; /* 5 s past it, and the timer has not fired */
	assert_int_equal(request(c, e, 0, NULL), 200);
	assert_string_equal(F.last_token, "tok-A");
	assert_int_equal(F.armed_ms, F.now_ms);
	/* a timer merely due now is left to fire by itself */
	cache_run(c);
	complete("tok-B", 3600, 0, 0, 0);
	F.armed_ms = F.now_ms + 10;
	F.now_ms += 500;
	assert_int_equal(request(c, e, 0, NULL), 200);
	assert_int_equal(F.armed_ms, F.now_ms - 490);
	cache_free(c);
}

/*
 * The wall clock stepped ahead past the token's expiry, the boot clock not:
 * every hand-out refuses the token (a new one is fetched), readiness sees
 * it, and the token is gone from status.
 */
static void
test_wall_forward_refuses_token(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e = one_token(c);
	struct cache_status st;

	(void)state;
	advance_to(c, 600 * 1000);
	assert_int_equal(request(c, e, 0, NULL), 200);
	assert_int_equal(F.last.expires_in, 3000);
	F.wall_step_ms = 7200 * 1000;
	assert_false(cache_entry_ready(c, e));
	assert_true(cache_entry_was_ready(e));
	cache_entry_status(c, e, &st);
	assert_int_equal(st.expires_in, -1);
	assert_int_not_equal(st.state, CACHE_VALID);
	assert_int_equal(request(c, e, 0, NULL), 0);
	assert_int_equal(F.fetches, 2);
	assert_string_equal(F.last_token, "tok-A"); /* nothing new was answered */
	complete("tok-B", 3600, 0, 0, 0);
	assert_int_equal(F.last.status, 200);
	assert_string_equal(F.last_token, "tok-B");
	/* the new token's wall-clock expiry is from the stepped clock */
	assert_int_equal(request(c, e, 0, NULL), 200);
	assert_int_equal(F.last.expires_in, 3600);
	cache_free(c);
}

/* The same token refused by the wall clock alone at its edge: min_validity counts on it too. */
static void
test_wall_forward_min_validity(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e = one_token(c);

	(void)state;
	advance_to(c, 600 * 1000);
	F.wall_step_ms = 2699 * 1000; /* 301 s left on the wall clock, 3000 s on the boot clock */
	assert_int_equal(request(c, e, 0, NULL), 200);
	assert_int_equal(F.last.expires_in, 301);
	F.wall_step_ms += 1000; /* 300 s: not more than min_validity */
	assert_int_equal(request(c, e, 0, NULL), 0);
	assert_int_equal(F.fetches, 2);
	cache_free(c);
}

/*
 * A forward step that cuts a lifetime short, still valid: the jump call
 * plans the refresh from what is left (1500 s after the step, not 2100 s).
 */
static void
test_wall_forward_replans_refresh(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e = one_token(c);
	struct cache_status st;

	(void)state;
	advance_to(c, 600 * 1000);
	cache_entry_status(c, e, &st);
	assert_int_equal(st.refresh_in, 2100);
	F.wall_step_ms = 600 * 1000; /* 2400 s left on the wall clock */
	cache_clock_jumped(c);
	cache_entry_status(c, e, &st);
	assert_int_equal(st.expires_in, 2400);
	assert_int_equal(st.refresh_in, 1500);
	assert_int_equal(F.armed_ms, (600 + 1500) * 1000);
	advance_to(c, 2100 * 1000 - 1);
	assert_int_equal(F.fetches, 1);
	advance_to(c, 2100 * 1000);
	assert_int_equal(F.fetches, 2);
	cache_free(c);
}

/*
 * The wall clock stepped back an hour (NTP): the token still ends at its
 * boot-clock expiry, and expires_on, which clients judge by, follows.
 */
static void
test_wall_backward_never_stretches(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e = one_token(c);
	struct cache_answer a;
	struct cache_waiter *w;
	int64_t t, served_until = 0;
	uint64_t gen;

	(void)state;
	advance_to(c, 600 * 1000);
	assert_int_equal(cache_request(c, e, 0, on_answer, NULL, &a, &w), 0);
	gen = a.token->generation;
	assert_int_equal(a.token->expires_on, WALL_EPOCH_MS / 1000 + 3600);
	F.wall_step_ms = -3600 * 1000;
	assert_int_equal(request(c, e, 0, NULL), 200);
	assert_int_equal(F.last.expires_in, 3000);
	cache_clock_jumped(c);
	assert_int_equal(cache_request(c, e, 0, on_answer, NULL, &a, &w), 0);
	assert_int_equal(a.token->expires_on, WALL_EPOCH_MS / 1000 - 3600 + 3600);
	assert_int_not_equal(a.token->generation, gen);
	/* the upstream fails from now on: served until the boot clock says so, not an hour more */
	for (t = 601; t < 2 * 3600; t++) {
		advance_to(c, t * 1000);
		while (F.npending > 0)
			complete(NULL, 0, 500, -1, 0);
		if (request(c, e, 0, NULL) == 200)
			served_until = t;
	}
	assert_int_equal(served_until, 3600 - 300 - 1);
	cache_free(c);
}

/* Readiness latches on the entry: once it held a valid token, losing it does not undo that. */
static void
test_was_ready_latches(void **state)
{
	struct cache *c = new_cache(300, 900, 10);
	struct cache_entry *e;

	(void)state;
	assert_int_equal(cache_entry_get(c, NULL, "id", "res", true, &e), 0);
	cache_entry_prefetch(c, e);
	complete(NULL, 0, 500, -1, 0);
	assert_false(cache_entry_was_ready(e));
	advance_to(c, F.armed_ms);
	complete("tok-A", 3600, 0, 0, 0);
	assert_true(cache_entry_was_ready(e));
	for (int64_t t = 0; t < 2 * 3600 * 1000; t += 1000) {
		advance_to(c, F.now_ms + 1000);
		while (F.npending > 0)
			complete(NULL, 0, 500, -1, 0);
	}
	assert_false(cache_entry_ready(c, e));
	assert_true(cache_entry_was_ready(e));
	cache_free(c);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_refresh_times),
	    cmocka_unit_test(test_jitter_bounds),
	    cmocka_unit_test(test_single_flight),
	    cmocka_unit_test(test_min_validity_request),
	    cmocka_unit_test(test_outage_serves_last_good_then_503),
	    cmocka_unit_test(test_backoff_sequence_and_fail_fast),
	    cmocka_unit_test(test_retry_after_honoured),
	    cmocka_unit_test(test_permanent_error_waits_30s),
	    cmocka_unit_test(test_same_token_does_not_loop),
	    cmocka_unit_test(test_wait_timeout_504),
	    cmocka_unit_test(test_cancelled_waiter_not_called),
	    cmocka_unit_test(test_sync_fetch_failure),
	    cmocka_unit_test(test_idle_eviction),
	    cmocka_unit_test(test_prefetch_keeps_fresh),
	    cmocka_unit_test(test_lru_bound),
	    cmocka_unit_test(test_lru_full_of_waiters),
	    cmocka_unit_test(test_drop_in_flight),
	    cmocka_unit_test(test_too_short_lifetime_is_failure),
	    cmocka_unit_test(test_fetch_reports),
	    cmocka_unit_test(test_min_validity_beyond_lifetime_no_fetch),
	    cmocka_unit_test(test_min_validity_fetches_are_rate_limited),
	    cmocka_unit_test(test_forced_refresh_limits),
	    cmocka_unit_test(test_refresh_token_once_per_token),
	    cmocka_unit_test(test_refresh_token_waits_for_backoff),
	    cmocka_unit_test(test_fetch_priorities),
	    cmocka_unit_test(test_full_queue_fails_fast),
	    cmocka_unit_test(test_drop_cancels_queued_fetch),
	    cmocka_unit_test(test_dynamic_rate_per_caller),
	    cmocka_unit_test(test_suspend_expires_token),
	    cmocka_unit_test(test_late_timer_rearmed_by_request),
	    cmocka_unit_test(test_wall_forward_refuses_token),
	    cmocka_unit_test(test_wall_forward_min_validity),
	    cmocka_unit_test(test_wall_forward_replans_refresh),
	    cmocka_unit_test(test_wall_backward_never_stretches),
	    cmocka_unit_test(test_was_ready_latches),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
