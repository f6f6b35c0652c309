/*
 * libFuzzer target for the local API's request path.  The input is what a
 * client writes on the Unix socket: it goes through the real server layer
 * (daemon/http.c: framing, pipelining, chunked bodies, bounds) into
 * api_handle (daemon/api.c: path splitting, percent-decoding of
 * /v1/token/{audience} and /v1/refresh/{audience}, ?resource=, &identity=,
 * &min_validity=, the uid checks, /v1/status, /metrics) and back.  api.c
 * has no pure entry point, and a request object only comes from the server
 * layer, so this drives the whole loop: one daemon per process (a cache fed
 * by dev sources, nothing leaves the process), one connection per input.
 *
 * Beside "no crash, no leak, no sanitizer report", every answer must be
 * well-formed HTTP/1.1 with a Content-Length that matches its body, no
 * status outside what the API sends, no token in /v1/status, never a token
 * for the audience restricted to another uid, and the connection must end
 * once the client has sent everything and shut down its side.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "api.h"
#include "cache.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "source.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_SOURCES 4
#define OUT_MAX	    (1u << 20) /* replies kept for checking; more is discarded */
#define DEADLINE_MS 5000       /* a connection still open after this is a hang */

/*
 * "locked" allows only a uid that is not ours: its token must never come back.
 * It belongs to "other" (another dev principal, without dynamic resources):
 * beside "dev"'s dynamic resources bearerd -n would refuse it.
 */
static const char config_text[] = "[bearerd]\n"
				  "socket = /nonexistent/bearerd-fuzz.sock\n"
				  "log_level = error\n"
				  "max_entries = 32\n"
				  "wait_timeout = 1\n"
				  "[identity \"dev\"]\n"
				  "source = dev\n"
				  "dynamic_resources = yes\n"
				  "[identity \"other\"]\n"
				  "source = dev\n"
				  "[audience \"api\"]\n"
				  "identity = dev\n"
				  "resource = api://fuzz\n"
				  "prefetch = yes\n"
				  "[audience \"locked\"]\n"
				  "identity = other\n"
				  "resource = api://locked\n"
				  "allow_uids = 4242\n"
				  "[audience \"other.api\"]\n"
				  "identity = other\n"
				  "resource = api://other\n";

static struct {
	struct event_base *base;
	struct config *cfg;
	struct source *sources[MAX_SOURCES];
	struct cache *cache;
	struct metrics *metrics;
	struct api *api;
	struct http_server *server;
	struct event *cache_timer;
	struct sockaddr_un addr;
	socklen_t addr_len;
	uint32_t rnd;
} g;

static void
check(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "fuzz-api: invariant broken: %s\n", what);
		abort();
	}
}

static int64_t
clock_ms(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t
mono_ms(void *ctx)
{
	(void)ctx;
	return clock_ms(CLOCK_MONOTONIC);
}

static int64_t
boot_ms(void *ctx)
{
	(void)ctx;
	return clock_ms(CLOCK_BOOTTIME);
}

static int64_t
wall_ms(void *ctx)
{
	(void)ctx;
	return clock_ms(CLOCK_REALTIME);
}

/* Deterministic: the same input takes the same path. */
static uint32_t
rnd(void *ctx)
{
	(void)ctx;
	g.rnd = g.rnd * 1103515245u + 12345u;
	return g.rnd;
}

static int
fetch(void *ctx, struct source *src, const char *resource, enum source_priority prio,
      source_done_fn *done, void *arg)
{
	(void)ctx;
	return source_fetch_prio(src, resource, prio, done, arg);
}

static void
arm(void *ctx, int64_t deadline_ms)
{
	int64_t delay;
	struct timeval tv;

	(void)ctx;
	if (deadline_ms == INT64_MAX) {
		evtimer_del(g.cache_timer);
		return;
	}
	delay = deadline_ms - boot_ms(NULL);
	if (delay < 0)
		delay = 0;
	tv.tv_sec = delay / 1000;
	tv.tv_usec = (delay % 1000) * 1000;
	evtimer_add(g.cache_timer, &tv);
}

static const struct cache_ops ops = {
    .boot_ms = boot_ms,
    .wall_ms = wall_ms,
    .random = rnd,
    .fetch = fetch,
    .arm = arm,
    .user_free = api_user_free,
};

static void
on_cache_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	cache_run(g.cache);
}

/* An abstract Unix socket, private to this process. */
static int
listen_socket(void)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int n;

	check(fd >= 0, "socket");
	g.addr.sun_family = AF_UNIX;
	n = snprintf(g.addr.sun_path + 1, sizeof(g.addr.sun_path) - 1, "bearerd-fuzz-api-%ld",
		     (long)getpid());
	g.addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
	check(bind(fd, (struct sockaddr *)&g.addr, g.addr_len) == 0, "bind");
	check(listen(fd, 16) == 0, "listen");
	return fd;
}

static void
setup(void)
{
	struct cache_params cp;
	struct http_limits limits;

	log_init(LOG_LEVEL_ERROR);
	g.rnd = 1;
	g.base = event_base_new();
	check(g.base != NULL, "event_base_new");
	check(config_load_string(&g.cfg, "fuzz-api.conf", config_text, stderr) == 0, "config");
	check(g.cfg->n_identities <= MAX_SOURCES, "identities");
	for (size_t i = 0; i < g.cfg->n_identities; i++)
		check(source_new(&g.sources[i], &g.cfg->identities[i], g.base, NULL) == 0,
		      "source_new");
	cp = (struct cache_params){
	    .min_validity = g.cfg->min_validity,
	    .refresh_margin = g.cfg->refresh_margin,
	    .idle_timeout = g.cfg->idle_timeout,
	    .wait_timeout_ms = g.cfg->wait_timeout * 1000,
	    .max_entries = g.cfg->max_entries,
	};
	g.cache_timer = evtimer_new(g.base, on_cache_timer, NULL);
	check(g.cache_timer != NULL, "evtimer_new");
	check(cache_new(&g.cache, &cp, &ops, NULL) == 0, "cache_new");
	check(api_new(&g.api, g.cache, g.cfg, g.sources) == 0, "api_new");
	check(metrics_new(&g.metrics, 0) == 0, "metrics_new");
	api_set_metrics(g.api, g.metrics, NULL, NULL);
	http_limits_default(&limits);
	limits.max_head = 4096; /* reached by inputs of ordinary size */
	limits.max_body = 1024;
	check(http_server_new(&g.server, g.base, &limits, api_handle, g.api) == 0, "server");
	check(http_server_add_listener(g.server, listen_socket()) == 0, "listener");
}

struct client {
	int fd;
	const uint8_t *in;
	size_t in_len, sent;
	char *out;
	size_t out_len;
	size_t dropped; /* bytes beyond OUT_MAX */
	int eof;
};

static void
client_io(struct client *c)
{
	char buf[16384];
	ssize_t n;

	while (c->sent < c->in_len) {
		n = send(c->fd, c->in + c->sent, c->in_len - c->sent, MSG_NOSIGNAL);
		if (n <= 0)
			break;
		c->sent += (size_t)n;
	}
	if (c->sent == c->in_len)
		shutdown(c->fd, SHUT_WR);
	for (;;) {
		n = recv(c->fd, buf, sizeof(buf), 0);
		if (n == 0 ||
		    (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
			c->eof = 1; /* closed, or reset after input the server refused to read */
			return;
		}
		if (n < 0)
			return;
		if (c->out_len + (size_t)n > OUT_MAX) {
			c->dropped += (size_t)n;
			continue;
		}
		memcpy(c->out + c->out_len, buf, (size_t)n);
		c->out_len += (size_t)n;
	}
}

static void
on_client(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	client_io(arg);
}

static const char *
find(const char *hay, size_t len, const char *needle)
{
	return memmem(hay, len, needle, strlen(needle));
}

static int
status_known(int s)
{
	static const int known[] = {200, 202, 400, 403, 404, 405, 408, 411,
				    413, 414, 417, 431, 501, 503, 504, 505};

	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (s == known[i])
			return 1;
	return 0;
}

/*
 * Every reply: "HTTP/1.1 NNN ...", a head, Content-Length, exactly that much
 * body (100 Continue has neither).  With HEAD requests in the input bodies
 * are absent, so only the first status line is checked.
 */
static void
check_replies(const char *p, size_t len, int has_head)
{
	while (len > 0) {
		const char *end = find(p, len, "\r\n\r\n"), *cl;
		size_t head, body;
		char *e;
		int status;

		check(end != NULL, "a reply head ends with an empty line");
		head = (size_t)(end - p) + 4;
		check(len >= 13 && memcmp(p, "HTTP/1.1 ", 9) == 0, "status line");
		status = (int)strtol(p + 9, &e, 10);
		check(e == p + 12 && *e == ' ', "a three-digit status");
		check(status == 100 || status_known(status), "a status the API sends");
		if (has_head)
			return;
		body = 0;
		if (status != 100) {
			cl = find(p, head, "\r\nContent-Length: ");
			check(cl != NULL, "Content-Length");
			body = (size_t)strtoul(cl + 18, &e, 10);
			check(*e == '\r', "Content-Length value");
			check(len - head >= body, "the body is as long as Content-Length says");
		}
		if (body > 0) {
			const char *b = p + head;

			/* JSON escapes quotes in values: these members cannot be forged by a
			 * resource */
			check(!(find(b, body, "\"access_token\":\"") &&
				find(b, body, "\"audience\":\"locked\"")),
			      "a token of the audience restricted to another uid");
			if (b[0] == '[')
				check(find(b, body, "\"access_token\":\"") == NULL,
				      "a token in /v1/status");
		}
		p += head + body;
		len -= head + body;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct client c = {.in = data, .in_len = size};
	struct event *ev;
	int64_t deadline;
	int writing;

	if (g.base == NULL)
		setup();
	c.out = malloc(OUT_MAX);
	check(c.out != NULL, "malloc");
	c.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	check(c.fd >= 0, "client socket");
	check(connect(c.fd, (struct sockaddr *)&g.addr, g.addr_len) == 0, "connect");
	ev = event_new(g.base, c.fd, EV_READ | EV_WRITE | EV_PERSIST, on_client, &c);
	check(ev != NULL && event_add(ev, NULL) == 0, "client event");
	client_io(&c);
	deadline = mono_ms(NULL) + DEADLINE_MS;
	writing = 1;
	while (!c.eof) {
		check(mono_ms(NULL) < deadline, "the connection ends after the client's EOF");
		if (writing && c.sent == c.in_len) {
			/* nothing more to write: wake for replies only */
			writing = 0;
			event_del(ev);
			event_assign(ev, g.base, c.fd, EV_READ | EV_PERSIST, on_client, &c);
			event_add(ev, NULL);
		}
		event_base_loop(g.base, EVLOOP_ONCE);
	}
	event_free(ev);
	close(c.fd);
	/* let the server side notice and free its connection before the next input */
	while (http_server_connections(g.server) > 0 && mono_ms(NULL) < deadline)
		event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	check(http_server_connections(g.server) == 0, "the server freed the connection");
	/* replies to a reset connection may be cut short: check only a clean end */
	if (c.dropped == 0 && c.sent == c.in_len)
		check_replies(c.out, c.out_len, memmem(data, size, "HEAD", 4) != NULL);
	free(c.out);
	return 0;
}
