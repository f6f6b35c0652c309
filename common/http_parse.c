/*
 * Strict, bounded HTTP/1.1 request-head parsing (RFC 9112) and the decoding of
 * query strings and path segments.  Debian packages no maintained HTTP/1.1
 * parser library, so we write this one ourselves: it accepts only what the RFC
 * allows (no bare CR or LF, no obs-fold, no whitespace before ':', one framing
 * per message) because every leniency here is a request-smuggling risk for
 * the proxy.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>

#include "hex.h"
#include "http_parse.h"

/* Character classes: token characters, field-value characters, request-target characters. */
#define C_TCHAR	 1
#define C_VALUE	 2
#define C_TARGET 4

static const unsigned char ctab[256] = {
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    2,
    0,
    0,
    0,
    0,
    0,
    0, /* 0x00: HTAB only */
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0, /* 0x10 */
    2,
    7,
    6,
    7,
    7,
    7,
    7,
    7,
    6,
    6,
    7,
    7,
    6,
    7,
    7,
    6, /* 0x20: SP !"#$%&'()*+,-./ */
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    6,
    6,
    6,
    6,
    6,
    6, /* 0x30: 0-9 :;<=>? */
    6,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7, /* 0x40: @A-O */
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    6,
    6,
    6,
    7,
    7, /* 0x50: P-Z [\]^_ */
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7, /* 0x60: `a-o */
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    6,
    7,
    6,
    7,
    0, /* 0x70: p-z {|}~ DEL */
    /* 0x80-0xff: obs-text */
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
};

static unsigned char
lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c | 0x20) : c;
}

/* ASCII case-insensitive comparison of s[0..len) with the NUL-terminated lower-case lit. */
static bool
eq_nocase(const char *s, size_t len, const char *lit)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (lit[i] == '\0' || lower((unsigned char)s[i]) != (unsigned char)lit[i])
			return false;
	return lit[len] == '\0';
}

static bool
is_ows(unsigned char c)
{
	return c == ' ' || c == '\t';
}

/*
 * "HTTP/" DIGIT "." DIGIT CRLF: returns its length (10), 0 when the bytes so
 * far are a valid prefix, -EINVAL or -ENOTSUP.
 */
static int
parse_version(const unsigned char *p, const unsigned char *end, int *minor)
{
	static const char pattern[] = "HTTP/9.9\r\n";
	size_t avail = (size_t)(end - p), i;

	for (i = 0; i < avail && i < sizeof(pattern) - 1; i++) {
		if (pattern[i] == '9') {
			if (p[i] < '0' || p[i] > '9')
				return -EINVAL;
		} else if (p[i] != (unsigned char)pattern[i]) {
			return -EINVAL;
		}
	}
	if (i < sizeof(pattern) - 1)
		return 0;
	if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
		return -ENOTSUP;
	*minor = p[7] - '0';
	return (int)sizeof(pattern) - 1;
}

/* Content-Length: 1*DIGIT, no sign, no list, no overflow. */
static int
parse_content_length(const char *v, size_t len, int64_t *out)
{
	int64_t n = 0;
	size_t i;

	if (len == 0)
		return -EINVAL;
	for (i = 0; i < len; i++) {
		int d = (unsigned char)v[i] - '0';

		if (d < 0 || d > 9)
			return -EINVAL;
		if (n > (INT64_MAX - d) / 10)
			return -EINVAL;
		n = n * 10 + d;
	}
	*out = n;
	return 0;
}

/* Sets *close / *keep_alive for the tokens of one Connection field value. */
static void
scan_connection(const char *v, size_t len, bool *close, bool *keep_alive)
{
	size_t i = 0;

	while (i < len) {
		size_t start, end;

		while (i < len && (is_ows((unsigned char)v[i]) || v[i] == ','))
			i++;
		start = i;
		while (i < len && v[i] != ',')
			i++;
		end = i;
		while (end > start && is_ows((unsigned char)v[end - 1]))
			end--;
		if (eq_nocase(v + start, end - start, "close"))
			*close = true;
		else if (eq_nocase(v + start, end - start, "keep-alive"))
			*keep_alive = true;
	}
}

/* Derives content_length, chunked and keep_alive; rejects ambiguous framing. */
static int
derive_framing(struct http_head *h, bool response)
{
	bool conn_close = false, conn_keep_alive = false, have_host = false, have_te = false;
	int i;

	h->content_length = -1;
	h->chunked = 0;
	for (i = 0; i < h->nheaders; i++) {
		const struct http_header *f = &h->headers[i];
		int64_t cl;

		switch (f->name_len) {
		case 4:
			if (response || !eq_nocase(f->name, 4, "host"))
				break;
			if (have_host)
				return -EINVAL;
			have_host = true;
			break;
		case 10:
			if (eq_nocase(f->name, 10, "connection"))
				scan_connection(f->value, f->value_len, &conn_close,
						&conn_keep_alive);
			break;
		case 14:
			if (!eq_nocase(f->name, 14, "content-length"))
				break;
			if (parse_content_length(f->value, f->value_len, &cl) < 0)
				return -EINVAL;
			if (h->content_length >= 0 && h->content_length != cl)
				return -EINVAL;
			h->content_length = cl;
			break;
		case 17:
			if (!eq_nocase(f->name, 17, "transfer-encoding"))
				break;
			/* Only a single "chunked": we implement no other coding. */
			if (have_te || !eq_nocase(f->value, f->value_len, "chunked"))
				return -EINVAL;
			have_te = true;
			break;
		default:
			break;
		}
	}
	if (have_te) {
		if (h->content_length >= 0 || h->minor == 0)
			return -EINVAL;
		h->chunked = 1;
	}
	if (h->minor == 0)
		h->keep_alive = conn_keep_alive && !conn_close;
	else
		h->keep_alive = !conn_close;
	return 0;
}

/*
 * *( field-line CRLF ) CRLF at p: returns the bytes it takes (> 0), 0 when more
 * input is needed, -EINVAL or -E2BIG.
 */
static int
parse_fields(const unsigned char *p, const unsigned char *end, struct http_head *out)
{
	const unsigned char *begin = p, *start, *vend;
	int n = 0;

	for (;;) {
		struct http_header *h;

		if (p == end)
			return 0;
		if (*p == '\r') {
			if (p + 1 == end)
				return 0;
			if (p[1] != '\n')
				return -EINVAL;
			p += 2;
			break;
		}
		if (n == HTTP_MAX_HEADERS)
			return -E2BIG;
		h = &out->headers[n];

		/* field-name ":" : a leading SP/HTAB (obs-fold) or space before ':' fails here */
		start = p;
		while (p < end && (ctab[*p] & C_TCHAR))
			p++;
		if (p == end)
			return 0;
		if (*p != ':' || p == start)
			return -EINVAL;
		h->name = (const char *)start;
		h->name_len = (size_t)(p - start);
		p++;

		/* OWS field-value OWS CRLF */
		while (p < end && is_ows(*p))
			p++;
		start = p;
		while (p < end && (ctab[*p] & C_VALUE))
			p++;
		if (p == end)
			return 0;
		if (*p != '\r')
			return -EINVAL;
		if (p + 1 == end)
			return 0;
		if (p[1] != '\n')
			return -EINVAL;
		vend = p;
		while (vend > start && is_ows(vend[-1]))
			vend--;
		h->value = (const char *)start;
		h->value_len = (size_t)(vend - start);
		p += 2;
		n++;
	}
	out->nheaders = n;
	return (int)(p - begin);
}

int
http_parse_request_head(const char *buf, size_t len, struct http_head *out)
{
	const unsigned char *p = (const unsigned char *)buf, *end, *start;
	int r;

	if (len > INT_MAX)
		len = INT_MAX;
	end = p + len;

	/* method SP */
	start = p;
	while (p < end && (ctab[*p] & C_TCHAR))
		p++;
	if (p == end)
		return 0;
	if (*p != ' ' || p == start)
		return -EINVAL;
	out->method = (const char *)start;
	out->method_len = (size_t)(p - start);
	p++;

	/* request-target SP: visible ASCII only */
	start = p;
	while (p < end && (ctab[*p] & C_TARGET))
		p++;
	if (p == end)
		return 0;
	if (*p != ' ' || p == start)
		return -EINVAL;
	out->target = (const char *)start;
	out->target_len = (size_t)(p - start);
	p++;

	/* HTTP-version CRLF */
	r = parse_version(p, end, &out->minor);
	if (r <= 0)
		return r;
	p += r;

	r = parse_fields(p, end, out);
	if (r <= 0)
		return r;
	p += r;
	r = derive_framing(out, false);
	if (r < 0)
		return r;
	return (int)(p - (const unsigned char *)buf);
}

int
http_parse_response_head(const char *buf, size_t len, struct http_head *out)
{
	const unsigned char *p = (const unsigned char *)buf, *end, *start;
	int r, i;

	if (len > INT_MAX)
		len = INT_MAX;
	end = p + len;

	/* HTTP-version SP 3DIGIT SP reason-phrase CRLF */
	for (i = 0; i < 9 && p + i < end; i++) {
		if (i == 7 ? p[i] != '0' && p[i] != '1' : p[i] != (unsigned char)"HTTP/1.x "[i])
			return -EINVAL;
	}
	if (i < 9)
		return 0;
	out->minor = p[7] - '0';
	p += 9;
	out->status = 0;
	for (i = 0; i < 3; i++, p++) {
		if (p == end)
			return 0;
		if (*p < '0' || *p > '9')
			return -EINVAL;
		out->status = out->status * 10 + (*p - '0');
	}
	if (out->status < 100)
		return -EINVAL;
	if (p == end)
		return 0;
	if (*p != ' ' && *p != '\r')
		return -EINVAL;
	if (*p == ' ')
		p++;
	start = p;
	while (p < end && (ctab[*p] & C_VALUE))
		p++;
	if (p == end || (p + 1 == end && *p == '\r'))
		return 0;
	if (p[0] != '\r' || p[1] != '\n')
		return -EINVAL;
	out->method = NULL;
	out->method_len = 0;
	out->target = (const char *)start; /* the reason phrase */
	out->target_len = (size_t)(p - start);
	p += 2;

	r = parse_fields(p, end, out);
	if (r <= 0)
		return r;
	p += r;
	r = derive_framing(out, true);
	if (r < 0)
		return r;
	return (int)(p - (const unsigned char *)buf);
}

const struct http_header *
http_head_find(const struct http_head *h, const char *name)
{
	size_t len = strlen(name);
	int i;

	for (i = 0; i < h->nheaders; i++) {
		const struct http_header *f = &h->headers[i];
		size_t j;

		if (f->name_len != len)
			continue;
		for (j = 0; j < len; j++)
			if (lower((unsigned char)f->name[j]) != lower((unsigned char)name[j]))
				break;
		if (j == len)
			return f;
	}
	return NULL;
}

/*
 * Decodes the next character of a percent-encoded string at in[*pos..len):
 * returns the byte (0..255), or -EINVAL for a bad escape or a NUL.
 */
static int
next_decoded(const char *in, size_t len, size_t *pos, bool plus_is_space)
{
	unsigned char c = (unsigned char)in[*pos];
	int b;

	if (c == '%') {
		if (len - *pos < 3)
			return -EINVAL;
		b = hex_byte(in + *pos + 1);
		if (b <= 0) /* a bad escape, or %00 */
			return -EINVAL;
		*pos += 3;
		return b;
	}
	*pos += 1;
	if (c == '\0')
		return -EINVAL;
	if (c == '+' && plus_is_space)
		return ' ';
	return c;
}

/* Decodes in[0..len) into out (NUL-terminated); out may be NULL to validate only. */
static int
decode(const char *in, size_t len, bool plus_is_space, char *out, size_t out_size, size_t *out_len)
{
	size_t pos = 0, n = 0;

	while (pos < len) {
		int c = next_decoded(in, len, &pos, plus_is_space);

		if (c < 0)
			return c;
		if (out != NULL) {
			if (n + 1 >= out_size)
				return -ENOSPC;
			out[n] = (char)c;
		}
		n++;
	}
	if (out != NULL) {
		if (out_size == 0)
			return -ENOSPC;
		out[n] = '\0';
	}
	if (out_len != NULL)
		*out_len = n;
	return 0;
}

/* 1 if the form-encoded key decodes to name, 0 if not, -EINVAL if it is malformed. */
static int
key_matches(const char *key, size_t len, const char *name)
{
	size_t pos = 0, i = 0;
	bool match = true;

	while (pos < len) {
		int c = next_decoded(key, len, &pos, true);

		if (c < 0)
			return c;
		if (match && (name[i] == '\0' || (unsigned char)name[i] != c))
			match = false;
		if (match)
			i++;
	}
	return match && name[i] == '\0';
}

/* http_query_get and http_query_get_rfc3986: plus_is_space says what '+' in a value is. */
static int
query_get(const char *query, size_t query_len, const char *name, bool plus_is_space, char *out,
	  size_t out_size, int *count)
{
	const char *p = query, *end = query + query_len;
	int found = 0, r;

	while (p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *pair_end = amp != NULL ? amp : end;
		const char *eq = memchr(p, '=', (size_t)(pair_end - p));
		const char *key_end = eq != NULL ? eq : pair_end;
		const char *val = eq != NULL ? eq + 1 : pair_end;

		if (pair_end > p) {
			r = key_matches(p, (size_t)(key_end - p), name);
			if (r < 0)
				return r;
			if (r > 0) {
				/* The first value is returned; later ones are only validated and
				 * counted. */
				r = decode(val, (size_t)(pair_end - val), plus_is_space,
					   found == 0 ? out : NULL, out_size, NULL);
				if (r < 0)
					return r;
				found++;
			}
		}
		p = pair_end + (amp != NULL);
	}
	if (count != NULL)
		*count = found;
	return found > 0 ? 0 : -ENOENT;
}

int
http_query_get(const char *query, size_t query_len, const char *name, char *out, size_t out_size,
	       int *count)
{
	return query_get(query, query_len, name, true, out, out_size, count);
}

int
http_query_get_rfc3986(const char *query, size_t query_len, const char *name, char *out,
		       size_t out_size, int *count)
{
	return query_get(query, query_len, name, false, out, out_size, count);
}

int
http_percent_decode(const char *in, size_t len, char *out, size_t out_size, size_t *out_len)
{
	return decode(in, len, false, out, out_size, out_len);
}
