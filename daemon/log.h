/* Logging: one line per event, "level=... msg=\"...\" key=value", on stderr. */
#ifndef BEARERD_LOG_H
#define BEARERD_LOG_H

#include <stddef.h>
#include <stdnoreturn.h>

enum log_level {
	LOG_LEVEL_ERROR = 0,
	LOG_LEVEL_WARNING,
	LOG_LEVEL_INFO,
	LOG_LEVEL_DEBUG,
};

#define LOG_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Sets the threshold and whether to prefix journald priorities (JOURNAL_STREAM). */
void log_init(enum log_level level);
void log_set_level(enum log_level level);
/* Parses "error|warning|info|debug"; returns 0 or -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);

/*
 * Every function takes a short fixed message and a printf format for the
 * key=value pairs that follow it (may be "").  log_warn appends errno.
 * Never pass a token or a secret: there is no level at which they are safe.
 */
void log_error(const char *msg, const char *kv, ...) LOG_PRINTF(2, 3);
void log_warn(const char *msg, const char *kv, ...) LOG_PRINTF(2, 3);
void log_warnx(const char *msg, const char *kv, ...) LOG_PRINTF(2, 3);
void log_info(const char *msg, const char *kv, ...) LOG_PRINTF(2, 3);
void log_debug(const char *msg, const char *kv, ...) LOG_PRINTF(2, 3);
noreturn void fatal(const char *msg, const char *kv, ...) LOG_PRINTF(2, 3);
noreturn void fatalx(const char *msg, const char *kv, ...) LOG_PRINTF(2, 3);

/*
 * Copies src into dst[size] with control characters, quotes and backslashes
 * replaced by '?', so a value that came from a request cannot forge a line.
 */
const char *log_clean(char *dst, size_t size, const char *src);

#endif
