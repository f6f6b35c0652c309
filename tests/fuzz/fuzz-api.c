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
 *
 * An input that starts with byte 0x01 (0x02) goes, without that byte, to the
 * IMDS-compatible (App Service) TCP listener of daemon/compat.c instead.
 * There a token may answer the first request only if that request passed
 * every guard: a Host that is an IP literal or localhost, no Origin, no
 * Sec-Fetch-Site but "none", no forwarding proxy's fields, Metadata: true
 * (IMDS; for Cloud Shell's POST also a form Content-Type) or the App Service
 * secret (FUZZ_SECRET) in X-IDENTITY-HEADER or, for 2017-09-01, secret.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "api.h"
#include "cache.h"
#include "clock.h"
#include "compat.h"
#include "config.h"
#include "http.h"
#include "http_parse.h"
#include "log.h"
#include "metrics.h"
#include "source.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_SOURCES 4
#define OUT_MAX	    (1u << 20) /* replies kept for checking; more is discarded */
#define DEADLINE_MS 5000       /* a connection still open after this is a hang */
#define FUZZ_SECRET "fuzz-identity-header"
#define TO_IMDS	    0x01 /* first input byte: the IMDS-compatible listener */
#define TO_APPSVC   0x02 /* first input byte: the App Service listener */

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
				  "resource = api://other\n"
				  "[compat]\n"
				  "identity = dev\n"
				  "imds_listen = 127.0.0.1:0\n"
				  "appservice_listen = 127.0.0.1:0\n"
				  "appservice_secret_file = @SECRET@\n";

static struct {
	struct event_base *base;
	struct config *cfg;
	struct source *sources[MAX_SOURCES];
	struct cache *cache;
	struct metrics *metrics;
	struct api *api;
	struct http_server *server;
	struct compat *compat;
	unsigned imds_port, appsvc_port;
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

/* The config with the App Service secret in a private file of ours. */
static char *
config_with_secret(void)
{
	static char dir[] = "/tmp/bearerd-fuzz-api.XXXXXX";
	const char *at = strstr(config_text, "@SECRET@");
	char *path = NULL, *text = NULL;
	int fd;

	check(mkdtemp(dir) != NULL, "mkdtemp");
	check(asprintf(&path, "%s/identity-header", dir) > 0, "asprintf");
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	check(fd >= 0 &&
		  write(fd, FUZZ_SECRET "\n", sizeof(FUZZ_SECRET)) == (ssize_t)sizeof(FUZZ_SECRET),
	      "the secret file");
	close(fd);
	check(asprintf(&text, "%.*s%s%s", (int)(at - config_text), config_text, path,
		       at + strlen("@SECRET@")) > 0,
	      "asprintf");
	free(path);
	return text;
}

static void
setup(void)
{
	struct cache_params cp;
	struct http_limits limits;
	char *text;

	log_init(LOG_LEVEL_ERROR);
	g.rnd = 1;
	g.base = event_base_new();
	check(g.base != NULL, "event_base_new");
	text = config_with_secret();
	check(config_load_string(&g.cfg, "fuzz-api.conf", text, stderr) == 0, "config");
	free(text);
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
	check(compat_new(&g.compat, g.base, g.cache, g.cfg, g.sources) == 0, "compat_new");
	api_set_compat(g.api, g.compat);
	g.imds_port = compat_port(g.compat, true);
	g.appsvc_port = compat_port(g.compat, false);
	check(g.imds_port != 0 && g.appsvc_port != 0, "compat ports");
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
	static const int known[] = {200, 202, 400, 401, 403, 404, 405, 408, 411, 413,
				    414, 417, 429, 431, 500, 501, 503, 504, 505};

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

static bool
field_is(const struct http_header *f, const char *name)
{
	return f->name_len == strlen(name) && strncasecmp(f->name, name, f->name_len) == 0;
}

/* Host as the guard must read it, written again here: an IP literal or localhost[:port]. */
static bool
host_ok(const char *v, size_t len)
{
	char host[64];
	const char *end = v + len, *hs = v, *he, *port = NULL;
	unsigned char a[16];
	unsigned long p = 0;

	if (len > 0 && v[0] == '[') {
		hs = v + 1;
		he = memchr(hs, ']', len - 1);
		if (he == NULL || (he + 1 < end && he[1] != ':'))
			return false;
		port = he + 1 < end ? he + 2 : NULL;
	} else {
		he = memchr(v, ':', len);
		port = he != NULL ? he + 1 : NULL;
		if (he == NULL)
			he = end;
	}
	if (port != NULL) {
		if (port == end || end - port > 5)
			return false;
		for (const char *d = port; d < end; d++) {
			if (*d < '0' || *d > '9')
				return false;
			p = p * 10 + (unsigned long)(*d - '0');
		}
		if (p == 0 || p > 65535)
			return false;
	}
	if (he == hs || (size_t)(he - hs) >= sizeof(host))
		return false;
	memcpy(host, hs, (size_t)(he - hs));
	host[he - hs] = '\0';
	if (v[0] == '[')
		return inet_pton(AF_INET6, host, a) == 1;
	return strcasecmp(host, "localhost") == 0 || inet_pton(AF_INET, host, a) == 1;
}

/* Content-Type: application/x-www-form-urlencoded[;...], as a Cloud Shell POST needs. */
static bool
form_ok(const struct http_header *f)
{
	static const char t[] = "application/x-www-form-urlencoded";
	size_t n = sizeof(t) - 1;

	return f->value_len >= n && strncasecmp(f->value, t, n) == 0 &&
	       (f->value_len == n || f->value[n] == ';' || f->value[n] == ' ' ||
		f->value[n] == '\t');
}

/*
 * True when the first request in p passes every guard a token needs on listener
 * `to`: on the App Service listener the secret in X-IDENTITY-HEADER (2019-08-01) or
 * secret (2017-09-01); on the IMDS listener Metadata: true, and for Cloud Shell's
 * POST a form Content-Type.
 */
static bool
first_request_may_have_a_token(const char *p, size_t len, int to)
{
	struct http_head h;
	bool host = false, auth = false, seen_auth = false, secret = false, seen_secret = false;
	bool post, form = false, seen_type = false;

	if (http_parse_request_head(p, len, &h) <= 0)
		return false;
	post = h.method_len == 4 && memcmp(h.method, "POST", 4) == 0;
	/* the listeners read the first Metadata, X-IDENTITY-HEADER, secret and Content-Type
	 * (Host is never repeated) */
	for (int i = 0; i < h.nheaders; i++) {
		const struct http_header *f = &h.headers[i];

		if (field_is(f, "host"))
			host = host_ok(f->value, f->value_len);
		else if (field_is(f, "content-type") && !seen_type) {
			form = form_ok(f);
			seen_type = true;
		} else if (to == TO_APPSVC && field_is(f, "secret")) {
			if (!seen_secret)
				secret = f->value_len == strlen(FUZZ_SECRET) &&
					 memcmp(f->value, FUZZ_SECRET, f->value_len) == 0;
			seen_secret = true;
		} else if (seen_auth &&
			   (field_is(f, "metadata") || field_is(f, "x-identity-header")))
			continue;
		else if (field_is(f, "origin") || field_is(f, "x-forwarded-for") ||
			 field_is(f, "forwarded") || field_is(f, "via") || field_is(f, "x-real-ip"))
			return false;
		else if (field_is(f, "sec-fetch-site") &&
			 !(f->value_len == 4 && strncasecmp(f->value, "none", 4) == 0))
			return false;
		else if (to == TO_IMDS && field_is(f, "metadata")) {
			auth = f->value_len == 4 && memcmp(f->value, "true", 4) == 0;
			seen_auth = true;
		} else if (to == TO_APPSVC && field_is(f, "x-identity-header")) {
			auth = f->value_len == strlen(FUZZ_SECRET) &&
			       memcmp(f->value, FUZZ_SECRET, f->value_len) == 0;
			seen_auth = true;
		}
	}
	if (to == TO_IMDS && post && !form)
		return false;
	return host && (auth || (to == TO_APPSVC && secret));
}

/* A connected, non-blocking client socket to the API socket or a compat listener. */
static int
client_socket(int to)
{
	struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int fd;

	if (to != TO_IMDS && to != TO_APPSVC) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		check(fd >= 0, "client socket");
		check(connect(fd, (struct sockaddr *)&g.addr, g.addr_len) == 0, "connect");
		return fd;
	}
	in.sin_port = htons((uint16_t)(to == TO_IMDS ? g.imds_port : g.appsvc_port));
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	check(fd >= 0, "client socket");
	check(connect(fd, (struct sockaddr *)&in, sizeof(in)) == 0, "connect over TCP");
	check(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0, "O_NONBLOCK");
	return fd;
}

/* Open connections of the listener the input went to. */
static unsigned
connections_of(int to)
{
	if (to == TO_IMDS || to == TO_APPSVC)
		return compat_connections(g.compat, to == TO_IMDS);
	return http_server_connections(g.server);
}

/* The first reply carries a token: then the first request must have passed the guards. */
static void
check_first_token(const char *out, size_t out_len, const uint8_t *in, size_t in_len, int to)
{
	const char *end = find(out, out_len, "\r\n\r\n");

	if (end == NULL || out_len < 12 || memcmp(out + 9, "200", 3) != 0)
		return;
	if (find(end, out_len - (size_t)(end - out), "\"access_token\":\"") == NULL)
		return;
	check(first_request_may_have_a_token((const char *)in, in_len, to),
	      "a compat token for a request that should have been refused");
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct client c;
	struct event *ev;
	int64_t deadline;
	int writing, to = size > 0 && (data[0] == TO_IMDS || data[0] == TO_APPSVC) ? data[0] : 0;

	if (g.base == NULL)
		setup();
	if (to != 0) {
		data++;
		size--;
	}
	c = (struct client){.in = data, .in_len = size};
	c.out = malloc(OUT_MAX);
	check(c.out != NULL, "malloc");
	c.fd = client_socket(to);
	ev = event_new(g.base, c.fd, EV_READ | EV_WRITE | EV_PERSIST, on_client, &c);
	check(ev != NULL && event_add(ev, NULL) == 0, "client event");
	client_io(&c);
	deadline = clock_mono_ms() + DEADLINE_MS;
	writing = 1;
	while (!c.eof) {
		check(clock_mono_ms() < deadline, "the connection ends after the client's EOF");
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
	if (to != 0) {
		/* a reset leaves no TIME_WAIT behind: thousands of inputs reuse the ports */
		struct linger lg = {.l_onoff = 1, .l_linger = 0};

		(void)setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	close(c.fd);
	/* let the server side notice and free its connection before the next input */
	while (connections_of(to) > 0 && clock_mono_ms() < deadline)
		event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	check(connections_of(to) == 0, "the server freed the connection");
	/* replies to a reset connection may be cut short: check only a clean end */
	if (c.dropped == 0 && c.sent == c.in_len)
		check_replies(c.out, c.out_len, memmem(data, size, "HEAD", 4) != NULL);
	if (to != 0)
		check_first_token(c.out, c.out_len, data, size, to);
	free(c.out);
	return 0;
}
