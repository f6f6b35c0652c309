/*
 * JSON reading: the one translation unit that compiles jsmn, a strict grammar
 * check on top of its tokens, and the small readers the daemon and the client
 * need (unescaped strings, integers).  Only libc and jsmn: it is in common/,
 * which libbearer and bearerctl link as well.
 */
#define JSMN_STRICT
#include <jsmn.h>
/*
 * jsmn.h is guarded by JSMN_H as a whole, so json.h's JSMN_HEADER include
 * below is a no-op here and the implementation above stays compiled.
 */
#include "hex.h"
#include "json.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Deeper nesting than any token endpoint sends is refused, and bounds recursion. */
#define JSON_MAX_DEPTH 32

static bool
json_is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t
json_skip_ws(const char *js, size_t pos, size_t end)
{
	while (pos < end && json_is_ws(js[pos]))
		pos++;
	return pos;
}

/* Where a token's text begins and ends, including the quotes of a string. */
static size_t
json_raw_start(const jsmntok_t *t)
{
	return (size_t)t->start - (t->type == JSMN_STRING ? 1 : 0);
}

static size_t
json_raw_end(const jsmntok_t *t)
{
	return (size_t)t->end + (t->type == JSMN_STRING ? 1 : 0);
}

/* jsmn accepts any run of printable bytes as a primitive: hold it to the grammar. */
static bool
json_primitive_ok(const char *p, size_t n)
{
	size_t i = 0;

	if ((n == 4 && memcmp(p, "true", 4) == 0) || (n == 5 && memcmp(p, "false", 5) == 0) ||
	    (n == 4 && memcmp(p, "null", 4) == 0))
		return true;
	if (i < n && p[i] == '-')
		i++;
	if (i >= n)
		return false;
	if (p[i] == '0') {
		i++;
	} else if (p[i] >= '1' && p[i] <= '9') {
		while (i < n && p[i] >= '0' && p[i] <= '9')
			i++;
	} else {
		return false;
	}
	if (i < n && p[i] == '.') {
		size_t digits = ++i;
		while (i < n && p[i] >= '0' && p[i] <= '9')
			i++;
		if (i == digits)
			return false;
	}
	if (i < n && (p[i] == 'e' || p[i] == 'E')) {
		size_t digits;
		i++;
		if (i < n && (p[i] == '+' || p[i] == '-'))
			i++;
		digits = i;
		while (i < n && p[i] >= '0' && p[i] <= '9')
			i++;
		if (i == digits)
			return false;
	}
	return i == n;
}

/* jsmn lets raw control characters through inside strings; JSON does not. */
static bool
json_string_chars_ok(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)p[i] < 0x20)
			return false;
	}
	return true;
}

static int json_check_value(const char *js, const jsmntok_t *tok, int ntok, int i, int depth,
			    int *next);

/*
 * Checks the container at i: every member starts exactly where the grammar
 * says (after '{', ',' or ':' and whitespace), which catches the missing and
 * extra separators jsmn tolerates.
 */
static int
json_check_container(const char *js, const jsmntok_t *tok, int ntok, int i, int depth, int *next)
{
	const jsmntok_t *t = &tok[i];
	bool object = t->type == JSMN_OBJECT;
	size_t pos = (size_t)t->start + 1;
	size_t end = (size_t)t->end - 1;
	int j = i + 1;
	int r;

	if (depth >= JSON_MAX_DEPTH)
		return -EINVAL;
	for (int k = 0; k < t->size; k++) {
		pos = json_skip_ws(js, pos, end);
		if (k > 0) {
			if (pos >= end || js[pos] != ',')
				return -EINVAL;
			pos = json_skip_ws(js, pos + 1, end);
		}
		if (object) {
			if (j >= ntok || tok[j].type != JSMN_STRING || tok[j].size != 1 ||
			    json_raw_start(&tok[j]) != pos)
				return -EINVAL;
			if (!json_string_chars_ok(js + tok[j].start,
						  (size_t)(tok[j].end - tok[j].start)))
				return -EINVAL;
			pos = json_skip_ws(js, json_raw_end(&tok[j]), end);
			if (pos >= end || js[pos] != ':')
				return -EINVAL;
			pos = json_skip_ws(js, pos + 1, end);
			j++;
		}
		if (j >= ntok || json_raw_start(&tok[j]) != pos)
			return -EINVAL;
		pos = json_raw_end(&tok[j]);
		r = json_check_value(js, tok, ntok, j, depth + 1, &j);
		if (r < 0)
			return r;
	}
	if (json_skip_ws(js, pos, end) != end)
		return -EINVAL;
	*next = j;
	return 0;
}

static int
json_check_value(const char *js, const jsmntok_t *tok, int ntok, int i, int depth, int *next)
{
	const jsmntok_t *t = &tok[i];

	switch (t->type) {
	case JSMN_OBJECT:
	case JSMN_ARRAY:
		return json_check_container(js, tok, ntok, i, depth, next);
	case JSMN_STRING:
		if (t->size != 0 ||
		    !json_string_chars_ok(js + t->start, (size_t)(t->end - t->start)))
			return -EINVAL;
		break;
	case JSMN_PRIMITIVE:
		if (t->size != 0 || !json_primitive_ok(js + t->start, (size_t)(t->end - t->start)))
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	*next = i + 1;
	return 0;
}

/* json_parse and json_parse_array: the document's top level must be type. */
static int
json_parse_type(struct json_doc *doc, const char *js, size_t len, jsmntok_t *toks, int max,
		jsmntype_t type)
{
	jsmn_parser p;
	size_t pos;
	int n, next, r;

	if (max <= 0 || len > INT_MAX)
		return -E2BIG;
	jsmn_init(&p);
	n = jsmn_parse(&p, js, len, toks, (unsigned int)max);
	if (n == JSMN_ERROR_NOMEM)
		return -E2BIG;
	if (n <= 0 || toks[0].type != type)
		return -EINVAL;
	pos = json_skip_ws(js, 0, len);
	if (pos != (size_t)toks[0].start)
		return -EINVAL;
	r = json_check_value(js, toks, n, 0, 0, &next);
	if (r < 0)
		return r;
	if (next != n || json_skip_ws(js, (size_t)toks[0].end, len) != len)
		return -EINVAL;
	doc->js = js;
	doc->len = len;
	doc->tok = toks;
	doc->ntok = n;
	return 0;
}

int
json_parse(struct json_doc *doc, const char *js, size_t len, jsmntok_t *toks, int max)
{
	return json_parse_type(doc, js, len, toks, max, JSMN_OBJECT);
}

int
json_parse_array(struct json_doc *doc, const char *js, size_t len, jsmntok_t *toks, int max)
{
	return json_parse_type(doc, js, len, toks, max, JSMN_ARRAY);
}

int
json_count(const char *js, size_t len)
{
	jsmn_parser p;
	int n;

	if (len > INT_MAX)
		return -E2BIG;
	jsmn_init(&p);
	n = jsmn_parse(&p, js, len, NULL, 0);
	return n < 0 ? -EINVAL : n;
}

int
json_skip(const struct json_doc *doc, int tok)
{
	int end, j;

	if (tok < 0 || tok >= doc->ntok)
		return doc->ntok;
	/* tokens are in document order: nested ones start before the container ends */
	end = doc->tok[tok].end;
	for (j = tok + 1; j < doc->ntok && doc->tok[j].start < end; j++)
		continue;
	return j;
}

static int
json_hex4(const char *p, unsigned *out)
{
	unsigned v = 0;

	for (int i = 0; i < 4; i++) {
		int h = hex_value(p[i]);

		if (h < 0)
			return -EINVAL;
		v = v << 4 | (unsigned)h;
	}
	*out = v;
	return 0;
}

/*
 * The escape sequence at s[0..n) (s[0] is the backslash): its code point in
 * *cp and its length in *used.  A \u escape of a high surrogate followed by
 * one of a low surrogate is joined into one code point; anything else, a lone
 * surrogate or \u0000 included, is given as written, for the caller to judge.
 * -EINVAL when s does not start with an escape JSON defines.
 */
static int
json_escape(const char *s, size_t n, unsigned *cp, size_t *used)
{
	unsigned lo;

	if (n < 2)
		return -EINVAL;
	switch (s[1]) {
	case '"':
	case '\\':
	case '/':
		*cp = (unsigned char)s[1];
		break;
	case 'b':
		*cp = '\b';
		break;
	case 'f':
		*cp = '\f';
		break;
	case 'n':
		*cp = '\n';
		break;
	case 'r':
		*cp = '\r';
		break;
	case 't':
		*cp = '\t';
		break;
	case 'u':
		if (n < 6 || json_hex4(s + 2, cp) < 0)
			return -EINVAL;
		if (*cp >= 0xd800 && *cp <= 0xdbff && n >= 12 && s[6] == '\\' && s[7] == 'u' &&
		    json_hex4(s + 8, &lo) == 0 && lo >= 0xdc00 && lo <= 0xdfff) {
			*cp = 0x10000 + ((*cp - 0xd800) << 10) + (lo - 0xdc00);
			*used = 12;
			return 0;
		}
		*used = 6;
		return 0;
	default:
		return -EINVAL;
	}
	*used = 2;
	return 0;
}

/* Writes cp as UTF-8 at o (unless o is NULL) and returns its length. */
static size_t
json_put_utf8(char *o, unsigned cp)
{
	size_t len = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;

	if (o == NULL)
		return len;
	switch (len) {
	case 1:
		o[0] = (char)cp;
		break;
	case 2:
		o[0] = (char)(0xc0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3f));
		break;
	case 3:
		o[0] = (char)(0xe0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		break;
	default:
		o[0] = (char)(0xf0 | (cp >> 18));
		o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[3] = (char)(0x80 | (cp & 0x3f));
		break;
	}
	return len;
}

/*
 * Decodes the string body s[0..n) into out (when not NULL; the caller made
 * room for n bytes, as no escape grows when decoded) and reports the decoded
 * length.  With out NULL it only validates and measures.  Strict: an unknown
 * escape, a lone surrogate, \u0000 or a raw NUL fails.
 */
static int
json_unescape(const char *s, size_t n, char *out, size_t *out_len)
{
	size_t i = 0, o = 0, used;
	unsigned cp;

	while (i < n) {
		if (s[i] != '\\') {
			if (s[i] == '\0')
				return -EINVAL;
			if (out != NULL)
				out[o] = s[i];
			o++;
			i++;
			continue;
		}
		if (json_escape(s + i, n - i, &cp, &used) < 0 || cp == 0 ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return -EINVAL;
		i += used;
		o += json_put_utf8(out != NULL ? out + o : NULL, cp);
	}
	*out_len = o;
	return 0;
}

int
json_unescape_text(const char *text, size_t len, char **out, size_t *out_len)
{
	char *buf = malloc(len + 1), *o = buf;
	size_t i = 0, used;
	unsigned cp;

	if (buf == NULL)
		return -ENOMEM;
	while (i < len) {
		if (text[i] != '\\' || i + 1 >= len) {
			*o++ = text[i++];
		} else if (json_escape(text + i, len - i, &cp, &used) == 0) {
			o += json_put_utf8(o, cp);
			i += used;
		} else if (text[i + 1] == 'u') {
			*o++ = text[i++]; /* not four hex digits: the backslash stays */
		} else {
			*o++ = text[i + 1]; /* an escape JSON does not define: its character */
			i += 2;
		}
	}
	*o = '\0';
	*out = buf;
	*out_len = (size_t)(o - buf);
	return 0;
}

static int
json_string_raw(const struct json_doc *doc, int tok, const char **s, size_t *n)
{
	const jsmntok_t *t;

	if (tok < 0 || tok >= doc->ntok)
		return -EINVAL;
	t = &doc->tok[tok];
	if (t->type != JSMN_STRING)
		return -EINVAL;
	*s = doc->js + t->start;
	*n = (size_t)(t->end - t->start);
	return 0;
}

int
json_find(const struct json_doc *doc, int obj, const char *key)
{
	size_t klen = strlen(key);
	int i, size;

	if (obj < 0 || obj >= doc->ntok || doc->tok[obj].type != JSMN_OBJECT)
		return -1;
	size = doc->tok[obj].size;
	i = obj + 1;
	for (int k = 0; k < size && i + 1 < doc->ntok; k++) {
		const char *s;
		size_t n, dlen;
		char buf[256];

		if (json_string_raw(doc, i, &s, &n) < 0)
			return -1;
		if (memchr(s, '\\', n) == NULL) {
			if (n == klen && memcmp(s, key, n) == 0)
				return i + 1;
		} else if (n < sizeof(buf) && json_unescape(s, n, buf, &dlen) == 0) {
			/* an escaped key still names the same member */
			if (dlen == klen && memcmp(buf, key, dlen) == 0)
				return i + 1;
		}
		i = json_skip(doc, i + 1);
	}
	return -1;
}

/* The string at tok: its text as written, and its length once unescaped (validated). */
static int
json_string_measure(const struct json_doc *doc, int tok, const char **s, size_t *n, size_t *dlen)
{
	int r = json_string_raw(doc, tok, s, n);

	return r < 0 ? r : json_unescape(*s, *n, NULL, dlen);
}

int
json_string_dup(const struct json_doc *doc, int tok, char **out, size_t *out_len)
{
	const char *s;
	size_t n, dlen;
	char *buf;
	int r;

	r = json_string_measure(doc, tok, &s, &n, &dlen);
	if (r < 0)
		return r;
	buf = malloc(dlen + 1);
	if (buf == NULL)
		return -ENOMEM;
	json_unescape(s, n, buf, &dlen);
	buf[dlen] = '\0';
	*out = buf;
	if (out_len != NULL)
		*out_len = dlen;
	return 0;
}

int
json_string_copy(const struct json_doc *doc, int tok, char *out, size_t size)
{
	const char *s;
	size_t n, dlen;
	int r;

	r = json_string_measure(doc, tok, &s, &n, &dlen);
	if (r < 0)
		return r;
	if (dlen >= size)
		return -ENOSPC;
	json_unescape(s, n, out, &dlen);
	out[dlen] = '\0';
	return 0;
}

int
json_int64(const struct json_doc *doc, int tok, int64_t *out)
{
	const jsmntok_t *t;
	const char *p;
	size_t n, i = 0;
	bool neg = false;
	uint64_t v = 0, limit;

	if (tok < 0 || tok >= doc->ntok)
		return -EINVAL;
	t = &doc->tok[tok];
	if (t->type != JSMN_STRING && t->type != JSMN_PRIMITIVE)
		return -EINVAL;
	p = doc->js + t->start;
	n = (size_t)(t->end - t->start);
	if (n > 0 && p[0] == '-') {
		neg = true;
		i++;
	}
	if (i >= n)
		return -EINVAL;
	limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (; i < n; i++) {
		unsigned d;

		if (p[i] < '0' || p[i] > '9')
			return -EINVAL;
		d = (unsigned)(p[i] - '0');
		if (v > (limit - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	if (neg)
		*out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
	else
		*out = (int64_t)v;
	return 0;
}
