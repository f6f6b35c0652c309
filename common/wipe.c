/*
 * Wipe and free (see wipe.h): one helper family where assertion.c, fetch.c,
 * jwt.c, secret.c, compat.c, source_appservice.c and the client each had
 * their own.
 */
#include "wipe.h"

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
