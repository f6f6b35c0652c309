/*
 * Wipe and free (see wipe.h): one helper family where assertion.c, fetch.c,
 * jwt.c, secret.c, compat.c, source_appservice.c and the client each had
 * their own, and so did the growing buffers of fetch.c, source_oauth2.c,
 * assertion.c and libbearer.c.
 */
#include "wipe.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void *
wipe_free(void *p, size_t len)
{
	if (p != NULL) {
		explicit_bzero(p, len);
		free(p);
	}
	return NULL;
}

char *
wipe_free_str(char *s)
{
	return s != NULL ? wipe_free(s, strlen(s)) : NULL;
}

int
wipe_realloc(char **p, size_t *cap, size_t len, size_t new_cap)
{
	char *n = malloc(new_cap);

	if (n == NULL)
		return -ENOMEM;
	if (*p != NULL)
		memcpy(n, *p, len);
	wipe_free(*p, *cap);
	*p = n;
	*cap = new_cap;
	return 0;
}
