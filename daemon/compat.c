/*
 * Azure-compatible listeners.  Unmodified Azure SDK clients get their tokens
 * from bearerd through one of two wire protocols they already speak (Azure's
 * managed-identity endpoints; README.md, "Use with Azure SDKs"):
 *   - IMDS: GET /metadata/identity/oauth2/token with Metadata: true, reached
 *     through AZURE_POD_IDENTITY_AUTHORITY_HOST;
 *   - App Service: GET /msi/token with X-IDENTITY-HEADER, reached through
 *     IDENTITY_ENDPOINT + IDENTITY_HEADER.
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
#include "hex.h"
#include "http.h"
#include "json_write.h"
#include "log.h"
#include "metrics.h"
#include "str.h"
#include "wipe.h"

#define COMPAT_MAX_PARAMS   64	 /* query parameters in one request */
#define COMPAT_MAX_KEY	    64	 /* bytes of a parameter name we compare */
#define COMPAT_MAX_VALUE    4096 /* bytes of a resource or selector */
#define COMPAT_MAX_SECRET   256	 /* bytes of an App Service secret */
#define COMPAT_SECRET_BYTES 32	 /* random bytes in a generated secret */
#define SDK_MIN_VALIDITY    300	 /* SDKs treat a token with less left as expired */
#define COMPAT_RETRY_AFTER  1	 /* seconds, on every 503 and 429 */

#define IMDS_PATH	"/identity/oauth2/token"
#define APPSERVICE_PATH "/msi/token"
#define APPSERVICE_API	"2019-08-01"

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
	struct metrics *metrics; /* or NULL */
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
	if (sel_name != NULL && strcmp(sel_name, "client_id") != 0)
		add_string_field(b, sel_name, sel_value, strlen(sel_value));
	if (sel_name != NULL && strcmp(sel_name, "client_id") == 0)
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

static const struct config_identity *
identity_by_selector(const struct config *cfg, const char *sel, const char *value)
{
	bool client = strcmp(sel, "client_id") == 0;
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
 * hyphens, which .NET's DefaultAzureCredential probe names a resource id by.
 * Every name here is a selector: one the list lacked would be ignored like any
 * unknown parameter, and the caller would get the default identity's token.
 */
static const char *const selector_names[] = {
    "client_id", "object_id", "principal_id", "msi_res_id", "mi_res_id", "msi-res-id",
};

/* Everything after the protocol's own checks: parameters, identity, resource, cache. */
static void
serve(struct compat_listener *l, struct http_request *req, const char *query, size_t qlen)
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
	r = query_value(query, qlen, "resource", value, COMPAT_MAX_VALUE);
	if (r < 0 || value[0] == '\0') {
		reply_error(l, req, 400, "invalid_request",
			    r == -ENOENT || r == 0 ? "Required audience parameter not specified"
						   : "The resource parameter is malformed",
			    0);
		goto done;
	}
	w->resource = strdup(value);
	for (size_t i = 0; i < sizeof(selector_names) / sizeof(selector_names[0]); i++) {
		r = query_value(query, qlen, selector_names[i], value, COMPAT_MAX_VALUE);
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

/* Checks shared by both protocols; true when the request may go on. */
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

static bool
method_get(struct compat_listener *l, struct http_request *req)
{
	if (http_request_method_is(req, "GET"))
		return true;
	log_debug("compat request", "listener=%s status=%d", l->name, 405);
	http_reply(
	    req, 405, "application/json; charset=utf-8", "Allow: GET\r\n",
	    "{\"error\":\"method_not_allowed\",\"error_description\":\"The request method is "
	    "not supported\"}",
	    sizeof("{\"error\":\"method_not_allowed\",\"error_description\":\"The request "
		   "method is not supported\"}") -
		1);
	return false;
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

/*
 * IMDS paths that MSAL.NET asks while it discovers mTLS proof-of-possession
 * (a token request with isProofOfPossessionEnabled): GET
 * /metadata/identity/getplatformmetadata, where a 400 means "IMDSv2 is here",
 * and GET /metadata/instance/compute.  bearerd serves neither, and answers 403
 * rather than 404, which Azure.Identity's pipeline retries five times (about 25
 * s each), and rather than 400.  MSAL then settles for a bearer token from the
 * IMDSv1 path.  Answered before the Metadata check: that 400 would be the
 * "IMDSv2 is here" answer.  true when path was one of them and is answered.
 */
static bool
imds_unserved(struct compat_listener *l, struct http_request *req, const char *path, size_t len)
{
	if (metadata_path(path, len, "/identity/getplatformmetadata", false)) {
		reply_error(l, req, 403, "forbidden",
			    "IMDSv2 (mTLS proof of possession) is not available here; ask "
			    "/metadata/identity/oauth2/token for a bearer token",
			    0);
		return true;
	}
	if (metadata_path(path, len, "/instance", true)) {
		reply_error(l, req, 403, "forbidden",
			    "bearerd serves managed-identity tokens only, not instance metadata",
			    0);
		return true;
	}
	return false;
}

static void
imds_handle(struct http_request *req, void *arg)
{
	struct compat_listener *l = arg;
	const struct http_header *h;
	const char *path, *query;
	size_t plen, qlen;
	char v[64];

	http_request_path(req, &path, &plen, &query, &qlen);
	if (!imds_path(path, plen)) {
		if (!imds_unserved(l, req, path, plen))
			reply_error(l, req, 404, "not_found",
				    "The requested resource was not found", 0);
		return;
	}
	if (!method_get(l, req) || !caller_not_a_web_page(l, req))
		return;
	/* SSRF guard; also what the JS probe (no query, no header) reads as "available" */
	h = http_request_header(req, "Metadata");
	if (h == NULL || h->value_len != 4 || memcmp(h->value, "true", 4) != 0) {
		reply_error(l, req, 400, "invalid_request",
			    "Required metadata header not specified", 0);
		return;
	}
	if (!common_checks(l, req, query, qlen))
		return;
	if (query_value(query, qlen, "api-version", v, sizeof(v)) < 0 || v[0] == '\0') {
		reply_error(l, req, 400, "invalid_request",
			    "Bad request. api-version is invalid or was not specified in the "
			    "request",
			    0);
		return;
	}
	serve(l, req, query, qlen);
}

/* X-IDENTITY-HEADER against the secret in constant time (digests: lengths may differ). */
static bool
secret_matches(const struct compat *c, const struct http_header *h)
{
	unsigned char d[SHA256_DIGEST_LENGTH];

	if (h == NULL || c->secret == NULL)
		return false;
	SHA256((const unsigned char *)h->value, h->value_len, d);
	return CRYPTO_memcmp(d, c->secret_digest, sizeof(d)) == 0;
}

static void
appservice_handle(struct http_request *req, void *arg)
{
	struct compat_listener *l = arg;
	const char *path, *query;
	size_t plen, qlen;
	char v[64];

	http_request_path(req, &path, &plen, &query, &qlen);
	if (plen > 1 && path[plen - 1] == '/')
		plen--;
	if (plen != strlen(APPSERVICE_PATH) || strncasecmp(path, APPSERVICE_PATH, plen) != 0) {
		reply_error(l, req, 404, "not_found", "The requested resource was not found", 0);
		return;
	}
	if (!method_get(l, req) || !caller_not_a_web_page(l, req))
		return;
	if (!secret_matches(l->compat, http_request_header(req, "X-IDENTITY-HEADER"))) {
		reply_error(l, req, 401, "unauthorized",
			    "X-IDENTITY-HEADER is missing or does not match IDENTITY_HEADER", 0);
		return;
	}
	if (!common_checks(l, req, query, qlen))
		return;
	if (query_value(query, qlen, "api-version", v, sizeof(v)) < 0 ||
	    strcmp(v, APPSERVICE_API) != 0) {
		reply_error(l, req, 400, "invalid_request", "api-version must be " APPSERVICE_API,
			    0);
		return;
	}
	serve(l, req, query, qlen);
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
