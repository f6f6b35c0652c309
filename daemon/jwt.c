/*
 * JWT: RS256 compact JWS signing and verification for the dev issuer, and
 * splitting a token into its decoded parts.  The cryptography goes through
 * OpenSSL 3's EVP interface; base64url is common/base64.c.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "base64.h"
#include "json.h"
#include "jwt.h"
#include "wipe.h"

/* Longest token we handle; far above any real access token. */
#define JWT_MAX_LEN BASE64_MAX_LEN

/* The positions of the two dots of a compact JWS; -EINVAL unless exactly two. */
static int
jwt_split(const char *token, size_t len, size_t *dot1, size_t *dot2)
{
	const char *a, *b;

	if (len > JWT_MAX_LEN)
		return -E2BIG;
	a = memchr(token, '.', len);
	if (a == NULL)
		return -EINVAL;
	b = memchr(a + 1, '.', len - (size_t)(a + 1 - token));
	if (b == NULL)
		return -EINVAL;
	if (memchr(b + 1, '.', len - (size_t)(b + 1 - token)) != NULL)
		return -EINVAL;
	*dot1 = (size_t)(a - token);
	*dot2 = (size_t)(b - token);
	return 0;
}

int
jwt_sign_rs256(EVP_PKEY *key, const char *header_json, const char *claims_json, char **out)
{
	EVP_MD_CTX *ctx = NULL;
	EVP_PKEY_CTX *pctx = NULL;
	char *h = NULL, *c = NULL, *s = NULL, *tok = NULL;
	unsigned char *sig = NULL;
	size_t hlen, clen, slen, siglen = 0, toklen = 0;
	int r;

	if (!EVP_PKEY_is_a(key, "RSA"))
		return -EINVAL;
	r = base64url_encode(header_json, strlen(header_json), &h);
	if (r < 0)
		goto out;
	r = base64url_encode(claims_json, strlen(claims_json), &c);
	if (r < 0)
		goto out;
	hlen = strlen(h);
	clen = strlen(c);

	/* header.claims.signature, written in place: the signing input first */
	r = EVP_PKEY_get_size(key);
	if (r <= 0) {
		r = -EINVAL;
		goto out;
	}
	siglen = (size_t)r;
	toklen = hlen + 1 + clen + 1 + (siglen + 2) / 3 * 4 + 1;
	tok = malloc(toklen);
	sig = malloc(siglen);
	ctx = EVP_MD_CTX_new();
	if (tok == NULL || sig == NULL || ctx == NULL) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(tok, h, hlen);
	tok[hlen] = '.';
	memcpy(tok + hlen + 1, c, clen);
	if (EVP_DigestSignInit_ex(ctx, &pctx, "SHA256", NULL, NULL, key, NULL) != 1 ||
	    EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1 ||
	    EVP_DigestSign(ctx, sig, &siglen, (unsigned char *)tok, hlen + 1 + clen) != 1) {
		ERR_clear_error();
		r = -EIO;
		goto out;
	}
	r = base64url_encode(sig, siglen, &s);
	if (r < 0)
		goto out;
	slen = strlen(s);
	tok[hlen + 1 + clen] = '.';
	memcpy(tok + hlen + 1 + clen + 1, s, slen + 1);
	*out = tok;
	tok = NULL;
	r = 0;

out:
	EVP_MD_CTX_free(ctx);
	wipe_free_str(h);
	wipe_free_str(c);
	wipe_free_str(s);
	wipe_free(sig, siglen);
	wipe_free(tok, toklen);
	return r;
}

/* The header names RS256, so a token meant for another algorithm is not accepted as one. */
static bool
jwt_header_is_rs256(const char *json, size_t len)
{
	struct json_doc doc;
	jsmntok_t toks[64];
	char alg[16];
	int i;

	if (json_parse(&doc, json, len, toks, 64) < 0)
		return false;
	i = json_find(&doc, 0, "alg");
	if (i < 0 || json_string_copy(&doc, i, alg, sizeof(alg)) < 0)
		return false;
	return strcmp(alg, "RS256") == 0;
}

int
jwt_verify_rs256(EVP_PKEY *key, const char *token, size_t len)
{
	EVP_MD_CTX *ctx = NULL;
	EVP_PKEY_CTX *pctx = NULL;
	unsigned char *hdr = NULL, *sig = NULL;
	size_t dot1, dot2, hdrlen = 0, siglen = 0;
	int r;

	if (!EVP_PKEY_is_a(key, "RSA") || jwt_split(token, len, &dot1, &dot2) < 0)
		return -EBADMSG;
	r = base64url_decode(token, dot1, &hdr, &hdrlen);
	if (r == -ENOMEM)
		return r;
	if (r < 0 || !jwt_header_is_rs256((char *)hdr, hdrlen)) {
		r = -EBADMSG;
		goto out;
	}
	r = base64url_decode(token + dot2 + 1, len - dot2 - 1, &sig, &siglen);
	if (r == -ENOMEM)
		goto out;
	if (r < 0 || siglen != (size_t)EVP_PKEY_get_size(key)) {
		r = -EBADMSG;
		goto out;
	}
	ctx = EVP_MD_CTX_new();
	if (ctx == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if (EVP_DigestVerifyInit_ex(ctx, &pctx, "SHA256", NULL, NULL, key, NULL) != 1 ||
	    EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1 ||
	    EVP_DigestVerify(ctx, sig, siglen, (const unsigned char *)token, dot2) != 1) {
		ERR_clear_error();
		r = -EBADMSG;
		goto out;
	}
	r = 0;

out:
	EVP_MD_CTX_free(ctx);
	wipe_free(hdr, hdrlen);
	wipe_free(sig, siglen);
	return r;
}

/* Decoded JSON text: no NUL, no control characters JSON could not carry as whitespace. */
static bool
jwt_is_text(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] < 0x20 && p[i] != '\t' && p[i] != '\n' && p[i] != '\r')
			return false;
	}
	return n > 0;
}

int
jwt_decode(const char *token, size_t len, char **header_json, char **claims_json)
{
	unsigned char *h = NULL, *c = NULL, *s = NULL;
	size_t dot1, dot2, hlen = 0, clen = 0, slen = 0;
	int r;

	r = jwt_split(token, len, &dot1, &dot2);
	if (r < 0)
		return r;
	r = base64url_decode(token, dot1, &h, &hlen);
	if (r < 0)
		goto fail;
	r = base64url_decode(token + dot1 + 1, dot2 - dot1 - 1, &c, &clen);
	if (r < 0)
		goto fail;
	/* the signature is not checked, but it must at least be base64url */
	r = base64url_decode(token + dot2 + 1, len - dot2 - 1, &s, &slen);
	if (r < 0)
		goto fail;
	if (!jwt_is_text(h, hlen) || !jwt_is_text(c, clen)) {
		r = -EINVAL;
		goto fail;
	}
	wipe_free(s, slen);
	*header_json = (char *)h;
	*claims_json = (char *)c;
	return 0;

fail:
	wipe_free(h, hlen);
	wipe_free(c, clen);
	wipe_free(s, slen);
	return r;
}
