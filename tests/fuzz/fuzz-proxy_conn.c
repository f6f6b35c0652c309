/*
 * libFuzzer target for the proxy's connection state machine (daemon/proxy*.c),
 * not only its parsers: arbitrary bytes from a client, and an arbitrary answer
 * from the upstream, through the real proxy on a real event loop over loopback
 * TCP.  Two proxies run in one process, each with its own cache fed by a dev
 * source: A (connect = intercept, with a base-URL listener) and B (connect =
 * tunnel to the harness's upstream).  The first input byte picks the path:
 *
 *   0  forward proxy A: the bytes as they are
 *   1  base-URL listener of A: the bytes as they are
 *   2  CONNECT to a routed host on A and the bytes in the same write (the
 *      handshake runs on them: issue 11, finding 1)
 *   3  CONNECT on A, a real TLS handshake with the minted leaf, then the bytes
 *      as plaintext requests inside it
 *   4  CONNECT on B, tunnelled to the upstream, and the bytes in the same write
 *
 * The second byte is the length of the upstream's answer, taken from the
 * next bytes (0: a plain 200).  The harness's upstream answers every
 * connection with it on its first bytes, then shuts its side.
 *
 * Beside "no crash, no leak, no sanitizer report": a token the proxy stamped
 * (a Bearer value the upstream got that the client never sent) is never seen
 * by the client, never stamped onto TRACE, onto a request with Origin or with
 * Sec-Fetch-Site other than none, onto the passthrough route, nor inside a
 * tunnel; and every connection ends after the client is done, on both sides.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "cache.h"
#include "clock.h"
#include "config.h"
#include "log.h"
#include "proxy.h"
#include "source.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_SOURCES 2
#define KEEP_MAX    (256u * 1024) /* bytes kept per side for the checks; more is discarded */
#define DEADLINE_MS 10000	  /* a connection still open after this is a hang */
#define QUIET_MS    100		  /* TLS client: silence after which it says close_notify */
#define MAX_UPS	    16

static const char default_reply[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

struct world {
	struct config *cfg;
	struct source *sources[MAX_SOURCES];
	struct cache *cache;
	struct event *cache_timer;
	struct proxy *proxy;
};

struct buf {
	char *p;
	size_t len, dropped;
};

/* One connection the upstream accepted. */
struct upc {
	int fd;
	struct event *ev;
	struct buf got;
	int replied;
};

static struct {
	struct event_base *base;
	struct world a, b;
	int up_fd;
	struct event *up_ev;
	unsigned up_port, a_port, base_port, b_port;
	char ca_dir[64];
	uint32_t rnd;
	SSL_CTX *tls;
	/* this input */
	const uint8_t *reply;
	size_t reply_len;
	struct upc *ups[MAX_UPS];
	size_t n_ups, up_open;
} g;

static void
check(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "fuzz-proxy_conn: invariant broken: %s\n", what);
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
	struct world *w = ctx;
	int64_t delay;
	struct timeval tv;

	if (deadline_ms == INT64_MAX) {
		evtimer_del(w->cache_timer);
		return;
	}
	delay = deadline_ms - boot_ms(NULL);
	if (delay < 0)
		delay = 0;
	tv.tv_sec = delay / 1000;
	tv.tv_usec = (delay % 1000) * 1000;
	evtimer_add(w->cache_timer, &tv);
}

static const struct cache_ops ops = {
    .boot_ms = boot_ms,
    .wall_ms = wall_ms,
    .random = rnd,
    .fetch = fetch,
    .arm = arm,
};

static void
on_cache_timer(evutil_socket_t fd, short what, void *arg)
{
	struct world *w = arg;

	(void)fd;
	(void)what;
	cache_run(w->cache);
}

static void
keep(struct buf *b, const char *p, size_t n)
{
	if (b->p == NULL)
		b->p = malloc(KEEP_MAX);
	check(b->p != NULL, "malloc");
	if (b->len + n > KEEP_MAX) {
		b->dropped += n;
		return;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

/* The upstream */

static void
upc_close(struct upc *u)
{
	event_free(u->ev);
	close(u->fd);
	u->fd = -1;
	g.up_open--;
}

static void
on_upc(evutil_socket_t fd, short what, void *arg)
{
	struct upc *u = arg;
	char b[16384];
	ssize_t n;

	(void)what;
	for (;;) {
		n = recv(fd, b, sizeof(b), 0);
		if (n > 0) {
			keep(&u->got, b, (size_t)n);
			if (!u->replied) {
				u->replied = 1;
				(void)send(fd, g.reply, g.reply_len, MSG_NOSIGNAL);
				shutdown(fd, SHUT_WR);
			}
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return;
		upc_close(u); /* EOF, or reset */
		return;
	}
}

static void
on_up_accept(evutil_socket_t fd, short what, void *arg)
{
	struct upc *u;
	int c;

	(void)what;
	(void)arg;
	while ((c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
		u = calloc(1, sizeof(*u));
		check(u != NULL, "calloc");
		check(g.n_ups < MAX_UPS, "more upstream connections than one input can need");
		u->fd = c;
		u->ev = event_new(g.base, c, EV_READ | EV_PERSIST, on_upc, u);
		check(u->ev != NULL && event_add(u->ev, NULL) == 0, "upstream event");
		g.ups[g.n_ups++] = u;
		g.up_open++;
	}
}

static int
tcp_listen(unsigned *port)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	check(fd >= 0, "socket");
	check(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0, "bind");
	check(listen(fd, 64) == 0, "listen");
	check(getsockname(fd, (struct sockaddr *)&sin, &len) == 0, "getsockname");
	*port = ntohs(sin.sin_port);
	return fd;
}

/* A loopback port nobody listens on now, for a proxy listener to bind right after. */
static unsigned
free_port(void)
{
	unsigned port;
	int fd = tcp_listen(&port);

	close(fd);
	return port;
}

/* Setup */

static void
world_free(struct world *w)
{
	w->proxy = proxy_free(w->proxy);
	w->cache = cache_free(w->cache);
	if (w->cache_timer != NULL)
		event_free(w->cache_timer);
	w->cache_timer = NULL;
	for (size_t i = 0; i < MAX_SOURCES; i++)
		w->sources[i] = source_free(w->sources[i]);
	w->cfg = config_free(w->cfg);
}

/* 0, or -1 when a listener could not bind (its port was taken meanwhile). */
static int
world_new(struct world *w, const char *name, const char *text)
{
	struct cache_params cp;

	check(config_load_string(&w->cfg, name, text, stderr) == 0, "config");
	check(w->cfg->n_identities <= MAX_SOURCES, "identities");
	for (size_t i = 0; i < w->cfg->n_identities; i++)
		check(source_new(&w->sources[i], &w->cfg->identities[i], g.base, NULL) == 0,
		      "source_new");
	cp = (struct cache_params){
	    .min_validity = w->cfg->min_validity,
	    .refresh_margin = w->cfg->refresh_margin,
	    .idle_timeout = w->cfg->idle_timeout,
	    .wait_timeout_ms = w->cfg->wait_timeout * 1000,
	    .max_entries = w->cfg->max_entries,
	};
	w->cache_timer = evtimer_new(g.base, on_cache_timer, w);
	check(w->cache_timer != NULL, "evtimer_new");
	check(cache_new(&w->cache, &cp, &ops, w) == 0, "cache_new");
	if (proxy_new(&w->proxy, g.base, w->cache, w->cfg, w->sources) < 0) {
		world_free(w);
		return -1;
	}
	check(w->proxy != NULL, "proxy_new");
	return 0;
}

static const char common[] = "[bearerd]\n"
			     "socket = /nonexistent/bearerd-fuzz.sock\n"
			     "log_level = error\n"
			     "wait_timeout = 1\n"
			     "[identity \"dev\"]\n"
			     "source = dev\n"
			     "[audience \"apim\"]\n"
			     "identity = dev\n"
			     "resource = api://apim\n";

/*
 * Routes: "api" (its upstream path starts /a), "v1" (/v, replacing a
 * caller's Authorization) and "pass" (/p, passthrough: never a token).
 */
static void
routes(char *out, size_t size, int base_listener)
{
	char listen[64] = "";

	if (base_listener)
		snprintf(listen, sizeof(listen), "listen = 127.0.0.1:%u\n", g.base_port);
	snprintf(out, size,
		 "header_timeout = 1\n"
		 "idle_timeout = 1\n"
		 "connect_timeout = 1\n"
		 "max_connections = 64\n"
		 "[route \"api\"]\n"
		 "match = api.example.com\n"
		 "audience = apim\n"
		 "upstream = http://127.0.0.1:%u/a\n"
		 "%s"
		 "[route \"v1\"]\n"
		 "match = api.example.com/v1\n"
		 "audience = apim\n"
		 "overwrite = yes\n"
		 "upstream = http://127.0.0.1:%u/v\n"
		 "[route \"pass\"]\n"
		 "match = pass.example.com\n"
		 "passthrough = yes\n"
		 "upstream = http://127.0.0.1:%u/p\n",
		 g.up_port, listen, g.up_port, g.up_port);
}

/* The CA files and their directory go when the process ends. */
static void
remove_ca(void)
{
	char path[128];

	snprintf(path, sizeof(path), "%s/ca/ca.key", g.ca_dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/ca/ca.pem", g.ca_dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/ca", g.ca_dir);
	rmdir(path);
	rmdir(g.ca_dir);
}

static void
setup(void)
{
	char text[4096], r[2048];
	int tries = 0;

	log_init(LOG_LEVEL_ERROR);
	g.rnd = 1;
	g.base = event_base_new();
	check(g.base != NULL, "event_base_new");
	g.up_fd = tcp_listen(&g.up_port);
	g.up_ev = event_new(g.base, g.up_fd, EV_READ | EV_PERSIST, on_up_accept, NULL);
	check(g.up_ev != NULL && event_add(g.up_ev, NULL) == 0, "upstream listener");
	snprintf(g.ca_dir, sizeof(g.ca_dir), "/tmp/bearerd-fuzz-ca-XXXXXX");
	check(mkdtemp(g.ca_dir) != NULL, "mkdtemp");
	atexit(remove_ca);
	do {
		/* a port picked here may be taken before the proxy binds it: pick again */
		check(tries++ < 10, "no free loopback ports for the proxy listeners");
		world_free(&g.a);
		world_free(&g.b);
		g.a_port = free_port();
		g.base_port = free_port();
		g.b_port = free_port();
		routes(r, sizeof(r), 1);
		snprintf(text, sizeof(text),
			 "%s[proxy]\nlisten = 127.0.0.1:%u\nconnect = intercept\n"
			 "intercept_ca_dir = %s/ca\n%s",
			 common, g.a_port, g.ca_dir, r);
		if (world_new(&g.a, "fuzz-proxy-a.conf", text) < 0)
			continue;
		routes(r, sizeof(r), 0);
		snprintf(text, sizeof(text),
			 "%s[proxy]\nlisten = 127.0.0.1:%u\nconnect = tunnel\n"
			 "tunnel_hosts = 127.0.0.1:%u\n%s",
			 common, g.b_port, g.up_port, r);
	} while (g.a.proxy == NULL || world_new(&g.b, "fuzz-proxy-b.conf", text) < 0);
	g.tls = SSL_CTX_new(TLS_client_method());
	check(g.tls != NULL, "SSL_CTX_new");
	SSL_CTX_set_verify(g.tls, SSL_VERIFY_NONE, NULL);
}

/* The client */

enum stage {
	ST_SEND,      /* raw bytes out, then our half-close */
	ST_CONNECT,   /* TLS mode: the CONNECT is out, reading the proxy's answer */
	ST_HANDSHAKE, /* TLS mode */
	ST_TLS,	      /* TLS mode: the bytes out as application data, answers in */
	ST_DONE,
};

struct client {
	int fd;
	int mode;
	enum stage stage;
	char *in; /* what the client sends (raw modes: CONNECT head included) */
	size_t in_len, sent;
	const uint8_t *plain; /* the fuzz bytes themselves (what the client "said") */
	size_t plain_len;
	struct buf out; /* what came back (TLS mode: decrypted after the 200) */
	struct buf head;
	SSL *ssl;
	int64_t last_ms; /* TLS mode: last progress */
	int said_bye;
};

static void
client_raw(struct client *c)
{
	char b[16384];
	ssize_t n;

	while (c->sent < c->in_len) {
		n = send(c->fd, c->in + c->sent, c->in_len - c->sent, MSG_NOSIGNAL);
		if (n <= 0)
			break;
		c->sent += (size_t)n;
	}
	if (c->sent == c->in_len && c->stage == ST_SEND)
		shutdown(c->fd, SHUT_WR);
	for (;;) {
		n = recv(c->fd, b, sizeof(b), 0);
		if (n == 0 ||
		    (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
			c->stage = ST_DONE;
			return;
		}
		if (n < 0)
			return;
		if (c->stage == ST_CONNECT) {
			keep(&c->head, b, (size_t)n);
			if (memmem(c->head.p, c->head.len, "\r\n\r\n", 4) == NULL)
				continue;
			if (c->head.len < 12 || memcmp(c->head.p, "HTTP/1.1 200", 12) != 0) {
				keep(&c->out, c->head.p,
				     c->head.len); /* refused: read to the end */
				c->stage = ST_SEND;
				continue;
			}
			c->ssl = SSL_new(g.tls);
			check(c->ssl != NULL && SSL_set_fd(c->ssl, c->fd) == 1, "SSL_new");
			SSL_set_tlsext_host_name(c->ssl, "api.example.com");
			SSL_set_connect_state(c->ssl);
			c->stage = ST_HANDSHAKE;
			c->sent = 0; /* from now on: of the plaintext */
			return;
		}
		keep(&c->out, b, (size_t)n);
	}
}

static void
client_tls(struct client *c)
{
	char b[16384];
	int n, e;

	if (c->stage == ST_HANDSHAKE) {
		n = SSL_do_handshake(c->ssl);
		if (n != 1) {
			e = SSL_get_error(c->ssl, n);
			if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
				ERR_clear_error();
				c->stage = ST_DONE;
			}
			return;
		}
		c->stage = ST_TLS;
		c->last_ms = clock_mono_ms();
	}
	while (c->sent < c->plain_len) {
		n = SSL_write(c->ssl, c->plain + c->sent, (int)(c->plain_len - c->sent));
		if (n <= 0)
			break;
		c->sent += (size_t)n;
		c->last_ms = clock_mono_ms();
	}
	for (;;) {
		n = SSL_read(c->ssl, b, sizeof(b));
		if (n > 0) {
			keep(&c->out, b, (size_t)n);
			c->last_ms = clock_mono_ms();
			continue;
		}
		e = SSL_get_error(c->ssl, n);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
			break;
		ERR_clear_error();
		c->stage = ST_DONE; /* close_notify, EOF or a TLS error */
		return;
	}
	if (!c->said_bye && c->sent == c->plain_len && clock_mono_ms() - c->last_ms >= QUIET_MS) {
		/* nothing more is coming: close_notify and our half-close, like a client that ends
		 */
		c->said_bye = 1;
		SSL_shutdown(c->ssl);
		shutdown(c->fd, SHUT_WR);
	}
}

/* Every QUIET_MS: the TLS client's silence check, and a bound on each turn of the loop. */
static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;

	(void)fd;
	(void)what;
	if (c != NULL && (c->stage == ST_TLS || c->stage == ST_HANDSHAKE))
		client_tls(c);
}

static void
on_client(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;

	(void)fd;
	(void)what;
	if (c->stage == ST_HANDSHAKE || c->stage == ST_TLS)
		client_tls(c);
	else if (c->stage != ST_DONE)
		client_raw(c);
	if (c->stage == ST_HANDSHAKE)
		client_tls(c); /* the first flight, now that the 200 is in */
}

/* The checks */

static int
stamped(const struct client *c, const char *v, size_t n)
{
	return memmem(c->plain, c->plain_len, v, n) == NULL;
}

static int
line_is(const char *line, size_t len, const char *name, const char *except_value)
{
	size_t k = strlen(name);

	if (len < k || strncasecmp(line, name, k) != 0)
		return 0;
	if (except_value == NULL)
		return 1;
	line += k;
	len -= k;
	while (len > 0 && *line == ' ') {
		line++;
		len--;
	}
	return !(len == strlen(except_value) && strncasecmp(line, except_value, len) == 0);
}

/* One stamped Authorization at auth (in an upstream connection's bytes p..p+len). */
static void
check_stamped_head(const char *p, size_t len, const char *auth)
{
	char host[64];
	const char *h = NULL, *s, *line;
	int hl = snprintf(host, sizeof(host), " HTTP/1.1\r\nHost: 127.0.0.1:%u\r\n", g.up_port);

	/* the Host line is ours (a caller's is never forwarded), right after the request line */
	for (s = p; (s = memmem(s, (size_t)(auth - s), host, (size_t)hl)) != NULL; s++)
		h = s;
	check(h != NULL, "a stamped request without the proxy's own head");
	line = h;
	while (line > p && !(line[-1] == '\n'))
		line--;
	check(!(h - line >= 6 && strncasecmp(line, "TRACE ", 6) == 0) &&
		  !(h - line >= 6 && strncasecmp(line, "TRACK ", 6) == 0),
	      "a token stamped onto TRACE");
	s = memchr(line, ' ', (size_t)(h - line));
	check(s != NULL && (strncmp(s, " /a", 3) == 0 || strncmp(s, " /v", 3) == 0),
	      "a token stamped for the passthrough route, or outside every route");
	for (s = h + hl; s < auth;) {
		const char *e = memmem(s, (size_t)(auth - s), "\r\n", 2);
		size_t n = e != NULL ? (size_t)(e - s) : (size_t)(auth - s);

		check(!line_is(s, n, "origin:", NULL),
		      "a token stamped onto a request with Origin");
		check(!line_is(s, n, "sec-fetch-site:", "none"),
		      "a token stamped onto a cross-site request");
		s += n + 2;
	}
}

static void
check_input(const struct client *c)
{
	static const char bearer[] = "\r\nAuthorization: Bearer ";

	for (size_t i = 0; i < g.n_ups; i++) {
		const struct buf *b = &g.ups[i]->got;
		const char *s = b->p, *end;

		if (b->p == NULL)
			continue; /* a connection that got nothing */
		end = b->p + b->len;
		while (s != NULL && s < end &&
		       (s = memmem(s, (size_t)(end - s), bearer, sizeof(bearer) - 1)) != NULL) {
			const char *v = s + sizeof(bearer) - 1;
			const char *e = memmem(v, (size_t)(end - v), "\r\n", 2);

			if (e == NULL)
				break;
			if (stamped(c, v, (size_t)(e - v)) && e > v) {
				check(c->mode != 4, "a token stamped inside a tunnel");
				check(c->out.dropped > 0 ||
					  memmem(c->out.p, c->out.len, v, (size_t)(e - v)) == NULL,
				      "the client got the stamped token back");
				check_stamped_head(b->p, b->len, s + 2);
			}
			s = e;
		}
	}
}

static void
reset_input(void)
{
	for (size_t i = 0; i < g.n_ups; i++) {
		free(g.ups[i]->got.p);
		free(g.ups[i]);
	}
	g.n_ups = 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char connect_a[] =
	    "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n";
	struct client c = {.fd = -1};
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	char connect_b[128];
	const char *prefix = "";
	struct timeval every = {0, QUIET_MS * 1000};
	struct event *ev, *tick;
	int64_t deadline;
	size_t n;

	if (g.base == NULL)
		setup();
	if (size < 2)
		return 0;
	c.mode = data[0] % 5;
	n = data[1] < size - 2 ? data[1] : size - 2;
	g.reply = n > 0 ? data + 2 : (const uint8_t *)default_reply;
	g.reply_len = n > 0 ? n : sizeof(default_reply) - 1;
	c.plain = data + 2 + n;
	c.plain_len = size - 2 - n;
	snprintf(connect_b, sizeof(connect_b), "CONNECT 127.0.0.1:%u HTTP/1.1\r\n\r\n", g.up_port);
	switch (c.mode) {
	case 0:
	case 3:
		sin.sin_port = htons((uint16_t)g.a_port);
		break;
	case 1:
		sin.sin_port = htons((uint16_t)g.base_port);
		break;
	case 2:
		sin.sin_port = htons((uint16_t)g.a_port);
		prefix = connect_a;
		break;
	default:
		sin.sin_port = htons((uint16_t)g.b_port);
		prefix = connect_b;
		break;
	}
	if (c.mode == 3) {
		c.in = strdup(connect_a);
		c.in_len = strlen(connect_a);
		c.stage = ST_CONNECT;
	} else {
		c.in_len = strlen(prefix) + c.plain_len;
		c.in = malloc(c.in_len + 1);
		check(c.in != NULL, "malloc");
		memcpy(c.in, prefix, strlen(prefix));
		memcpy(c.in + strlen(prefix), c.plain, c.plain_len);
		c.stage = ST_SEND;
	}
	c.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	check(c.fd >= 0, "client socket");
	check(connect(c.fd, (struct sockaddr *)&sin, sizeof(sin)) == 0, "connect");
	check(fcntl(c.fd, F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");
	ev = event_new(g.base, c.fd, EV_READ | EV_PERSIST, on_client, &c);
	check(ev != NULL && event_add(ev, NULL) == 0, "client event");
	tick = event_new(g.base, -1, EV_PERSIST, on_tick, &c);
	check(tick != NULL && event_add(tick, &every) == 0, "tick");
	on_client(c.fd, EV_WRITE, &c);
	deadline = clock_mono_ms() + DEADLINE_MS;
	while (c.stage != ST_DONE) {
		check(clock_mono_ms() < deadline, "the connection ends once the client is done");
		event_base_loop(g.base, EVLOOP_ONCE);
	}
	event_free(ev);
	if (c.ssl != NULL)
		SSL_free(c.ssl);
	close(c.fd);
	/* both sides let go of everything before the next input */
	event_del(tick); /* the client is gone: the tick only bounds each turn now */
	event_assign(tick, g.base, -1, EV_PERSIST, on_tick, NULL);
	event_add(tick, &every);
	while ((proxy_connections(g.a.proxy) + proxy_connections(g.b.proxy) > 0 || g.up_open > 0) &&
	       clock_mono_ms() < deadline)
		event_base_loop(g.base, EVLOOP_ONCE);
	event_free(tick);
	check(proxy_connections(g.a.proxy) == 0 && proxy_connections(g.b.proxy) == 0,
	      "the proxy freed the client connection");
	check(g.up_open == 0, "the proxy closed its upstream connections");
	check_input(&c);
	reset_input();
	free(c.in);
	free(c.out.p);
	free(c.head.p);
	return 0;
}
