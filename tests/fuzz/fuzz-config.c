/*
 * libFuzzer target for the configuration parser (daemon/config.c): any text
 * either loads into a config that frees cleanly or is refused with messages.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static FILE *errs;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config *c = NULL;
	char *text;

	if (errs == NULL) {
		errs = fopen("/dev/null", "w");
		if (errs == NULL)
			abort();
	}
	/* config_load_string takes a C string */
	text = malloc(size + 1);
	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	if (config_load_string(&c, "fuzz.conf", text, errs) == 0) {
		for (size_t i = 0; i < c->n_audiences; i++) {
			const struct config_audience *a = &c->audiences[i];

			if (config_audience_find(c, a->name) == NULL || a->identity == NULL)
				abort();
			config_audience_allows(a, 1000, 1000);
		}
		for (size_t i = 0; i < c->n_identities; i++) {
			if (config_identity_find(c, c->identities[i].name) == NULL)
				abort();
		}
		c = config_free(c);
	}
	free(text);
	return 0;
}
