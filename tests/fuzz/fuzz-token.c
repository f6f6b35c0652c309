/*
 * libFuzzer target for token-endpoint answers (daemon/token.c): whatever an
 * upstream sends, the result is either a usable token or an error with a
 * printable message, and clearing it frees everything.
 */
#include "token.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NOW_EPOCH 1795000000
#define ONE_YEAR  (365 * 24 * 3600)

static void
check(int ok)
{
	if (!ok)
		abort();
}

static void
check_printable(const char *s, size_t size)
{
	size_t n = strnlen(s, size);

	check(n < size);
	for (size_t i = 0; i < n; i++)
		check((unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct token_result r;
	int rc;

	token_result_init(&r);
	rc = token_parse_response((const char *)data, size, NOW_EPOCH, &r);
	if (rc == 0) {
		check(r.access_token != NULL && r.token_len > 0);
		check(strlen(r.access_token) == r.token_len && r.token_len <= TOKEN_MAX_LEN);
		check(r.expires_in > 0 && r.expires_in <= ONE_YEAR && r.error == 0);
	} else {
		check((rc == -EINVAL || rc == -ENOMEM) && r.error == rc);
		check(r.access_token == NULL);
		check(r.error_code[0] != '\0');
	}
	check_printable(r.error_code, sizeof(r.error_code));
	check_printable(r.message, sizeof(r.message));
	token_result_clear(&r);
	check(r.access_token == NULL);
	return 0;
}
