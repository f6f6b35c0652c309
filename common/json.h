/* JSON: reading documents with jsmn (writing is in json_write.h). */
#ifndef BEARERD_JSON_H
#define BEARERD_JSON_H

#include <stddef.h>
#include <stdint.h>

#define JSMN_HEADER
#define JSMN_STRICT
#include <jsmn.h>

/* A parsed document; tok points into caller storage, js is not copied. */
struct json_doc {
	const char *js;
	size_t len;
	jsmntok_t *tok;
	int ntok;
};

/*
 * Tokenizes js into toks (at most max).  Returns 0 when the document is one
 * JSON object, -EINVAL for malformed input or another top-level type, -E2BIG
 * when it has more than max tokens.
 */
int json_parse(struct json_doc *doc, const char *js, size_t len, jsmntok_t *toks, int max);

/* Same for a document that is one JSON array. */
int json_parse_array(struct json_doc *doc, const char *js, size_t len, jsmntok_t *toks, int max);

/*
 * Counts the tokens of js, to size toks for a document without a fixed bound
 * (bearerctl's status and JWT claims).  Only what jsmn refuses while counting
 * gives -EINVAL: json_parse still checks the grammar.  -E2BIG when js is
 * longer than INT_MAX.
 */
int json_count(const char *js, size_t len);

/* Index of the value of key in the object at token obj, or -1. */
int json_find(const struct json_doc *doc, int obj, const char *key);

/* Index of the token after tok and everything nested in it. */
int json_skip(const struct json_doc *doc, int tok);

/*
 * Copies the string at tok, unescaped, NUL-terminated, into a new allocation.
 * Returns 0, -EINVAL (not a string, bad escape, embedded NUL), -ENOMEM.
 */
int json_string_dup(const struct json_doc *doc, int tok, char **out, size_t *out_len);

/* Same into out[size]; -ENOSPC when it does not fit. */
int json_string_copy(const struct json_doc *doc, int tok, char *out, size_t size);

/*
 * Any text (not a parsed document) with every JSON escape sequence replaced
 * by what it stands for and the rest kept as is, so that each JSON string in
 * it appears decoded: for searching an upstream's error text for a secret
 * (secret_in_text).  Lenient where json_string_dup is strict: a lone
 * surrogate is encoded as it is, \u0000 gives a NUL, an escape JSON does not
 * define gives its character, and a \u without four hex digits keeps its
 * backslash.  *out is NUL-terminated, never longer than text; 0 or -ENOMEM.
 */
int json_unescape_text(const char *text, size_t len, char **out, size_t *out_len);

/*
 * Reads an integer given as a JSON number or as a string of decimal digits
 * (optional leading '-'), as Azure sends both.  -EINVAL for anything else
 * (fractions, exponents, junk), -ERANGE on overflow.
 */
int json_int64(const struct json_doc *doc, int tok, int64_t *out);

#endif
