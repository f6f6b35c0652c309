/*
 * Client assertions (see assertion.h).  The rules come from Entra's
 * certificate-credentials documentation and what MSAL does: PS256 with the
 * SHA-256 thumbprint ("x5t#S256") by default, RS256 with the SHA-1 "x5t"
 * for older setups; claims aud, iss = sub = client id, jti, iat, nbf, exp
 * 10 minutes later.  ES256 signatures are the raw r||s of RFC 7518 3.4,
 * not OpenSSL's DER.
 *
 * It needs OpenSSL, secret.c and common/ only (no libevent, no jwt.c): the
 * config parser links it to check keys when it loads, and so do its fuzzer and
 * tests.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "assertion.h"
#include "base64.h"
#include "secret.h"
#include "wipe.h"

#define MIN_RSA_BITS 2048 /* Entra refuses shorter keys, and so should everyone */

struct assertion_key {
	EVP_PKEY *pkey;
	enum config_assertion_alg alg;
	const char *x5t_name; /* "x5t#S256", "x5t", or NULL without a certificate */
	char *x5t;	      /* base64url thumbprint of the DER certificate */
	char *x5c;	      /* base64 (not url) DER certificate */
};

/* A growing string for the JSON header and claims. */
struct text {
	char *buf;
	size_t len, cap;
	bool oom;
};

static void
text_add(struct text *t, const char *s, size_t n)
{
	size_t cap;

	if (t->oom)
		return;
	if (t->len + n + 1 > t->cap) {
		for (cap = t->cap ? t->cap : 256; cap < t->len + n + 1; cap *= 2)
			;
		if (wipe_realloc(&t->buf, &t->cap, t->len, cap) < 0) {
			t->oom = true;
			return;
		}
	}
	memcpy(t->buf + t->len, s, n);
	t->len += n;
	t->buf[t->len] = '\0';
}

static void
text_str(struct text *t, const char *s)
{
	text_add(t, s, strlen(s));
}

/* s as a quoted JSON string (RFC 8259 escapes). */
static void
text_json(struct text *t, const char *s)
{
	char esc[8];

	text_add(t, "\"", 1);
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			text_add(t, esc, 2);
		} else if (c < 0x20) {
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			text_add(t, esc, 6);
		} else {
			text_add(t, (const char *)&c, 1);
		}
	}
	text_add(t, "\"", 1);
}

struct assertion_key *
assertion_key_free(struct assertion_key *k)
{
	if (k == NULL)
		return NULL;
	EVP_PKEY_free(k->pkey);
	free(k->x5t);
	free(k->x5c);
	free(k);
	return NULL;
}

/* PEM passphrase callback: we never have one, and remember that one was asked for. */
static int
no_passphrase(char *buf, int size, int rwflag, void *u)
{
	*(bool *)u = true;
	return -1;
}

static int
load_pkey(const char *path, EVP_PKEY **out, char *msg, size_t size)
{
	char *pem = NULL;
	size_t len = 0;
	bool asked = false;
	EVP_PKEY *pkey = NULL;
	BIO *bio;
	int r;

	r = secret_read(path, false, &pem, &len, msg, size);
	if (r < 0)
		return r;
	bio = BIO_new_mem_buf(pem, (int)len);
	if (bio == NULL) {
		r = -ENOMEM;
		snprintf(msg, size, "out of memory");
		goto out;
	}
	pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, &asked);
	BIO_free(bio);
	ERR_clear_error();
	if (pkey == NULL) {
		r = -EINVAL;
		if (asked || strstr(pem, "ENCRYPTED") != NULL)
			snprintf(msg, size,
				 "'%.200s' is an encrypted key: bearerd needs it unencrypted "
				 "(protect the file instead)",
				 path);
		else
			snprintf(msg, size, "'%.200s' holds no PEM private key", path);
		goto out;
	}
	*out = pkey;
	r = 0;
out:
	wipe_free(pem, len);
	return r;
}

/* Settles the algorithm for the key's type; RSA keys of at least 2048 bits, EC on P-256. */
static int
pick_alg(EVP_PKEY *pkey, enum config_assertion_alg alg, bool entra, const char *path,
	 enum config_assertion_alg *out, char *msg, size_t size)
{
	char group[64] = "";

	if (EVP_PKEY_is_a(pkey, "RSA")) {
		if (EVP_PKEY_get_bits(pkey) < MIN_RSA_BITS) {
			snprintf(msg, size, "'%.200s': RSA key of %d bits, at least %d needed",
				 path, EVP_PKEY_get_bits(pkey), MIN_RSA_BITS);
			return -EINVAL;
		}
		if (alg == CONFIG_ALG_ES256) {
			snprintf(msg, size, "'%.200s': assertion_alg ES256 needs an EC P-256 key",
				 path);
			return -EINVAL;
		}
		*out = alg != CONFIG_ALG_DEFAULT ? alg
		       : entra			 ? CONFIG_ALG_PS256
						 : CONFIG_ALG_RS256;
		return 0;
	}
	if (EVP_PKEY_is_a(pkey, "EC")) {
		EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group,
					       sizeof(group), NULL);
		if (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0) {
			snprintf(msg, size, "'%.200s': EC key on curve %s, only P-256 is supported",
				 path, group[0] ? group : "?");
			return -EINVAL;
		}
		if (alg != CONFIG_ALG_DEFAULT && alg != CONFIG_ALG_ES256) {
			snprintf(msg, size, "'%.200s': assertion_alg %s needs an RSA key", path,
				 alg == CONFIG_ALG_PS256 ? "PS256" : "RS256");
			return -EINVAL;
		}
		*out = CONFIG_ALG_ES256;
		return 0;
	}
	snprintf(msg, size, "'%.200s': only RSA and EC P-256 keys are supported", path);
	return -EINVAL;
}

static int
load_cert(struct assertion_key *k, const char *path, bool entra, char *msg, size_t size)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned char *der = NULL;
	unsigned int md_len = 0;
	bool sha1 = entra && k->alg == CONFIG_ALG_RS256;
	X509 *cert = NULL;
	char *pem = NULL;
	size_t pem_len = 0;
	BIO *bio;
	int der_len, r;

	/* a regular file of bounded size: this runs on the loop when the file changes */
	r = secret_read_public(path, &pem, &pem_len, msg, size);
	if (r < 0)
		return r;
	bio = BIO_new_mem_buf(pem, (int)pem_len);
	if (bio != NULL) {
		cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
		BIO_free(bio);
	}
	free(pem);
	ERR_clear_error();
	if (cert == NULL) {
		snprintf(msg, size, "'%.200s' holds no PEM certificate", path);
		return -EINVAL;
	}
	if (X509_check_private_key(cert, k->pkey) != 1) {
		ERR_clear_error();
		snprintf(msg, size, "the private key does not match the certificate '%.200s'",
			 path);
		r = -EINVAL;
		goto out;
	}
	der_len = i2d_X509(cert, &der);
	if (der_len <= 0 || X509_digest(cert, sha1 ? EVP_sha1() : EVP_sha256(), md, &md_len) != 1) {
		ERR_clear_error();
		snprintf(msg, size, "'%.200s': cannot encode the certificate", path);
		r = -EINVAL;
		goto out;
	}
	k->x5t_name = sha1 ? "x5t" : "x5t#S256";
	r = base64url_encode(md, md_len, &k->x5t);
	if (r < 0)
		goto oom;
	r = base64_encode(der, (size_t)der_len, &k->x5c);
	if (r < 0)
		goto oom;
	goto out;
oom:
	snprintf(msg, size, "out of memory");
	r = -ENOMEM;
out:
	OPENSSL_free(der);
	X509_free(cert);
	return r;
}

int
assertion_key_load(struct assertion_key **out, const char *key_path, const char *cert_path,
		   enum config_assertion_alg alg, bool entra, char *msg, size_t size)
{
	struct assertion_key *k;
	int r;

	k = calloc(1, sizeof(*k));
	if (k == NULL) {
		snprintf(msg, size, "out of memory");
		return -ENOMEM;
	}
	r = load_pkey(key_path, &k->pkey, msg, size);
	if (r < 0)
		goto fail;
	r = pick_alg(k->pkey, alg, entra, key_path, &k->alg, msg, size);
	if (r < 0)
		goto fail;
	if (cert_path != NULL) {
		r = load_cert(k, cert_path, entra, msg, size);
		if (r < 0)
			goto fail;
	}
	*out = k;
	return 0;
fail:
	assertion_key_free(k);
	return r;
}

const char *
assertion_key_alg(const struct assertion_key *k)
{
	switch (k->alg) {
	case CONFIG_ALG_PS256:
		return "PS256";
	case CONFIG_ALG_ES256:
		return "ES256";
	default:
		return "RS256";
	}
}

/* A random (version 4) UUID, as Entra wants jti to be. */
static int
make_uuid(char out[37])
{
	unsigned char b[16];

	if (RAND_bytes(b, sizeof(b)) != 1)
		return -EIO;
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
		 b[13], b[14], b[15]);
	return 0;
}

/* Appends "name":"value" (escaped), with a leading comma unless first. */
static void
member(struct text *t, bool first, const char *name, const char *value)
{
	if (!first)
		text_str(t, ",");
	text_json(t, name);
	text_str(t, ":");
	text_json(t, value);
}

static void
build_header(const struct assertion_key *k, const char *kid, bool with_x5c, struct text *t)
{
	text_str(t, "{\"alg\":\"");
	text_str(t, assertion_key_alg(k));
	text_str(t, "\",\"typ\":\"JWT\"");
	if (k->x5t != NULL)
		member(t, false, k->x5t_name, k->x5t);
	if (kid != NULL)
		member(t, false, "kid", kid);
	if (with_x5c && k->x5c != NULL) {
		text_str(t, ",\"x5c\":[");
		text_json(t, k->x5c);
		text_str(t, "]");
	}
	text_str(t, "}");
}

static int
build_claims(const char *client_id, const char *aud, int64_t now, struct text *t)
{
	char jti[37], times[96];

	if (make_uuid(jti) < 0)
		return -EIO;
	text_str(t, "{");
	member(t, true, "aud", aud);
	member(t, false, "iss", client_id);
	member(t, false, "sub", client_id);
	member(t, false, "jti", jti);
	snprintf(times, sizeof(times), ",\"iat\":%lld,\"nbf\":%lld,\"exp\":%lld}", (long long)now,
		 (long long)now, (long long)(now + ASSERTION_LIFETIME));
	text_str(t, times);
	return 0;
}

/* An ECDSA DER signature as the 64-byte r||s of JWS ES256. */
static int
ecdsa_raw(const unsigned char *der, size_t der_len, unsigned char raw[64])
{
	const unsigned char *p = der;
	ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
	const BIGNUM *r, *s;
	int ok;

	if (sig == NULL)
		return -EIO;
	ECDSA_SIG_get0(sig, &r, &s);
	ok = BN_bn2binpad(r, raw, 32) == 32 && BN_bn2binpad(s, raw + 32, 32) == 32;
	ECDSA_SIG_free(sig);
	return ok ? 0 : -EIO;
}

static int
sign_input(const struct assertion_key *k, const char *input, size_t len, unsigned char **sig,
	   size_t *sig_len)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pctx = NULL;
	unsigned char *buf = NULL;
	size_t n = 0, cap = 0;
	int r = -EIO;

	if (ctx == NULL)
		return -ENOMEM;
	if (EVP_DigestSignInit_ex(ctx, &pctx, "SHA256", NULL, NULL, k->pkey, NULL) != 1)
		goto out;
	if (k->alg == CONFIG_ALG_PS256) {
		if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
		    EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1)
			goto out;
	} else if (k->alg == CONFIG_ALG_RS256) {
		if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1)
			goto out;
	}
	if (EVP_DigestSign(ctx, NULL, &n, (const unsigned char *)input, len) != 1)
		goto out;
	cap = n > 64 ? n : 64;
	buf = malloc(cap);
	if (buf == NULL) {
		r = -ENOMEM;
		goto out;
	}
	if (EVP_DigestSign(ctx, buf, &n, (const unsigned char *)input, len) != 1)
		goto out;
	if (k->alg == CONFIG_ALG_ES256) {
		unsigned char raw[64];

		if (ecdsa_raw(buf, n, raw) < 0)
			goto out;
		memcpy(buf, raw, sizeof(raw));
		OPENSSL_cleanse(raw, sizeof(raw));
		OPENSSL_cleanse(buf + sizeof(raw), cap - sizeof(raw)); /* the rest of the DER */
		n = sizeof(raw);
	}
	*sig = buf;
	*sig_len = n;
	buf = NULL;
	r = 0;
out:
	if (r < 0)
		ERR_clear_error();
	wipe_free(buf, cap);
	EVP_MD_CTX_free(ctx);
	return r;
}

int
assertion_sign(const struct assertion_key *k, const char *client_id, const char *aud,
	       const char *kid, bool with_x5c, int64_t now, char **out)
{
	struct text head = {0}, claims = {0};
	char *h = NULL, *c = NULL, *sig64 = NULL, *input = NULL, *jws = NULL;
	unsigned char *sig = NULL;
	size_t sig_len = 0;
	int r;

	build_header(k, kid, with_x5c, &head);
	r = build_claims(client_id, aud, now, &claims);
	if (r < 0)
		goto out;
	if (head.oom || claims.oom) {
		r = -ENOMEM;
		goto out;
	}
	r = base64url_encode((unsigned char *)head.buf, head.len, &h);
	if (r == 0)
		r = base64url_encode((unsigned char *)claims.buf, claims.len, &c);
	if (r < 0)
		goto out;
	if (asprintf(&input, "%s.%s", h, c) < 0) {
		input = NULL;
		r = -ENOMEM;
		goto out;
	}
	r = sign_input(k, input, strlen(input), &sig, &sig_len);
	if (r == 0)
		r = base64url_encode(sig, sig_len, &sig64);
	if (r < 0)
		goto out;
	if (asprintf(&jws, "%s.%s", input, sig64) < 0) {
		r = -ENOMEM;
		goto out;
	}
	*out = jws;
	r = 0;
out:
	/* the signing input and signature are the assertion, valid for minutes: wiped */
	wipe_free(head.buf, head.cap);
	wipe_free(claims.buf, claims.cap);
	wipe_free_str(h);
	wipe_free_str(c);
	wipe_free_str(sig64);
	wipe_free(sig, sig_len);
	wipe_free_str(input);
	return r;
}
