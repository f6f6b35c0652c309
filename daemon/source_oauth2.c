/*
 * The client-credentials sources: entra-secret, entra-certificate,
 * entra-federated and oauth2.  One engine: each fetch POSTs an
 * application/x-www-form-urlencoded grant_type=client_credentials request to
 * the token endpoint ({authority}/{tenant}/oauth2/v2.0/token for Entra,
 * token_url for oauth2) and turns the answer into a token_result.
 *
 * Client authentication, by source:
 *   entra-secret        client_secret in the body, read from its file per fetch;
 *   entra-certificate   a client assertion JWT signed per fetch (assertion.c);
 *   entra-federated     the federated token file's content as the assertion,
 *                       re-read every 5 minutes and after an error answer;
 *   oauth2              client_secret_basic, client_secret_post or private_key_jwt.
 * Secrets are read when needed and wiped after use; none is ever logged.  A
 * request keeps what it sent until the answer: an error answer that echoes
 * it anywhere has its description withheld.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <event2/event.h>
#include <event2/buffer.h>

#include "assertion.h"
#include "base64.h"
#include "clock.h"
#include "config.h"
#include "fetch.h"
#include "log.h"
#include "secret.h"
#include "source.h"
#include "str.h"
#include "token.h"
#include "urlencode.h"
#include "wipe.h"

#define OAUTH2_MAX_RESOURCE    2048
#define OAUTH2_MAX_BODY	       (64 * 1024) /* a token answer is a few KiB */
#define OAUTH2_MAX_TIMEOUT     600
#define OAUTH2_FED_MAX_AGE     300 /* seconds before the federated token is read again */
#define OAUTH2_PERMANENT_RETRY 30  /* seconds at least between tries after a client error */
#define ASSERTION_TYPE_JWT     "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#define ENTRA_SCOPE_SUFFIX     "/.default"

/* What tells that a file was replaced or rewritten. */
struct file_stamp {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
};

enum auth {
	AUTH_SECRET_BASIC,
	AUTH_SECRET_POST,
	AUTH_PRIVATE_KEY_JWT,
	AUTH_FEDERATED,
};

struct oauth2_request;

struct oauth2_source {
	struct source s; /* first: the generic header */
	struct event_base *base;
	struct fetch *fetch;
	bool entra;
	enum auth auth;
	/* copied from the identity so a config reload cannot pull them away */
	char *token_url;
	char *client_id;
	char *ca_file;
	char *tls_cert_file;
	char *tls_key_file;
	long timeout_ms;
	char *secret_file;
	struct assertion_key *key;
	char *key_file, *cert_file; /* loaded again when either changes on disk */
	enum config_assertion_alg alg;
	struct file_stamp key_stamp, cert_stamp;
	char *key_id;
	bool send_x5c;
	char *fed_file;
	char *fed_token; /* cached federated assertion, wiped on free */
	size_t fed_len;
	int64_t fed_read_at_ms; /* on the boot clock */
	bool fed_stale;
	unsigned audience_param;
	char *scopes;	    /* configured scopes joined with " ", or NULL */
	char *extra_params; /* "&name=value..." encoded, or "" */
	struct oauth2_request *reqs;
};

/* One upstream request; outlives its source if the source is freed first. */
struct oauth2_request {
	struct oauth2_source *src; /* NULL once orphaned */
	struct oauth2_request *prev, *next;
	source_done_fn *done;
	void *arg;
	struct token_result early; /* a failure found before sending, reported from the loop */
	struct event *early_ev;	   /* reports early; freed with the source if still pending */
	/* the credentials sent, to keep them out of error messages; wiped on free */
	char *secret; /* client secret */
	size_t secret_len;
	char *assertion; /* client assertion or federated token */
	size_t assertion_len;
};

/* RFC 3986 percent-encoding of everything but unreserved characters. */
static char *
form_encode(const char *s)
{
	return url_encode(s, strlen(s), 0);
}

/* A request body being built: it may hold a secret, so every copy is wiped. */
struct form {
	char *buf;
	size_t len, cap;
};

static int
form_append(struct form *f, const char *s, size_t n)
{
	size_t cap;

	if (f->len + n + 1 > f->cap) {
		cap = f->cap ? f->cap : 512;
		while (cap < f->len + n + 1)
			cap *= 2;
		if (wipe_realloc(&f->buf, &f->cap, f->len, cap) < 0)
			return -ENOMEM;
	}
	memcpy(f->buf + f->len, s, n);
	f->len += n;
	f->buf[f->len] = '\0';
	return 0;
}

/* Appends "&name=<encoded value>" (no "&" when the form is empty). */
static int
form_add(struct form *f, const char *name, const char *value)
{
	char *enc = form_encode(value);
	int r;

	if (enc == NULL)
		return -ENOMEM;
	r = form_append(f, "&", f->len > 0 ? 1 : 0);
	if (r == 0)
		r = form_append(f, name, strlen(name));
	if (r == 0)
		r = form_append(f, "=", 1);
	if (r == 0)
		r = form_append(f, enc, strlen(enc));
	wipe_free_str(enc);
	return r;
}

static void
request_unlink(struct oauth2_request *q)
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

static void
request_link(struct oauth2_source *src, struct oauth2_request *q)
{
	q->src = src;
	q->next = src->reqs;
	if (src->reqs != NULL)
		src->reqs->prev = q;
	src->reqs = q;
}

/*
 * A 4xx answer is the client's fault (wrong secret, unknown client, bad
 * scope): retrying soon will not help.  408, 429 and the OAuth2 codes for
 * "later" are the exceptions.
 */
static bool
answer_permanent(long status, const char *code)
{
	if (status < 400 || status > 499 || status == 408 || status == 429)
		return false;
	return strcmp(code, "temporarily_unavailable") != 0 && strcmp(code, "slow_down") != 0;
}

static void
result_from_http_error(const struct fetch_response *resp, struct token_result *r)
{
	int rc = token_parse_response(resp->body, resp->body_len, time(NULL), r);

	if (rc == 0 || r->error_code[0] == '\0' || strcmp(r->error_code, "invalid_response") == 0) {
		/* not an error document: say what we know */
		token_result_clear(r);
		snprintf(r->error_code, sizeof(r->error_code), "http_error");
		snprintf(r->message, sizeof(r->message), "token endpoint answered HTTP %ld",
			 resp->status);
	}
	r->error = -EIO;
	r->http_status = resp->status;
	r->retry_after = resp->retry_after;
	r->permanent = answer_permanent(resp->status, r->error_code);
	/* a wrong secret will not right itself in a second: a few requests a minute at most */
	if (r->permanent && r->retry_after < OAUTH2_PERMANENT_RETRY)
		r->retry_after = OAUTH2_PERMANENT_RETRY;
}

static void
result_from_transport(const struct fetch_response *resp, struct token_result *r)
{
	r->error = resp->error;
	if (resp->error == -EFBIG) {
		snprintf(r->error_code, sizeof(r->error_code), "invalid_response");
		snprintf(r->message, sizeof(r->message),
			 "token endpoint answer larger than %d bytes", OAUTH2_MAX_BODY);
	} else if (resp->error == -EPROTO) {
		snprintf(r->error_code, sizeof(r->error_code), "tls_error");
		snprintf(r->message, sizeof(r->message), "TLS with the token endpoint failed: %s",
			 resp->message != NULL ? resp->message : "unknown error");
	} else {
		snprintf(r->error_code, sizeof(r->error_code), "upstream_unreachable");
		snprintf(r->message, sizeof(r->message), "token endpoint unreachable: %s",
			 resp->message != NULL ? resp->message : "unknown error");
	}
}

static void
request_free(struct oauth2_request *q)
{
	if (q->early_ev != NULL)
		event_free(q->early_ev);
	token_result_clear(&q->early);
	wipe_free(q->secret, q->secret_len);
	wipe_free(q->assertion, q->assertion_len);
	free(q);
}

static int basic_header(const char *id, const char *secret, char **out);

/*
 * Which credential of q the upstream's answer holds (raw, form-encoded,
 * JSON-escaped, or as the Basic credentials), or NULL.  Looked for in the
 * whole body before anything is parsed, truncated or cleaned up: a message
 * cut to fit would hold most of a secret and no longer match it.
 */
static const char *
answer_credential(const struct oauth2_request *q, const struct fetch_response *resp)
{
	const char *what = NULL;
	char *basic = NULL;
	size_t skip = strlen("Authorization: Basic ");

	if (resp->body == NULL || resp->body_len == 0)
		return NULL;
	if (q->secret != NULL &&
	    secret_in_text(resp->body, resp->body_len, q->secret, q->secret_len))
		what = "client secret";
	if (what == NULL && q->secret != NULL && q->src->auth == AUTH_SECRET_BASIC) {
		if (basic_header(q->src->client_id, q->secret, &basic) < 0 ||
		    secret_in_text(resp->body, resp->body_len, basic + skip, strlen(basic) - skip))
			what = "client secret";
		wipe_free_str(basic);
	}
	if (what == NULL && q->assertion != NULL &&
	    secret_in_text(resp->body, resp->body_len, q->assertion, q->assertion_len))
		what = q->src->auth == AUTH_FEDERATED ? "federated token" : "client assertion";
	return what;
}

/* An OAuth2 error code as RFC 6749 registers them: lower case and underscores. */
static bool
plain_code(const char *code)
{
	size_t n = strspn(code, "abcdefghijklmnopqrstuvwxyz_");

	return n > 0 && n <= 40 && code[n] == '\0';
}

/*
 * The answer echoed a credential: nothing the upstream wrote goes into logs,
 * status or 503 bodies but an error code of the usual shape.
 */
static void
withhold(const char *what, struct token_result *r)
{
	if (!plain_code(r->error_code))
		snprintf(r->error_code, sizeof(r->error_code), "upstream_error");
	snprintf(r->message, sizeof(r->message),
		 "the token endpoint's error description is withheld: it contained the %s sent "
		 "with the request",
		 what);
}

static void
on_fetch_done(void *arg, const struct fetch_response *resp)
{
	struct oauth2_request *q = arg;
	const char *echoed = NULL;
	struct token_result r;

	if (q->src == NULL) {
		request_free(q); /* the source was freed while this was in flight */
		return;
	}
	request_unlink(q);
	token_result_init(&r);
	if (resp->error == 0)
		echoed = answer_credential(q, resp);
	if (resp->error != 0) {
		result_from_transport(resp, &r);
	} else if (resp->status < 200 || resp->status > 299) {
		result_from_http_error(resp, &r);
		/* maybe the projected token rotated since: read it again before the retry */
		if (q->src->auth == AUTH_FEDERATED && resp->status >= 400 && resp->status < 500)
			q->src->fed_stale = true;
	} else {
		token_parse_response(resp->body, resp->body_len, time(NULL), &r);
		r.http_status = resp->status;
		r.retry_after = resp->retry_after;
	}
	/* an error document may come with any status */
	if (r.error != 0 && echoed != NULL)
		withhold(echoed, &r);
	q->done(q->arg, &r);
	token_result_clear(&r);
	request_free(q);
}

/* Reports q->early from the loop, as source_done_fn promises. */
static void
on_early(evutil_socket_t fd, short events, void *arg)
{
	struct oauth2_request *q = arg;

	if (q->src != NULL) {
		request_unlink(q);
		q->done(q->arg, &q->early);
	}
	request_free(q);
}

/* The federated assertion: the cached file content, read again when old or after an error. */
static int
federated_assertion(struct oauth2_source *src, char *msg, size_t size)
{
	char *tok = NULL;
	size_t len = 0;
	int r;

	if (src->fed_token != NULL && !src->fed_stale &&
	    clock_boot_ms() - src->fed_read_at_ms < OAUTH2_FED_MAX_AGE * 1000)
		return 0;
	/* Kubernetes projects the token 0644: others may read it (see config.c) */
	r = secret_read(src->fed_file, true, &tok, &len, msg, size);
	if (r < 0)
		return r;
	wipe_free(src->fed_token, src->fed_len);
	src->fed_token = tok;
	src->fed_len = len;
	src->fed_stale = false;
	/* the boot clock: a token read before a suspend has aged by the time slept */
	src->fed_read_at_ms = clock_boot_ms();
	return 0;
}

/* "RESOURCE/.default" as the Entra SDKs send it; a resource ending in "/" keeps it. */
static int
entra_scope(const char *resource, char **out)
{
	size_t n = strlen(resource), sn = strlen(ENTRA_SCOPE_SUFFIX);

	if (n >= sn && strcmp(resource + n - sn, ENTRA_SCOPE_SUFFIX) == 0)
		*out = strdup(resource);
	else if (asprintf(out, "%s" ENTRA_SCOPE_SUFFIX, resource) < 0)
		*out = NULL;
	return *out == NULL ? -ENOMEM : 0;
}

/* scope, resource, audience parameters for the requested resource. */
static int
add_audience(struct oauth2_source *src, const char *resource, struct form *form)
{
	char *scope = NULL;
	int r = 0;

	if (src->entra) {
		r = entra_scope(resource, &scope);
		if (r == 0)
			r = form_add(form, "scope", scope);
		free(scope);
		return r;
	}
	if (src->audience_param & CONFIG_AUD_SCOPE) {
		if (src->scopes != NULL && asprintf(&scope, "%s %s", src->scopes, resource) < 0)
			return -ENOMEM;
		r = form_add(form, "scope", scope != NULL ? scope : resource);
		free(scope);
	} else if (src->scopes != NULL) {
		r = form_add(form, "scope", src->scopes);
	}
	if (r == 0 && (src->audience_param & CONFIG_AUD_RESOURCE))
		r = form_add(form, "resource", resource);
	if (r == 0 && (src->audience_param & CONFIG_AUD_AUDIENCE))
		r = form_add(form, "audience", resource);
	return r;
}

static void
stamp_of(const char *path, struct file_stamp *st)
{
	struct stat sb;

	memset(st, 0, sizeof(*st));
	if (path != NULL && stat(path, &sb) == 0) {
		st->dev = sb.st_dev;
		st->ino = sb.st_ino;
		st->size = sb.st_size;
		st->mtime = sb.st_mtim;
	}
}

static bool
stamp_equal(const struct file_stamp *a, const struct file_stamp *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/*
 * The assertion key, loaded again when the key or certificate file changed
 * (a renewed certificate is picked up without a reload, which would keep an
 * unchanged identity's source).
 */
static int
current_key(struct oauth2_source *src, char *msg, size_t size)
{
	struct file_stamp ks, cs;
	struct assertion_key *k = NULL;
	int r;

	stamp_of(src->key_file, &ks);
	stamp_of(src->cert_file, &cs);
	if (src->key != NULL && stamp_equal(&ks, &src->key_stamp) &&
	    stamp_equal(&cs, &src->cert_stamp))
		return 0;
	r = assertion_key_load(&k, src->key_file, src->cert_file, src->alg, src->entra, msg, size);
	if (r < 0)
		return r;
	assertion_key_free(src->key);
	src->key = k;
	src->key_stamp = ks;
	src->cert_stamp = cs;
	return 0;
}

/* "Authorization: Basic base64(urlenc(id):urlenc(secret))", RFC 6749 2.3.1. */
static int
basic_header(const char *id, const char *secret, char **out)
{
	char *eid = form_encode(id), *esec = form_encode(secret), *pair = NULL, *b64 = NULL;
	size_t plen = 0;
	int r = -ENOMEM;

	if (eid == NULL || esec == NULL || asprintf(&pair, "%s:%s", eid, esec) < 0) {
		pair = NULL;
		goto out;
	}
	plen = strlen(pair);
	r = base64_encode(pair, plen, &b64);
	if (r < 0)
		goto out;
	r = asprintf(out, "Authorization: Basic %s", b64) < 0 ? -ENOMEM : 0;
out:
	wipe_free_str(b64);
	wipe_free(pair, plen);
	free(eid);
	wipe_free_str(esec);
	return r;
}

/*
 * Client authentication into form (and *auth_header for Basic).  A failure
 * to read a secret or sign fills r with the reason, never the content.
 */
static int
add_client_auth(struct oauth2_source *src, struct form *form, char **auth_header,
		struct oauth2_request *q)
{
	struct token_result *res = &q->early;
	char *secret = NULL, *assertion = NULL;
	size_t len = 0;
	int r = 0;

	switch (src->auth) {
	case AUTH_SECRET_BASIC:
	case AUTH_SECRET_POST:
		r = secret_read(src->secret_file, false, &secret, &len, res->message,
				sizeof(res->message));
		if (r < 0)
			break;
		if (src->auth == AUTH_SECRET_BASIC) {
			r = basic_header(src->client_id, secret, auth_header);
		} else {
			r = form_add(form, "client_id", src->client_id);
			if (r == 0)
				r = form_add(form, "client_secret", secret);
		}
		break;
	case AUTH_PRIVATE_KEY_JWT:
		r = current_key(src, res->message, sizeof(res->message));
		if (r < 0)
			break;
		r = assertion_sign(src->key, src->client_id, src->token_url, src->key_id,
				   src->send_x5c, (int64_t)time(NULL), &assertion);
		if (r < 0)
			snprintf(res->message, sizeof(res->message),
				 "cannot sign the client assertion: %s", strerror(-r));
		break;
	case AUTH_FEDERATED:
		r = federated_assertion(src, res->message, sizeof(res->message));
		break;
	}
	if (r == 0 && (src->auth == AUTH_PRIVATE_KEY_JWT || src->auth == AUTH_FEDERATED)) {
		r = form_add(form, "client_id", src->client_id);
		if (r == 0)
			r = form_add(form, "client_assertion_type", ASSERTION_TYPE_JWT);
		if (r == 0)
			r = form_add(form, "client_assertion",
				     assertion != NULL ? assertion : src->fed_token);
	}
	if (r < 0 && res->message[0] == '\0')
		snprintf(res->message, sizeof(res->message), "%s", strerror(-r));
	if (r == 0 && src->auth == AUTH_FEDERATED) {
		/* a copy: the source may read the file again before the answer */
		assertion = malloc(src->fed_len + 1);
		if (assertion == NULL)
			r = -ENOMEM;
		else
			memcpy(assertion, src->fed_token, src->fed_len + 1);
	}
	if (r == 0) {
		/* kept until the answer, for answer_credential() */
		q->secret = secret;
		q->secret_len = len;
		q->assertion = assertion;
		q->assertion_len = assertion != NULL ? strlen(assertion) : 0;
	} else {
		wipe_free(secret, len);
		wipe_free_str(assertion);
	}
	return r;
}

/* The form body, wiped after use: it may hold a secret or an assertion. */
static int
build_form(struct oauth2_source *src, const char *resource, char **body, size_t *body_len,
	   char **auth_header, struct oauth2_request *q)
{
	struct form form = {0};
	int r;

	r = form_add(&form, "grant_type", "client_credentials");
	if (r == 0)
		r = add_audience(src, resource, &form);
	if (r == 0)
		r = form_append(&form, src->extra_params, strlen(src->extra_params));
	if (r == 0)
		r = add_client_auth(src, &form, auth_header, q);
	if (r < 0) {
		wipe_free(form.buf, form.cap);
		return r;
	}
	*body = form.buf;
	*body_len = form.cap; /* what the caller wipes */
	return 0;
}

/* Reports err from the loop; a source freed first frees q without a word. */
static int
report_early(struct oauth2_source *src, struct oauth2_request *q, int err)
{
	static const struct timeval now = {0, 0};

	q->early.error = err;
	q->early.permanent = true;
	snprintf(q->early.error_code, sizeof(q->early.error_code), "credential_error");
	q->early_ev = evtimer_new(src->base, on_early, q);
	if (q->early_ev == NULL || evtimer_add(q->early_ev, &now) < 0)
		return -ENOMEM;
	request_link(src, q);
	return 0;
}

static int
oauth2_fetch(struct source *s, const char *resource, source_done_fn *done, void *arg)
{
	struct oauth2_source *src = (struct oauth2_source *)s;
	const char *headers[4] = {"Accept: application/json",
				  "Content-Type: application/x-www-form-urlencoded", NULL, NULL};
	struct fetch_request req = {0};
	struct oauth2_request *q;
	char *body = NULL, *auth = NULL;
	size_t body_len = 0, len;
	int rc;

	if (resource == NULL || done == NULL)
		return -EINVAL;
	len = strlen(resource);
	if (len == 0 || len > OAUTH2_MAX_RESOURCE)
		return -EINVAL;
	q = calloc(1, sizeof(*q));
	if (q == NULL)
		return -ENOMEM;
	q->done = done;
	q->arg = arg;
	token_result_init(&q->early);

	rc = build_form(src, resource, &body, &body_len, &auth, q);
	if (rc == -ENOMEM)
		goto out;
	if (rc < 0) {
		/* a secret file went missing or bad: say why, from the loop */
		rc = report_early(src, q, rc);
		if (rc == 0)
			q = NULL;
		goto out;
	}
	headers[2] = auth;
	req.method = "POST";
	req.url = src->token_url;
	req.headers = headers;
	req.body = body;
	req.body_len = strlen(body);
	req.ca_file = src->ca_file;
	req.tls_cert_file = src->tls_cert_file;
	req.tls_key_file = src->tls_key_file;
	req.timeout_ms = src->timeout_ms;
	req.max_body = OAUTH2_MAX_BODY;
	rc = fetch_start(src->fetch, &req, on_fetch_done, q);
	if (rc < 0)
		goto out;
	request_link(src, q);
	q = NULL;
out:
	if (q != NULL)
		request_free(q);
	wipe_free(body, body_len);
	wipe_free_str(auth);
	return rc;
}

static void
oauth2_free(struct source *s)
{
	struct oauth2_source *src = (struct oauth2_source *)s;
	struct oauth2_request *q, *next;

	/*
	 * Requests in flight are orphaned: fetch_free or their callback frees
	 * them.  Early reports not yet run are ours to free: nothing else would.
	 */
	for (q = src->reqs; q != NULL; q = next) {
		next = q->next;
		q->src = NULL;
		q->prev = q->next = NULL;
		if (q->early_ev != NULL)
			request_free(q);
	}
	free(src->token_url);
	free(src->client_id);
	free(src->ca_file);
	free(src->tls_cert_file);
	free(src->tls_key_file);
	free(src->secret_file);
	assertion_key_free(src->key);
	free(src->key_file);
	free(src->cert_file);
	free(src->key_id);
	free(src->fed_file);
	wipe_free(src->fed_token, src->fed_len);
	free(src->scopes);
	free(src->extra_params);
	free(src);
}

static const struct source_ops oauth2_ops = {
    .kind = "oauth2",
    .fetch = oauth2_fetch,
    .free = oauth2_free,
};
static const struct source_ops entra_secret_ops = {
    .kind = "entra-secret",
    .fetch = oauth2_fetch,
    .free = oauth2_free,
};
static const struct source_ops entra_certificate_ops = {
    .kind = "entra-certificate",
    .fetch = oauth2_fetch,
    .free = oauth2_free,
};
static const struct source_ops entra_federated_ops = {
    .kind = "entra-federated",
    .fetch = oauth2_fetch,
    .free = oauth2_free,
};

/* Joins words with sep, or NULL for none. */
static int
join_words(char *const *words, const char *sep, char **out)
{
	struct evbuffer *b;
	size_t len;
	char *s;

	*out = NULL;
	if (words == NULL || words[0] == NULL)
		return 0;
	b = evbuffer_new();
	if (b == NULL)
		return -ENOMEM;
	for (size_t i = 0; words[i] != NULL; i++) {
		if (evbuffer_add_printf(b, "%s%s", i ? sep : "", words[i]) < 0) {
			evbuffer_free(b);
			return -ENOMEM;
		}
	}
	len = evbuffer_get_length(b);
	s = malloc(len + 1);
	if (s != NULL) {
		evbuffer_remove(b, s, len);
		s[len] = '\0';
	}
	evbuffer_free(b);
	*out = s;
	return s == NULL ? -ENOMEM : 0;
}

/* extra_params "name=value" words as "&name=value" with both parts encoded. */
static int
encode_extra(char *const *params, char **out)
{
	struct evbuffer *b = evbuffer_new();
	size_t len;
	char *s = NULL;
	int r = 0;

	if (b == NULL)
		return -ENOMEM;
	for (size_t i = 0; params != NULL && params[i] != NULL && r == 0; i++) {
		const char *eq = strchr(params[i], '=');
		char *name = eq != NULL ? strndup(params[i], (size_t)(eq - params[i])) : NULL;
		char *en = name != NULL ? form_encode(name) : NULL;
		char *ev = eq != NULL ? form_encode(eq + 1) : NULL;

		if (en == NULL || ev == NULL || evbuffer_add_printf(b, "&%s=%s", en, ev) < 0)
			r = -ENOMEM;
		free(name);
		free(en);
		free(ev);
	}
	len = evbuffer_get_length(b);
	if (r == 0) {
		s = malloc(len + 1);
		if (s == NULL) {
			r = -ENOMEM;
		} else {
			evbuffer_remove(b, s, len);
			s[len] = '\0';
			*out = s;
		}
	}
	evbuffer_free(b);
	return r;
}

static int
copy_identity(struct oauth2_source *src, const struct config_identity *id)
{
	bool oom = false;
	int64_t timeout = id->timeout > 0 ? id->timeout : 10;

	src->timeout_ms =
	    (long)(timeout < OAUTH2_MAX_TIMEOUT ? timeout : OAUTH2_MAX_TIMEOUT) * 1000L;
	if (src->entra) {
		if (id->authority == NULL || id->tenant == NULL)
			return -EINVAL;
		if (asprintf(&src->token_url, "%s/%s/oauth2/v2.0/token", id->authority,
			     id->tenant) < 0) {
			src->token_url = NULL;
			return -ENOMEM;
		}
	} else {
		src->token_url = str_dup_opt(id->token_url, &oom);
	}
	src->client_id = str_dup_opt(id->client_id, &oom);
	src->ca_file = str_dup_opt(id->ca_file, &oom);
	src->tls_cert_file = str_dup_opt(id->tls_certificate_file, &oom);
	src->tls_key_file = str_dup_opt(id->tls_private_key_file, &oom);
	src->secret_file = str_dup_opt(id->client_secret_file, &oom);
	src->key_id = str_dup_opt(id->key_id, &oom);
	src->key_file = str_dup_opt(id->private_key_file, &oom);
	src->cert_file = str_dup_opt(id->certificate_file, &oom);
	src->alg = id->assertion_alg;
	src->fed_file = str_dup_opt(id->federated_token_file, &oom);
	src->send_x5c = id->send_x5c;
	src->audience_param = id->audience_param != 0 ? id->audience_param : CONFIG_AUD_SCOPE;
	if (oom || join_words(id->scopes, " ", &src->scopes) < 0 ||
	    encode_extra(id->extra_params, &src->extra_params) < 0)
		return -ENOMEM;
	if (src->token_url == NULL || src->client_id == NULL)
		return -EINVAL;
	return 0;
}

int
source_oauth2_new(struct source **out, const struct config_identity *id, struct event_base *base,
		  struct fetch *fetch)
{
	struct oauth2_source *src;
	char msg[512] = "";
	int rc;

	if (id == NULL || base == NULL || fetch == NULL)
		return -EINVAL;
	src = calloc(1, sizeof(*src));
	if (src == NULL)
		return -ENOMEM;
	src->s.id = id;
	src->base = base;
	src->fetch = fetch;
	switch (id->source) {
	case CONFIG_SOURCE_ENTRA_SECRET:
		src->s.ops = &entra_secret_ops;
		src->entra = true;
		src->auth = AUTH_SECRET_POST;
		break;
	case CONFIG_SOURCE_ENTRA_CERTIFICATE:
		src->s.ops = &entra_certificate_ops;
		src->entra = true;
		src->auth = AUTH_PRIVATE_KEY_JWT;
		break;
	case CONFIG_SOURCE_ENTRA_FEDERATED:
		src->s.ops = &entra_federated_ops;
		src->entra = true;
		src->auth = AUTH_FEDERATED;
		break;
	case CONFIG_SOURCE_OAUTH2:
		src->s.ops = &oauth2_ops;
		src->auth = id->auth_method == CONFIG_AUTH_SECRET_POST	     ? AUTH_SECRET_POST
			    : id->auth_method == CONFIG_AUTH_PRIVATE_KEY_JWT ? AUTH_PRIVATE_KEY_JWT
									     : AUTH_SECRET_BASIC;
		break;
	default:
		free(src);
		return -EINVAL;
	}
	rc = copy_identity(src, id);
	if (rc < 0)
		goto fail;
	if ((src->auth == AUTH_SECRET_BASIC || src->auth == AUTH_SECRET_POST) &&
	    src->secret_file == NULL) {
		rc = -EINVAL;
		goto fail;
	}
	if (src->auth == AUTH_FEDERATED && src->fed_file == NULL) {
		rc = -EINVAL;
		goto fail;
	}
	if (src->auth == AUTH_PRIVATE_KEY_JWT) {
		if (src->key_file == NULL) {
			rc = -EINVAL;
			goto fail;
		}
		rc = current_key(src, msg, sizeof(msg));
		if (rc < 0) {
			log_error("cannot load the client assertion key",
				  "identity=%s error=\"%s\"", id->name, msg);
			goto fail;
		}
	}
	*out = &src->s;
	return 0;
fail:
	oauth2_free(&src->s);
	return rc;
}
