/* Unit tests for daemon/metrics.c: counting, bounds, escaping and the text exposition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "metrics.h"

/* The rendered text, NUL-terminated, for strstr; the caller frees it. */
static char *
render(struct metrics *m)
{
	struct evbuffer *b = evbuffer_new();
	size_t n;
	char *s;

	assert_non_null(b);
	assert_int_equal(metrics_render(m, b), 0);
	n = evbuffer_get_length(b);
	s = malloc(n + 1);
	assert_non_null(s);
	evbuffer_remove(b, s, n);
	s[n] = '\0';
	evbuffer_free(b);
	return s;
}

static void
counter_pointer_is_stable(void **state)
{
	struct metrics *m;
	uint64_t *ok;
	char *text;

	(void)state;
	assert_int_equal(metrics_new(&m, 0), 0);
	ok = metrics_counter(m, METRICS_TOKEN_REQUESTS, "api", "ok");
	(*ok)++;
	/* many more series force the table to grow: the pointer must not move */
	for (int i = 0; i < 1000; i++) {
		char name[32];

		snprintf(name, sizeof(name), "aud%d", i);
		metrics_inc(m, METRICS_TOKEN_REQUESTS, name, "ok");
	}
	assert_ptr_equal(ok, metrics_counter(m, METRICS_TOKEN_REQUESTS, "api", "ok"));
	(*ok)++;
	metrics_inc(m, METRICS_TOKEN_REQUESTS, "api", "ok");
	assert_int_equal(*ok, 3);
	assert_int_equal(metrics_series_count(m), 1001);
	text = render(m);
	assert_non_null(
	    strstr(text, "\nbearerd_token_requests_total{audience=\"api\",result=\"ok\"} 3\n"));
	assert_non_null(strstr(text, "# TYPE bearerd_token_requests_total counter\n"));
	assert_non_null(strstr(text, "# HELP bearerd_token_requests_total "));
	free(text);
	metrics_free(m);
}

static void
labels_are_escaped(void **state)
{
	struct metrics *m;
	char *text;

	(void)state;
	assert_int_equal(metrics_new(&m, 0), 0);
	metrics_inc(m, METRICS_TOKEN_REQUESTS, "a\"b\\c\nd", "ok");
	text = render(m);
	assert_non_null(strstr(text, "{audience=\"a\\\"b\\\\c\\nd\",result=\"ok\"} 1\n"));
	free(text);
	metrics_free(m);
}

static void
bound_folds_into_other(void **state)
{
	struct metrics *m;
	char *text;

	(void)state;
	assert_int_equal(metrics_new(&m, 4), 0);
	for (int i = 0; i < 100; i++) {
		char name[32];

		snprintf(name, sizeof(name), "r%d", i);
		metrics_inc(m, METRICS_TOKEN_REQUESTS, name, "ok");
		metrics_inc(m, METRICS_TOKEN_REQUESTS, name, "error");
	}
	/* 4 real series, then one "other" series per second label value */
	assert_int_equal(metrics_series_count(m), 6);
	text = render(m);
	assert_non_null(strstr(text, "{audience=\"other\",result=\"ok\"} 98\n"));
	assert_non_null(strstr(text, "{audience=\"other\",result=\"error\"} 98\n"));
	assert_null(strstr(text, "r50"));
	free(text);
	metrics_free(m);
}

static void
histogram_buckets_are_cumulative(void **state)
{
	struct metrics *m;
	char *text;

	(void)state;
	assert_int_equal(metrics_new(&m, 0), 0);
	metrics_observe(m, METRICS_UPSTREAM_DURATION, "vm", 0.001);
	metrics_observe(m, METRICS_UPSTREAM_DURATION, "vm", 0.005); /* le is inclusive */
	metrics_observe(m, METRICS_UPSTREAM_DURATION, "vm", 0.3);
	metrics_observe(m, METRICS_UPSTREAM_DURATION, "vm", 60);
	text = render(m);
	assert_non_null(
	    strstr(text, "# TYPE bearerd_upstream_request_duration_seconds histogram\n"));
	assert_non_null(strstr(
	    text,
	    "bearerd_upstream_request_duration_seconds_bucket{identity=\"vm\",le=\"0.005\"} 2\n"));
	assert_non_null(strstr(
	    text,
	    "bearerd_upstream_request_duration_seconds_bucket{identity=\"vm\",le=\"0.25\"} 2\n"));
	assert_non_null(strstr(
	    text,
	    "bearerd_upstream_request_duration_seconds_bucket{identity=\"vm\",le=\"0.5\"} 3\n"));
	assert_non_null(strstr(
	    text,
	    "bearerd_upstream_request_duration_seconds_bucket{identity=\"vm\",le=\"10\"} 3\n"));
	assert_non_null(strstr(
	    text,
	    "bearerd_upstream_request_duration_seconds_bucket{identity=\"vm\",le=\"+Inf\"} 4\n"));
	assert_non_null(
	    strstr(text, "bearerd_upstream_request_duration_seconds_count{identity=\"vm\"} 4\n"));
	assert_non_null(
	    strstr(text, "bearerd_upstream_request_duration_seconds_sum{identity=\"vm\"} 60.306"));
	free(text);
	metrics_free(m);
}

static void
gauges_show_what_was_set_since_clear(void **state)
{
	struct metrics *m;
	char *text;

	(void)state;
	assert_int_equal(metrics_new(&m, 0), 0);
	metrics_gauge_set(m, METRICS_TOKEN_EXPIRY, "old", 10);
	metrics_gauge_set(m, METRICS_CACHE_ENTRIES, NULL, 3);
	text = render(m);
	assert_non_null(strstr(text, "bearerd_token_expiry_seconds{audience=\"old\"} 10\n"));
	assert_non_null(strstr(text, "\nbearerd_cache_entries 3\n"));
	free(text);
	metrics_gauges_clear(m);
	metrics_gauge_set(m, METRICS_TOKEN_EXPIRY, "new", -1);
	text = render(m);
	assert_null(strstr(text, "old"));
	assert_null(strstr(text, "bearerd_cache_entries"));
	assert_non_null(strstr(text, "bearerd_token_expiry_seconds{audience=\"new\"} -1\n"));
	free(text);
	metrics_free(m);
}

static void
proxy_api(void **state)
{
	struct metrics *m;
	char *text;

	(void)state;
	assert_int_equal(metrics_new(&m, 0), 0);
	metrics_proxy_request(m, "apim", 200, 0.02);
	metrics_proxy_request(m, "apim", 200, 0.03);
	metrics_proxy_request(m, "apim", 0, -1); /* no answer, no upstream time */
	text = render(m);
	assert_non_null(
	    strstr(text, "bearerd_proxy_requests_total{route=\"apim\",status=\"200\"} 2\n"));
	assert_non_null(
	    strstr(text, "bearerd_proxy_requests_total{route=\"apim\",status=\"error\"} 1\n"));
	assert_non_null(
	    strstr(text, "bearerd_proxy_upstream_duration_seconds_count{route=\"apim\"} 2\n"));
	free(text);
	metrics_free(m);
}

static void
null_registry_is_harmless(void **state)
{
	(void)state;
	metrics_inc(NULL, METRICS_TOKEN_REQUESTS, "a", "ok");
	metrics_observe(NULL, METRICS_UPSTREAM_DURATION, "a", 1);
	metrics_gauge_set(NULL, METRICS_CACHE_ENTRIES, NULL, 1);
	(*metrics_counter(NULL, METRICS_TOKEN_REQUESTS, "a", "ok"))++;
	assert_null(metrics_free(NULL));
}

static void
empty_families_are_not_rendered(void **state)
{
	struct metrics *m;
	char *text;

	(void)state;
	assert_int_equal(metrics_new(&m, 0), 0);
	text = render(m);
	assert_string_equal(text, "");
	free(text);
	metrics_free(m);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(counter_pointer_is_stable),
	    cmocka_unit_test(labels_are_escaped),
	    cmocka_unit_test(bound_folds_into_other),
	    cmocka_unit_test(histogram_buckets_are_cumulative),
	    cmocka_unit_test(gauges_show_what_was_set_since_clear),
	    cmocka_unit_test(proxy_api),
	    cmocka_unit_test(null_registry_is_harmless),
	    cmocka_unit_test(empty_families_are_not_rendered),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
