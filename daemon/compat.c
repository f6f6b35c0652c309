/*
 * Azure-compatible listeners.  Unmodified Azure SDK clients get their tokens
 * from bearerd through one of two wire protocols they already speak (Azure's
 * managed-identity endpoints; README.md, "Use with Azure SDKs"):
 *   - IMDS: GET /metadata/identity/oauth2/token with Metadata: true, reached
 *     through AZURE_POD_IDENTITY_AUTHORITY_HOST;
 *   - App Service: GET /msi/token with X-IDENTITY-HEADER, reached through
 *     IDENTITY_ENDPOINT + IDENTITY_HEADER; and its 2017-09-01 form with the
 *     header "secret" (MSI_ENDPOINT + MSI_SECRET);
 *   - Cloud Shell: POST with Metadata: true and a form body resource=...
 *     (MSI_ENDPOINT alone), on the IMDS listener.
 * The IMDS listener may also hold 169.254.169.254:80 itself (a pod's own
 * network namespace) or sit behind an OUTPUT redirect (a VM), for clients that
 * hard-code IMDS; there it relays IMDS's other paths when told to.
 * Both are answered from the same cache entries as the local API, one per
 * (identity, resource), so every process on the host shares one token.
 *
 * Status choices: 400 for what the caller got wrong (SDKs do not retry it);
 * 503 with Retry-After for upstream trouble and for a wait that timed out
 * (JS retries 503 only with Retry-After; 504 makes the .NET probe give up);
 * 429 with Retry-After when the cache is full; never 404 or 410 for a token
 * request, which would make clients retry for 70 seconds.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "cache.h"
#include "compat.h"
#include "config.h"
#include "config_proxy.h"
#include "fetch.h"
#include "hex.h"
#include "http.h"
#include "json_write.h"
#include "log.h"
#include "metrics.h"
#include "source_azure.h"
#include "str.h"
#include "wipe.h"

#define COMPAT_MAX_PARAMS   64	 /* query parameters in one request */
#define COMPAT_MAX_KEY	    64	 /* bytes of a parameter name we compare */
#define COMPAT_MAX_VALUE    4096 /* bytes of a resource or selector */
#define COMPAT_MAX_SECRET   256	 /* bytes of an App Service secret */
#define COMPAT_SECRET_BYTES 32	 /* random bytes in a generated secret */
#define SDK_MIN_VALIDITY    300	 /* SDKs treat a token with less left as expired */
#define COMPAT_RETRY_AFTER  1	 /* seconds, on every 503 and 429 */

/*
 * Request bodies: a Cloud Shell form (a resource of COMPAT_MAX_VALUE bytes
 * and a selector, percent-encoded) or a relayed scheduledevents answer; more
 * is a 413 from the server layer.
 */
#define COMPAT_MAX_BODY	  16384
#define COMPAT_MAX_RELAYS 16	/* IMDS requests relayed at once (IMDS allows 5 a second) */
#define COMPAT_RELAY_MS	  10000 /* one relayed request, whole */
#define COMPAT_MAX_ORIGIN 256	/* bytes of the real IMDS's scheme://host:port */

#define IMDS_PATH	    "/identity/oauth2/token"
#define CLOUDSHELL_PATH	    "/oauth2/token" /* Cloud Shell's own MSI_ENDPOINT path */
#define APPSERVICE_PATH	    "/msi/token"
#define APPSERVICE_API	    "2019-08-01"
#define APPSERVICE_API_2017 "2017-09-01"
#define FORM_TYPE	    "application/x-www-form-urlencoded"

enum compat_kind {
	COMPAT_IMDS,
	COMPAT_APPSERVICE,
};

struct compat_listener {
	struct compat *compat;
	enum compat_kind kind;
	const char *name; /* "imds", "appservice" for logs */
	struct http_server *http;
	struct sockaddr_storage bound;
};

struct compat {
	struct event_base *base;
	struct cache *cache;
	const struct config *cfg;
	struct source **sources;
	struct compat_listener imds, appservice;
	char *secret; /* App Service X-IDENTITY-HEADER value */
	size_t secret_len;
	unsigned char secret_digest[SHA256_DIGEST_LENGTH];
	struct metrics *metrics;   /* or NULL */
	struct fetch *relay_fetch; /* made at the first relayed request (imds_relay) */
	unsigned relays;	   /* relayed requests in flight */
};

/* A request waiting for the cache. */
struct compat_wait {
	struct compat_listener *l;
	struct http_request *req;
	struct cache_waiter *waiter;
	char *resource;
	char *sel_name; /* the selector as the caller named it, or NULL */
	char *sel_value;
};

/* Replies */

static void
reply(struct compat_listener *l, struct http_request *req, int status, const char *extra,
      const void *body, size_t len)
{
	log_debug("compat request", "listener=%s status=%d", l->name, status);
	http_reply(req, status, "application/json; charset=utf-8", extra, body, len);
}

static void
reply_error(struct compat_listener *l, struct http_request *req, int status, const char *error,
	    const char *description, int64_t retry_after)
{
	struct evbuffer *b = evbuffer_new();
	char extra[64] = "";

	if (b == NULL) {
		reply(l, req, 500, NULL, NULL, 0);
		return;
	}
	json_append_error(b, error, description);
	if (retry_after > 0)
		snprintf(extra, sizeof(extra), "Retry-After: %" PRId64 "\r\n", retry_after);
	reply(l, req, status, extra[0] != '\0' ? extra : NULL, evbuffer_pullup(b, -1),
	      evbuffer_get_length(b));
	evbuffer_free(b);
}

static void
add_string_field(struct evbuffer *b, const char *name, const char *v, size_t len)
{
	evbuffer_add_printf(b, ",\"%s\":", name);
	json_append_string(b, v, len);
}

/*
 * One answered token request, labelled with the audience the resource
 * belongs to, or the resource itself for a dynamic one (the registry's series
 * bound keeps that label set finite).
 */
static void
count_answer(struct compat *c, const struct config_identity *id, const char *resource, int status,
	     bool timed_out)
{
	const struct config_audience *aud;

	if (c->metrics == NULL || resource == NULL)
		return;
	aud = id != NULL ? config_audience_for_resource(c->cfg, id, resource) : NULL;
	metrics_inc(c->metrics, METRICS_TOKEN_REQUESTS, aud != NULL ? aud->name : resource,
		    timed_out ? "timeout" : metrics_token_result(status));
}

/* The IMDS shape: every value a string, expires_* as decimal seconds, no refresh_in. */
static void
reply_token(struct compat_listener *l, struct http_request *req, const struct cache_answer *ans,
	    const struct config_identity *id, const char *resource, const char *sel_name,
	    const char *sel_value)
{
	struct evbuffer *b;
	unsigned char *body;
	size_t len;
	bool by_client;

	count_answer(l->compat, id, resource, ans->status == 200 ? 200 : 503, ans->status == 504);
	if (ans->status != 200) {
		/*
		 * A timed-out wait is transient like an upstream failure: 503, not
		 * 504.  Retry-After is always 1: while the cache backs off it
		 * answers retries at once from the last error without calling the
		 * upstream, and a longer value makes DefaultAzureCredential (5
		 * retries honouring it) hang for minutes instead of failing.
		 */
		reply_error(l, req, 503,
			    ans->error != NULL ? ans->error : "temporarily_unavailable",
			    ans->description != NULL ? ans->description : "no valid token",
			    COMPAT_RETRY_AFTER);
		return;
	}
	b = evbuffer_new();
	if (b == NULL) {
		reply_error(l, req, 500, "server_error", "out of memory", 1);
		return;
	}
	evbuffer_add_printf(b, "{\"access_token\":");
	json_append_string(b, ans->token->value, ans->token->len);
	/* App Service 2017-09-01 names it clientid, and answers client_id like the others */
	by_client = sel_name != NULL &&
		    (strcmp(sel_name, "client_id") == 0 || strcmp(sel_name, "clientid") == 0);
	if (sel_name != NULL && !by_client)
		add_string_field(b, sel_name, sel_value, strlen(sel_value));
	if (by_client)
		add_string_field(b, "client_id", sel_value, strlen(sel_value));
	else if (sel_name != NULL && id != NULL && id->client_id != NULL)
		add_string_field(b, "client_id", id->client_id, strlen(id->client_id));
	evbuffer_add_printf(b,
			    ",\"expires_in\":\"%" PRId64 "\",\"expires_on\":\"%" PRId64
			    "\",\"not_before\":\"%" PRId64 "\"",
			    ans->expires_in, ans->token->expires_on, (int64_t)time(NULL));
	add_string_field(b, "resource", resource, strlen(resource));
	evbuffer_add_printf(b, ",\"token_type\":\"Bearer\"}");
	len = evbuffer_get_length(b);
	body = evbuffer_pullup(b, -1);
	if (body == NULL) {
		reply_error(l, req, 500, "server_error", "out of memory", 1);
	} else {
		reply(l, req, 200, NULL, body, len);
		OPENSSL_cleanse(body, len);
	}
	evbuffer_free(b);
}

/* Requests */

/* Form-decodes a parameter name ('+' is a space); false when malformed or too long. */
static bool
decode_key(const char *in, size_t len, char *out, size_t size)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		char ch = in[i];

		if (ch == '%') {
			int b;

			if (i + 2 >= len)
				return false;
			b = hex_byte(in + i + 1);
			if (b <= 0) /* a bad escape, or %00 */
				return false;
			ch = (char)b;
			i += 2;
		} else if (ch == '+') {
			ch = ' ';
		}
		if (n + 1 >= size)
			return false;
		out[n++] = ch;
	}
	out[n] = '\0';
	return true;
}

/*
 * IMDS rejects a query that names a parameter twice.  0, or -EEXIST for a
 * duplicate, -E2BIG for too many parameters, -EINVAL for a malformed name.
 */
static int
query_check(const char *query, size_t len)
{
	char keys[COMPAT_MAX_PARAMS][COMPAT_MAX_KEY + 1];
	size_t n = 0, i = 0;

	while (i < len) {
		size_t end = i, klen;
		const char *eq;

		while (end < len && query[end] != '&')
			end++;
		if (end > i) {
			eq = memchr(query + i, '=', end - i);
			klen = eq != NULL ? (size_t)(eq - (query + i)) : end - i;
			if (n == COMPAT_MAX_PARAMS)
				return -E2BIG;
			if (!decode_key(query + i, klen, keys[n], sizeof(keys[n])))
				return -EINVAL;
			for (size_t k = 0; k < n; k++)
				if (strcmp(keys[k], keys[n]) == 0)
					return -EEXIST;
			n++;
		}
		i = end + 1;
	}
	return 0;
}

/*
 * The decoded value of name: 0, -ENOENT absent, other negative errno malformed.
 * A '+' in a value is a plus (RFC 3986), not a form-encoded space: MSAL.NET
 * sends the values unencoded (resource=api://a+b, mi_res_id=/subscriptions/...),
 * and the other SDKs encode a plus as %2B; no resource or ARM id has a space.
 */
static int
query_value(const char *query, size_t len, const char *name, char *out, size_t size)
{
	int count = 0;

	return http_query_get_rfc3986(query, len, name, out, size, &count);
}

/*
 * The same for the parameters of a request: the query, or (form) a Cloud
 * Shell body, application/x-www-form-urlencoded, where '+' is a space (Go's
 * url.Values and Python's requests encode a plus as %2B there).
 */
static int
param_value(const char *params, size_t len, bool form, const char *name, char *out, size_t size)
{
	int count = 0;

	if (!form)
		return query_value(params, len, name, out, size);
	return http_query_get(params, len, name, out, size, &count);
}

static const struct config_identity *
identity_by_selector(const struct config *cfg, const char *sel, const char *value)
{
	bool client = strcmp(sel, "client_id") == 0 || strcmp(sel, "clientid") == 0;
	bool object = strcmp(sel, "object_id") == 0 || strcmp(sel, "principal_id") == 0;

	for (size_t i = 0; i < cfg->n_identities; i++) {
		const struct config_identity *id = &cfg->identities[i];
		const char *have = client ? id->client_id : object ? id->object_id : id->msi_res_id;

		if (have != NULL && strcasecmp(have, value) == 0)
			return id;
	}
	return NULL;
}

static bool
resource_listed(const struct config_compat *cc, const char *resource)
{
	return strv_contains(cc->resources, resource);
}

static struct compat_wait *
wait_free(struct compat_wait *w)
{
	if (w == NULL)
		return NULL;
	free(w->resource);
	free(w->sel_name);
	free(w->sel_value);
	free(w);
	return NULL;
}

static const struct config_identity *
wait_identity(struct compat_wait *w)
{
	const struct config *cfg = w->l->compat->cfg;

	if (w->sel_name == NULL)
		return cfg->compat.identity;
	return identity_by_selector(cfg, w->sel_name, w->sel_value);
}

static void
wait_answered(void *arg, const struct cache_answer *ans)
{
	struct compat_wait *w = arg;

	reply_token(w->l, w->req, ans, wait_identity(w), w->resource, w->sel_name, w->sel_value);
	wait_free(w);
}

static void
wait_cancelled(struct http_request *req, void *arg)
{
	struct compat_wait *w = arg;

	(void)req;
	cache_waiter_cancel(w->l->compat->cache, w->waiter);
	wait_free(w);
}

/*
 * The selectors SDKs send: IMDS's client_id, object_id, msi_res_id; App
 * Service's client_id, principal_id/object_id, mi_res_id; and msi-res-id, with
 * hyphens, which .NET's DefaultAzureCredential probe names a resource id by;
 * App Service 2017-09-01's clientid (Go's adal, msrestazure, Azure ML).
 * Every name here is a selector: one the list lacked would be ignored like any
 * unknown parameter, and the caller would get the default identity's token.
 */
static const char *const selector_names[] = {
    "client_id", "object_id", "principal_id", "msi_res_id", "mi_res_id", "msi-res-id", "clientid",
};

/*
 * Everything after the protocol's own checks: parameters (the query, or with
 * form a Cloud Shell body), identity, resource, cache.
 */
static void
serve(struct compat_listener *l, struct http_request *req, const char *query, size_t qlen,
      bool form)
{
	struct compat *c = l->compat;
	const struct config_compat *cc = &c->cfg->compat;
	const struct config_identity *id = cc->identity;
	const struct config_audience *aud;
	struct compat_wait *w = NULL;
	struct cache_entry *e;
	struct cache_answer ans;
	char *value = NULL;
	int64_t minv;
	int r, found = 0;

	w = calloc(1, sizeof(*w));
	value = malloc(COMPAT_MAX_VALUE);
	if (w == NULL || value == NULL) {
		reply_error(l, req, 500, "server_error", "out of memory", 1);
		goto done;
	}
	w->l = l;
	w->req = req;
	r = param_value(query, qlen, form, "resource", value, COMPAT_MAX_VALUE);
	if (r < 0 || value[0] == '\0') {
		reply_error(l, req, 400, "invalid_request",
			    r == -ENOENT || r == 0 ? "Required audience parameter not specified"
						   : "The resource parameter is malformed",
			    0);
		goto done;
	}
	w->resource = strdup(value);
	for (size_t i = 0; i < sizeof(selector_names) / sizeof(selector_names[0]); i++) {
		r = param_value(query, qlen, form, selector_names[i], value, COMPAT_MAX_VALUE);
		if (r == -ENOENT)
			continue;
		if (r < 0 || value[0] == '\0' || found++ > 0) {
			reply_error(
			    l, req, 400, "invalid_request",
			    r < 0 || value[0] == '\0'
				? "Identity not found"
				: "Only one of client_id, object_id, msi_res_id may be given",
			    0);
			goto done;
		}
		w->sel_name = strdup(selector_names[i]);
		w->sel_value = strdup(value);
		if (w->sel_name == NULL || w->sel_value == NULL)
			break;
	}
	if (w->resource == NULL || (found > 0 && (w->sel_name == NULL || w->sel_value == NULL))) {
		reply_error(l, req, 500, "server_error", "out of memory", 1);
		goto done;
	}
	if (w->sel_name != NULL)
		id = identity_by_selector(c->cfg, w->sel_name, w->sel_value);
	if (id == NULL) {
		reply_error(l, req, 400, "invalid_request", "Identity not found", 0);
		goto done;
	}
	aud = config_audience_for_resource(c->cfg, id, w->resource);
	if (aud != NULL && (aud->allow_uids != NULL || aud->allow_gids != NULL)) {
		/* callers on TCP have no SO_PEERCRED: a restricted audience stays on the socket */
		count_answer(c, id, w->resource, 403, false);
		reply_error(l, req, 403, "forbidden",
			    "this resource is restricted to some users; use the local socket", 0);
		goto done;
	}
	if (aud == NULL && !resource_listed(cc, w->resource) &&
	    !(cc->dynamic_resources && cc->resources == NULL)) {
		count_answer(c, id, w->resource, 400, false);
		reply_error(l, req, 400, "invalid_resource",
			    "bearerd is not configured to hand out tokens for this resource", 0);
		goto done;
	}
	/* a new resource counts against the listener's dynamic_rate: its callers are one */
	if (aud != NULL)
		r = cache_entry_get(c->cache, c->sources[config_identity_index(c->cfg, id)],
				    id->name, w->resource, true, &e);
	else
		r = cache_entry_get_dynamic(c->cache, c->sources[config_identity_index(c->cfg, id)],
					    id->name, w->resource, CACHE_CALLER_LISTENER(l->kind),
					    &e);
	if (r == -EAGAIN) {
		count_answer(c, id, w->resource, 429, false);
		reply_error(l, req, 429, "too_many_requests",
			    "too many new resources were asked for on this listener; retry shortly",
			    1);
		goto done;
	}
	if (r < 0) {
		count_answer(c, id, w->resource, r == -ENOSPC ? 429 : 500, false);
		reply_error(l, req, r == -ENOSPC ? 429 : 500,
			    r == -ENOSPC ? "too_many_requests" : "server_error",
			    r == -ENOSPC ? "too many cached resources are in use; retry shortly"
					 : "out of memory",
			    1);
		goto done;
	}
	minv = c->cfg->min_validity > SDK_MIN_VALIDITY ? c->cfg->min_validity : SDK_MIN_VALIDITY;
	r = cache_request(c->cache, e, minv, wait_answered, w, &ans, &w->waiter);
	if (r == -EINPROGRESS) {
		http_request_on_cancel(req, wait_cancelled, w);
		w = NULL;
		goto done;
	}
	if (r < 0)
		reply_error(l, req, 500, "server_error", "out of memory", 1);
	else
		reply_token(l, req, &ans, id, w->resource, w->sel_name, w->sel_value);
done:
	free(value);
	wait_free(w);
}

/*
 * True when a Host value names this host without DNS: an IPv4 or [IPv6]
 * literal or localhost, with or without a port.  A page whose own name was
 * made to resolve to 127.0.0.1 (DNS rebinding) sends that name instead.  Any
 * literal passes, not only the listener's address: behind an OUTPUT
 * redirect, or bound at 169.254.169.254:80, clients send Host:
 * 169.254.169.254 whatever address the socket has.
 */
static bool
host_names_no_dns(const char *value, size_t len)
{
	unsigned char addr[sizeof(struct in6_addr)];
	char *host = NULL;
	unsigned port;
	bool ok;

	if (config_proxy_hostport(value, len, &host, &port) < 0)
		return false;
	if (strchr(host, ':') != NULL)
		ok = inet_pton(AF_INET6, host, addr) == 1;
	else
		ok = strcmp(host, "localhost") == 0 || inet_pton(AF_INET, host, addr) == 1;
	free(host);
	return ok;
}

/* An Origin, or a Sec-Fetch-Site other than "none" (a URL the user typed), in any of h's fields. */
static bool
from_web_page(const struct http_head *h)
{
	for (int i = 0; i < h->nheaders; i++) {
		const struct http_header *f = &h->headers[i];

		if (f->name_len == 6 && strncasecmp(f->name, "Origin", 6) == 0)
			return true;
		if (f->name_len == 14 && strncasecmp(f->name, "Sec-Fetch-Site", 14) == 0 &&
		    !(f->value_len == 4 && strncasecmp(f->value, "none", 4) == 0))
			return true;
	}
	return false;
}

/*
 * Both listeners are plain http:// origins on loopback: a web page in a local
 * browser could reach them, cross-site or (after DNS rebinding) as its own
 * origin, where it may send Metadata: true without a preflight and read the
 * answer.  SDKs name the listener by address (Host: 127.0.0.1:PORT, or
 * localhost) and send neither Origin nor Sec-Fetch-Site; browsers always send
 * Host with the page's name, and Origin or Sec-Fetch-Site with what a page
 * sends.  False after replying (nothing reaches the cache).
 */
static bool
caller_not_a_web_page(struct compat_listener *l, struct http_request *req)
{
	const struct http_header *h = http_request_header(req, "Host");

	if (h == NULL || !host_names_no_dns(h->value, h->value_len)) {
		/* debug: any page can make a browser send these, as often as it likes */
		log_debug("compat request refused", "listener=%s reason=%s", l->name,
			  h == NULL ? "no_host" : "host_not_an_address");
		reply_error(l, req, 400, "invalid_request",
			    "the Host header must be an IP address or localhost, with or without "
			    "the port",
			    0);
		return false;
	}
	if (from_web_page(http_request_head(req))) {
		log_debug("compat request refused", "listener=%s reason=web_page", l->name);
		reply_error(l, req, 403, "forbidden",
			    "requests from web pages (Origin, Sec-Fetch-Site) are refused", 0);
		return false;
	}
	return true;
}

/* Fields a forwarding proxy adds: IMDS refuses requests that went through one. */
static const char *const forwarded_fields[] = {
    "X-Forwarded-For",
    "Forwarded",
    "Via",
    "X-Real-IP",
};

/* Checks shared by every protocol; true when the request may go on. */
static bool
common_checks(struct compat_listener *l, struct http_request *req, const char *query, size_t qlen)
{
	char desc[64];
	int r;

	for (size_t i = 0; i < sizeof(forwarded_fields) / sizeof(forwarded_fields[0]); i++) {
		if (http_request_header(req, forwarded_fields[i]) == NULL)
			continue;
		snprintf(desc, sizeof(desc), "%s header is not allowed", forwarded_fields[i]);
		reply_error(l, req, 400, "invalid_request", desc, 0);
		return false;
	}
	r = query_check(query, qlen);
	if (r < 0) {
		reply_error(l, req, 400, "invalid_request",
			    r == -EEXIST  ? "Duplicate query parameters"
			    : r == -E2BIG ? "Too many query parameters"
					  : "Malformed query parameter",
			    0);
		return false;
	}
	return true;
}

/* 405 with Allow; description NULL for the usual one. */
static void
method_refused(struct compat_listener *l, struct http_request *req, const char *allow,
	       const char *description)
{
	struct evbuffer *b = evbuffer_new();
	char extra[64];

	log_debug("compat request", "listener=%s status=%d", l->name, 405);
	snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
	if (b == NULL) {
		http_reply(req, 405, "application/json; charset=utf-8", extra, NULL, 0);
		return;
	}
	json_append_error(b, "method_not_allowed",
			  description != NULL ? description
					      : "The request method is not supported");
	http_reply(req, 405, "application/json; charset=utf-8", extra, evbuffer_pullup(b, -1),
		   evbuffer_get_length(b));
	evbuffer_free(b);
}

static bool
method_get(struct compat_listener *l, struct http_request *req)
{
	if (http_request_method_is(req, "GET"))
		return true;
	method_refused(l, req, "GET", NULL);
	return false;
}

/* SSRF guard; also what the JS probe (no query, no header) reads as "available". */
static bool
metadata_true(struct compat_listener *l, struct http_request *req)
{
	const struct http_header *h = http_request_header(req, "Metadata");

	if (h != NULL && h->value_len == 4 && memcmp(h->value, "true", 4) == 0)
		return true;
	reply_error(l, req, 400, "invalid_request", "Required metadata header not specified", 0);
	return false;
}

/*
 * A request that bearerd itself sent (its own managed-identity fetch, or a
 * relay) came back to one of its listeners: the identity's endpoint leads
 * here, through an IMDS redirect that does not exempt bearerd or an endpoint
 * aimed at a listener.  Answered at once, 508, so that the fetch fails with
 * this reason instead of waiting for itself until wait_timeout.
 */
static bool
from_bearerd_itself(struct compat_listener *l, struct http_request *req)
{
	const struct http_header *h = http_request_header(req, AZURE_LOOP_FIELD);

	if (h == NULL || !azure_mi_loop_is_ours(h->value, h->value_len))
		return false;
	log_error("bearerd asked itself for a token: its upstream leads back to this listener",
		  "listener=%s hint=\"exempt bearerd from the IMDS redirect (its cgroup or uid), "
		  "or point the identity's endpoint at the real IMDS\"",
		  l->name);
	reply_error(l, req, 508, "loop_detected",
		    "bearerd's own upstream request came back to bearerd: exempt bearerd from "
		    "the IMDS redirect, or point its endpoint at the real IMDS",
		    0);
	return true;
}

/*
 * "/metadata" + tail as clients build IMDS paths: with an optional trailing
 * "/" (msal-node), an extra leading "/" (a host variable ending in "/"), and
 * "metadata" in any case (NMI's routing).  With subpaths, tail may also be
 * followed by "/" and anything.
 */
static bool
metadata_path(const char *path, size_t len, const char *tail, bool subpaths)
{
	size_t tlen = strlen(tail);

	if (len >= 2 && path[0] == '/' && path[1] == '/') {
		path++;
		len--;
	}
	if (len > 0 && path[len - 1] == '/')
		len--;
	if (len < 9 + tlen || strncasecmp(path, "/metadata", 9) != 0 ||
	    memcmp(path + 9, tail, tlen) != 0)
		return false;
	return len == 9 + tlen || (subpaths && path[9 + tlen] == '/');
}

/* The IMDS token path, "/metadata/identity/oauth2/token". */
static bool
imds_path(const char *path, size_t len)
{
	return metadata_path(path, len, IMDS_PATH, false);
}

/* Cloud Shell's own token path, "/oauth2/token" (and the old VM extension's). */
static bool
cloudshell_path(const char *path, size_t len)
{
	size_t n = strlen(CLOUDSHELL_PATH);

	if (len > n && path[len - 1] == '/')
		len--;
	return len == n && strncasecmp(path, CLOUDSHELL_PATH, n) == 0;
}

/* Content-Type: application/x-www-form-urlencoded, any case, parameters allowed. */
static bool
form_type(const struct http_header *h)
{
	size_t n = strlen(FORM_TYPE);

	if (h == NULL || h->value_len < n || strncasecmp(h->value, FORM_TYPE, n) != 0)
		return false;
	return h->value_len == n || h->value[n] == ';' || h->value[n] == ' ' || h->value[n] == '\t';
}

/*
 * Cloud Shell's form, which clients use when only MSI_ENDPOINT is set (Go's
 * adal, msrestazure and so the Azure CLI, the MSALs): POST with Metadata: true
 * and an application/x-www-form-urlencoded body resource=...[&client_id=|
 * object_id=|msi_res_id=], chunked or with a Content-Length, no api-version,
 * to whatever MSI_ENDPOINT names: Cloud Shell's /oauth2/token or the IMDS
 * path.  The guards are the IMDS listener's; the answer is IMDS's.
 */
static void
cloudshell_handle(struct compat_listener *l, struct http_request *req, const char *query,
		  size_t qlen)
{
	const char *body;
	size_t blen;

	if (!caller_not_a_web_page(l, req) || !metadata_true(l, req) ||
	    !common_checks(l, req, "", 0))
		return;
	if (qlen > 0) {
		reply_error(l, req, 400, "invalid_request",
			    "a Cloud Shell request (POST) carries its parameters in the body, not "
			    "in the query",
			    0);
		return;
	}
	if (!form_type(http_request_header(req, "Content-Type"))) {
		reply_error(l, req, 400, "invalid_request",
			    "a Cloud Shell request (POST) needs Content-Type: " FORM_TYPE, 0);
		return;
	}
	body = http_request_body(req, &blen);
	if (!common_checks(l, req, body, blen))
		return;
	serve(l, req, body, blen, true);
}

/*
 * IMDS's other paths that software on a VM relies on.  None is a token
 * path: with imds_relay they go to the real IMDS untouched (behind an OUTPUT
 * redirect bearerd holds every request for 169.254.169.254:80), else 403.
 * Not 404, which Azure.Core retries for about 25 s, and not 400.
 * scheduledevents also takes POST (acknowledging an event).
 */
static const char *const imds_relayed[] = {
    "/instance", "/attested", "/scheduledevents", "/versions", "/loadbalancer",
};

/*
 * A path that may be put in a URL to the real IMDS as it came: letters,
 * digits, "/", "-", "_", "." and no "." or ".." segment, and a query
 * without "#"; nothing another URL parser could read another way.
 */
static bool
relay_path_plain(const char *path, size_t len, const char *query, size_t qlen)
{
	for (size_t i = 0; i < len; i++) {
		char ch = path[i];

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '/' || ch == '-' || ch == '_' || ch == '.'))
			return false;
		if (ch == '.' && path[i - 1] == '/' &&
		    (i + 1 == len || path[i + 1] == '/' ||
		     (path[i + 1] == '.' && (i + 2 == len || path[i + 2] == '/'))))
			return false;
	}
	return memchr(query, '#', qlen) == NULL;
}

/* One relayed request; outlives its caller if that goes away first. */
struct compat_relay {
	struct compat *compat;
	struct compat_listener *l;
	struct http_request *req; /* NULL once the caller went away */
};

static void
relay_cancelled(struct http_request *req, void *arg)
{
	struct compat_relay *rl = arg;

	(void)req;
	rl->req = NULL;
}

static void
relay_done(void *arg, const struct fetch_response *resp)
{
	struct compat_relay *rl = arg;
	char extra[64] = "", desc[192];

	rl->compat->relays--;
	if (rl->req == NULL) {
		free(rl);
		return;
	}
	if (resp->error != 0 || resp->status < 200 || resp->status > 599) {
		snprintf(desc, sizeof(desc), "the real IMDS did not answer: %.128s",
			 resp->error != 0 ? resp->message : "no HTTP status");
		log_warnx("IMDS relay failed", "listener=%s error=\"%s\"", rl->l->name, desc);
		reply_error(rl->l, rl->req, 502, "bad_gateway", desc, 0);
		free(rl);
		return;
	}
	if (resp->retry_after >= 0)
		snprintf(extra, sizeof(extra), "Retry-After: %" PRId64 "\r\n", resp->retry_after);
	log_debug("compat request", "listener=%s status=%ld relayed=yes", rl->l->name,
		  resp->status);
	http_reply(rl->req, (int)resp->status,
		   resp->content_type != NULL ? resp->content_type
					      : "application/json; charset=utf-8",
		   extra[0] != '\0' ? extra : NULL, resp->body, resp->body_len);
	free(rl);
}

/* scheme://host[:port] of the real IMDS: the [compat] identity's endpoint's. */
static bool
relay_origin(const struct compat *c, char *out, size_t size)
{
	const struct config_identity *id = c->cfg->compat.identity;
	const char *e, *host;
	size_t n;

	if (id == NULL || id->source != CONFIG_SOURCE_AZURE_IMDS || id->endpoint == NULL)
		return false;
	e = id->endpoint;
	host = strstr(e, "://");
	if (host == NULL)
		return false;
	host += 3;
	n = (size_t)(host - e) + strcspn(host, "/?#");
	if (n >= size)
		return false;
	memcpy(out, e, n);
	out[n] = '\0';
	return true;
}

/* Passes one request to the real IMDS; the guards have been checked. */
static void
relay_start(struct compat_listener *l, struct http_request *req, const char *path, size_t plen,
	    const char *query, size_t qlen)
{
	struct compat *c = l->compat;
	const struct http_header *type = http_request_header(req, "Content-Type");
	const char *headers[4];
	struct fetch_request fr = {0};
	struct compat_relay *rl = NULL;
	char origin[COMPAT_MAX_ORIGIN], *url = NULL, *ctype = NULL;
	bool post = http_request_method_is(req, "POST");
	size_t h = 0;
	int r;

	if (!relay_origin(c, origin, sizeof(origin)) ||
	    (c->relay_fetch == NULL && fetch_new(&c->relay_fetch, c->base) < 0)) {
		reply_error(l, req, 500, "server_error", "cannot relay to the real IMDS", 1);
		return;
	}
	if (c->relays >= COMPAT_MAX_RELAYS) {
		reply_error(l, req, 503, "temporarily_unavailable",
			    "too many requests are being relayed to IMDS; retry shortly",
			    COMPAT_RETRY_AFTER);
		return;
	}
	if (plen >= 2 && path[1] == '/') {
		path++;
		plen--;
	}
	rl = calloc(1, sizeof(*rl));
	if (rl == NULL || asprintf(&url, "%s%.*s%s%.*s", origin, (int)plen, path,
				   qlen > 0 ? "?" : "", (int)qlen, query) < 0)
		url = NULL;
	if (url != NULL && post && type != NULL &&
	    asprintf(&ctype, "Content-Type: %s", type->value) < 0)
		ctype = NULL;
	if (url == NULL || (post && type != NULL && ctype == NULL)) {
		reply_error(l, req, 500, "server_error", "out of memory", 1);
		free(url);
		free(rl);
		return;
	}
	headers[h++] = "Metadata: true";
	if (azure_mi_loop_line() != NULL)
		headers[h++] = azure_mi_loop_line();
	if (ctype != NULL)
		headers[h++] = ctype;
	headers[h] = NULL;
	fr.method = post ? "POST" : "GET";
	fr.url = url;
	fr.headers = headers;
	if (post)
		fr.body = http_request_body(req, &fr.body_len);
	fr.ca_file = c->cfg->compat.identity->ca_file;
	fr.timeout_ms = COMPAT_RELAY_MS;
	rl->compat = c;
	rl->l = l;
	rl->req = req;
	r = fetch_start(c->relay_fetch, &fr, relay_done, rl);
	free(url);
	free(ctype);
	if (r < 0) {
		reply_error(l, req, 500, "server_error", "cannot relay to the real IMDS", 1);
		free(rl);
		return;
	}
	c->relays++;
	http_request_on_cancel(req, relay_cancelled, rl);
}

/*
 * IMDS paths other than the token path.  getplatformmetadata is where
 * MSAL.NET discovers IMDSv2 (mTLS proof of possession; a 400 means "it is
 * here"): always 403, even when relaying, since an answer from the real IMDS
 * would send .NET past bearerd for its tokens.  imds_relayed: to the real
 * IMDS with imds_relay, after the same guards as a token request, else 403.
 * The 403s come before those guards: a 400 for a missing Metadata header
 * would be the "IMDSv2 is here" answer.  true when path was one of them and
 * is answered.
 */
static bool
imds_other(struct compat_listener *l, struct http_request *req, const char *path, size_t plen,
	   const char *query, size_t qlen)
{
	const struct config_compat *cc = &l->compat->cfg->compat;
	bool events = false, known = false;

	if (metadata_path(path, plen, "/identity/getplatformmetadata", false)) {
		reply_error(l, req, 403, "forbidden",
			    "IMDSv2 (mTLS proof of possession) is not available here; ask "
			    "/metadata/identity/oauth2/token for a bearer token",
			    0);
		return true;
	}
	for (size_t i = 0; !known && i < sizeof(imds_relayed) / sizeof(imds_relayed[0]); i++) {
		known = metadata_path(path, plen, imds_relayed[i], true);
		events = known && strcmp(imds_relayed[i], "/scheduledevents") == 0;
	}
	if (!known)
		return false;
	if (!cc->imds_relay) {
		reply_error(l, req, 403, "forbidden",
			    "bearerd serves managed-identity tokens only, not instance metadata "
			    "(on a VM, [compat] imds_relay = yes passes these paths to IMDS)",
			    0);
		return true;
	}
	if (!http_request_method_is(req, "GET") &&
	    !(events && http_request_method_is(req, "POST"))) {
		method_refused(l, req, events ? "GET, POST" : "GET", NULL);
		return true;
	}
	if (!caller_not_a_web_page(l, req) || !metadata_true(l, req) ||
	    !common_checks(l, req, query, qlen))
		return true;
	if (!relay_path_plain(path, plen, query, qlen)) {
		reply_error(l, req, 400, "invalid_request",
			    "bearerd relays IMDS paths of letters, digits, '/', '-', '_' and '.' "
			    "only",
			    0);
		return true;
	}
	relay_start(l, req, path, plen, query, qlen);
	return true;
}

static void
imds_handle(struct http_request *req, void *arg)
{
	struct compat_listener *l = arg;
	const char *path, *query;
	size_t plen, qlen;
	bool token, cloudshell;
	char v[64];

	http_request_path(req, &path, &plen, &query, &qlen);
	if (from_bearerd_itself(l, req))
		return;
	token = imds_path(path, plen);
	cloudshell = cloudshell_path(path, plen);
	if (!token && !cloudshell) {
		if (!imds_other(l, req, path, plen, query, qlen))
			reply_error(l, req, 404, "not_found",
				    "The requested resource was not found", 0);
		return;
	}
	if (http_request_method_is(req, "POST")) {
		cloudshell_handle(l, req, query, qlen);
		return;
	}
	if (!token || !http_request_method_is(req, "GET")) {
		method_refused(l, req, token ? "GET, POST" : "POST", NULL);
		return;
	}
	if (!caller_not_a_web_page(l, req) || !metadata_true(l, req))
		return;
	if (!common_checks(l, req, query, qlen))
		return;
	if (query_value(query, qlen, "api-version", v, sizeof(v)) < 0 || v[0] == '\0') {
		reply_error(l, req, 400, "invalid_request",
			    "Bad request. api-version is invalid or was not specified in the "
			    "request",
			    0);
		return;
	}
	serve(l, req, query, qlen, false);
}

/* The secret against a header's value in constant time (digests: lengths may differ). */
static bool
secret_matches(const struct compat *c, const struct http_header *h)
{
	unsigned char d[SHA256_DIGEST_LENGTH];

	if (h == NULL || c->secret == NULL)
		return false;
	SHA256((const unsigned char *)h->value, h->value_len, d);
	return CRYPTO_memcmp(d, c->secret_digest, sizeof(d)) == 0;
}

/*
 * The App Service secret, in the field of the request's protocol: X-IDENTITY-HEADER
 * for 2019-08-01 (IDENTITY_HEADER), "secret" for 2017-09-01 (MSI_SECRET), the
 * same value; for another api-version either, so that only a caller that
 * knows the secret learns which versions are served.  False after replying.
 */
static bool
appservice_secret_ok(struct compat_listener *l, struct http_request *req, const char *api)
{
	struct compat *c = l->compat;
	bool v2017 = strcmp(api, APPSERVICE_API_2017) == 0;
	bool v2019 = strcmp(api, APPSERVICE_API) == 0;
	bool ok;

	if (v2017)
		ok = secret_matches(c, http_request_header(req, "secret"));
	else if (v2019)
		ok = secret_matches(c, http_request_header(req, "X-IDENTITY-HEADER"));
	else
		ok = secret_matches(c, http_request_header(req, "X-IDENTITY-HEADER")) ||
		     secret_matches(c, http_request_header(req, "secret"));
	if (!ok) {
		reply_error(l, req, 401, "unauthorized",
			    v2017   ? "the secret header is missing or does not match MSI_SECRET"
			    : v2019 ? "X-IDENTITY-HEADER is missing or does not match "
				      "IDENTITY_HEADER"
				    : "X-IDENTITY-HEADER (or secret) is missing or does not match "
				      "IDENTITY_HEADER",
			    0);
		return false;
	}
	if (!v2017 && !v2019) {
		reply_error(l, req, 400, "invalid_request",
			    "api-version must be " APPSERVICE_API " or " APPSERVICE_API_2017, 0);
		return false;
	}
	return true;
}

static void
appservice_handle(struct http_request *req, void *arg)
{
	struct compat_listener *l = arg;
	const char *path, *query;
	size_t plen, qlen;
	char v[64];

	http_request_path(req, &path, &plen, &query, &qlen);
	/* msrestazure appends "/?resource=" to MSI_ENDPOINT, which may end in "/" already */
	while (plen > 1 && path[plen - 1] == '/')
		plen--;
	if (plen != strlen(APPSERVICE_PATH) || strncasecmp(path, APPSERVICE_PATH, plen) != 0) {
		reply_error(l, req, 404, "not_found", "The requested resource was not found", 0);
		return;
	}
	if (from_bearerd_itself(l, req))
		return;
	if (http_request_method_is(req, "POST")) {
		/* no secret in that form: it goes to the IMDS listener, which has the guards */
		method_refused(l, req, "GET",
			       "Cloud Shell's POST (MSI_ENDPOINT without MSI_SECRET) is served on "
			       "bearerd's IMDS listener: set MSI_ENDPOINT=http://<imds_listen>/"
			       "oauth2/token");
		return;
	}
	if (!method_get(l, req) || !caller_not_a_web_page(l, req))
		return;
	if (query_value(query, qlen, "api-version", v, sizeof(v)) < 0)
		v[0] = '\0';
	if (!appservice_secret_ok(l, req, v))
		return;
	if (!common_checks(l, req, query, qlen))
		return;
	serve(l, req, query, qlen, false);
}

/* Set-up */

int
compat_secret_load(const char *path, char **out, size_t *len)
{
	unsigned char raw[COMPAT_SECRET_BYTES];
	char buf[COMPAT_MAX_SECRET + 2], *s;
	struct stat st;
	ssize_t n;
	size_t l;
	int fd, r;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT) {
		if (RAND_bytes(raw, sizeof(raw)) != 1)
			return -EIO;
		for (size_t i = 0; i < sizeof(raw); i++)
			snprintf(buf + 2 * i, 3, "%02x", raw[i]);
		OPENSSL_cleanse(raw, sizeof(raw));
		l = 2 * sizeof(raw);
		buf[l] = '\n';
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
		if (fd < 0 || fchmod(fd, 0640) < 0 || write(fd, buf, l + 1) != (ssize_t)(l + 1) ||
		    fsync(fd) < 0) {
			r = -errno;
			if (fd >= 0) {
				close(fd);
				unlink(path);
			}
			OPENSSL_cleanse(buf, sizeof(buf));
			return r < 0 ? r : -EIO;
		}
		close(fd);
		goto have;
	}
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	if (!S_ISREG(st.st_mode) || (st.st_mode & 0007) != 0 ||
	    (st.st_uid != geteuid() && st.st_uid != 0)) {
		close(fd);
		return -EPERM;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	r = -errno;
	close(fd);
	if (n < 0)
		return r;
	if ((size_t)n > COMPAT_MAX_SECRET) {
		OPENSSL_cleanse(buf, sizeof(buf));
		return -EFBIG;
	}
	l = (size_t)n;
	while (l > 0 && (buf[l - 1] == '\n' || buf[l - 1] == '\r' || buf[l - 1] == ' '))
		l--;
have:
	buf[l] = '\0';
	for (size_t i = 0; i < l; i++) {
		if (buf[i] <= ' ' || buf[i] > '~') {
			OPENSSL_cleanse(buf, sizeof(buf));
			return -EINVAL;
		}
	}
	if (l == 0)
		return -ENODATA;
	s = strdup(buf);
	OPENSSL_cleanse(buf, sizeof(buf));
	if (s == NULL)
		return -ENOMEM;
	*out = s;
	*len = l;
	return 0;
}

static unsigned
port_of(const struct sockaddr_storage *a)
{
	if (a->ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
	return ntohs(((const struct sockaddr_in *)a)->sin_port);
}

/*
 * Binds a listener's server for cl into *http and *bound; its handler gets l,
 * which need not be filled in yet (nothing is accepted before the loop runs).
 */
static int
listener_bind(struct compat_listener *l, struct event_base *base, const struct config *cfg,
	      const struct config_listen *cl, struct http_server **http,
	      struct sockaddr_storage *bound)
{
	struct http_limits limits;
	int fd, r;

	http_limits_from_config(&limits, cfg);
	limits.max_body = COMPAT_MAX_BODY; /* Cloud Shell's form */
	r = http_server_new(http, base, &limits,
			    l->kind == COMPAT_IMDS ? imds_handle : appservice_handle, l);
	if (r < 0)
		return r;
	fd = http_listen_tcp(&cl->addr, cl->addr_len, bound);
	if (fd < 0) {
		log_error("cannot listen", "listener=%s address=%s error=\"%s\"", l->name, cl->text,
			  strerror(-fd));
		*http = http_server_free(*http);
		return fd;
	}
	r = http_server_add_listener(*http, fd);
	if (r < 0) {
		*http = http_server_free(*http);
		return r;
	}
	log_info("compat listening", "listener=%s address=%s port=%u", l->name, cl->text,
		 port_of(bound));
	return 0;
}

static int
listener_start(struct compat *c, struct compat_listener *l, struct event_base *base,
	       enum compat_kind kind, const struct config_listen *cl)
{
	l->compat = c;
	l->kind = kind;
	l->name = kind == COMPAT_IMDS ? "imds" : "appservice";
	if (cl == NULL)
		return 0;
	return listener_bind(l, base, c->cfg, cl, &l->http, &l->bound);
}

int
compat_new(struct compat **out, struct event_base *base, struct cache *cache,
	   const struct config *cfg, struct source **sources)
{
	const struct config_compat *cc = &cfg->compat;
	struct compat *c = calloc(1, sizeof(*c));
	int r;

	if (c == NULL)
		return -ENOMEM;
	c->base = base;
	c->cache = cache;
	c->cfg = cfg;
	c->sources = sources;
	if (cc->appservice_listen != NULL) {
		r = compat_secret_load(cc->appservice_secret_file, &c->secret, &c->secret_len);
		if (r < 0) {
			log_error(
			    "cannot use the App Service secret file", "path=%s error=\"%s\"%s",
			    cc->appservice_secret_file, strerror(-r),
			    r == -EPERM ? " hint=\"it must be a regular file, not readable by "
					  "others, owned by bearerd's user or root\""
					: "");
			goto fail;
		}
		SHA256((const unsigned char *)c->secret, c->secret_len, c->secret_digest);
	}
	r = listener_start(c, &c->imds, base, COMPAT_IMDS, cc->imds_listen);
	if (r < 0)
		goto fail;
	r = listener_start(c, &c->appservice, base, COMPAT_APPSERVICE, cc->appservice_listen);
	if (r < 0)
		goto fail;
	*out = c;
	return 0;
fail:
	compat_free(c);
	return r;
}

struct compat *
compat_free(struct compat *c)
{
	if (c == NULL)
		return NULL;
	c->imds.http = http_server_free(c->imds.http);
	c->appservice.http = http_server_free(c->appservice.http);
	/* after the servers: their cancelled relays are freed by the aborted fetches */
	c->relay_fetch = fetch_free(c->relay_fetch);
	wipe_free(c->secret, c->secret_len);
	OPENSSL_cleanse(c->secret_digest, sizeof(c->secret_digest));
	free(c);
	return NULL;
}

static bool
listen_same(const struct config_listen *a, const struct config_listen *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return a->addr_len == b->addr_len && memcmp(&a->addr, &b->addr, a->addr_len) == 0;
}

struct compat_next {
	struct http_server *http;
	struct sockaddr_storage bound;
	bool rebind;
};

/* Replaces a listener's server with the one bound for the new configuration. */
static void
listener_swap(struct compat_listener *l, struct compat_next *n)
{
	if (!n->rebind)
		return;
	if (l->http != NULL)
		log_info("compat listener closed", "listener=%s", l->name);
	l->http = http_server_free(l->http);
	l->http = n->http;
	l->bound = n->bound;
	n->http = NULL;
}

int
compat_reconfigure(struct compat *c, const struct config *cfg, struct source **sources)
{
	const struct config_compat *oc = &c->cfg->compat, *nc = &cfg->compat;
	struct compat_next ni = {0}, na = {0};
	char *secret = NULL;
	size_t secret_len = 0;
	bool new_secret = nc->appservice_listen != NULL &&
			  (c->secret == NULL ||
			   !str_eq_opt(oc->appservice_secret_file, nc->appservice_secret_file));
	int r = 0;

	if (new_secret) {
		r = compat_secret_load(nc->appservice_secret_file, &secret, &secret_len);
		if (r < 0) {
			log_error("cannot use the App Service secret file", "path=%s error=\"%s\"",
				  nc->appservice_secret_file, strerror(-r));
			return r;
		}
	}
	ni.rebind = !listen_same(oc->imds_listen, nc->imds_listen);
	na.rebind = !listen_same(oc->appservice_listen, nc->appservice_listen);
	if (ni.rebind && nc->imds_listen != NULL)
		r = listener_bind(&c->imds, c->base, cfg, nc->imds_listen, &ni.http, &ni.bound);
	if (r == 0 && na.rebind && nc->appservice_listen != NULL)
		r = listener_bind(&c->appservice, c->base, cfg, nc->appservice_listen, &na.http,
				  &na.bound);
	if (r < 0) {
		http_server_free(ni.http);
		http_server_free(na.http);
		wipe_free(secret, secret_len);
		return r;
	}
	listener_swap(&c->imds, &ni);
	listener_swap(&c->appservice, &na);
	if (new_secret || nc->appservice_listen == NULL) {
		wipe_free(c->secret, c->secret_len);
		c->secret = secret;
		c->secret_len = secret_len;
		if (secret != NULL)
			SHA256((const unsigned char *)secret, secret_len, c->secret_digest);
		else
			OPENSSL_cleanse(c->secret_digest, sizeof(c->secret_digest));
	}
	c->cfg = cfg;
	c->sources = sources;
	return 0;
}

void
compat_set_metrics(struct compat *c, struct metrics *m)
{
	if (c != NULL)
		c->metrics = m;
}

void
compat_collect(const struct compat *c, struct metrics *m)
{
	if (c == NULL)
		return;
	if (c->imds.http != NULL)
		metrics_gauge_set(m, METRICS_CONNECTIONS_OPEN, "imds",
				  http_server_connections(c->imds.http));
	if (c->appservice.http != NULL)
		metrics_gauge_set(m, METRICS_CONNECTIONS_OPEN, "appservice",
				  http_server_connections(c->appservice.http));
}

void
compat_stop_accepting(struct compat *c)
{
	if (c == NULL)
		return;
	if (c->imds.http != NULL)
		http_server_stop_accepting(c->imds.http);
	if (c->appservice.http != NULL)
		http_server_stop_accepting(c->appservice.http);
}

unsigned
compat_pending(const struct compat *c)
{
	unsigned n = 0;

	if (c == NULL)
		return 0;
	if (c->imds.http != NULL)
		n += http_server_pending(c->imds.http);
	if (c->appservice.http != NULL)
		n += http_server_pending(c->appservice.http);
	return n;
}

unsigned
compat_port(const struct compat *c, bool imds)
{
	const struct compat_listener *l;

	if (c == NULL)
		return 0;
	l = imds ? &c->imds : &c->appservice;
	return l->http != NULL ? port_of(&l->bound) : 0;
}

unsigned
compat_connections(const struct compat *c, bool imds)
{
	const struct compat_listener *l;

	if (c == NULL)
		return 0;
	l = imds ? &c->imds : &c->appservice;
	return l->http != NULL ? http_server_connections(l->http) : 0;
}

int
compat_env(const struct compat *c, struct evbuffer *out)
{
	const struct sockaddr_storage *a;
	char host[INET6_ADDRSTRLEN + 2] = "127.0.0.1", url[128];

	if (c == NULL || c->appservice.http == NULL || c->secret == NULL)
		return -ENOENT;
	a = &c->appservice.bound;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *in4 = (const struct sockaddr_in *)a;

		if (in4->sin_addr.s_addr != htonl(INADDR_ANY))
			inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host));
	} else if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)a;

		host[0] = '[';
		if (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr))
			snprintf(host + 1, sizeof(host) - 1, "::1");
		else
			inet_ntop(AF_INET6, &in6->sin6_addr, host + 1, sizeof(host) - 2);
		strcat(host, "]");
	}
	snprintf(url, sizeof(url), "http://%s:%u" APPSERVICE_PATH, host, port_of(a));
	evbuffer_add_printf(out, "{\"IDENTITY_ENDPOINT\":");
	json_append_string(out, url, strlen(url));
	evbuffer_add_printf(out, ",\"IDENTITY_HEADER\":");
	json_append_string(out, c->secret, c->secret_len);
	evbuffer_add(out, "}", 1);
	return 0;
}
