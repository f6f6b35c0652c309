/* Token results: what a source hands the cache, and parsing of upstream token JSON. */
#ifndef BEARERD_TOKEN_H
#define BEARERD_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TOKEN_MAX_LEN 16384 /* longest access token we accept */

struct token_result {
	int error;	    /* 0 on success, else a negative errno */
	long http_status;   /* upstream HTTP status, 0 when none was received */
	char *access_token; /* owned, NUL-terminated; wiped by token_result_clear */
	size_t token_len;
	int64_t expires_in;  /* seconds from receipt; > 0 on success */
	int64_t expires_on;  /* upstream's epoch expiry, 0 when not given */
	int64_t refresh_in;  /* seconds, 0 when not given */
	int64_t retry_after; /* seconds, -1 when not given */
	bool permanent;	     /* a caller/config error: retrying soon will not help */
	char error_code[64]; /* upstream "error" (or our own code), "" on success */
	char message[512];   /* upstream description, printable ASCII, no secrets */
};

void token_result_init(struct token_result *r);
/*
 * Initialises r for a fetch that failed before it reached upstream, with
 * error and the message "could not start the upstream request: ...": the
 * cache and the source queue report it like an upstream failure.
 */
void token_result_start_failed(struct token_result *r, int error);
/* Wipes and frees the token; leaves r initialised. */
void token_result_clear(struct token_result *r);

/*
 * Parses a token endpoint's JSON answer (IMDS, App Service, OAuth2) into r.
 * access_token is required; expires_in (number or string) is preferred,
 * otherwise expires_on minus now_epoch.  expires_in must be > 0 and at most
 * one year.  On failure returns -EINVAL (or -ENOMEM) and fills r->error_code
 * and r->message; for an error document ("error", "error_description") the
 * upstream's code and description are copied.
 */
int token_parse_response(const char *body, size_t len, int64_t now_epoch, struct token_result *r);

#endif
