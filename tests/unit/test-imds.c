/*
 * Unit tests for the Azure managed-identity sources (source_imds.c,
 * source_appservice.c and their shared source_azure.c): the request limiter,
 * the 410 retry schedule, selectors and URL encoding, and the constructors
 * fed a hand-built config_identity.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>

#include "config.h"
#include "fetch.h"
#include "source.h"
#include "source_azure.h"
#include "urlencode.h"
#include "token.h"

/* Limiter */

static void
test_limiter_concurrency(void **state)
{
	struct azure_limiter l;

	(void)state;
	azure_limiter_init(&l, 5, 20, 1000);
	for (int i = 0; i < 5; i++)
		assert_int_equal(azure_limiter_acquire(&l, 0), 0);
	/* the sixth waits for a release, however much time passes */
	assert_int_equal(azure_limiter_acquire(&l, 0), -1);
	assert_int_equal(azure_limiter_acquire(&l, 5000), -1);
	azure_limiter_release(&l);
	assert_int_equal(azure_limiter_acquire(&l, 5000), 0);
	assert_int_equal(azure_limiter_acquire(&l, 5000), -1);
}

static void
test_limiter_rate_sliding_window(void **state)
{
	struct azure_limiter l;

	(void)state;
	azure_limiter_init(&l, 100, 20, 1000);
	/* 20 at once, as the burst allows */
	for (int i = 0; i < 20; i++) {
		assert_int_equal(azure_limiter_acquire(&l, 0), 0);
		azure_limiter_release(&l);
	}
	/* the 21st waits until the first start leaves the window */
	assert_int_equal(azure_limiter_acquire(&l, 0), 1000);
	assert_int_equal(azure_limiter_acquire(&l, 400), 600);
	/* at 1000 every start at 0 has left the window: 20 more, then a wait again */
	for (int i = 0; i < 20; i++) {
		assert_int_equal(azure_limiter_acquire(&l, 1000), 0);
		azure_limiter_release(&l);
	}
	assert_int_equal(azure_limiter_acquire(&l, 1500), 500);
}

/* Whatever the arrival pattern, no window of window_ms holds more than the limit. */
static void
test_limiter_never_exceeds_rate(void **state)
{
	struct azure_limiter l;
	int64_t starts[400];
	int n = 0;
	int64_t t = 0;

	(void)state;
	azure_limiter_init(&l, 1000, 20, 1000);
	while (n < 400) {
		int64_t w = azure_limiter_acquire(&l, t);

		if (w == 0) {
			starts[n++] = t;
			azure_limiter_release(&l);
		} else {
			assert_true(w > 0);
			t += (n % 3 == 0) ? w : 1; /* sometimes early, sometimes exactly on time */
		}
	}
	for (int i = 0; i < n; i++) {
		int in = 0;

		for (int j = i; j < n && starts[j] < starts[i] + 1000; j++)
			in++;
		assert_true(in <= 20);
	}
	/* and it does not under-use the budget: 400 starts take about 19 s */
	assert_true(starts[n - 1] <= 19 * 1000 + 20);
}

static void
test_limiter_pause(void **state)
{
	struct azure_limiter l;

	(void)state;
	azure_limiter_init(&l, 5, 20, 1000);
	azure_limiter_pause(&l, 3000);
	assert_int_equal(azure_limiter_acquire(&l, 0), 3000);
	assert_int_equal(azure_limiter_acquire(&l, 2500), 500);
	/* an earlier pause does not shorten a later one */
	azure_limiter_pause(&l, 1000);
	assert_int_equal(azure_limiter_acquire(&l, 2999), 1);
	assert_int_equal(azure_limiter_acquire(&l, 3000), 0);
}

static void
test_limiter_bounds(void **state)
{
	struct azure_limiter l;

	(void)state;
	/* zero limits mean one, and the ring bound holds */
	azure_limiter_init(&l, 0, 0, 0);
	assert_int_equal(azure_limiter_acquire(&l, 0), 0);
	assert_int_equal(azure_limiter_acquire(&l, 0), -1);
	azure_limiter_init(&l, 1000, 100000, 1000);
	assert_int_equal(l.max_per_window, AZURE_LIMITER_MAX);
	for (int i = 0; i < AZURE_LIMITER_MAX; i++)
		assert_int_equal(azure_limiter_acquire(&l, 0), 0);
	assert_true(azure_limiter_acquire(&l, 0) > 0);
	/* a release without an acquire does not wrap the count */
	azure_limiter_init(&l, 1, 1, 1000);
	azure_limiter_release(&l);
	assert_int_equal(l.in_flight, 0);
}

/* 410 schedule */

/* Low-priority requests leave slots and window starts to the others. */
static void
test_limiter_reserve(void **state)
{
	struct azure_limiter l;

	(void)state;
	azure_limiter_init(&l, 5, 20, 1000);
	for (int i = 0; i < 4; i++)
		assert_int_equal(azure_limiter_acquire_reserve(&l, 0, 1, 2), 0);
	/* the fifth slot is not for them, but for anyone else */
	assert_int_equal(azure_limiter_acquire_reserve(&l, 0, 1, 2), -1);
	assert_int_equal(azure_limiter_acquire(&l, 0), 0);
	for (int i = 0; i < 5; i++)
		azure_limiter_release(&l);
	/* 18 of 20 starts per window for them, then 2 for the others */
	for (int i = 5; i < 18; i++) {
		assert_int_equal(azure_limiter_acquire_reserve(&l, 0, 1, 2), 0);
		azure_limiter_release(&l);
	}
	assert_int_equal(azure_limiter_acquire_reserve(&l, 10, 1, 2), 990);
	assert_int_equal(azure_limiter_acquire(&l, 10), 0);
	azure_limiter_release(&l);
	assert_int_equal(azure_limiter_acquire(&l, 10), 0);
	azure_limiter_release(&l);
	assert_int_equal(azure_limiter_acquire(&l, 10), 990);
	/* a reserve as large as the limit still leaves one */
	azure_limiter_init(&l, 1, 1, 1000);
	assert_int_equal(azure_limiter_acquire_reserve(&l, 0, 5, 5), 0);
}

static void
test_gone_schedule_covers_70_seconds(void **state)
{
	int64_t elapsed = 0, d;
	int attempt = 0;

	(void)state;
	assert_int_equal(azure_gone_delay(0, 0, -1), 1000);
	assert_int_equal(azure_gone_delay(1, 1000, -1), 2000);
	assert_int_equal(azure_gone_delay(2, 3000, -1), 4000);
	assert_int_equal(azure_gone_delay(3, 7000, -1), 8000);
	assert_int_equal(azure_gone_delay(4, 15000, -1), 10000);
	assert_int_equal(azure_gone_delay(9, 65000, -1), 10000);
	while ((d = azure_gone_delay(attempt, elapsed, -1)) >= 0) {
		assert_true(d >= 1000 && d <= 10000);
		elapsed += d;
		attempt++;
		assert_true(attempt < 100);
	}
	/* tried for at least 70 s, with a bounded number of requests */
	assert_true(elapsed >= AZURE_GONE_BUDGET_MS);
	assert_true(attempt <= 12);
}

static void
test_gone_schedule_honours_retry_after(void **state)
{
	(void)state;
	assert_int_equal(azure_gone_delay(0, 0, 5), 5000);
	/* a smaller Retry-After does not shorten the schedule */
	assert_int_equal(azure_gone_delay(3, 7000, 1), 8000);
	/* an absurd one is bounded */
	assert_int_equal(azure_gone_delay(0, 0, 100000), 60000);
	assert_int_equal(azure_gone_delay(0, 70000, 5), -1);
	assert_int_equal(azure_gone_delay(-1, 0, -1), -1);
}

/* Selectors and URLs */

static void
test_url_encode(void **state)
{
	char *s;

	(void)state;
	s = url_encode("api://a b/c?d=e&f~._-", strlen("api://a b/c?d=e&f~._-"), 0);
	assert_string_equal(s, "api%3A%2F%2Fa%20b%2Fc%3Fd%3De%26f~._-");
	free(s);
	s = url_encode("\xff\n", 2, 0);
	assert_string_equal(s, "%FF%0A");
	free(s);
	s = url_encode("a b\xff", 4, URLENC_LOWER | URLENC_PLUS);
	assert_string_equal(s, "a+b%ff");
	free(s);
}

static void
test_selector(void **state)
{
	static const char *const names[] = {"client_id", "principal_id", "mi_res_id"};
	const char *none[] = {NULL, NULL, NULL};
	const char *one[] = {NULL, NULL, "/subscriptions/s/x y"};
	const char *two[] = {"a", "b", NULL};
	const char *empty[] = {"", NULL, NULL};
	char *long_value = malloc(AZURE_MAX_RESOURCE + 2);
	const char *too_long[] = {long_value, NULL, NULL};
	char *sel = NULL;

	(void)state;
	assert_non_null(long_value);
	memset(long_value, 'a', AZURE_MAX_RESOURCE + 1);
	long_value[AZURE_MAX_RESOURCE + 1] = '\0';
	assert_int_equal(azure_selector(&sel, names, none, 3), 0);
	assert_string_equal(sel, "");
	free(sel);
	assert_int_equal(azure_selector(&sel, names, one, 3), 0);
	assert_string_equal(sel, "&mi_res_id=%2Fsubscriptions%2Fs%2Fx%20y");
	free(sel);
	sel = NULL;
	assert_int_equal(azure_selector(&sel, names, two, 3), -EINVAL);
	assert_int_equal(azure_selector(&sel, names, empty, 3), -EINVAL);
	assert_int_equal(azure_selector(&sel, names, too_long, 3), -EINVAL);
	assert_null(sel);
	free(long_value);
}

/* Answers */

static void
map(long status, const char *body, int64_t retry_after, struct token_result *r)
{
	struct fetch_response resp = {
	    .status = status,
	    .body = body,
	    .body_len = body != NULL ? strlen(body) : 0,
	    .retry_after = retry_after,
	};

	token_result_init(r);
	azure_result_from_response(&resp, r);
}

static void
test_result_token(void **state)
{
	struct token_result r;

	(void)state;
	/* IMDS: every field a string */
	map(200,
	    "{\"access_token\":\"eyJ.a.b\",\"expires_in\":\"3599\",\"expires_on\":\"1506484173\","
	    "\"resource\":\"api://x\",\"token_type\":\"Bearer\"}",
	    -1, &r);
	assert_int_equal(r.error, 0);
	assert_string_equal(r.access_token, "eyJ.a.b");
	assert_int_equal(r.expires_in, 3599);
	assert_int_equal(r.http_status, 200);
	token_result_clear(&r);
	/* App Service: expires_on only */
	{
		char body[256];

		snprintf(body, sizeof(body),
			 "{\"access_token\":\"eyJ.c.d\",\"expires_on\":\"%lld\",\"resource\":\"r\","
			 "\"token_type\":\"Bearer\",\"client_id\":\"c\"}",
			 (long long)time(NULL) + 3000);
		map(200, body, -1, &r);
		assert_int_equal(r.error, 0);
		assert_true(r.expires_in > 2990 && r.expires_in <= 3000);
		token_result_clear(&r);
	}
}

static void
test_result_permanent(void **state)
{
	struct token_result r;

	(void)state;
	map(400, "{\"error\":\"invalid_request\",\"error_description\":\"Identity not found\"}", -1,
	    &r);
	assert_true(r.error < 0);
	assert_true(r.permanent);
	assert_int_equal(r.http_status, 400);
	assert_int_equal(r.retry_after, 60);
	assert_string_equal(r.error_code, "invalid_request");
	assert_non_null(strstr(r.message, "Identity not found"));
	assert_null(r.access_token);
	token_result_clear(&r);
	/* App Service's own error shape */
	map(401,
	    "{\"statusCode\":401,\"message\":\"Unauthorized\\r\\nbad header\","
	    "\"correlationId\":\"abc-123\"}",
	    -1, &r);
	assert_true(r.permanent);
	assert_string_equal(r.message, "Unauthorized  bad header correlation_id=abc-123");
	token_result_clear(&r);
	/* a longer Retry-After is kept */
	map(403, "{}", 300, &r);
	assert_true(r.permanent);
	assert_int_equal(r.retry_after, 300);
	assert_string_equal(r.error_code, "http_error");
	assert_string_equal(r.message, "upstream answered HTTP 403");
	token_result_clear(&r);
}

static void
test_result_transient(void **state)
{
	static const long later[] = {404, 408, 410, 429, 500, 502, 503, 504};
	struct token_result r;

	(void)state;
	for (size_t i = 0; i < sizeof(later) / sizeof(later[0]); i++) {
		map(later[i], "<html>busy</html>", -1, &r);
		assert_true(r.error < 0);
		assert_false(r.permanent);
		assert_int_equal(r.http_status, later[i]);
		/* 429 and 5xx: at least a second, as IMDS asks */
		assert_int_equal(r.retry_after, later[i] >= 429 ? 1 : -1);
		token_result_clear(&r);
	}
	map(429, "{\"error\":\"too_many_requests\"}", 7, &r);
	assert_int_equal(r.retry_after, 7);
	token_result_clear(&r);
	/* a 200 that is not a token */
	map(200, "{\"expires_in\":\"3599\"}", -1, &r);
	assert_true(r.error < 0);
	assert_string_equal(r.error_code, "invalid_response");
	token_result_clear(&r);
}

static void
test_result_transport(void **state)
{
	struct fetch_response resp = {.error = -ECONNREFUSED, .message = "Connection refused"};
	struct token_result r;

	(void)state;
	token_result_init(&r);
	azure_result_from_response(&resp, &r);
	assert_int_equal(r.error, -ECONNREFUSED);
	assert_int_equal(r.http_status, 0);
	assert_string_equal(r.error_code, "upstream_unreachable");
	assert_non_null(strstr(r.message, "Connection refused"));
	token_result_clear(&r);
	resp.error = -EFBIG;
	azure_result_from_response(&resp, &r);
	assert_string_equal(r.error_code, "invalid_response");
	token_result_clear(&r);
}

/* Sources with hand-built identities, on a real loop */

struct loop {
	struct event_base *base;
	struct fetch *fetch;
};

static int
loop_setup(void **state)
{
	struct loop *l = calloc(1, sizeof(*l));

	assert_non_null(l);
	l->base = event_base_new();
	assert_non_null(l->base);
	assert_int_equal(fetch_new(&l->fetch, l->base), 0);
	unsetenv("IDENTITY_ENDPOINT");
	unsetenv("IDENTITY_HEADER");
	*state = l;
	return 0;
}

static int
loop_teardown(void **state)
{
	struct loop *l = *state;

	fetch_free(l->fetch);
	event_base_free(l->base);
	free(l);
	return 0;
}

/* The queue, against a closed port on loopback: every fetch ends quickly in an error. */

struct done_count {
	int calls;
	int unreachable;
};

static void
count_done(void *arg, struct token_result *r)
{
	struct done_count *c = arg;

	c->calls++;
	if (r->error < 0 && strcmp(r->error_code, "upstream_unreachable") == 0)
		c->unreachable++;
}

/* Runs the loop until cond holds or 10 s pass. */
static void
run_until(struct event_base *base, bool (*cond)(void *), void *arg)
{
	for (int i = 0; i < 1000 && !cond(arg); i++) {
		struct timeval tv = {0, 10000};

		event_base_loopexit(base, &tv);
		event_base_dispatch(base);
	}
}

static bool
all_done(void *arg)
{
	return ((struct done_count *)arg)->calls == 8;
}

static bool
fetch_idle(void *arg)
{
	return fetch_in_flight(arg) == 0;
}

static struct source *
closed_port_source(struct loop *l, struct config_identity *id)
{
	static char endpoint[] = "http://127.0.0.1:9/metadata/identity/oauth2/token";
	struct source *s = NULL;

	*id = (struct config_identity){
	    .name = "vm", .source = CONFIG_SOURCE_AZURE_IMDS, .endpoint = endpoint};
	assert_int_equal(source_new(&s, id, l->base, l->fetch), 0);
	return s;
}

static void
test_queue_never_drops(void **state)
{
	struct loop *l = *state;
	struct config_identity id;
	struct source *s = closed_port_source(l, &id);
	struct done_count c = {0};
	char res[32];

	for (int i = 0; i < 8; i++) {
		snprintf(res, sizeof(res), "api://r%d", i);
		assert_int_equal(source_fetch(s, res, count_done, &c), 0);
	}
	/* five go out at once, three wait; none answered from inside source_fetch */
	assert_int_equal(fetch_in_flight(l->fetch), AZURE_MAX_CONCURRENT);
	assert_int_equal(c.calls, 0);
	run_until(l->base, all_done, &c);
	assert_int_equal(c.calls, 8);
	assert_int_equal(c.unreachable, 8);
	source_free(s);
}

static void
test_queue_freed_with_the_source(void **state)
{
	struct loop *l = *state;
	struct config_identity id;
	struct source *s = closed_port_source(l, &id);
	struct done_count c = {0};
	char res[32];

	for (int i = 0; i < 8; i++) {
		snprintf(res, sizeof(res), "api://r%d", i);
		assert_int_equal(source_fetch(s, res, count_done, &c), 0);
	}
	/* queued requests are freed now, those in flight when fetch returns; nobody is told */
	source_free(s);
	run_until(l->base, fetch_idle, l->fetch);
	assert_int_equal(fetch_in_flight(l->fetch), 0);
	assert_int_equal(c.calls, 0);
}

/*
 * A loopback server that holds every request until the test answers it, and
 * notes the order in which resources arrive: the order the queue sent them.
 */
#define HELD_MAX 96

struct held_server {
	struct evconnlistener *lis;
	unsigned port;
	struct bufferevent *conn[HELD_MAX]; /* by arrival of their request */
	char resource[HELD_MAX][32];
	int n, answered;
	struct bufferevent *accepted[HELD_MAX];
	int n_accepted;
};

static void
held_read(struct bufferevent *bev, void *arg)
{
	struct held_server *h = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
	char line[512], *r, *stop;
	size_t n;

	if (end.pos < 0 || h->n == HELD_MAX)
		return;
	n = evbuffer_copyout(in, line, sizeof(line) - 1);
	line[n] = '\0';
	evbuffer_drain(in, evbuffer_get_length(in));
	r = strstr(line, "resource=");
	assert_non_null(r);
	r += 9;
	stop = r + strcspn(r, "& ");
	*stop = '\0';
	snprintf(h->resource[h->n], sizeof(h->resource[0]), "%s", r);
	h->conn[h->n++] = bev;
}

static void
held_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
	struct held_server *h = arg;
	struct bufferevent *bev =
	    bufferevent_socket_new(evconnlistener_get_base(lis), fd, BEV_OPT_CLOSE_ON_FREE);

	(void)sa;
	(void)len;
	assert_non_null(bev);
	assert_true(h->n_accepted < HELD_MAX);
	h->accepted[h->n_accepted++] = bev;
	bufferevent_setcb(bev, held_read, NULL, NULL, h);
	bufferevent_enable(bev, EV_READ);
}

static void
held_start(struct held_server *h, struct event_base *base)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sin);

	memset(h, 0, sizeof(*h));
	h->lis = evconnlistener_new_bind(base, held_accept, h, LEV_OPT_CLOSE_ON_FREE, 128,
					 (struct sockaddr *)&sin, sizeof(sin));
	assert_non_null(h->lis);
	assert_int_equal(getsockname(evconnlistener_get_fd(h->lis), (struct sockaddr *)&sin, &len),
			 0);
	h->port = ntohs(sin.sin_port);
}

/* Answers the oldest request not answered yet with a 500 (the fetch fails at once). */
static void
held_answer(struct held_server *h)
{
	static const char reply[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n"
				    "Connection: close\r\n\r\n{}";

	assert_true(h->answered < h->n);
	bufferevent_write(h->conn[h->answered++], reply, sizeof(reply) - 1);
}

static void
held_stop(struct held_server *h)
{
	for (int i = 0; i < h->n_accepted; i++)
		bufferevent_free(h->accepted[i]);
	evconnlistener_free(h->lis);
}

struct held_wait {
	struct held_server *h;
	int n;
};

static bool
held_has(void *arg)
{
	struct held_wait *w = arg;

	return w->h->n >= w->n;
}

/* Runs the loop until the server has seen n requests (or 10 s pass). */
static void
held_wait_for(struct event_base *base, struct held_server *h, int n)
{
	struct held_wait w = {h, n};

	run_until(base, held_has, &w);
	assert_int_equal(h->n, n);
}

/* Runs the loop a little while, for things that must not happen. */
static void
run_a_while(struct event_base *base)
{
	for (int i = 0; i < 20; i++) {
		struct timeval tv = {0, 10000};

		event_base_loopexit(base, &tv);
		event_base_dispatch(base);
	}
}

struct named_done {
	int calls;
};

static void
named_done(void *arg, struct token_result *r)
{
	struct named_done *d = arg;

	(void)r;
	d->calls++;
}

/*
 * Finding 5 of issue 11: configured audiences go ahead of new dynamic
 * resources, which leave a slot free, wait in a bounded queue, and can be
 * withdrawn.
 */
static void
test_queue_priorities(void **state)
{
	struct loop *l = *state;
	struct held_server h;
	struct config_identity id;
	struct source *s = NULL;
	struct named_done d = {0}, b = {0}, lowq[SOURCE_MAX_QUEUED_LOW] = {{0}};
	char endpoint[128], res[32];

	held_start(&h, l->base);
	snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%u/metadata/identity/oauth2/token",
		 h.port);
	id = (struct config_identity){
	    .name = "vm", .source = CONFIG_SOURCE_AZURE_IMDS, .endpoint = endpoint, .timeout = 60};
	assert_int_equal(source_new(&s, &id, l->base, l->fetch), 0);
	/* five configured audiences take every slot */
	for (int i = 0; i < AZURE_MAX_CONCURRENT; i++) {
		snprintf(res, sizeof(res), "h%d", i);
		assert_int_equal(source_fetch_prio(s, res, SOURCE_PRIO_HIGH, named_done, &d), 0);
	}
	held_wait_for(l->base, &h, AZURE_MAX_CONCURRENT);
	/* two new dynamic resources, then another configured audience, wait */
	assert_int_equal(source_fetch_prio(s, "lowA", SOURCE_PRIO_LOW, named_done, &d), 0);
	assert_int_equal(source_fetch_prio(s, "lowB", SOURCE_PRIO_LOW, named_done, &b), 0);
	assert_int_equal(source_fetch_prio(s, "highC", SOURCE_PRIO_HIGH, named_done, &d), 0);
	run_a_while(l->base);
	assert_int_equal(h.n, AZURE_MAX_CONCURRENT);
	/* a slot frees: the configured one goes first, though it came last */
	held_answer(&h);
	held_wait_for(l->base, &h, AZURE_MAX_CONCURRENT + 1);
	assert_string_equal(h.resource[AZURE_MAX_CONCURRENT], "highC");
	/* another: a low one would take the last slot, which it leaves to the others */
	held_answer(&h);
	run_a_while(l->base);
	assert_int_equal(h.n, AZURE_MAX_CONCURRENT + 1);
	assert_int_equal(d.calls, 2);
	held_answer(&h);
	held_wait_for(l->base, &h, AZURE_MAX_CONCURRENT + 2);
	assert_string_equal(h.resource[AZURE_MAX_CONCURRENT + 1], "lowA");
	/* lowB is withdrawn: never sent, never answered; one that has left cannot be */
	assert_int_equal(source_cancel(s, named_done, &b), 0);
	assert_int_equal(source_cancel(s, named_done, &d), -EBUSY);
	/* the queue of low ones is bounded; configured audiences are not turned away */
	for (int i = 0; i < SOURCE_MAX_QUEUED_LOW; i++) {
		snprintf(res, sizeof(res), "q%d", i);
		assert_int_equal(source_fetch_prio(s, res, SOURCE_PRIO_LOW, named_done, &lowq[i]),
				 0);
	}
	assert_int_equal(source_fetch_prio(s, "over", SOURCE_PRIO_LOW, named_done, &d), -ENOBUFS);
	assert_int_equal(source_cancel(s, named_done, &lowq[5]), 0);
	assert_int_equal(source_cancel(s, named_done, &lowq[5]), -ENOENT);
	assert_int_equal(source_fetch_prio(s, "again", SOURCE_PRIO_LOW, named_done, &lowq[5]), 0);
	assert_int_equal(source_fetch_prio(s, "highD", SOURCE_PRIO_HIGH, named_done, &d), 0);
	held_answer(&h);
	held_wait_for(l->base, &h, AZURE_MAX_CONCURRENT + 3);
	assert_string_equal(h.resource[AZURE_MAX_CONCURRENT + 2], "highD");
	/* every low one waiting is freed with the source, untold (ASan checks the rest) */
	source_free(s);
	held_stop(&h);
	run_until(l->base, fetch_idle, l->fetch);
	for (int i = 0; i < SOURCE_MAX_QUEUED_LOW; i++)
		assert_int_equal(lowq[i].calls, 0);
	assert_int_equal(b.calls, 0);
	for (int i = 0; i < h.n; i++)
		assert_string_not_equal(h.resource[i], "lowB");
}

static void
test_imds_new(void **state)
{
	struct loop *l = *state;
	struct config_identity id = {.name = "vm", .source = CONFIG_SOURCE_AZURE_IMDS};
	struct source *s = NULL;
	char endpoint[] = "http://127.0.0.1:9/metadata/identity/oauth2/token";
	char cid[] = "c", oid[] = "o";

	/* no endpoint: config.c always fills one, a source without is a bug */
	assert_int_equal(source_new(&s, &id, l->base, l->fetch), -EINVAL);
	id.endpoint = endpoint;
	id.client_id = cid;
	id.object_id = oid;
	assert_int_equal(source_new(&s, &id, l->base, l->fetch), -EINVAL);
	id.object_id = NULL;
	assert_int_equal(source_new(&s, &id, l->base, l->fetch), 0);
	assert_string_equal(source_kind(s), "azure-imds");
	/* everything was copied: the identity may go away (a reload frees it) */
	memset(endpoint, 'x', sizeof(endpoint) - 1);
	assert_int_equal(source_fetch(s, "", NULL, NULL), -EINVAL);
	source_free(s);
}

static void
write_secret(const char *path, const char *content, mode_t mode)
{
	FILE *f;

	unlink(path);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(content, f);
	fclose(f);
	assert_int_equal(chmod(path, mode), 0);
}

static void
test_appservice_new(void **state)
{
	struct loop *l = *state;
	struct config_identity id = {.name = "app", .source = CONFIG_SOURCE_AZURE_APPSERVICE};
	struct source *s = NULL;
	char endpoint[] = "http://127.0.0.1:9/msi/token";
	char dir[] = "/tmp/test-imds-XXXXXX";
	char path[64], cid[] = "c", pid[] = "p";

	/* neither endpoint nor $IDENTITY_ENDPOINT */
	assert_int_equal(source_new(&s, &id, l->base, l->fetch), -EINVAL);
	/* an endpoint but no secret anywhere */
	id.endpoint = endpoint;
	assert_int_equal(source_new(&s, &id, l->base, l->fetch), -EINVAL);
	/* the secret from the environment */
	setenv("IDENTITY_HEADER", "s3cret", 1);
	assert_int_equal(source_new(&s, &id, l->base, l->fetch), 0);
	assert_string_equal(source_kind(s), "azure-appservice");
	s = source_free(s);
	/* one that would split the header line is refused */
	setenv("IDENTITY_HEADER", "a\r\nX-Evil: 1", 1);
	assert_int_equal(source_new(&s, &id, l->base, l->fetch), -EILSEQ);
	unsetenv("IDENTITY_HEADER");
	/* selectors are exclusive */
	id.client_id = cid;
	id.principal_id = pid;
	setenv("IDENTITY_HEADER", "s3cret", 1);
	assert_int_equal(source_new(&s, &id, l->base, l->fetch), -EINVAL);
	unsetenv("IDENTITY_HEADER");
	id.principal_id = NULL;
	/* the secret file is checked at construction */
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/identity-header", dir);
	id.identity_header_file = path;
	assert_true(source_new(&s, &id, l->base, l->fetch) < 0); /* missing */
	write_secret(path, "", 0600);
	assert_true(source_new(&s, &id, l->base, l->fetch) < 0); /* empty */
	write_secret(path, "s3cret\n", 0644);
	assert_true(source_new(&s, &id, l->base, l->fetch) < 0); /* others may read it */
	write_secret(path, "s3cret\n", 0620);
	assert_true(source_new(&s, &id, l->base, l->fetch) < 0); /* its group may write it */
	write_secret(path, "s3cret\n", 0600);
	assert_int_equal(source_new(&s, &id, l->base, l->fetch), 0);
	source_free(s);
	unlink(path);
	rmdir(dir);
}

/*
 * The loop field: one random value per process, 32 hex digits, the same on
 * every call; only that value is "ours" (issue 15: a compat listener refuses
 * exactly bearerd's own requests, not a caller that sends the field).
 */
static void
test_loop_field(void **state)
{
	const char *line = azure_mi_loop_line();
	const char *prefix = AZURE_LOOP_FIELD ": ";
	char other[33];

	(void)state;
	assert_non_null(line);
	assert_ptr_equal(line, azure_mi_loop_line());
	assert_int_equal(strncmp(line, prefix, strlen(prefix)), 0);
	line += strlen(prefix);
	assert_int_equal(strlen(line), 32);
	assert_int_equal(strspn(line, "0123456789abcdef"), 32);
	assert_true(azure_mi_loop_is_ours(line, 32));
	assert_false(azure_mi_loop_is_ours(line, 31));
	assert_false(azure_mi_loop_is_ours("", 0));
	memcpy(other, line, 33);
	other[0] = other[0] == '0' ? '1' : '0';
	assert_false(azure_mi_loop_is_ours(other, 32));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_limiter_concurrency),
	    cmocka_unit_test(test_limiter_rate_sliding_window),
	    cmocka_unit_test(test_limiter_never_exceeds_rate),
	    cmocka_unit_test(test_limiter_pause),
	    cmocka_unit_test(test_limiter_bounds),
	    cmocka_unit_test(test_limiter_reserve),
	    cmocka_unit_test(test_gone_schedule_covers_70_seconds),
	    cmocka_unit_test(test_gone_schedule_honours_retry_after),
	    cmocka_unit_test(test_url_encode),
	    cmocka_unit_test(test_selector),
	    cmocka_unit_test(test_result_token),
	    cmocka_unit_test(test_result_permanent),
	    cmocka_unit_test(test_result_transient),
	    cmocka_unit_test(test_result_transport),
	    cmocka_unit_test_setup_teardown(test_queue_never_drops, loop_setup, loop_teardown),
	    cmocka_unit_test_setup_teardown(test_queue_freed_with_the_source, loop_setup,
					    loop_teardown),
	    cmocka_unit_test_setup_teardown(test_queue_priorities, loop_setup, loop_teardown),
	    cmocka_unit_test_setup_teardown(test_imds_new, loop_setup, loop_teardown),
	    cmocka_unit_test_setup_teardown(test_appservice_new, loop_setup, loop_teardown),
	    cmocka_unit_test(test_loop_field),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
