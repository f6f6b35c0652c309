/*
 * Configuration: reads the INI file with inih, validates all of it and
 * reports every problem as "FILE:LINE: message", then builds struct config.
 *
 * How inih is used, and why this way.  Debian's libinih (55) is built with
 * INI_HANDLER_LINENO=0, so the handler is never told the line of a key; it
 * also has a fixed 200-byte line buffer and a 50-byte section buffer compiled
 * into the shared library (the INI_* macros and the ini_* variables in ini.h
 * do not change them), it ignores text after "]", reports only the first
 * syntax error, and never calls the handler for a section without keys.  So
 * we feed inih through ini_parse_stream with our own reader, which:
 *   - counts lines, so the handler (called for a line before the next one is
 *     read) knows the line of every key;
 *   - strips leading blanks, so an indented line is never taken as a
 *     continuation of the previous value (inih's multi-line mode);
 *   - handles "[section]" headers itself (names are up to 128 bytes, too long
 *     for inih's buffer; empty and duplicate sections need their line) and
 *     hands inih a blank line instead;
 *   - reports lines inih would reject (no "=" or ":"), so that every syntax
 *     error is reported, not only the first;
 *   - bounds the file (CONFIG_MAX_SIZE) and its lines (CONFIG_MAX_LINE).
 * inih splits "key = value" lines, strips inline " ;" comments and blanks.
 * A key line too long for inih's buffer is split by key_line_split, which
 * follows inih's rules (first "=" or ":", inline comment after a blank).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <inttypes.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <unistd.h>

#include "assertion.h"
#include "config.h"
#include "config_parse.h"
#include "log.h"
#include "secret.h"

#define CONFIG_MAX_SIZE	      (1024 * 1024) /* bytes in a file */
#define CONFIG_MAX_LINE	      4096	    /* bytes in a line */
#define CONFIG_MAX_IDENTITIES 256
#define CONFIG_MAX_AUDIENCES  4096
#define CONFIG_MAX_ERRORS     1000 /* then one "too many errors" line */

#define DEFAULT_SOCKET	      "/run/bearerd/bearerd.sock"
#define DEFAULT_SOCKET_MODE   0660
#define DEFAULT_MIN_VALIDITY  300
#define DEFAULT_REFRESH	      900
#define DEFAULT_MAX_ENTRIES   10000
#define DEFAULT_IDLE_TIMEOUT  3600
#define DEFAULT_WAIT_TIMEOUT  5
#define DEFAULT_IMDS_ENDPOINT "http://169.254.169.254/metadata/identity/oauth2/token"
#define DEFAULT_IMDS_TIMEOUT  10
#define DEFAULT_DEV_ISSUER    "bearerd-dev"
#define DEFAULT_DEV_LIFETIME  3600
#define DEFAULT_AUTHORITY     "https://login.microsoftonline.com"
#define DEFAULT_MAX_CONNS     1024
#define DEFAULT_HEADER_TMO    10
#define DEFAULT_KEEPALIVE_TMO 60
#define DEFAULT_DYNAMIC_RATE  10       /* new dynamic entries per second per caller */
#define PER_UID_UNSET	      UINT_MAX /* default: max_connections / 4 */

static const char *const bkey_names[BK__N] = {
    "socket",	      "socket_mode",	   "socket_group",    "log_level",
    "min_validity",   "refresh_margin",	   "max_entries",     "idle_timeout",
    "wait_timeout",   "ca_file",	   "max_connections", "max_connections_per_uid",
    "header_timeout", "keepalive_timeout", "metrics_listen",  "metrics_allow_non_loopback",
    "dynamic_rate",
};

static const char *const ikey_names[IK__N] = {
    "source",
    "endpoint",
    "client_id",
    "object_id",
    "msi_res_id",
    "ca_file",
    "timeout",
    "issuer",
    "subject",
    "roles",
    "lifetime",
    "dynamic_resources",
    "principal_id",
    "mi_res_id",
    "identity_header_file",
    "authority",
    "tenant",
    "client_secret_file",
    "certificate_file",
    "private_key_file",
    "federated_token_file",
    "assertion_alg",
    "send_x5c",
    "token_url",
    "auth_method",
    "key_id",
    "audience_param",
    "scope",
    "extra_params",
    "tls_certificate_file",
    "tls_private_key_file",
    "dynamic_allow_uids",
    "dynamic_allow_gids",
};

/* Sets of sources, as bits (1u << enum config_source). */
#define SRC(x)	      (1u << CONFIG_SOURCE_##x)
#define SRC_ENTRA     (SRC(ENTRA_SECRET) | SRC(ENTRA_CERTIFICATE) | SRC(ENTRA_FEDERATED))
#define SRC_UPSTREAM  (SRC(AZURE_IMDS) | SRC(AZURE_APPSERVICE) | SRC_ENTRA | SRC(OAUTH2))
#define SRC_ASSERTION (SRC(ENTRA_CERTIFICATE) | SRC(OAUTH2))

/* 0: every source; else the set of sources the key belongs to. */
static const unsigned ikey_sources[IK__N] = {
    [IK_ENDPOINT] = SRC(AZURE_IMDS) | SRC(AZURE_APPSERVICE),
    [IK_CLIENT_ID] = SRC_UPSTREAM,
    [IK_OBJECT_ID] = SRC(AZURE_IMDS),
    [IK_MSI_RES_ID] = SRC(AZURE_IMDS),
    [IK_CA_FILE] = SRC_UPSTREAM,
    [IK_TIMEOUT] = SRC_UPSTREAM,
    [IK_ISSUER] = SRC(DEV),
    [IK_SUBJECT] = SRC(DEV),
    [IK_ROLES] = SRC(DEV),
    [IK_LIFETIME] = SRC(DEV),
    [IK_PRINCIPAL_ID] = SRC(AZURE_APPSERVICE),
    [IK_MI_RES_ID] = SRC(AZURE_APPSERVICE),
    [IK_IDENTITY_HEADER_FILE] = SRC(AZURE_APPSERVICE),
    [IK_AUTHORITY] = SRC_ENTRA,
    [IK_TENANT] = SRC_ENTRA,
    [IK_CLIENT_SECRET_FILE] = SRC(ENTRA_SECRET) | SRC(OAUTH2),
    [IK_CERTIFICATE_FILE] = SRC_ASSERTION,
    [IK_PRIVATE_KEY_FILE] = SRC_ASSERTION,
    [IK_FEDERATED_TOKEN_FILE] = SRC(ENTRA_FEDERATED),
    [IK_ASSERTION_ALG] = SRC_ASSERTION,
    [IK_SEND_X5C] = SRC(ENTRA_CERTIFICATE),
    [IK_TOKEN_URL] = SRC(OAUTH2),
    [IK_AUTH_METHOD] = SRC(OAUTH2),
    [IK_KEY_ID] = SRC(OAUTH2),
    [IK_AUDIENCE_PARAM] = SRC(OAUTH2),
    [IK_SCOPE] = SRC(OAUTH2),
    [IK_EXTRA_PARAMS] = SRC(OAUTH2),
    [IK_TLS_CERTIFICATE_FILE] = SRC(OAUTH2),
    [IK_TLS_PRIVATE_KEY_FILE] = SRC(OAUTH2),
};

/* The spellings of the source key, in enum config_source order from 1. */
static const char *const source_names[] = {
    NULL,
    "dev",
    "azure-imds",
    "azure-appservice",
    "entra-secret",
    "entra-certificate",
    "entra-federated",
    "oauth2",
};

/* Form parameters bearerd sets itself: extra_params may not repeat them. */
static const char *const reserved_params[] = {
    "grant_type", "client_id", "client_secret", "client_assertion", "client_assertion_type",
    "scope",	  "resource",  "audience",
};

static const char *const akey_names[AK__N] = {
    "identity", "resource", "prefetch", "allow_uids", "allow_gids",
};

static const char *const ckey_names[CK__N] = {
    "identity",		 "imds_listen", "appservice_listen",  "appservice_secret_file",
    "dynamic_resources", "resources",	"allow_non_loopback", "env_allow_uids",
    "env_allow_gids",	 "imds_relay",
};

#define DEFAULT_SECRET_NAME "identity-header" /* beside the socket */

static const char dev_config[] = "[identity \"dev\"]\n"
				 "source = dev\n"
				 "roles = Sample.Read Sample.Write\n"
				 "lifetime = 3600\n"
				 "dynamic_resources = yes\n"
				 "\n"
				 "[audience \"demo\"]\n"
				 "identity = dev\n"
				 "resource = api://bearerd-demo\n"
				 "prefetch = yes\n";

/* Errors */

void
perr_at(struct parser *p, int line, const char *fmt, ...)
{
	struct perr *e;
	va_list ap;
	char *msg;
	int r;

	if (p->n_errs > CONFIG_MAX_ERRORS)
		return;
	if (p->n_errs == p->errs_cap) {
		size_t cap = p->errs_cap ? p->errs_cap * 2 : 16;
		e = reallocarray(p->errs, cap, sizeof(*e));
		if (e == NULL) {
			p->oom = true;
			return;
		}
		p->errs = e;
		p->errs_cap = cap;
	}
	if (p->n_errs == CONFIG_MAX_ERRORS) {
		msg = strdup("too many errors, giving up");
		p->stop = true;
	} else {
		va_start(ap, fmt);
		r = vasprintf(&msg, fmt, ap);
		va_end(ap);
		if (r < 0)
			msg = NULL;
	}
	if (msg == NULL) {
		p->oom = true;
		return;
	}
	e = &p->errs[p->n_errs];
	*e = (struct perr){.line = line, .seq = p->n_errs, .owner = p->owner, .msg = msg};
	p->n_errs++;
}

static int
perr_cmp(const void *a, const void *b)
{
	const struct perr *x = a, *y = b;

	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Prints the errors in line order; returns how many were printed. */
static size_t
perr_flush(struct parser *p, FILE *out)
{
	size_t n = 0;

	if (p->n_errs == 0)
		return 0;
	qsort(p->errs, p->n_errs, sizeof(*p->errs), perr_cmp);
	for (size_t i = 0; i < p->n_errs; i++) {
		if (p->errs[i].dropped)
			continue;
		n++;
		if (out != NULL)
			fprintf(out, "%s:%d: %s\n", p->name, p->errs[i].line, p->errs[i].msg);
	}
	return n;
}

/* Values */

bool
name_valid(const char *s)
{
	size_t n = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-");

	return n > 0 && n <= CONFIG_NAME_MAX && s[n] == '\0';
}

static bool
all_digits(const char *s)
{
	return s[0] != '\0' && s[strspn(s, "0123456789")] == '\0';
}

/* Whole seconds (or a plain count) in [min, max]; reports and fails otherwise. */
int
parse_int(struct parser *p, const char *key, const char *v, int64_t min, int64_t max, int64_t *out)
{
	long long n;

	if (v[0] == '-' && all_digits(v + 1)) {
		perr(p, "%s: must not be negative, got '%.64s'", key, v);
		return -EINVAL;
	}
	if (!all_digits(v)) {
		perr(p, "%s: expected a whole number, got '%.64s'", key, v);
		return -EINVAL;
	}
	errno = 0;
	n = strtoll(v, NULL, 10);
	if (errno == ERANGE || n < min || n > max) {
		perr(p, "%s: %.64s is out of range (%" PRId64 "..%" PRId64 ")", key, v, min, max);
		return -EINVAL;
	}
	*out = n;
	return 0;
}

int
parse_bool(struct parser *p, const char *key, const char *v, bool *out)
{
	static const char *const yes[] = {"yes", "true", "1", "on"};
	static const char *const no[] = {"no", "false", "0", "off"};

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (strcasecmp(v, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(v, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	perr(p, "%s: expected yes or no, got '%.64s'", key, v);
	return -EINVAL;
}

/* A non-empty string, kept byte for byte (inih has stripped the blanks around it). */
int
parse_string(struct parser *p, const char *key, const char *v, char **out)
{
	char *s;

	if (v[0] == '\0') {
		perr(p, "%s: empty value", key);
		return -EINVAL;
	}
	s = strdup(v);
	if (s == NULL) {
		p->oom = true;
		return -ENOMEM;
	}
	free(*out);
	*out = s;
	return 0;
}

/* A non-empty string without blanks (ids and URLs). */
int
parse_word(struct parser *p, const char *key, const char *v, char **out)
{
	if (strpbrk(v, " \t") != NULL) {
		perr(p, "%s: must not contain blanks, got '%.64s'", key, v);
		return -EINVAL;
	}
	return parse_string(p, key, v, out);
}

/* Blank-separated words into a NULL-terminated array (empty for an empty value). */
int
split_words(const char *v, char ***out)
{
	char **words = NULL, **w, *copy, *save = NULL, *tok;
	size_t n = 0;
	int r = -ENOMEM;

	copy = strdup(v);
	if (copy == NULL)
		goto out;
	words = calloc(1, sizeof(*words));
	if (words == NULL)
		goto out;
	for (tok = strtok_r(copy, " \t", &save); tok != NULL; tok = strtok_r(NULL, " \t", &save)) {
		w = reallocarray(words, n + 2, sizeof(*words));
		if (w == NULL)
			goto out;
		words = w;
		words[n] = strdup(tok);
		words[n + 1] = NULL;
		if (words[n] == NULL)
			goto out;
		n++;
	}
	*out = words;
	words = NULL;
	r = 0;
out:
	strv_free(words);
	free(copy);
	return r;
}

_Static_assert(sizeof(uid_t) == sizeof(uint32_t) && sizeof(gid_t) == sizeof(uint32_t),
	       "uid_t and gid_t are 32-bit");

/* allow_uids / allow_gids: names (resolved now) or numeric ids. */
static int
parse_ids(struct parser *p, const char *key, const char *v, bool groups, uint32_t **out,
	  size_t *n_out)
{
	char **words = NULL;
	uint32_t *ids = NULL;
	size_t n = 0;
	bool bad = false;
	int r;

	r = split_words(v, &words);
	if (r < 0) {
		p->oom = true;
		goto out;
	}
	n = strv_length(words);
	if (n == 0) {
		perr(p, "%s: empty list", key);
		r = -EINVAL;
		goto out;
	}
	ids = calloc(n, sizeof(*ids));
	if (ids == NULL) {
		p->oom = true;
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		const char *w = words[i];
		unsigned long long id;

		if (all_digits(w)) {
			errno = 0;
			id = strtoull(w, NULL, 10);
			/* (uid_t)-1 means "no change" to the kernel: never a real id */
			if (errno == ERANGE || id >= UINT32_MAX) {
				perr(p, "%s: id %.64s is out of range", key, w);
				bad = true;
				continue;
			}
			ids[i] = (uint32_t)id;
		} else if (groups) {
			struct group *g = getgrnam(w);

			if (g == NULL) {
				perr(p, "%s: unknown group '%.64s'", key, w);
				bad = true;
				continue;
			}
			ids[i] = g->gr_gid;
		} else {
			struct passwd *pw = getpwnam(w);

			if (pw == NULL) {
				perr(p, "%s: unknown user '%.64s'", key, w);
				bad = true;
				continue;
			}
			ids[i] = pw->pw_uid;
		}
	}
	if (bad) {
		r = -EINVAL;
		goto out;
	}
	*out = ids;
	*n_out = n;
	ids = NULL;
	r = 0;
out:
	free(ids);
	strv_free(words);
	return r;
}

/* allow_uids-style keys into an ACL (uids or gids). */
static void
parse_acl(struct parser *p, const char *key, const char *v, bool groups, struct config_acl *acl)
{
	uint32_t *ids = NULL;
	size_t n = 0;

	if (parse_ids(p, key, v, groups, &ids, &n) < 0)
		return;
	if (groups) {
		free(acl->gids);
		acl->gids = ids;
		acl->n_gids = n;
	} else {
		free(acl->uids);
		acl->uids = ids;
		acl->n_uids = n;
	}
}

/* Sections */

/* inih's scanner: the first of chars, or an inline comment (";" after a blank). */
static char *
find_chars_or_comment(char *s, const char *chars)
{
	bool was_space = false;

	while (*s != '\0' && (chars == NULL || strchr(chars, *s) == NULL) &&
	       !(was_space && *s == ';')) {
		was_space = isspace((unsigned char)*s);
		s++;
	}
	return s;
}

static char *
rstrip(char *s)
{
	size_t n = strlen(s);

	while (n > 0 && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	return s;
}

static char *
lskip(char *s)
{
	while (*s != '\0' && isspace((unsigned char)*s))
		s++;
	return s;
}

int
key_index(const char *const *names, size_t n, const char *key)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(names[i], key) == 0)
			return (int)i;
	}
	return -1;
}

/*
 * Makes room for section n: the config's array *items and the parser's parallel array *infos
 * grow together, doubling from 4.  Each pointer is updated as soon as its array has moved.
 */
static int
section_reserve(size_t n, size_t *cap, void **items, size_t item_size, void **infos,
		size_t info_size)
{
	size_t new_cap;
	void *v;

	if (n < *cap)
		return 0;
	new_cap = *cap ? *cap * 2 : 4;
	v = reallocarray(*items, new_cap, item_size);
	if (v == NULL)
		return -ENOMEM;
	*items = v;
	v = reallocarray(*infos, new_cap, info_size);
	if (v == NULL)
		return -ENOMEM;
	*infos = v;
	*cap = new_cap;
	return 0;
}

static int
identity_add(struct parser *p, const char *name)
{
	struct config *c = p->c;

	if (section_reserve(c->n_identities, &p->identities_cap, (void **)&c->identities,
			    sizeof(*c->identities), (void **)&p->iinfo, sizeof(*p->iinfo)) < 0)
		return -ENOMEM;
	c->identities[c->n_identities] = (struct config_identity){
	    .name = strdup(name),
	    .line = p->line,
	    .timeout = DEFAULT_IMDS_TIMEOUT,
	    .lifetime = DEFAULT_DEV_LIFETIME,
	    .auth_method = CONFIG_AUTH_SECRET_BASIC,
	    .audience_param = CONFIG_AUD_SCOPE,
	};
	p->iinfo[c->n_identities] = (struct ident_info){.source_state = SOURCE_UNSET};
	if (c->identities[c->n_identities].name == NULL)
		return -ENOMEM;
	p->cur = c->n_identities++;
	p->cur_lines = p->iinfo[p->cur].key_line;
	return 0;
}

static int
audience_add(struct parser *p, const char *name)
{
	struct config *c = p->c;

	if (section_reserve(c->n_audiences, &p->audiences_cap, (void **)&c->audiences,
			    sizeof(*c->audiences), (void **)&p->ainfo, sizeof(*p->ainfo)) < 0)
		return -ENOMEM;
	c->audiences[c->n_audiences] = (struct config_audience){
	    .name = strdup(name),
	    .line = p->line,
	};
	p->ainfo[c->n_audiences] = (struct aud_info){.lost_line = false};
	if (c->audiences[c->n_audiences].name == NULL)
		return -ENOMEM;
	p->cur = c->n_audiences++;
	p->cur_lines = p->ainfo[p->cur].key_line;
	return 0;
}

/* [identity "NAME"] and [audience "NAME"]: kind is "identity" or "audience". */
static void
section_named(struct parser *p, const char *kind, char *rest)
{
	bool identity = strcmp(kind, "identity") == 0;
	size_t n = strlen(rest);
	char *name = rest;
	size_t count;
	int first_line, max, r;

	if (n == 0) {
		perr(p, "section [%s] needs a name: [%s \"NAME\"]", kind, kind);
		return;
	}
	if (rest[0] == '"') {
		if (n < 2 || rest[n - 1] != '"' || strchr(rest + 1, '"') != rest + n - 1) {
			perr(p, "bad section header: expected [%s \"NAME\"]", kind);
			return;
		}
		rest[n - 1] = '\0';
		name = rest + 1;
	} else {
		/* reported, but taken as the name so that its keys are still checked */
		perr(p, "section name must be quoted: [%s \"%.128s\"]", kind, rest);
	}
	if (!name_valid(name)) {
		perr(p, "invalid %s name '%.140s': use 1 to %d of A-Z a-z 0-9 . _ -", kind, name,
		     CONFIG_NAME_MAX);
		return;
	}
	if (identity) {
		const struct config_identity *id = config_identity_find(p->c, name);

		first_line = id != NULL ? id->line : 0;
		count = p->c->n_identities;
		max = CONFIG_MAX_IDENTITIES;
	} else {
		const struct config_audience *a = config_audience_find(p->c, name);

		first_line = a != NULL ? a->line : 0;
		count = p->c->n_audiences;
		max = CONFIG_MAX_AUDIENCES;
	}
	if (first_line != 0) {
		perr(p, "duplicate section [%s \"%s\"] (first on line %d)", kind, name, first_line);
		return;
	}
	if (count >= (size_t)max) {
		perr(p, "too many %s (at most %d)", identity ? "identities" : "audiences", max);
		return;
	}
	r = identity ? identity_add(p, name) : audience_add(p, name);
	if (r < 0) {
		p->oom = true;
		return;
	}
	p->sec = identity ? SEC_IDENTITY : SEC_AUDIENCE;
}

/* A "[...]" line (leading blanks already stripped). */
static void
section_begin(struct parser *p, char *line)
{
	char *end, *inner, *rest, *kind;

	p->sec = SEC_SKIP;
	p->cur_lines = NULL;
	end = find_chars_or_comment(line + 1, "]");
	if (*end != ']') {
		perr(p, "bad section header: missing ']'");
		return;
	}
	*end = '\0';
	rest = lskip(end + 1);
	if (*rest != '\0' && *rest != ';' && *rest != '#') {
		perr(p, "unexpected text after section header: '%.64s'", rest);
		return;
	}
	inner = rstrip(lskip(line + 1));
	kind = inner;
	rest = inner + strcspn(inner, " \t\"");
	if (*rest != '\0' && *rest != '"')
		*rest++ = '\0';
	else if (*rest == '"') {
		perr(p, "bad section header: expected [identity \"NAME\"] or [audience \"NAME\"]");
		return;
	}
	rest = lskip(rest);

	if (strcmp(kind, "bearerd") == 0) {
		if (*rest != '\0') {
			perr(p, "section [bearerd] takes no name");
			return;
		}
		if (p->bearerd_line != 0) {
			perr(p, "duplicate section [bearerd] (first on line %d)", p->bearerd_line);
			return;
		}
		p->bearerd_line = p->line;
		p->sec = SEC_BEARERD;
		p->cur_lines = p->bearerd_lines;
	} else if (strcmp(kind, "identity") == 0 || strcmp(kind, "audience") == 0) {
		section_named(p, kind, rest);
	} else if (strcmp(kind, "compat") == 0) {
		if (*rest != '\0') {
			perr(p, "section [compat] takes no name");
			return;
		}
		if (p->c->compat.line != 0) {
			perr(p, "duplicate section [compat] (first on line %d)", p->c->compat.line);
			return;
		}
		p->c->compat.line = p->line;
		p->sec = SEC_COMPAT;
		p->cur_lines = p->compat_lines;
	} else if (config_proxy_section(p, kind, rest)) {
		/* [proxy] or [route "NAME"]: config_proxy.c set p->sec */
	} else {
		perr(p, "unknown section [%.64s]", kind);
	}
}

/* Keys */

static void
bearerd_key(struct parser *p, int k, const char *v)
{
	struct config *c = p->c;
	const char *key = bkey_names[k];
	enum log_level level;
	unsigned long mode;
	int64_t n;

	switch ((enum bkey)k) {
	case BK_SOCKET:
		if (parse_string(p, key, v, &c->socket) == 0 &&
		    strlen(v) >= sizeof(((struct sockaddr_un *)NULL)->sun_path))
			perr(p, "socket: path is longer than %zu bytes",
			     sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1);
		break;
	case BK_SOCKET_MODE:
		if (v[0] == '\0' || v[strspn(v, "01234567")] != '\0')
			perr(p, "socket_mode: expected an octal mode such as 0660, got '%.64s'", v);
		else if ((mode = strtoul(v, NULL, 8)) > 0777)
			perr(p, "socket_mode: %.64s is out of range (0..0777)", v);
		else
			c->socket_mode = (mode_t)mode;
		break;
	case BK_SOCKET_GROUP:
		parse_word(p, key, v, &c->socket_group);
		break;
	case BK_LOG_LEVEL:
		if (log_level_parse(v, &level) < 0)
			perr(p, "log_level: expected error, warning, info or debug, got '%.64s'",
			     v);
		else
			c->log_level = (int)level;
		break;
	case BK_MIN_VALIDITY:
		parse_int(p, key, v, 0, 86400, &c->min_validity);
		break;
	case BK_REFRESH_MARGIN:
		parse_int(p, key, v, 0, 86400, &c->refresh_margin);
		break;
	case BK_MAX_ENTRIES:
		if (parse_int(p, key, v, 1, 1000000, &n) == 0)
			c->max_entries = (size_t)n;
		break;
	case BK_IDLE_TIMEOUT:
		parse_int(p, key, v, 1, 30 * 86400, &c->idle_timeout);
		break;
	case BK_WAIT_TIMEOUT:
		parse_int(p, key, v, 1, 300, &c->wait_timeout);
		break;
	case BK_CA_FILE:
		if (parse_string(p, key, v, &c->ca_file) == 0 && access(v, R_OK) < 0)
			perr(p, "ca_file: cannot read '%.128s': %s", v, strerror(errno));
		break;
	case BK_MAX_CONNECTIONS:
		if (parse_int(p, key, v, 1, 100000, &n) == 0)
			c->max_connections = (unsigned)n;
		break;
	case BK_MAX_CONNECTIONS_PER_UID:
		if (parse_int(p, key, v, 0, 100000, &n) == 0)
			c->max_connections_per_uid = (unsigned)n;
		break;
	case BK_HEADER_TIMEOUT:
		if (parse_int(p, key, v, 1, 300, &n) == 0)
			c->header_timeout = (unsigned)n;
		break;
	case BK_KEEPALIVE_TIMEOUT:
		if (parse_int(p, key, v, 1, 3600, &n) == 0)
			c->keepalive_timeout = (unsigned)n;
		break;
	case BK_METRICS_LISTEN:
		parse_listen(p, key, v, &c->metrics_listen);
		break;
	case BK_METRICS_ALLOW_NON_LOOPBACK:
		parse_bool(p, key, v, &c->metrics_allow_non_loopback);
		break;
	case BK_DYNAMIC_RATE:
		if (parse_int(p, key, v, 0, 100000, &n) == 0)
			c->dynamic_rate = (unsigned)n;
		break;
	case BK__N:
		break;
	}
}

static void
identity_source(struct parser *p, struct config_identity *id, struct ident_info *info,
		const char *v)
{
	info->source_state = SOURCE_BAD;
	for (size_t i = 1; i < sizeof(source_names) / sizeof(source_names[0]); i++) {
		if (strcmp(v, source_names[i]) == 0) {
			id->source = (enum config_source)i;
			info->source_state = SOURCE_OK;
			return;
		}
	}
	perr(p,
	     "source: unknown source '%.64s' (expected dev, azure-imds, azure-appservice, "
	     "entra-secret, entra-certificate, entra-federated or oauth2)",
	     v);
}

/* A file name: a leading $CREDENTIALS_DIRECTORY expanded; absolute after that. */
static int
parse_path(struct parser *p, const char *key, const char *v, char **out)
{
	char *path = NULL;
	int r;

	if (v[0] == '\0') {
		perr(p, "%s: empty value", key);
		return -EINVAL;
	}
	r = secret_path_expand(v, &path);
	if (r == -ENOENT) {
		perr(p,
		     "%s: '%.64s' uses $CREDENTIALS_DIRECTORY, which is not set (systemd sets it "
		     "for LoadCredential=)",
		     key, v);
		return -EINVAL;
	}
	if (r < 0) {
		p->oom = true;
		return r;
	}
	if (path[0] != '/') {
		perr(p, "%s: expected an absolute path, got '%.128s'", key, v);
		free(path);
		return -EINVAL;
	}
	free(*out);
	*out = path;
	return 0;
}

static bool
host_is_loopback(const char *host, size_t n)
{
	struct sockaddr_storage ss = {0};
	char h[256];

	if (n == 0 || n >= sizeof(h))
		return false;
	memcpy(h, host, n);
	h[n] = '\0';
	if (strcasecmp(h, "localhost") == 0)
		return true;
	if (h[0] == '[' && h[n - 1] == ']') {
		h[n - 1] = '\0';
		ss.ss_family = AF_INET6;
		if (inet_pton(AF_INET6, h + 1, &((struct sockaddr_in6 *)&ss)->sin6_addr) != 1)
			return false;
	} else {
		ss.ss_family = AF_INET;
		if (inet_pton(AF_INET, h, &((struct sockaddr_in *)&ss)->sin_addr) != 1)
			return false;
	}
	return config_addr_is_loopback(&ss);
}

/*
 * NULL when v is an https:// URL, or an http:// URL to a loopback host (tests
 * and local servers); else what is wrong.  Secrets are sent there.
 */
static const char *
url_problem(const char *v)
{
	const char *host, *port;
	bool tls = strncmp(v, "https://", 8) == 0;
	size_t n;

	if (tls)
		host = v + 8;
	else if (strncmp(v, "http://", 7) == 0)
		host = v + 7;
	else
		return "expected an https:// URL";
	n = strcspn(host, "/?#");
	if (n == 0)
		return "the URL has no host";
	if (memchr(host, '@', n) != NULL)
		return "user or password in the URL: put secrets in files";
	if (strchr(v, '#') != NULL)
		return "a URL with a #fragment";
	if (tls)
		return NULL;
	/* strip the port: after "]" for [IPv6], else after the last ":" */
	port = memchr(host, ']', n);
	if (port == NULL)
		port = memrchr(host, ':', n);
	else
		port = port + 1 < host + n && port[1] == ':' ? port + 1 : NULL;
	if (host_is_loopback(host, port != NULL ? (size_t)(port - host) : n))
		return NULL;
	return "plain http:// is allowed only to a loopback host (127.0.0.1, [::1], localhost)";
}

static void
parse_url(struct parser *p, const char *key, const char *v, char **out)
{
	const char *why;

	if (parse_word(p, key, v, out) < 0)
		return;
	why = url_problem(v);
	if (why != NULL)
		perr(p, "%s: %s, got '%.128s'", key, why, v);
}

static void
parse_alg(struct parser *p, const char *v, enum config_assertion_alg *out)
{
	if (strcmp(v, "PS256") == 0)
		*out = CONFIG_ALG_PS256;
	else if (strcmp(v, "RS256") == 0)
		*out = CONFIG_ALG_RS256;
	else if (strcmp(v, "ES256") == 0)
		*out = CONFIG_ALG_ES256;
	else
		perr(p, "assertion_alg: expected PS256, RS256 or ES256, got '%.64s'", v);
}

static void
parse_auth_method(struct parser *p, const char *v, enum config_auth_method *out)
{
	if (strcmp(v, "client_secret_basic") == 0)
		*out = CONFIG_AUTH_SECRET_BASIC;
	else if (strcmp(v, "client_secret_post") == 0)
		*out = CONFIG_AUTH_SECRET_POST;
	else if (strcmp(v, "private_key_jwt") == 0)
		*out = CONFIG_AUTH_PRIVATE_KEY_JWT;
	else
		perr(p,
		     "auth_method: expected client_secret_basic, client_secret_post or "
		     "private_key_jwt, got '%.64s'",
		     v);
}

/* audience_param: some of "scope", "resource", "audience", each once. */
static void
parse_audience_param(struct parser *p, const char *v, unsigned *out)
{
	static const char *const names[] = {"scope", "resource", "audience"};
	static const unsigned bits[] = {CONFIG_AUD_SCOPE, CONFIG_AUD_RESOURCE, CONFIG_AUD_AUDIENCE};
	char **words = NULL;
	unsigned set = 0;
	bool bad = false;

	if (split_words(v, &words) < 0) {
		p->oom = true;
		return;
	}
	for (size_t i = 0; words[i] != NULL; i++) {
		int k = key_index(names, 3, words[i]);

		if (k < 0) {
			perr(p, "audience_param: expected scope, resource or audience, got '%.64s'",
			     words[i]);
			bad = true;
		} else if (set & bits[k]) {
			perr(p, "audience_param: '%s' given twice", names[k]);
			bad = true;
		} else {
			set |= bits[k];
		}
	}
	if (words[0] == NULL) {
		perr(p, "audience_param: empty value");
		bad = true;
	}
	if (!bad)
		*out = set;
	strv_free(words);
}

/* extra_params: name=value words; names bearerd sets itself are refused. */
static void
parse_extra_params(struct parser *p, const char *v, char ***out)
{
	char **words = NULL;
	bool bad = false;

	if (split_words(v, &words) < 0) {
		p->oom = true;
		return;
	}
	if (words[0] == NULL) {
		perr(p, "extra_params: empty value");
		bad = true;
	}
	for (size_t i = 0; words[i] != NULL; i++) {
		size_t n = strcspn(words[i], "=");

		if (words[i][n] != '=' || n == 0) {
			perr(p, "extra_params: expected name=value, got '%.64s'", words[i]);
			bad = true;
			continue;
		}
		for (size_t j = 0; j < sizeof(reserved_params) / sizeof(reserved_params[0]); j++) {
			if (strlen(reserved_params[j]) == n &&
			    strncmp(words[i], reserved_params[j], n) == 0) {
				perr(p, "extra_params: bearerd sets '%s' itself",
				     reserved_params[j]);
				bad = true;
			}
		}
		for (size_t j = 0; j < i; j++) {
			if (strncmp(words[j], words[i], n + 1) == 0) {
				perr(p, "extra_params: '%.*s' given twice", (int)n, words[i]);
				bad = true;
				break;
			}
		}
	}
	if (bad) {
		strv_free(words);
		return;
	}
	strv_free(*out);
	*out = words;
}

static void
parse_words_nonempty(struct parser *p, const char *key, const char *v, char ***out)
{
	char **words = NULL;

	if (split_words(v, &words) < 0) {
		p->oom = true;
		return;
	}
	if (words[0] == NULL) {
		perr(p, "%s: empty value", key);
		strv_free(words);
		return;
	}
	strv_free(*out);
	*out = words;
}

static void
identity_key(struct parser *p, int k, const char *v)
{
	struct config_identity *id = &p->c->identities[p->cur];
	struct ident_info *info = &p->iinfo[p->cur];
	const char *key = ikey_names[k];
	char **roles = NULL;

	switch ((enum ikey)k) {
	case IK_SOURCE:
		identity_source(p, id, info, v);
		break;
	case IK_ENDPOINT:
		if (parse_word(p, key, v, &id->endpoint) < 0)
			break;
		if ((strncmp(v, "http://", 7) != 0 || v[7] == '\0') &&
		    (strncmp(v, "https://", 8) != 0 || v[8] == '\0'))
			perr(p, "endpoint: expected an http:// or https:// URL, got '%.64s'", v);
		break;
	case IK_CLIENT_ID:
		parse_word(p, key, v, &id->client_id);
		break;
	case IK_OBJECT_ID:
		parse_word(p, key, v, &id->object_id);
		break;
	case IK_MSI_RES_ID:
		parse_word(p, key, v, &id->msi_res_id);
		break;
	case IK_CA_FILE:
		if (parse_string(p, key, v, &id->ca_file) == 0 && access(v, R_OK) < 0)
			perr(p, "ca_file: cannot read '%.128s': %s", v, strerror(errno));
		break;
	case IK_TIMEOUT:
		parse_int(p, key, v, 1, 120, &id->timeout);
		break;
	case IK_ISSUER:
		parse_string(p, key, v, &id->issuer);
		break;
	case IK_SUBJECT:
		parse_string(p, key, v, &id->subject);
		break;
	case IK_ROLES:
		if (split_words(v, &roles) < 0) {
			p->oom = true;
			break;
		}
		strv_free(id->roles);
		id->roles = roles;
		break;
	case IK_LIFETIME:
		parse_int(p, key, v, 60, 86400, &id->lifetime);
		break;
	case IK_DYNAMIC_RESOURCES:
		parse_bool(p, key, v, &id->dynamic_resources);
		break;
	case IK_PRINCIPAL_ID:
		parse_word(p, key, v, &id->principal_id);
		break;
	case IK_MI_RES_ID:
		parse_word(p, key, v, &id->mi_res_id);
		break;
	case IK_IDENTITY_HEADER_FILE:
		parse_path(p, key, v, &id->identity_header_file);
		break;
	case IK_AUTHORITY:
		parse_url(p, key, v, &id->authority);
		break;
	case IK_TENANT:
		if (parse_word(p, key, v, &id->tenant) == 0 && !name_valid(v))
			perr(p,
			     "tenant: expected a tenant id or domain (A-Z a-z 0-9 . _ -), got "
			     "'%.64s'",
			     v);
		break;
	case IK_CLIENT_SECRET_FILE:
		parse_path(p, key, v, &id->client_secret_file);
		break;
	case IK_CERTIFICATE_FILE:
		parse_path(p, key, v, &id->certificate_file);
		break;
	case IK_PRIVATE_KEY_FILE:
		parse_path(p, key, v, &id->private_key_file);
		break;
	case IK_FEDERATED_TOKEN_FILE:
		parse_path(p, key, v, &id->federated_token_file);
		break;
	case IK_ASSERTION_ALG:
		parse_alg(p, v, &id->assertion_alg);
		break;
	case IK_SEND_X5C:
		parse_bool(p, key, v, &id->send_x5c);
		break;
	case IK_TOKEN_URL:
		parse_url(p, key, v, &id->token_url);
		break;
	case IK_AUTH_METHOD:
		parse_auth_method(p, v, &id->auth_method);
		break;
	case IK_KEY_ID:
		parse_word(p, key, v, &id->key_id);
		break;
	case IK_AUDIENCE_PARAM:
		parse_audience_param(p, v, &id->audience_param);
		break;
	case IK_SCOPE:
		parse_words_nonempty(p, key, v, &id->scopes);
		break;
	case IK_EXTRA_PARAMS:
		parse_extra_params(p, v, &id->extra_params);
		break;
	case IK_TLS_CERTIFICATE_FILE:
		parse_path(p, key, v, &id->tls_certificate_file);
		break;
	case IK_TLS_PRIVATE_KEY_FILE:
		parse_path(p, key, v, &id->tls_private_key_file);
		break;
	case IK_DYNAMIC_ALLOW_UIDS:
		parse_acl(p, key, v, false, &id->dynamic_allow);
		break;
	case IK_DYNAMIC_ALLOW_GIDS:
		parse_acl(p, key, v, true, &id->dynamic_allow);
		break;
	case IK__N:
		break;
	}
}

static void
audience_key(struct parser *p, int k, const char *v)
{
	struct config_audience *a = &p->c->audiences[p->cur];
	const char *key = akey_names[k];
	uint32_t *ids = NULL;
	size_t n = 0;

	switch ((enum akey)k) {
	case AK_IDENTITY:
		if (parse_string(p, key, v, &a->identity_name) == 0 && !name_valid(v))
			perr(p, "identity: invalid identity name '%.140s'", v);
		break;
	case AK_RESOURCE:
		parse_string(p, key, v, &a->resource);
		break;
	case AK_PREFETCH:
		parse_bool(p, key, v, &a->prefetch);
		break;
	case AK_ALLOW_UIDS:
		if (parse_ids(p, key, v, false, &ids, &n) == 0) {
			a->allow_uids = ids;
			a->n_allow_uids = n;
		}
		break;
	case AK_ALLOW_GIDS:
		if (parse_ids(p, key, v, true, &ids, &n) == 0) {
			a->allow_gids = ids;
			a->n_allow_gids = n;
		}
		break;
	case AK__N:
		break;
	}
}

void
config_listen_free(struct config_listen *l)
{
	if (l == NULL)
		return;
	free(l->text);
	free(l);
}

/* "127.0.0.1:PORT", "[::1]:PORT" or "localhost:PORT" into a new config_listen. */
int
parse_listen(struct parser *p, const char *key, const char *v, struct config_listen **out)
{
	struct config_listen *l;
	struct sockaddr_in *in4;
	struct sockaddr_in6 *in6;
	const char *colon = strrchr(v, ':');
	char host[64];
	size_t hl;
	int64_t port;

	if (colon == NULL || colon == v || !all_digits(colon + 1) ||
	    (size_t)(colon - v) >= sizeof(host)) {
		perr(p, "%s: expected ADDRESS:PORT such as 127.0.0.1:50342, got '%.64s'", key, v);
		return -EINVAL;
	}
	hl = (size_t)(colon - v);
	memcpy(host, v, hl);
	host[hl] = '\0';
	if (parse_int(p, key, colon + 1, 0, 65535, &port) < 0)
		return -EINVAL;
	l = calloc(1, sizeof(*l));
	if (l == NULL || (l->text = strdup(v)) == NULL) {
		free(l);
		p->oom = true;
		return -ENOMEM;
	}
	in4 = (struct sockaddr_in *)&l->addr;
	in6 = (struct sockaddr_in6 *)&l->addr;
	if (strcmp(host, "localhost") == 0)
		snprintf(host, sizeof(host), "127.0.0.1");
	if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
		host[hl - 1] = '\0';
		if (inet_pton(AF_INET6, host + 1, &in6->sin6_addr) != 1)
			goto bad;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		l->addr_len = sizeof(*in6);
	} else if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
		l->addr_len = sizeof(*in4);
	} else {
		goto bad;
	}
	config_listen_free(*out);
	*out = l;
	return 0;
bad:
	perr(p, "%s: '%.64s' is not a numeric IPv4 address, [IPv6] address or localhost", key,
	     host);
	free(l->text);
	free(l);
	return -EINVAL;
}

static void
compat_key(struct parser *p, int k, const char *v)
{
	struct config_compat *cc = &p->c->compat;
	const char *key = ckey_names[k];
	char **words = NULL;

	switch ((enum ckey)k) {
	case CK_IDENTITY:
		if (parse_string(p, key, v, &cc->identity_name) == 0 && !name_valid(v))
			perr(p, "identity: invalid identity name '%.140s'", v);
		break;
	case CK_IMDS_LISTEN:
		parse_listen(p, key, v, &cc->imds_listen);
		break;
	case CK_APPSERVICE_LISTEN:
		parse_listen(p, key, v, &cc->appservice_listen);
		break;
	case CK_APPSERVICE_SECRET_FILE:
		if (parse_string(p, key, v, &cc->appservice_secret_file) == 0 && v[0] != '/')
			perr(p, "appservice_secret_file: expected an absolute path, got '%.64s'",
			     v);
		break;
	case CK_DYNAMIC_RESOURCES:
		parse_bool(p, key, v, &cc->dynamic_resources);
		break;
	case CK_RESOURCES:
		if (split_words(v, &words) < 0) {
			p->oom = true;
			break;
		}
		if (words[0] == NULL)
			perr(p, "resources: empty value");
		strv_free(cc->resources);
		cc->resources = words;
		break;
	case CK_ALLOW_NON_LOOPBACK:
		parse_bool(p, key, v, &cc->allow_non_loopback);
		break;
	case CK_IMDS_RELAY:
		parse_bool(p, key, v, &cc->imds_relay);
		break;
	case CK_ENV_ALLOW_UIDS:
		parse_acl(p, key, v, false, &cc->env_allow);
		break;
	case CK_ENV_ALLOW_GIDS:
		parse_acl(p, key, v, true, &cc->env_allow);
		break;
	case CK__N:
		break;
	}
}

/* One "key = value" of the current line, from inih or from key_line_split. */
static void
key_value(struct parser *p, const char *key, const char *v)
{
	const char *const *names;
	size_t n;
	int k;

	switch (p->sec) {
	case SEC_NONE:
		perr(p, "key '%.64s' outside of any section", key);
		return;
	case SEC_SKIP:
		return;
	case SEC_EXT:
		if (key[0] == '\0')
			perr(p, "missing key name before '='");
		else
			config_proxy_key(p, key, v);
		return;
	case SEC_BEARERD:
		names = bkey_names;
		n = BK__N;
		break;
	case SEC_IDENTITY:
		names = ikey_names;
		n = IK__N;
		break;
	case SEC_AUDIENCE:
		names = akey_names;
		n = AK__N;
		break;
	case SEC_COMPAT:
		names = ckey_names;
		n = CK__N;
		break;
	default:
		return;
	}
	if (key[0] == '\0') {
		perr(p, "missing key name before '='");
		return;
	}
	k = key_index(names, n, key);
	if (k < 0) {
		if (p->sec == SEC_BEARERD || p->sec == SEC_COMPAT) {
			perr(p, "unknown key '%.64s' in [%s]", key,
			     p->sec == SEC_BEARERD ? "bearerd" : "compat");
		} else if (p->sec == SEC_IDENTITY) {
			/* dropped if the source turns out unsupported: keys of other sources */
			p->owner = p->cur + 1;
			perr(p, "unknown key '%.64s' in [identity \"%s\"]", key,
			     p->c->identities[p->cur].name);
			p->owner = 0;
		} else {
			perr(p, "unknown key '%.64s' in [audience \"%s\"]", key,
			     p->c->audiences[p->cur].name);
		}
		return;
	}
	if (p->cur_lines[k] != 0) {
		perr(p, "duplicate key '%s' (first set on line %d)", key, p->cur_lines[k]);
		return;
	}
	p->cur_lines[k] = p->line;
	if (p->sec == SEC_BEARERD)
		bearerd_key(p, k, v);
	else if (p->sec == SEC_IDENTITY)
		identity_key(p, k, v);
	else if (p->sec == SEC_COMPAT)
		compat_key(p, k, v);
	else
		audience_key(p, k, v);
}

#if INI_HANDLER_LINENO
static int
ini_on_key(void *user, const char *section, const char *name, const char *value, int lineno)
#else
static int
ini_on_key(void *user, const char *section, const char *name, const char *value)
#endif
{
	struct parser *p = user;

	/* section is always "": the reader keeps headers from inih */
	key_value(p, name, value != NULL ? value : "");
	return 1;
}

/*
 * A key line too long for inih's fixed buffer, split the way inih splits:
 * the key ends at the first "=" or ":", the value loses an inline comment
 * (";" after a blank) and surrounding blanks.
 */
static void
key_line_split(struct parser *p, char *line)
{
	char *sep = find_chars_or_comment(line, "=:");
	char *value;

	*sep = '\0';
	value = lskip(sep + 1);
	*find_chars_or_comment(value, NULL) = '\0';
	key_value(p, rstrip(line), rstrip(value));
}

/* Reader */

/* A line of the current section was reported and dropped: a missing key may be on it. */
static char *
line_lost(struct parser *p, char *str)
{
	if (p->sec == SEC_IDENTITY)
		p->iinfo[p->cur].lost_line = true;
	else if (p->sec == SEC_AUDIENCE)
		p->ainfo[p->cur].lost_line = true;
	return str;
}

/* The next raw line without its "\n" into p->buf; false at the end. */
static bool
reader_getline(struct parser *p, size_t *len)
{
	ssize_t n;

	if (p->f != NULL) {
		n = getline(&p->buf, &p->buf_cap, p->f);
		if (n < 0) {
			if (ferror(p->f))
				p->read_errno = errno ? errno : EIO;
			return false;
		}
	} else {
		const char *nl;
		char *b;

		if (p->text == NULL || p->text[0] == '\0')
			return false;
		nl = strchr(p->text, '\n');
		n = nl != NULL ? nl - p->text + 1 : (ssize_t)strlen(p->text);
		if ((size_t)n + 1 > p->buf_cap) {
			b = realloc(p->buf, (size_t)n + 1);
			if (b == NULL) {
				p->read_errno = ENOMEM;
				return false;
			}
			p->buf = b;
			p->buf_cap = (size_t)n + 1;
		}
		memcpy(p->buf, p->text, (size_t)n);
		p->buf[n] = '\0';
		p->text += n;
	}
	p->total += (size_t)n;
	if (n > 0 && p->buf[n - 1] == '\n')
		p->buf[--n] = '\0';
	*len = (size_t)n;
	return true;
}

/*
 * inih's fgets-style reader.  Hands inih one "key = value" line at a time,
 * or "\n" for lines handled here (blank, comment, header, error).
 */
static char *
reader_next(char *str, int num, void *stream)
{
	struct parser *p = stream;
	char *line, sep;
	size_t len;

	if (p->stop || p->read_errno != 0 || !reader_getline(p, &len))
		return NULL;
	p->line++;
	snprintf(str, (size_t)num, "\n");
	if (p->total > CONFIG_MAX_SIZE) {
		perr(p, "file too large (more than %d bytes)", CONFIG_MAX_SIZE);
		p->stop = true;
		return NULL;
	}
	if (len > CONFIG_MAX_LINE) {
		perr(p, "line too long (more than %d bytes)", CONFIG_MAX_LINE);
		return line_lost(p, str);
	}
	if (strlen(p->buf) != len) {
		perr(p, "NUL byte in line");
		return line_lost(p, str);
	}
	line = p->buf;
	if (p->line == 1 && strncmp(line, "\xEF\xBB\xBF", 3) == 0)
		line += 3;
	line = rstrip(lskip(line));
	for (const char *s = line; *s != '\0'; s++) {
		if ((iscntrl((unsigned char)*s) && *s != '\t')) {
			perr(p, "control character in line");
			return line_lost(p, str);
		}
	}
	if (line[0] == '\0' || line[0] == ';' || line[0] == '#')
		return str;
	if (line[0] == '[') {
		section_begin(p, line);
		return str;
	}
	len = strlen(line);
	sep = *find_chars_or_comment(line, "=:");
	if (sep != '=' && sep != ':') {
		perr(p, "syntax error: expected 'key = value' or a [section] header");
		return line_lost(p, str);
	}
	if (len + 2 > (size_t)num) {
		key_line_split(p, line);
		return str;
	}
	snprintf(str, (size_t)num, "%s\n", line);
	return str;
}

/* Validation after the whole file was read */

/*
 * Of the keys in keys[] (mutually exclusive selectors), the earliest stands;
 * each later one is reported on its line.
 */
static void
selectors_exclusive(struct parser *p, const struct ident_info *info, const int *keys, size_t n,
		    const char *list)
{
	int first = -1;

	for (size_t s = 0; s < n; s++) {
		int line = info->key_line[keys[s]];

		if (line != 0 && (first < 0 || line < info->key_line[first]))
			first = keys[s];
	}
	for (size_t s = 0; s < n; s++) {
		int k = keys[s];

		if (k == first || info->key_line[k] == 0)
			continue;
		perr_at(p, info->key_line[k],
			"%s conflicts with %s (line %d): set at most one of %s", ikey_names[k],
			ikey_names[first], info->key_line[first], list);
	}
}

static void
missing_key(struct parser *p, const struct config_identity *id, const struct ident_info *info,
	    int k, const char *env)
{
	if (info->lost_line)
		return;
	if (env != NULL)
		perr_at(p, id->line,
			"identity '%s': missing required key '%s' (and $%s is not set)", id->name,
			ikey_names[k], env);
	else
		perr_at(p, id->line, "identity '%s': missing required key '%s'", id->name,
			ikey_names[k]);
}

/*
 * Fills *field from the environment variable var when the key k is not set;
 * checks that value as the key would be checked (reported on the header line).
 */
static int
env_default(struct parser *p, const struct config_identity *id, int k, const char *var,
	    char **field)
{
	const char *v = getenv(var), *why = NULL;

	if (*field != NULL || v == NULL || v[0] == '\0')
		return 0;
	if (strpbrk(v, " \t") != NULL)
		why = "must not contain blanks";
	else if (k == IK_AUTHORITY || k == IK_ENDPOINT)
		why = url_problem(v);
	else if (k == IK_TENANT && !name_valid(v))
		why = "expected a tenant id or domain (A-Z a-z 0-9 . _ -)";
	else if (k == IK_FEDERATED_TOKEN_FILE && v[0] != '/')
		why = "expected an absolute path";
	if (k == IK_ENDPOINT && why != NULL && strncmp(v, "http://", 7) == 0 && v[7] != '\0')
		why = NULL; /* App Service's own endpoint is plain http on a local address */
	if (why != NULL) {
		perr_at(p, id->line, "identity '%s': $%s (default for %s): %s, got '%.128s'",
			id->name, var, ikey_names[k], why, v);
		return 0;
	}
	*field = strdup(v);
	return *field == NULL ? -ENOMEM : 0;
}

/*
 * A secret file (others_may_read: a projected token) or a readable certificate
 * file; false when reported.
 */
static bool
check_file(struct parser *p, const struct config_identity *id, const struct ident_info *info, int k,
	   const char *path, bool secret, bool others_may_read)
{
	int line = info->key_line[k] != 0 ? info->key_line[k] : id->line;
	char msg[512];

	if (path == NULL)
		return true;
	if (secret) {
		if (secret_check_path(path, others_may_read, msg, sizeof(msg)) < 0) {
			perr_at(p, line, "%s: %s", ikey_names[k], msg);
			return false;
		}
	} else if (access(path, R_OK) < 0) {
		perr_at(p, line, "%s: cannot read '%.200s': %s", ikey_names[k], path,
			strerror(errno));
		return false;
	}
	return true;
}

/*
 * Loads the client assertion key (and certificate) as the source will, so
 * that -n reports an encrypted key, a mismatched certificate or a key that
 * does not suit assertion_alg with its FILE:LINE.
 */
static void
check_assertion_key(struct parser *p, const struct config_identity *id,
		    const struct ident_info *info, bool entra)
{
	bool ok = check_file(p, id, info, IK_CERTIFICATE_FILE, id->certificate_file, false, false);
	struct assertion_key *k = NULL;
	char msg[512];

	ok &= check_file(p, id, info, IK_PRIVATE_KEY_FILE, id->private_key_file, true, false);
	if (!ok || id->private_key_file == NULL || (entra && id->certificate_file == NULL))
		return;
	if (assertion_key_load(&k, id->private_key_file, id->certificate_file, id->assertion_alg,
			       entra, msg, sizeof(msg)) < 0) {
		/* a message about the certificate ("'CERT' holds no ...") goes on its line */
		int k2 = id->certificate_file != NULL && msg[0] == '\'' &&
				 strncmp(msg + 1, id->certificate_file,
					 strlen(id->certificate_file)) == 0
			     ? IK_CERTIFICATE_FILE
			     : IK_PRIVATE_KEY_FILE;

		perr_at(p, info->key_line[k2], "%s: %s", ikey_names[k2], msg);
	}
	assertion_key_free(k);
}

static int
finish_imds(struct parser *p, struct config_identity *id, struct ident_info *info)
{
	static const int selectors[] = {IK_CLIENT_ID, IK_OBJECT_ID, IK_MSI_RES_ID};

	selectors_exclusive(p, info, selectors, 3, "client_id, object_id, msi_res_id");
	if (id->endpoint == NULL) {
		id->endpoint = strdup(DEFAULT_IMDS_ENDPOINT);
		if (id->endpoint == NULL)
			return -ENOMEM;
	}
	return 0;
}

static int
finish_appservice(struct parser *p, struct config_identity *id, struct ident_info *info)
{
	static const int selectors[] = {IK_CLIENT_ID, IK_PRINCIPAL_ID, IK_MI_RES_ID};
	const char *header = getenv("IDENTITY_HEADER");

	selectors_exclusive(p, info, selectors, 3, "client_id, principal_id, mi_res_id");
	if (env_default(p, id, IK_ENDPOINT, "IDENTITY_ENDPOINT", &id->endpoint) < 0)
		return -ENOMEM;
	if (id->endpoint == NULL && info->key_line[IK_ENDPOINT] == 0)
		missing_key(p, id, info, IK_ENDPOINT, "IDENTITY_ENDPOINT");
	if (id->identity_header_file != NULL)
		check_file(p, id, info, IK_IDENTITY_HEADER_FILE, id->identity_header_file, true,
			   false);
	else if (info->key_line[IK_IDENTITY_HEADER_FILE] == 0 && (header == NULL || !header[0]))
		perr_at(p, id->line,
			"identity '%s': set identity_header_file, or IDENTITY_HEADER in bearerd's "
			"environment",
			id->name);
	return 0;
}

static int
finish_entra(struct parser *p, struct config_identity *id, struct ident_info *info)
{
	bool fed = id->source == CONFIG_SOURCE_ENTRA_FEDERATED;
	size_t n;

	if (fed) {
		if (env_default(p, id, IK_AUTHORITY, "AZURE_AUTHORITY_HOST", &id->authority) < 0 ||
		    env_default(p, id, IK_TENANT, "AZURE_TENANT_ID", &id->tenant) < 0 ||
		    env_default(p, id, IK_CLIENT_ID, "AZURE_CLIENT_ID", &id->client_id) < 0 ||
		    env_default(p, id, IK_FEDERATED_TOKEN_FILE, "AZURE_FEDERATED_TOKEN_FILE",
				&id->federated_token_file) < 0)
			return -ENOMEM;
	}
	if (id->authority == NULL && info->key_line[IK_AUTHORITY] == 0) {
		id->authority = strdup(DEFAULT_AUTHORITY);
		if (id->authority == NULL)
			return -ENOMEM;
	}
	/* {authority}/{tenant}/...: one slash between them, whatever was written */
	for (n = id->authority != NULL ? strlen(id->authority) : 0;
	     n > 0 && id->authority[n - 1] == '/'; n--)
		id->authority[n - 1] = '\0';
	if (id->tenant == NULL && info->key_line[IK_TENANT] == 0)
		missing_key(p, id, info, IK_TENANT, fed ? "AZURE_TENANT_ID" : NULL);
	if (id->client_id == NULL && info->key_line[IK_CLIENT_ID] == 0)
		missing_key(p, id, info, IK_CLIENT_ID, fed ? "AZURE_CLIENT_ID" : NULL);

	switch (id->source) {
	case CONFIG_SOURCE_ENTRA_SECRET:
		if (info->key_line[IK_CLIENT_SECRET_FILE] == 0)
			missing_key(p, id, info, IK_CLIENT_SECRET_FILE, NULL);
		check_file(p, id, info, IK_CLIENT_SECRET_FILE, id->client_secret_file, true, false);
		break;
	case CONFIG_SOURCE_ENTRA_CERTIFICATE:
		if (info->key_line[IK_CERTIFICATE_FILE] == 0)
			missing_key(p, id, info, IK_CERTIFICATE_FILE, NULL);
		if (info->key_line[IK_PRIVATE_KEY_FILE] == 0)
			missing_key(p, id, info, IK_PRIVATE_KEY_FILE, NULL);
		check_assertion_key(p, id, info, true);
		break;
	default:
		if (id->federated_token_file == NULL &&
		    info->key_line[IK_FEDERATED_TOKEN_FILE] == 0)
			missing_key(p, id, info, IK_FEDERATED_TOKEN_FILE,
				    "AZURE_FEDERATED_TOKEN_FILE");
		/*
		 * Kubernetes projects service-account tokens 0644 root-owned unless the
		 * pod sets defaultMode: other users may read it.  It is a short-lived,
		 * audience-bound token, not a long-term secret; ownership still counts.
		 */
		check_file(p, id, info, IK_FEDERATED_TOKEN_FILE, id->federated_token_file, true,
			   true);
		break;
	}
	return 0;
}

static int
finish_oauth2(struct parser *p, struct config_identity *id, struct ident_info *info)
{
	static const int jwt_keys[] = {IK_PRIVATE_KEY_FILE, IK_CERTIFICATE_FILE, IK_KEY_ID,
				       IK_ASSERTION_ALG};
	bool jwt = id->auth_method == CONFIG_AUTH_PRIVATE_KEY_JWT;
	int cert_line = info->key_line[IK_TLS_CERTIFICATE_FILE];
	int key_line = info->key_line[IK_TLS_PRIVATE_KEY_FILE];

	if (info->key_line[IK_TOKEN_URL] == 0)
		missing_key(p, id, info, IK_TOKEN_URL, NULL);
	if (info->key_line[IK_CLIENT_ID] == 0)
		missing_key(p, id, info, IK_CLIENT_ID, NULL);
	if (jwt) {
		if (info->key_line[IK_CLIENT_SECRET_FILE] != 0)
			perr_at(p, info->key_line[IK_CLIENT_SECRET_FILE],
				"client_secret_file: not used with auth_method = private_key_jwt");
		if (info->key_line[IK_PRIVATE_KEY_FILE] == 0)
			missing_key(p, id, info, IK_PRIVATE_KEY_FILE, NULL);
		check_assertion_key(p, id, info, false);
	} else {
		for (size_t k = 0; k < sizeof(jwt_keys) / sizeof(jwt_keys[0]); k++) {
			if (info->key_line[jwt_keys[k]] != 0)
				perr_at(p, info->key_line[jwt_keys[k]],
					"%s: used only with auth_method = private_key_jwt",
					ikey_names[jwt_keys[k]]);
		}
		if (info->key_line[IK_CLIENT_SECRET_FILE] == 0)
			missing_key(p, id, info, IK_CLIENT_SECRET_FILE, NULL);
		check_file(p, id, info, IK_CLIENT_SECRET_FILE, id->client_secret_file, true, false);
	}
	if ((cert_line != 0) != (key_line != 0))
		perr_at(p, cert_line != 0 ? cert_line : key_line,
			"%s: mTLS needs both tls_certificate_file and tls_private_key_file",
			cert_line != 0 ? "tls_certificate_file" : "tls_private_key_file");
	check_file(p, id, info, IK_TLS_CERTIFICATE_FILE, id->tls_certificate_file, false, false);
	check_file(p, id, info, IK_TLS_PRIVATE_KEY_FILE, id->tls_private_key_file, true, false);
	return 0;
}

static int
finish_dev(struct parser *p, struct config_identity *id, struct ident_info *info)
{
	if (id->lifetime <= p->c->min_validity) {
		int line = info->key_line[IK_LIFETIME];

		if (line == 0)
			line = p->bearerd_lines[BK_MIN_VALIDITY] ? p->bearerd_lines[BK_MIN_VALIDITY]
								 : id->line;
		perr_at(p, line, "lifetime (%" PRId64 ") must exceed min_validity (%" PRId64 ")",
			id->lifetime, p->c->min_validity);
	}
	if (id->issuer == NULL)
		id->issuer = strdup(DEFAULT_DEV_ISSUER);
	if (id->subject == NULL)
		id->subject = strdup(id->name);
	if (id->roles == NULL)
		id->roles = calloc(1, sizeof(*id->roles));
	if (id->issuer == NULL || id->subject == NULL || id->roles == NULL)
		return -ENOMEM;
	return 0;
}

static int
identity_finish(struct parser *p, size_t i)
{
	struct config_identity *id = &p->c->identities[i];
	struct ident_info *info = &p->iinfo[i];
	unsigned bit = 1u << id->source;
	int r = 0;

	if (info->source_state == SOURCE_UNSET) {
		if (!info->lost_line)
			perr_at(p, id->line, "identity '%s': missing required key 'source'",
				id->name);
		return 0;
	}
	if (info->source_state == SOURCE_BAD) {
		/* keys of a source this build does not know: already said so */
		for (size_t e = 0; e < p->n_errs; e++) {
			if (p->errs[e].owner == i + 1)
				p->errs[e].dropped = true;
		}
		return 0;
	}
	for (int k = 0; k < IK__N; k++) {
		if (info->key_line[k] != 0 && ikey_sources[k] != 0 && !(ikey_sources[k] & bit))
			perr_at(p, info->key_line[k], "key '%s' does not apply to source %s",
				ikey_names[k], config_source_name(id->source));
	}
	if ((bit & SRC_UPSTREAM) && id->ca_file == NULL && p->c->ca_file != NULL) {
		id->ca_file = strdup(p->c->ca_file); /* the identity's own wins */
		if (id->ca_file == NULL)
			return -ENOMEM;
	}

	switch (id->source) {
	case CONFIG_SOURCE_DEV:
		r = finish_dev(p, id, info);
		break;
	case CONFIG_SOURCE_AZURE_IMDS:
		r = finish_imds(p, id, info);
		break;
	case CONFIG_SOURCE_AZURE_APPSERVICE:
		r = finish_appservice(p, id, info);
		break;
	case CONFIG_SOURCE_ENTRA_SECRET:
	case CONFIG_SOURCE_ENTRA_CERTIFICATE:
	case CONFIG_SOURCE_ENTRA_FEDERATED:
		r = finish_entra(p, id, info);
		break;
	case CONFIG_SOURCE_OAUTH2:
		r = finish_oauth2(p, id, info);
		break;
	}
	return r;
}

static void
audience_finish(struct parser *p, size_t i)
{
	struct config_audience *a = &p->c->audiences[i];
	struct aud_info *info = &p->ainfo[i];

	if (info->key_line[AK_IDENTITY] == 0 && !info->lost_line)
		perr_at(p, a->line, "audience '%s': missing required key 'identity'", a->name);
	if (info->key_line[AK_RESOURCE] == 0 && !info->lost_line)
		perr_at(p, a->line, "audience '%s': missing required key 'resource'", a->name);
	if (a->identity_name == NULL)
		return;
	for (size_t k = 0; k < p->c->n_identities; k++) {
		if (strcmp(p->c->identities[k].name, a->identity_name) == 0) {
			a->identity = &p->c->identities[k];
			return;
		}
	}
	if (name_valid(a->identity_name))
		perr_at(p, info->key_line[AK_IDENTITY], "identity: no [identity \"%s\"] section",
			a->identity_name);
}

bool
config_addr_is_loopback(const struct sockaddr_storage *a)
{
	static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *in4 = (const struct sockaddr_in *)a;

		return (ntohl(in4->sin_addr.s_addr) >> 24) == 127;
	}
	if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)a;
		const uint8_t *b = in6->sin6_addr.s6_addr;

		if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
			return true;
		return memcmp(b, v4mapped, sizeof(v4mapped)) == 0 && b[12] == 127;
	}
	return false;
}

/*
 * The address an http(s):// URL names, when it is a numeric address or
 * localhost (127.0.0.1): 0, or -EINVAL for a name or a malformed URL.
 */
static int
url_sockaddr(const char *url, struct sockaddr_storage *out)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)out;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
	bool tls = strncmp(url, "https://", 8) == 0;
	const char *host, *hend, *aend, *port = NULL;
	unsigned long pn = tls ? 443 : 80;
	char h[64], *e;

	if (!tls && strncmp(url, "http://", 7) != 0)
		return -EINVAL;
	host = url + (tls ? 8 : 7);
	aend = host + strcspn(host, "/?#");
	if (host[0] == '[') {
		hend = memchr(host, ']', (size_t)(aend - host));
		if (hend == NULL || (hend + 1 < aend && hend[1] != ':'))
			return -EINVAL;
		port = hend + 1 < aend ? hend + 2 : NULL;
		host++;
	} else {
		hend = memrchr(host, ':', (size_t)(aend - host));
		port = hend != NULL ? hend + 1 : NULL;
		if (hend == NULL)
			hend = aend;
	}
	if (port != NULL) {
		if (port >= aend || *port < '0' || *port > '9')
			return -EINVAL;
		pn = strtoul(port, &e, 10);
		if (e != aend || pn == 0 || pn > 65535)
			return -EINVAL;
	}
	if (hend <= host || (size_t)(hend - host) >= sizeof(h))
		return -EINVAL;
	memcpy(h, host, (size_t)(hend - host));
	h[hend - host] = '\0';
	memset(out, 0, sizeof(*out));
	if (strcasecmp(h, "localhost") == 0)
		snprintf(h, sizeof(h), "127.0.0.1");
	if (inet_pton(AF_INET, h, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)pn);
	} else if (inet_pton(AF_INET6, h, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)pn);
	} else {
		return -EINVAL;
	}
	return 0;
}

/* True when a connection to ep would reach a socket listening on l. */
static bool
listen_reaches(const struct sockaddr_storage *ep, const struct sockaddr_storage *l)
{
	if (ep->ss_family != l->ss_family)
		return false;
	if (ep->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)ep;
		const struct sockaddr_in *b = (const struct sockaddr_in *)l;

		return a->sin_port == b->sin_port &&
		       (a->sin_addr.s_addr == b->sin_addr.s_addr ||
			(b->sin_addr.s_addr == htonl(INADDR_ANY) && config_addr_is_loopback(ep)));
	}
	{
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ep;
		const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)l;

		return a->sin6_port == b->sin6_port &&
		       (IN6_ARE_ADDR_EQUAL(&a->sin6_addr, &b->sin6_addr) ||
			(IN6_IS_ADDR_UNSPECIFIED(&b->sin6_addr) && config_addr_is_loopback(ep)));
	}
}

/*
 * A managed-identity identity whose endpoint is one of bearerd's own compat
 * listeners would ask bearerd for its tokens: each request would wait for the
 * fetch it is part of (503 after wait_timeout).  Typical: imds_listen =
 * 169.254.169.254:80 beside an azure-imds identity with the default endpoint.
 */
static void
compat_loop_finish(struct parser *p)
{
	const struct config_compat *cc = &p->c->compat;
	const struct config_listen *ls[] = {cc->imds_listen, cc->appservice_listen};
	const char *lk[] = {"imds_listen", "appservice_listen"};
	const int li[] = {CK_IMDS_LISTEN, CK_APPSERVICE_LISTEN};
	struct sockaddr_storage ep;

	for (size_t i = 0; i < p->c->n_identities; i++) {
		const struct config_identity *id = &p->c->identities[i];

		if ((id->source != CONFIG_SOURCE_AZURE_IMDS &&
		     id->source != CONFIG_SOURCE_AZURE_APPSERVICE) ||
		    id->endpoint == NULL || url_sockaddr(id->endpoint, &ep) < 0)
			continue;
		for (size_t k = 0; k < 2; k++)
			if (ls[k] != NULL && listen_reaches(&ep, &ls[k]->addr))
				perr_at(p, p->compat_lines[li[k]],
					"%s: %s is where identity '%s' (line %d) asks for its "
					"tokens (endpoint %.128s): bearerd would ask itself; point "
					"the endpoint at the real one, or move the listener",
					lk[k], ls[k]->text, id->name, id->line, id->endpoint);
	}
}

/* [compat]: resolves the identity, checks the listeners, defaults the secret file. */
static int
compat_finish(struct parser *p)
{
	struct config_compat *cc = &p->c->compat;
	struct config_listen *ls[] = {cc->imds_listen, cc->appservice_listen};
	const char *lk[] = {"imds_listen", "appservice_listen"};
	const int li[] = {CK_IMDS_LISTEN, CK_APPSERVICE_LISTEN};
	const char *slash;

	if (cc->line == 0)
		return 0;
	if (cc->identity_name != NULL) {
		cc->identity =
		    (struct config_identity *)config_identity_find(p->c, cc->identity_name);
		if (cc->identity == NULL && name_valid(cc->identity_name))
			perr_at(p, p->compat_lines[CK_IDENTITY],
				"identity: no [identity \"%s\"] section", cc->identity_name);
	} else if (p->c->n_identities == 1) {
		cc->identity = &p->c->identities[0];
	} else if (p->c->n_identities > 1) {
		perr_at(p, cc->line, "[compat]: missing key 'identity' (there are %zu identities)",
			p->c->n_identities);
	}
	if (cc->imds_listen == NULL && cc->appservice_listen == NULL &&
	    p->compat_lines[CK_IMDS_LISTEN] == 0 && p->compat_lines[CK_APPSERVICE_LISTEN] == 0)
		perr_at(p, cc->line, "[compat]: set imds_listen, appservice_listen or both");
	for (size_t i = 0; i < 2; i++) {
		if (ls[i] != NULL && !cc->allow_non_loopback &&
		    !config_addr_is_loopback(&ls[i]->addr))
			perr_at(p, p->compat_lines[li[i]],
				"%s: %s is not a loopback address (set allow_non_loopback = yes "
				"to listen there)",
				lk[i], ls[i]->text);
	}
	compat_loop_finish(p);
	if (cc->imds_relay && cc->imds_listen == NULL && p->compat_lines[CK_IMDS_LISTEN] == 0)
		perr_at(p, p->compat_lines[CK_IMDS_RELAY],
			"imds_relay: without imds_listen there is nothing to relay");
	else if (cc->imds_relay && cc->identity != NULL &&
		 cc->identity->source != CONFIG_SOURCE_AZURE_IMDS)
		perr_at(p, p->compat_lines[CK_IMDS_RELAY],
			"imds_relay: relays to the IMDS that [compat] identity '%s' gets its "
			"tokens from, but it is not an azure-imds identity",
			cc->identity->name);
	if (p->compat_lines[CK_APPSERVICE_SECRET_FILE] != 0 && cc->appservice_listen == NULL &&
	    p->compat_lines[CK_APPSERVICE_LISTEN] == 0)
		perr_at(p, p->compat_lines[CK_APPSERVICE_SECRET_FILE],
			"appservice_secret_file: without appservice_listen it is not used");
	if (cc->appservice_listen != NULL && cc->appservice_secret_file == NULL &&
	    p->c->socket != NULL) {
		slash = strrchr(p->c->socket, '/');
		if (slash == NULL) {
			cc->appservice_secret_file = strdup(DEFAULT_SECRET_NAME);
		} else if (asprintf(&cc->appservice_secret_file, "%.*s/" DEFAULT_SECRET_NAME,
				    (int)(slash - p->c->socket), p->c->socket) < 0) {
			cc->appservice_secret_file = NULL;
		}
		if (cc->appservice_secret_file == NULL)
			return -ENOMEM;
	}
	return 0;
}

/*
 * Who may have which token.  A token is handed out under an audience's
 * rules, but the same principal's token for the same API can also be had
 * (1) as a dynamic resource spelled another way on the socket, (2) as a
 * dynamic resource on the compat listeners, whose TCP callers cannot be told
 * apart, and (3) through another audience of the same principal and API.
 * Entra resolves case, trailing-slash and GUID variants of a resource to one
 * API, so no spelling rule closes (1) and (2): the rules here are structural.
 */

/* An audience that restricts its callers. */
static bool
audience_restricted(const struct config_audience *a)
{
	return a->allow_uids != NULL || a->allow_gids != NULL;
}

/* Whether id's source was understood: rules about a broken identity would only add noise. */
static bool
identity_ok(const struct parser *p, const struct config_identity *id)
{
	return p->iinfo[id - p->c->identities].source_state == SOURCE_OK;
}

/* An audience with a valid identity and a resource (a missing key was reported already). */
static bool
audience_ok(const struct parser *p, const struct config_audience *a)
{
	return a->identity != NULL && a->resource != NULL && identity_ok(p, a->identity);
}

static bool
id_listed(const uint32_t *ids, size_t n, uint32_t id)
{
	for (size_t i = 0; i < n; i++)
		if (ids[i] == id)
			return true;
	return false;
}

/* The same set of ids, in any order (a list may repeat an id: "root 0"). */
static bool
ids_same(const uint32_t *a, size_t na, const uint32_t *b, size_t nb)
{
	for (size_t i = 0; i < na; i++)
		if (!id_listed(b, nb, a[i]))
			return false;
	for (size_t i = 0; i < nb; i++)
		if (!id_listed(a, na, b[i]))
			return false;
	return (a == NULL) == (b == NULL);
}

static bool
audience_rules_same(const struct config_audience *a, const struct config_audience *b)
{
	return ids_same(a->allow_uids, a->n_allow_uids, b->allow_uids, b->n_allow_uids) &&
	       ids_same(a->allow_gids, a->n_allow_gids, b->allow_gids, b->n_allow_gids);
}

/* " (through identity 'J', which may be the same principal)" when a belongs to another. */
static void
through(char *buf, size_t size, const struct config_audience *a, const struct config_identity *id)
{
	if (a->identity == id)
		buf[0] = '\0';
	else
		snprintf(buf, size, " (through identity '%s', which may be the same principal)",
			 a->identity->name);
}

/* (1): a dynamic identity with restricted audiences needs dynamic_allow_*, within their rules. */
static void
dynamic_rules_finish(struct parser *p, size_t i)
{
	const struct config *c = p->c;
	const struct config_identity *id = &c->identities[i];
	const struct ident_info *info = &p->iinfo[i];
	const struct config_acl *acl = &id->dynamic_allow;
	int uline = info->key_line[IK_DYNAMIC_ALLOW_UIDS];
	int gline = info->key_line[IK_DYNAMIC_ALLOW_GIDS];
	const struct config_audience *first = NULL;
	char via[200];

	if (!identity_ok(p, id))
		return;
	if (!id->dynamic_resources) {
		if (uline != 0 || gline != 0)
			perr_at(p, uline != 0 ? uline : gline,
				"%s: used only with dynamic_resources = yes",
				uline != 0 ? "dynamic_allow_uids" : "dynamic_allow_gids");
		return;
	}
	for (size_t k = 0; k < c->n_audiences; k++) {
		const struct config_audience *a = &c->audiences[k];

		if (!audience_ok(p, a) || !audience_restricted(a) ||
		    !config_identity_same_principal(a->identity, id))
			continue;
		if (first == NULL)
			first = a;
		through(via, sizeof(via), a, id);
		for (size_t u = 0; u < acl->n_uids; u++)
			if (!id_listed(a->allow_uids, a->n_allow_uids, acl->uids[u]))
				perr_at(p, uline,
					"dynamic_allow_uids: uid %u is not in allow_uids of "
					"audience '%s' (line %d)%s, whose token a dynamic resource "
					"naming the same API another way would get",
					(unsigned)acl->uids[u], a->name, a->line, via);
		for (size_t g = 0; g < acl->n_gids; g++)
			if (!id_listed(a->allow_gids, a->n_allow_gids, acl->gids[g]))
				perr_at(p, gline,
					"dynamic_allow_gids: gid %u is not in allow_gids of "
					"audience '%s' (line %d)%s, whose token a dynamic resource "
					"naming the same API another way would get",
					(unsigned)acl->gids[g], a->name, a->line, via);
	}
	if (first == NULL || config_acl_restricts(acl))
		return;
	through(via, sizeof(via), first, id);
	perr_at(p,
		info->key_line[IK_DYNAMIC_RESOURCES] != 0 ? info->key_line[IK_DYNAMIC_RESOURCES]
							  : id->line,
		"dynamic_resources: identity '%s' has the restricted audience '%s' (line %d)%s; a "
		"dynamic resource naming the same API another way (case, a trailing slash, "
		"/.default, the app's GUID) would get its token for any caller: set "
		"dynamic_allow_uids or dynamic_allow_gids to callers every restricted audience "
		"allows, or dynamic_resources = no",
		id->name, first->name, first->line, via);
}

/* An identity the compat listeners may answer for: the default one, or one a selector names. */
static bool
compat_reachable(const struct config *c, const struct config_identity *id)
{
	return id == c->compat.identity || id->client_id != NULL || id->object_id != NULL ||
	       id->msi_res_id != NULL;
}

/* (2): the compat listeners cannot tell callers apart: no dynamic resources near restrictions. */
static void
compat_rules_finish(struct parser *p)
{
	const struct config *c = p->c;
	const struct config_compat *cc = &c->compat;
	bool dynamic = cc->dynamic_resources && cc->resources == NULL;
	bool reported = false;
	char via[200];

	if (cc->line == 0)
		return;
	for (size_t i = 0; i < c->n_identities; i++) {
		const struct config_identity *id = &c->identities[i];

		if (!identity_ok(p, id) || !compat_reachable(c, id))
			continue;
		for (size_t k = 0; k < c->n_audiences; k++) {
			const struct config_audience *a = &c->audiences[k];

			if (!audience_ok(p, a) || !audience_restricted(a) ||
			    !config_identity_same_principal(a->identity, id))
				continue;
			through(via, sizeof(via), a, id);
			if (dynamic && !reported) {
				reported = true;
				perr_at(
				    p, p->compat_lines[CK_DYNAMIC_RESOURCES],
				    "dynamic_resources: the compat listeners may answer for "
				    "identity '%s', which has the restricted audience '%s' "
				    "(line %d)%s; their TCP callers cannot be told apart, so a "
				    "resource naming the same API another way would hand its "
				    "token to anyone: set dynamic_resources = no (and list what "
				    "SDKs need in 'resources')",
				    id->name, a->name, a->line, via);
			}
			for (size_t r = 0; cc->resources != NULL && cc->resources[r] != NULL; r++)
				/* the audience's own resource is that audience (403 on TCP) */
				if (!(a->identity == id &&
				      strcmp(cc->resources[r], a->resource) == 0) &&
				    config_resources_alike(cc->resources[r], a->resource))
					perr_at(
					    p, p->compat_lines[CK_RESOURCES],
					    "resources: '%.128s' names the API of the restricted "
					    "audience '%s' (line %d)%s, and the compat listeners "
					    "cannot tell callers apart",
					    cc->resources[r], a->name, a->line, via);
		}
	}
}

/* (3): two audiences that get one token must let the same callers have it. */
static void
alias_rules_finish(struct parser *p)
{
	const struct config *c = p->c;

	for (size_t i = 0; i < c->n_audiences; i++) {
		const struct config_audience *a = &c->audiences[i];

		if (!audience_ok(p, a) || !audience_restricted(a))
			continue;
		for (size_t j = 0; j < c->n_audiences; j++) {
			const struct config_audience *b = &c->audiences[j];
			const struct config_audience *first = i < j ? a : b, *later = i < j ? b : a;
			bool same_entry;

			/* a pair of restricted audiences is looked at once, from the first */
			if (j == i || !audience_ok(p, b) || (audience_restricted(b) && j < i))
				continue;
			if (!config_identity_same_principal(a->identity, b->identity) ||
			    !config_resources_alike(a->resource, b->resource) ||
			    audience_rules_same(a, b))
				continue;
			same_entry =
			    a->identity == b->identity && strcmp(a->resource, b->resource) == 0;
			perr_at(p, later->line,
				"audience '%s': gets the same token as audience '%s' (line %d), "
				"%s, but their allow_uids/allow_gids differ, so one would hand "
				"out the other's token: give both the same rules, or drop one",
				later->name, first->name, first->line,
				same_entry
				    ? "one cache entry for the same identity and resource"
				    : "the same principal and a resource naming the same API");
		}
	}
}

static void
access_finish(struct parser *p)
{
	for (size_t i = 0; i < p->c->n_identities; i++)
		dynamic_rules_finish(p, i);
	compat_rules_finish(p);
	alias_rules_finish(p);
}

static int
config_new(struct config **out)
{
	struct config *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return -ENOMEM;
	c->socket_mode = DEFAULT_SOCKET_MODE;
	c->log_level = LOG_LEVEL_INFO;
	c->min_validity = DEFAULT_MIN_VALIDITY;
	c->refresh_margin = DEFAULT_REFRESH;
	c->idle_timeout = DEFAULT_IDLE_TIMEOUT;
	c->wait_timeout = DEFAULT_WAIT_TIMEOUT;
	c->max_entries = DEFAULT_MAX_ENTRIES;
	c->max_connections = DEFAULT_MAX_CONNS;
	c->max_connections_per_uid = PER_UID_UNSET;
	c->header_timeout = DEFAULT_HEADER_TMO;
	c->keepalive_timeout = DEFAULT_KEEPALIVE_TMO;
	c->dynamic_rate = DEFAULT_DYNAMIC_RATE;
	*out = c;
	return 0;
}

/* Parses from p->f or p->text into a new config; prints errors to errs. */
static int
load(struct config **out, struct parser *p, FILE *errs)
{
	struct config *c = NULL;
	int r;

	r = config_new(&c);
	if (r < 0)
		goto out;
	p->c = c;
	c->path = strdup(p->name);
	if (c->path == NULL) {
		r = -ENOMEM;
		goto out;
	}

	r = ini_parse_stream(reader_next, p, ini_on_key, p);
	if (r == -2 || p->read_errno == ENOMEM)
		p->oom = true;
	if (p->read_errno != 0 && p->read_errno != ENOMEM) {
		r = -p->read_errno;
		if (errs != NULL)
			fprintf(errs, "%s: read error: %s\n", p->name, strerror(p->read_errno));
		goto out;
	}
	if (r > 0 && p->n_errs == 0)
		perr_at(p, r, "syntax error"); /* inih saw something the reader did not */

	if (!p->stop) {
		if (c->n_identities == 0)
			perr_at(
			    p, p->line > 0 ? p->line : 1,
			    "no [identity \"NAME\"] section: at least one identity is required");
		for (size_t i = 0; i < c->n_identities; i++) {
			if (identity_finish(p, i) < 0)
				p->oom = true;
		}
		for (size_t i = 0; i < c->n_audiences; i++)
			audience_finish(p, i);
	}
	if (c->socket == NULL) {
		c->socket = strdup(DEFAULT_SOCKET);
		if (c->socket == NULL)
			p->oom = true;
	}
	/* a quarter of the slots: one user cannot take them all, four still may */
	if (c->max_connections_per_uid == PER_UID_UNSET)
		c->max_connections_per_uid =
		    c->max_connections >= 4 ? c->max_connections / 4 : c->max_connections;
	if (c->metrics_listen != NULL && !c->metrics_allow_non_loopback &&
	    !config_addr_is_loopback(&c->metrics_listen->addr))
		perr_at(p, p->bearerd_lines[BK_METRICS_LISTEN],
			"metrics_listen: %s is not a loopback address (set "
			"metrics_allow_non_loopback = yes to listen there)",
			c->metrics_listen->text);
	if (!p->stop && !p->oom && compat_finish(p) < 0)
		p->oom = true;
	if (!p->stop && !p->oom)
		access_finish(p);
	if (!p->stop && !p->oom && config_proxy_finish(p) < 0)
		p->oom = true;
	if (p->oom) {
		r = -ENOMEM;
		if (errs != NULL)
			fprintf(errs, "%s: out of memory\n", p->name);
		goto out;
	}
	if (perr_flush(p, errs) > 0) {
		r = -EINVAL;
		goto out;
	}
	*out = c;
	c = NULL;
	r = 0;
out:
	for (size_t i = 0; i < p->n_errs; i++)
		free(p->errs[i].msg);
	free(p->errs);
	config_proxy_parse_free(p);
	free(p->iinfo);
	free(p->ainfo);
	free(p->buf);
	config_free(c);
	return r;
}

int
config_load(struct config **out, const char *path, FILE *errs)
{
	struct parser p = {.name = path};
	struct stat st;
	char msg[256];
	int r;

	p.f = fopen(path, "re");
	if (p.f == NULL) {
		r = -errno;
		if (errs != NULL)
			fprintf(errs, "%s: %s\n", path, strerror(-r));
		return r;
	}
	if (secret_check_config(fileno(p.f), msg, sizeof(msg)) < 0) {
		if (errs != NULL)
			fprintf(errs, "%s: %s\n", path, msg);
		r = -EPERM;
		goto out;
	}
	/* the reader bounds the size too; this spares reading a huge file first */
	if (fstat(fileno(p.f), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > CONFIG_MAX_SIZE) {
		if (errs != NULL)
			fprintf(errs, "%s:1: file too large (more than %d bytes)\n", path,
				CONFIG_MAX_SIZE);
		r = -EINVAL;
		goto out;
	}
	r = load(out, &p, errs);
out:
	fclose(p.f);
	return r;
}

int
config_load_string(struct config **out, const char *name, const char *text, FILE *errs)
{
	struct parser p = {.name = name, .text = text};

	return load(out, &p, errs);
}

int
config_load_dev(struct config **out, const char *socket_path, FILE *errs)
{
	struct config *c = NULL;
	char *socket;
	int r;

	r = config_load_string(&c, "<dev>", dev_config, errs);
	if (r < 0)
		return r;
	if (socket_path != NULL) {
		socket = strdup(socket_path);
		if (socket == NULL) {
			config_free(c);
			return -ENOMEM;
		}
		free(c->socket);
		c->socket = socket;
	}
	*out = c;
	return 0;
}

const struct config_identity *
config_identity_find(const struct config *c, const char *name)
{
	for (size_t i = 0; i < c->n_identities; i++) {
		if (strcmp(c->identities[i].name, name) == 0)
			return &c->identities[i];
	}
	return NULL;
}

const struct config_audience *
config_audience_find(const struct config *c, const char *name)
{
	for (size_t i = 0; i < c->n_audiences; i++) {
		if (strcmp(c->audiences[i].name, name) == 0)
			return &c->audiences[i];
	}
	return NULL;
}

const char *
config_source_name(enum config_source s)
{
	switch (s) {
	case CONFIG_SOURCE_DEV:
		return "dev";
	case CONFIG_SOURCE_AZURE_IMDS:
		return "azure-imds";
	case CONFIG_SOURCE_AZURE_APPSERVICE:
		return "azure-appservice";
	case CONFIG_SOURCE_ENTRA_SECRET:
		return "entra-secret";
	case CONFIG_SOURCE_ENTRA_CERTIFICATE:
		return "entra-certificate";
	case CONFIG_SOURCE_ENTRA_FEDERATED:
		return "entra-federated";
	case CONFIG_SOURCE_OAUTH2:
		return "oauth2";
	}
	return "unknown";
}

bool
config_audience_allows(const struct config_audience *a, uid_t uid, gid_t gid)
{
	if (a->allow_uids == NULL && a->allow_gids == NULL)
		return true;
	for (size_t i = 0; i < a->n_allow_uids; i++) {
		if (a->allow_uids[i] == uid)
			return true;
	}
	for (size_t i = 0; i < a->n_allow_gids; i++) {
		if (a->allow_gids[i] == gid)
			return true;
	}
	return false;
}

bool
config_acl_restricts(const struct config_acl *acl)
{
	return acl->uids != NULL || acl->gids != NULL;
}

bool
config_acl_allows(const struct config_acl *acl, uid_t uid, gid_t gid)
{
	if (!config_acl_restricts(acl))
		return true;
	return id_listed(acl->uids, acl->n_uids, uid) || id_listed(acl->gids, acl->n_gids, gid);
}

static bool
str_ieq(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcasecmp(a, b) == 0;
}

/*
 * Selectors (client_id, object_id, msi_res_id or their App Service names):
 * only two values of the same kind that differ tell identities apart for
 * certain.  None may mean the only identity there is, and two kinds may name
 * the same one.
 */
static bool
selectors_may_match(const char *const *a, const char *const *b, size_t n)
{
	size_t ka = n, kb = n;

	for (size_t i = 0; i < n; i++) {
		if (a[i] != NULL && ka == n)
			ka = i;
		if (b[i] != NULL && kb == n)
			kb = i;
	}
	if (ka == n || kb == n || ka != kb)
		return true;
	return strcasecmp(a[ka], b[kb]) == 0;
}

/* Identities whose tokens come from one kind of upstream principal. */
static int
source_family(enum config_source s)
{
	switch (s) {
	case CONFIG_SOURCE_ENTRA_SECRET:
	case CONFIG_SOURCE_ENTRA_CERTIFICATE:
	case CONFIG_SOURCE_ENTRA_FEDERATED:
		return CONFIG_SOURCE_ENTRA_SECRET; /* one app, whatever the credential */
	default:
		return (int)s;
	}
}

bool
config_identity_same_principal(const struct config_identity *a, const struct config_identity *b)
{
	if (a == b)
		return true;
	if (source_family(a->source) != source_family(b->source))
		return false;
	switch (a->source) {
	case CONFIG_SOURCE_DEV:
		return str_eq_opt(a->issuer, b->issuer) && str_eq_opt(a->subject, b->subject);
	case CONFIG_SOURCE_AZURE_IMDS: {
		const char *sa[] = {a->client_id, a->object_id, a->msi_res_id};
		const char *sb[] = {b->client_id, b->object_id, b->msi_res_id};

		return str_eq_opt(a->endpoint, b->endpoint) && selectors_may_match(sa, sb, 3);
	}
	case CONFIG_SOURCE_AZURE_APPSERVICE: {
		const char *sa[] = {a->client_id, a->principal_id, a->mi_res_id};
		const char *sb[] = {b->client_id, b->principal_id, b->mi_res_id};

		return str_eq_opt(a->endpoint, b->endpoint) && selectors_may_match(sa, sb, 3);
	}
	case CONFIG_SOURCE_ENTRA_SECRET:
	case CONFIG_SOURCE_ENTRA_CERTIFICATE:
	case CONFIG_SOURCE_ENTRA_FEDERATED:
		/* a tenant id and its domain name are one tenant: only the app counts */
		return str_ieq(a->authority, b->authority) && str_ieq(a->client_id, b->client_id);
	case CONFIG_SOURCE_OAUTH2:
		return str_eq_opt(a->token_url, b->token_url) &&
		       str_eq_opt(a->client_id, b->client_id);
	}
	return true;
}

/* The part of a resource that names its API: see config_resources_alike. */
static void
resource_core(const char *s, size_t *off, size_t *len)
{
	size_t b = 0, n = strlen(s);
	bool changed = true;

	while (b < n && isspace((unsigned char)s[b]))
		b++;
	while (changed) {
		changed = false;
		while (n > b && isspace((unsigned char)s[n - 1])) {
			n--;
			changed = true;
		}
		while (n > b && s[n - 1] == '/') {
			n--;
			changed = true;
		}
		if (n - b >= 9 && strncasecmp(s + n - 9, "/.default", 9) == 0) {
			n -= 9;
			changed = true;
		}
	}
	*off = b;
	*len = n - b;
}

bool
config_resources_alike(const char *a, const char *b)
{
	size_t oa, la, ob, lb;

	resource_core(a, &oa, &la);
	resource_core(b, &ob, &lb);
	return la == lb && strncasecmp(a + oa, b + ob, la) == 0;
}

/*
 * The string fields of struct config_identity, for config_identity_equal and
 * identity_clear; kept next to each other so that a new field lands in both.
 */
#define IDENTITY_STRINGS(X)                                                                        \
	X(name)                                                                                    \
	X(endpoint)                                                                                \
	X(client_id)                                                                               \
	X(object_id)                                                                               \
	X(msi_res_id)                                                                              \
	X(principal_id)                                                                            \
	X(mi_res_id)                                                                               \
	X(identity_header_file)                                                                    \
	X(authority)                                                                               \
	X(tenant)                                                                                  \
	X(client_secret_file)                                                                      \
	X(certificate_file)                                                                        \
	X(private_key_file)                                                                        \
	X(federated_token_file)                                                                    \
	X(token_url)                                                                               \
	X(key_id)                                                                                  \
	X(tls_certificate_file)                                                                    \
	X(tls_private_key_file)                                                                    \
	X(ca_file)                                                                                 \
	X(issuer)                                                                                  \
	X(subject)
#define IDENTITY_STRVS(X)                                                                          \
	X(scopes)                                                                                  \
	X(extra_params)                                                                            \
	X(roles)
#define IDENTITY_SCALARS(X)                                                                        \
	X(source)                                                                                  \
	X(assertion_alg)                                                                           \
	X(send_x5c)                                                                                \
	X(auth_method)                                                                             \
	X(audience_param)                                                                          \
	X(timeout)                                                                                 \
	X(lifetime)                                                                                \
	X(dynamic_resources)

bool
config_identity_equal(const struct config_identity *a, const struct config_identity *b)
{
#define EQ_STR(f)                                                                                  \
	if (!str_eq_opt(a->f, b->f))                                                               \
		return false;
#define EQ_STRV(f)                                                                                 \
	if (!strv_equal(a->f, b->f))                                                               \
		return false;
#define EQ_SCALAR(f)                                                                               \
	if (a->f != b->f)                                                                          \
		return false;
	IDENTITY_STRINGS(EQ_STR)
	IDENTITY_STRVS(EQ_STRV)
	IDENTITY_SCALARS(EQ_SCALAR)
	return true;
#undef EQ_STR
#undef EQ_STRV
#undef EQ_SCALAR
}

static void
acl_clear(struct config_acl *acl)
{
	free(acl->uids);
	free(acl->gids);
	*acl = (struct config_acl){0};
}

static void
identity_clear(struct config_identity *id)
{
#define FREE_STR(f)  free(id->f);
#define FREE_STRV(f) strv_free(id->f);
	IDENTITY_STRINGS(FREE_STR)
	IDENTITY_STRVS(FREE_STRV)
#undef FREE_STR
#undef FREE_STRV
	acl_clear(&id->dynamic_allow);
}

struct config *
config_free(struct config *c)
{
	if (c == NULL)
		return NULL;
	for (size_t i = 0; i < c->n_identities; i++)
		identity_clear(&c->identities[i]);
	for (size_t i = 0; i < c->n_audiences; i++) {
		struct config_audience *a = &c->audiences[i];

		free(a->name);
		free(a->identity_name);
		free(a->resource);
		free(a->allow_uids);
		free(a->allow_gids);
	}
	free(c->identities);
	free(c->audiences);
	free(c->compat.identity_name);
	config_listen_free(c->metrics_listen);
	config_listen_free(c->compat.imds_listen);
	config_listen_free(c->compat.appservice_listen);
	free(c->compat.appservice_secret_file);
	strv_free(c->compat.resources);
	acl_clear(&c->compat.env_allow);
	config_proxy_free(c->proxy);
	free(c->path);
	free(c->socket);
	free(c->socket_group);
	free(c->ca_file);
	free(c);
	return NULL;
}

const struct config_audience *
config_audience_for_resource(const struct config *c, const struct config_identity *id,
			     const char *resource)
{
	for (size_t i = 0; i < c->n_audiences; i++) {
		const struct config_audience *a = &c->audiences[i];

		if (a->identity == id && strcmp(a->resource, resource) == 0)
			return a;
	}
	return NULL;
}

size_t
config_identity_index(const struct config *c, const struct config_identity *id)
{
	return (size_t)(id - c->identities);
}
