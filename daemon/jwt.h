/* JWT: RS256 signing for the dev issuer, verification and decoding (base64url: base64.h). */
#ifndef BEARERD_JWT_H
#define BEARERD_JWT_H

#include <stddef.h>
#include <openssl/evp.h>

/*
 * Signs header.claims (both JSON texts) with RS256 and returns the compact
 * serialization in *out (caller wipes and frees).
 */
int jwt_sign_rs256(EVP_PKEY *key, const char *header_json, const char *claims_json, char **out);

/*
 * Splits a compact JWS and returns its decoded header and claims JSON texts
 * (NUL-terminated, caller frees).  Does not verify the signature.
 */
int jwt_decode(const char *token, size_t len, char **header_json, char **claims_json);

/* Verifies an RS256 signature; 0 when valid, -EBADMSG when not. */
int jwt_verify_rs256(EVP_PKEY *key, const char *token, size_t len);

#endif
