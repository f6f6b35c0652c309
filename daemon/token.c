/*
 * Token results: the record a source hands the cache, and the one parser for
 * the JSON answers of token endpoints (IMDS, App Service, Entra, OAuth2).
 * Everything here treats the upstream as untrusted: sizes, characters and
 * lifetimes are bounded before a token reaches the cache.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "json.h"
#include "token.h"

/* A token answer has about ten members; 128 jsmn tokens leave ample room. */
#define TOKEN_MAX_JSON_TOKENS 128
/* Longest lifetime we believe; anything beyond is a broken upstream. */
#define TOKEN_MAX_LIFETIME (365 * 24 * 3600)
/* Longest trace or correlation id copied into a message. */
#define TOKEN_MAX_ID_LEN 64
/* Entra error_codes copied into a message. */
#define TOKEN_MAX_CODES 4

void
token_result_init(struct token_result *r)
{
	memset(r, 0, sizeof(*r));
	r->retry_after = -1;
}

void
token_result_start_failed(struct token_result *r, int error)
{
	token_result_init(r);
	r->error = error;
	snprintf(r->message, sizeof(r->message), "could not start the upstream request: %s",
		 strerror(-error));
}

void
token_result_clear(struct token_result *r)
{
	if (r->access_token != NULL) {
		OPENSSL_cleanse(r->access_token, r->token_len);
		free(r->access_token);
	}
	token_result_init(r);
}

/*
 * Copies src into dst[size] as printable ASCII: control characters become
 * spaces (Entra descriptions carry CR LF), other bytes '?'; truncates.
 */
static void
copy_printable(char *dst, size_t size, const char *src, size_t len)
{
	size_t i;

	if (size == 0)
		return;
	for (i = 0; i < len && i < size - 1; i++) {
		unsigned char c = (unsigned char)src[i];

		if (c >= 0x20 && c < 0x7f)
			dst[i] = (char)c;
		else if (c < 0x20)
			dst[i] = ' ';
		else
			dst[i] = '?';
	}
	dst[i] = '\0';
}

static int fail(struct token_result *r, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records our own error code and message; returns -EINVAL for the caller. */
static int
fail(struct token_result *r, const char *code, const char *fmt, ...)
{
	va_list ap;

	r->error = -EINVAL;
	snprintf(r->error_code, sizeof(r->error_code), "%s", code);
	va_start(ap, fmt);
	vsnprintf(r->message, sizeof(r->message), fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* The string at tok as printable ASCII in dst; "" when tok is not a string. */
static int
copy_string_member(const struct json_doc *doc, int tok, char *dst, size_t size)
{
	char *s;
	size_t len;
	int rc;

	dst[0] = '\0';
	if (tok < 0 || doc->tok[tok].type != JSMN_STRING)
		return 0;
	rc = json_string_dup(doc, tok, &s, &len);
	if (rc == -ENOMEM)
		return rc;
	if (rc < 0)
		return 0; /* a bad escape in a description is not worth failing on */
	copy_printable(dst, size, s, len);
	free(s);
	return 0;
}

/* Appends " name=value" to msg unless value is empty or already in msg. */
static void
append_id(char *msg, size_t size, const char *name, const char *value)
{
	size_t used = strlen(msg);
	size_t need;

	if (value[0] == '\0' || strstr(msg, value) != NULL)
		return;
	need = 1 + strlen(name) + 1 + strlen(value);
	if (need >= size)
		return;
	if (used + need >= size) {
		/* make room by cutting the description, the ids matter more */
		used = size - 1 - need;
		msg[used] = '\0';
	}
	snprintf(msg + used, size - used, " %s=%s", name, value);
}

/*
 * Entra's "error_codes" ([7000215], the AADSTS numbers) as "7000215,50011"
 * into out; "" when absent.  At most TOKEN_MAX_CODES codes.
 */
static void
error_codes(const struct json_doc *doc, char *out, size_t size)
{
	int arr = json_find(doc, 0, "error_codes");
	int tok, n;
	size_t used = 0;

	out[0] = '\0';
	if (arr < 0 || doc->tok[arr].type != JSMN_ARRAY)
		return;
	n = doc->tok[arr].size;
	tok = arr + 1;
	for (int i = 0; i < n && i < TOKEN_MAX_CODES; i++) {
		int64_t code;

		if (json_int64(doc, tok, &code) == 0 && code >= 0) {
			int w = snprintf(out + used, size - used, "%s%lld", used ? "," : "",
					 (long long)code);

			if (w < 0 || (size_t)w >= size - used) {
				out[used] = '\0';
				return;
			}
			used += (size_t)w;
		}
		tok = json_skip(doc, tok);
	}
}

/*
 * An error document: {"error":"code","error_description":"..."} (IMDS,
 * Entra, OAuth2), {"error":{"code":...,"message":...}} (Service Fabric),
 * {"statusCode":...,"message":...} (App Service).
 */
static int
parse_error(const struct json_doc *doc, int err, struct token_result *r)
{
	char trace_id[TOKEN_MAX_ID_LEN + 1];
	char correlation_id[TOKEN_MAX_ID_LEN + 1];
	char codes[TOKEN_MAX_ID_LEN + 1];
	int desc = -1;
	int corr;
	int rc;

	if (err >= 0 && doc->tok[err].type == JSMN_OBJECT) {
		rc = copy_string_member(doc, json_find(doc, err, "code"), r->error_code,
					sizeof(r->error_code));
		if (rc < 0)
			return rc;
		desc = json_find(doc, err, "message");
	} else {
		rc = copy_string_member(doc, err, r->error_code, sizeof(r->error_code));
		if (rc < 0)
			return rc;
	}
	if (r->error_code[0] == '\0')
		snprintf(r->error_code, sizeof(r->error_code), "upstream_error");

	if (desc < 0)
		desc = json_find(doc, 0, "error_description");
	if (desc < 0)
		desc = json_find(doc, 0, "message");
	rc = copy_string_member(doc, desc, r->message, sizeof(r->message));
	if (rc < 0)
		return rc;

	rc = copy_string_member(doc, json_find(doc, 0, "trace_id"), trace_id, sizeof(trace_id));
	if (rc < 0)
		return rc;
	corr = json_find(doc, 0, "correlation_id");
	if (corr < 0)
		corr = json_find(doc, 0, "correlationId");
	rc = copy_string_member(doc, corr, correlation_id, sizeof(correlation_id));
	if (rc < 0)
		return rc;
	error_codes(doc, codes, sizeof(codes));
	append_id(r->message, sizeof(r->message), "error_codes", codes);
	append_id(r->message, sizeof(r->message), "trace_id", trace_id);
	append_id(r->message, sizeof(r->message), "correlation_id", correlation_id);
	if (r->message[0] == '\0')
		snprintf(r->message, sizeof(r->message), "upstream returned an error");
	r->error = -EINVAL;
	return -EINVAL;
}

/* Visible ASCII only: a space, CR or LF in a token could split a header. */
static bool
token_chars_ok(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x21 || c > 0x7e)
			return false;
	}
	return true;
}

/* Reads an optional integer member: 0 and *present=false when absent. */
static int
read_int(const struct json_doc *doc, const char *key, bool *present, int64_t *out)
{
	int tok = json_find(doc, 0, key);
	int64_t v;
	int rc;

	*present = tok >= 0;
	if (tok < 0)
		return 0;
	rc = json_int64(doc, tok, &v);
	if (rc < 0)
		return rc;
	*out = v;
	return 0;
}

int
token_parse_response(const char *body, size_t len, int64_t now_epoch, struct token_result *r)
{
	jsmntok_t toks[TOKEN_MAX_JSON_TOKENS];
	struct json_doc doc;
	int64_t expires_in = 0, expires_on = 0, refresh_in = 0, lifetime;
	bool has_in, has_on, has_refresh;
	char *token = NULL;
	size_t token_len = 0;
	int tok;
	int rc;

	if (body == NULL || len == 0)
		return fail(r, "invalid_response", "upstream answer is empty");
	rc = json_parse(&doc, body, len, toks, TOKEN_MAX_JSON_TOKENS);
	if (rc == -E2BIG)
		return fail(r, "invalid_response", "upstream answer has too many JSON members");
	if (rc < 0)
		return fail(r, "invalid_response", "upstream answer is not a JSON object");

	tok = json_find(&doc, 0, "error");
	if (tok >= 0)
		return parse_error(&doc, tok, r);

	tok = json_find(&doc, 0, "token_type");
	if (tok >= 0) {
		char type[16];

		if (json_string_copy(&doc, tok, type, sizeof(type)) < 0 ||
		    strcasecmp(type, "Bearer") != 0)
			return fail(r, "invalid_response", "token_type is not Bearer");
	}

	if (read_int(&doc, "expires_in", &has_in, &expires_in) < 0)
		return fail(r, "invalid_response", "expires_in is not an integer");
	if (read_int(&doc, "expires_on", &has_on, &expires_on) < 0) {
		/* a date string (2017 App Service) is fine when expires_in says it all */
		if (!has_in)
			return fail(r, "invalid_response", "expires_on is not an integer");
		has_on = false;
		expires_on = 0;
	}
	if (read_int(&doc, "refresh_in", &has_refresh, &refresh_in) < 0)
		has_refresh = false; /* advisory only */

	if (has_in)
		lifetime = expires_in;
	else if (has_on)
		lifetime = expires_on > 0 && now_epoch >= 0 ? expires_on - now_epoch : -1;
	else
		return fail(r, "invalid_response", "answer has neither expires_in nor expires_on");
	if (lifetime <= 0)
		return fail(r, "invalid_response", "token is already expired (lifetime %lld s)",
			    (long long)lifetime);
	if (lifetime > TOKEN_MAX_LIFETIME)
		return fail(r, "invalid_response", "token lifetime %lld s is longer than a year",
			    (long long)lifetime);
	if (!has_refresh || refresh_in <= 0 || refresh_in >= lifetime)
		refresh_in = 0;

	tok = json_find(&doc, 0, "access_token");
	if (tok < 0 || doc.tok[tok].type != JSMN_STRING)
		return fail(r, "invalid_response", "answer has no access_token");
	/* the escaped form is never shorter than the token: reject early */
	if (doc.tok[tok].end - doc.tok[tok].start > 6 * TOKEN_MAX_LEN)
		return fail(r, "invalid_response", "access_token is longer than %d bytes",
			    TOKEN_MAX_LEN);
	rc = json_string_dup(&doc, tok, &token, &token_len);
	if (rc == -ENOMEM) {
		r->error = -ENOMEM;
		snprintf(r->error_code, sizeof(r->error_code), "internal_error");
		snprintf(r->message, sizeof(r->message), "out of memory");
		return -ENOMEM;
	}
	if (rc < 0)
		return fail(r, "invalid_response", "access_token is not a valid string");
	if (token_len == 0) {
		free(token);
		return fail(r, "invalid_response", "access_token is empty");
	}
	if (token_len > TOKEN_MAX_LEN || !token_chars_ok(token, token_len)) {
		OPENSSL_cleanse(token, token_len);
		free(token);
		if (token_len > TOKEN_MAX_LEN)
			return fail(r, "invalid_response", "access_token is longer than %d bytes",
				    TOKEN_MAX_LEN);
		return fail(r, "invalid_response",
			    "access_token has characters outside visible ASCII");
	}

	if (r->access_token != NULL) {
		OPENSSL_cleanse(r->access_token, r->token_len);
		free(r->access_token);
	}
	r->error = 0;
	r->error_code[0] = '\0';
	r->message[0] = '\0';
	r->access_token = token;
	r->token_len = token_len;
	r->expires_in = lifetime;
	r->expires_on = has_on ? expires_on : 0;
	r->refresh_in = refresh_in;
	return 0;
}
