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
#include <event2/event.h>

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

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_limiter_concurrency),
	    cmocka_unit_test(test_limiter_rate_sliding_window),
	    cmocka_unit_test(test_limiter_never_exceeds_rate),
	    cmocka_unit_test(test_limiter_pause),
	    cmocka_unit_test(test_limiter_bounds),
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
	    cmocka_unit_test_setup_teardown(test_imds_new, loop_setup, loop_teardown),
	    cmocka_unit_test_setup_teardown(test_appservice_new, loop_setup, loop_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
