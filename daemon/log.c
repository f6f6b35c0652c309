/*
 * Logging: one line per event on stderr, "level=... msg=\"...\" key=value".
 * When stderr is the journal (JOURNAL_STREAM matches it) each line gets a
 * "<N>" priority prefix so journald keeps the level.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "log.h"

static enum log_level log_threshold = LOG_LEVEL_INFO;
static int log_journal;

static const char *const log_names[] = {"error", "warning", "info", "debug"};
static const int log_priorities[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};

static int
log_stderr_is_journal(void)
{
	const char *e = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	if (e == NULL || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
		return 0;
	if (fstat(STDERR_FILENO, &st) < 0)
		return 0;
	return st.st_dev == dev && st.st_ino == ino;
}

void
log_init(enum log_level level)
{
	log_threshold = level;
	log_journal = log_stderr_is_journal();
}

void
log_set_level(enum log_level level)
{
	log_threshold = level;
}

int
log_level_parse(const char *s, enum log_level *out)
{
	for (size_t i = 0; i < sizeof(log_names) / sizeof(log_names[0]); i++) {
		if (strcmp(s, log_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

static void __attribute__((format(printf, 4, 0)))
log_vemit(enum log_level level, const char *msg, const char *errstr, const char *kv, va_list ap)
{
	char line[2048];
	int n = 0;

	if (level > log_threshold)
		return;
	if (log_journal)
		n = snprintf(line, sizeof(line), "<%d>", log_priorities[level]);
	n += snprintf(line + n, sizeof(line) - (size_t)n, "level=%s msg=\"%s\"", log_names[level],
		      msg);
	if (errstr != NULL && (size_t)n < sizeof(line))
		n += snprintf(line + n, sizeof(line) - (size_t)n, " error=\"%s\"", errstr);
	if (kv != NULL && kv[0] != '\0' && (size_t)n + 1 < sizeof(line)) {
		line[n++] = ' ';
		n += vsnprintf(line + n, sizeof(line) - (size_t)n, kv, ap);
	}
	if ((size_t)n >= sizeof(line) - 1)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	fwrite(line, 1, (size_t)n, stderr);
}

#define LOG_DEFINE(fn, level, with_errno)                                                          \
	void fn(const char *msg, const char *kv, ...)                                              \
	{                                                                                          \
		int saved = errno;                                                                 \
		va_list ap;                                                                        \
		va_start(ap, kv);                                                                  \
		log_vemit(level, msg, with_errno ? strerror(saved) : NULL, kv, ap);                \
		va_end(ap);                                                                        \
		errno = saved;                                                                     \
	}

LOG_DEFINE(log_error, LOG_LEVEL_ERROR, 0)
LOG_DEFINE(log_warn, LOG_LEVEL_WARNING, 1)
LOG_DEFINE(log_warnx, LOG_LEVEL_WARNING, 0)
LOG_DEFINE(log_info, LOG_LEVEL_INFO, 0)
LOG_DEFINE(log_debug, LOG_LEVEL_DEBUG, 0)

void
fatal(const char *msg, const char *kv, ...)
{
	int saved = errno;
	va_list ap;

	va_start(ap, kv);
	log_vemit(LOG_LEVEL_ERROR, msg, strerror(saved), kv, ap);
	va_end(ap);
	exit(1);
}

void
fatalx(const char *msg, const char *kv, ...)
{
	va_list ap;

	va_start(ap, kv);
	log_vemit(LOG_LEVEL_ERROR, msg, NULL, kv, ap);
	va_end(ap);
	exit(1);
}

const char *
log_clean(char *dst, size_t size, const char *src)
{
	size_t i;

	if (size == 0)
		return "";
	for (i = 0; src[i] != '\0' && i + 1 < size; i++) {
		unsigned char ch = (unsigned char)src[i];

		dst[i] = ch < 0x20 || ch == 0x7f || ch == '"' || ch == '\\' ? '?' : (char)ch;
	}
	dst[i] = '\0';
	return dst;
}
