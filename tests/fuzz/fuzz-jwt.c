/*
 * libFuzzer target for JWT decoding (daemon/jwt.c): compact tokens as
 * bearerctl claims shows them, and base64url on its own (common/base64.c),
 * which must round-trip through the encoder and agree with standard base64.
 */
#include "base64.h"
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

/* Standard base64 is the url form with '+' and '/' for '-' and '_', then padded. */
static void
check_standard(const unsigned char *bin, size_t len, const char *url)
{
	size_t n = strlen(url), i;
	char *std = NULL;

	check(base64_encode(bin, len, &std) == 0);
	check(strlen(std) == (n + 3) / 4 * 4);
	for (i = 0; i < n; i++)
		check(std[i] == (url[i] == '-' ? '+' : url[i] == '_' ? '/' : url[i]));
	for (; std[i] != '\0'; i++)
		check(std[i] == '=');
	free(std);
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

	if (base64url_decode(in, size, &dec, &dec_len) == 0) {
		check(dec_len <= size);
		if (base64url_encode(dec, dec_len, &enc) == 0) {
			check(base64url_decode(enc, strlen(enc), &again, &again_len) == 0);
			check(again_len == dec_len && memcmp(again, dec, dec_len) == 0);
			free(again);
			check_standard(dec, dec_len, enc);
			free(enc);
		}
		free(dec);
	}
	return 0;
}
