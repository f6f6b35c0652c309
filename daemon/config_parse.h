/*
 * Internal to the configuration parser: the state shared by config.c (the
 * reader, [bearerd], [identity], [audience], [compat]) and config_proxy.c
 * ([proxy], [route]).  Nothing outside those two files includes it.
 */
#ifndef BEARERD_CONFIG_PARSE_H
#define BEARERD_CONFIG_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "str.h" /* strv_free, for config.c and config_proxy.c */

/* Keys of [bearerd]. */
enum bkey {
	BK_SOCKET,
	BK_SOCKET_MODE,
	BK_SOCKET_GROUP,
	BK_LOG_LEVEL,
	BK_MIN_VALIDITY,
	BK_REFRESH_MARGIN,
	BK_MAX_ENTRIES,
	BK_IDLE_TIMEOUT,
	BK_WAIT_TIMEOUT,
	BK_CA_FILE,
	BK_MAX_CONNECTIONS,
	BK_MAX_CONNECTIONS_PER_UID,
	BK_HEADER_TIMEOUT,
	BK_KEEPALIVE_TIMEOUT,
	BK_METRICS_LISTEN,
	BK_METRICS_ALLOW_NON_LOOPBACK,
	BK_DYNAMIC_RATE,
	BK__N,
};

/* Keys of [identity "NAME"]. */
enum ikey {
	IK_SOURCE,
	IK_ENDPOINT,
	IK_CLIENT_ID,
	IK_OBJECT_ID,
	IK_MSI_RES_ID,
	IK_CA_FILE,
	IK_TIMEOUT,
	IK_ISSUER,
	IK_SUBJECT,
	IK_ROLES,
	IK_LIFETIME,
	IK_DYNAMIC_RESOURCES,
	/* azure-appservice */
	IK_PRINCIPAL_ID,
	IK_MI_RES_ID,
	IK_IDENTITY_HEADER_FILE,
	/* entra-* */
	IK_AUTHORITY,
	IK_TENANT,
	IK_CLIENT_SECRET_FILE,
	IK_CERTIFICATE_FILE,
	IK_PRIVATE_KEY_FILE,
	IK_FEDERATED_TOKEN_FILE,
	IK_ASSERTION_ALG,
	IK_SEND_X5C,
	/* oauth2 */
	IK_TOKEN_URL,
	IK_AUTH_METHOD,
	IK_KEY_ID,
	IK_AUDIENCE_PARAM,
	IK_SCOPE,
	IK_EXTRA_PARAMS,
	IK_TLS_CERTIFICATE_FILE,
	IK_TLS_PRIVATE_KEY_FILE,
	/* who may ask for dynamic resources */
	IK_DYNAMIC_ALLOW_UIDS,
	IK_DYNAMIC_ALLOW_GIDS,
	IK__N,
};

/* Keys of [audience "NAME"]. */
enum akey {
	AK_IDENTITY,
	AK_RESOURCE,
	AK_PREFETCH,
	AK_ALLOW_UIDS,
	AK_ALLOW_GIDS,
	AK__N,
};

/* Keys of [compat]. */
enum ckey {
	CK_IDENTITY,
	CK_IMDS_LISTEN,
	CK_APPSERVICE_LISTEN,
	CK_APPSERVICE_SECRET_FILE,
	CK_DYNAMIC_RESOURCES,
	CK_RESOURCES,
	CK_ALLOW_NON_LOOPBACK,
	CK_ENV_ALLOW_UIDS,
	CK_ENV_ALLOW_GIDS,
	CK_IMDS_RELAY,
	CK__N,
};

enum section {
	SEC_NONE, /* before the first header */
	SEC_SKIP, /* a bad header: its keys are ignored, the header was reported */
	SEC_BEARERD,
	SEC_IDENTITY,
	SEC_AUDIENCE,
	SEC_COMPAT,
	SEC_EXT, /* [proxy], [route "x"]: keys go to config_proxy_key */
};

enum source_state {
	SOURCE_UNSET,
	SOURCE_OK,
	SOURCE_BAD, /* invalid or unsupported: reported, the rest depends on it */
};

/* What the parser remembers about an identity beyond struct config_identity. */
struct ident_info {
	int key_line[IK__N]; /* 0: not set */
	enum source_state source_state;
	bool lost_line; /* a line of the section was unreadable: no "missing key" */
};

struct aud_info {
	int key_line[AK__N];
	bool lost_line;
};

struct perr {
	int line;
	size_t seq;
	size_t owner; /* identity index + 1 for errors dropped when its source is bad */
	bool dropped;
	char *msg;
};

struct parser {
	const char *name; /* FILE in messages */
	struct config *c;
	bool oom;

	/* reader */
	FILE *f;	  /* either a stream... */
	const char *text; /* ...or the rest of a string */
	char *buf;
	size_t buf_cap;
	size_t total;
	int line;
	int read_errno;
	bool stop;

	/* current section */
	enum section sec;
	size_t cur;
	int *cur_lines;
	int bearerd_line;
	int bearerd_lines[BK__N];
	int compat_lines[CK__N];
	struct ident_info *iinfo;
	size_t identities_cap;
	struct aud_info *ainfo;
	size_t audiences_cap;

	struct perr *errs;
	size_t n_errs, errs_cap;
	size_t owner; /* applied to errors added while nonzero */

	void *ext; /* config_proxy.c's parsing state */
};

void perr_at(struct parser *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define perr(p, ...) perr_at((p), (p)->line, __VA_ARGS__)

bool name_valid(const char *s);
int parse_int(struct parser *p, const char *key, const char *v, int64_t min, int64_t max,
	      int64_t *out);
int parse_bool(struct parser *p, const char *key, const char *v, bool *out);
int parse_string(struct parser *p, const char *key, const char *v, char **out);
int parse_word(struct parser *p, const char *key, const char *v, char **out);
/* Splits v at blanks into a NULL-terminated array (empty for ""); -ENOMEM only. */
int split_words(const char *v, char ***out);
int key_index(const char *const *names, size_t n, const char *key);
int parse_listen(struct parser *p, const char *key, const char *v, struct config_listen **out);
void config_listen_free(struct config_listen *l);

/*
 * config_proxy.c.  config_proxy_section is offered every section header that
 * config.c does not know, with kind ("proxy", "route") and the rest of the
 * header (the quoted name, if any): it returns false for kinds it does not
 * handle; otherwise it reports problems and sets p->sec to SEC_EXT (keys then
 * go to config_proxy_key) or SEC_SKIP.  config_proxy_finish runs after the
 * whole file and the identities and audiences are validated; it builds
 * p->c->proxy.  config_proxy_free frees it (and p->ext when the parse failed).
 */
bool config_proxy_section(struct parser *p, const char *kind, char *rest);
void config_proxy_key(struct parser *p, const char *key, const char *v);
int config_proxy_finish(struct parser *p);
void config_proxy_parse_free(struct parser *p);
void config_proxy_free(struct config_proxy *cp);

#endif
