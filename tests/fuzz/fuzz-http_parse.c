/*
 * libFuzzer target for the request-head parser (daemon/http_parse.c): the one
 * parser bearerd writes itself.  A parsed head's target is then split and
 * decoded the way the API and compat layers do, with output buffers both
 * roomy and tight so that -ENOSPC paths run too.
 */
#include "http_parse.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The query names the daemon asks for, and one it never does. */
static const char *const query_names[] = {
    "resource",	 "identity",   "min_validity", "api-version",  "client_id",
    "object_id", "msi_res_id", "mi_res_id",    "principal_id", "",
};

static void
check(int ok)
{
	if (!ok)
		abort();
}

static void
fuzz_query(const char *query, size_t len)
{
	char big[4096], small[8];
	int count, r;

	for (size_t i = 0; i < sizeof(query_names) / sizeof(query_names[0]); i++) {
		count = -1;
		r = http_query_get(query, len, query_names[i], big, sizeof(big), &count);
		if (r == 0)
			check(strlen(big) < sizeof(big) && count >= 1);
		else if (r == -ENOENT)
			check(count == 0);
		r = http_query_get(query, len, query_names[i], small, sizeof(small), NULL);
		if (r == 0)
			check(strlen(small) < sizeof(small));
		http_query_get(query, len, query_names[i], NULL, 0, &count);
	}
}

static void
fuzz_path(const char *path, size_t len)
{
	char *out = malloc(len + 1);
	char small[4];
	size_t n;

	if (out == NULL)
		return;
	/* decoding never grows: len + 1 always fits, and %00 is refused */
	if (http_percent_decode(path, len, out, len + 1, &n) == 0)
		check(n <= len && strlen(out) == n);
	if (http_percent_decode(path, len, small, sizeof(small), &n) == 0)
		check(n < sizeof(small) && strlen(small) == n);
	free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct http_head h;
	const char *q;
	size_t plen;
	int n;

	n = http_parse_request_head(buf, size, &h);
	if (n <= 0)
		return 0;
	check((size_t)n <= size);
	check(h.nheaders >= 0 && h.nheaders <= HTTP_MAX_HEADERS);
	check(h.minor == 0 || h.minor == 1);
	check(h.method >= buf && h.method + h.method_len <= buf + n);
	check(h.target >= buf && h.target + h.target_len <= buf + n);
	for (int i = 0; i < h.nheaders; i++) {
		const struct http_header *hd = &h.headers[i];

		check(hd->name >= buf && hd->name + hd->name_len <= buf + n);
		check(hd->value >= buf && hd->value + hd->value_len <= buf + n);
	}
	http_head_find(&h, "host");
	http_head_find(&h, "Content-Length");
	http_head_find(&h, "Metadata");

	/* http_request_path's split: path before '?', query after it */
	q = memchr(h.target, '?', h.target_len);
	plen = q != NULL ? (size_t)(q - h.target) : h.target_len;
	fuzz_path(h.target, plen);
	if (q != NULL)
		fuzz_query(q + 1, h.target_len - plen - 1);
	return 0;
}
