/*
 * libbearer: the blocking client side of bearerd's local API (HTTP/1.1 on a Unix socket).
 *
 * One call is one connection: the request goes out with "Connection: close" and one answer
 * is read back, framed by Content-Length or by the end of the connection.  The library must
 * not depend on anything but libc, so it carries this small response reader instead of
 * libcurl; it only ever talks to bearerd, whose answers are small and simply framed, and it
 * refuses anything else (no chunked encoding, no 1xx, no folded headers).  The head is
 * parsed by common/http_parse.c, the daemon's own strict parser, and JSON is read with
 * common/json.c: both need only libc (and jsmn, header-only), so they add no run-time
 * dependency, and libbearer.map keeps their symbols private.  Every buffer that may hold a
 * token is wiped before it is freed.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "bearer.h"
#include "build-config.h"
#include "clock.h"
#include "http_parse.h"
#include "json.h"
#include "urlencode.h"
#include "wipe.h"

#define DEFAULT_SOCKET	 "/run/bearerd/bearerd.sock"
#define TIMEOUT_MS	 30000
#define HEAD_MAX	 (16 * 1024)	    /* status line and headers of an answer */
#define TOKEN_BODY_MAX	 (1024 * 1024)	    /* body of a token answer */
#define REQUEST_BODY_MAX (16 * 1024 * 1024) /* body for bearer_request (status of many entries) */
#define PATH_MAX_LEN	 8192		    /* request target */
#define AUDIENCE_MAX	 1024		    /* audience name, before encoding */
#define TOKEN_JSON_MAX	 64		    /* jsmn tokens in a token answer */
#define ERROR_JSON_MAX	 32		    /* jsmn tokens in an error answer */

struct answer {
	int status;
	char *body;
	size_t len;
};

const char *
bearer_default_socket(void)
{
	const char *s = secure_getenv("BEARERD_SOCKET");

	return s != NULL && s[0] != '\0' ? s : DEFAULT_SOCKET;
}

/* Waits until fd is ready for events or the deadline passes. */
static int
wait_fd(int fd, short events, int64_t deadline)
{
	for (;;) {
		int64_t left = deadline - clock_mono_ms();
		struct pollfd p = {.fd = fd, .events = events};
		int r;

		if (left <= 0)
			return -ETIMEDOUT;
		r = poll(&p, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		return 0; /* POLLHUP and POLLERR are reported by the next recv or send */
	}
}

static int
connect_socket(const char *path, int64_t deadline, int *out)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t n = strlen(path);
	int64_t left = deadline - clock_mono_ms();
	struct timeval tv = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000};
	int fd, r;

	if (n == 0)
		return -EINVAL;
	if (left <= 0)
		return -ETIMEDOUT;
	if (n >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, n);

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* connect() on a Unix socket blocks only while the backlog is full; bound that too. */
	if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
		r = -errno;
		goto fail;
	}
	while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno == EINTR)
			continue;
		r = errno == EAGAIN || errno == EINPROGRESS ? -ETIMEDOUT : -errno;
		goto fail;
	}
	*out = fd;
	return 0;

fail:
	close(fd);
	return r;
}

static int
send_all(int fd, const char *buf, size_t len, int64_t deadline)
{
	while (len > 0) {
		/* MSG_NOSIGNAL: a library must not kill its caller with SIGPIPE. */
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		int r;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		if (n < 0) {
			r = wait_fd(fd, POLLOUT, deadline);
			if (r < 0)
				return r;
			continue;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads what is there, at most len bytes: the count, 0 at the end, or a negative errno. */
static ssize_t
recv_some(int fd, char *buf, size_t len, int64_t deadline)
{
	for (;;) {
		ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
		int r;

		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		r = wait_fd(fd, POLLIN, deadline);
		if (r < 0)
			return r;
	}
}

static bool
valid_chars(const char *s, char lo, char hi)
{
	for (; *s != '\0'; s++)
		if (*s < lo || *s > hi)
			return false;
	return true;
}

static int
build_request(const char *method, const char *path, const char *accept, char **out, size_t *out_len)
{
	bool with_length = strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0;
	size_t mlen = strlen(method);
	char *req;
	int n;

	if (mlen == 0 || mlen > 16 || !valid_chars(method, 'A', 'Z'))
		return -EINVAL;
	if (path[0] != '/' || !valid_chars(path, '!', '~'))
		return -EINVAL;
	if (strlen(path) > PATH_MAX_LEN || strlen(accept) > 256)
		return -ENAMETOOLONG;
	if (!valid_chars(accept, ' ', '~'))
		return -EINVAL;

	n = asprintf(&req,
		     "%s %s HTTP/1.1\r\n"
		     "Host: localhost\r\n"
		     "User-Agent: libbearer/%s\r\n"
		     "Accept: %s\r\n"
		     "%s"
		     "Connection: close\r\n"
		     "\r\n",
		     method, path, BEARERD_VERSION, accept,
		     with_length ? "Content-Length: 0\r\n" : "");
	if (n < 0)
		return -ENOMEM;
	*out = req;
	*out_len = (size_t)n;
	return 0;
}

/*
 * Checks an answer's head, parsed by common/http_parse.c (the daemon's own strict parser):
 * bearerd answers with a final status, framed by Content-Length or by the end of the
 * connection, never chunked.
 */
static int
check_head(const struct http_head *h)
{
	if (h->status < 200 || h->status > 599 || http_head_find(h, "transfer-encoding") != NULL)
		return -EPROTO;
	return 0;
}

static int
read_answer(int fd, int64_t deadline, bool head_only, size_t body_max, struct answer *out)
{
	char *head = malloc(HEAD_MAX), *body = NULL;
	const char *rest;
	struct http_head h;
	size_t hlen = 0, head_len, got, cap = 0;
	int64_t clen;
	int status, r = 0;
	ssize_t n;

	if (head == NULL)
		return -ENOMEM;
	/* an invalid prefix fails at once, before the blank line arrives */
	while (r == 0) {
		if (hlen == HEAD_MAX) {
			r = -EMSGSIZE;
			goto out;
		}
		n = recv_some(fd, head + hlen, HEAD_MAX - hlen, deadline);
		if (n <= 0) {
			r = n < 0 ? (int)n : hlen == 0 ? -ECONNRESET : -EPROTO;
			goto out;
		}
		hlen += (size_t)n;
		r = http_parse_response_head(head, hlen, &h);
		if (r < 0) {
			r = r == -E2BIG ? -EMSGSIZE : -EPROTO; /* E2BIG: too many fields */
			goto out;
		}
	}
	head_len = (size_t)r;
	r = check_head(&h);
	if (r < 0)
		goto out;
	status = h.status;
	clen = h.content_length;
	rest = head + head_len;
	got = hlen - head_len;

	if (head_only || status == 204 || status == 304) {
		got = 0;
		cap = 1;
		body = malloc(cap);
		r = body == NULL ? -ENOMEM : 0;
	} else if (clen >= 0) {
		if ((uint64_t)clen > body_max) {
			r = -EMSGSIZE;
			goto out;
		}
		if (got > (size_t)clen) {
			r = -EPROTO;
			goto out;
		}
		cap = (size_t)clen + 1;
		body = malloc(cap);
		if (body == NULL) {
			r = -ENOMEM;
			goto out;
		}
		memcpy(body, rest, got);
		while (got < (size_t)clen) {
			n = recv_some(fd, body + got, (size_t)clen - got, deadline);
			if (n <= 0) {
				r = n < 0 ? (int)n : -EPROTO;
				goto out;
			}
			got += (size_t)n;
		}
	} else {
		/* No Content-Length: the body ends with the connection. */
		if (got > body_max) {
			r = -EMSGSIZE;
			goto out;
		}
		cap = got + 4096 < body_max + 2 ? got + 4096 : body_max + 2;
		body = malloc(cap);
		if (body == NULL) {
			r = -ENOMEM;
			goto out;
		}
		memcpy(body, rest, got);
		for (;;) {
			if (got == cap - 1) {
				size_t ncap = cap * 2 < body_max + 2 ? cap * 2 : body_max + 2;

				if (got > body_max) {
					r = -EMSGSIZE;
					goto out;
				}
				r = wipe_realloc(&body, &cap, got, ncap);
				if (r < 0)
					goto out;
			}
			n = recv_some(fd, body + got, cap - 1 - got, deadline);
			if (n < 0) {
				r = (int)n;
				goto out;
			}
			if (n == 0)
				break;
			got += (size_t)n;
		}
		r = got > body_max ? -EMSGSIZE : 0;
	}
	if (r < 0)
		goto out;

	body[got] = '\0';
	out->status = status;
	out->body = body;
	out->len = got;
	body = NULL;
out:
	wipe_free(body, cap);
	wipe_free(head, HEAD_MAX);
	return r;
}

/* One request, one answer of at most body_max bytes. */
static int
request(const char *socket_path, const char *method, const char *path, const char *accept,
	size_t body_max, struct answer *out)
{
	int64_t deadline = clock_mono_ms() + TIMEOUT_MS;
	char *req = NULL;
	size_t req_len;
	int fd = -1, sent, r;

	if (socket_path == NULL)
		socket_path = bearer_default_socket();
	r = build_request(method, path, accept, &req, &req_len);
	if (r < 0)
		return r;
	r = connect_socket(socket_path, deadline, &fd);
	if (r < 0)
		goto out;
	/* The daemon may answer and close before reading everything: still read its answer. */
	sent = send_all(fd, req, req_len, deadline);
	if (sent < 0 && sent != -EPIPE && sent != -ECONNRESET) {
		r = sent;
		goto out;
	}
	r = read_answer(fd, deadline, strcmp(method, "HEAD") == 0, body_max, out);
	if (r == -ECONNRESET && sent < 0)
		r = sent;
out:
	if (fd >= 0)
		close(fd);
	free(req);
	return r;
}

int
bearer_request(const char *socket_path, const char *method, const char *path, const char *accept,
	       int *status, char **body, size_t *body_len)
{
	struct answer a;
	int r;

	if (method == NULL || path == NULL || status == NULL || body == NULL || body_len == NULL)
		return -EINVAL;
	r = request(socket_path, method, path, accept != NULL ? accept : "application/json",
		    REQUEST_BODY_MAX, &a);
	if (r < 0)
		return r;
	*status = a.status;
	*body = a.body;
	*body_len = a.len;
	return 0;
}

static int
parse_token(const char *js, size_t len, struct bearer_token *out)
{
	jsmntok_t t[TOKEN_JSON_MAX];
	struct json_doc doc;
	int at, eo, ei, r;
	int64_t expires_on, expires_in;
	char *token;
	size_t tlen, i;

	if (json_parse(&doc, js, len, t, TOKEN_JSON_MAX) < 0)
		return -EPROTO;
	at = json_find(&doc, 0, "access_token");
	eo = json_find(&doc, 0, "expires_on");
	ei = json_find(&doc, 0, "expires_in");
	if (at < 0 || eo < 0 || json_int64(&doc, eo, &expires_on) < 0)
		return -EPROTO;
	if (ei < 0)
		expires_in = expires_on - (int64_t)time(NULL);
	else if (json_int64(&doc, ei, &expires_in) < 0)
		return -EPROTO;
	r = json_string_dup(&doc, at, &token, &tlen);
	if (r < 0)
		return r == -ENOMEM ? r : -EPROTO;
	/* It goes into HTTP headers: printable ASCII only, and never empty. */
	for (i = 0; i < tlen; i++)
		if (token[i] <= ' ' || token[i] > '~')
			break;
	if (tlen == 0 || i < tlen) {
		wipe_free(token, tlen + 1);
		return -EPROTO;
	}
	out->access_token = token;
	out->len = tlen;
	out->expires_on = expires_on;
	out->expires_in = expires_in;
	return 0;
}

static __attribute__((format(printf, 3, 4))) void
set_error(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	size_t i;

	if (buf == NULL || size == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	for (i = 0; buf[i] != '\0'; i++)
		if ((unsigned char)buf[i] < ' ' || buf[i] == 0x7f)
			buf[i] = '?';
}

/* "error: description" from the daemon's JSON error, or a generic text. */
static void
describe_http_error(const struct answer *a, char *buf, size_t size)
{
	jsmntok_t t[ERROR_JSON_MAX];
	struct json_doc doc;
	char *error = NULL, *desc = NULL;
	size_t dlen;
	int e = -1, d = -1;

	if (json_parse(&doc, a->body, a->len, t, ERROR_JSON_MAX) == 0) {
		e = json_find(&doc, 0, "error");
		d = json_find(&doc, 0, "error_description");
	}
	if (e < 0 || json_string_dup(&doc, e, &error, NULL) < 0) {
		set_error(buf, size, "bearerd answered HTTP status %d", a->status);
		return;
	}
	if (d >= 0 && json_string_dup(&doc, d, &desc, &dlen) == 0 && dlen > 0)
		set_error(buf, size, "%s: %s", error, desc);
	else
		set_error(buf, size, "%s", error);
	free(error);
	free(desc);
}

static int
errno_for_status(int status)
{
	switch (status) {
	case 400:
		return -EINVAL;
	case 403:
		return -EPERM;
	case 404:
		return -ENXIO;
	case 503:
		return -EAGAIN;
	case 504:
		return -ETIMEDOUT;
	default:
		return -EIO;
	}
}

static void
describe_errno(int r, const char *socket_path, char *buf, size_t size)
{
	char tmp[128];

	switch (r) {
	case -EPROTO:
		set_error(buf, size, "malformed answer from bearerd at %s", socket_path);
		break;
	case -EMSGSIZE:
		set_error(buf, size, "answer from bearerd at %s is too large", socket_path);
		break;
	case -ENOMEM:
		set_error(buf, size, "out of memory");
		break;
	case -ETIMEDOUT:
		set_error(buf, size, "no answer from bearerd at %s within %d s", socket_path,
			  TIMEOUT_MS / 1000);
		break;
	default:
		set_error(buf, size, "cannot reach bearerd at %s: %s", socket_path,
			  strerror_r(-r, tmp, sizeof(tmp)));
		break;
	}
}

int
bearer_get_token_ex(const char *socket_path, const char *audience, int64_t min_validity,
		    struct bearer_token *out, int *http_status, char *errbuf, size_t errlen)
{
	char enc[AUDIENCE_MAX * 3 + 1], path[sizeof(enc) + 64];
	struct answer a = {0};
	int r;

	if (socket_path == NULL)
		socket_path = bearer_default_socket();
	if (http_status != NULL)
		*http_status = 0;
	set_error(errbuf, errlen, "%s", "");

	if (audience == NULL || audience[0] == '\0' || out == NULL || min_validity < 0) {
		set_error(errbuf, errlen, "invalid argument");
		return -EINVAL;
	}
	if (strlen(audience) > AUDIENCE_MAX) {
		set_error(errbuf, errlen, "audience name too long");
		return -ENAMETOOLONG;
	}
	url_encode_into(enc, audience, strlen(audience), 0); /* enc has room for it */
	if (min_validity > 0)
		snprintf(path, sizeof(path), "/v1/token/%s?min_validity=%" PRId64, enc,
			 min_validity);
	else
		snprintf(path, sizeof(path), "/v1/token/%s", enc);

	r = request(socket_path, "GET", path, "application/json", TOKEN_BODY_MAX, &a);
	if (r < 0) {
		describe_errno(r, socket_path, errbuf, errlen);
		return r;
	}
	if (http_status != NULL)
		*http_status = a.status;
	if (a.status == 200) {
		r = parse_token(a.body, a.len, out);
		if (r < 0)
			describe_errno(r, socket_path, errbuf, errlen);
	} else {
		r = errno_for_status(a.status);
		describe_http_error(&a, errbuf, errlen);
	}
	wipe_free(a.body, a.len + 1);
	return r;
}

int
bearer_get_token(const char *socket_path, const char *audience, int64_t min_validity,
		 struct bearer_token *out)
{
	return bearer_get_token_ex(socket_path, audience, min_validity, out, NULL, NULL, 0);
}

void
bearer_token_clear(struct bearer_token *t)
{
	if (t == NULL)
		return;
	if (t->access_token != NULL)
		wipe_free(t->access_token, t->len + 1);
	explicit_bzero(t, sizeof(*t));
}
