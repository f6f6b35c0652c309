/*
 * Secret files (see secret.h).  The rule follows OpenSMTPD and ssh: a secret
 * that another user can read (as anyone, or through a group that is not
 * bearerd's own), or that a user other than ours or root could have written
 * (as owner, through the group or as anyone), is refused rather than used,
 * with a message saying why.  Symbolic links are followed only when root or
 * bearerd's user made them: Kubernetes secret volumes are links
 * (key -> ..data/key, ..data -> ..2024_...), made by the kubelet as root; a
 * link another user made, to /etc/shadow say, is theirs.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "secret.h"
#include "urlencode.h"
#include "wipe.h"

#define CRED_VAR  "CREDENTIALS_DIRECTORY"
#define MAX_LINKS 40 /* as the kernel's path walk */

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

/* What a file must satisfy besides being a regular file. */
enum file_rule {
	RULE_SECRET, /* ours or root's; others can neither read nor write, nor can the group */
	RULE_SECRET_SHARED, /* the same, but others may read it (a projected token) */
	RULE_PUBLIC,	    /* not a secret (a certificate): only regular and bounded */
};

/*
 * True when path lies inside $CREDENTIALS_DIRECTORY (systemd's LoadCredential=):
 * systemd grants bearerd's user read access there with an ACL, which shows
 * as group read in the mode, and the directory is private to the service.
 */
static bool
in_credentials_dir(const char *path)
{
	const char *dir = getenv(CRED_VAR);
	size_t n = dir != NULL ? strlen(dir) : 0;

	while (n > 1 && dir[n - 1] == '/')
		n--;
	if (n == 0 || dir[0] != '/' || strncmp(path, dir, n) != 0 || path[n] != '/')
		return false;
	for (const char *p = path + n; (p = strstr(p, "/..")) != NULL; p += 3)
		if (p[3] == '/' || p[3] == '\0')
			return false;
	return true;
}

static int
check_stat(const struct stat *st, const char *path, enum file_rule rule, char *msg, size_t size)
{
	uid_t me = geteuid();

	if (!S_ISREG(st->st_mode)) {
		snprintf(msg, size, "'%.200s' is not a regular file", path);
		return -EINVAL;
	}
	if (rule == RULE_PUBLIC)
		return 0;
	if (st->st_uid != me && st->st_uid != 0) {
		snprintf(msg, size,
			 "'%.200s' is owned by uid %u, not by bearerd's user (uid %u) or root",
			 path, (unsigned)st->st_uid, (unsigned)me);
		return -EPERM;
	}
	if ((st->st_mode & S_IWOTH) || (rule == RULE_SECRET && (st->st_mode & S_IROTH))) {
		snprintf(msg, size, "'%.200s' is %s by other users (mode %04o): chmod o-rwx it",
			 path, (st->st_mode & S_IWOTH) ? "writable" : "readable",
			 (unsigned)(st->st_mode & 07777));
		return -EPERM;
	}
	/* another user in the group could have put their own secret (or token) there */
	if (st->st_mode & S_IWGRP) {
		snprintf(msg, size, "'%.200s' is writable by its group (mode %04o): chmod g-w it",
			 path, (unsigned)(st->st_mode & 07777));
		return -EPERM;
	}
	/* as ssh: the group's other members could read it, unless the group is bearerd's own */
	if (rule == RULE_SECRET && (st->st_mode & S_IRGRP) && st->st_gid != getegid() &&
	    !in_credentials_dir(path)) {
		snprintf(msg, size,
			 "'%.200s' is readable by its group (gid %u, mode %04o), which is not "
			 "bearerd's own (gid %u): chmod g-r it, or give it bearerd's group",
			 path, (unsigned)st->st_gid, (unsigned)(st->st_mode & 07777),
			 (unsigned)getegid());
		return -EPERM;
	}
	return 0;
}

/*
 * Opens path for reading (O_NONBLOCK: a FIFO does not wait for a writer),
 * walking it one component at a time so that every symbolic link on the way,
 * and only those, are checked: each must be owned by root or by us.  The fd
 * is the file the checks saw.  Returns the fd, or -errno with a reason.
 */
static int
open_walk(const char *path, char *msg, size_t size)
{
	char rest[PATH_MAX], link[PATH_MAX], comp[NAME_MAX + 1];
	const char *p = rest;
	int dirfd, links = 0, fd = -1, r;
	uid_t me = geteuid();

	if (strlen(path) >= sizeof(rest)) {
		snprintf(msg, size, "cannot read '%.200s': %s", path, strerror(ENAMETOOLONG));
		return -ENAMETOOLONG;
	}
	strcpy(rest, path);
	dirfd = open(path[0] == '/' ? "/" : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0)
		goto fail_errno;
	for (;;) {
		struct stat st;
		size_t n;
		bool last;

		while (*p == '/')
			p++;
		n = strcspn(p, "/");
		if (n == 0) { /* "dir/": the path names a directory */
			r = -EISDIR;
			goto fail;
		}
		if (n > NAME_MAX) {
			r = -ENAMETOOLONG;
			goto fail;
		}
		memcpy(comp, p, n);
		comp[n] = '\0';
		p += n;
		last = p[strspn(p, "/")] == '\0';
		if (strcmp(comp, ".") == 0 && !last)
			continue;
		fd = openat(dirfd, comp, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &st) < 0)
			goto fail_errno;
		if (S_ISLNK(st.st_mode)) {
			ssize_t len;

			if (st.st_uid != me && st.st_uid != 0) {
				snprintf(msg, size,
					 "'%.200s' goes through a symbolic link ('%.64s') owned by "
					 "uid %u, not by bearerd's user (uid %u) or root",
					 path, comp, (unsigned)st.st_uid, (unsigned)me);
				r = -EPERM;
				goto fail_quiet;
			}
			len = readlinkat(fd, "", link, sizeof(link) - 1);
			if (len < 0)
				goto fail_errno;
			if (++links > MAX_LINKS || len == 0) {
				r = len == 0 ? -ENOENT : -ELOOP;
				goto fail;
			}
			link[len] = '\0';
			/* the link's target, then what was left of the path */
			if ((size_t)len + 1 + strlen(p) >= sizeof(rest)) {
				r = -ENAMETOOLONG;
				goto fail;
			}
			memmove(rest + len + 1, p, strlen(p) + 1);
			memcpy(rest, link, (size_t)len);
			rest[len] = '/';
			if (last)
				rest[len] = '\0';
			p = rest;
			close(fd);
			fd = -1;
			if (link[0] == '/') {
				close(dirfd);
				dirfd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
				if (dirfd < 0)
					goto fail_errno;
			}
			continue;
		}
		if (last) {
			struct stat st2;
			int rfd = openat(dirfd, comp,
					 O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);

			if (rfd < 0)
				goto fail_errno;
			/* the file opened is the one the walk found (nothing swapped in between) */
			if (fstat(rfd, &st2) < 0 || st2.st_dev != st.st_dev ||
			    st2.st_ino != st.st_ino) {
				close(rfd);
				r = -EAGAIN;
				goto fail;
			}
			close(fd);
			close(dirfd);
			return rfd;
		}
		if (!S_ISDIR(st.st_mode)) {
			r = -ENOTDIR;
			goto fail;
		}
		close(dirfd);
		dirfd = fd;
		fd = -1;
	}
fail_errno:
	r = -errno;
fail:
	snprintf(msg, size, "cannot read '%.200s': %s", path, strerror(-r));
fail_quiet:
	if (fd >= 0)
		close(fd);
	if (dirfd >= 0)
		close(dirfd);
	return r;
}

int
secret_check_path(const char *path, bool others_may_read, char *msg, size_t size)
{
	struct stat st;
	int fd = open_walk(path, msg, size), r;

	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		snprintf(msg, size, "cannot read '%.200s': %s", path, strerror(-r));
	} else {
		r = check_stat(&st, path, others_may_read ? RULE_SECRET_SHARED : RULE_SECRET, msg,
			       size);
	}
	close(fd);
	return r;
}

int
secret_check_config(int fd, char *msg, size_t size)
{
	struct stat st;
	uid_t me = geteuid();

	if (fstat(fd, &st) < 0) {
		snprintf(msg, size, "%s", strerror(errno));
		return -errno;
	}
	if (!S_ISREG(st.st_mode))
		return 0; /* a pipe (bearerd -n -c /dev/stdin): whoever wrote it ran us */
	if (st.st_uid != me && st.st_uid != 0) {
		snprintf(msg, size,
			 "the configuration is owned by uid %u, not by bearerd's user (uid %u) or "
			 "root: chown it",
			 (unsigned)st.st_uid, (unsigned)me);
		return -EPERM;
	}
	if (st.st_mode & (S_IWOTH | S_IWGRP)) {
		snprintf(msg, size,
			 "the configuration is writable by %s (mode %04o): chmod go-w it",
			 (st.st_mode & S_IWOTH) ? "other users" : "its group",
			 (unsigned)(st.st_mode & 07777));
		return -EPERM;
	}
	return 0;
}

/* Reads a whole file of at most SECRET_MAX_SIZE bytes after checking it against rule. */
static int
read_file(const char *path, enum file_rule rule, char **out, size_t *len, char *msg, size_t size)
{
	struct stat st;
	char *buf = NULL, *copy;
	size_t n = 0;
	ssize_t got;
	int fd, r;

	fd = rule == RULE_PUBLIC ? open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
				 : open_walk(path, msg, size);
	if (fd < 0 && rule == RULE_PUBLIC) {
		r = -errno;
		snprintf(msg, size, "cannot read '%.200s': %s", path, strerror(-r));
		return r;
	}
	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		snprintf(msg, size, "cannot read '%.200s': %s", path, strerror(-r));
		goto out;
	}
	r = check_stat(&st, path, rule, msg, size);
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
	wipe_free(buf, SECRET_MAX_SIZE + 1);
	close(fd);
	return r;
}

int
secret_read(const char *path, bool others_may_read, char **out, size_t *len, char *msg, size_t size)
{
	return read_file(path, others_may_read ? RULE_SECRET_SHARED : RULE_SECRET, out, len, msg,
			 size);
}

int
secret_read_public(const char *path, char **out, size_t *len, char *msg, size_t size)
{
	return read_file(path, RULE_PUBLIC, out, len, msg, size);
}

bool
secret_in_text(const char *text, size_t len, const char *secret, size_t secret_len)
{
	char *forms[4] = {NULL}, *plain = NULL;
	size_t plain_len = 0, n = 0;
	bool found = false, oom = false;

	if (text == NULL || len == 0 || secret == NULL || secret_len == 0)
		return false;
	forms[n++] = (char *)secret;
	for (int v = 0; v < 3; v++) {
		char *f = url_encode(secret, secret_len,
				     v == 1   ? URLENC_LOWER
				     : v == 2 ? URLENC_PLUS
					      : 0);

		if (f == NULL)
			oom = true;
		else if (memcmp(f, secret, secret_len) == 0 && f[secret_len] == '\0')
			wipe_free(f, secret_len);
		else
			forms[n++] = f;
	}
	if (memchr(text, '\\', len) != NULL &&
	    json_unescape_text(text, len, &plain, &plain_len) < 0)
		oom = true;
	for (size_t i = 0; i < n && !found; i++) {
		size_t flen = i == 0 ? secret_len : strlen(forms[i]);

		found = memmem(text, len, forms[i], flen) != NULL ||
			(plain != NULL && memmem(plain, plain_len, forms[i], flen) != NULL);
	}
	for (size_t i = 1; i < n; i++)
		wipe_free_str(forms[i]);
	wipe_free(plain, plain_len);
	return found || oom; /* out of memory: assume the worst */
}
