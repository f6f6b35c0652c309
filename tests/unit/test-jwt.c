/* Unit tests for jwt.c: RS256 sign and verify, and splitting tokens (base64url: test-base64.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "jwt.h"

/* jwt.io's HS256 example token. */
#define JWTIO_TOKEN                                                                                \
	"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."                                                    \
	"eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."              \
	"SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"

/* Like assert_int_equal, naming the table case when it fails. */
static void
expect_int(long got, long want, const char *what)
{
	if (got != want)
		print_message("case: %s\n", what);
	assert_int_equal(got, want);
}

struct keys {
	EVP_PKEY *key;
	EVP_PKEY *other;
};

static int
setup_keys(void **state)
{
	struct keys *k = calloc(1, sizeof(*k));

	if (k == NULL)
		return -1;
	k->key = EVP_RSA_gen(2048);
	k->other = EVP_RSA_gen(2048);
	*state = k;
	return k->key != NULL && k->other != NULL ? 0 : -1;
}

static int
teardown_keys(void **state)
{
	struct keys *k = *state;

	EVP_PKEY_free(k->key);
	EVP_PKEY_free(k->other);
	free(k);
	return 0;
}

static void
test_sign_verify(void **state)
{
	struct keys *k = *state;
	const char *header = "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"k1\"}";
	const char *claims = "{\"iss\":\"bearerd-dev\",\"aud\":\"api://x\",\"exp\":1}";
	char *tok = NULL, *h = NULL, *c = NULL;
	size_t len;

	assert_int_equal(jwt_sign_rs256(k->key, header, claims, &tok), 0);
	len = strlen(tok);
	assert_int_equal(jwt_verify_rs256(k->key, tok, len), 0);
	/* the signature is 256 bytes: 342 base64url characters */
	assert_int_equal(strlen(strrchr(tok, '.') + 1), 342);

	assert_int_equal(jwt_decode(tok, len, &h, &c), 0);
	assert_string_equal(h, header);
	assert_string_equal(c, claims);
	free(h);
	free(c);

	/* another key */
	assert_int_equal(jwt_verify_rs256(k->other, tok, len), -EBADMSG);
	/* a truncated token */
	assert_int_equal(jwt_verify_rs256(k->key, tok, len - 1), -EBADMSG);
	assert_int_equal(jwt_verify_rs256(k->key, tok, 0), -EBADMSG);
	free(tok);
}

static void
test_verify_tampered(void **state)
{
	struct keys *k = *state;
	const char *header = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
	char *tok = NULL, *copy;
	size_t len, sig, dot1;

	assert_int_equal(jwt_sign_rs256(k->key, header, "{\"sub\":\"a\",\"roles\":[]}", &tok), 0);
	len = strlen(tok);
	sig = (size_t)(strrchr(tok, '.') - tok) + 1;
	dot1 = (size_t)(strchr(tok, '.') - tok);
	copy = malloc(len + 2);
	assert_non_null(copy);

	/* one signature character changed */
	memcpy(copy, tok, len + 1);
	copy[sig + 10] = copy[sig + 10] == 'A' ? 'B' : 'A';
	assert_int_equal(jwt_verify_rs256(k->key, copy, len), -EBADMSG);

	/* one claims character changed */
	memcpy(copy, tok, len + 1);
	copy[dot1 + 3] = copy[dot1 + 3] == 'A' ? 'B' : 'A';
	assert_int_equal(jwt_verify_rs256(k->key, copy, len), -EBADMSG);

	/* signature cut short by four characters (three bytes) */
	memcpy(copy, tok, len + 1);
	assert_int_equal(jwt_verify_rs256(k->key, copy, len - 4), -EBADMSG);

	/* a fourth segment */
	memcpy(copy, tok, len);
	copy[len] = '.';
	copy[len + 1] = '\0';
	assert_int_equal(jwt_verify_rs256(k->key, copy, len + 1), -EBADMSG);

	/* signature removed */
	assert_int_equal(jwt_verify_rs256(k->key, tok, sig), -EBADMSG);
	free(copy);
	free(tok);

	/* a valid RSA signature under a header naming another algorithm */
	assert_int_equal(jwt_sign_rs256(k->key, "{\"alg\":\"HS256\"}", "{}", &tok), 0);
	assert_int_equal(jwt_verify_rs256(k->key, tok, strlen(tok)), -EBADMSG);
	free(tok);
	assert_int_equal(jwt_sign_rs256(k->key, "{\"typ\":\"JWT\"}", "{}", &tok), 0);
	assert_int_equal(jwt_verify_rs256(k->key, tok, strlen(tok)), -EBADMSG);
	free(tok);

	/* the jwt.io token is not RS256 at all */
	assert_int_equal(jwt_verify_rs256(k->key, JWTIO_TOKEN, strlen(JWTIO_TOKEN)), -EBADMSG);
}

static void
test_sign_rejects_non_rsa(void **state)
{
	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	char *tok = NULL;

	assert_non_null(ec);
	assert_int_equal(jwt_sign_rs256(ec, "{}", "{}", &tok), -EINVAL);
	assert_null(tok);
	assert_int_equal(jwt_verify_rs256(ec, JWTIO_TOKEN, strlen(JWTIO_TOKEN)), -EBADMSG);
	EVP_PKEY_free(ec);
}

static void
test_decode_jwtio(void **state)
{
	char *h = NULL, *c = NULL;

	assert_int_equal(jwt_decode(JWTIO_TOKEN, strlen(JWTIO_TOKEN), &h, &c), 0);
	assert_string_equal(h, "{\"alg\":\"HS256\",\"typ\":\"JWT\"}");
	assert_string_equal(c, "{\"sub\":\"1234567890\",\"name\":\"John Doe\",\"iat\":1516239022}");
	free(h);
	free(c);

	/* an empty signature (an unsecured JWS) still splits */
	assert_int_equal(jwt_decode("eyJhIjoxfQ.eyJiIjoyfQ.", 22, &h, &c), 0);
	assert_string_equal(h, "{\"a\":1}");
	assert_string_equal(c, "{\"b\":2}");
	free(h);
	free(c);
}

static void
test_decode_rejects(void **state)
{
	static const char *const bad[] = {
	    "",
	    "eyJhIjoxfQ",		       /* one segment */
	    "eyJhIjoxfQ.eyJiIjoyfQ",	       /* two segments */
	    "eyJhIjoxfQ.eyJiIjoyfQ.c2ln.c2ln", /* four segments */
	    "eyJhIjoxfQ.eyJiIjoyfQ.c2ln.",     /* four, last empty */
	    "..",			       /* empty header and claims */
	    ".eyJiIjoyfQ.c2ln",		       /* empty header */
	    "eyJhIjoxfQ..c2ln",		       /* empty claims */
	    "ey*hIjoxfQ.eyJiIjoyfQ.c2ln",      /* bad header base64 */
	    "eyJhIjoxfQ.eyJi+joyfQ.c2ln",      /* bad claims base64 */
	    "eyJhIjoxfQ.eyJiIjoyfQ.c2lnZ",     /* bad signature length */
	    "eyJhIjoxfQ.eyJiIjoyfQ.c2ln=",     /* bad signature padding */
	    "eyJhIjoxfQ.eyJiIjoyfQ.c2l/",      /* bad signature alphabet */
	    "AGJpbmFyeQ.eyJiIjoyfQ.c2ln",      /* header is not text */
	    "eyJhIjoxfQ.AQID.c2ln",	       /* claims are not text */
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *h = NULL, *c = NULL;

		expect_int(jwt_decode(bad[i], strlen(bad[i]), &h, &c), -EINVAL, bad[i]);
		assert_null(h);
		assert_null(c);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sign_verify),		 cmocka_unit_test(test_verify_tampered),
	    cmocka_unit_test(test_sign_rejects_non_rsa), cmocka_unit_test(test_decode_jwtio),
	    cmocka_unit_test(test_decode_rejects),
	};

	return cmocka_run_group_tests(tests, setup_keys, teardown_keys);
}
