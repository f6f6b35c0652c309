/*
 * HTTP server layer: listeners and connections on plain libevent events,
 * strict bounded HTTP/1.1 (common/http_parse.c), keep-alive, asynchronous
 * replies.  It serves the local API on the socket, the compat listeners and
 * the metrics listener; the proxy's listeners have their own engine in
 * proxy.c.
 */
#ifndef BEARERD_HTTP_H
#define BEARERD_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "http_parse.h"

struct config;
struct event_base;
struct evbuffer;
struct http_server;
struct http_request;

struct http_limits {
	size_t max_head;       /* bytes of request line + headers; default 16384 -> 431 */
	size_t max_body;       /* request body bytes; default 65536 -> 413 */
	unsigned max_conns;    /* open connections per server; default 1024 */
	unsigned idle_timeout; /* seconds a keep-alive connection may sit idle; default 60 */
	/*
	 * Seconds to receive a whole head once its first byte came, and a new
	 * connection's first head from the accept (a silent one is closed);
	 * default 10.
	 */
	unsigned head_timeout;
	unsigned write_timeout; /* seconds a reply may take to drain; default 30 */
	/*
	 * Open connections per peer uid: SO_PEERCRED on AF_UNIX, for TCP the
	 * owner of the local socket at the other end (peer.c); TCP peers not
	 * identified share one bucket.  0 = no limit; default 256.
	 */
	unsigned max_conns_per_uid;
};

/*
 * Called once per complete request (head and body).  Must eventually call
 * http_reply*, either before returning or later from the loop; a handler that
 * replies later must register a cancel callback (http_request_on_cancel).
 */
typedef void http_handler_fn(struct http_request *req, void *arg);
/*
 * Called if the connection dies before the reply (peer closed, timeout,
 * http_server_free); the request is freed right after and must not be replied
 * to.  Without one, req stays valid until the handler replies (the reply is
 * dropped), except in http_server_free.
 */
typedef void http_cancel_fn(struct http_request *req, void *arg);

void http_limits_default(struct http_limits *l);

/*
 * The defaults with [bearerd]'s bounds on callers over them (max_connections,
 * max_connections_per_uid, header_timeout, keepalive_timeout): the socket and
 * the compat listeners apply the same ones.
 */
void http_limits_from_config(struct http_limits *l, const struct config *cfg);

int http_server_new(struct http_server **out, struct event_base *base,
		    const struct http_limits *limits, http_handler_fn *handler, void *arg);
/* Frees the server and closes every connection (pending requests are cancelled). */
struct http_server *http_server_free(struct http_server *s);

/*
 * Starts accepting on a bound, listening socket (made non-blocking and CLOEXEC
 * here, its backlog left alone); takes ownership, also on failure.
 */
int http_server_add_listener(struct http_server *s, int fd);
/* A listening TCP socket (SO_REUSEADDR, CLOEXEC, non-blocking) bound to addr; its address, with
 * the port chosen when addr's is 0, in *bound.  Returns the fd or -errno. */
int http_listen_tcp(const struct sockaddr_storage *addr, socklen_t addr_len,
		    struct sockaddr_storage *bound);
/* Stops accepting; open connections finish their current request then close. */
void http_server_stop_accepting(struct http_server *s);
/* Number of requests waiting for their reply. */
unsigned http_server_pending(const struct http_server *s);
unsigned http_server_connections(const struct http_server *s);

/*
 * The parsed head; strings point into the connection's buffer and live until
 * the reply.  In the server layer the method, target, header names and header
 * values are also NUL-terminated (at their *_len).
 */
const struct http_head *http_request_head(const struct http_request *req);
/* Path part of the target (before '?') and query (after, without '?', may be empty). */
void http_request_path(const struct http_request *req, const char **path, size_t *path_len,
		       const char **query, size_t *query_len);
bool http_request_method_is(const struct http_request *req, const char *method);
/* The first header called name (case-insensitive; value NUL-terminated), or NULL. */
const struct http_header *http_request_header(const struct http_request *req, const char *name);
/* The request body (may be empty; chunked bodies are decoded), NUL-terminated. */
const char *http_request_body(const struct http_request *req, size_t *len);
/* SO_PEERCRED of an AF_UNIX peer; -ENOTSUP for TCP. */
int http_request_peer(const struct http_request *req, uid_t *uid, gid_t *gid, pid_t *pid);

/* Registers a callback for a connection that dies while the request waits. */
void http_request_on_cancel(struct http_request *req, http_cancel_fn *fn, void *arg);

/*
 * Sends the reply and frees req (do not touch it afterwards).  extra_headers
 * is "Name: value\r\n" lines or NULL; body is copied.  Adds Content-Length,
 * Content-Type when given, and Connection: close when closing.
 */
void http_reply(struct http_request *req, int status, const char *content_type,
		const char *extra_headers, const void *body, size_t body_len);
/* Same, moving the contents of body (an evbuffer) into the output. */
void http_reply_buffer(struct http_request *req, int status, const char *content_type,
		       const char *extra_headers, struct evbuffer *body);

/* "OK", "Not Found", ... for status codes we send. */
const char *http_status_text(int status);

#endif
