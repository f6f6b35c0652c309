/*
 * bearerd: start-up, the event loop, signals, reload and shutdown.  Setup
 * (daemon_setup) happens in the order config, loop, metrics, fetch, sources,
 * cache and the clock check, api, compat, proxy, the socket and the metrics
 * listener, signals; teardown (daemon_teardown) runs in reverse, except that
 * the sources and fetch go before the api and the cache, so that no upstream
 * callback runs after them.  Requests enter in http.c (proxy.c for the
 * proxy's listeners), are routed in api.c (or compat.c for the
 * Azure-compatible listeners), tokens live in cache.c, and upstream calls
 * leave through source_*.c and fetch.c.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "build-config.h"
#include "api.h"
#include "cache.h"
#include "clock.h"
#include "compat.h"
#include "proxy.h"
#include "config.h"
#include "fetch.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "source.h"

#define SHUTDOWN_GRACE_S 1    /* beyond wait_timeout, for replies to drain */
#define READY_POLL_MS	 50   /* how often start-up checks the prefetch audiences */
#define READY_MAX_WAIT_S 30   /* READY=1 anyway after this; /readyz keeps telling the truth */
#define GC_INTERVAL_S	 1    /* how often retired configurations and sources are checked */
#define CLOCK_CHECK_MS	 1000 /* how often the clocks are compared (suspend, wall steps) */
#define CLOCK_JUMP_MS	 2000 /* the clocks moving apart by more than this is a jump */

/*
 * One loaded configuration.  Sources built from it keep pointers into it,
 * and so do requests routed under it until they are answered (at the latest
 * after its wait_timeout): after a reload it is freed only when neither can
 * remain.
 */
struct gen {
	struct config *cfg;
	unsigned refs;	       /* live sources built from cfg, plus one while current */
	int64_t keep_until_ms; /* requests routed under cfg are answered by then */
	TAILQ_ENTRY(gen) link;
};

/* A source, the configuration it was built from, and its fetches in flight. */
struct slot {
	struct source *src;
	struct gen *gen;
	unsigned in_flight;
	bool retired; /* replaced by a reload: freed once nothing is in flight */
	TAILQ_ENTRY(slot) link;
};

/* One upstream fetch: timed for the metrics, counted so its source outlives it. */
struct upstream_call {
	struct daemon *d;
	struct slot *slot;
	source_done_fn *done;
	void *arg;
	struct timespec start;
	TAILQ_ENTRY(upstream_call) link;
};

TAILQ_HEAD(gen_list, gen);
TAILQ_HEAD(slot_list, slot);
TAILQ_HEAD(call_list, upstream_call);

/* The three clocks read together, to see them move apart. */
struct clock_sample {
	int64_t mono, boot, wall;
};

struct daemon {
	struct event_base *base;
	struct config *cfg; /* gen->cfg */
	struct gen *gen;
	const char *path; /* reloaded from; NULL with --dev */
	bool verbose;	  /* -v: the log level does not follow the config */
	struct gen_list gens;
	struct slot_list slots;
	struct call_list calls;
	struct event *gc_timer;
	struct metrics *metrics;
	struct fetch *fetch;
	struct source **sources; /* current, parallel to cfg->identities */
	struct slot **cur_slots; /* same order */
	struct cache *cache;
	struct api *api;
	struct compat *compat;
	struct proxy *proxy; /* proxy.c: [proxy] and [route] listeners */
	struct http_server *http;
	struct http_server *metrics_http; /* [bearerd] metrics_listen, or NULL */
	struct event *cache_timer;
	struct event *sig_term, *sig_int, *sig_hup;
	struct event *drain_timer;
	struct event *ready_timer, *watchdog_timer;
	int64_t ready_deadline_ms;
	struct event *clock_timer;
	struct clock_sample clocks; /* at the last check */
	char *unlink_path;
	int64_t stop_deadline_ms;
};

/* The cache's clock: token lifetimes run on while the host is suspended. */
static int64_t
boot_ms(void *ctx)
{
	(void)ctx;
	return clock_boot_ms();
}

static int64_t
wall_ms(void *ctx)
{
	(void)ctx;
	return clock_wall_ms();
}

static uint32_t
random_u32(void *ctx)
{
	(void)ctx;
	return arc4random();
}

static struct gen *
gen_new(struct config *cfg)
{
	struct gen *g = calloc(1, sizeof(*g));

	if (g != NULL) {
		g->cfg = cfg;
		g->refs = 1;
	}
	return g;
}

static struct slot *
slot_find(struct daemon *d, const struct source *src)
{
	struct slot *s;

	TAILQ_FOREACH(s, &d->slots, link)
	if (s->src == src)
		return s;
	return NULL;
}

static void gc_arm(struct daemon *d);

static void
upstream_done(void *arg, struct token_result *res)
{
	struct upstream_call *call = arg;
	struct daemon *d = call->d;
	struct slot *slot = call->slot;
	struct timespec end;
	char status[24];
	double secs;

	clock_gettime(CLOCK_MONOTONIC, &end);
	secs = (double)(end.tv_sec - call->start.tv_sec) +
	       (double)(end.tv_nsec - call->start.tv_nsec) / 1e9;
	if (res->http_status > 0)
		snprintf(status, sizeof(status), "%ld", res->http_status);
	else
		snprintf(status, sizeof(status), "%s",
			 slot->src->id->source == CONFIG_SOURCE_DEV ? "local" : "error");
	metrics_inc(d->metrics, METRICS_UPSTREAM_REQUESTS, slot->src->id->name, status);
	metrics_observe(d->metrics, METRICS_UPSTREAM_DURATION, slot->src->id->name, secs);
	TAILQ_REMOVE(&d->calls, call, link);
	slot->in_flight--;
	call->done(call->arg, res);
	free(call);
	if (slot->retired && slot->in_flight == 0)
		gc_arm(d);
}

static int
daemon_fetch(void *ctx, struct source *src, const char *resource, enum source_priority prio,
	     source_done_fn *done, void *arg)
{
	struct daemon *d = ctx;
	struct upstream_call *call = calloc(1, sizeof(*call));
	int r;

	if (call == NULL)
		return -ENOMEM;
	*call = (struct upstream_call){.d = d, .slot = slot_find(d, src), .done = done, .arg = arg};
	if (call->slot == NULL) {
		free(call);
		return -ENOENT;
	}
	clock_gettime(CLOCK_MONOTONIC, &call->start);
	r = source_fetch_prio(src, resource, prio, upstream_done, call);
	if (r < 0) {
		free(call);
		return r;
	}
	TAILQ_INSERT_TAIL(&d->calls, call, link);
	call->slot->in_flight++;
	return 0;
}

/* Withdraws a fetch still queued in its source (the cache dropped its entry). */
static int
daemon_cancel(void *ctx, struct source *src, source_done_fn *done, void *arg)
{
	struct daemon *d = ctx;
	struct upstream_call *call;
	int r;

	TAILQ_FOREACH(call, &d->calls, link)
	{
		if (call->slot->src != src || call->done != done || call->arg != arg)
			continue;
		r = source_cancel(src, upstream_done, call);
		if (r < 0)
			return r;
		TAILQ_REMOVE(&d->calls, call, link);
		call->slot->in_flight--;
		if (call->slot->retired && call->slot->in_flight == 0)
			gc_arm(d);
		free(call);
		return 0;
	}
	return -ENOENT;
}

/* Builds the source for cfg's identity i; the slot holds a reference on the configuration. */
static int
slot_new(struct daemon *d, struct gen *g, size_t i, struct slot **out)
{
	struct slot *slot = calloc(1, sizeof(*slot));
	int r;

	if (slot == NULL)
		return -ENOMEM;
	r = source_new(&slot->src, &g->cfg->identities[i], d->base, d->fetch);
	if (r < 0) {
		log_error("cannot set up the identity", "identity=%s error=\"%s\"",
			  g->cfg->identities[i].name, strerror(-r));
		free(slot);
		return r;
	}
	slot->gen = g;
	g->refs++;
	TAILQ_INSERT_TAIL(&d->slots, slot, link);
	*out = slot;
	return 0;
}

static void
gen_unref(struct gen *g)
{
	g->refs--;
}

static void
slot_free(struct daemon *d, struct slot *slot)
{
	TAILQ_REMOVE(&d->slots, slot, link);
	source_free(slot->src);
	gen_unref(slot->gen);
	free(slot);
}

/* Frees retired sources with nothing in flight and configurations nothing points into. */
static bool
gc_run(struct daemon *d)
{
	struct slot *slot, *ts;
	struct gen *g, *tg;
	int64_t now = clock_mono_ms();
	bool left = false;

	for (slot = TAILQ_FIRST(&d->slots); slot != NULL; slot = ts) {
		ts = TAILQ_NEXT(slot, link);
		if (slot->retired && slot->in_flight == 0)
			slot_free(d, slot);
		else if (slot->retired)
			left = true;
	}
	for (g = TAILQ_FIRST(&d->gens); g != NULL; g = tg) {
		tg = TAILQ_NEXT(g, link);
		if (g == d->gen)
			continue;
		if (g->refs == 0 && now >= g->keep_until_ms) {
			TAILQ_REMOVE(&d->gens, g, link);
			config_free(g->cfg);
			free(g);
		} else {
			left = true;
		}
	}
	return left;
}

static void
on_gc_timer(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;

	(void)fd;
	(void)what;
	if (gc_run(d))
		gc_arm(d);
}

static void
gc_arm(struct daemon *d)
{
	struct timeval tv = {GC_INTERVAL_S, 0};

	if (d->gc_timer != NULL && !evtimer_pending(d->gc_timer, NULL))
		evtimer_add(d->gc_timer, &tv);
}

static void
daemon_fetched(void *ctx, const struct cache_fetch_info *info)
{
	struct daemon *d = ctx;

	metrics_inc(d->metrics, METRICS_REFRESHES, info->identity, info->reason);
	if (info->failure != NULL)
		metrics_inc(d->metrics, METRICS_REFRESH_FAILURES, info->identity, info->failure);
}

static void
daemon_arm(void *ctx, int64_t deadline_ms)
{
	struct daemon *d = ctx;
	int64_t delay;
	struct timeval tv;

	if (deadline_ms == INT64_MAX) {
		evtimer_del(d->cache_timer);
		return;
	}
	/* libevent's timers run on the monotonic clock: on_clock_check catches a late one */
	delay = deadline_ms - boot_ms(NULL);
	if (delay < 0)
		delay = 0;
	tv.tv_sec = delay / 1000;
	tv.tv_usec = (delay % 1000) * 1000;
	evtimer_add(d->cache_timer, &tv);
}

static const struct cache_ops daemon_cache_ops = {
    .boot_ms = boot_ms,
    .wall_ms = wall_ms,
    .random = random_u32,
    .fetch = daemon_fetch,
    .cancel = daemon_cancel,
    .arm = daemon_arm,
    .user_free = api_user_free,
    .fetched = daemon_fetched,
};

static void
on_cache_timer(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;

	(void)fd;
	(void)what;
	cache_run(d->cache);
}

static void
clock_sample(struct clock_sample *s)
{
	s->mono = clock_mono_ms();
	s->boot = clock_boot_ms();
	s->wall = clock_wall_ms();
}

/*
 * Compares the clocks every CLOCK_CHECK_MS.  The boot clock moving ahead of
 * the monotonic one is time spent suspended (every timer is late by it); the
 * wall clock moving apart from the boot clock is a step (NTP, an operator, a
 * VM restored from a snapshot).  Either way the cache re-evaluates every
 * token and refresh now instead of waiting for a timer.  A timerfd with
 * TFD_TIMER_CANCEL_ON_SET would see wall-clock steps, but not a suspend.
 */
static void
on_clock_check(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	struct clock_sample now, *then = &d->clocks;
	int64_t slept, stepped;

	(void)fd;
	(void)what;
	clock_sample(&now);
	slept = (now.boot - now.mono) - (then->boot - then->mono);
	stepped = (now.wall - now.boot) - (then->wall - then->boot);
	*then = now;
	if (llabs(slept) <= CLOCK_JUMP_MS && llabs(stepped) <= CLOCK_JUMP_MS)
		return;
	if (llabs(stepped) > CLOCK_JUMP_MS)
		log_warnx("the wall clock was stepped: re-evaluating every token",
			  "step_ms=%lld suspended_ms=%lld", (long long)stepped, (long long)slept);
	else
		log_info("resumed from a suspend: re-evaluating every token", "suspended_ms=%lld",
			 (long long)slept);
	cache_clock_jumped(d->cache);
}

static int
clock_check_setup(struct daemon *d)
{
	struct timeval tick = {CLOCK_CHECK_MS / 1000, (CLOCK_CHECK_MS % 1000) * 1000};

	clock_sample(&d->clocks);
	d->clock_timer = event_new(d->base, -1, EV_PERSIST, on_clock_check, d);
	if (d->clock_timer == NULL || event_add(d->clock_timer, &tick) < 0)
		return -ENOMEM;
	return 0;
}

/* Is a daemon answering on path?  Decides whether a leftover socket may be replaced. */
static bool
socket_in_use(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool used;

	if (fd < 0)
		return false;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	used = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 || errno == EAGAIN;
	close(fd);
	return used;
}

/*
 * Creates the listening Unix socket: bound under a umask that leaves it
 * owner-only, then given its group, then its mode, so it is never briefly
 * wider than configured.
 */
static int
listen_unix(const char *path, mode_t mode, const char *group)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct stat st;
	mode_t old;
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		log_error("socket path too long", "path=%s", path);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			log_error("socket path exists and is not a socket", "path=%s", path);
			return -EEXIST;
		}
		if (socket_in_use(path)) {
			log_error("another daemon is answering on the socket", "path=%s", path);
			return -EADDRINUSE;
		}
		unlink(path);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	old = umask(0177);
	r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (r < 0) {
		r = -errno;
		log_warn("cannot bind the socket", "path=%s", path);
		goto fail;
	}
	if (group != NULL) {
		struct group *g = getgrnam(group);

		if (g == NULL || chown(path, (uid_t)-1, g->gr_gid) < 0) {
			r = g == NULL ? -ENOENT : -errno;
			log_error("cannot give the socket its group",
				  "path=%s group=%s error=\"%s\"", path, group, strerror(-r));
			goto fail_unlink;
		}
	}
	if (chmod(path, mode) < 0 || listen(fd, 4096) < 0) {
		r = -errno;
		log_warn("cannot set up the socket", "path=%s", path);
		goto fail_unlink;
	}
	return fd;
fail_unlink:
	unlink(path);
fail:
	close(fd);
	return r;
}

static void
on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	unsigned pending =
	    http_server_pending(d->http) + compat_pending(d->compat) + proxy_pending(d->proxy);

	(void)fd;
	(void)what;
	if (pending == 0 || clock_mono_ms() >= d->stop_deadline_ms) {
		if (pending > 0)
			log_warnx("stopping with requests still waiting", "pending=%u", pending);
		event_base_loopexit(d->base, NULL);
	}
}

static void
on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	struct timeval tick = {0, 50000};

	(void)what;
	if (d->drain_timer != NULL)
		return;
	log_info("stopping", "signal=%s", strsignal((int)sig));
	notify_stopping();
	if (d->ready_timer != NULL)
		event_del(d->ready_timer); /* no READY=1 after STOPPING=1 */
	http_server_stop_accepting(d->http);
	if (d->metrics_http != NULL)
		http_server_stop_accepting(d->metrics_http);
	compat_stop_accepting(d->compat);
	proxy_stop_accepting(d->proxy);
	if (d->unlink_path != NULL)
		unlink(d->unlink_path);
	d->stop_deadline_ms = clock_mono_ms() + (d->cfg->wait_timeout + SHUTDOWN_GRACE_S) * 1000;
	d->drain_timer = event_new(d->base, -1, EV_PERSIST, on_drain_tick, d);
	if (d->drain_timer == NULL || event_add(d->drain_timer, &tick) < 0)
		event_base_loopexit(d->base, NULL);
}

static void
cache_params_from(const struct config *cfg, struct cache_params *cp)
{
	*cp = (struct cache_params){
	    .min_validity = cfg->min_validity,
	    .refresh_margin = cfg->refresh_margin,
	    .idle_timeout = cfg->idle_timeout,
	    .wait_timeout_ms = cfg->wait_timeout * 1000,
	    .max_entries = cfg->max_entries,
	    .dynamic_rate = cfg->dynamic_rate,
	};
}

/* Parses the configuration again; every error is logged, one line each, at error level. */
static int
reload_parse(struct daemon *d, struct config **out)
{
	char *text = NULL, *line, *save = NULL;
	size_t len = 0;
	FILE *errs = open_memstream(&text, &len);
	int r;

	if (errs == NULL)
		return -errno;
	r = d->path != NULL ? config_load(out, d->path, errs)
			    : config_load_dev(out, d->cfg->socket, errs);
	fclose(errs);
	if (r < 0) {
		char clean[1024];

		for (line = strtok_r(text, "\n", &save); line != NULL;
		     line = strtok_r(NULL, "\n", &save))
			log_error("configuration rejected", "error=\"%s\"",
				  log_clean(clean, sizeof(clean), line));
		log_error("reload failed: the old configuration keeps serving", "path=%s",
			  d->path != NULL ? d->path : "<dev>");
	}
	free(text);
	return r;
}

/*
 * The sources for the new configuration: an identity equal to one of the
 * same name keeps its source (and so its cache entries and tokens), any
 * other gets a new one.
 */
static int
reload_sources(struct daemon *d, struct gen *ng, struct source **nsrc, struct slot **nslots)
{
	for (size_t j = 0; j < ng->cfg->n_identities; j++) {
		const struct config_identity *nid = &ng->cfg->identities[j];
		const struct config_identity *oid = config_identity_find(d->cfg, nid->name);
		int r;

		if (oid != NULL && config_identity_equal(oid, nid)) {
			nslots[j] = d->cur_slots[config_identity_index(d->cfg, oid)];
		} else {
			r = slot_new(d, ng, j, &nslots[j]);
			if (r < 0)
				return r;
		}
		nsrc[j] = nslots[j]->src;
	}
	return 0;
}

struct drop_ctx {
	struct daemon *d;
	struct slot **kept; /* the new slots */
	size_t n_kept;
	struct cache_entry **drops;
	size_t n, cap;
	bool oom;
};

/* Collects entries of identities whose source is replaced or gone. */
static void
drop_collect(void *arg, struct cache_entry *e)
{
	struct drop_ctx *x = arg;
	const struct config_identity *oid;
	struct cache_status st;
	struct slot *slot;

	cache_entry_status(x->d->cache, e, &st);
	oid = config_identity_find(x->d->cfg, st.identity);
	slot = oid != NULL ? x->d->cur_slots[config_identity_index(x->d->cfg, oid)] : NULL;
	for (size_t i = 0; slot != NULL && i < x->n_kept; i++)
		if (x->kept[i] == slot)
			return;
	if (x->n == x->cap) {
		size_t cap = x->cap ? x->cap * 2 : 16;
		struct cache_entry **p = realloc(x->drops, cap * sizeof(*p));

		if (p == NULL) {
			x->oom = true;
			return;
		}
		x->drops = p;
		x->cap = cap;
	}
	x->drops[x->n++] = e;
}

static void
reload_drop_entries(struct daemon *d, struct slot **nslots, size_t n)
{
	struct drop_ctx x = {.d = d, .kept = nslots, .n_kept = n};

	cache_foreach(d->cache, drop_collect, &x);
	if (x.oom)
		fatalx("out of memory during reload", "");
	for (size_t i = 0; i < x.n; i++)
		cache_entry_drop(d->cache, x.drops[i]);
	free(x.drops);
	if (x.n > 0)
		log_info("reload dropped the tokens of changed identities", "entries=%zu", x.n);
}

/* What a reload cannot change without a restart: said, not silently ignored. */
static void
reload_warn_fixed(const struct config *o, const struct config *n)
{
	struct http_limits a, b;

	if (strcmp(o->socket, n->socket) != 0 || o->socket_mode != n->socket_mode ||
	    (o->socket_group == NULL) != (n->socket_group == NULL) ||
	    (o->socket_group != NULL && strcmp(o->socket_group, n->socket_group) != 0))
		log_warnx("socket, socket_mode and socket_group take effect at the next restart",
			  "socket=%s", o->socket);
	if ((o->metrics_listen == NULL) != (n->metrics_listen == NULL) ||
	    (o->metrics_listen != NULL &&
	     strcmp(o->metrics_listen->text, n->metrics_listen->text) != 0))
		log_warnx("metrics_listen takes effect at the next restart", "");
	http_limits_from_config(&a, o);
	http_limits_from_config(&b, n);
	if (memcmp(&a, &b, sizeof(a)) != 0)
		log_warnx("connection limits of the socket take effect at the next restart; "
			  "compat listeners that were rebound use the new ones",
			  "");
}

/*
 * The proxy adopts the new configuration or, when its sections changed,
 * refuses (-ENOTSUP) without changing anything: then the whole reload is
 * refused and compat goes back to the configuration still in use.
 */
static int
reload_proxy(struct daemon *d, const struct config *ncfg, struct source **nsrc)
{
	int r = proxy_reconfigure(d->proxy, ncfg, nsrc);

	if (r == 0)
		return 0;
	if (r == -ENOTSUP)
		log_error("the [proxy] or [route] sections changed: restart bearerd to apply them",
			  "");
	if (compat_reconfigure(d->compat, d->cfg, d->sources) < 0)
		log_error("compat listeners could not be restored after a failed reload", "");
	return r;
}

/*
 * SIGHUP: the new configuration is parsed and its new sources and changed
 * listeners are set up before anything is swapped, so a failure leaves the
 * old one serving.  Then: entries of changed or removed identities are
 * dropped, the api and compat switch to the new configuration (unchanged
 * listeners keep their sockets), and the old configuration is retired.
 */
static int
daemon_reload(struct daemon *d)
{
	struct config *ncfg = NULL;
	struct gen *ng, *og = d->gen;
	struct source **nsrc;
	struct slot **nslots;
	struct cache_params cp;
	size_t n, kept = 0;
	int r;

	r = reload_parse(d, &ncfg);
	if (r < 0)
		return r;
	ng = gen_new(ncfg);
	n = ncfg->n_identities;
	nsrc = calloc(n + 1, sizeof(*nsrc));
	nslots = calloc(n + 1, sizeof(*nslots));
	if (ng == NULL || nsrc == NULL || nslots == NULL) {
		r = -ENOMEM;
		goto fail;
	}
	r = reload_sources(d, ng, nsrc, nslots);
	if (r == 0)
		r = compat_reconfigure(d->compat, ncfg, nsrc);
	if (r < 0)
		goto fail;
	r = reload_proxy(d, ncfg, nsrc);
	if (r < 0)
		goto fail;
	/* committed: nothing below fails but for memory */
	(void)api_ready(d->api, false, NULL); /* latch on the old entries before any is dropped */
	reload_drop_entries(d, nslots, n);
	if (api_reconfigure(d->api, ncfg, nsrc) < 0)
		fatalx("out of memory during reload", "");
	/* again: its entries of replaced identities were just dropped */
	if (proxy_reconfigure(d->proxy, ncfg, nsrc) < 0)
		fatalx("out of memory during reload", "");
	for (size_t i = 0; i < d->cfg->n_identities; i++) {
		bool keep = false;

		for (size_t j = 0; j < n; j++)
			keep = keep || nslots[j] == d->cur_slots[i];
		d->cur_slots[i]->retired = !keep;
		kept += keep;
	}
	reload_warn_fixed(d->cfg, ncfg);
	free(d->sources);
	free(d->cur_slots);
	d->sources = nsrc;
	d->cur_slots = nslots;
	og->refs--;
	og->keep_until_ms = clock_mono_ms() + (og->cfg->wait_timeout + SHUTDOWN_GRACE_S) * 1000;
	TAILQ_INSERT_TAIL(&d->gens, ng, link);
	d->gen = ng;
	d->cfg = ncfg;
	cache_params_from(ncfg, &cp);
	cache_set_params(d->cache, &cp);
	if (!d->verbose)
		log_set_level((enum log_level)ncfg->log_level);
	gc_arm(d);
	log_info("configuration reloaded", "audiences=%zu identities=%zu kept_identities=%zu",
		 ncfg->n_audiences, n, kept);
	return 0;
fail:
	for (size_t j = 0; nslots != NULL && j < n; j++)
		if (nslots[j] != NULL && nslots[j]->gen == ng)
			slot_free(d, nslots[j]);
	free(nslots);
	free(nsrc);
	free(ng);
	config_free(ncfg);
	log_error("reload failed: the old configuration keeps serving", "error=\"%s\"",
		  strerror(-r));
	return r;
}

static void
on_hup(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	int r;

	(void)sig;
	(void)what;
	if (d->drain_timer != NULL)
		return; /* stopping */
	notify_reloading();
	log_info("reloading", "path=%s", d->path != NULL ? d->path : "<dev>");
	r = daemon_reload(d);
	metrics_inc(d->metrics, METRICS_RELOADS, r == 0 ? "ok" : "error", NULL);
	if (r == 0)
		notify_status("serving: %zu audiences (reloaded)", d->cfg->n_audiences);
	else
		notify_status("serving the previous configuration: the new one was rejected");
	notify_ready();
}

/* Start-up: READY=1 once every prefetch audience holds a token, or after READY_MAX_WAIT_S. */
static void
on_ready_tick(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	bool ready = api_ready(d->api, false, NULL);

	(void)fd;
	(void)what;
	if (!ready && clock_mono_ms() < d->ready_deadline_ms)
		return;
	if (ready) {
		notify_status("ready: %zu audiences", d->cfg->n_audiences);
	} else {
		log_warnx("reporting ready before every prefetch audience has a token",
			  "waited_s=%d", READY_MAX_WAIT_S);
		notify_status("serving; some prefetch audiences have no token yet (see /readyz)");
	}
	notify_ready();
	event_del(d->ready_timer);
}

static void
on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	notify_watchdog();
}

/* Arms the READY=1 check and, when WatchdogSec= is set, keep-alives at half of it. */
static int
notify_setup(struct daemon *d)
{
	struct timeval tick = {0, READY_POLL_MS * 1000};
	uint64_t usec;

	d->ready_deadline_ms = clock_mono_ms() + READY_MAX_WAIT_S * 1000;
	d->ready_timer = event_new(d->base, -1, EV_PERSIST, on_ready_tick, d);
	if (d->ready_timer == NULL || event_add(d->ready_timer, &tick) < 0)
		return -ENOMEM;
	on_ready_tick(-1, 0, d); /* nothing to prefetch: ready now */
	if (notify_watchdog_usec(&usec) > 0) {
		struct timeval half = {(time_t)(usec / 2000000), (suseconds_t)(usec / 2 % 1000000)};

		d->watchdog_timer = event_new(d->base, -1, EV_PERSIST, on_watchdog, d);
		if (d->watchdog_timer == NULL || event_add(d->watchdog_timer, &half) < 0)
			return -ENOMEM;
		notify_watchdog();
	}
	return 0;
}

static const char *
dev_socket_path(void)
{
	static char buf[108];
	const char *env = getenv("BEARERD_SOCKET");
	const char *rt = getenv("XDG_RUNTIME_DIR");

	if (env != NULL && env[0] != '\0')
		return env;
	if (rt != NULL && rt[0] != '\0' &&
	    (size_t)snprintf(buf, sizeof(buf), "%s/bearerd.sock", rt) < sizeof(buf))
		return buf;
	return "./bearerd.sock";
}

/*
 * Every connection costs a descriptor (two through the proxy): the soft limit
 * (often 1024) is raised to the hard one, so that the configured connection
 * caps, not the kernel, decide who is turned away; a cap the limit cannot
 * honour is said at start.
 */
static void
raise_fd_limit(const struct config *cfg)
{
	struct rlimit rl;
	uint64_t want;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			(void)getrlimit(RLIMIT_NOFILE, &rl);
	}
	want = (uint64_t)cfg->max_connections + 64; /* the API socket, plus upstreams and files */
	if (rl.rlim_cur != RLIM_INFINITY && want > rl.rlim_cur)
		log_warnx("the open-files limit is below max_connections: connections beyond it "
			  "fail to be accepted",
			  "limit=%llu max_connections=%u", (unsigned long long)rl.rlim_cur,
			  cfg->max_connections);
}

static void
usage(FILE *f)
{
	fprintf(f, "usage: bearerd [-c FILE] [-n] [--dev] [-v] [-V]\n"
		   "  -c FILE   configuration file (default " BEARERD_DEFAULT_CONFIG ")\n"
		   "  -n        check the configuration and exit\n"
		   "  --dev     run on the embedded development configuration\n"
		   "  -v        log at debug level\n"
		   "  -V        print the version and exit\n");
}

/* [bearerd] metrics_listen: /metrics for scrapers over TCP, nothing else (no token). */
static int
metrics_listen(struct daemon *d, const struct http_limits *api_limits)
{
	const struct config_listen *cl = d->cfg->metrics_listen;
	struct http_limits limits = *api_limits;
	struct sockaddr_storage bound;
	int fd, r;

	if (cl == NULL)
		return 0;
	r = http_server_new(&d->metrics_http, d->base, &limits, api_handle_metrics, d->api);
	if (r < 0)
		return r;
	fd = http_listen_tcp(&cl->addr, cl->addr_len, &bound);
	if (fd < 0) {
		log_error("cannot listen", "listener=metrics address=%s error=\"%s\"", cl->text,
			  strerror(-fd));
		return fd;
	}
	r = http_server_add_listener(d->metrics_http, fd);
	if (r < 0)
		return r;
	log_info("metrics listening", "address=%s port=%u", cl->text,
		 ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
						   : ((struct sockaddr_in *)&bound)->sin_port));
	return 0;
}

/* Open connections per listener, set just before /metrics is rendered. */
static void
daemon_collect(void *arg, struct metrics *m)
{
	struct daemon *d = arg;

	metrics_gauge_set(m, METRICS_CONNECTIONS_OPEN, "api",
			  (double)http_server_connections(d->http));
	if (d->metrics_http != NULL)
		metrics_gauge_set(m, METRICS_CONNECTIONS_OPEN, "metrics",
				  (double)http_server_connections(d->metrics_http));
	compat_collect(d->compat, m);
	proxy_collect(d->proxy, m);
}

/* The series bound: every cached entry may carry a few results, plus the fixed ones. */
static size_t
metrics_bound(const struct config *cfg)
{
	return cfg->max_entries * 4 + 1024;
}

static int
daemon_setup(struct daemon *d)
{
	struct cache_params cp;
	struct http_limits limits;
	int r, fd, n, *fds = NULL;

	cache_params_from(d->cfg, &cp);
	TAILQ_INIT(&d->gens);
	TAILQ_INIT(&d->slots);
	TAILQ_INIT(&d->calls);
	d->gen = gen_new(d->cfg);
	if (d->gen == NULL)
		return -ENOMEM;
	TAILQ_INSERT_TAIL(&d->gens, d->gen, link);
	d->base = event_base_new();
	if (d->base == NULL)
		return -ENOMEM;
	r = metrics_new(&d->metrics, metrics_bound(d->cfg));
	if (r < 0)
		return r;
	r = fetch_new(&d->fetch, d->base);
	if (r < 0) {
		log_error("cannot set up libcurl", "error=\"%s\"", strerror(-r));
		return r;
	}
	d->sources = calloc(d->cfg->n_identities + 1, sizeof(*d->sources));
	d->cur_slots = calloc(d->cfg->n_identities + 1, sizeof(*d->cur_slots));
	d->gc_timer = evtimer_new(d->base, on_gc_timer, d);
	if (d->sources == NULL || d->cur_slots == NULL || d->gc_timer == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < d->cfg->n_identities; i++) {
		r = slot_new(d, d->gen, i, &d->cur_slots[i]);
		if (r < 0)
			return r;
		d->sources[i] = d->cur_slots[i]->src;
	}
	d->cache_timer = evtimer_new(d->base, on_cache_timer, d);
	if (d->cache_timer == NULL)
		return -ENOMEM;
	r = cache_new(&d->cache, &cp, &daemon_cache_ops, d);
	if (r < 0)
		return r;
	r = clock_check_setup(d);
	if (r < 0)
		return r;
	r = api_new(&d->api, d->cache, d->cfg, d->sources);
	if (r < 0)
		return r;
	r = compat_new(&d->compat, d->base, d->cache, d->cfg, d->sources);
	if (r < 0)
		return r;
	api_set_compat(d->api, d->compat);
	api_set_metrics(d->api, d->metrics, daemon_collect, d);
	compat_set_metrics(d->compat, d->metrics);
	/* the [proxy] and [route] listeners */
	r = proxy_new(&d->proxy, d->base, d->cache, d->cfg, d->sources);
	if (r < 0)
		return r;
	proxy_set_metrics(d->proxy, d->metrics);
	http_limits_from_config(&limits, d->cfg);
	r = http_server_new(&d->http, d->base, &limits, api_handle, d->api);
	if (r < 0)
		return r;
	/* socket activation: systemd owns the socket (mode, group, unlinking) */
	n = notify_listen_fds(&fds);
	if (n < 0 || n > 1) {
		log_error("cannot use the sockets passed by the service manager",
			  "count=%d error=\"%s\"", n, n < 0 ? strerror(-n) : "expected one");
		free(fds);
		return n < 0 ? n : -EINVAL;
	}
	if (n == 1) {
		fd = fds[0];
		free(fds);
		log_info("using the socket passed by the service manager", "fd=%d", fd);
	} else {
		fd = listen_unix(d->cfg->socket, d->cfg->socket_mode, d->cfg->socket_group);
		if (fd < 0)
			return fd;
		d->unlink_path = strdup(d->cfg->socket);
	}
	r = http_server_add_listener(d->http, fd);
	if (r < 0)
		return r;
	r = metrics_listen(d, &limits);
	if (r < 0)
		return r;
	d->sig_term = evsignal_new(d->base, SIGTERM, on_stop_signal, d);
	d->sig_int = evsignal_new(d->base, SIGINT, on_stop_signal, d);
	d->sig_hup = evsignal_new(d->base, SIGHUP, on_hup, d);
	if (d->sig_term == NULL || d->sig_int == NULL || d->sig_hup == NULL ||
	    evsignal_add(d->sig_term, NULL) < 0 || evsignal_add(d->sig_int, NULL) < 0 ||
	    evsignal_add(d->sig_hup, NULL) < 0)
		return -ENOMEM;
	log_info("listening", "socket=%s audiences=%zu identities=%zu", d->cfg->socket,
		 d->cfg->n_audiences, d->cfg->n_identities);
	return notify_setup(d);
}

/* Every source, current or retired, and the fetches whose callbacks will never run. */
static void
daemon_free_sources(struct daemon *d)
{
	struct upstream_call *call;
	struct slot *slot;

	while ((call = TAILQ_FIRST(&d->calls)) != NULL) {
		TAILQ_REMOVE(&d->calls, call, link);
		free(call);
	}
	if (d->gen == NULL)
		return;
	while ((slot = TAILQ_FIRST(&d->slots)) != NULL)
		slot_free(d, slot);
	free(d->sources);
	free(d->cur_slots);
	d->sources = NULL;
	d->cur_slots = NULL;
}

static void
daemon_free_configs(struct daemon *d)
{
	struct gen *g;

	if (d->gen == NULL) {
		d->cfg = config_free(d->cfg); /* set-up failed before the first gen */
		return;
	}
	while ((g = TAILQ_FIRST(&d->gens)) != NULL) {
		TAILQ_REMOVE(&d->gens, g, link);
		config_free(g->cfg);
		free(g);
	}
	d->gen = NULL;
	d->cfg = NULL;
}

static void
daemon_teardown(struct daemon *d)
{
	if (d->clock_timer != NULL)
		event_free(d->clock_timer);
	if (d->watchdog_timer != NULL)
		event_free(d->watchdog_timer);
	if (d->ready_timer != NULL)
		event_free(d->ready_timer);
	if (d->drain_timer != NULL)
		event_free(d->drain_timer);
	if (d->sig_hup != NULL)
		event_free(d->sig_hup);
	if (d->sig_int != NULL)
		event_free(d->sig_int);
	if (d->sig_term != NULL)
		event_free(d->sig_term);
	d->http = http_server_free(d->http);
	d->metrics_http = http_server_free(d->metrics_http);
	if (d->api != NULL)
		api_set_compat(d->api, NULL);
	d->compat = compat_free(d->compat);
	d->proxy = proxy_free(d->proxy);
	if (d->unlink_path != NULL) {
		unlink(d->unlink_path);
		free(d->unlink_path);
	}
	/* no upstream callback may run after this: transfers are aborted first */
	daemon_free_sources(d);		 /* orphans their requests in flight... */
	d->fetch = fetch_free(d->fetch); /* ...which fetch_free then cancels */
	d->api = api_free(d->api);
	d->cache = cache_free(d->cache);
	if (d->cache_timer != NULL)
		event_free(d->cache_timer);
	if (d->gc_timer != NULL)
		event_free(d->gc_timer);
	if (d->base != NULL)
		event_base_free(d->base);
	d->metrics = metrics_free(d->metrics);
	daemon_free_configs(d);
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"dev", no_argument, NULL, 'D'},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},
	    {NULL, 0, NULL, 0},
	};
	const char *path = BEARERD_DEFAULT_CONFIG;
	bool check = false, dev = false, verbose = false;
	struct daemon d = {0};
	int c, r;

	while ((c = getopt_long(argc, argv, "c:nvVh", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			path = optarg;
			break;
		case 'n':
			check = true;
			break;
		case 'D':
			dev = true;
			break;
		case 'v':
			verbose = true;
			break;
		case 'V':
			printf("bearerd %s\n", BEARERD_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	r = dev ? config_load_dev(&d.cfg, dev_socket_path(), stderr)
		: config_load(&d.cfg, path, stderr);
	d.path = dev ? NULL : path;
	d.verbose = verbose;
	if (r < 0)
		return 1;
	if (check) {
		printf("%s: ok\n", dev ? "<dev>" : path);
		config_free(d.cfg);
		return 0;
	}
	log_init(verbose ? LOG_LEVEL_DEBUG : (enum log_level)d.cfg->log_level);
	/* tokens live in this process's memory: no core dumps, no ptrace by peers */
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
		log_warn("cannot disable core dumps", "");
	raise_fd_limit(d.cfg);
	signal(SIGPIPE, SIG_IGN);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		fatalx("cannot initialise libcurl", "");
	if (dev)
		log_warnx("running on the embedded development configuration", "socket=%s",
			  d.cfg->socket);
	r = daemon_setup(&d);
	if (r == 0) {
		event_base_dispatch(d.base);
		log_info("stopped", "");
	}
	daemon_teardown(&d);
	curl_global_cleanup();
	return r == 0 ? 0 : 1;
}
