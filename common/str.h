/*
 * Small string helpers: optional (NULL-able) strings, and NULL-terminated
 * string vectors (strv), as config lists hold them.  libc only.
 */
#ifndef BEARERD_STR_H
#define BEARERD_STR_H

#include <stdbool.h>
#include <stddef.h>

/* Equality of two optional strings: both NULL, or both set and equal. */
bool str_eq_opt(const char *a, const char *b);

/*
 * strdup of an optional string: NULL for NULL.  On allocation failure it
 * returns NULL and sets *oom (left alone otherwise), so that a run of copies
 * is checked once at its end.
 */
char *str_dup_opt(const char *s, bool *oom);

/* Frees v and its strings; v may be NULL.  Returns NULL. */
char **strv_free(char **v);

/* The number of strings in v (0 for NULL). */
size_t strv_length(char *const *v);

/* Element-wise equality; two NULL vectors are equal, NULL and an empty one are not. */
bool strv_equal(char *const *a, char *const *b);

/* True when v (which may be NULL) holds a string equal to s. */
bool strv_contains(char *const *v, const char *s);

#endif
