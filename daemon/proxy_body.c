/*
 * Streaming relay of message bodies with their framing (see proxy_body.h).
 * Chunk-size lines and trailers are bounded; only CRLF ends a line.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "proxy_body.h"

#define BODY_LINE_MAX	  1024	/* chunk-size line with extensions */
#define BODY_TRAILERS_MAX 16384 /* bytes of trailer section */

enum chunk_state {
	CHUNK_SIZE = 0, /* expecting a chunk-size line */
	CHUNK_DATA,
	CHUNK_DATA_CRLF, /* the CRLF after chunk data */
	CHUNK_TRAILER,	 /* trailer lines up to an empty one */
};

void
proxy_body_init(struct proxy_body *b, enum proxy_body_mode mode, uint64_t length)
{
	memset(b, 0, sizeof(*b));
	b->mode = mode;
	b->left = mode == PROXY_BODY_LENGTH ? length : 0;
}

/*
 * Takes one CRLF-terminated line (without the CRLF) into line[BODY_LINE_MAX]:
 * returns its length, -EAGAIN when incomplete, -EINVAL when too long or when
 * it holds a bare CR or LF.
 */
static int
take_line(struct evbuffer *in, char *line)
{
	struct evbuffer_ptr eol;
	size_t n;

	eol = evbuffer_search_eol(in, NULL, &n, EVBUFFER_EOL_CRLF_STRICT);
	if (eol.pos < 0) {
		if (evbuffer_get_length(in) >= BODY_LINE_MAX)
			return -EINVAL;
		/* a bare LF already present can never become valid */
		if (evbuffer_search(in, "\n", 1, NULL).pos >= 0)
			return -EINVAL;
		return -EAGAIN;
	}
	if ((size_t)eol.pos >= BODY_LINE_MAX)
		return -EINVAL;
	evbuffer_remove(in, line, (size_t)eol.pos);
	evbuffer_drain(in, 2);
	if (memchr(line, '\r', (size_t)eol.pos) != NULL || memchr(line, '\n', (size_t)eol.pos))
		return -EINVAL;
	return (int)eol.pos;
}

/* chunk-size [ ";" chunk-ext ]: 1-16 hex digits; extensions are dropped. */
static int
parse_size(const char *line, size_t len, uint64_t *out)
{
	uint64_t n = 0;
	size_t i;

	for (i = 0; i < len; i++) {
		char c = line[i];
		int d;

		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			break;
		if (i == 16)
			return -EINVAL;
		n = n << 4 | (uint64_t)d;
	}
	if (i == 0)
		return -EINVAL;
	while (i < len && (line[i] == ' ' || line[i] == '\t'))
		i++;
	if (i < len && line[i] != ';')
		return -EINVAL;
	*out = n;
	return 0;
}

static int
relay_chunked(struct proxy_body *b, struct evbuffer *in, struct evbuffer *out)
{
	char line[BODY_LINE_MAX];
	size_t avail;
	int n;

	for (;;) {
		switch ((enum chunk_state)b->state) {
		case CHUNK_SIZE:
			n = take_line(in, line);
			if (n < 0)
				return n == -EAGAIN ? 0 : n;
			if (parse_size(line, (size_t)n, &b->left) < 0)
				return -EINVAL;
			if (b->left == 0) {
				b->state = CHUNK_TRAILER;
				break;
			}
			if (!b->dechunk)
				evbuffer_add_printf(out, "%llx\r\n", (unsigned long long)b->left);
			b->state = CHUNK_DATA;
			break;
		case CHUNK_DATA:
			avail = evbuffer_get_length(in);
			if (avail == 0)
				return 0;
			if (avail > b->left)
				avail = (size_t)b->left;
			evbuffer_remove_buffer(in, out, avail);
			b->left -= avail;
			b->total += avail;
			if (b->left == 0)
				b->state = CHUNK_DATA_CRLF;
			break;
		case CHUNK_DATA_CRLF:
			if (evbuffer_get_length(in) < 2)
				return 0;
			evbuffer_remove(in, line, 2);
			if (line[0] != '\r' || line[1] != '\n')
				return -EINVAL;
			if (!b->dechunk)
				evbuffer_add(out, "\r\n", 2);
			b->state = CHUNK_SIZE;
			break;
		case CHUNK_TRAILER:
			n = take_line(in, line);
			if (n < 0)
				return n == -EAGAIN ? 0 : n;
			b->trailers += (uint32_t)n + 2;
			if (b->trailers > BODY_TRAILERS_MAX)
				return -EINVAL;
			if (n == 0) {
				if (!b->dechunk)
					evbuffer_add(out, "0\r\n\r\n", 5);
				return 1;
			}
			break;
		}
	}
}

int
proxy_body_relay(struct proxy_body *b, struct evbuffer *in, struct evbuffer *out)
{
	size_t avail;

	switch (b->mode) {
	case PROXY_BODY_NONE:
		return 1;
	case PROXY_BODY_LENGTH:
		avail = evbuffer_get_length(in);
		if (avail > b->left)
			avail = (size_t)b->left;
		if (avail > 0)
			evbuffer_remove_buffer(in, out, avail);
		b->left -= avail;
		b->total += avail;
		return b->left == 0;
	case PROXY_BODY_CHUNKED:
		return relay_chunked(b, in, out);
	case PROXY_BODY_EOF:
		avail = evbuffer_get_length(in);
		b->total += avail;
		evbuffer_add_buffer(out, in);
		return 0;
	}
	return -EINVAL;
}
