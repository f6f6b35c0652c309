/*
 * bearerctl: the command line face of bearerd's local API, for people, scripts and probes.
 *
 * Every command is one request through libbearer.  Tokens (and the App Service secret) go
 * to stdout only, written with write(2) rather than stdio so that no copy stays behind in a
 * stdio buffer, and the buffers that held them are wiped; messages on stderr never contain
 * one.  JSON (status, errors, JWT claims) is read with common/json.c, built on jsmn, which
 * is header-only, so bearerctl, like libbearer, needs nothing but libc at run time.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base64.h"
#include "bearer.h"
#include "build-config.h"
#include "json.h"
#include "urlencode.h"
#include "wipe.h"

enum {
	RC_OK = 0,
	RC_ERROR = 1, /* the daemon answered with an error */
	RC_USAGE = 2,
	RC_UNREACHABLE = 3, /* cannot reach the daemon */
};

#define AUDIENCE_MAX	 1024
#define JSON_TOKENS_MAX	 (1 << 20)
#define JSON_DEPTH_MAX	 32 /* bounds print_json's recursion, as json.c bounds nesting */
#define OPT_MIN_VALIDITY 1u
#define OPT_JSON	 2u
#define OPT_STRICT	 4u

struct command_args {
	const char *audience;
	int64_t min_validity;
	bool json;
	bool strict;
};

struct command {
	const char *name;
	unsigned options;
	bool audience;
	int (*run)(const char *socket_path, const struct command_args *args);
};

static const char usage_text[] =
    "Usage: bearerctl [-s SOCKET] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  token AUDIENCE [--min-validity S] [--json]  print a token for AUDIENCE\n"
    "  header AUDIENCE [--min-validity S]          print \"Authorization: Bearer <token>\"\n"
    "  status                                      show the cached entries (never a token)\n"
    "  refresh AUDIENCE                            refresh the token for AUDIENCE now\n"
    "  claims AUDIENCE                             print the decoded JWT header and claims\n"
    "  health [--strict]                           exit 0 when the daemon is ready: every\n"
    "                                              prefetch audience has held a token;\n"
    "                                              --strict: each holds a valid one now\n"
    "  env                                         print IDENTITY_ENDPOINT and IDENTITY_HEADER\n"
    "\n"
    "Options:\n"
    "  -s, --socket SOCKET  the daemon's socket (default: $BEARERD_SOCKET,\n"
    "                       else /run/bearerd/bearerd.sock)\n"
    "  -h, --help           show this help\n"
    "  -V, --version        show the version\n"
    "\n"
    "Exit status: 0 ok, 1 the daemon answered with an error, 2 usage error,\n"
    "3 cannot reach the daemon.\n";

static __attribute__((noreturn)) void
out_of_memory(void)
{
	fprintf(stderr, "bearerctl: out of memory\n");
	exit(RC_ERROR);
}

static void *
xmalloc(size_t size)
{
	void *p = malloc(size);

	if (p == NULL)
		out_of_memory();
	return p;
}

static char *
xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;

	return memcpy(xmalloc(n), s, n);
}

/* Writes straight to the fd: used for secrets, which must not linger in stdio buffers. */
static int
write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static int
write_secret_line(const char *prefix, const char *secret, size_t len)
{
	int r = write_all(STDOUT_FILENO, prefix, strlen(prefix));

	if (r == 0)
		r = write_all(STDOUT_FILENO, secret, len);
	if (r == 0 && (len == 0 || secret[len - 1] != '\n'))
		r = write_all(STDOUT_FILENO, "\n", 1);
	if (r < 0) {
		fprintf(stderr, "bearerctl: cannot write to stdout: %s\n", strerror(-r));
		return RC_ERROR;
	}
	return RC_OK;
}

/* Replaces what a terminal could interpret (C0 and C1 controls, DEL) with '?'. */
static char *
sanitize(char *s)
{
	unsigned char *p;

	for (p = (unsigned char *)s; *p != '\0'; p++) {
		if (*p < ' ' || *p == 0x7f)
			*p = '?';
		else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
			p[0] = p[1] = '?';
	}
	return s;
}

/* prefix, the audience percent-encoded as one path segment, and suffix, in a new allocation. */
static char *
audience_path(const char *prefix, const char *audience, const char *suffix)
{
	size_t plen = strlen(prefix), size = plen + strlen(audience) * 3 + strlen(suffix) + 1;
	char *path = xmalloc(size);

	memcpy(path, prefix, plen);
	/* three bytes for each byte of the audience, then the suffix */
	plen += url_encode_into(path + plen, audience, strlen(audience), 0);
	memcpy(path + plen, suffix, strlen(suffix) + 1);
	return path;
}

/* JSON, read with common/json.c; documents here have no fixed bound on their tokens. */

/* Parses js as one JSON object (or array); free doc->tok when done. */
static int
parse_json(struct json_doc *doc, const char *js, size_t len, bool array)
{
	jsmntok_t *t;
	int n = json_count(js, len), r;

	if (n < 1 || n > JSON_TOKENS_MAX)
		return -EPROTO;
	t = xmalloc((size_t)n * sizeof(*t));
	r = array ? json_parse_array(doc, js, len, t, n) : json_parse(doc, js, len, t, n);
	if (r < 0) {
		free(t);
		return -EPROTO;
	}
	return 0;
}

/*
 * The string at index i, unescaped, in a new allocation, or NULL when it is not a string or
 * holds a bad escape or a NUL.
 */
static char *
json_text(const struct json_doc *doc, int i, size_t *out_len)
{
	char *s;
	int r = json_string_dup(doc, i, &s, out_len);

	if (r == -ENOMEM)
		out_of_memory();
	return r == 0 ? s : NULL;
}

/* The string at index i for display: unescaped, controls replaced; NULL if not a string. */
static char *
json_display(const struct json_doc *doc, int i)
{
	char *s = json_text(doc, i, NULL);

	return s != NULL ? sanitize(s) : NULL;
}

/* The JSON number at index i: unlike json_int64, a string of digits is not one. */
static int
json_number(const struct json_doc *doc, int i, int64_t *out)
{
	if (i < 0 || i >= doc->ntok || doc->tok[i].type != JSMN_PRIMITIVE ||
	    json_int64(doc, i, out) < 0)
		return -EPROTO;
	return 0;
}

/* Failures, mapped to exit codes. */

static int
fail_request(const char *socket_path, int r)
{
	switch (r) {
	case -EPROTO:
		fprintf(stderr, "bearerctl: malformed answer from the daemon at %s\n", socket_path);
		return RC_ERROR;
	case -EMSGSIZE:
		fprintf(stderr, "bearerctl: the answer from the daemon at %s is too large\n",
			socket_path);
		return RC_ERROR;
	case -ECONNRESET:
		fprintf(stderr,
			"bearerctl: the daemon at %s closed the connection without answering\n",
			socket_path);
		return RC_UNREACHABLE;
	case -ENOMEM:
		fprintf(stderr, "bearerctl: out of memory\n");
		return RC_ERROR;
	case -ETIMEDOUT:
		fprintf(stderr, "bearerctl: no answer from the daemon at %s within 30 s\n",
			socket_path);
		return RC_UNREACHABLE;
	default:
		fprintf(stderr, "bearerctl: cannot reach the daemon at %s: %s\n", socket_path,
			strerror(-r));
		return RC_UNREACHABLE;
	}
}

/* Prints the daemon's JSON error as "bearerctl: error: description". */
static int
fail_http(int status, const char *body, size_t len)
{
	struct json_doc doc;
	char *error = NULL, *desc = NULL;

	if (parse_json(&doc, body, len, false) == 0) {
		error = json_display(&doc, json_find(&doc, 0, "error"));
		desc = json_display(&doc, json_find(&doc, 0, "error_description"));
		free(doc.tok);
	}
	if (error != NULL && desc != NULL && desc[0] != '\0')
		fprintf(stderr, "bearerctl: %s: %s\n", error, desc);
	else if (error != NULL)
		fprintf(stderr, "bearerctl: %s\n", error);
	else
		fprintf(stderr, "bearerctl: the daemon answered HTTP status %d\n", status);
	free(error);
	free(desc);
	return RC_ERROR;
}

static int
fetch_token(const char *socket_path, const struct command_args *args, struct bearer_token *out)
{
	char err[512];
	int status, r;

	r = bearer_get_token_ex(socket_path, args->audience, args->min_validity, out, &status, err,
				sizeof(err));
	if (r == 0)
		return RC_OK;
	if (status == 0 || r == -EPROTO || r == -EMSGSIZE || r == -ENOMEM)
		return fail_request(socket_path, r);
	fprintf(stderr, "bearerctl: %s\n", err);
	return RC_ERROR;
}

/* Gets the token for the audience in args and writes it to stdout after prefix. */
static int
print_token(const char *socket_path, const struct command_args *args, const char *prefix)
{
	struct bearer_token tok;
	int rc;

	rc = fetch_token(socket_path, args, &tok);
	if (rc != RC_OK)
		return rc;
	rc = write_secret_line(prefix, tok.access_token, tok.len);
	bearer_token_clear(&tok);
	return rc;
}

/* Commands. */

static int
cmd_token(const char *socket_path, const struct command_args *args)
{
	char query[64] = "", *path, *body;
	size_t len;
	int status, r, rc;

	if (!args->json)
		return print_token(socket_path, args, "");

	if (args->min_validity > 0)
		snprintf(query, sizeof(query), "?min_validity=%" PRId64, args->min_validity);
	path = audience_path("/v1/token/", args->audience, query);
	r = bearer_request(socket_path, "GET", path, "application/json", &status, &body, &len);
	free(path);
	if (r < 0)
		return fail_request(socket_path, r);
	rc = status == 200 ? write_secret_line("", body, len) : fail_http(status, body, len);
	wipe_free(body, len);
	return rc;
}

static int
cmd_header(const char *socket_path, const struct command_args *args)
{
	return print_token(socket_path, args, "Authorization: Bearer ");
}

static void
format_duration(char *buf, size_t size, int64_t s)
{
	if (s < 0)
		snprintf(buf, size, "-");
	else if (s >= 3600)
		snprintf(buf, size, "%" PRId64 "h%" PRId64 "m%" PRId64 "s", s / 3600, s / 60 % 60,
			 s % 60);
	else if (s >= 60)
		snprintf(buf, size, "%" PRId64 "m%" PRId64 "s", s / 60, s % 60);
	else
		snprintf(buf, size, "%" PRId64 "s", s);
}

#define STATUS_COLUMNS 7

static char *
status_duration(const struct json_doc *doc, int obj, const char *key)
{
	char buf[64];
	int64_t v;

	if (json_number(doc, json_find(doc, obj, key), &v) < 0)
		v = -1;
	format_duration(buf, sizeof(buf), v);
	return xstrdup(buf);
}

static char *
status_text(const struct json_doc *doc, int obj, const char *key)
{
	char *s = json_display(doc, json_find(doc, obj, key));

	if (s != NULL && s[0] != '\0')
		return s;
	free(s);
	return xstrdup("-");
}

/* The audience, or for a dynamic entry (audience null) "resource=" and its resource. */
static char *
status_audience(const struct json_doc *doc, int obj)
{
	char *s = json_display(doc, json_find(doc, obj, "audience")), *r, *out;

	if (s != NULL && s[0] != '\0')
		return s;
	free(s);
	r = json_display(doc, json_find(doc, obj, "resource"));
	if (r == NULL)
		return xstrdup("-");
	out = xmalloc(strlen(r) + sizeof("resource="));
	sprintf(out, "resource=%s", r);
	free(r);
	return out;
}

static int
cmd_status(const char *socket_path, const struct command_args *args)
{
	static const char *const head[STATUS_COLUMNS] = {
	    "AUDIENCE", "IDENTITY", "SOURCE", "STATE", "EXPIRES-IN", "REFRESH-IN", "LAST-ERROR",
	};
	struct json_doc doc;
	char *body, *(*rows)[STATUS_COLUMNS] = NULL;
	size_t len, width[STATUS_COLUMNS];
	int status, r, rc = RC_ERROR, nrows = 0, i, c, e;

	r = bearer_request(socket_path, "GET", "/v1/status", "application/json", &status, &body,
			   &len);
	if (r < 0)
		return fail_request(socket_path, r);
	if (status != 200) {
		rc = fail_http(status, body, len);
		goto out_body;
	}
	if (parse_json(&doc, body, len, true) < 0) {
		fprintf(stderr, "bearerctl: malformed status from the daemon at %s\n", socket_path);
		goto out_body;
	}

	rows = xmalloc((size_t)doc.tok[0].size * sizeof(*rows) + 1);
	for (i = 0, e = 1; i < doc.tok[0].size; i++, e = json_skip(&doc, e)) {
		if (doc.tok[e].type != JSMN_OBJECT) {
			fprintf(stderr, "bearerctl: malformed status from the daemon at %s\n",
				socket_path);
			goto out_rows;
		}
		rows[i][0] = status_audience(&doc, e);
		rows[i][1] = status_text(&doc, e, "identity");
		rows[i][2] = status_text(&doc, e, "source");
		rows[i][3] = status_text(&doc, e, "state");
		rows[i][4] = status_duration(&doc, e, "expires_in");
		rows[i][5] = status_duration(&doc, e, "refresh_in");
		rows[i][6] = status_text(&doc, e, "last_error");
		nrows++;
	}

	for (c = 0; c < STATUS_COLUMNS; c++) {
		width[c] = strlen(head[c]);
		for (i = 0; i < nrows; i++)
			if (strlen(rows[i][c]) > width[c])
				width[c] = strlen(rows[i][c]);
	}
	for (i = -1; i < nrows; i++) {
		for (c = 0; c < STATUS_COLUMNS - 1; c++)
			printf("%-*s  ", (int)width[c], i < 0 ? head[c] : rows[i][c]);
		printf("%s\n", i < 0 ? head[c] : rows[i][c]);
	}
	rc = RC_OK;

out_rows:
	for (i = 0; i < nrows; i++)
		for (c = 0; c < STATUS_COLUMNS; c++)
			free(rows[i][c]);
	free(rows);
	free(doc.tok);
out_body:
	wipe_free(body, len);
	(void)args;
	return rc;
}

static int
cmd_refresh(const char *socket_path, const struct command_args *args)
{
	char *path = audience_path("/v1/refresh/", args->audience, ""), *body;
	size_t len;
	int status, r, rc = RC_OK;

	r = bearer_request(socket_path, "POST", path, "application/json", &status, &body, &len);
	free(path);
	if (r < 0)
		return fail_request(socket_path, r);
	if (status >= 200 && status < 300)
		printf("%s: refreshing\n", args->audience);
	else
		rc = fail_http(status, body, len);
	wipe_free(body, len);
	return rc;
}

/* Prints the text of a JSON string token, escaping raw control characters. */
static void
print_json_text(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i;

	for (i = 0; i < n; i++) {
		if (p[i] < ' ' || p[i] == 0x7f) {
			printf("\\u%04x", p[i]);
		} else if (p[i] == 0xc2 && i + 1 < n && p[i + 1] >= 0x80 && p[i + 1] <= 0x9f) {
			printf("\\u%04x", p[i + 1]);
			i++;
		} else {
			putchar(p[i]);
		}
	}
}

static bool
json_flat(const struct json_doc *doc, int i)
{
	int j = i + 1, k;

	for (k = 0; k < doc->tok[i].size; k++, j++)
		if (doc->tok[j].type == JSMN_OBJECT || doc->tok[j].type == JSMN_ARRAY)
			return false;
	return true;
}

static void
print_indent(int depth)
{
	printf("%*s", depth * 2, "");
}

/* Prints the value at i, compact or indented; returns the index after it. */
static int
print_json(const struct json_doc *doc, int i, int depth, bool pretty)
{
	const jsmntok_t *t = &doc->tok[i];
	bool object = t->type == JSMN_OBJECT, flat;
	int j = i + 1, k;

	if (t->type == JSMN_STRING) {
		putchar('"');
		print_json_text(doc->js + t->start, (size_t)(t->end - t->start));
		putchar('"');
		return j;
	}
	if (t->type == JSMN_PRIMITIVE || depth >= JSON_DEPTH_MAX) {
		print_json_text(doc->js + t->start, (size_t)(t->end - t->start));
		return json_skip(doc, i);
	}
	flat = !pretty || t->size == 0 || (!object && json_flat(doc, i));
	putchar(object ? '{' : '[');
	for (k = 0; k < t->size && j < doc->ntok; k++) {
		if (k > 0)
			fputs(flat && pretty ? ", " : ",", stdout);
		if (!flat) {
			putchar('\n');
			print_indent(depth + 1);
		}
		if (object) {
			j = print_json(doc, j, depth + 1, pretty);
			fputs(pretty ? ": " : ":", stdout);
		}
		j = print_json(doc, j, depth + 1, pretty);
	}
	if (!flat) {
		putchar('\n');
		print_indent(depth);
	}
	putchar(object ? '}' : ']');
	return j;
}

static void
print_time_claim(const struct json_doc *doc, const char *name)
{
	char date[64], rel[64];
	int64_t v, now = (int64_t)time(NULL);
	time_t tt;
	struct tm tm;

	if (json_number(doc, json_find(doc, 0, name), &v) < 0)
		return;
	tt = (time_t)v;
	if (gmtime_r(&tt, &tm) == NULL ||
	    strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm) == 0)
		return;
	format_duration(rel, sizeof(rel), v >= now ? v - now : now - v);
	printf("%s: %s UTC (%s%s%s)\n", name, date, v >= now ? "in " : "", rel,
	       v >= now ? "" : " ago");
}

static int
cmd_claims(const char *socket_path, const struct command_args *args)
{
	struct bearer_token tok;
	struct json_doc header = {0}, claims = {0};
	const char *dot1, *dot2;
	unsigned char *h = NULL, *c = NULL;
	size_t hlen = 0, clen = 0;
	int rc, r;

	rc = fetch_token(socket_path, args, &tok);
	if (rc != RC_OK)
		return rc;
	rc = RC_ERROR;
	dot1 = memchr(tok.access_token, '.', tok.len);
	dot2 = dot1 != NULL ? strchr(dot1 + 1, '.') : NULL;
	if (dot2 == NULL || strchr(dot2 + 1, '.') != NULL) {
		fprintf(stderr, "bearerctl: the token for %s is not a signed JWT\n",
			args->audience);
		goto out;
	}
	r = base64url_decode(tok.access_token, (size_t)(dot1 - tok.access_token), &h, &hlen);
	if (r == 0)
		r = base64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &c, &clen);
	if (r == -ENOMEM)
		out_of_memory();
	if (r < 0 || parse_json(&header, (char *)h, hlen, false) < 0 ||
	    parse_json(&claims, (char *)c, clen, false) < 0) {
		fprintf(stderr, "bearerctl: the token for %s is not a readable JWT\n",
			args->audience);
		goto out;
	}
	print_json(&header, 0, 0, false);
	putchar('\n');
	print_json(&claims, 0, 0, true);
	putchar('\n');
	print_time_claim(&claims, "iat");
	print_time_claim(&claims, "nbf");
	print_time_claim(&claims, "exp");
	rc = RC_OK;
out:
	free(header.tok);
	free(claims.tok);
	wipe_free(h, hlen + 1);
	wipe_free(c, clen + 1);
	bearer_token_clear(&tok);
	return rc;
}

static int
cmd_health(const char *socket_path, const struct command_args *args)
{
	char *body;
	size_t len;
	int status, r, rc = RC_OK;

	r = bearer_request(socket_path, "GET", args->strict ? "/readyz?strict=1" : "/readyz",
			   "application/json", &status, &body, &len);
	if (r < 0)
		return fail_request(socket_path, r);
	if (status == 200)
		printf("ready\n");
	else
		rc = fail_http(status, body, len);
	free(body);
	return rc;
}

/* Something `export $(bearerctl env)` passes through as one word. */
static bool
env_value_ok(const char *s)
{
	if (s == NULL || s[0] == '\0')
		return false;
	for (; *s != '\0'; s++)
		if (*s <= ' ' || *s > '~')
			return false;
	return true;
}

static int
cmd_env(const char *socket_path, const struct command_args *args)
{
	struct json_doc doc = {0};
	char *body, *endpoint = NULL, *secret = NULL;
	size_t len, slen = 0;
	int status, r, rc = RC_ERROR;

	r = bearer_request(socket_path, "GET", "/v1/compat/env", "application/json", &status, &body,
			   &len);
	if (r < 0)
		return fail_request(socket_path, r);
	if (status == 404) {
		fprintf(stderr, "bearerctl: the daemon has no App Service compatible endpoint "
				"configured\n");
		goto out;
	}
	if (status != 200) {
		rc = fail_http(status, body, len);
		goto out;
	}
	if (parse_json(&doc, body, len, false) == 0) {
		endpoint = json_text(&doc, json_find(&doc, 0, "IDENTITY_ENDPOINT"), NULL);
		secret = json_text(&doc, json_find(&doc, 0, "IDENTITY_HEADER"), &slen);
	}
	if (!env_value_ok(endpoint) || !env_value_ok(secret)) {
		fprintf(stderr, "bearerctl: malformed answer from the daemon at %s\n", socket_path);
		goto out;
	}
	rc = write_secret_line("IDENTITY_ENDPOINT=", endpoint, strlen(endpoint));
	if (rc == RC_OK)
		rc = write_secret_line("IDENTITY_HEADER=", secret, slen);
out:
	free(doc.tok);
	free(endpoint);
	wipe_free(secret, slen + 1);
	wipe_free(body, len);
	(void)args;
	return rc;
}

static const struct command commands[] = {
    {"token", OPT_MIN_VALIDITY | OPT_JSON, true, cmd_token},
    {"header", OPT_MIN_VALIDITY, true, cmd_header},
    {"status", 0, false, cmd_status},
    {"refresh", 0, true, cmd_refresh},
    {"claims", OPT_MIN_VALIDITY, true, cmd_claims},
    {"health", OPT_STRICT, false, cmd_health},
    {"env", 0, false, cmd_env},
};

static __attribute__((format(printf, 1, 2))) int
usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("bearerctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'bearerctl --help'.\n", stderr);
	return RC_USAGE;
}

static int
parse_seconds(const char *s, int64_t *out)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno != 0 || v > INT32_MAX)
		return -EINVAL;
	*out = v;
	return 0;
}

/* Parses a command's own options and arguments; -1 means --help was shown. */
static int
parse_command(const struct command *cmd, int argc, char **argv, struct command_args *out)
{
	static const struct option opts[] = {
	    {"min-validity", required_argument, NULL, 'm'},
	    {"json", no_argument, NULL, 'j'},
	    {"strict", no_argument, NULL, 'S'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct command_args a = {0};
	int c;

	optind = 0; /* restart getopt on the command's arguments (argv[0] is its name) */
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage_text, stdout);
			return -1;
		} else if (c == 'm' && (cmd->options & OPT_MIN_VALIDITY)) {
			if (parse_seconds(optarg, &a.min_validity) < 0)
				return usage_error("invalid --min-validity: %s", optarg);
		} else if (c == 'j' && (cmd->options & OPT_JSON)) {
			a.json = true;
		} else if (c == 'S' && (cmd->options & OPT_STRICT)) {
			a.strict = true;
		} else if (c == 'm' || c == 'j' || c == 'S') {
			return usage_error("%s takes no option %s", cmd->name,
					   c == 'm'   ? "--min-validity"
					   : c == 'j' ? "--json"
						      : "--strict");
		} else if (c == ':') {
			return usage_error("option %s needs a value", argv[optind - 1]);
		} else if (optopt != 0) {
			return usage_error("unknown option -%c", optopt);
		} else {
			return usage_error("unknown option %s", argv[optind - 1]);
		}
	}
	if (cmd->audience) {
		if (optind >= argc)
			return usage_error("%s: AUDIENCE is missing", cmd->name);
		a.audience = argv[optind++];
		if (a.audience[0] == '\0' || strlen(a.audience) > AUDIENCE_MAX)
			return usage_error("%s: invalid AUDIENCE", cmd->name);
	}
	if (optind < argc)
		return usage_error("unexpected argument %s", argv[optind]);
	*out = a;
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"socket", required_argument, NULL, 's'},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},
	    {NULL, 0, NULL, 0},
	};
	const char *socket_path = NULL;
	struct command_args args;
	size_t i;
	int c, r;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:s:hV", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (optarg[0] == '\0')
				return usage_error("empty socket path");
			socket_path = optarg;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return RC_OK;
		case 'V':
			printf("bearerctl %s\n", BEARERD_VERSION);
			return RC_OK;
		case ':':
			return usage_error("option %s needs a value", argv[optind - 1]);
		default:
			if (optopt != 0)
				return usage_error("unknown option -%c", optopt);
			return usage_error("unknown option %s", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return usage_error("no command given");
	if (socket_path == NULL)
		socket_path = bearer_default_socket();

	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[optind], commands[i].name) != 0)
			continue;
		r = parse_command(&commands[i], argc - optind, argv + optind, &args);
		if (r != 0)
			return r < 0 ? RC_OK : r;
		r = commands[i].run(socket_path, &args);
		if (fflush(stdout) != 0 && r == RC_OK) {
			fprintf(stderr, "bearerctl: cannot write to stdout: %s\n", strerror(errno));
			r = RC_ERROR;
		}
		return r;
	}
	return usage_error("unknown command %s", argv[optind]);
}
