/*
 * The azure-imds source: tokens from the Azure Instance Metadata Service
 * managed-identity endpoint (GET {endpoint}?api-version=2018-02-01&resource=
 * with "Metadata: true"; normally http://169.254.169.254/metadata/identity/
 * oauth2/token, taken from the config so tests can point it at loopback).
 * It turns IMDS answers and transport failures into token_results with the
 * retry hints the cache needs (status, Retry-After, permanent).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "fetch.h"
#include "source.h"
#include "token.h"

#define IMDS_API_VERSION     "2018-02-01"
#define IMDS_MAX_RESOURCE    2048	 /* longest resource we put in a URL */
#define IMDS_MAX_BODY	     (64 * 1024) /* a token answer is a few KiB */
#define IMDS_DEFAULT_TIMEOUT 10		 /* seconds, when the config says 0 */
#define IMDS_MAX_TIMEOUT     600	 /* seconds: bounds a silly config value */
#define IMDS_GONE_RETRY	     10		 /* 410: IMDS asks to retry for up to 70 s */

struct imds_request;

struct imds_source {
	struct source s; /* first: the generic header */
	struct fetch *fetch;
	/* copied from the identity so a config reload cannot pull them away */
	char *endpoint;
	char *ca_file;
	long timeout_ms;
	char *selector; /* "&client_id=..." (encoded) or "" */
	struct imds_request *reqs;
};

/* One upstream request; outlives its source if the source is freed first. */
struct imds_request {
	struct imds_source *src; /* NULL once orphaned */
	struct imds_request *prev, *next;
	source_done_fn *done;
	void *arg;
};

static const char *const imds_headers[] = {
    "Metadata: true",
    "Accept: application/json",
    NULL,
};

/* RFC 3986 percent-encoding of everything but unreserved characters. */
static char *
url_encode(const char *s, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	char *out = malloc(3 * len + 1);
	char *o = out;

	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '.' || c == '_' || c == '~') {
			*o++ = (char)c;
		} else {
			*o++ = '%';
			*o++ = hex[c >> 4];
			*o++ = hex[c & 15];
		}
	}
	*o = '\0';
	return out;
}

static void
request_unlink(struct imds_request *q)
{
	if (q->src == NULL)
		return;
	if (q->prev != NULL)
		q->prev->next = q->next;
	else
		q->src->reqs = q->next;
	if (q->next != NULL)
		q->next->prev = q->prev;
	q->prev = q->next = NULL;
}

/* 4xx means the request itself is wrong, except the codes IMDS uses for "later". */
static bool
status_permanent(long status)
{
	if (status < 400 || status > 499)
		return false;
	return status != 404 && status != 408 && status != 410 && status != 429;
}

static void
result_from_http_error(const struct fetch_response *resp, struct token_result *r)
{
	int rc;

	rc = token_parse_response(resp->body, resp->body_len, time(NULL), r);
	if (rc == 0 || r->error_code[0] == '\0' || strcmp(r->error_code, "invalid_response") == 0) {
		/* not an error document (or a token with an error status): say what we know */
		token_result_clear(r);
		snprintf(r->error_code, sizeof(r->error_code), "http_error");
		snprintf(r->message, sizeof(r->message), "upstream answered HTTP %ld",
			 resp->status);
	}
	r->error = -EIO;
	r->http_status = resp->status;
	r->retry_after = resp->retry_after;
	r->permanent = status_permanent(resp->status);
	if (resp->status == 410 && r->retry_after < 0)
		r->retry_after = IMDS_GONE_RETRY;
}

static void
on_fetch_done(void *arg, const struct fetch_response *resp)
{
	struct imds_request *q = arg;
	struct token_result r;

	if (q->src == NULL) {
		/* the source was freed while this was in flight: nobody to tell */
		free(q);
		return;
	}
	request_unlink(q);
	token_result_init(&r);

	if (resp->error != 0) {
		r.error = resp->error;
		if (resp->error == -EFBIG) {
			snprintf(r.error_code, sizeof(r.error_code), "invalid_response");
			snprintf(r.message, sizeof(r.message),
				 "upstream answer larger than %d bytes", IMDS_MAX_BODY);
		} else {
			snprintf(r.error_code, sizeof(r.error_code), "upstream_unreachable");
			snprintf(r.message, sizeof(r.message), "upstream unreachable: %s",
				 resp->message != NULL ? resp->message : "unknown error");
		}
	} else if (resp->status < 200 || resp->status > 299) {
		result_from_http_error(resp, &r);
	} else {
		/* error_code and message are filled on failure */
		token_parse_response(resp->body, resp->body_len, time(NULL), &r);
		r.http_status = resp->status;
		r.retry_after = resp->retry_after;
	}

	q->done(q->arg, &r);
	token_result_clear(&r);
	free(q);
}

static int
imds_fetch(struct source *s, const char *resource, source_done_fn *done, void *arg)
{
	struct imds_source *src = (struct imds_source *)s;
	struct fetch_request req = {0};
	struct imds_request *q = NULL;
	char *enc = NULL, *url = NULL;
	size_t len;
	int rc;

	if (resource == NULL || done == NULL)
		return -EINVAL;
	len = strlen(resource);
	if (len == 0 || len > IMDS_MAX_RESOURCE)
		return -EINVAL;

	enc = url_encode(resource, len);
	q = calloc(1, sizeof(*q));
	if (enc == NULL || q == NULL) {
		rc = -ENOMEM;
		goto out;
	}
	if (asprintf(&url, "%s%capi-version=" IMDS_API_VERSION "&resource=%s%s", src->endpoint,
		     strchr(src->endpoint, '?') != NULL ? '&' : '?', enc, src->selector) < 0) {
		url = NULL;
		rc = -ENOMEM;
		goto out;
	}

	req.method = "GET";
	req.url = url;
	req.headers = imds_headers;
	req.ca_file = src->ca_file;
	req.timeout_ms = src->timeout_ms;
	req.max_body = IMDS_MAX_BODY;

	q->src = src;
	q->done = done;
	q->arg = arg;
	rc = fetch_start(src->fetch, &req, on_fetch_done, q);
	if (rc < 0)
		goto out;
	q->next = src->reqs;
	if (src->reqs != NULL)
		src->reqs->prev = q;
	src->reqs = q;
	q = NULL;

out:
	free(q);
	free(url);
	free(enc);
	return rc;
}

static int
imds_jwks(struct source *s, struct evbuffer *out)
{
	return -ENOTSUP;
}

static void
imds_free(struct source *s)
{
	struct imds_source *src = (struct imds_source *)s;
	struct imds_request *q, *next;

	/* fetch has no cancel: requests in flight finish later, silently */
	for (q = src->reqs; q != NULL; q = next) {
		next = q->next;
		q->src = NULL;
		q->prev = q->next = NULL;
	}
	free(src->selector);
	free(src->ca_file);
	free(src->endpoint);
	free(src);
}

static const struct source_ops imds_ops = {
    .kind = "azure-imds",
    .fetch = imds_fetch,
    .jwks = imds_jwks,
    .free = imds_free,
};

/* "&name=<encoded value>" for the one configured selector, or "". */
static int
make_selector(const struct config_identity *id, char **out)
{
	const char *name = NULL, *value = NULL;
	char *enc, *sel;
	int n = 0;

	if (id->client_id != NULL) {
		name = "client_id";
		value = id->client_id;
		n++;
	}
	if (id->object_id != NULL) {
		name = "object_id";
		value = id->object_id;
		n++;
	}
	if (id->msi_res_id != NULL) {
		name = "msi_res_id";
		value = id->msi_res_id;
		n++;
	}
	if (n > 1)
		return -EINVAL; /* IMDS selectors are mutually exclusive */
	if (n == 0) {
		sel = strdup("");
		if (sel == NULL)
			return -ENOMEM;
		*out = sel;
		return 0;
	}
	if (value[0] == '\0' || strlen(value) > IMDS_MAX_RESOURCE)
		return -EINVAL;
	enc = url_encode(value, strlen(value));
	if (enc == NULL)
		return -ENOMEM;
	if (asprintf(&sel, "&%s=%s", name, enc) < 0) {
		free(enc);
		return -ENOMEM;
	}
	free(enc);
	*out = sel;
	return 0;
}

int
source_imds_new(struct source **out, const struct config_identity *id, struct event_base *base,
		struct fetch *fetch)
{
	struct imds_source *src;
	int64_t timeout;
	int rc;

	if (id == NULL || fetch == NULL || id->endpoint == NULL || id->endpoint[0] == '\0')
		return -EINVAL;
	src = calloc(1, sizeof(*src));
	if (src == NULL)
		return -ENOMEM;
	src->s.ops = &imds_ops;
	src->s.id = id;
	src->fetch = fetch;
	timeout = id->timeout > 0 ? id->timeout : IMDS_DEFAULT_TIMEOUT;
	src->timeout_ms = (long)(timeout < IMDS_MAX_TIMEOUT ? timeout : IMDS_MAX_TIMEOUT) * 1000L;
	src->endpoint = strdup(id->endpoint);
	if (src->endpoint == NULL) {
		rc = -ENOMEM;
		goto fail;
	}
	if (id->ca_file != NULL) {
		src->ca_file = strdup(id->ca_file);
		if (src->ca_file == NULL) {
			rc = -ENOMEM;
			goto fail;
		}
	}
	rc = make_selector(id, &src->selector);
	if (rc < 0)
		goto fail;
	*out = &src->s;
	return 0;

fail:
	imds_free(&src->s);
	return rc;
}
