/* Fetch: libcurl's multi interface driven from the libevent loop (curl_multi_socket_action). */
#ifndef BEARERD_FETCH_H
#define BEARERD_FETCH_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct fetch;

#define FETCH_MAX_BODY (1024 * 1024) /* default bound on an upstream answer */
/* Upstream connections open at once; libcurl queues transfers beyond it. */
#define FETCH_MAX_CONNECTIONS 32

struct fetch_request {
	const char *method; /* "GET" or "POST" */
	const char *url;
	const char *const *headers; /* "Name: value", NULL-terminated, may be NULL; wiped after */
	const char *body;	    /* POST body, may be NULL */
	size_t body_len;
	const char *ca_file; /* extra trust anchor, or NULL */
	/* mTLS: PEM client certificate and key files, both or neither (NULL) */
	const char *tls_cert_file;
	const char *tls_key_file;
	long timeout_ms; /* whole request; 0 means 10 s */
	size_t max_body; /* 0 means FETCH_MAX_BODY; larger answers fail */
};

struct fetch_response {
	int error; /* 0, or negative errno (-ETIMEDOUT, -ECONNREFUSED, -EFBIG, -EIO ...) */
	const char *message; /* curl's error text when error != 0 */
	long status;	     /* HTTP status, 0 when none */
	const char *body;    /* NUL-terminated; wiped after the callback returns */
	size_t body_len;
	int64_t retry_after; /* seconds from a Retry-After header (delta or date), -1 when absent */
	const char *content_type; /* the answer's Content-Type, or NULL */
};

/* Called exactly once per fetch_start, from the loop, never from inside fetch_start. */
typedef void fetch_done_fn(void *arg, const struct fetch_response *resp);

/* Fails when libcurl lacks asynchronous DNS (a blocking resolver would stall the loop). */
int fetch_new(struct fetch **out, struct event_base *base);
/*
 * Aborts transfers in flight, calling each callback with -ECANCELED (from
 * inside fetch_free: free the sources first so that nobody starts a new one).
 */
struct fetch *fetch_free(struct fetch *f);

int fetch_start(struct fetch *f, const struct fetch_request *req, fetch_done_fn *done, void *arg);

/* Number of transfers in flight. */
int fetch_in_flight(const struct fetch *f);

#endif
