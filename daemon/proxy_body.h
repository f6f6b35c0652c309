/*
 * Relaying one HTTP/1.1 message body between two evbuffers, keeping its
 * framing: Content-Length bodies are counted, chunked bodies are parsed
 * strictly (they decide where the next message starts, so a lenient parser
 * here would let a caller smuggle a second request past the route check) and
 * re-emitted chunk by chunk, close-delimited bodies run to EOF.  Data moves
 * between buffers without copying where libevent can.
 */
#ifndef BEARERD_PROXY_BODY_H
#define BEARERD_PROXY_BODY_H

#include <stdbool.h>
#include <stdint.h>

struct evbuffer;

enum proxy_body_mode {
	PROXY_BODY_NONE = 0, /* no body (or HEAD, 204, 304) */
	PROXY_BODY_LENGTH,   /* Content-Length */
	PROXY_BODY_CHUNKED,  /* Transfer-Encoding: chunked */
	PROXY_BODY_EOF,	     /* until the connection closes (responses only) */
};

struct proxy_body {
	enum proxy_body_mode mode;
	int state;	   /* chunked: where in the framing we are */
	uint64_t left;	   /* bytes left of the body (LENGTH) or of the chunk (CHUNKED) */
	uint64_t total;	   /* body bytes moved so far */
	uint32_t trailers; /* bytes of trailer section seen */
	bool dechunk;	   /* chunked: emit the data only (for an HTTP/1.0 client) */
};

void proxy_body_init(struct proxy_body *b, enum proxy_body_mode mode, uint64_t length);

/*
 * Moves what is available of the body from in to out (chunk framing is
 * rewritten, trailers dropped).  Returns 1 when the body is complete (bytes of
 * the next message stay in in), 0 when it needs more input, -EINVAL when the
 * chunked framing is malformed or a line is too long.  EOF bodies never
 * complete here: the caller ends them when the connection closes.
 */
int proxy_body_relay(struct proxy_body *b, struct evbuffer *in, struct evbuffer *out);

#endif
