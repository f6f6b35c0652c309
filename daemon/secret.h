/*
 * Secret files: client secrets, private keys, federated tokens and header
 * secrets live in files that only bearerd's user (or root) may own and that
 * other users cannot read.  The config checks them at load time; sources read
 * them when they need them, checking again on the open file.
 */
#ifndef BEARERD_SECRET_H
#define BEARERD_SECRET_H

#include <stdbool.h>
#include <stddef.h>

#define SECRET_MAX_SIZE (64 * 1024) /* a key, a secret or a projected token is far smaller */

/*
 * A config value with a leading $CREDENTIALS_DIRECTORY or ${CREDENTIALS_DIRECTORY}
 * (systemd LoadCredential=) expanded from the environment; other values copied.
 * -ENOENT when the value names the variable and it is unset or empty.
 */
int secret_path_expand(const char *value, char **out);

/*
 * Checks that path is a regular file owned by our effective uid or root that
 * other users can neither write nor (unless others_may_read) read, and that
 * its group cannot write, nor read unless the group is our effective gid
 * (or the file is in $CREDENTIALS_DIRECTORY, where systemd's ACL shows as
 * group read).  Symbolic links on the way are followed only when owned by
 * root or by us (Kubernetes secret volumes are links the kubelet made).
 * Returns 0, or -errno with a one-line reason in msg (never the content).
 */
int secret_check_path(const char *path, bool others_may_read, char *msg, size_t size);

/*
 * The configuration file, open on fd, must be owned by root or by us, and
 * writable by nobody else: whoever can write it chooses where tokens come
 * from and who gets them.  A pipe passes.  0, or -EPERM with the reason in
 * msg (without the path, which the caller prefixes).
 */
int secret_check_config(int fd, char *msg, size_t size);

/*
 * Reads the whole secret file (at most SECRET_MAX_SIZE bytes) into *out,
 * NUL-terminated, trailing blanks and newlines removed, after the same
 * checks as secret_check_path on the open file.  -ENODATA when it is empty.
 * Free it with wipe_free (wipe.h).
 */
int secret_read(const char *path, bool others_may_read, char **out, size_t *len, char *msg,
		size_t size);

/*
 * secret_read for a file that is not secret (a certificate): the same bounds
 * (a regular file, opened without blocking, at most SECRET_MAX_SIZE bytes),
 * without the ownership and permission rules.
 */
int secret_read_public(const char *path, char **out, size_t *len, char *msg, size_t size);

/*
 * True when an upstream's text (an error answer) holds secret: as is,
 * percent-encoded as a form or query carries it, or JSON-escaped inside a
 * string.  True as well when it runs out of memory: the caller withholds.
 */
bool secret_in_text(const char *text, size_t len, const char *secret, size_t secret_len);

#endif
