/*
 * libFuzzer target for the JSON reader (common/json.c): the grammar check on
 * top of jsmn, then every reader on every token of a document it accepts.
 */
#include "json.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_TOKENS 256

static void
check(int ok)
{
	if (!ok)
		abort();
}

/* Looks up each member of the object at obj by its own (decoded) name. */
static void
walk_object(const struct json_doc *doc, int obj)
{
	int k = obj + 1;

	for (int m = 0; m < doc->tok[obj].size; m++) {
		char *key = NULL;
		size_t key_len;
		int v;

		check(k + 1 < doc->ntok && doc->tok[k].type == JSMN_STRING);
		if (json_string_dup(doc, k, &key, &key_len) == 0) {
			check(strlen(key) == key_len);
			v = json_find(doc, obj, key);
			/*
			 * The first member of that name, which may come before this one;
			 * json_find decodes only escaped keys shorter than 256 bytes.
			 */
			if (doc->tok[k].end - doc->tok[k].start < 256)
				check(v > obj && v <= k + 1);
			free(key);
		}
		k = json_skip(doc, k + 1);
	}
	check(k == json_skip(doc, obj));
}

static void
walk(const struct json_doc *doc)
{
	for (int i = 0; i < doc->ntok; i++) {
		char *s = NULL;
		char small[8];
		size_t n;
		int64_t v;
		int next = json_skip(doc, i);

		check(next > i && next <= doc->ntok);
		if (doc->tok[i].type == JSMN_OBJECT) {
			walk_object(doc, i);
			json_find(doc, i, "access_token");
			json_find(doc, i, "");
		}
		if (json_string_dup(doc, i, &s, &n) == 0) {
			const char *raw = doc->js + doc->tok[i].start;
			size_t raw_len = (size_t)(doc->tok[i].end - doc->tok[i].start);
			char *lenient = NULL;
			size_t lenient_len;

			check(n <= raw_len);
			/* where the strict reader accepts a string, the lenient one agrees */
			check(json_unescape_text(raw, raw_len, &lenient, &lenient_len) == 0);
			check(lenient_len == n && memcmp(lenient, s, n) == 0);
			free(lenient);
			free(s);
		}
		if (json_string_copy(doc, i, small, sizeof(small)) == 0)
			check(strlen(small) < sizeof(small));
		json_int64(doc, i, &v);
	}
	check(json_skip(doc, doc->ntok) == doc->ntok);
	check(json_skip(doc, -1) == doc->ntok);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static jsmntok_t toks[MAX_TOKENS];
	const char *js = (const char *)data;
	struct json_doc doc;
	int r;

	r = json_parse(&doc, js, size, toks, MAX_TOKENS);
	if (r == 0)
		walk(&doc);
	else
		check(r == -EINVAL || r == -E2BIG);
	if (json_parse_array(&doc, js, size, toks, MAX_TOKENS) == 0)
		walk(&doc);
	r = json_count(js, size);
	check(r >= -EINVAL);
	{
		char *text = NULL;
		size_t len;

		check(json_unescape_text(js, size, &text, &len) == 0);
		check(len <= size && text[len] == '\0');
		free(text);
	}
	return 0;
}
