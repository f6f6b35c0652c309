/*
 * Wiping before freeing: every buffer that held a token, a secret, a key or
 * an assertion goes through these, so the rule can be checked with grep.
 * libc only (explicit_bzero, which the compiler may not drop as a dead store).
 */
#ifndef BEARERD_WIPE_H
#define BEARERD_WIPE_H

#include <stddef.h>

/* Wipes p[0..len) and frees it; p may be NULL.  Returns NULL, for p = wipe_free(p, n). */
void *wipe_free(void *p, size_t len);

/* wipe_free for a NUL-terminated string, wiped up to its NUL; s may be NULL. */
char *wipe_free_str(char *s);

/*
 * realloc for a buffer that may hold a secret, which realloc would leave
 * behind unwiped when it moves: copies the first len bytes of *p (a block of
 * *cap bytes, or NULL) into a new block of new_cap bytes, then wipes and
 * frees the old one.  0, or -ENOMEM with *p and *cap untouched.
 */
int wipe_realloc(char **p, size_t *cap, size_t len, size_t new_cap);

#endif
