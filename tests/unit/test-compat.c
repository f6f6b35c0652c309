/* Unit tests for daemon/compat.c: the App Service secret file (created private, refused when not).
 */
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
#include <unistd.h>

#include <cmocka.h>

#include "compat.h"

static char *
tmp_path(char *dir, size_t size)
{
	char *path = NULL;

	snprintf(dir, size, "/tmp/test-compat.XXXXXX");
	assert_non_null(mkdtemp(dir));
	assert_true(asprintf(&path, "%s/identity-header", dir) > 0);
	return path;
}

static void
write_file(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
}

static void
test_secret_generated(void **state)
{
	char dir[64], *path = tmp_path(dir, sizeof(dir)), *s = NULL, *again = NULL;
	struct stat st;
	size_t len = 0, len2 = 0;

	(void)state;
	assert_int_equal(compat_secret_load(path, &s, &len), 0);
	assert_int_equal(len, 64);
	assert_int_equal(strspn(s, "0123456789abcdef"), 64);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0640);
	/* the next start reads the same secret */
	assert_int_equal(compat_secret_load(path, &again, &len2), 0);
	assert_string_equal(again, s);
	free(s);
	free(again);
	unlink(path);
	rmdir(dir);
	free(path);
}

static void
test_secret_given(void **state)
{
	char dir[64], *path = tmp_path(dir, sizeof(dir)), *s = NULL;
	size_t len = 0;

	(void)state;
	write_file(path, "my-secret\r\n", 0600);
	assert_int_equal(compat_secret_load(path, &s, &len), 0);
	assert_string_equal(s, "my-secret");
	assert_int_equal(len, 9);
	free(s);
	/* readable or writable by others: refused */
	write_file(path, "my-secret\n", 0644);
	assert_int_equal(compat_secret_load(path, &s, &len), -EPERM);
	write_file(path, "my-secret\n", 0602);
	assert_int_equal(compat_secret_load(path, &s, &len), -EPERM);
	/* unusable contents */
	write_file(path, "\n", 0600);
	assert_int_equal(compat_secret_load(path, &s, &len), -ENODATA);
	write_file(path, "two words\n", 0600);
	assert_int_equal(compat_secret_load(path, &s, &len), -EINVAL);
	{
		char big[400];

		memset(big, 'a', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		write_file(path, big, 0600);
		assert_int_equal(compat_secret_load(path, &s, &len), -EFBIG);
	}
	unlink(path);
	/* a symlink is not followed */
	assert_int_equal(symlink("/etc/hostname", path), 0);
	assert_true(compat_secret_load(path, &s, &len) < 0);
	unlink(path);
	rmdir(dir);
	free(path);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_secret_generated),
	    cmocka_unit_test(test_secret_given),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
