/*
 * String helpers (see str.h): one copy where config.c, metrics.c, compat.c,
 * source_azure.c and source_oauth2.c each had their own.
 */
#include "str.h"

#include <stdlib.h>
#include <string.h>

bool
str_eq_opt(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

char *
str_dup_opt(const char *s, bool *oom)
{
	char *d;

	if (s == NULL)
		return NULL;
	d = strdup(s);
	if (d == NULL)
		*oom = true;
	return d;
}

char **
strv_free(char **v)
{
	if (v == NULL)
		return NULL;
	for (size_t i = 0; v[i] != NULL; i++)
		free(v[i]);
	free(v);
	return NULL;
}

size_t
strv_length(char *const *v)
{
	size_t n = 0;

	while (v != NULL && v[n] != NULL)
		n++;
	return n;
}

bool
strv_equal(char *const *a, char *const *b)
{
	size_t i;

	if (a == NULL || b == NULL)
		return a == b;
	for (i = 0; a[i] != NULL && b[i] != NULL; i++) {
		if (strcmp(a[i], b[i]) != 0)
			return false;
	}
	return a[i] == NULL && b[i] == NULL;
}

bool
strv_contains(char *const *v, const char *s)
{
	for (size_t i = 0; v != NULL && v[i] != NULL; i++) {
		if (strcmp(v[i], s) == 0)
			return true;
	}
	return false;
}
