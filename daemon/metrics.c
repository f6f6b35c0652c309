/*
 * Metrics registry and the Prometheus text exposition (format 0.0.4).  Series
 * live in a chained hash table keyed by (family, label values) and, for
 * rendering in a stable order, on a per-family list in order of creation.  A
 * series is allocated once, when its label values are first seen, and never
 * moves, so callers may keep a pointer to its counter.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "metrics.h"
#include "str.h"

#define DEFAULT_MAX_SERIES 65536
#define INITIAL_BUCKETS	   64

enum metrics_kind {
	KIND_COUNTER,
	KIND_GAUGE,
	KIND_HISTOGRAM,
};

struct family_def {
	const char *name;
	const char *help;
	enum metrics_kind kind;
	const char *labels[2]; /* NULL when unused */
};

static const struct family_def families[METRICS_N_FAMILIES] = {
    [METRICS_TOKEN_REQUESTS] = {"bearerd_token_requests_total",
				"Token requests answered, by audience (or resource) and result.",
				KIND_COUNTER,
				{"audience", "result"}},
    [METRICS_UPSTREAM_REQUESTS] = {"bearerd_upstream_requests_total",
				   "Upstream token requests, by identity and HTTP status "
				   "(\"error\" when no answer arrived).",
				   KIND_COUNTER,
				   {"identity", "status"}},
    [METRICS_UPSTREAM_DURATION] = {"bearerd_upstream_request_duration_seconds",
				   "Time upstream token requests took, by identity.",
				   KIND_HISTOGRAM,
				   {"identity", NULL}},
    [METRICS_TOKEN_EXPIRY] = {"bearerd_token_expiry_seconds",
			      "Seconds left on the cached token of each configured audience "
			      "(-1 without a token).",
			      KIND_GAUGE,
			      {"audience", NULL}},
    [METRICS_REFRESHES] = {"bearerd_refreshes_total",
			   "Token fetches completed, by identity and why they were started.",
			   KIND_COUNTER,
			   {"identity", "reason"}},
    [METRICS_REFRESH_FAILURES] = {"bearerd_refresh_failures_total",
				  "Token fetches that failed, by identity and kind of failure.",
				  KIND_COUNTER,
				  {"identity", "reason"}},
    [METRICS_CONNECTIONS_OPEN] = {"bearerd_connections_open",
				  "Client connections open, by listener.",
				  KIND_GAUGE,
				  {"listener", NULL}},
    [METRICS_PROXY_REQUESTS] = {"bearerd_proxy_requests_total",
				"Proxied requests, by route and status sent to the client.",
				KIND_COUNTER,
				{"route", "status"}},
    [METRICS_PROXY_UPSTREAM_DURATION] = {"bearerd_proxy_upstream_duration_seconds",
					 "Time the proxy's upstream took to answer, by route.",
					 KIND_HISTOGRAM,
					 {"route", NULL}},
    [METRICS_CACHE_ENTRIES] = {"bearerd_cache_entries",
			       "Entries in the token cache (configured and dynamic).",
			       KIND_GAUGE,
			       {NULL, NULL}},
    [METRICS_BUILD_INFO] = {"bearerd_build_info",
			    "Always 1; the version is in the label.",
			    KIND_GAUGE,
			    {"version", NULL}},
    [METRICS_RELOADS] = {"bearerd_reloads_total",
			 "Configuration reloads (SIGHUP), by result.",
			 KIND_COUNTER,
			 {"result", NULL}},
    [METRICS_READY] = {"bearerd_ready",
		       "1 when ready: mode=\"latched\" as /readyz (every prefetch audience has "
		       "held a token), mode=\"strict\" as /readyz?strict=1 (each holds one now).",
		       KIND_GAUGE,
		       {"mode", NULL}},
};

/* Prometheus' default buckets, in seconds; a last, implicit one is +Inf. */
static const double bucket_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define N_BOUNDS (sizeof(bucket_bounds) / sizeof(bucket_bounds[0]))

struct histogram {
	uint64_t buckets[N_BOUNDS + 1]; /* not cumulative */
	double sum;
	uint64_t count;
};

/* Second label values come from small sets (results, reasons, statuses): stored once. */
struct interned {
	struct interned *next;
	char value[];
};

/*
 * One series, in one allocation with its first label (dynamic resources
 * make many of them: about 64 bytes plus the label each).
 */
struct series {
	struct series *hash_next;
	struct series *family_next;
	uint64_t hash;
	union {
		uint64_t value;		/* counters */
		double gauge;		/* gauges */
		struct histogram *hist; /* histograms */
	} u;
	const char *l2; /* interned; NULL when the family has no second label */
	uint8_t family; /* enum metrics_family */
	bool has_l1;	/* l1 is "" otherwise */
	bool present;	/* gauges: set since the last clear */
	char l1[];
};

struct metrics {
	struct series **table;
	size_t n_buckets; /* a power of two */
	size_t n_series;
	size_t max_series;
	struct series *first[METRICS_N_FAMILIES];
	struct series *last[METRICS_N_FAMILIES];
	struct interned *labels2;
};

static uint64_t scratch_counter;

static uint64_t
hash_str(uint64_t h, const char *s)
{
	/* FNV-1a; NULL and "" differ so (a, NULL) and (a, "") stay apart */
	if (s == NULL)
		return (h ^ 0xffu) * 1099511628211u;
	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211u;
	return (h ^ 0x1u) * 1099511628211u;
}

static uint64_t
series_hash(enum metrics_family f, const char *l1, const char *l2)
{
	uint64_t h = 14695981039346656037u ^ (uint64_t)f;

	return hash_str(hash_str(h, l1), l2);
}

int
metrics_new(struct metrics **out, size_t max_series)
{
	struct metrics *m = calloc(1, sizeof(*m));

	if (m == NULL)
		return -ENOMEM;
	m->n_buckets = INITIAL_BUCKETS;
	m->table = calloc(m->n_buckets, sizeof(*m->table));
	if (m->table == NULL) {
		free(m);
		return -ENOMEM;
	}
	m->max_series = max_series > 0 ? max_series : DEFAULT_MAX_SERIES;
	*out = m;
	return 0;
}

static void
series_free(struct series *s)
{
	if (families[s->family].kind == KIND_HISTOGRAM)
		free(s->u.hist);
	free(s);
}

static const char *
intern(struct metrics *m, const char *v)
{
	struct interned *i;
	size_t len = strlen(v);

	for (i = m->labels2; i != NULL; i = i->next)
		if (strcmp(i->value, v) == 0)
			return i->value;
	i = malloc(sizeof(*i) + len + 1);
	if (i == NULL)
		return NULL;
	memcpy(i->value, v, len + 1);
	i->next = m->labels2;
	m->labels2 = i;
	return i->value;
}

struct metrics *
metrics_free(struct metrics *m)
{
	if (m == NULL)
		return NULL;
	for (size_t f = 0; f < METRICS_N_FAMILIES; f++) {
		struct series *s = m->first[f], *next;

		for (; s != NULL; s = next) {
			next = s->family_next;
			series_free(s);
		}
	}
	while (m->labels2 != NULL) {
		struct interned *next = m->labels2->next;

		free(m->labels2);
		m->labels2 = next;
	}
	free(m->table);
	free(m);
	return NULL;
}

static void
table_grow(struct metrics *m)
{
	size_t n = m->n_buckets * 2;
	struct series **t = calloc(n, sizeof(*t));

	if (t == NULL)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < m->n_buckets; i++) {
		struct series *s = m->table[i], *next;

		for (; s != NULL; s = next) {
			next = s->hash_next;
			s->hash_next = t[s->hash & (n - 1)];
			t[s->hash & (n - 1)] = s;
		}
	}
	free(m->table);
	m->table = t;
	m->n_buckets = n;
}

static struct series *
series_find(struct metrics *m, enum metrics_family f, const char *l1, const char *l2, uint64_t h)
{
	struct series *s;

	for (s = m->table[h & (m->n_buckets - 1)]; s != NULL; s = s->hash_next)
		if (s->hash == h && s->family == f && s->has_l1 == (l1 != NULL) &&
		    (l1 == NULL || strcmp(s->l1, l1) == 0) && str_eq_opt(s->l2, l2))
			return s;
	return NULL;
}

static struct series *
series_create(struct metrics *m, enum metrics_family f, const char *l1, const char *l2, uint64_t h)
{
	size_t len = l1 != NULL ? strlen(l1) : 0;
	struct series *s = calloc(1, sizeof(*s) + len + 1);

	if (s == NULL)
		return NULL;
	s->family = (uint8_t)f;
	s->hash = h;
	s->has_l1 = l1 != NULL;
	memcpy(s->l1, l1 != NULL ? l1 : "", len + 1);
	s->l2 = l2 != NULL ? intern(m, l2) : NULL;
	if (families[f].kind == KIND_HISTOGRAM)
		s->u.hist = calloc(1, sizeof(*s->u.hist));
	if ((l2 != NULL && s->l2 == NULL) ||
	    (families[f].kind == KIND_HISTOGRAM && s->u.hist == NULL)) {
		series_free(s);
		return NULL;
	}
	if (m->n_series >= m->n_buckets)
		table_grow(m);
	s->hash_next = m->table[h & (m->n_buckets - 1)];
	m->table[h & (m->n_buckets - 1)] = s;
	if (m->last[f] != NULL)
		m->last[f]->family_next = s;
	else
		m->first[f] = s;
	m->last[f] = s;
	m->n_series++;
	return s;
}

/*
 * Finds or creates a series.  Labels the family does not have are ignored.
 * Past max_series the first label becomes "other" (the second one is always
 * from a small set: results, statuses, reasons), which bounds the total.
 */
static struct series *
series_get(struct metrics *m, enum metrics_family f, const char *l1, const char *l2)
{
	struct series *s;
	uint64_t h;

	if (m == NULL || (unsigned)f >= METRICS_N_FAMILIES)
		return NULL;
	if (families[f].labels[0] == NULL)
		l1 = NULL;
	else if (l1 == NULL)
		l1 = "";
	if (families[f].labels[1] == NULL)
		l2 = NULL;
	else if (l2 == NULL)
		l2 = "";
	h = series_hash(f, l1, l2);
	s = series_find(m, f, l1, l2, h);
	if (s != NULL)
		return s;
	if (m->n_series >= m->max_series && l1 != NULL) {
		l1 = METRICS_OTHER;
		h = series_hash(f, l1, l2);
		s = series_find(m, f, l1, l2, h);
		if (s != NULL)
			return s;
	}
	return series_create(m, f, l1, l2, h);
}

uint64_t *
metrics_counter(struct metrics *m, enum metrics_family f, const char *l1, const char *l2)
{
	struct series *s = series_get(m, f, l1, l2);

	if (s == NULL || families[f].kind != KIND_COUNTER)
		return &scratch_counter;
	return &s->u.value;
}

void
metrics_inc(struct metrics *m, enum metrics_family f, const char *l1, const char *l2)
{
	(*metrics_counter(m, f, l1, l2))++;
}

void
metrics_observe(struct metrics *m, enum metrics_family f, const char *l1, double seconds)
{
	struct series *s = series_get(m, f, l1, NULL);
	size_t i;

	if (s == NULL || families[f].kind != KIND_HISTOGRAM || isnan(seconds))
		return;
	for (i = 0; i < N_BOUNDS && seconds > bucket_bounds[i]; i++)
		;
	s->u.hist->buckets[i]++;
	s->u.hist->sum += seconds;
	s->u.hist->count++;
}

void
metrics_gauges_clear(struct metrics *m)
{
	if (m == NULL)
		return;
	for (size_t f = 0; f < METRICS_N_FAMILIES; f++) {
		if (families[f].kind != KIND_GAUGE)
			continue;
		for (struct series *s = m->first[f]; s != NULL; s = s->family_next)
			s->present = false;
	}
}

void
metrics_gauge_set(struct metrics *m, enum metrics_family f, const char *l1, double value)
{
	struct series *s = series_get(m, f, l1, NULL);

	if (s == NULL || families[f].kind != KIND_GAUGE)
		return;
	s->u.gauge = value;
	s->present = true;
}

void
metrics_proxy_request(struct metrics *m, const char *route, int status, double seconds)
{
	char code[16];

	if (status > 0)
		snprintf(code, sizeof(code), "%d", status);
	else
		snprintf(code, sizeof(code), "error");
	metrics_inc(m, METRICS_PROXY_REQUESTS, route, code);
	if (seconds >= 0)
		metrics_observe(m, METRICS_PROXY_UPSTREAM_DURATION, route, seconds);
}

size_t
metrics_series_count(const struct metrics *m)
{
	return m != NULL ? m->n_series : 0;
}

/* Rendering */

/* A label value with \, " and newline escaped, as the exposition format wants. */
static void
add_label_value(struct evbuffer *b, const char *v)
{
	const char *run = v;

	for (; *v != '\0'; v++) {
		const char *esc = *v == '\\'   ? "\\\\"
				  : *v == '"'  ? "\\\""
				  : *v == '\n' ? "\\n"
					       : NULL;

		if (esc == NULL)
			continue;
		evbuffer_add(b, run, (size_t)(v - run));
		evbuffer_add(b, esc, 2);
		run = v + 1;
	}
	evbuffer_add(b, run, (size_t)(v - run));
}

/* {a="x",b="y"} plus an optional le="..." for buckets; nothing when there are no labels. */
static void
add_labels(struct evbuffer *b, const struct family_def *fd, const struct series *s, const char *le)
{
	const char *vals[2] = {s->l1, s->l2};

	bool any = false;

	for (int i = 0; i < 2; i++) {
		if (fd->labels[i] == NULL)
			continue;
		evbuffer_add_printf(b, "%s%s=\"", any ? "," : "{", fd->labels[i]);
		add_label_value(b, vals[i] != NULL ? vals[i] : "");
		evbuffer_add(b, "\"", 1);
		any = true;
	}
	if (le != NULL) {
		evbuffer_add_printf(b, "%sle=\"%s\"", any ? "," : "{", le);
		any = true;
	}
	if (any)
		evbuffer_add(b, "}", 1);
}

/* The shortest of %.15g .. %.17g that reads back as v: 60.306, not 60.305999999999997. */
static const char *
shortest(double v, char *buf, size_t size)
{
	for (int prec = 15; prec < 17; prec++) {
		snprintf(buf, size, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			return buf;
	}
	snprintf(buf, size, "%.17g", v);
	return buf;
}

static void
add_double(struct evbuffer *b, double v)
{
	char buf[40];

	if (isinf(v))
		evbuffer_add_printf(b, "%s\n", v > 0 ? "+Inf" : "-Inf");
	else if (isnan(v))
		evbuffer_add_printf(b, "NaN\n");
	else
		evbuffer_add_printf(b, "%s\n", shortest(v, buf, sizeof(buf)));
}

static void
render_histogram(struct evbuffer *b, const struct family_def *fd, const struct series *s)
{
	uint64_t cum = 0;
	char le[32];

	for (size_t i = 0; i <= N_BOUNDS; i++) {
		cum += s->u.hist->buckets[i];
		if (i < N_BOUNDS)
			snprintf(le, sizeof(le), "%g", bucket_bounds[i]);
		else
			snprintf(le, sizeof(le), "+Inf");
		evbuffer_add_printf(b, "%s_bucket", fd->name);
		add_labels(b, fd, s, le);
		evbuffer_add_printf(b, " %" PRIu64 "\n", cum);
	}
	evbuffer_add_printf(b, "%s_sum", fd->name);
	add_labels(b, fd, s, NULL);
	evbuffer_add(b, " ", 1);
	add_double(b, s->u.hist->sum);
	evbuffer_add_printf(b, "%s_count", fd->name);
	add_labels(b, fd, s, NULL);
	evbuffer_add_printf(b, " %" PRIu64 "\n", s->u.hist->count);
}

static bool
family_has_samples(const struct metrics *m, enum metrics_family f)
{
	for (const struct series *s = m->first[f]; s != NULL; s = s->family_next)
		if (families[f].kind != KIND_GAUGE || s->present)
			return true;
	return false;
}

static const char *
kind_name(enum metrics_kind k)
{
	return k == KIND_COUNTER ? "counter" : k == KIND_GAUGE ? "gauge" : "histogram";
}

int
metrics_render(struct metrics *m, struct evbuffer *out)
{
	for (size_t f = 0; f < METRICS_N_FAMILIES; f++) {
		const struct family_def *fd = &families[f];

		if (!family_has_samples(m, (enum metrics_family)f))
			continue;
		evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", fd->name, fd->help,
				    fd->name, kind_name(fd->kind));
		for (const struct series *s = m->first[f]; s != NULL; s = s->family_next) {
			if (fd->kind == KIND_HISTOGRAM) {
				render_histogram(out, fd, s);
				continue;
			}
			if (fd->kind == KIND_GAUGE && !s->present)
				continue;
			evbuffer_add_printf(out, "%s", fd->name);
			add_labels(out, fd, s, NULL);
			if (fd->kind == KIND_COUNTER) {
				evbuffer_add_printf(out, " %" PRIu64 "\n", s->u.value);
			} else {
				evbuffer_add(out, " ", 1);
				add_double(out, s->u.gauge);
			}
		}
	}
	return 0;
}

const char *
metrics_token_result(int status)
{
	switch (status) {
	case 200:
		return "ok";
	case 400:
		return "bad_request";
	case 403:
		return "denied";
	case 404:
		return "not_found";
	case 429:
		return "throttled";
	case 503:
		return "error";
	case 504:
		return "timeout";
	}
	return "server_error";
}
