/*
 * Secret files (see secret.h).  The rule follows OpenSMTPD and ssh: a secret
 * that another user can read, or that a user other than ours or root could
 * have written, is refused rather than used, with a message saying why.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "secret.h"

#define CRED_VAR "CREDENTIALS_DIRECTORY"

int
secret_path_expand(const char *value, char **out)
{
	static const char plain[] = "$" CRED_VAR, braced[] = "${" CRED_VAR "}";
	const char *rest = NULL, *dir;
	char *s;

	if (strncmp(value, braced, sizeof(braced) - 1) == 0)
		rest = value + sizeof(braced) - 1;
	else if (strncmp(value, plain, sizeof(plain) - 1) == 0 &&
		 (value[sizeof(plain) - 1] == '/' || value[sizeof(plain) - 1] == '\0'))
		rest = value + sizeof(plain) - 1;
	if (rest == NULL) {
		s = strdup(value);
	} else {
		dir = getenv(CRED_VAR);
		if (dir == NULL || dir[0] == '\0')
			return -ENOENT;
		if (asprintf(&s, "%s%s", dir, rest) < 0)
			s = NULL;
	}
	if (s == NULL)
		return -ENOMEM;
	*out = s;
	return 0;
}

static int
check_stat(const struct stat *st, const char *path, bool others_may_read, char *msg, size_t size)
{
	uid_t me = geteuid();

	if (!S_ISREG(st->st_mode)) {
		snprintf(msg, size, "'%.200s' is not a regular file", path);
		return -EINVAL;
	}
	if (st->st_uid != me && st->st_uid != 0) {
		snprintf(msg, size,
			 "'%.200s' is owned by uid %u, not by bearerd's user (uid %u) or root",
			 path, (unsigned)st->st_uid, (unsigned)me);
		return -EPERM;
	}
	if ((st->st_mode & S_IWOTH) || (!others_may_read && (st->st_mode & S_IROTH))) {
		snprintf(msg, size, "'%.200s' is %s by other users (mode %04o): chmod o-rwx it",
			 path, (st->st_mode & S_IWOTH) ? "writable" : "readable",
			 (unsigned)(st->st_mode & 07777));
		return -EPERM;
	}
	return 0;
}

int
secret_check_path(const char *path, bool others_may_read, char *msg, size_t size)
{
	struct stat st;
	int r;

	if (stat(path, &st) < 0) {
		r = -errno;
		snprintf(msg, size, "cannot read '%.200s': %s", path, strerror(-r));
		return r;
	}
	r = check_stat(&st, path, others_may_read, msg, size);
	if (r < 0)
		return r;
	if (access(path, R_OK) < 0) {
		r = -errno;
		snprintf(msg, size, "cannot read '%.200s': %s", path, strerror(-r));
		return r;
	}
	return 0;
}

char *
secret_free(char *s, size_t len)
{
	if (s != NULL) {
		OPENSSL_cleanse(s, len);
		free(s);
	}
	return NULL;
}

int
secret_read(const char *path, bool others_may_read, char **out, size_t *len, char *msg, size_t size)
{
	struct stat st;
	char *buf = NULL, *copy;
	size_t n = 0;
	ssize_t got;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		r = -errno;
		snprintf(msg, size, "cannot read '%.200s': %s", path, strerror(-r));
		return r;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		snprintf(msg, size, "cannot read '%.200s': %s", path, strerror(-r));
		goto out;
	}
	r = check_stat(&st, path, others_may_read, msg, size);
	if (r < 0)
		goto out;
	/* the cap is the buffer: a file larger than SECRET_MAX_SIZE fails below */
	buf = malloc(SECRET_MAX_SIZE + 1);
	if (buf == NULL) {
		r = -ENOMEM;
		snprintf(msg, size, "out of memory");
		goto out;
	}
	for (;;) {
		got = read(fd, buf + n, SECRET_MAX_SIZE + 1 - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			r = -errno;
			snprintf(msg, size, "cannot read '%.200s': %s", path, strerror(-r));
			goto out;
		}
		if (got == 0)
			break;
		n += (size_t)got;
		if (n > SECRET_MAX_SIZE) {
			r = -EFBIG;
			snprintf(msg, size, "'%.200s' is larger than %d bytes", path,
				 SECRET_MAX_SIZE);
			goto out;
		}
	}
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' ||
			 buf[n - 1] == '\t'))
		n--;
	buf[n] = '\0';
	if (n == 0) {
		r = -ENODATA;
		snprintf(msg, size, "'%.200s' is empty", path);
		goto out;
	}
	if (memchr(buf, '\0', n) != NULL) {
		r = -EINVAL;
		snprintf(msg, size, "'%.200s' contains a NUL byte", path);
		goto out;
	}
	/* a right-sized copy: the 64 KiB buffer is wiped below */
	copy = malloc(n + 1);
	if (copy == NULL) {
		r = -ENOMEM;
		snprintf(msg, size, "out of memory");
		goto out;
	}
	memcpy(copy, buf, n + 1);
	*out = copy;
	*len = n;
	r = 0;
out:
	secret_free(buf, SECRET_MAX_SIZE + 1);
	close(fd);
	return r;
}
