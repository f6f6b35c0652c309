/* Unit tests for daemon/assertion.c: client assertion JWTs, verified with the public key. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "assertion.h"
#include "base64.h"
#include "json.h"
#include "jwt.h"
#include "wipe.h"

#define NOW 1700000000

static char dir[] = "/tmp/test-assertion.XXXXXX";
static EVP_PKEY *rsa_key, *rsa_other, *ec_key, *rsa_small;
static X509 *rsa_cert, *ec_cert;

static char *
path_of(const char *name)
{
	char *p = NULL;

	assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
	return p;
}

enum key_form { PKCS8, TRADITIONAL, ENCRYPTED };

static char *
write_key(const char *name, EVP_PKEY *k, enum key_form form, mode_t mode)
{
	char *p = path_of(name);
	FILE *f = fopen(p, "w");

	assert_non_null(f);
	if (form == PKCS8)
		assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
	else if (form == TRADITIONAL) {
		BIO *bio = BIO_new_fp(f, BIO_NOCLOSE);

		assert_int_equal(
		    PEM_write_bio_PrivateKey_traditional(bio, k, NULL, NULL, 0, NULL, NULL), 1);
		BIO_free(bio);
	} else
		assert_int_equal(PEM_write_PrivateKey(f, k, EVP_aes_256_cbc(),
						      (unsigned char *)"pass", 4, NULL, NULL),
				 1);
	fclose(f);
	assert_int_equal(chmod(p, mode), 0);
	return p;
}

static char *
write_cert(const char *name, X509 *c)
{
	char *p = path_of(name);
	FILE *f = fopen(p, "w");

	assert_non_null(f);
	assert_int_equal(PEM_write_X509(f, c), 1);
	fclose(f);
	return p;
}

static X509 *
self_signed(EVP_PKEY *k)
{
	X509 *c = X509_new();
	X509_NAME *n;

	assert_non_null(c);
	ASN1_INTEGER_set(X509_get_serialNumber(c), 1);
	X509_gmtime_adj(X509_getm_notBefore(c), 0);
	X509_gmtime_adj(X509_getm_notAfter(c), 3600);
	X509_set_pubkey(c, k);
	n = X509_get_subject_name(c);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (unsigned char *)"bearerd-test", -1, -1,
				   0);
	X509_set_issuer_name(c, n);
	assert_true(X509_sign(c, k, EVP_sha256()) > 0);
	return c;
}

static int
setup(void **state)
{
	assert_non_null(mkdtemp(dir));
	rsa_key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	rsa_other = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	rsa_small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	ec_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	assert_non_null(rsa_key);
	assert_non_null(rsa_other);
	assert_non_null(rsa_small);
	assert_non_null(ec_key);
	rsa_cert = self_signed(rsa_key);
	ec_cert = self_signed(ec_key);
	return 0;
}

static int
teardown(void **state)
{
	char *cmd = NULL;

	assert_true(asprintf(&cmd, "rm -rf '%s'", dir) > 0);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	EVP_PKEY_free(rsa_key);
	EVP_PKEY_free(rsa_other);
	EVP_PKEY_free(rsa_small);
	EVP_PKEY_free(ec_key);
	X509_free(rsa_cert);
	X509_free(ec_cert);
	return 0;
}

/* The decoded parts of a compact JWS. */
struct jws {
	char *header, *claims;
	unsigned char *sig;
	size_t sig_len;
	size_t input_len; /* header.claims */
};

static void
jws_split(const char *tok, struct jws *j)
{
	const char *dot1 = strchr(tok, '.');
	const char *dot2 = dot1 != NULL ? strchr(dot1 + 1, '.') : NULL;

	assert_non_null(dot2);
	assert_null(strchr(dot2 + 1, '.'));
	assert_int_equal(jwt_decode(tok, strlen(tok), &j->header, &j->claims), 0);
	assert_int_equal(base64url_decode(dot2 + 1, strlen(dot2 + 1), &j->sig, &j->sig_len), 0);
	j->input_len = (size_t)(dot2 - tok);
}

static void
jws_free(struct jws *j)
{
	free(j->header);
	free(j->claims);
	free(j->sig);
}

/* Verifies the signature with the public key the way a token endpoint does. */
static int
verify(EVP_PKEY *pub, const char *alg, const char *tok, const struct jws *j)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pctx = NULL;
	unsigned char der[80], *p = der;
	const unsigned char *sig = j->sig;
	size_t sig_len = j->sig_len;
	int ok;

	assert_int_equal(EVP_DigestVerifyInit_ex(ctx, &pctx, "SHA256", NULL, NULL, pub, NULL), 1);
	if (strcmp(alg, "PS256") == 0) {
		EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
		EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32); /* RFC 7518: salt = hash length */
	} else if (strcmp(alg, "RS256") == 0) {
		EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING);
	} else {
		/* ES256: raw r||s, back to DER for OpenSSL */
		ECDSA_SIG *es = ECDSA_SIG_new();
		int n;

		assert_int_equal(j->sig_len, 64);
		ECDSA_SIG_set0(es, BN_bin2bn(j->sig, 32, NULL), BN_bin2bn(j->sig + 32, 32, NULL));
		n = i2d_ECDSA_SIG(es, &p);
		ECDSA_SIG_free(es);
		assert_true(n > 0);
		sig = der;
		sig_len = (size_t)n;
	}
	ok = EVP_DigestVerify(ctx, sig, sig_len, (const unsigned char *)tok, j->input_len);
	EVP_MD_CTX_free(ctx);
	return ok;
}

/* The string member key of the JSON object text, or NULL; caller frees. */
static char *
member(const char *json, const char *key)
{
	jsmntok_t toks[64];
	struct json_doc doc;
	char *s = NULL;
	size_t len;
	int t;

	assert_int_equal(json_parse(&doc, json, strlen(json), toks, 64), 0);
	t = json_find(&doc, 0, key);
	if (t < 0)
		return NULL;
	if (doc.tok[t].type != JSMN_STRING) {
		assert_non_null(s = strndup(json + doc.tok[t].start,
					    (size_t)(doc.tok[t].end - doc.tok[t].start)));
		return s;
	}
	assert_int_equal(json_string_dup(&doc, t, &s, &len), 0);
	return s;
}

static void
expect_member(const char *json, const char *key, const char *want)
{
	char *v = member(json, key);

	if (want == NULL) {
		assert_null(v);
		return;
	}
	assert_non_null(v);
	assert_string_equal(v, want);
	free(v);
}

static char *
thumbprint(X509 *c, const EVP_MD *md)
{
	unsigned char d[EVP_MAX_MD_SIZE];
	unsigned int n;
	char *s = NULL;

	assert_int_equal(X509_digest(c, md, d, &n), 1);
	assert_int_equal(base64url_encode(d, n, &s), 0);
	return s;
}

static struct assertion_key *
load_ok(const char *key, const char *cert, enum config_assertion_alg alg, bool entra)
{
	struct assertion_key *k = NULL;
	char msg[512] = "";
	int r = assertion_key_load(&k, key, cert, alg, entra, msg, sizeof(msg));

	if (r != 0)
		print_error("%s\n", msg);
	assert_int_equal(r, 0);
	return k;
}

static void
expect_load_error(const char *key, const char *cert, enum config_assertion_alg alg, bool entra,
		  const char *want)
{
	struct assertion_key *k = NULL;
	char msg[512] = "";

	assert_true(assertion_key_load(&k, key, cert, alg, entra, msg, sizeof(msg)) < 0);
	assert_null(k);
	if (strstr(msg, want) == NULL)
		print_error("message '%s' lacks '%s'\n", msg, want);
	assert_non_null(strstr(msg, want));
}

/* Entra's default: PS256 with x5t#S256, the claims Entra checks. */
static void
test_entra_default_ps256(void **state)
{
	char *key = write_key("rsa.pem", rsa_key, PKCS8, 0600);
	char *cert = write_cert("rsa.crt", rsa_cert);
	char *tp = thumbprint(rsa_cert, EVP_sha256());
	struct assertion_key *k = load_ok(key, cert, CONFIG_ALG_DEFAULT, true);
	char *tok = NULL, *exp = NULL;
	struct jws j;

	assert_string_equal(assertion_key_alg(k), "PS256");
	assert_int_equal(assertion_sign(k, "client-1", "https://login.test/t/oauth2/v2.0/token",
					NULL, false, NOW, &tok),
			 0);
	jws_split(tok, &j);
	assert_int_equal(verify(rsa_key, "PS256", tok, &j), 1);
	/* a signature from another key, or over other bytes, does not verify */
	assert_int_equal(verify(rsa_other, "PS256", tok, &j), 0);
	assert_int_equal(verify(rsa_key, "RS256", tok, &j), 0);
	expect_member(j.header, "alg", "PS256");
	expect_member(j.header, "typ", "JWT");
	expect_member(j.header, "x5t#S256", tp);
	expect_member(j.header, "x5t", NULL);
	expect_member(j.header, "kid", NULL);
	expect_member(j.header, "x5c", NULL);
	expect_member(j.claims, "aud", "https://login.test/t/oauth2/v2.0/token");
	expect_member(j.claims, "iss", "client-1");
	expect_member(j.claims, "sub", "client-1");
	expect_member(j.claims, "iat", "1700000000");
	expect_member(j.claims, "nbf", "1700000000");
	assert_true(asprintf(&exp, "%d", NOW + 600) > 0);
	expect_member(j.claims, "exp", exp);
	jws_free(&j);
	wipe_free_str(tok);
	assertion_key_free(k);
	free(exp);
	free(tp);
	unlink(key);
	unlink(cert);
	free(key);
	free(cert);
}

/* RS256 for Entra carries the SHA-1 x5t; x5c is the base64 DER certificate. */
static void
test_entra_rs256_x5t_x5c(void **state)
{
	char *key = write_key("rsa-trad.pem", rsa_key, TRADITIONAL, 0640);
	char *cert = write_cert("rsa.crt", rsa_cert);
	char *tp = thumbprint(rsa_cert, EVP_sha1());
	struct assertion_key *k = load_ok(key, cert, CONFIG_ALG_RS256, true);
	unsigned char *der = NULL;
	int der_len = i2d_X509(rsa_cert, &der);
	char *b64 = calloc(1, (size_t)der_len * 2 + 4), *want = NULL, *tok = NULL, *x5c;
	struct jws j;

	EVP_EncodeBlock((unsigned char *)b64, der, der_len);
	assert_true(asprintf(&want, "[\"%s\"]", b64) > 0);
	assert_int_equal(assertion_sign(k, "c", "aud", NULL, true, NOW, &tok), 0);
	jws_split(tok, &j);
	assert_int_equal(verify(rsa_key, "RS256", tok, &j), 1);
	expect_member(j.header, "alg", "RS256");
	expect_member(j.header, "x5t", tp);
	expect_member(j.header, "x5t#S256", NULL);
	x5c = member(j.header, "x5c");
	assert_string_equal(x5c, want);
	free(x5c);
	jws_free(&j);
	wipe_free_str(tok);
	assertion_key_free(k);
	OPENSSL_free(der);
	free(b64);
	free(want);
	free(tp);
	unlink(key);
	unlink(cert);
	free(key);
	free(cert);
}

/* oauth2 private_key_jwt: RS256 by default, kid, x5t#S256 even with RS256, no cert needed. */
static void
test_oauth2_rs256_kid(void **state)
{
	char *key = write_key("rsa.pem", rsa_key, PKCS8, 0600);
	char *cert = write_cert("rsa.crt", rsa_cert);
	char *tp = thumbprint(rsa_cert, EVP_sha256());
	struct assertion_key *k = load_ok(key, NULL, CONFIG_ALG_DEFAULT, false);
	char *tok = NULL;
	struct jws j;

	assert_string_equal(assertion_key_alg(k), "RS256");
	assert_int_equal(
	    assertion_sign(k, "cli\"ent", "https://idp.test/token", "key-\"1", true, NOW, &tok), 0);
	jws_split(tok, &j);
	assert_int_equal(verify(rsa_key, "RS256", tok, &j), 1);
	expect_member(j.header, "kid", "key-\"1"); /* escaped, and back */
	expect_member(j.header, "x5t#S256", NULL); /* no certificate, no thumbprint or x5c */
	expect_member(j.header, "x5c", NULL);
	expect_member(j.claims, "iss", "cli\"ent");
	jws_free(&j);
	wipe_free_str(tok);
	assertion_key_free(k);

	k = load_ok(key, cert, CONFIG_ALG_DEFAULT, false);
	assert_int_equal(assertion_sign(k, "c", "a", NULL, false, NOW, &tok), 0);
	jws_split(tok, &j);
	expect_member(j.header, "x5t#S256", tp);
	expect_member(j.header, "x5t", NULL);
	jws_free(&j);
	wipe_free_str(tok);
	assertion_key_free(k);
	free(tp);
	unlink(key);
	unlink(cert);
	free(key);
	free(cert);
}

/* EC P-256 keys sign ES256 with a raw 64-byte r||s signature. */
static void
test_es256(void **state)
{
	char *key = write_key("ec.pem", ec_key, PKCS8, 0600);
	char *trad = write_key("ec-trad.pem", ec_key, TRADITIONAL, 0600);
	char *cert = write_cert("ec.crt", ec_cert);
	struct assertion_key *k = load_ok(key, cert, CONFIG_ALG_DEFAULT, true);
	char *tok = NULL;
	struct jws j;

	assert_string_equal(assertion_key_alg(k), "ES256");
	assert_int_equal(assertion_sign(k, "c", "a", NULL, false, NOW, &tok), 0);
	jws_split(tok, &j);
	assert_int_equal(j.sig_len, 64);
	assert_int_equal(verify(ec_key, "ES256", tok, &j), 1);
	expect_member(j.header, "alg", "ES256");
	jws_free(&j);
	wipe_free_str(tok);
	assertion_key_free(k);
	k = load_ok(trad, NULL, CONFIG_ALG_ES256, false);
	assertion_key_free(k);
	unlink(key);
	unlink(trad);
	unlink(cert);
	free(key);
	free(trad);
	free(cert);
}

/* Every assertion has its own jti, a version 4 UUID. */
static void
test_unique_jti(void **state)
{
	char *key = write_key("ec.pem", ec_key, PKCS8, 0600);
	struct assertion_key *k = load_ok(key, NULL, CONFIG_ALG_DEFAULT, false);
	char *seen[20];

	for (int i = 0; i < 20; i++) {
		char *tok = NULL;
		struct jws j;

		assert_int_equal(assertion_sign(k, "c", "a", NULL, false, NOW, &tok), 0);
		jws_split(tok, &j);
		seen[i] = member(j.claims, "jti");
		assert_int_equal(strlen(seen[i]), 36);
		assert_int_equal(seen[i][14], '4');
		assert_non_null(strchr("89ab", seen[i][19]));
		for (int k2 = 0; k2 < i; k2++)
			assert_string_not_equal(seen[i], seen[k2]);
		jws_free(&j);
		wipe_free_str(tok);
	}
	for (int i = 0; i < 20; i++)
		free(seen[i]);
	assertion_key_free(k);
	unlink(key);
	free(key);
}

/* Keys bearerd refuses, each with a message that says why. */
static void
test_refused_keys(void **state)
{
	char *enc = write_key("enc.pem", rsa_key, ENCRYPTED, 0600);
	char *world = write_key("world.pem", rsa_key, PKCS8, 0644);
	char *small = write_key("small.pem", rsa_small, PKCS8, 0600);
	char *rsa = write_key("rsa.pem", rsa_key, PKCS8, 0600);
	char *ec = write_key("ec.pem", ec_key, PKCS8, 0600);
	char *other_cert = write_cert("ec.crt", ec_cert);
	char *junk = path_of("junk.pem");
	char *missing = path_of("missing.pem");
	FILE *f = fopen(junk, "w");

	fputs("-----BEGIN CERTIFICATE-----\nnot a key\n-----END CERTIFICATE-----\n", f);
	fclose(f);
	chmod(junk, 0600);
	expect_load_error(enc, NULL, CONFIG_ALG_DEFAULT, true, "is an encrypted key");
	expect_load_error(world, NULL, CONFIG_ALG_DEFAULT, true, "readable by other users");
	expect_load_error(small, NULL, CONFIG_ALG_DEFAULT, true, "RSA key of 1024 bits");
	expect_load_error(junk, NULL, CONFIG_ALG_DEFAULT, true, "holds no PEM private key");
	expect_load_error(missing, NULL, CONFIG_ALG_DEFAULT, true, "No such file");
	expect_load_error(rsa, other_cert, CONFIG_ALG_DEFAULT, true,
			  "private key does not match the certificate");
	expect_load_error(rsa, junk, CONFIG_ALG_DEFAULT, true, "holds no PEM certificate");
	expect_load_error(rsa, NULL, CONFIG_ALG_ES256, false, "ES256 needs an EC P-256 key");
	expect_load_error(ec, NULL, CONFIG_ALG_PS256, true, "PS256 needs an RSA key");
	unlink(enc);
	unlink(world);
	unlink(small);
	unlink(rsa);
	unlink(ec);
	unlink(other_cert);
	unlink(junk);
	free(enc);
	free(world);
	free(small);
	free(rsa);
	free(ec);
	free(other_cert);
	free(junk);
	free(missing);
}

/*
 * A certificate file that is not a regular file (a FIFO nobody writes to
 * would block the loop for good) or too large is refused at once, saying why.
 */
static void
test_certificate_file_bounds(void **state)
{
	char *key = write_key("rsa.pem", rsa_key, PKCS8, 0600);
	char *cert = write_cert("rsa.crt", rsa_cert);
	char *fifo = path_of("cert.fifo");
	char *big = path_of("big.crt");
	struct assertion_key *k;
	FILE *f;

	assert_int_equal(mkfifo(fifo, 0644), 0);
	alarm(10); /* a blocking open ends the test instead of hanging it */
	expect_load_error(key, fifo, CONFIG_ALG_DEFAULT, true, "is not a regular file");
	alarm(0);
	f = fopen(big, "w");
	assert_non_null(f);
	for (int i = 0; i < 1100; i++)
		fputs("-----BEGIN "
		      "CERTIFICATE-----\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
		      f);
	fclose(f);
	expect_load_error(key, big, CONFIG_ALG_DEFAULT, true, "larger than 65536 bytes");
	/* a certificate is no secret: others may read it, and it need not be ours */
	assert_int_equal(chmod(cert, 0666), 0);
	k = load_ok(key, cert, CONFIG_ALG_DEFAULT, true);
	assertion_key_free(k);
	unlink(fifo);
	unlink(big);
	unlink(cert);
	unlink(key);
	free(fifo);
	free(big);
	free(cert);
	free(key);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_entra_default_ps256),
	    cmocka_unit_test(test_entra_rs256_x5t_x5c),
	    cmocka_unit_test(test_oauth2_rs256_kid),
	    cmocka_unit_test(test_es256),
	    cmocka_unit_test(test_unique_jti),
	    cmocka_unit_test(test_refused_keys),
	    cmocka_unit_test(test_certificate_file_bounds),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
