/*
 * Local API: routes of the Unix-socket HTTP server.  A token request is a
 * cache lookup; the JSON body for a token is rendered once per token (the
 * part before and after "expires_in") and reused for every hit.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <strings.h>

#include <event2/buffer.h>
#include <openssl/crypto.h>

#include "api.h"
#include "cache.h"
#include "compat.h"
#include "config.h"
#include "http.h"
#include "json_write.h"
#include "build-config.h"
#include "log.h"
#include "metrics.h"
#include "source.h"
#include "wipe.h"

#define MAX_PARAM 4096

/* A JSON reply whose body is a string literal; its length is counted by the compiler. */
#define REPLY_LITERAL(req, status, extra, lit)                                                     \
	http_reply(req, status, "application/json", extra, lit, sizeof(lit) - 1)

struct api_audience {
	const struct config_audience *cfg;
	struct source *src;
	struct cache_entry *entry;
	uint64_t *m_ok; /* bearerd_token_requests_total{audience,result="ok"} */
};

struct api {
	struct cache *cache;
	const struct config *cfg;
	struct source **sources;
	struct api_audience *audiences; /* sorted by name */
	size_t n_audiences;
	struct compat *compat; /* for /v1/compat/env, or NULL */
	char *scratch;	       /* reused body buffer for token replies */
	size_t scratch_size;
	struct metrics *metrics; /* or NULL */
	api_collect_fn *collect;
	void *collect_arg;
	bool ready_latched; /* every prefetch audience has held a valid token */
};

/* A request waiting for the cache. */
struct api_wait {
	struct api *api;
	struct http_request *req;
	struct cache_waiter *waiter;
	struct cache_entry *entry;
	const struct config_audience *audience; /* NULL for dynamic resources */
	uint64_t *m_ok;				/* NULL: look the counter up */
	bool plain;
};

/* The per-token rendering stored in the cache entry. */
struct api_render {
	uint64_t generation;
	char *prefix; /* {"access_token":"...","token_type":"Bearer","expires_on":N,"expires_in": */
	size_t prefix_len;
	char *suffix; /* ,"resource":"...","audience":...} */
	size_t suffix_len;
};

static void
api_render_free(void *p)
{
	struct api_render *r = p;

	if (r == NULL)
		return;
	wipe_free(r->prefix, r->prefix_len);
	free(r->suffix);
	free(r);
}

void
api_user_free(void *p)
{
	api_render_free(p);
}

static int
audience_cmp(const void *a, const void *b)
{
	const struct api_audience *x = a, *y = b;

	return strcmp(x->cfg->name, y->cfg->name);
}

static struct api_audience *
api_audience_find(struct api *a, const char *name)
{
	struct config_audience key_cfg = {.name = (char *)name};
	struct api_audience key = {.cfg = &key_cfg};

	return bsearch(&key, a->audiences, a->n_audiences, sizeof(key), audience_cmp);
}

/* The ok counter of each audience, looked up once: a cache hit only increments it. */
static void
bind_counters(struct api *a)
{
	for (size_t i = 0; i < a->n_audiences; i++)
		a->audiences[i].m_ok = a->metrics == NULL
					   ? NULL
					   : metrics_counter(a->metrics, METRICS_TOKEN_REQUESTS,
							     a->audiences[i].cfg->name, "ok");
}

/* Binds cfg's audiences to cache entries (found or created), sorted by name. */
static int
bind_audiences(struct api *a, const struct config *cfg, struct source **sources,
	       struct api_audience **out)
{
	struct api_audience *auds = NULL;
	int r;

	if (cfg->n_audiences > 0) {
		auds = calloc(cfg->n_audiences, sizeof(*auds));
		if (auds == NULL)
			return -ENOMEM;
	}
	for (size_t i = 0; i < cfg->n_audiences; i++) {
		struct api_audience *aud = &auds[i];
		const struct config_audience *ca = &cfg->audiences[i];

		aud->cfg = ca;
		aud->src = sources[config_identity_index(cfg, ca->identity)];
		r = cache_entry_get(a->cache, aud->src, ca->identity->name, ca->resource, true,
				    &aud->entry);
		if (r < 0) {
			free(auds);
			return r;
		}
	}
	if (cfg->n_audiences > 1) /* auds is NULL without audiences: qsort must not see it */
		qsort(auds, cfg->n_audiences, sizeof(*auds), audience_cmp);
	*out = auds;
	return 0;
}

/* Prefetch audiences start (or stay) fresh; others, perhaps prefetched before a reload, not. */
static void
start_prefetch(struct api *a)
{
	for (size_t i = 0; i < a->n_audiences; i++)
		if (!a->audiences[i].cfg->prefetch)
			cache_entry_unprefetch(a->audiences[i].entry);
	for (size_t i = 0; i < a->n_audiences; i++)
		if (a->audiences[i].cfg->prefetch)
			cache_entry_prefetch(a->cache, a->audiences[i].entry);
}

int
api_new(struct api **out, struct cache *cache, const struct config *cfg, struct source **sources)
{
	struct api *a = calloc(1, sizeof(*a));
	int r;

	if (a == NULL)
		return -ENOMEM;
	a->cache = cache;
	a->cfg = cfg;
	a->sources = sources;
	r = bind_audiences(a, cfg, sources, &a->audiences);
	if (r < 0) {
		free(a);
		return r;
	}
	a->n_audiences = cfg->n_audiences;
	start_prefetch(a);
	*out = a;
	return 0;
}

static bool
source_in(struct source *src, struct source **sources, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (sources[i] == src)
			return true;
	return false;
}

static bool
entry_bound(const struct api_audience *auds, size_t n, const struct cache_entry *e)
{
	for (size_t i = 0; i < n; i++)
		if (auds[i].entry == e)
			return true;
	return false;
}

int
api_reconfigure(struct api *a, const struct config *cfg, struct source **sources)
{
	struct api_audience *auds;
	int r = bind_audiences(a, cfg, sources, &auds);

	if (r < 0)
		return r;
	/*
	 * An old audience whose source is gone had its entries dropped by the
	 * caller (its pointer dangles): only those of kept sources are looked at.
	 */
	for (size_t i = 0; i < a->n_audiences; i++) {
		struct api_audience *old = &a->audiences[i];

		if (source_in(old->src, sources, cfg->n_identities) &&
		    !entry_bound(auds, cfg->n_audiences, old->entry) &&
		    !entry_bound(a->audiences, i, old->entry))
			cache_entry_drop(a->cache, old->entry);
	}
	/* the rendered body names the audience, which may have been renamed */
	for (size_t i = 0; i < cfg->n_audiences; i++) {
		api_render_free(cache_entry_user(auds[i].entry));
		cache_entry_set_user(auds[i].entry, NULL);
	}
	free(a->audiences);
	a->audiences = auds;
	a->n_audiences = cfg->n_audiences;
	a->cfg = cfg;
	a->sources = sources;
	bind_counters(a);
	start_prefetch(a);
	return 0;
}

void
api_set_metrics(struct api *a, struct metrics *m, api_collect_fn *collect, void *arg)
{
	a->metrics = m;
	a->collect = collect;
	a->collect_arg = arg;
	bind_counters(a);
}

/*
 * One answered token request.  A hit on a configured audience increments
 * the counter it keeps; anything else is looked up (label: the audience, or
 * the resource of a dynamic entry).
 */
static void
count_answer(struct api *a, uint64_t *ok, const char *label, int status)
{
	if (a->metrics == NULL)
		return;
	if (status == 200 && ok != NULL)
		(*ok)++;
	else
		metrics_inc(a->metrics, METRICS_TOKEN_REQUESTS, label,
			    metrics_token_result(status));
}

static const char *
wait_label(const struct cache_entry *e, const struct config_audience *aud)
{
	return aud != NULL ? aud->name : cache_entry_resource(e);
}

struct api *
api_free(struct api *a)
{
	if (a == NULL)
		return NULL;
	free(a->audiences);
	wipe_free(a->scratch, a->scratch_size);
	free(a);
	return NULL;
}

static void
reply_json_error(struct http_request *req, int status, const char *error, const char *description,
		 int64_t retry_after)
{
	struct evbuffer *b = evbuffer_new();
	char extra[64] = "";

	if (b == NULL) {
		http_reply(req, 500, NULL, NULL, NULL, 0);
		return;
	}
	json_append_error(b, error, description);
	if (retry_after > 0)
		snprintf(extra, sizeof(extra), "Retry-After: %" PRId64 "\r\n", retry_after);
	http_reply_buffer(req, status, "application/json", extra[0] ? extra : NULL, b);
	evbuffer_free(b);
}

static char *
evbuffer_take_string(struct evbuffer *b, size_t *len)
{
	size_t n = evbuffer_get_length(b);
	char *s = malloc(n + 1);

	if (s == NULL)
		return NULL;
	evbuffer_remove(b, s, n);
	s[n] = '\0';
	*len = n;
	return s;
}

static struct api_render *
api_render(struct api *a, struct cache_entry *e, const struct cache_token *tok,
	   const struct config_audience *aud)
{
	struct api_render *r = cache_entry_user(e);
	struct cache_status st;
	struct evbuffer *b;

	if (r != NULL && r->generation == tok->generation)
		return r;
	api_render_free(r);
	cache_entry_set_user(e, NULL);
	r = calloc(1, sizeof(*r));
	b = evbuffer_new();
	if (r == NULL || b == NULL)
		goto fail;
	cache_entry_status(a->cache, e, &st);
	evbuffer_add_printf(b, "{\"access_token\":");
	json_append_string(b, tok->value, tok->len);
	evbuffer_add_printf(b,
			    ",\"token_type\":\"Bearer\",\"expires_on\":%" PRId64 ",\"expires_in\":",
			    tok->expires_on);
	r->prefix = evbuffer_take_string(b, &r->prefix_len);
	evbuffer_add_printf(b, ",\"resource\":");
	json_append_string(b, st.resource, strlen(st.resource));
	evbuffer_add_printf(b, ",\"audience\":");
	if (aud != NULL)
		json_append_string(b, aud->name, strlen(aud->name));
	else
		evbuffer_add_printf(b, "null");
	evbuffer_add(b, "}", 1);
	r->suffix = evbuffer_take_string(b, &r->suffix_len);
	evbuffer_free(b);
	b = NULL;
	if (r->prefix == NULL || r->suffix == NULL)
		goto fail;
	r->generation = tok->generation;
	cache_entry_set_user(e, r);
	return r;
fail:
	if (b != NULL)
		evbuffer_free(b);
	api_render_free(r);
	return NULL;
}

static void
reply_token(struct api *a, struct http_request *req, struct cache_entry *e,
	    const struct config_audience *aud, const struct cache_answer *ans, bool plain)
{
	struct api_render *r;
	size_t need, n;
	char num[24];
	int numlen;

	if (ans->status != 200) {
		reply_json_error(req, ans->status, ans->error, ans->description, ans->retry_after);
		return;
	}
	if (plain) {
		http_reply(req, 200, "text/plain", NULL, ans->token->value, ans->token->len);
		return;
	}
	r = api_render(a, e, ans->token, aud);
	if (r == NULL) {
		reply_json_error(req, 500, "server_error", "out of memory", 0);
		return;
	}
	numlen = snprintf(num, sizeof(num), "%" PRId64, ans->expires_in);
	need = r->prefix_len + (size_t)numlen + r->suffix_len;
	if (need > a->scratch_size) {
		char *s = malloc(need);

		if (s == NULL) {
			reply_json_error(req, 500, "server_error", "out of memory", 0);
			return;
		}
		wipe_free(a->scratch, a->scratch_size);
		a->scratch = s;
		a->scratch_size = need;
	}
	memcpy(a->scratch, r->prefix, r->prefix_len);
	n = r->prefix_len;
	memcpy(a->scratch + n, num, (size_t)numlen);
	n += (size_t)numlen;
	memcpy(a->scratch + n, r->suffix, r->suffix_len);
	n += r->suffix_len;
	http_reply(req, 200, "application/json", NULL, a->scratch, n);
	OPENSSL_cleanse(a->scratch, n);
}

static void
wait_answered(void *arg, const struct cache_answer *ans)
{
	struct api_wait *w = arg;

	count_answer(w->api, w->m_ok, wait_label(w->entry, w->audience), ans->status);
	reply_token(w->api, w->req, w->entry, w->audience, ans, w->plain);
	free(w);
}

static void
wait_cancelled(struct http_request *req, void *arg)
{
	struct api_wait *w = arg;

	(void)req;
	cache_waiter_cancel(w->api->cache, w->waiter);
	free(w);
}

static bool
wants_plain(struct http_request *req)
{
	const struct http_header *h = http_request_header(req, "Accept");

	return h != NULL && h->value_len >= 10 && strncasecmp(h->value, "text/plain", 10) == 0;
}

/* SO_PEERCRED against the audience's allow lists; true when allowed. */
static bool
peer_allowed(struct http_request *req, const struct config_audience *aud)
{
	uid_t uid;
	gid_t gid;
	pid_t pid;

	if (aud == NULL || (aud->allow_uids == NULL && aud->allow_gids == NULL))
		return true;
	if (http_request_peer(req, &uid, &gid, &pid) < 0)
		return false;
	return config_audience_allows(aud, uid, gid);
}

static void
serve_token(struct api *a, struct http_request *req, struct cache_entry *e,
	    const struct config_audience *aud, uint64_t *m_ok, int64_t min_validity)
{
	struct cache_answer ans;
	struct api_wait *w;
	int r;

	if (!peer_allowed(req, aud)) {
		count_answer(a, NULL, wait_label(e, aud), 403);
		reply_json_error(req, 403, "forbidden",
				 "this user may not have tokens for this audience", 0);
		return;
	}
	w = calloc(1, sizeof(*w));
	if (w == NULL) {
		reply_json_error(req, 500, "server_error", "out of memory", 0);
		return;
	}
	*w = (struct api_wait){.api = a, .req = req, .entry = e, .audience = aud, .m_ok = m_ok};
	w->plain = wants_plain(req);
	r = cache_request(a->cache, e, min_validity, wait_answered, w, &ans, &w->waiter);
	if (r == -EINPROGRESS) {
		http_request_on_cancel(req, wait_cancelled, w);
		return;
	}
	free(w);
	if (r < 0) {
		count_answer(a, NULL, wait_label(e, aud), 500);
		reply_json_error(req, 500, "server_error", "out of memory", 0);
		return;
	}
	count_answer(a, m_ok, wait_label(e, aud), ans.status);
	reply_token(a, req, e, aud, &ans, wants_plain(req));
}

/* Reads ?min_validity=S (absent: 0); -EINVAL when malformed or repeated. */
static int
parse_min_validity(const char *query, size_t query_len, int64_t *out)
{
	char v[32];
	int count = 0;
	char *end;
	long long n;
	int r = http_query_get(query, query_len, "min_validity", v, sizeof(v), &count);

	if (r == -ENOENT) {
		*out = 0;
		return 0;
	}
	if (r < 0 || count != 1 || v[0] < '0' || v[0] > '9')
		return -EINVAL;
	errno = 0;
	n = strtoll(v, &end, 10);
	if (errno != 0 || *end != '\0' || n > 86400 * 366)
		return -EINVAL;
	*out = n;
	return 0;
}

/* The identity for a dynamic request: named, or the only one allowing dynamic resources. */
static const struct config_identity *
dynamic_identity(struct api *a, const char *name)
{
	const struct config_identity *found = NULL;

	if (name != NULL)
		return config_identity_find(a->cfg, name);
	for (size_t i = 0; i < a->cfg->n_identities; i++) {
		if (!a->cfg->identities[i].dynamic_resources)
			continue;
		if (found != NULL)
			return NULL;
		found = &a->cfg->identities[i];
	}
	return found;
}

static void
route_token_dynamic(struct api *a, struct http_request *req, const char *query, size_t query_len)
{
	char *resource = NULL, identity[256];
	const struct config_identity *id;
	const struct config_audience *aud;
	struct cache_entry *e;
	uint64_t *m_ok = NULL;
	int64_t minv;
	int count = 0, r;

	resource = malloc(MAX_PARAM);
	if (resource == NULL) {
		reply_json_error(req, 500, "server_error", "out of memory", 0);
		return;
	}
	r = http_query_get(query, query_len, "resource", resource, MAX_PARAM, &count);
	if (r < 0 || count != 1 || resource[0] == '\0') {
		reply_json_error(req, 400, "invalid_request",
				 r == -ENOENT || resource[0] == '\0'
				     ? "the resource parameter is required"
				     : "the resource parameter is malformed or repeated",
				 0);
		goto done;
	}
	r = http_query_get(query, query_len, "identity", identity, sizeof(identity), &count);
	if (r < 0 && r != -ENOENT) {
		reply_json_error(req, 400, "invalid_request", "the identity parameter is malformed",
				 0);
		goto done;
	}
	if (r == 0 && count != 1) {
		reply_json_error(req, 400, "invalid_request", "the identity parameter is repeated",
				 0);
		goto done;
	}
	if (parse_min_validity(query, query_len, &minv) < 0) {
		reply_json_error(req, 400, "invalid_request",
				 "min_validity must be a number of seconds", 0);
		goto done;
	}
	id = dynamic_identity(a, r == 0 ? identity : NULL);
	if (id == NULL) {
		reply_json_error(req, 404, "not_found",
				 r == 0
				     ? "no such identity"
				     : "name an identity: none or several allow dynamic resources",
				 0);
		goto done;
	}
	/* a resource that is also a configured audience keeps that audience's rules */
	aud = config_audience_for_resource(a->cfg, id, resource);
	if (aud == NULL && !id->dynamic_resources) {
		reply_json_error(req, 403, "forbidden",
				 "this identity does not allow dynamic resources", 0);
		goto done;
	}
	if (aud != NULL) {
		struct api_audience *aa = api_audience_find(a, aud->name);

		e = aa->entry;
		m_ok = aa->m_ok;
	} else {
		uid_t uid = (uid_t)-1;
		gid_t gid = (gid_t)-1;
		pid_t pid;
		bool known = http_request_peer(req, &uid, &gid, &pid) == 0;

		/*
		 * Any resource may name a restricted audience's API in another
		 * spelling: the identity's own rule decides (config.c keeps it
		 * within every restricted audience's).
		 */
		if (config_acl_restricts(&id->dynamic_allow) &&
		    (!known || !config_acl_allows(&id->dynamic_allow, uid, gid))) {
			count_answer(a, NULL, "", 403);
			reply_json_error(
			    req, 403, "forbidden",
			    "this user may not have dynamic resources of this identity", 0);
			goto done;
		}
		r = cache_entry_get_dynamic(
		    a->cache, a->sources[config_identity_index(a->cfg, id)], id->name, resource,
		    known ? CACHE_CALLER_UID(uid) : CACHE_CALLER_UNKNOWN, &e);
		if (r == -EAGAIN) {
			count_answer(a, NULL, "", 429);
			reply_json_error(req, 429, "too_many_requests",
					 "this user asks for too many new resources; retry shortly",
					 1);
			goto done;
		}
		if (r < 0) {
			reply_json_error(req, 503, "temporarily_unavailable",
					 "too many cached resources are in use; retry shortly", 1);
			goto done;
		}
	}
	serve_token(a, req, e, aud, m_ok, minv);
done:
	free(resource);
}

/* Decodes the single path segment after prefix into name; false when it is not one. */
static bool
path_segment(const char *path, size_t path_len, const char *prefix, char *name, size_t size)
{
	size_t pl = strlen(prefix), n;

	if (path_len <= pl || memcmp(path, prefix, pl) != 0)
		return false;
	if (memchr(path + pl, '/', path_len - pl) != NULL)
		return false;
	if (http_percent_decode(path + pl, path_len - pl, name, size, &n) < 0)
		return false;
	return n > 0;
}

static bool
path_is(const char *path, size_t len, const char *want)
{
	return len == strlen(want) && memcmp(path, want, len) == 0;
}

static void
reply_method_not_allowed(struct http_request *req, const char *allow)
{
	char extra[64];

	snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
	REPLY_LITERAL(
	    req, 405, extra,
	    "{\"error\":\"invalid_request\",\"error_description\":\"method not allowed\"}");
}

struct status_ctx {
	struct api *api;
	struct evbuffer *b;
	bool first;
	bool all;   /* root or bearerd's own user: every entry */
	bool known; /* the peer's uid and gid were read */
	uid_t uid;
	gid_t gid;
};

/*
 * Whether the status caller may see an entry: a configured audience it may
 * use, or a dynamic resource of an identity it may ask for them on the
 * socket.  Resource names say what others work on; they are not for all.
 */
static bool
status_visible(const struct status_ctx *s, const struct config_audience *aud,
	       const struct config_identity *id)
{
	if (s->all)
		return true;
	if (aud != NULL)
		return config_audience_allows(aud, s->known ? s->uid : (uid_t)-1,
					      s->known ? s->gid : (gid_t)-1);
	if (id == NULL || !id->dynamic_resources)
		return false;
	if (!config_acl_restricts(&id->dynamic_allow))
		return true;
	return s->known && config_acl_allows(&id->dynamic_allow, s->uid, s->gid);
}

static const struct config_audience *
audience_for_entry(struct api *a, const struct cache_entry *e)
{
	for (size_t i = 0; i < a->n_audiences; i++)
		if (a->audiences[i].entry == e)
			return a->audiences[i].cfg;
	return NULL;
}

static void
status_one(void *arg, struct cache_entry *e)
{
	struct status_ctx *s = arg;
	const struct config_audience *aud = audience_for_entry(s->api, e);
	const struct config_identity *id;
	struct cache_status st;

	cache_entry_status(s->api->cache, e, &st);
	id = config_identity_find(s->api->cfg, st.identity);
	if (!status_visible(s, aud, id))
		return;
	evbuffer_add_printf(s->b, "%s{\"audience\":", s->first ? "" : ",");
	s->first = false;
	if (aud != NULL)
		json_append_string(s->b, aud->name, strlen(aud->name));
	else
		evbuffer_add_printf(s->b, "null");
	evbuffer_add_printf(s->b, ",\"identity\":");
	json_append_string(s->b, st.identity, strlen(st.identity));
	evbuffer_add_printf(s->b, ",\"source\":\"%s\",\"resource\":",
			    id == NULL ? "" : config_source_name(id->source));
	json_append_string(s->b, st.resource, strlen(st.resource));
	evbuffer_add_printf(s->b,
			    ",\"state\":\"%s\",\"expires_in\":%" PRId64 ",\"refresh_in\":%" PRId64
			    ",\"last_status\":%ld,\"fetches\":%" PRIu64 ",\"failures\":%" PRIu64
			    ",\"last_error\":",
			    cache_state_name(st.state), st.expires_in, st.refresh_in,
			    st.last_status, st.fetches, st.failures);
	json_append_string(s->b, st.last_error, strlen(st.last_error));
	evbuffer_add(s->b, "}", 1);
}

static void
route_status(struct api *a, struct http_request *req)
{
	struct status_ctx s = {.api = a, .b = evbuffer_new(), .first = true};
	pid_t pid;

	s.known = http_request_peer(req, &s.uid, &s.gid, &pid) == 0;
	s.all = s.known && (s.uid == 0 || s.uid == geteuid());
	if (s.b == NULL) {
		reply_json_error(req, 500, "server_error", "out of memory", 0);
		return;
	}
	evbuffer_add(s.b, "[", 1);
	cache_foreach(a->cache, status_one, &s);
	evbuffer_add(s.b, "]", 1);
	http_reply_buffer(req, 200, "application/json", NULL, s.b);
	evbuffer_free(s.b);
}

bool
api_ready(struct api *a, bool strict, struct evbuffer *reasons)
{
	bool ready = true;

	if (!strict && a->ready_latched)
		return true;
	for (size_t i = 0; i < a->n_audiences; i++) {
		struct api_audience *aud = &a->audiences[i];
		struct cache_status st;

		if (!aud->cfg->prefetch || (strict ? cache_entry_ready(a->cache, aud->entry)
						   : cache_entry_was_ready(aud->entry)))
			continue;
		cache_entry_status(a->cache, aud->entry, &st);
		if (reasons != NULL)
			evbuffer_add_printf(reasons, "%saudience %s: %s%s%s", ready ? "" : "; ",
					    aud->cfg->name, cache_state_name(st.state),
					    st.last_error[0] ? ": " : "", st.last_error);
		ready = false;
	}
	if (!strict && ready) {
		a->ready_latched = true;
		log_info("ready: every prefetch audience has held a token", "audiences=%zu",
			 a->n_audiences);
	}
	return ready;
}

/* ?strict=1: ready only while every prefetch audience holds a valid token now. */
static int
parse_strict(const char *query, size_t query_len, bool *out)
{
	char v[8];
	int count = 0;
	int r = http_query_get(query, query_len, "strict", v, sizeof(v), &count);

	if (r == -ENOENT) {
		*out = false;
		return 0;
	}
	if (r < 0 || count != 1 || (strcmp(v, "0") != 0 && strcmp(v, "1") != 0))
		return -EINVAL;
	*out = v[0] == '1';
	return 0;
}

/*
 * GET /readyz: a start-up gate that latches once every prefetch audience has
 * held a valid token, so that an identity-provider outage longer than a
 * token's lifetime does not take every pod out of service at once;
 * ?strict=1 keeps the coupling for those who want it.
 */
static void
route_readyz(struct api *a, struct http_request *req, const char *query, size_t query_len)
{
	struct evbuffer *reasons;
	bool strict;
	char *text;
	size_t len;

	if (parse_strict(query, query_len, &strict) < 0) {
		reply_json_error(req, 400, "invalid_request", "strict must be 0 or 1", 0);
		return;
	}
	reasons = evbuffer_new();
	if (reasons == NULL) {
		reply_json_error(req, 500, "server_error", "out of memory", 0);
		return;
	}
	if (api_ready(a, strict, reasons)) {
		REPLY_LITERAL(req, 200, NULL, "{\"status\":\"ready\"}");
	} else {
		text = evbuffer_take_string(reasons, &len);
		reply_json_error(req, 503, "not_ready", text != NULL ? text : "not ready", 1);
		free(text);
	}
	evbuffer_free(reasons);
}

void
api_set_compat(struct api *a, struct compat *compat)
{
	a->compat = compat;
}

/* [compat] env_allow_uids/gids (when set), or root, or bearerd's own user. */
static bool
env_allowed(struct api *a, struct http_request *req)
{
	const struct config_acl *acl = &a->cfg->compat.env_allow;
	uid_t uid;
	gid_t gid;
	pid_t pid;

	if (!config_acl_restricts(acl))
		return true;
	if (http_request_peer(req, &uid, &gid, &pid) < 0)
		return false;
	return uid == 0 || uid == geteuid() || config_acl_allows(acl, uid, gid);
}

/* IDENTITY_ENDPOINT and IDENTITY_HEADER for `bearerctl env`. */
static void
route_compat_env(struct api *a, struct http_request *req)
{
	struct evbuffer *b = evbuffer_new();
	unsigned char *body;
	size_t len;

	if (b == NULL) {
		reply_json_error(req, 500, "server_error", "out of memory", 0);
		return;
	}
	if (!env_allowed(a, req)) {
		reply_json_error(req, 403, "forbidden",
				 "this user may not read the App Service secret (env_allow_uids, "
				 "env_allow_gids)",
				 0);
	} else if (compat_env(a->compat, b) < 0) {
		reply_json_error(req, 404, "not_found",
				 "no App Service compatible listener is configured", 0);
	} else {
		len = evbuffer_get_length(b);
		body = evbuffer_pullup(b, -1);
		http_reply(req, 200, "application/json", NULL, body, len);
		OPENSSL_cleanse(body, len);
	}
	evbuffer_free(b);
}

static void
route_jwks(struct api *a, struct http_request *req)
{
	for (size_t i = 0; i < a->cfg->n_identities; i++) {
		struct evbuffer *b;

		if (a->cfg->identities[i].source != CONFIG_SOURCE_DEV)
			continue;
		b = evbuffer_new();
		if (b == NULL || source_jwks(a->sources[i], b) < 0) {
			if (b != NULL)
				evbuffer_free(b);
			reply_json_error(req, 500, "server_error", "could not render the keys", 0);
			return;
		}
		http_reply_buffer(req, 200, "application/json", NULL, b);
		evbuffer_free(b);
		return;
	}
	reply_json_error(req, 404, "not_found", "no dev identity is configured", 0);
}

/* Unknown names are counted under one empty label: callers choose them, the bound must hold. */
static void
route_unknown_audience(struct api *a, struct http_request *req)
{
	count_answer(a, NULL, "", 404);
	reply_json_error(req, 404, "not_found", "no such audience", 0);
}

static void
route_bad_request(struct api *a, struct http_request *req, const char *audience)
{
	count_answer(a, NULL, audience, 400);
	reply_json_error(req, 400, "invalid_request", "min_validity must be a number of seconds",
			 0);
}

static void
route_metrics(struct api *a, struct http_request *req)
{
	struct evbuffer *b;

	if (a->metrics == NULL) {
		reply_json_error(req, 404, "not_found", "metrics are not enabled", 0);
		return;
	}
	b = evbuffer_new();
	if (b == NULL) {
		reply_json_error(req, 500, "server_error", "out of memory", 0);
		return;
	}
	metrics_gauges_clear(a->metrics);
	metrics_gauge_set(a->metrics, METRICS_BUILD_INFO, BEARERD_VERSION, 1);
	metrics_gauge_set(a->metrics, METRICS_CACHE_ENTRIES, NULL, (double)cache_size(a->cache));
	for (size_t i = 0; i < a->n_audiences; i++) {
		struct cache_status st;

		cache_entry_status(a->cache, a->audiences[i].entry, &st);
		metrics_gauge_set(a->metrics, METRICS_TOKEN_EXPIRY, a->audiences[i].cfg->name,
				  (double)st.expires_in);
	}
	metrics_gauge_set(a->metrics, METRICS_READY, "latched", api_ready(a, false, NULL));
	metrics_gauge_set(a->metrics, METRICS_READY, "strict", api_ready(a, true, NULL));
	if (a->collect != NULL)
		a->collect(a->collect_arg, a->metrics);
	metrics_render(a->metrics, b);
	http_reply_buffer(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, b);
	evbuffer_free(b);
}

/*
 * POST /v1/refresh/AUD: 202 when a refresh started or is running; 202
 * "deferred" with refresh_in when it must wait (a backoff after a failure,
 * or CACHE_FORCED_INTERVAL_S after the last fetch), every request until then
 * being the same refresh; 503 when it could not start.
 */
static void
route_refresh(struct api *a, struct http_request *req, struct api_audience *aud)
{
	int64_t refresh_in = 1;
	int r = cache_refresh(a->cache, aud->entry, &refresh_in);
	struct evbuffer *b;

	if (r == 0 || r == -EALREADY) {
		log_info("refresh requested", "audience=%s%s", aud->cfg->name,
			 r == 0 ? "" : " joined=yes");
		REPLY_LITERAL(req, 202, NULL, "{\"status\":\"refreshing\"}");
		return;
	}
	if (r != -EAGAIN) {
		/* the fetch could not start: recorded like an upstream failure */
		reply_json_error(req, 503, "temporarily_unavailable",
				 "the refresh could not start; see the audience's status", 1);
		return;
	}
	log_debug("refresh deferred", "audience=%s refresh_in=%lld", aud->cfg->name,
		  (long long)refresh_in);
	b = evbuffer_new();
	if (b == NULL) {
		reply_json_error(req, 500, "server_error", "out of memory", 0);
		return;
	}
	evbuffer_add_printf(b, "{\"status\":\"deferred\",\"refresh_in\":%" PRId64 "}", refresh_in);
	http_reply_buffer(req, 202, "application/json", NULL, b);
	evbuffer_free(b);
}

void
api_handle(struct http_request *req, void *arg)
{
	struct api *a = arg;
	const char *path, *query;
	size_t path_len, query_len;
	char name[256];
	bool get = http_request_method_is(req, "GET") || http_request_method_is(req, "HEAD");
	struct api_audience *aud;
	int64_t minv;

	http_request_path(req, &path, &path_len, &query, &query_len);
	if (path_segment(path, path_len, "/v1/token/", name, sizeof(name))) {
		aud = api_audience_find(a, name);
		if (!get)
			reply_method_not_allowed(req, "GET, HEAD");
		else if (aud == NULL)
			route_unknown_audience(a, req);
		else if (parse_min_validity(query, query_len, &minv) < 0)
			route_bad_request(a, req, aud->cfg->name);
		else
			serve_token(a, req, aud->entry, aud->cfg, aud->m_ok, minv);
	} else if (path_is(path, path_len, "/v1/token")) {
		if (!get)
			reply_method_not_allowed(req, "GET, HEAD");
		else
			route_token_dynamic(a, req, query, query_len);
	} else if (path_segment(path, path_len, "/v1/refresh/", name, sizeof(name))) {
		aud = api_audience_find(a, name);
		if (!http_request_method_is(req, "POST")) {
			reply_method_not_allowed(req, "POST");
		} else if (aud == NULL) {
			reply_json_error(req, 404, "not_found", "no such audience", 0);
		} else if (!peer_allowed(req, aud->cfg)) {
			reply_json_error(req, 403, "forbidden",
					 "this user may not refresh this audience", 0);
		} else {
			route_refresh(a, req, aud);
		}
	} else if (!path_is(path, path_len, "/v1/status") && !path_is(path, path_len, "/healthz") &&
		   !path_is(path, path_len, "/readyz") &&
		   !path_is(path, path_len, "/v1/dev/jwks.json") &&
		   !path_is(path, path_len, "/v1/compat/env") &&
		   !path_is(path, path_len, "/metrics")) {
		reply_json_error(req, 404, "not_found", "no such endpoint", 0);
	} else if (!get) {
		reply_method_not_allowed(req, "GET, HEAD");
	} else if (path_is(path, path_len, "/v1/status")) {
		route_status(a, req);
	} else if (path_is(path, path_len, "/healthz")) {
		REPLY_LITERAL(req, 200, NULL, "{\"status\":\"ok\"}");
	} else if (path_is(path, path_len, "/readyz")) {
		route_readyz(a, req, query, query_len);
	} else if (path_is(path, path_len, "/v1/compat/env")) {
		route_compat_env(a, req);
	} else if (path_is(path, path_len, "/metrics")) {
		route_metrics(a, req);
	} else {
		route_jwks(a, req);
	}
}

void
api_handle_metrics(struct http_request *req, void *arg)
{
	struct api *a = arg;
	const char *path, *query;
	size_t path_len, query_len;

	http_request_path(req, &path, &path_len, &query, &query_len);
	if (!path_is(path, path_len, "/metrics"))
		reply_json_error(req, 404, "not_found", "this listener serves /metrics only", 0);
	else if (!http_request_method_is(req, "GET") && !http_request_method_is(req, "HEAD"))
		reply_method_not_allowed(req, "GET, HEAD");
	else
		route_metrics(a, req);
}
