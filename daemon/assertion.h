/*
 * Client assertions: the JWTs with which a client proves it holds a private
 * key (RFC 7523, Entra certificate credentials), signed with OpenSSL.
 */
#ifndef BEARERD_ASSERTION_H
#define BEARERD_ASSERTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define ASSERTION_LIFETIME 600 /* seconds: Entra asks for 5-10 minutes at most */

struct assertion_key;

/*
 * Loads the PEM private key at key_path (a secret file: PKCS#8 or traditional
 * RSA/EC; encrypted keys are refused) and, when cert_path is not NULL, its
 * certificate, which must match the key.  alg CONFIG_ALG_DEFAULT picks PS256
 * for RSA keys when entra is true, RS256 otherwise, and ES256 for EC P-256
 * keys.  entra selects Entra's header rule: RS256 carries the SHA-1 "x5t",
 * every other algorithm "x5t#S256".  Fails with a one-line reason in msg.
 */
int assertion_key_load(struct assertion_key **out, const char *key_path, const char *cert_path,
		       enum config_assertion_alg alg, bool entra, char *msg, size_t size);
struct assertion_key *assertion_key_free(struct assertion_key *k);

/* The algorithm that assertion_key_load settled on, "PS256" ... */
const char *assertion_key_alg(const struct assertion_key *k);

/*
 * Signs a client assertion: header alg, typ JWT, x5t#S256 or x5t when there
 * is a certificate, kid when kid is not NULL, x5c when with_x5c; claims aud,
 * iss = sub = client_id, a random UUID jti, iat = nbf = now, exp = now +
 * ASSERTION_LIFETIME.  *out is NUL-terminated; free it with wipe_free_str.
 */
int assertion_sign(const struct assertion_key *k, const char *client_id, const char *aud,
		   const char *kid, bool with_x5c, int64_t now, char **out);

#endif
