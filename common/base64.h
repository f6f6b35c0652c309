/*
 * base64 (RFC 4648): the standard alphabet with padding (x5c certificates, HTTP
 * Basic credentials) and base64url without it (JWS segments, JWK parameters).
 * libc only: the daemon and bearerctl share it.
 */
#ifndef BEARERD_BASE64_H
#define BEARERD_BASE64_H

#include <stddef.h>

/* Longest input either way (-E2BIG beyond): far above any token, key or certificate. */
#define BASE64_MAX_LEN (1024 * 1024)

/*
 * in[0..len) in the standard alphabet, padded; *out is NUL-terminated and the
 * caller frees it (wiping it first when in was a secret).  0, -E2BIG or -ENOMEM.
 */
int base64_encode(const void *in, size_t len, char **out);

/* Same in the url-safe alphabet without padding (RFC 4648 section 5, RFC 7515 2). */
int base64url_encode(const void *in, size_t len, char **out);

/*
 * Decodes base64url, with or without padding, into *out (NUL-terminated for text
 * users; *out_len excludes the NUL).  Strict, so that each value has one
 * encoding: padding only at the end and only as much as the length needs, no
 * whitespace, no standard-alphabet characters, and the bits after the last
 * whole byte zero.  -EINVAL (out untouched), -E2BIG or -ENOMEM.
 */
int base64url_decode(const char *in, size_t len, unsigned char **out, size_t *out_len);

#endif
