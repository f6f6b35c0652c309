/*
 * The managed-identity upstream client shared by the azure-imds and
 * azure-appservice sources.  Each identity gets one: it queues requests
 * beyond the limits IMDS enforces (5 concurrent, 20 per second) instead of
 * earning 429s, retries 410 "IMDS is updating" inside one fetch for over 70 s
 * (as the SDKs do, so the cache sees one slow fetch rather than a failure),
 * and turns everything else into a token_result with the hints the cache's
 * backoff needs (HTTP status, Retry-After, permanent).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "clock.h"
#include "fetch.h"
#include "json.h"
#include "log.h"
#include "secret.h"
#include "source_azure.h"
#include "str.h"
#include "token.h"
#include "urlencode.h"
#include "wipe.h"

#define AZURE_MAX_BODY	      (64 * 1024) /* a token answer is a few KiB */
#define AZURE_GONE_FIRST_MS   1000	  /* first 410 retry */
#define AZURE_GONE_MAX_MS     10000	  /* MSAL retries 410 every 10 s */
#define AZURE_MAX_RETRY_AFTER 60	  /* s: bounds a Retry-After on 410, and a 429 pause */
/*
 * Other 4xx mean the request or the identity is wrong (no such identity,
 * wrong resource, wrong X-IDENTITY-HEADER): retrying soon cannot help, so the
 * cache is told not to ask again for a minute.  An identity that is being
 * assigned right now still gets its token within a minute.
 */
#define AZURE_PERMANENT_RETRY 60
#define AZURE_JSON_TOKENS     64

enum req_state {
	REQ_QUEUED,    /* on the queue, waiting for the limiter */
	REQ_IN_FLIGHT, /* a fetch is running */
	REQ_SLEEPING,  /* between 410 retries */
};

/* One source_fetch; outlives its client if that is freed while a fetch runs. */
struct azure_req {
	struct azure_mi *mi; /* NULL once orphaned */
	TAILQ_ENTRY(azure_req) all;
	TAILQ_ENTRY(azure_req) queue; /* while REQ_QUEUED */
	enum req_state state;
	enum source_priority prio;
	char *resource;
	source_done_fn *done;
	void *arg;
	int attempt;	    /* 410 retries so far */
	int64_t first_ms;   /* first dispatch */
	struct event *wake; /* 410 retry timer, created on the first 410 */
	char *secret_line;  /* the secret header sent last ("Name: value"), wiped on free */
};

TAILQ_HEAD(azure_reqs, azure_req);

struct azure_mi {
	struct event_base *base;
	struct fetch *fetch;
	char *name;
	char *endpoint;
	char *api_version;
	char *selector;
	char **headers; /* fixed ones, NULL-terminated */
	size_t n_headers;
	char *ca_file;
	long timeout_ms;
	bool retry_gone;
	azure_secret_fn *secret;
	void *secret_ctx;
	struct azure_limiter limiter;
	struct azure_reqs all;	 /* every live request */
	struct azure_reqs queue; /* REQ_QUEUED ones: SOURCE_PRIO_HIGH first, each in order */
	unsigned n_low;		 /* SOURCE_PRIO_LOW ones on it */
	struct event *pump;	 /* runs the queue */
	int64_t pump_at_ms;	 /* when pump is due, while it is pending */
};

/* Limiter */

void
azure_limiter_init(struct azure_limiter *l, unsigned max_concurrent, unsigned max_per_window,
		   int64_t window_ms)
{
	memset(l, 0, sizeof(*l));
	l->max_concurrent = max_concurrent > 0 ? max_concurrent : 1;
	if (max_per_window == 0)
		max_per_window = 1;
	l->max_per_window = max_per_window < AZURE_LIMITER_MAX ? max_per_window : AZURE_LIMITER_MAX;
	l->window_ms = window_ms > 0 ? window_ms : 1;
}

int64_t
azure_limiter_acquire_reserve(struct azure_limiter *l, int64_t now, unsigned reserve_concurrent,
			      unsigned reserve_window)
{
	unsigned conc =
	    reserve_concurrent < l->max_concurrent ? l->max_concurrent - reserve_concurrent : 1;
	unsigned win = reserve_window < l->max_per_window ? l->max_per_window - reserve_window : 1;

	if (now < l->paused_until_ms)
		return l->paused_until_ms - now;
	if (l->in_flight >= conc)
		return -1;
	/* starts that have left the window no longer count */
	while (l->count > 0 && l->starts[l->oldest] + l->window_ms <= now) {
		l->oldest = (l->oldest + 1) % l->max_per_window;
		l->count--;
	}
	if (l->count >= win) {
		/* the start that must leave the window before one more fits */
		unsigned i = (l->oldest + (l->count - win)) % l->max_per_window;

		return l->starts[i] + l->window_ms - now;
	}
	l->starts[(l->oldest + l->count) % l->max_per_window] = now;
	l->count++;
	l->in_flight++;
	return 0;
}

int64_t
azure_limiter_acquire(struct azure_limiter *l, int64_t now)
{
	return azure_limiter_acquire_reserve(l, now, 0, 0);
}

void
azure_limiter_release(struct azure_limiter *l)
{
	if (l->in_flight > 0)
		l->in_flight--;
}

void
azure_limiter_pause(struct azure_limiter *l, int64_t until_ms)
{
	if (until_ms > l->paused_until_ms)
		l->paused_until_ms = until_ms;
}

/* A Retry-After in milliseconds, bounded: one bad header must not stall an identity for long. */
static int64_t
retry_after_ms(int64_t s)
{
	return (s < AZURE_MAX_RETRY_AFTER ? s : AZURE_MAX_RETRY_AFTER) * 1000;
}

int64_t
azure_gone_delay(int attempt, int64_t elapsed_ms, int64_t retry_after_s)
{
	int64_t d;

	if (attempt < 0 || elapsed_ms >= AZURE_GONE_BUDGET_MS)
		return -1;
	d = (int64_t)AZURE_GONE_FIRST_MS << (attempt < 4 ? attempt : 4);
	if (d > AZURE_GONE_MAX_MS)
		d = AZURE_GONE_MAX_MS;
	if (retry_after_s > 0 && retry_after_ms(retry_after_s) > d)
		d = retry_after_ms(retry_after_s);
	return d;
}

/* URLs */

int
azure_selector(char **out, const char *const *names, const char *const *values, size_t n)
{
	const char *name = NULL, *value = NULL;
	char *enc, *sel;
	size_t found = 0;
	int r;

	for (size_t i = 0; i < n; i++) {
		if (values[i] != NULL) {
			name = names[i];
			value = values[i];
			found++;
		}
	}
	if (found > 1)
		return -EINVAL; /* the selectors are mutually exclusive */
	if (found == 0) {
		sel = strdup("");
		if (sel == NULL)
			return -ENOMEM;
		*out = sel;
		return 0;
	}
	if (value[0] == '\0' || strlen(value) > AZURE_MAX_RESOURCE)
		return -EINVAL;
	enc = url_encode(value, strlen(value), 0);
	if (enc == NULL)
		return -ENOMEM;
	r = asprintf(&sel, "&%s=%s", name, enc);
	free(enc);
	if (r < 0)
		return -ENOMEM;
	*out = sel;
	return 0;
}

/* Answers */

/* 4xx means the request itself is wrong, except the codes Azure uses for "later". */
static bool
status_permanent(long status)
{
	if (status < 400 || status > 499)
		return false;
	return status != 404 && status != 408 && status != 410 && status != 429;
}

/*
 * App Service's own errors are {"statusCode":..,"message":..,"correlationId":..},
 * which token_parse_response does not read as an error document: take the
 * message from them here.  Returns true when it found one.
 */
static bool
appservice_error(const struct fetch_response *resp, struct token_result *r)
{
	jsmntok_t toks[AZURE_JSON_TOKENS];
	struct json_doc doc;
	char msg[sizeof(r->message)], corr[72];
	int t;

	if (resp->body == NULL || resp->body_len == 0 ||
	    json_parse(&doc, resp->body, resp->body_len, toks, AZURE_JSON_TOKENS) < 0)
		return false;
	t = json_find(&doc, 0, "message");
	if (t < 0 || json_string_copy(&doc, t, msg, sizeof(msg)) < 0)
		return false;
	corr[0] = '\0';
	t = json_find(&doc, 0, "correlationId");
	if (t >= 0 && json_string_copy(&doc, t, corr, sizeof(corr)) < 0)
		corr[0] = '\0';
	snprintf(r->error_code, sizeof(r->error_code), "upstream_error");
	if (corr[0] != '\0')
		snprintf(r->message, sizeof(r->message), "%.400s correlation_id=%s", msg, corr);
	else
		snprintf(r->message, sizeof(r->message), "%s", msg);
	/* printable ASCII only, as token.c does for every upstream text */
	for (char *p = r->message; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			*p = (unsigned char)*p < 0x20 ? ' ' : '?';
	return true;
}

static void
result_from_http_error(const struct fetch_response *resp, struct token_result *r)
{
	int rc;

	rc = token_parse_response(resp->body, resp->body_len, time(NULL), r);
	if (rc == 0 || r->error_code[0] == '\0' || strcmp(r->error_code, "invalid_response") == 0) {
		/* not an error document (or a token with an error status): say what we know */
		token_result_clear(r);
		if (!appservice_error(resp, r)) {
			snprintf(r->error_code, sizeof(r->error_code), "http_error");
			snprintf(r->message, sizeof(r->message), "upstream answered HTTP %ld",
				 resp->status);
		}
	}
	r->error = -EIO;
	r->http_status = resp->status;
	r->retry_after = resp->retry_after;
	r->permanent = status_permanent(resp->status);
	if (r->permanent && r->retry_after < AZURE_PERMANENT_RETRY)
		r->retry_after = AZURE_PERMANENT_RETRY;
	/* 5xx and 429 are "safe to retry after waiting for at least 1 second" */
	if (r->retry_after <= 0 && (resp->status >= 500 || resp->status == 429))
		r->retry_after = 1;
}

void
azure_result_from_response(const struct fetch_response *resp, struct token_result *r)
{
	if (resp->error != 0) {
		r->error = resp->error;
		if (resp->error == -EFBIG) {
			snprintf(r->error_code, sizeof(r->error_code), "invalid_response");
			snprintf(r->message, sizeof(r->message),
				 "upstream answer larger than %d bytes", AZURE_MAX_BODY);
		} else {
			snprintf(r->error_code, sizeof(r->error_code), "upstream_unreachable");
			snprintf(r->message, sizeof(r->message), "upstream unreachable: %s",
				 resp->message != NULL ? resp->message : "unknown error");
		}
	} else if (resp->status < 200 || resp->status > 299) {
		result_from_http_error(resp, r);
	} else {
		/* error_code and message are filled on failure */
		token_parse_response(resp->body, resp->body_len, time(NULL), r);
		r->http_status = resp->status;
		r->retry_after = resp->retry_after;
	}
}

/* Requests */

static void
req_free(struct azure_req *q)
{
	if (q->wake != NULL)
		event_free(q->wake);
	wipe_free_str(q->secret_line);
	free(q->resource);
	free(q);
}

/*
 * Whether the answer holds the secret header's value (raw, encoded or
 * JSON-escaped): looked for in the whole body before anything is parsed or
 * truncated, since a message cut to fit would hold most of it and no longer
 * match.
 */
static bool
answer_echoes_secret(const struct azure_req *q, const struct fetch_response *resp)
{
	const char *value;

	if (q->secret_line == NULL || resp->error != 0 || resp->body == NULL)
		return false;
	value = strchr(q->secret_line, ':');
	value = value != NULL ? value + 1 : q->secret_line;
	value += strspn(value, " \t");
	return secret_in_text(resp->body, resp->body_len, value, strlen(value));
}

/* An error code of the usual shape: lower case and underscores (invalid_request). */
static bool
plain_code(const char *code)
{
	size_t n = strspn(code, "abcdefghijklmnopqrstuvwxyz_");

	return n > 0 && n <= 40 && code[n] == '\0';
}

/* The answer echoed the secret: nothing the upstream wrote is kept but a plain error code. */
static void
withhold(struct token_result *r)
{
	if (!plain_code(r->error_code))
		snprintf(r->error_code, sizeof(r->error_code), "upstream_error");
	snprintf(r->message, sizeof(r->message),
		 "the managed-identity endpoint's error message is withheld: it contained the "
		 "secret header sent with the request");
}

/* Puts q on the queue: behind every request of its priority or higher. */
static void
queue_insert(struct azure_mi *m, struct azure_req *q)
{
	struct azure_req *x;

	q->state = REQ_QUEUED;
	if (q->prio == SOURCE_PRIO_LOW) {
		m->n_low++;
		TAILQ_INSERT_TAIL(&m->queue, q, queue);
		return;
	}
	TAILQ_FOREACH(x, &m->queue, queue)
	{
		if (x->prio == SOURCE_PRIO_LOW) {
			TAILQ_INSERT_BEFORE(x, q, queue);
			return;
		}
	}
	TAILQ_INSERT_TAIL(&m->queue, q, queue);
}

static void
queue_remove(struct azure_mi *m, struct azure_req *q)
{
	TAILQ_REMOVE(&m->queue, q, queue);
	if (q->prio == SOURCE_PRIO_LOW)
		m->n_low--;
}

/* Asks the limiter for q's start, leaving the reserved slots to others for a low one. */
static int64_t
req_acquire(struct azure_mi *m, const struct azure_req *q)
{
	if (q->prio == SOURCE_PRIO_LOW)
		return azure_limiter_acquire_reserve(&m->limiter, clock_mono_ms(),
						     AZURE_RESERVED_CONCURRENT,
						     AZURE_RESERVED_PER_WINDOW);
	return azure_limiter_acquire(&m->limiter, clock_mono_ms());
}

/* Takes q off the client's lists; it is then only the caller's. */
static void
req_unlink(struct azure_mi *m, struct azure_req *q)
{
	if (q->state == REQ_QUEUED)
		queue_remove(m, q);
	TAILQ_REMOVE(&m->all, q, all);
}

/* Answers and frees q, which must be unlinked. */
static void
req_finish(struct azure_req *q, struct token_result *r)
{
	q->done(q->arg, r);
	req_free(q);
}

static void
req_fail(struct azure_req *q, int err, const char *code, const char *msg)
{
	struct token_result r;

	token_result_init(&r);
	r.error = err;
	snprintf(r.error_code, sizeof(r.error_code), "%s", code);
	snprintf(r.message, sizeof(r.message), "%s", msg);
	req_finish(q, &r);
	token_result_clear(&r);
}

#define AZURE_LOOP_BYTES 16

static char loop_line[sizeof(AZURE_LOOP_FIELD ": ") + 2 * AZURE_LOOP_BYTES];

const char *
azure_mi_loop_line(void)
{
	unsigned char raw[AZURE_LOOP_BYTES];
	size_t n = sizeof(AZURE_LOOP_FIELD ": ") - 1;

	if (loop_line[0] != '\0')
		return loop_line;
	if (RAND_bytes(raw, sizeof(raw)) != 1)
		return NULL;
	memcpy(loop_line, AZURE_LOOP_FIELD ": ", n);
	for (size_t i = 0; i < sizeof(raw); i++)
		snprintf(loop_line + n + 2 * i, 3, "%02x", raw[i]);
	return loop_line;
}

bool
azure_mi_loop_is_ours(const char *value, size_t len)
{
	const char *line = azure_mi_loop_line();
	size_t n = sizeof(AZURE_LOOP_FIELD ": ") - 1;

	return line != NULL && len == 2 * AZURE_LOOP_BYTES && memcmp(line + n, value, len) == 0;
}

static void schedule_pump(struct azure_mi *m, int64_t delay_ms);
static void on_fetch_done(void *arg, const struct fetch_response *resp);

/* Builds the URL and headers and starts the fetch; msg says why on failure. */
static int
req_dispatch(struct azure_mi *m, struct azure_req *q, char *msg, size_t msg_size)
{
	const char *headers[8];
	struct fetch_request fr = {0};
	char *enc = NULL, *url = NULL, *secret = NULL;
	size_t h = 0;
	int rc;

	snprintf(msg, msg_size, "out of memory");
	enc = url_encode(q->resource, strlen(q->resource), 0);
	if (enc == NULL)
		return -ENOMEM;
	if (asprintf(&url, "%s%capi-version=%s&resource=%s%s", m->endpoint,
		     strchr(m->endpoint, '?') != NULL ? '&' : '?', m->api_version, enc,
		     m->selector) < 0) {
		url = NULL;
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < m->n_headers; i++)
		headers[h++] = m->headers[i];
	if (m->secret != NULL) {
		rc = m->secret(m->secret_ctx, &secret, msg, msg_size);
		if (rc < 0)
			goto out;
		headers[h++] = secret;
	}
	/* so that a compat listener this request reaches knows it for bearerd's own */
	if (azure_mi_loop_line() != NULL)
		headers[h++] = azure_mi_loop_line();
	headers[h] = NULL;

	fr.method = "GET";
	fr.url = url;
	fr.headers = headers;
	fr.ca_file = m->ca_file;
	fr.timeout_ms = m->timeout_ms;
	fr.max_body = AZURE_MAX_BODY;
	rc = fetch_start(m->fetch, &fr, on_fetch_done, q);
	if (rc < 0) {
		snprintf(msg, msg_size, "could not start the upstream request: %s", strerror(-rc));
		goto out;
	}
	if (q->attempt == 0)
		q->first_ms = clock_mono_ms();
	q->state = REQ_IN_FLIGHT;
	/* kept until the answer, to keep an echo of it out of messages */
	wipe_free_str(q->secret_line);
	q->secret_line = secret;
	secret = NULL;

out:
	wipe_free_str(secret);
	free(url);
	free(enc);
	return rc;
}

/* Starts what the limiter allows from the head of the queue. */
static void
pump(struct azure_mi *m)
{
	struct azure_req *q;
	char msg[256];

	while ((q = TAILQ_FIRST(&m->queue)) != NULL) {
		int64_t wait = req_acquire(m, q);

		if (wait > 0)
			schedule_pump(m, wait);
		if (wait != 0)
			return; /* or a release pumps again */
		queue_remove(m, q);
		q->state = REQ_IN_FLIGHT;
		if (req_dispatch(m, q, msg, sizeof(msg)) < 0) {
			azure_limiter_release(&m->limiter);
			TAILQ_REMOVE(&m->all, q, all);
			log_warnx("cannot start a managed-identity request",
				  "identity=%s error=\"%s\"", m->name, msg);
			/* the callback may queue more: the loop looks at the queue again */
			req_fail(q, -EIO, "local_error", msg);
		}
	}
}

static void
on_pump(evutil_socket_t fd, short what, void *arg)
{
	struct azure_mi *m = arg;

	(void)fd;
	(void)what;
	pump(m);
}

/* Runs the queue from the loop after delay_ms, unless it is due earlier already. */
static void
schedule_pump(struct azure_mi *m, int64_t delay_ms)
{
	struct timeval tv = {.tv_sec = delay_ms / 1000, .tv_usec = (delay_ms % 1000) * 1000};
	int64_t at = clock_mono_ms() + delay_ms;

	if (evtimer_pending(m->pump, NULL) && m->pump_at_ms <= at)
		return;
	m->pump_at_ms = at;
	evtimer_add(m->pump, &tv);
}

static void
on_wake(evutil_socket_t fd, short what, void *arg)
{
	struct azure_req *q = arg;

	(void)fd;
	(void)what;
	queue_insert(q->mi, q);
	pump(q->mi);
}

/* 410: sleeps q until its next try; false when the budget is spent. */
static bool
req_retry_gone(struct azure_mi *m, struct azure_req *q, const struct fetch_response *resp)
{
	int64_t now = clock_mono_ms();
	int64_t delay = azure_gone_delay(q->attempt, now - q->first_ms, resp->retry_after);
	struct timeval tv;

	if (delay < 0)
		return false;
	if (q->wake == NULL) {
		q->wake = evtimer_new(m->base, on_wake, q);
		if (q->wake == NULL)
			return false;
	}
	tv.tv_sec = delay / 1000;
	tv.tv_usec = (delay % 1000) * 1000;
	if (evtimer_add(q->wake, &tv) < 0)
		return false;
	q->attempt++;
	q->state = REQ_SLEEPING;
	log_info("IMDS is updating (HTTP 410): retrying", "identity=%s attempt=%d retry_in_ms=%lld",
		 m->name, q->attempt, (long long)delay);
	return true;
}

static void
on_fetch_done(void *arg, const struct fetch_response *resp)
{
	struct azure_req *q = arg;
	struct azure_mi *m = q->mi;
	struct token_result r;

	if (m == NULL) {
		/* the client was freed while this was in flight: nobody to tell */
		req_free(q);
		return;
	}
	azure_limiter_release(&m->limiter);
	if (!TAILQ_EMPTY(&m->queue))
		schedule_pump(m, 0);
	if (resp->error == 0 && resp->status == 410 && m->retry_gone && req_retry_gone(m, q, resp))
		return;
	/* throttling is per VM: the identity's other requests would get 429 too */
	if (resp->error == 0 && resp->status == 429 && resp->retry_after > 0)
		azure_limiter_pause(&m->limiter,
				    clock_mono_ms() + retry_after_ms(resp->retry_after));

	req_unlink(m, q);
	token_result_init(&r);
	azure_result_from_response(resp, &r);
	if (r.error != 0 && answer_echoes_secret(q, resp))
		withhold(&r);
	if (resp->error == 0 && resp->status == 410 && q->attempt > 0) {
		char more[96];

		snprintf(more, sizeof(more), " (410 for %lld s, %d attempts)",
			 (long long)((clock_mono_ms() - q->first_ms) / 1000), q->attempt + 1);
		if (strlen(r.message) + strlen(more) < sizeof(r.message))
			strcat(r.message, more);
	}
	req_finish(q, &r);
	token_result_clear(&r);
}

int
azure_mi_fetch_prio(struct azure_mi *m, const char *resource, enum source_priority prio,
		    source_done_fn *done, void *arg)
{
	struct azure_req *q, *head;
	size_t len;
	char msg[256];

	if (resource == NULL || done == NULL)
		return -EINVAL;
	len = strlen(resource);
	if (len == 0 || len > AZURE_MAX_RESOURCE)
		return -EINVAL;
	head = TAILQ_FIRST(&m->queue);
	/* a new dynamic resource waits only while few others do: a flood fails fast */
	if (prio == SOURCE_PRIO_LOW && m->n_low >= SOURCE_MAX_QUEUED_LOW)
		return -ENOBUFS;
	q = calloc(1, sizeof(*q));
	if (q == NULL)
		return -ENOMEM;
	q->resource = strdup(resource);
	if (q->resource == NULL) {
		free(q);
		return -ENOMEM;
	}
	q->mi = m;
	q->prio = prio;
	q->done = done;
	q->arg = arg;

	/* straight out when nothing of its priority or higher waits ahead of it */
	if ((head == NULL || (prio == SOURCE_PRIO_HIGH && head->prio == SOURCE_PRIO_LOW)) &&
	    req_acquire(m, q) == 0) {
		if (req_dispatch(m, q, msg, sizeof(msg)) == 0) {
			TAILQ_INSERT_TAIL(&m->all, q, all);
			return 0;
		}
		/* the queue tries again from the loop and reports why it failed */
		azure_limiter_release(&m->limiter);
	}
	TAILQ_INSERT_TAIL(&m->all, q, all);
	queue_insert(m, q);
	/* from the loop, never from here: done must not run inside source_fetch */
	schedule_pump(m, 0);
	return 0;
}

int
azure_mi_fetch(struct azure_mi *m, const char *resource, source_done_fn *done, void *arg)
{
	return azure_mi_fetch_prio(m, resource, SOURCE_PRIO_HIGH, done, arg);
}

int
azure_mi_cancel(struct azure_mi *m, source_done_fn *done, void *arg)
{
	struct azure_req *q;

	TAILQ_FOREACH(q, &m->all, all)
	{
		if (q->done != done || q->arg != arg)
			continue;
		if (q->state == REQ_IN_FLIGHT)
			return -EBUSY;
		/* queued, or sleeping until its next 410 retry (req_free stops that timer) */
		req_unlink(m, q);
		req_free(q);
		return 0;
	}
	return -ENOENT;
}

/* Construction */

int
azure_mi_new(struct azure_mi **out, struct event_base *base, struct fetch *fetch,
	     const struct azure_mi_params *p)
{
	struct azure_mi *m;
	bool oom = false;
	size_t n = 0;

	if (p->endpoint == NULL || p->endpoint[0] == '\0' || p->api_version == NULL)
		return -EINVAL;
	while (p->headers != NULL && p->headers[n] != NULL)
		n++;
	if (n > 5)
		return -EINVAL; /* req_dispatch has room for 5 + the secret + the loop field */
	m = calloc(1, sizeof(*m));
	if (m == NULL)
		return -ENOMEM;
	TAILQ_INIT(&m->all);
	TAILQ_INIT(&m->queue);
	m->base = base;
	m->fetch = fetch;
	m->timeout_ms = p->timeout_ms;
	m->retry_gone = p->retry_gone;
	m->secret = p->secret;
	m->secret_ctx = p->secret_ctx;
	azure_limiter_init(&m->limiter, p->max_concurrent, p->max_per_window, AZURE_WINDOW_MS);
	m->name = str_dup_opt(p->name != NULL ? p->name : "?", &oom);
	m->endpoint = str_dup_opt(p->endpoint, &oom);
	m->api_version = str_dup_opt(p->api_version, &oom);
	m->selector = str_dup_opt(p->selector != NULL ? p->selector : "", &oom);
	m->ca_file = str_dup_opt(p->ca_file, &oom);
	m->headers = calloc(n + 1, sizeof(*m->headers));
	if (m->headers == NULL)
		oom = true;
	for (size_t i = 0; m->headers != NULL && i < n; i++, m->n_headers++)
		m->headers[i] = str_dup_opt(p->headers[i], &oom);
	m->pump = evtimer_new(base, on_pump, m);
	if (oom || m->pump == NULL) {
		azure_mi_free(m);
		return -ENOMEM;
	}
	*out = m;
	return 0;
}

struct azure_mi *
azure_mi_free(struct azure_mi *m)
{
	struct azure_req *q;

	if (m == NULL)
		return NULL;
	while ((q = TAILQ_FIRST(&m->all)) != NULL) {
		req_unlink(m, q);
		if (q->state == REQ_IN_FLIGHT) {
			/* orphaned: its callback (at the latest from fetch_free) frees q */
			q->mi = NULL;
			if (q->wake != NULL) {
				event_free(q->wake);
				q->wake = NULL;
			}
		} else {
			req_free(q);
		}
	}
	if (m->pump != NULL)
		event_free(m->pump);
	for (size_t i = 0; i < m->n_headers; i++)
		free(m->headers[i]);
	free(m->headers);
	free(m->ca_file);
	free(m->selector);
	free(m->api_version);
	free(m->endpoint);
	free(m->name);
	free(m);
	return NULL;
}
