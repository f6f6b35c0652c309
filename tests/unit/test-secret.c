/* Unit tests for daemon/secret.c: reading secret files, their bounds and the permission rule. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "secret.h"
#include "wipe.h"

static char dir[] = "/tmp/test-secret.XXXXXX";

static char *
put(const char *name, const void *data, size_t len, mode_t mode)
{
	char *p = NULL;
	FILE *f;

	assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
	f = fopen(p, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	fclose(f);
	assert_int_equal(chmod(p, mode), 0);
	return p;
}

static int
read_it(const char *path, bool others, char **out, size_t *len, char *msg)
{
	*out = NULL;
	*len = 0;
	msg[0] = '\0';
	return secret_read(path, others, out, len, msg, 256);
}

static void
test_read(void **state)
{
	char *p = put("s", "value \r\n\n", 9, 0600), *s, msg[256];
	size_t len;

	/* trailing blanks and newlines go: "echo secret > file" works */
	assert_int_equal(read_it(p, false, &s, &len, msg), 0);
	assert_int_equal(len, 5);
	assert_string_equal(s, "value");
	wipe_free(s, len);
	assert_null(wipe_free(NULL, 0));
	unlink(p);
	free(p);

	p = put("g", " a b", 4, 0640); /* leading blanks are part of the secret */
	assert_int_equal(read_it(p, false, &s, &len, msg), 0);
	assert_string_equal(s, " a b");
	wipe_free(s, len);
	unlink(p);
	free(p);
}

static void
test_bounds(void **state)
{
	char *big = malloc(SECRET_MAX_SIZE + 1), *p, *s, msg[256];
	size_t len;

	memset(big, 'x', SECRET_MAX_SIZE + 1);
	p = put("max", big, SECRET_MAX_SIZE, 0600);
	assert_int_equal(read_it(p, false, &s, &len, msg), 0);
	assert_int_equal(len, SECRET_MAX_SIZE);
	wipe_free(s, len);
	unlink(p);
	free(p);
	p = put("over", big, SECRET_MAX_SIZE + 1, 0600);
	assert_int_equal(read_it(p, false, &s, &len, msg), -EFBIG);
	assert_null(s);
	assert_non_null(strstr(msg, "larger than 65536 bytes"));
	unlink(p);
	free(p);
	free(big);

	p = put("empty", "\n", 1, 0600);
	assert_int_equal(read_it(p, false, &s, &len, msg), -ENODATA);
	assert_non_null(strstr(msg, "is empty"));
	unlink(p);
	free(p);
	p = put("nul", "a\0b", 3, 0600);
	assert_int_equal(read_it(p, false, &s, &len, msg), -EINVAL);
	assert_non_null(strstr(msg, "NUL"));
	unlink(p);
	free(p);
}

static void
test_permissions(void **state)
{
	char *p = put("w", "v", 1, 0644), *s, msg[256];
	size_t len;

	assert_int_equal(read_it(p, false, &s, &len, msg), -EPERM);
	assert_non_null(strstr(msg, "readable by other users (mode 0644)"));
	assert_null(strstr(msg, "v\""));
	assert_int_equal(secret_check_path(p, false, msg, sizeof(msg)), -EPERM);
	/* a projected token may be world-readable, never world-writable */
	assert_int_equal(read_it(p, true, &s, &len, msg), 0);
	wipe_free(s, len);
	assert_int_equal(secret_check_path(p, true, msg, sizeof(msg)), 0);
	assert_int_equal(chmod(p, 0666), 0);
	assert_int_equal(read_it(p, true, &s, &len, msg), -EPERM);
	assert_non_null(strstr(msg, "writable by other users"));
	/* nor writable by the group: another member could have put their own secret there */
	for (int i = 0; i < 2; i++) {
		mode_t mode = i == 0 ? 0620 : 0664;
		char want[300];

		assert_int_equal(chmod(p, mode), 0);
		snprintf(want, sizeof(want),
			 "'%s' is writable by its group (mode %04o): chmod g-w it", p,
			 (unsigned)mode);
		assert_int_equal(read_it(p, i == 1, &s, &len, msg), -EPERM);
		assert_null(s);
		assert_string_equal(msg, want);
		assert_int_equal(secret_check_path(p, i == 1, msg, sizeof(msg)), -EPERM);
		assert_string_equal(msg, want);
	}
	/* group read is fine when the group is bearerd's own (a file made 0640 for it) */
	assert_int_equal(chmod(p, 0440), 0);
	assert_int_equal(read_it(p, false, &s, &len, msg), 0);
	wipe_free(s, len);
	if (geteuid() == 0) {
		char want[300];

		/* another group's members could read it: refused, like ssh's keys */
		assert_int_equal(chown(p, 0, 4242), 0);
		snprintf(want, sizeof(want),
			 "'%s' is readable by its group (gid 4242, mode 0440), which is not "
			 "bearerd's own (gid %u): chmod g-r it, or give it bearerd's group",
			 p, (unsigned)getegid());
		assert_int_equal(read_it(p, false, &s, &len, msg), -EPERM);
		assert_string_equal(msg, want);
		assert_int_equal(secret_check_path(p, false, msg, sizeof(msg)), -EPERM);
		assert_string_equal(msg, want);
		/* a token others may read anyway */
		assert_int_equal(read_it(p, true, &s, &len, msg), 0);
		wipe_free(s, len);
		assert_int_equal(chmod(p, 0400), 0);
		assert_int_equal(read_it(p, false, &s, &len, msg), 0);
		wipe_free(s, len);
		assert_int_equal(chown(p, 0, 0), 0);
		assert_int_equal(chmod(p, 0600), 0);
		assert_int_equal(chown(p, 4242, 0), 0);
		assert_int_equal(read_it(p, false, &s, &len, msg), -EPERM);
		assert_non_null(strstr(msg, "owned by uid 4242"));
	}
	unlink(p);
	assert_int_equal(read_it(p, false, &s, &len, msg), -ENOENT);
	assert_non_null(strstr(msg, "No such file"));
	assert_int_equal(secret_check_path(dir, false, msg, sizeof(msg)), -EINVAL);
	assert_non_null(strstr(msg, "not a regular file"));
	free(p);
}

/* A file that is not secret: regular and bounded, whoever may read or write it. */
static void
test_read_public(void **state)
{
	char *p = put("cert", "PEM\n", 4, 0666), *s = NULL, msg[256] = "", *fifo = NULL;
	size_t len = 0;
	time_t t0;

	assert_int_equal(secret_read_public(p, &s, &len, msg, sizeof(msg)), 0);
	assert_string_equal(s, "PEM");
	wipe_free(s, len);
	unlink(p);
	free(p);
	/* a FIFO is refused at once, without waiting for a writer */
	assert_true(asprintf(&fifo, "%s/fifo", dir) > 0);
	assert_int_equal(mkfifo(fifo, 0644), 0);
	t0 = time(NULL);
	s = NULL;
	assert_int_equal(secret_read_public(fifo, &s, &len, msg, sizeof(msg)), -EINVAL);
	assert_true(time(NULL) - t0 < 2);
	assert_null(s);
	assert_non_null(strstr(msg, "is not a regular file"));
	unlink(fifo);
	free(fifo);
}

static void
expect_in(const char *text, const char *secret, bool want)
{
	bool got = secret_in_text(text, strlen(text), secret, strlen(secret));

	if (got != want)
		print_error("secret_in_text on '%s': %d\n", text, got);
	assert_true(got == want);
}

/* Finding a secret in an upstream's answer, in the forms an echo takes. */
static void
test_in_text(void **state)
{
	const char *sec = "a b+c/d~\xc3\xa9";

	expect_in("{\"e\":\"x a b+c/d~\xc3\xa9 y\"}", sec, true);     /* as is */
	expect_in("client_secret=a%20b%2Bc%2Fd~%C3%A9&x", sec, true); /* a form */
	expect_in("client_secret=a%20b%2bc%2fd~%c3%a9&x", sec, true); /* lower case */
	expect_in("client_secret=a+b%2Bc%2Fd~%C3%A9&x", sec, true);   /* '+' for ' ' */
	expect_in("{\"e\":\"a b\\u002Bc\\/d~\\u00e9\"}", sec, true);  /* JSON-escaped */
	expect_in("{\"e\":\"a\\u0020b\\u002bc\\/d\\u007E\xc3\xa9\"}", sec, true);
	expect_in("{\"e\":\"a b+c/d~\"}", sec, false); /* a part only */
	expect_in("{\"e\":\"a b+c/d~\\u00e8\"}", sec, false);
	expect_in("\\u12", sec, false); /* a cut escape is not read past the end */
	expect_in("x\\", sec, false);
	/* beyond the BMP: a surrogate pair */
	expect_in("\"k\\ud83d\\ude00\"", "k\xf0\x9f\x98\x80", true);
	assert_false(secret_in_text("", 0, "s", 1));
	assert_false(secret_in_text("s", 1, "", 0));
}

static void
test_expand(void **state)
{
	char *out = NULL;

	unsetenv("CREDENTIALS_DIRECTORY");
	assert_int_equal(secret_path_expand("/etc/x", &out), 0);
	assert_string_equal(out, "/etc/x");
	free(out);
	assert_int_equal(secret_path_expand("$CREDENTIALS_DIRECTORY/k", &out), -ENOENT);
	setenv("CREDENTIALS_DIRECTORY", "", 1);
	assert_int_equal(secret_path_expand("${CREDENTIALS_DIRECTORY}/k", &out), -ENOENT);
	setenv("CREDENTIALS_DIRECTORY", "/run/credentials/bearerd.service", 1);
	assert_int_equal(secret_path_expand("${CREDENTIALS_DIRECTORY}/k", &out), 0);
	assert_string_equal(out, "/run/credentials/bearerd.service/k");
	free(out);
	assert_int_equal(secret_path_expand("$CREDENTIALS_DIRECTORY", &out), 0);
	assert_string_equal(out, "/run/credentials/bearerd.service");
	free(out);
	/* only the variable itself, at the start */
	assert_int_equal(secret_path_expand("$CREDENTIALS_DIRECTORYX/k", &out), 0);
	assert_string_equal(out, "$CREDENTIALS_DIRECTORYX/k");
	free(out);
	assert_int_equal(secret_path_expand("/a/$CREDENTIALS_DIRECTORY/k", &out), 0);
	assert_string_equal(out, "/a/$CREDENTIALS_DIRECTORY/k");
	free(out);
	unsetenv("CREDENTIALS_DIRECTORY");
}

static int
setup(void **state)
{
	assert_non_null(mkdtemp(dir));
	return 0;
}

static int
teardown(void **state)
{
	return rmdir(dir);
}

/* A file of this directory, made with mode and group gid (when we may), and its path. */
static char *
put_in(const char *sub, const char *name, mode_t mode, gid_t gid)
{
	char *rel = NULL, *p;

	assert_true(asprintf(&rel, "%s/%s", sub, name) > 0);
	p = put(rel, "v", 1, mode);
	if (gid != (gid_t)-1)
		assert_int_equal(chown(p, (uid_t)-1, gid), 0);
	free(rel);
	return p;
}

static char *
path_of(const char *rel)
{
	char *p = NULL;

	assert_true(asprintf(&p, "%s/%s", dir, rel) > 0);
	return p;
}

/* symlink(target, dir/rel) */
static void
lnk(const char *target, const char *rel)
{
	char *p = path_of(rel);

	assert_int_equal(symlink(target, p), 0);
	free(p);
}

/* lchown or chown of dir/rel */
static void
own(const char *rel, uid_t uid, gid_t gid, bool link)
{
	char *p = path_of(rel);

	assert_int_equal(link ? lchown(p, uid, gid) : chown(p, uid, gid), 0);
	free(p);
}

static void
cleanup(const char *cmd_paths)
{
	char *cmd = NULL;

	assert_true(asprintf(&cmd, "cd %s && rm -rf %s", dir, cmd_paths) > 0);
	assert_int_equal(system(cmd), 0);
	free(cmd);
}

/*
 * systemd's LoadCredential= grants read access through an ACL, which shows as
 * group read in the mode: inside $CREDENTIALS_DIRECTORY that is accepted.
 */
static void
test_credentials_directory(void **state)
{
	char *creds = path_of("creds"), *p, msg[300], *s = NULL, *escape = NULL;
	size_t len;

	(void)state;
	if (geteuid() != 0)
		return; /* the other group needs root (scripts/check runs as root) */
	assert_int_equal(mkdir(creds, 0500 | 0200), 0);
	p = put_in("creds", "client-secret", 0440, 4242);
	assert_int_equal(read_it(p, false, &s, &len, msg), -EPERM); /* not a credential yet */
	setenv("CREDENTIALS_DIRECTORY", creds, 1);
	assert_int_equal(read_it(p, false, &s, &len, msg), 0);
	wipe_free(s, len);
	assert_int_equal(secret_check_path(p, false, msg, sizeof(msg)), 0);
	/* only inside it: a path that climbs out is judged as any other */
	free(put_in("", "outside", 0440, 4242));
	assert_true(asprintf(&escape, "%s/../outside", creds) > 0);
	assert_int_equal(secret_check_path(escape, false, msg, sizeof(msg)), -EPERM);
	assert_non_null(strstr(msg, "readable by its group"));
	/* still never readable or writable by others */
	assert_int_equal(chmod(p, 0444), 0);
	assert_int_equal(secret_check_path(p, false, msg, sizeof(msg)), -EPERM);
	unsetenv("CREDENTIALS_DIRECTORY");
	free(escape);
	free(p);
	free(creds);
	cleanup("creds outside");
}

/*
 * Symbolic links: followed when root or we made them (a Kubernetes secret
 * volume), refused when another user did, whatever the target.
 */
static void
test_symlinks(void **state)
{
	char *vol = path_of("vol"), *ts = path_of("vol/..2026_12_02_10_00_00.1"), *key, *p,
	     msg[400], *s = NULL;
	size_t len;
	gid_t fs_group = getegid(); /* the pod's fsGroup, bearerd's runAsGroup */

	(void)state;
	/* a secret volume as the kubelet writes it (defaultMode 0400, fsGroup adds g+r) */
	assert_int_equal(mkdir(vol, 0755), 0);
	assert_int_equal(mkdir(ts, 0755), 0);
	free(put_in("vol/..2026_12_02_10_00_00.1", "client-secret", 0440, fs_group));
	free(put_in("vol/..2026_12_02_10_00_00.1", "token", 0644, (gid_t)-1));
	lnk("..2026_12_02_10_00_00.1", "vol/..data");
	key = path_of("vol/client-secret");
	assert_int_equal(symlink("..data/client-secret", key), 0);
	lnk("..data/token", "vol/token");
	assert_int_equal(secret_check_path(key, false, msg, sizeof(msg)), 0);
	assert_int_equal(read_it(key, false, &s, &len, msg), 0);
	assert_string_equal(s, "v");
	wipe_free(s, len);
	p = path_of("vol/token"); /* a projected token: world-readable by design */
	assert_int_equal(read_it(p, true, &s, &len, msg), 0);
	wipe_free(s, len);
	free(p);
	/* through a directory link and "..", and a link to a link */
	p = path_of("vol/..data/../client-secret");
	assert_int_equal(secret_check_path(p, false, msg, sizeof(msg)), 0);
	free(p);
	lnk(key, "again");
	p = path_of("again");
	assert_int_equal(secret_check_path(p, false, msg, sizeof(msg)), 0);
	free(p);
	/* a link to a system file readable by another group (/etc/shadow is root:shadow 0640) */
	free(put_in("", "shadow", 0640, geteuid() == 0 ? 42 : (gid_t)-1));
	lnk("shadow", "to-shadow");
	p = path_of("to-shadow");
	if (geteuid() == 0) {
		assert_int_equal(secret_check_path(p, false, msg, sizeof(msg)), -EPERM);
		assert_non_null(strstr(msg, "readable by its group (gid 42"));
		/* a link another user made, to a file that would pass: refused for the link */
		own("to-shadow", 4242, 4242, true);
		own("shadow", 0, getegid(), false);
		assert_int_equal(secret_check_path(p, false, msg, sizeof(msg)), -EPERM);
		assert_non_null(strstr(msg, "goes through a symbolic link ('to-shadow') owned by "
					    "uid 4242"));
		assert_int_equal(read_it(p, false, &s, &len, msg), -EPERM);
		assert_null(s);
		/* also in the middle of the path */
		own("vol/..data", 4242, 4242, true);
		assert_int_equal(secret_check_path(key, false, msg, sizeof(msg)), -EPERM);
		assert_non_null(strstr(msg, "('..data') owned by uid 4242"));
	}
	free(p);
	/* a loop, a dangling link, a file used as a directory */
	lnk("loop-b", "loop-a");
	lnk("loop-a", "loop-b");
	p = path_of("loop-a");
	assert_int_equal(secret_check_path(p, false, msg, sizeof(msg)), -ELOOP);
	free(p);
	lnk("nowhere", "dangling");
	p = path_of("dangling");
	assert_int_equal(secret_check_path(p, false, msg, sizeof(msg)), -ENOENT);
	assert_non_null(strstr(msg, "No such file"));
	free(p);
	p = path_of("shadow/x");
	assert_int_equal(secret_check_path(p, false, msg, sizeof(msg)), -ENOTDIR);
	free(p);
	free(key);
	free(ts);
	free(vol);
	cleanup("vol again shadow to-shadow loop-a loop-b dangling");
}

/* The configuration: owned by root or us, writable by nobody else. */
static void
test_config_file(void **state)
{
	char *p = put("bearerd.conf", "[bearerd]\n", 10, 0644), msg[256];
	int fd = open(p, O_RDONLY | O_CLOEXEC), pipefd[2];

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(secret_check_config(fd, msg, sizeof(msg)), 0);
	assert_int_equal(chmod(p, 0666), 0);
	assert_int_equal(secret_check_config(fd, msg, sizeof(msg)), -EPERM);
	assert_string_equal(msg, "the configuration is writable by other users (mode 0666): "
				 "chmod go-w it");
	assert_int_equal(chmod(p, 0664), 0);
	assert_int_equal(secret_check_config(fd, msg, sizeof(msg)), -EPERM);
	assert_string_equal(msg, "the configuration is writable by its group (mode 0664): "
				 "chmod go-w it");
	assert_int_equal(chmod(p, 0640), 0);
	assert_int_equal(secret_check_config(fd, msg, sizeof(msg)), 0);
	if (geteuid() == 0) {
		char want[200];

		assert_int_equal(chown(p, 4242, 0), 0);
		snprintf(want, sizeof(want),
			 "the configuration is owned by uid 4242, not by bearerd's user (uid %u) "
			 "or root: chown it",
			 (unsigned)geteuid());
		assert_int_equal(secret_check_config(fd, msg, sizeof(msg)), -EPERM);
		assert_string_equal(msg, want);
	}
	close(fd);
	unlink(p);
	free(p);
	assert_int_equal(pipe(pipefd), 0);
	assert_int_equal(secret_check_config(pipefd[0], msg, sizeof(msg)), 0);
	close(pipefd[0]);
	close(pipefd[1]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_read),
	    cmocka_unit_test(test_bounds),
	    cmocka_unit_test(test_permissions),
	    cmocka_unit_test(test_expand),
	    cmocka_unit_test(test_read_public),
	    cmocka_unit_test(test_in_text),
	    cmocka_unit_test(test_credentials_directory),
	    cmocka_unit_test(test_symlinks),
	    cmocka_unit_test(test_config_file),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
