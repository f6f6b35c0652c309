/* Unit tests for token.c: parsing of upstream token answers and wiping. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/crypto.h>

#include "token.h"

#define NOW 1700000000LL

/*
 * Interposes libcrypto's OPENSSL_cleanse so the test can see that the token
 * bytes were wiped, with the right length, before the memory was freed.
 */
static const void *cleanse_ptr;
static size_t cleanse_len;
static char cleanse_seen[64];

void
OPENSSL_cleanse(void *ptr, size_t len)
{
	cleanse_ptr = ptr;
	cleanse_len = len;
	snprintf(cleanse_seen, sizeof(cleanse_seen), "%.*s", (int)len, (const char *)ptr);
	memset(ptr, 0, len);
}

static int
parse(const char *json, struct token_result *r)
{
	token_result_init(r);
	return token_parse_response(json, strlen(json), NOW, r);
}

/* Asserts a rejection with our own code, and that no token is left behind. */
static void
assert_invalid(const char *json)
{
	struct token_result r;

	assert_int_equal(parse(json, &r), -EINVAL);
	assert_int_equal(r.error, -EINVAL);
	assert_string_equal(r.error_code, "invalid_response");
	assert_true(r.message[0] != '\0');
	assert_null(r.access_token);
	token_result_clear(&r);
}

static void
test_init(void **state)
{
	struct token_result r;

	memset(&r, 0x55, sizeof(r));
	token_result_init(&r);
	assert_null(r.access_token);
	assert_int_equal(r.error, 0);
	assert_int_equal(r.retry_after, -1);
	assert_string_equal(r.error_code, "");
	assert_string_equal(r.message, "");
}

static void
test_imds_strings(void **state)
{
	struct token_result r;

	assert_int_equal(parse("{\"access_token\":\"eyJ0.abc.def\",\"refresh_token\":\"\","
			       "\"expires_in\":\"3599\",\"expires_on\":\"1700003599\","
			       "\"not_before\":\"1699999999\",\"resource\":\"api://x\","
			       "\"token_type\":\"Bearer\"}",
			       &r),
			 0);
	assert_int_equal(r.error, 0);
	assert_string_equal(r.access_token, "eyJ0.abc.def");
	assert_int_equal(r.token_len, 12);
	assert_int_equal(r.expires_in, 3599);
	assert_int_equal(r.expires_on, 1700003599);
	assert_int_equal(r.refresh_in, 0);
	assert_string_equal(r.error_code, "");
	token_result_clear(&r);
	assert_null(r.access_token);
}

static void
test_entra_numbers(void **state)
{
	struct token_result r;

	assert_int_equal(parse("{\"token_type\":\"bearer\",\"expires_in\":3599,"
			       "\"ext_expires_in\":3599,\"refresh_in\":1800,"
			       "\"access_token\":\"tok\"}",
			       &r),
			 0);
	assert_string_equal(r.access_token, "tok");
	assert_int_equal(r.expires_in, 3599);
	assert_int_equal(r.expires_on, 0);
	assert_int_equal(r.refresh_in, 1800);
	token_result_clear(&r);
}

static void
test_expires_in_preferred(void **state)
{
	struct token_result r;

	/* expires_on disagrees (skewed upstream clock): expires_in wins */
	assert_int_equal(parse("{\"access_token\":\"t\",\"expires_on\":1700000100,"
			       "\"expires_in\":\"3600\"}",
			       &r),
			 0);
	assert_int_equal(r.expires_in, 3600);
	assert_int_equal(r.expires_on, 1700000100);
	token_result_clear(&r);

	/* a 2017-style date in expires_on is ignored when expires_in is there */
	assert_int_equal(parse("{\"access_token\":\"t\",\"expires_in\":60,"
			       "\"expires_on\":\"09/14/2017 00:00:00 PM +00:00\"}",
			       &r),
			 0);
	assert_int_equal(r.expires_in, 60);
	assert_int_equal(r.expires_on, 0);
	token_result_clear(&r);
}

static void
test_expires_on_only(void **state)
{
	struct token_result r;

	assert_int_equal(parse("{\"access_token\":\"t\",\"expires_on\":\"1700000600\"}", &r), 0);
	assert_int_equal(r.expires_in, 600);
	assert_int_equal(r.expires_on, 1700000600);
	token_result_clear(&r);

	assert_int_equal(parse("{\"access_token\":\"t\",\"expires_on\":1700000601}", &r), 0);
	assert_int_equal(r.expires_in, 601);
	token_result_clear(&r);

	assert_invalid("{\"access_token\":\"t\",\"expires_on\":\"1700000000\"}");
	assert_invalid("{\"access_token\":\"t\",\"expires_on\":1600000000}");
	assert_invalid("{\"access_token\":\"t\",\"expires_on\":\"09/14/2017 00:00:00 PM +00:00\"}");
	assert_invalid("{\"access_token\":\"t\"}");
}

static void
test_lifetime_bounds(void **state)
{
	struct token_result r;

	assert_invalid("{\"access_token\":\"t\",\"expires_in\":0}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":\"0\"}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":-5}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":\"-5\"}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":31536001}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":99999999999999999999999}");
	assert_invalid("{\"access_token\":\"t\",\"expires_on\":99999999999}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":\"soon\"}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":\"\"}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":3599.5}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":\"3599.5\"}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":3.6e3}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":null}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":true}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":[3600]}");

	/* exactly one year is still accepted, one second is too */
	assert_int_equal(parse("{\"access_token\":\"t\",\"expires_in\":31536000}", &r), 0);
	token_result_clear(&r);
	assert_int_equal(parse("{\"access_token\":\"t\",\"expires_in\":1}", &r), 0);
	token_result_clear(&r);
}

static void
test_refresh_in(void **state)
{
	struct token_result r;

	/* refresh_in is advisory: nonsense is dropped, not fatal */
	assert_int_equal(
	    parse("{\"access_token\":\"t\",\"expires_in\":100,\"refresh_in\":100}", &r), 0);
	assert_int_equal(r.refresh_in, 0);
	token_result_clear(&r);
	assert_int_equal(
	    parse("{\"access_token\":\"t\",\"expires_in\":100,\"refresh_in\":\"x\"}", &r), 0);
	assert_int_equal(r.refresh_in, 0);
	token_result_clear(&r);
	assert_int_equal(
	    parse("{\"access_token\":\"t\",\"expires_in\":100,\"refresh_in\":\"50\"}", &r), 0);
	assert_int_equal(r.refresh_in, 50);
	token_result_clear(&r);
}

static void
test_bad_tokens(void **state)
{
	assert_invalid("{\"expires_in\":3600}");
	assert_invalid("{\"access_token\":\"\",\"expires_in\":3600}");
	assert_invalid("{\"access_token\":null,\"expires_in\":3600}");
	assert_invalid("{\"access_token\":12345,\"expires_in\":3600}");
	assert_invalid("{\"access_token\":[\"a\"],\"expires_in\":3600}");
	assert_invalid("{\"access_token\":\"a b\",\"expires_in\":3600}");
	assert_invalid("{\"access_token\":\"ab\\r\\nX-Evil: 1\",\"expires_in\":3600}");
	assert_invalid("{\"access_token\":\"ab\\n\",\"expires_in\":3600}");
	assert_invalid("{\"access_token\":\"ab\\t\",\"expires_in\":3600}");
	assert_invalid("{\"access_token\":\"ab\\u007f\",\"expires_in\":3600}");
	assert_invalid("{\"access_token\":\"ab\\u0000cd\",\"expires_in\":3600}");
	assert_invalid("{\"access_token\":\"t\\u00e9\",\"expires_in\":3600}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":3600,\"token_type\":\"pop\"}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":3600,\"token_type\":\"\"}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":3600,\"token_type\":1}");
}

static void
test_token_length(void **state)
{
	size_t n = TOKEN_MAX_LEN + 1;
	char *json = malloc(n + 64);
	struct token_result r;
	int len;

	assert_non_null(json);
	len = snprintf(json, n + 64, "{\"expires_in\":3600,\"access_token\":\"");
	memset(json + len, 'a', n);
	strcpy(json + len + n, "\"}");
	assert_invalid(json);

	/* TOKEN_MAX_LEN itself is fine */
	strcpy(json + len + n - 1, "\"}");
	assert_int_equal(parse(json, &r), 0);
	assert_int_equal(r.token_len, TOKEN_MAX_LEN);
	token_result_clear(&r);
	free(json);
}

static void
test_garbage(void **state)
{
	static const char doc_then_junk[] = "{\"access_token\":\"t\",\"expires_in\":60}garbage";
	struct token_result r;

	assert_invalid("");
	assert_invalid("   ");
	assert_invalid("null");
	assert_invalid("\"access_token\"");
	assert_invalid("42");
	assert_invalid("[]");
	assert_invalid("[{\"access_token\":\"t\",\"expires_in\":3600}]");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":3600");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":3600}}");
	assert_invalid("{\"access_token\":\"t\",\"expires_in\":3600} {}");
	assert_invalid("{access_token:\"t\",expires_in:3600}");
	assert_invalid("<html><body>502 Bad Gateway</body></html>");

	/* NULL with a zero length is "empty", not a crash */
	token_result_init(&r);
	assert_int_equal(token_parse_response(NULL, 0, NOW, &r), -EINVAL);
	assert_string_equal(r.error_code, "invalid_response");

	/* the length bounds the parse, not a NUL */
	token_result_init(&r);
	assert_int_equal(token_parse_response(doc_then_junk, strlen(doc_then_junk) - 7, NOW, &r),
			 0);
	assert_string_equal(r.access_token, "t");
	token_result_clear(&r);
}

static void
test_oversized(void **state)
{
	char json[8192];
	size_t len = 0;

	/* 200 members is far beyond any token answer: rejected, not truncated */
	len += (size_t)snprintf(json + len, sizeof(json) - len,
				"{\"access_token\":\"t\",\"expires_in\":3600");
	for (int i = 0; i < 200; i++)
		len += (size_t)snprintf(json + len, sizeof(json) - len, ",\"k%d\":%d", i, i);
	snprintf(json + len, sizeof(json) - len, "}");
	assert_invalid(json);

	/* deep nesting counts too */
	len = (size_t)snprintf(json, sizeof(json),
			       "{\"access_token\":\"t\",\"expires_in\":3600,\"x\":");
	for (int i = 0; i < 200; i++)
		json[len++] = '[';
	for (int i = 0; i < 200; i++)
		json[len++] = ']';
	json[len++] = '}';
	json[len] = '\0';
	assert_invalid(json);
}

static void
test_error_imds(void **state)
{
	struct token_result r;

	assert_int_equal(parse("{\"error\":\"invalid_request\","
			       "\"error_description\":\"Identity not found\"}",
			       &r),
			 -EINVAL);
	assert_int_equal(r.error, -EINVAL);
	assert_string_equal(r.error_code, "invalid_request");
	assert_string_equal(r.message, "Identity not found");
	assert_null(r.access_token);

	/* "error" wins even when a token is present */
	assert_int_equal(parse("{\"error\":\"server_error\",\"access_token\":\"t\","
			       "\"expires_in\":60}",
			       &r),
			 -EINVAL);
	assert_string_equal(r.error_code, "server_error");
	assert_string_equal(r.message, "upstream returned an error");
	assert_null(r.access_token);

	/* IMDS's api-version complaint: a long code, truncated and printable */
	assert_int_equal(parse("{\"error\":\"Bad request. api-version is invalid or was not "
			       "specified in the request. For more information refer to "
			       "aka.ms/azureimds\",\"newest-versions\":[\"2023-07-01\"]}",
			       &r),
			 -EINVAL);
	assert_int_equal(strlen(r.error_code), sizeof(r.error_code) - 1);
	assert_true(strncmp(r.error_code, "Bad request. api-version", 24) == 0);
}

static void
test_error_entra(void **state)
{
	struct token_result r;

	/* the description already carries the trace id: appended only once */
	assert_int_equal(
	    parse("{\"error\":\"invalid_scope\",\"error_description\":\"AADSTS70011: The "
		  "provided value for scope is not valid.\\r\\nTrace ID: "
		  "0000aaaa-11bb-cccc-dd22-eeeeee333333\\r\\nTimestamp: "
		  "2016-01-09 02:02:12Z\",\"error_codes\":[70011],"
		  "\"timestamp\":\"2016-01-09 02:02:12Z\","
		  "\"trace_id\":\"0000aaaa-11bb-cccc-dd22-eeeeee333333\","
		  "\"correlation_id\":\"aaaa0000-bb11-2222-33cc-444444dddddd\"}",
		  &r),
	    -EINVAL);
	assert_string_equal(r.error_code, "invalid_scope");
	assert_non_null(strstr(r.message, "AADSTS70011"));
	assert_null(strchr(r.message, '\r'));
	assert_null(strchr(r.message, '\n'));
	assert_non_null(strstr(r.message, "correlation_id=aaaa0000-bb11-2222-33cc-444444dddddd"));
	assert_null(strstr(r.message, "trace_id="));

	/* short description: both ids appended */
	assert_int_equal(parse("{\"error\":\"invalid_client\",\"error_description\":\"bad\","
			       "\"trace_id\":\"T1\",\"correlation_id\":\"C1\"}",
			       &r),
			 -EINVAL);
	assert_string_equal(r.message, "bad trace_id=T1 correlation_id=C1");

	/* error_codes: shown unless the description names them already */
	assert_int_equal(parse("{\"error\":\"invalid_client\",\"error_description\":\"bad\","
			       "\"error_codes\":[7000215, 50011],\"trace_id\":\"T1\"}",
			       &r),
			 -EINVAL);
	assert_string_equal(r.message, "bad error_codes=7000215,50011 trace_id=T1");
	assert_int_equal(parse("{\"error\":\"invalid_client\",\"error_description\":"
			       "\"AADSTS7000215: Invalid client secret provided.\","
			       "\"error_codes\":[7000215],\"error_uri\":\"x\"}",
			       &r),
			 -EINVAL);
	assert_string_equal(r.message, "AADSTS7000215: Invalid client secret provided.");
	assert_int_equal(parse("{\"error\":\"e\",\"error_description\":\"d\","
			       "\"error_codes\":[1,\"x\",{\"a\":[2]},3,4,5,6]}",
			       &r),
			 -EINVAL);
	assert_string_equal(r.message, "d error_codes=1,3"); /* the first 4 elements only */
	assert_int_equal(
	    parse("{\"error\":\"e\",\"error_description\":\"d\",\"error_codes\":7}", &r), -EINVAL);
	assert_string_equal(r.message, "d");
}

static void
test_error_long_description(void **state)
{
	char json[4096];
	struct token_result r;
	int len;

	len = snprintf(json, sizeof(json), "{\"error\":\"invalid_grant\",\"error_description\":\"");
	memset(json + len, 'x', 2000);
	len += 2000;
	snprintf(json + len, sizeof(json) - (size_t)len, "\\t\\r\\n\",\"trace_id\":\"T9\"}");
	assert_int_equal(parse(json, &r), -EINVAL);
	assert_int_equal(strlen(r.message), sizeof(r.message) - 1);
	/* the id survives truncation of the description */
	assert_non_null(strstr(r.message, " trace_id=T9"));
	for (size_t i = 0; r.message[i]; i++)
		assert_true(r.message[i] >= 0x20 && r.message[i] < 0x7f);
}

static void
test_error_other_shapes(void **state)
{
	struct token_result r;

	/* Service Fabric: error is an object */
	assert_int_equal(parse("{\"error\":{\"correlationId\":\"c\",\"code\":"
			       "\"ManagedIdentityNotFound\",\"message\":\"no identity\"}}",
			       &r),
			 -EINVAL);
	assert_string_equal(r.error_code, "ManagedIdentityNotFound");
	assert_string_equal(r.message, "no identity");

	/* error of an odd type still yields a code */
	assert_int_equal(parse("{\"error\":42}", &r), -EINVAL);
	assert_string_equal(r.error_code, "upstream_error");

	/* control characters in the code are neutralised */
	assert_int_equal(parse("{\"error\":\"a\\nb\",\"error_description\":\"x\\u001b[31m\"}", &r),
			 -EINVAL);
	assert_string_equal(r.error_code, "a b");
	assert_string_equal(r.message, "x [31m");
}

static void
test_clear_wipes(void **state)
{
	struct token_result r;
	char *p;

	assert_int_equal(parse("{\"access_token\":\"SECRET-TOKEN\",\"expires_in\":60}", &r), 0);
	p = r.access_token;
	cleanse_ptr = NULL;
	cleanse_len = 0;
	token_result_clear(&r);
	assert_ptr_equal(cleanse_ptr, p);
	assert_int_equal(cleanse_len, strlen("SECRET-TOKEN"));
	assert_string_equal(cleanse_seen, "SECRET-TOKEN");
	assert_null(r.access_token);
	assert_int_equal(r.token_len, 0);
	assert_int_equal(r.retry_after, -1);

	/* clearing twice, or a stolen token, is harmless */
	token_result_clear(&r);
	assert_int_equal(parse("{\"access_token\":\"t\",\"expires_in\":60}", &r), 0);
	free(r.access_token);
	r.access_token = NULL;
	cleanse_ptr = NULL;
	token_result_clear(&r);
	assert_null(cleanse_ptr);
}

static void
test_rejected_token_wiped(void **state)
{
	cleanse_seen[0] = '\0';
	assert_invalid("{\"expires_in\":3600,\"access_token\":\"SECRET WITH SPACE\"}");
	assert_string_equal(cleanse_seen, "SECRET WITH SPACE");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_init),
	    cmocka_unit_test(test_imds_strings),
	    cmocka_unit_test(test_entra_numbers),
	    cmocka_unit_test(test_expires_in_preferred),
	    cmocka_unit_test(test_expires_on_only),
	    cmocka_unit_test(test_lifetime_bounds),
	    cmocka_unit_test(test_refresh_in),
	    cmocka_unit_test(test_bad_tokens),
	    cmocka_unit_test(test_token_length),
	    cmocka_unit_test(test_garbage),
	    cmocka_unit_test(test_oversized),
	    cmocka_unit_test(test_error_imds),
	    cmocka_unit_test(test_error_entra),
	    cmocka_unit_test(test_error_long_description),
	    cmocka_unit_test(test_error_other_shapes),
	    cmocka_unit_test(test_clear_wipes),
	    cmocka_unit_test(test_rejected_token_wiped),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
