/*
 * JSON writing: escaped strings appended to a libevent buffer.  Kept apart
 * from common/json.c, which the client links and which must not need libevent.
 */
#include "json_write.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <event2/buffer.h>

int
json_append_string(struct evbuffer *out, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	struct evbuffer_iovec vec;
	size_t need = 2;
	char *p;

	if (len > (SIZE_MAX - 2) / 6)
		return -E2BIG;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' ||
		    c == '\t')
			need += 2;
		else if (c < 0x20)
			need += 6;
		else
			need += 1;
	}
	/* one contiguous reservation, so the output is all or nothing */
	if (evbuffer_reserve_space(out, (ev_ssize_t)need, &vec, 1) != 1 || vec.iov_len < need)
		return -ENOMEM;
	p = vec.iov_base;
	*p++ = '"';
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		char e = 0;

		switch (c) {
		case '"':
			e = '"';
			break;
		case '\\':
			e = '\\';
			break;
		case '\b':
			e = 'b';
			break;
		case '\f':
			e = 'f';
			break;
		case '\n':
			e = 'n';
			break;
		case '\r':
			e = 'r';
			break;
		case '\t':
			e = 't';
			break;
		}
		if (e != 0) {
			*p++ = '\\';
			*p++ = e;
		} else if (c < 0x20) {
			memcpy(p, "\\u00", 4);
			p[4] = hex[c >> 4];
			p[5] = hex[c & 0xf];
			p += 6;
		} else {
			*p++ = (char)c;
		}
	}
	*p++ = '"';
	vec.iov_len = need;
	if (evbuffer_commit_space(out, &vec, 1) < 0)
		return -ENOMEM;
	return 0;
}

int
json_append_error(struct evbuffer *out, const char *error, const char *description)
{
	if (evbuffer_add_printf(out, "{\"error\":") < 0 ||
	    json_append_string(out, error, strlen(error)) < 0 ||
	    evbuffer_add_printf(out, ",\"error_description\":") < 0 ||
	    json_append_string(out, description, strlen(description)) < 0 ||
	    evbuffer_add(out, "}", 1) < 0)
		return -ENOMEM;
	return 0;
}
