/*
 * Fetch: outbound HTTP(S) requests for the token sources, run by libcurl's
 * multi interface from the libevent loop.  The glue follows curl's
 * docs/examples/multi-event.c and hiperfifo.c: libcurl tells us which sockets
 * to watch (CURLMOPT_SOCKETFUNCTION, one struct event per socket attached
 * with curl_multi_assign) and when to wake it (CURLMOPT_TIMERFUNCTION, one
 * evtimer); every event calls curl_multi_socket_action, after which finished
 * transfers are drained with curl_multi_info_read.  Nothing here blocks: DNS
 * must be asynchronous (checked in fetch_new) and signals are off.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <openssl/crypto.h>

#include "build-config.h"
#include "config_proxy.h" /* config_proxy_host_is_localhost */
#include "fetch.h"
#include "wipe.h"

#define FETCH_DEFAULT_TIMEOUT_MS 10000L
#define FETCH_MAX_CONNECT_MS	 5000L
#define FETCH_MAX_RETRY_AFTER	 3600

struct fetch {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	struct fetch_xfer *xfers; /* in flight, including deferred failures */
	struct fetch_sock *socks; /* sockets libcurl asked us to watch */
	int n_xfers;
	bool global_init;
	bool closing; /* in fetch_free: no new transfers */
};

/* One per libcurl socket, attached with curl_multi_assign. */
struct fetch_sock {
	struct fetch *f;
	struct fetch_sock *prev, *next;
	curl_socket_t fd;
	struct event *ev;
};

/* One per fetch_start. */
struct fetch_xfer {
	struct fetch *f;
	struct fetch_xfer *prev, *next;
	CURL *easy;
	bool added;	     /* to the multi handle */
	struct event *defer; /* reports a failure to add from the loop */
	int defer_error;
	const char *defer_message;
	struct curl_slist *headers;
	struct curl_slist *connect_to; /* localhost names: to 127.0.0.1 (map_localhost) */
	char *req_body;		       /* our copy of the POST body: it may hold a secret */
	size_t req_body_len;
	fetch_done_fn *done;
	void *arg;
	char *body; /* the answer: may hold a token, wiped before free */
	size_t body_len;
	size_t body_cap;
	size_t max_body;
	bool too_big;
	bool out_of_memory;
	int64_t retry_after;
	char errbuf[CURL_ERROR_SIZE];
};

static void
xfer_link(struct fetch *f, struct fetch_xfer *x)
{
	x->next = f->xfers;
	if (f->xfers != NULL)
		f->xfers->prev = x;
	f->xfers = x;
	f->n_xfers++;
}

static void
xfer_unlink(struct fetch *f, struct fetch_xfer *x)
{
	if (x->prev != NULL)
		x->prev->next = x->next;
	else
		f->xfers = x->next;
	if (x->next != NULL)
		x->next->prev = x->prev;
	x->prev = x->next = NULL;
	f->n_xfers--;
}

/* Frees a transfer that is no longer linked nor in the multi handle. */
static void
xfer_free(struct fetch_xfer *x)
{
	if (x == NULL)
		return;
	if (x->defer != NULL)
		event_free(x->defer);
	if (x->easy != NULL)
		curl_easy_cleanup(x->easy);
	/* a header may carry a credential (Basic authentication) */
	for (struct curl_slist *l = x->headers; l != NULL; l = l->next)
		OPENSSL_cleanse(l->data, strlen(l->data));
	curl_slist_free_all(x->headers);
	curl_slist_free_all(x->connect_to);
	wipe_free(x->req_body, x->req_body_len);
	wipe_free(x->body, x->body_cap);
	free(x);
}

static int
map_curl_error(const struct fetch_xfer *x, CURLcode code)
{
	switch (code) {
	case CURLE_OK:
		return 0;
	case CURLE_COULDNT_CONNECT:
		return -ECONNREFUSED;
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_COULDNT_RESOLVE_HOST:
		return -EHOSTUNREACH;
	case CURLE_FILESIZE_EXCEEDED: /* Content-Length above max_body */
		return -EFBIG;
	case CURLE_WRITE_ERROR:
		if (x->too_big)
			return -EFBIG;
		return x->out_of_memory ? -ENOMEM : -EIO;
	case CURLE_OUT_OF_MEMORY:
		return -ENOMEM;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_SSL_ENGINE_NOTFOUND:
	case CURLE_SSL_ENGINE_SETFAILED:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_ENGINE_INITFAILED:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_SHUTDOWN_FAILED:
	case CURLE_SSL_CRL_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_SSL_CLIENTCERT:
	case CURLE_USE_SSL_FAILED:
		return -EPROTO;
	default:
		return -EIO;
	}
}

/* Calls the owner's callback once, then frees the transfer. */
static void
xfer_finish(struct fetch_xfer *x, int error, const char *message)
{
	struct fetch *f = x->f;
	struct fetch_response resp = {
	    .error = error,
	    .message = error != 0 ? message : "",
	    .status = 0,
	    .body = "",
	    .body_len = 0,
	    .retry_after = x->retry_after,
	};

	xfer_unlink(f, x);
	if (x->added) {
		curl_multi_remove_handle(f->multi, x->easy);
		x->added = false;
	}
	if (x->easy != NULL) {
		char *type = NULL;

		curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &resp.status);
		if (curl_easy_getinfo(x->easy, CURLINFO_CONTENT_TYPE, &type) == CURLE_OK)
			resp.content_type = type;
	}
	if (error == 0 && x->body != NULL) {
		resp.body = x->body;
		resp.body_len = x->body_len;
	}
	x->done(x->arg, &resp);
	xfer_free(x);
}

/* Drains finished transfers; run after every curl_multi_socket_action. */
static void
check_multi_info(struct fetch *f)
{
	struct fetch_xfer *x;
	CURLMsg *msg;
	CURLcode code;
	CURL *easy;
	int left;

	while ((msg = curl_multi_info_read(f->multi, &left)) != NULL) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		easy = msg->easy_handle;
		code = msg->data.result;
		x = NULL;
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
		if (x == NULL)
			continue;
		/* msg is invalid once the handle is removed: use the copies */
		xfer_finish(x, map_curl_error(x, code),
			    x->errbuf[0] != '\0' ? x->errbuf : curl_easy_strerror(code));
	}
}

static void
on_socket_event(evutil_socket_t fd, short events, void *arg)
{
	struct fetch *f = arg;
	int flags = 0;
	int running;

	if (events & EV_READ)
		flags |= CURL_CSELECT_IN;
	if (events & EV_WRITE)
		flags |= CURL_CSELECT_OUT;
	curl_multi_socket_action(f->multi, fd, flags, &running);
	/*
	 * Unlike multi-event.c we do not delete the timer when nothing runs: a
	 * done callback may just have started a transfer and armed it.  libcurl
	 * disarms it itself (timer_cb with -1) when it has nothing left to do.
	 */
	check_multi_info(f);
}

static void
on_timer(evutil_socket_t fd, short events, void *arg)
{
	struct fetch *f = arg;
	int running;

	curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_multi_info(f);
}

static void
sock_free(struct fetch *f, struct fetch_sock *s)
{
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		f->socks = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	event_free(s->ev);
	free(s);
}

/* CURLMOPT_SOCKETFUNCTION: watch s for what libcurl wants, or stop. */
static int
socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct fetch *f = userp;
	struct fetch_sock *s = socketp;
	short kind;

	if (what == CURL_POLL_REMOVE) {
		if (s != NULL) {
			curl_multi_assign(f->multi, fd, NULL);
			sock_free(f, s);
		}
		return 0;
	}
	kind = EV_PERSIST;
	if (what & CURL_POLL_IN)
		kind |= EV_READ;
	if (what & CURL_POLL_OUT)
		kind |= EV_WRITE;

	if (s == NULL) {
		s = calloc(1, sizeof(*s));
		if (s == NULL)
			return -1;
		s->f = f;
		s->fd = fd;
		s->ev = event_new(f->base, fd, kind, on_socket_event, f);
		if (s->ev == NULL) {
			free(s);
			return -1;
		}
		s->next = f->socks;
		if (f->socks != NULL)
			f->socks->prev = s;
		f->socks = s;
		curl_multi_assign(f->multi, fd, s);
	} else {
		event_del(s->ev);
		event_assign(s->ev, f->base, fd, kind, on_socket_event, f);
	}
	return event_add(s->ev, NULL) == 0 ? 0 : -1;
}

/* CURLMOPT_TIMERFUNCTION: arm or disarm our one timer; never calls libcurl. */
static int
timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct fetch *f = userp;
	struct timeval tv;

	if (timeout_ms < 0)
		return evtimer_del(f->timer) == 0 ? 0 : -1;
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	return evtimer_add(f->timer, &tv) == 0 ? 0 : -1;
}

/* Appends to the answer; a body over max_body aborts the transfer. */
static size_t
write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	struct fetch_xfer *x = userp;
	size_t n = size * nmemb;
	size_t cap;

	if (n > x->max_body - x->body_len) {
		x->too_big = true;
		return 0;
	}
	if (x->body_len + n + 1 > x->body_cap) {
		cap = x->body_cap != 0 ? x->body_cap : 4096;
		while (cap < x->body_len + n + 1)
			cap *= 2;
		if (cap > x->max_body + 1)
			cap = x->max_body + 1;
		/* the old block may hold a token */
		if (wipe_realloc(&x->body, &x->body_cap, x->body_len, cap) < 0) {
			x->out_of_memory = true;
			return 0;
		}
	}
	memcpy(x->body + x->body_len, data, n);
	x->body_len += n;
	x->body[x->body_len] = '\0';
	return n;
}

/* Seconds from a Retry-After value (delta-seconds or HTTP-date), or -1. */
static int64_t
parse_retry_after(const char *v)
{
	int64_t secs = 0;
	time_t when;
	const char *p;

	if (*v >= '0' && *v <= '9') {
		for (p = v; *p >= '0' && *p <= '9'; p++) {
			if (secs <= FETCH_MAX_RETRY_AFTER)
				secs = secs * 10 + (*p - '0');
		}
		if (*p != '\0')
			return -1;
	} else {
		when = curl_getdate(v, NULL);
		if (when == (time_t)-1)
			return -1;
		secs = (int64_t)when - (int64_t)time(NULL);
	}
	if (secs < 0)
		secs = 0;
	if (secs > FETCH_MAX_RETRY_AFTER)
		secs = FETCH_MAX_RETRY_AFTER;
	return secs;
}

/* Captures Retry-After; a new status line (1xx, then final) starts over. */
static size_t
header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	static const char name[] = "retry-after:";
	struct fetch_xfer *x = userp;
	size_t n = size * nmemb;
	char value[128];
	size_t start = sizeof(name) - 1;
	size_t end = n;

	if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
		x->retry_after = -1;
		return n;
	}
	if (n <= start || strncasecmp(data, name, start) != 0)
		return n;
	while (start < end && (data[start] == ' ' || data[start] == '\t'))
		start++;
	while (end > start && (data[end - 1] == '\r' || data[end - 1] == '\n' ||
			       data[end - 1] == ' ' || data[end - 1] == '\t'))
		end--;
	if (end == start || end - start >= sizeof(value))
		return n;
	memcpy(value, data + start, end - start);
	value[end - start] = '\0';
	x->retry_after = parse_retry_after(value);
	return n;
}

/* Reports a failure to start from the loop, as fetch_done_fn promises. */
static void
on_defer(evutil_socket_t fd, short events, void *arg)
{
	struct fetch_xfer *x = arg;

	xfer_finish(x, x->defer_error, x->defer_message);
}

static int
setup_easy(struct fetch_xfer *x, const struct fetch_request *req)
{
	long timeout = req->timeout_ms > 0 ? req->timeout_ms : FETCH_DEFAULT_TIMEOUT_MS;
	long connect = timeout < FETCH_MAX_CONNECT_MS ? timeout : FETCH_MAX_CONNECT_MS;
	CURL *e = x->easy;
	CURLcode c = CURLE_OK;

	/* c |= keeps this readable; any failure is reported as one -EINVAL */
	c |= curl_easy_setopt(e, CURLOPT_URL, req->url);
	c |= curl_easy_setopt(e, CURLOPT_PRIVATE, x);
	c |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
	c |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	c |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	c |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	/*
	 * Token requests never go through a proxy: IMDS refuses proxied requests,
	 * and a token must not pass through whatever HTTP_PROXY names.
	 */
	c |= curl_easy_setopt(e, CURLOPT_PROXY, "");
	c |= curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
	c |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	c |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	/*
	 * libcurl's CAINFO replaces the default bundle rather than adding to it,
	 * so an identity with ca_file trusts that file only.  Acceptable: ca_file
	 * exists for private or test issuers, and verification stays on.
	 */
	if (req->ca_file != NULL)
		c |= curl_easy_setopt(e, CURLOPT_CAINFO, req->ca_file);
	if (req->tls_cert_file != NULL && req->tls_key_file != NULL) {
		c |= curl_easy_setopt(e, CURLOPT_SSLCERT, req->tls_cert_file);
		c |= curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
		c |= curl_easy_setopt(e, CURLOPT_SSLKEY, req->tls_key_file);
		c |= curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
	}
	c |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
	c |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect);
	c |= curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)x->max_body);
	c |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	c |= curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	c |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
	c |= curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
	c |= curl_easy_setopt(e, CURLOPT_USERAGENT, "bearerd/" BEARERD_VERSION);
	if (strcmp(req->method, "GET") == 0) {
		c |= curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	} else {
		c |= curl_easy_setopt(e, CURLOPT_POST, 1L);
		/* POSTFIELDS does not copy: x->req_body lives as long as x */
		c |=
		    curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->req_body != NULL ? x->req_body : "");
		c |= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->req_body_len);
	}
	if (x->headers != NULL)
		c |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
	if (x->connect_to != NULL)
		c |= curl_easy_setopt(e, CURLOPT_CONNECT_TO, x->connect_to);
	return c == CURLE_OK ? 0 : -EINVAL;
}

/*
 * localhost and *.localhost are loopback by definition (RFC 6761), and a
 * token request to them must not go wherever a resolver points them (a hosts
 * file without localhost sends the name to DNS, search domains first).  So
 * libcurl is told to connect to 127.0.0.1 itself; the Host header, SNI and
 * certificate checks keep the name.  libcurl >= 7.85 does the same for the
 * plain names, but not for "localhost." nor older versions.
 */
static int
map_localhost(struct fetch_xfer *x, const char *url)
{
	CURLU *u = curl_url();
	char *host = NULL, *entry = NULL;
	int rc = 0;

	if (u == NULL)
		return -ENOMEM;
	/* a URL libcurl cannot parse fails in the transfer itself */
	if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
	    config_proxy_host_is_localhost(host)) {
		if (asprintf(&entry, "%s::127.0.0.1:", host) < 0)
			entry = NULL;
		x->connect_to = entry != NULL ? curl_slist_append(NULL, entry) : NULL;
		if (x->connect_to == NULL)
			rc = -ENOMEM;
		free(entry);
	}
	curl_free(host);
	curl_url_cleanup(u);
	return rc;
}

static int
build_headers(struct fetch_xfer *x, const struct fetch_request *req, bool post)
{
	struct curl_slist *l;

	for (size_t i = 0; req->headers != NULL && req->headers[i] != NULL; i++) {
		l = curl_slist_append(x->headers, req->headers[i]);
		if (l == NULL)
			return -ENOMEM;
		x->headers = l;
	}
	if (post) {
		/* no 100-continue round trip for a small form */
		l = curl_slist_append(x->headers, "Expect:");
		if (l == NULL)
			return -ENOMEM;
		x->headers = l;
	}
	return 0;
}

int
fetch_start(struct fetch *f, const struct fetch_request *req, fetch_done_fn *done, void *arg)
{
	struct fetch_xfer *x;
	CURLMcode mc;
	bool post;
	int rc;

	if (f == NULL || req == NULL || req->url == NULL || req->method == NULL || done == NULL)
		return -EINVAL;
	if (f->closing)
		return -ECANCELED;
	if (strcmp(req->method, "GET") == 0)
		post = false;
	else if (strcmp(req->method, "POST") == 0)
		post = true;
	else
		return -EINVAL;

	x = calloc(1, sizeof(*x));
	if (x == NULL)
		return -ENOMEM;
	x->f = f;
	x->done = done;
	x->arg = arg;
	x->retry_after = -1;
	x->max_body = req->max_body != 0 ? req->max_body : FETCH_MAX_BODY;
	if (post && req->body_len > 0) {
		x->req_body = malloc(req->body_len + 1);
		if (x->req_body == NULL) {
			rc = -ENOMEM;
			goto fail_free;
		}
		memcpy(x->req_body, req->body, req->body_len);
		x->req_body[req->body_len] = '\0';
		x->req_body_len = req->body_len;
	}
	rc = build_headers(x, req, post);
	if (rc == 0)
		rc = map_localhost(x, req->url);
	if (rc < 0)
		goto fail_free;
	x->easy = curl_easy_init();
	if (x->easy == NULL) {
		rc = -ENOMEM;
		goto fail_free;
	}
	rc = setup_easy(x, req);
	if (rc < 0)
		goto fail_free;

	mc = curl_multi_add_handle(f->multi, x->easy);
	if (mc != CURLM_OK) {
		/* the contract forbids calling done from here: report from the loop */
		static const struct timeval now = {0, 0};

		x->defer = evtimer_new(f->base, on_defer, x);
		if (x->defer == NULL || evtimer_add(x->defer, &now) < 0) {
			rc = -ENOMEM;
			goto fail_free;
		}
		x->defer_error = mc == CURLM_OUT_OF_MEMORY ? -ENOMEM : -EIO;
		x->defer_message = curl_multi_strerror(mc);
	} else {
		x->added = true;
	}
	xfer_link(f, x);
	return 0;

fail_free:
	xfer_free(x);
	return rc;
}

int
fetch_in_flight(const struct fetch *f)
{
	return f != NULL ? f->n_xfers : 0;
}

int
fetch_new(struct fetch **out, struct event_base *base)
{
	const curl_version_info_data *info;
	struct fetch *f;
	CURLMcode mc = CURLM_OK;
	int rc;

	info = curl_version_info(CURLVERSION_NOW);
	if (info == NULL || !(info->features & CURL_VERSION_ASYNCHDNS))
		return -ENOTSUP;

	f = calloc(1, sizeof(*f));
	if (f == NULL)
		return -ENOMEM;
	f->base = base;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		rc = -ENOMEM;
		goto fail;
	}
	f->global_init = true;
	f->timer = evtimer_new(base, on_timer, f);
	f->multi = curl_multi_init();
	if (f->timer == NULL || f->multi == NULL) {
		rc = -ENOMEM;
		goto fail;
	}
	mc |= curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
	mc |= curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f);
	mc |= curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	mc |= curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f);
	/* a burst of dynamic resources must not open thousands of connections at once */
	mc |= curl_multi_setopt(f->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
				(long)FETCH_MAX_CONNECTIONS);
	if (mc != CURLM_OK) {
		rc = -EINVAL;
		goto fail;
	}
	*out = f;
	return 0;

fail:
	fetch_free(f);
	return rc;
}

/* Not from inside a fetch_done_fn: the loop draining completions still uses f. */
struct fetch *
fetch_free(struct fetch *f)
{
	struct fetch_xfer *x;

	if (f == NULL)
		return NULL;
	f->closing = true;
	while ((x = f->xfers) != NULL) {
		struct fetch_response resp = {
		    .error = -ECANCELED,
		    .message = "cancelled at shutdown",
		    .retry_after = -1,
		};

		xfer_unlink(f, x);
		if (x->added)
			curl_multi_remove_handle(f->multi, x->easy);
		/* every fetch_start gets its one callback, so callers can free what they hold */
		x->done(x->arg, &resp);
		xfer_free(x);
	}
	/* may still call socket_cb and timer_cb: the timer and base are alive */
	if (f->multi != NULL)
		curl_multi_cleanup(f->multi);
	while (f->socks != NULL)
		sock_free(f, f->socks);
	if (f->timer != NULL)
		event_free(f->timer);
	if (f->global_init)
		curl_global_cleanup();
	free(f);
	return NULL;
}
