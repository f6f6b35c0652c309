/*
 * bearer-get: the smallest libbearer program.  Prints the token for an audience and its
 * expiry (seconds since the epoch) on two lines; integration tests compare the first line
 * byte for byte with what the daemon serves.
 *
 * Usage: bearer-get AUDIENCE [MIN_VALIDITY]   (socket: $BEARERD_SOCKET or the default)
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bearer.h"

int
main(int argc, char **argv)
{
	struct bearer_token tok;
	int64_t min_validity = 0;
	int r;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: bearer-get AUDIENCE [MIN_VALIDITY]\n");
		return 2;
	}
	if (argc == 3)
		min_validity = strtoll(argv[2], NULL, 10);

	r = bearer_get_token(NULL, argv[1], min_validity, &tok);
	if (r < 0) {
		fprintf(stderr, "bearer-get: %s: %s\n", argv[1], strerror(-r));
		return 1;
	}
	printf("%s\n%" PRId64 "\n", tok.access_token, tok.expires_on);
	bearer_token_clear(&tok);
	return 0;
}
