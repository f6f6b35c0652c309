/*
 * libFuzzer target for JWT decoding (daemon/jwt.c): compact tokens as
 * bearerctl claims shows them, and base64url on its own, which must round-trip
 * through the encoder.
 */
#include "jwt.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check(int ok)
{
	if (!ok)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	char *header = NULL, *claims = NULL, *enc = NULL;
	unsigned char *dec = NULL, *again = NULL;
	size_t dec_len, again_len;

	if (jwt_decode(in, size, &header, &claims) == 0) {
		check(header != NULL && claims != NULL);
		check(strlen(header) > 0 && strlen(claims) > 0);
		free(header);
		free(claims);
	}

	if (jwt_base64url_decode(in, size, &dec, &dec_len) == 0) {
		check(dec_len <= size);
		if (jwt_base64url_encode(dec, dec_len, &enc) == 0) {
			check(jwt_base64url_decode(enc, strlen(enc), &again, &again_len) == 0);
			check(again_len == dec_len && memcmp(again, dec, dec_len) == 0);
			free(again);
			free(enc);
		}
		free(dec);
	}
	return 0;
}
