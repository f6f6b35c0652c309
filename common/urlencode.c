/*
 * Percent-encoding (RFC 3986) for query strings, form bodies and path
 * segments: the daemon's requests upstream and the client's paths to bearerd.
 */
#include <stdint.h>
#include <stdlib.h>

#include "urlencode.h"

size_t
url_encode_into(char *out, const char *s, size_t len, unsigned flags)
{
	const char *hex = (flags & URLENC_LOWER) ? "0123456789abcdef" : "0123456789ABCDEF";
	char *o = out;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '.' || c == '_' || c == '~') {
			*o++ = (char)c;
		} else if (c == ' ' && (flags & URLENC_PLUS)) {
			*o++ = '+';
		} else {
			*o++ = '%';
			*o++ = hex[c >> 4];
			*o++ = hex[c & 15];
		}
	}
	*o = '\0';
	return (size_t)(o - out);
}

char *
url_encode(const char *s, size_t len, unsigned flags)
{
	char *out;

	if (len > (SIZE_MAX - 1) / 3)
		return NULL;
	out = malloc(3 * len + 1);
	if (out != NULL)
		url_encode_into(out, s, len, flags);
	return out;
}
