/*
 * bearerd: start-up, the event loop, signals and shutdown.  Setup happens in
 * the order config, loop, fetch, sources, cache, api, compat, socket;
 * teardown in reverse.  Requests enter in http.c, are routed in api.c (or
 * compat.c for the Azure-compatible listeners), tokens live in
 * cache.c, and upstream calls leave through source_*.c and fetch.c.
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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
#include "compat.h"
#include "config.h"
#include "fetch.h"
#include "http.h"
#include "log.h"
#include "notify.h"
#include "source.h"

#define SHUTDOWN_GRACE_S 1  /* beyond wait_timeout, for replies to drain */
#define READY_POLL_MS	 50 /* how often start-up checks the prefetch audiences */
#define READY_MAX_WAIT_S 30 /* READY=1 anyway after this; /readyz keeps telling the truth */

struct daemon {
	struct event_base *base;
	struct config *cfg;
	struct fetch *fetch;
	struct source **sources;
	struct cache *cache;
	struct api *api;
	struct compat *compat;
	struct http_server *http;
	struct event *cache_timer;
	struct event *sig_term, *sig_int, *sig_hup;
	struct event *drain_timer;
	struct event *ready_timer, *watchdog_timer;
	int64_t ready_deadline_ms;
	char *unlink_path;
	int64_t stop_deadline_ms;
};

static int64_t
mono_ms(void *ctx)
{
	struct timespec ts;

	(void)ctx;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t
wall_s(void *ctx)
{
	(void)ctx;
	return (int64_t)time(NULL);
}

static uint32_t
random_u32(void *ctx)
{
	(void)ctx;
	return arc4random();
}

static int
daemon_fetch(void *ctx, struct source *src, const char *resource, source_done_fn *done, void *arg)
{
	(void)ctx;
	return source_fetch(src, resource, done, arg);
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
	delay = deadline_ms - mono_ms(NULL);
	if (delay < 0)
		delay = 0;
	tv.tv_sec = delay / 1000;
	tv.tv_usec = (delay % 1000) * 1000;
	evtimer_add(d->cache_timer, &tv);
}

static const struct cache_ops daemon_cache_ops = {
    .now_ms = mono_ms,
    .wall_s = wall_s,
    .random = random_u32,
    .fetch = daemon_fetch,
    .arm = daemon_arm,
    .user_free = api_user_free,
};

static void
on_cache_timer(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;

	(void)fd;
	(void)what;
	cache_run(d->cache);
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
	unsigned pending = http_server_pending(d->http) + compat_pending(d->compat);

	(void)fd;
	(void)what;
	if (pending == 0 || mono_ms(NULL) >= d->stop_deadline_ms) {
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
	compat_stop_accepting(d->compat);
	if (d->unlink_path != NULL)
		unlink(d->unlink_path);
	d->stop_deadline_ms = mono_ms(NULL) + (d->cfg->wait_timeout + SHUTDOWN_GRACE_S) * 1000;
	d->drain_timer = event_new(d->base, -1, EV_PERSIST, on_drain_tick, d);
	if (d->drain_timer == NULL || event_add(d->drain_timer, &tick) < 0)
		event_base_loopexit(d->base, NULL);
}

static void
on_hup(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	notify_reloading();
	log_warnx("SIGHUP ignored: configuration reload is not implemented yet", "");
	notify_ready();
}

/* Start-up: READY=1 once every prefetch audience holds a token, or after READY_MAX_WAIT_S. */
static void
on_ready_tick(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	bool ready = api_ready(d->api, NULL);

	(void)fd;
	(void)what;
	if (!ready && mono_ms(NULL) < d->ready_deadline_ms)
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

	d->ready_deadline_ms = mono_ms(NULL) + READY_MAX_WAIT_S * 1000;
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

static int
daemon_setup(struct daemon *d)
{
	struct cache_params cp = {
	    .min_validity = d->cfg->min_validity,
	    .refresh_margin = d->cfg->refresh_margin,
	    .idle_timeout = d->cfg->idle_timeout,
	    .wait_timeout_ms = d->cfg->wait_timeout * 1000,
	    .max_entries = d->cfg->max_entries,
	};
	struct http_limits limits;
	int r, fd, n, *fds = NULL;

	d->base = event_base_new();
	if (d->base == NULL)
		return -ENOMEM;
	r = fetch_new(&d->fetch, d->base);
	if (r < 0) {
		log_error("cannot set up libcurl", "error=\"%s\"", strerror(-r));
		return r;
	}
	d->sources = calloc(d->cfg->n_identities + 1, sizeof(*d->sources));
	if (d->sources == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < d->cfg->n_identities; i++) {
		r = source_new(&d->sources[i], &d->cfg->identities[i], d->base, d->fetch);
		if (r < 0) {
			log_error("cannot set up the identity", "identity=%s error=\"%s\"",
				  d->cfg->identities[i].name, strerror(-r));
			return r;
		}
	}
	d->cache_timer = evtimer_new(d->base, on_cache_timer, d);
	if (d->cache_timer == NULL)
		return -ENOMEM;
	r = cache_new(&d->cache, &cp, &daemon_cache_ops, d);
	if (r < 0)
		return r;
	r = api_new(&d->api, d->cache, d->cfg, d->sources);
	if (r < 0)
		return r;
	r = compat_new(&d->compat, d->base, d->cache, d->cfg, d->sources);
	if (r < 0)
		return r;
	api_set_compat(d->api, d->compat);
	http_limits_default(&limits);
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

static void
daemon_teardown(struct daemon *d)
{
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
	if (d->api != NULL)
		api_set_compat(d->api, NULL);
	d->compat = compat_free(d->compat);
	if (d->unlink_path != NULL) {
		unlink(d->unlink_path);
		free(d->unlink_path);
	}
	/* no upstream callback may run after this: transfers are aborted first */
	d->fetch = fetch_free(d->fetch);
	for (size_t i = 0; d->sources != NULL && i < d->cfg->n_identities; i++)
		source_free(d->sources[i]);
	free(d->sources);
	d->api = api_free(d->api);
	d->cache = cache_free(d->cache);
	if (d->cache_timer != NULL)
		event_free(d->cache_timer);
	if (d->base != NULL)
		event_base_free(d->base);
	d->cfg = config_free(d->cfg);
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
