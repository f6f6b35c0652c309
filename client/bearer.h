/*
 * libbearer: ask a local bearerd for an access token, without speaking HTTP yourself.
 *
 * Every call is blocking, opens one connection to the daemon's Unix socket, and gives up
 * after 30 seconds so that a hung daemon cannot hang the caller.  The library keeps no
 * global state and is safe to use from several threads.  It needs nothing beyond libc.
 *
 * Answers are bounded: 16 KiB of status line and headers, 1 MiB of body for a token and
 * 16 MiB for bearer_request() (the status of many cached entries).
 *
 * Errors are negative errno values:
 *   cannot reach the daemon   -ENOENT, -ECONNREFUSED, -EACCES, -ENOTSOCK, -ECONNRESET,
 *                             -ETIMEDOUT (no complete answer within 30 s), ...
 *   malformed answer          -EPROTO; -EMSGSIZE when it exceeds the library's bounds
 *   bad arguments             -EINVAL, -ENAMETOOLONG (socket path or audience too long)
 * and, for bearer_get_token(), the daemon's HTTP errors:
 *   400 -EINVAL    bad request
 *   403 -EPERM     this uid/gid may not have tokens for the audience
 *   404 -ENXIO     unknown audience
 *   503 -EAGAIN    no valid token, the upstream is failing (retry later)
 *   504 -ETIMEDOUT the daemon's wait for the upstream timed out (retry later)
 *   other -EIO
 * bearer_get_token_ex() also reports the HTTP status and the daemon's message.
 */
#ifndef BEARER_H
#define BEARER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A token handed out by the daemon.  Release it with bearer_token_clear(). */
struct bearer_token {
	char *access_token; /* NUL-terminated, printable ASCII */
	size_t len;	    /* strlen(access_token) */
	int64_t expires_on; /* expiry, seconds since the epoch */
	int64_t expires_in; /* seconds left when the daemon answered */
};

/*
 * The socket used when socket_path is NULL: $BEARERD_SOCKET when set and non-empty (ignored
 * in set-uid programs), else /run/bearerd/bearerd.sock.
 */
const char *bearer_default_socket(void);

/*
 * Gets a token for audience (a name from the daemon's config) with at least min_validity
 * seconds left; 0 leaves the choice to the daemon's own min_validity.  socket_path NULL
 * means bearer_default_socket().  Returns 0 and fills *out, or a negative errno (see above)
 * and leaves *out untouched.
 */
int bearer_get_token(const char *socket_path, const char *audience, int64_t min_validity,
		     struct bearer_token *out);

/*
 * Same as bearer_get_token(), and says why it failed: *http_status (may be NULL) receives the
 * daemon's HTTP status, or 0 when there was no complete answer; errbuf (may be NULL) receives
 * a one-line message, "error: description" as the daemon gave it, or what went wrong on the
 * way.  Both are written on success and on failure; the message never contains a token.
 */
int bearer_get_token_ex(const char *socket_path, const char *audience, int64_t min_validity,
			struct bearer_token *out, int *http_status, char *errbuf, size_t errlen);

/* Wipes the token bytes, frees them and zeroes *t.  Accepts NULL and a cleared token. */
void bearer_token_clear(struct bearer_token *t);

/*
 * Sends one request without a body (method "GET" or "POST", path already percent-encoded,
 * accept NULL for application/json) and returns 0 once a complete answer arrived, whatever
 * its status, with *status, *body (NUL-terminated, caller frees; wipe it first with
 * explicit_bzero() if it may hold a token) and *body_len.  Returns a negative errno when
 * the daemon could not be reached or answered something that is not HTTP.  This is what
 * bearerctl uses for the endpoints bearer_get_token() does not cover.
 */
int bearer_request(const char *socket_path, const char *method, const char *path,
		   const char *accept, int *status, char **body, size_t *body_len);

#ifdef __cplusplus
}
#endif

#endif
