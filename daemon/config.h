/* Configuration: the INI file (inih), validated whole, with FILE:LINE errors. */
#ifndef BEARERD_CONFIG_H
#define BEARERD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>

struct config_proxy;

enum config_source {
	CONFIG_SOURCE_DEV = 1,
	CONFIG_SOURCE_AZURE_IMDS,
	CONFIG_SOURCE_AZURE_APPSERVICE,
	CONFIG_SOURCE_ENTRA_SECRET,
	CONFIG_SOURCE_ENTRA_CERTIFICATE,
	CONFIG_SOURCE_ENTRA_FEDERATED,
	CONFIG_SOURCE_OAUTH2,
};

/* How an oauth2 identity authenticates to its token endpoint (key auth_method). */
enum config_auth_method {
	CONFIG_AUTH_SECRET_BASIC = 1, /* client_secret_basic, the default */
	CONFIG_AUTH_SECRET_POST,      /* client_secret_post */
	CONFIG_AUTH_PRIVATE_KEY_JWT,  /* private_key_jwt (RFC 7523 client assertion) */
};

/* Signature of a client assertion (key assertion_alg); 0 = the source's default. */
enum config_assertion_alg {
	CONFIG_ALG_DEFAULT = 0, /* entra-certificate: PS256; oauth2: RS256 or ES256 by key type */
	CONFIG_ALG_PS256,	/* with x5t#S256 */
	CONFIG_ALG_RS256,	/* with x5t (SHA-1), as older Entra clients do */
	CONFIG_ALG_ES256,	/* EC P-256 keys */
};

/* Where an oauth2 identity puts the audience's resource (key audience_param, several allowed). */
#define CONFIG_AUD_SCOPE    0x1u /* scope=<resource> (default) */
#define CONFIG_AUD_RESOURCE 0x2u /* resource=<resource> (RFC 8707) */
#define CONFIG_AUD_AUDIENCE 0x4u /* audience=<resource> (Auth0, Keycloak token exchange) */

/* Who may do something: a peer passes when its uid or primary gid is listed; empty: anyone. */
struct config_acl {
	uid_t *uids; /* NULL when no uid is listed */
	size_t n_uids;
	gid_t *gids; /* NULL when no gid is listed */
	size_t n_gids;
};

struct config_identity {
	char *name;
	enum config_source source;
	int line; /* line of the section header */
	/*
	 * azure-imds: endpoint (default http://169.254.169.254/metadata/identity/oauth2/token)
	 * and at most one of client_id, object_id, msi_res_id.
	 * azure-appservice: endpoint (default $IDENTITY_ENDPOINT), identity_header_file
	 * (default: $IDENTITY_HEADER read by the source), at most one of client_id,
	 * principal_id, mi_res_id.
	 */
	char *endpoint;
	char *client_id; /* also entra-* and oauth2 (required there) */
	char *object_id;
	char *msi_res_id;
	char *principal_id;
	char *mi_res_id;
	char *identity_header_file;
	/*
	 * entra-*: authority (default https://login.microsoftonline.com; entra-federated:
	 * $AZURE_AUTHORITY_HOST first), tenant (required; entra-federated: default
	 * $AZURE_TENANT_ID), client_id (entra-federated: default $AZURE_CLIENT_ID).  The
	 * token endpoint is {authority}/{tenant}/oauth2/v2.0/token.
	 */
	char *authority;
	char *tenant;
	char *client_secret_file;   /* entra-secret; oauth2 with client_secret_* */
	char *certificate_file;	    /* entra-certificate; oauth2 private_key_jwt (optional) */
	char *private_key_file;	    /* entra-certificate; oauth2 private_key_jwt */
	char *federated_token_file; /* entra-federated, default $AZURE_FEDERATED_TOKEN_FILE */
	enum config_assertion_alg assertion_alg;
	bool send_x5c; /* entra-certificate: x5c header for subject-name/issuer auth */
	/* oauth2 */
	char *token_url;
	enum config_auth_method auth_method; /* default CONFIG_AUTH_SECRET_BASIC */
	char *key_id;			     /* "kid" of private_key_jwt assertions, or NULL */
	unsigned audience_param;	     /* CONFIG_AUD_* bits, default CONFIG_AUD_SCOPE */
	char **scopes;			     /* key scope: NULL-terminated, or NULL */
	char **extra_params;		     /* key extra_params: "name=value" words, or NULL */
	char *tls_certificate_file;	     /* mTLS client certificate, or NULL */
	char *tls_private_key_file;
	/* every source that talks to an upstream */
	char *ca_file;	 /* extra trust anchor for https endpoints; default [bearerd] ca_file */
	int64_t timeout; /* seconds for one upstream request, default 10 */
	/* dev */
	char *issuer;	  /* default "bearerd-dev" */
	char *subject;	  /* default the identity name */
	char **roles;	  /* NULL-terminated, may be empty */
	int64_t lifetime; /* seconds, default 3600 */
	/* /v1/token?resource= may create entries for this identity */
	bool dynamic_resources;
	/*
	 * dynamic_allow_uids / dynamic_allow_gids: who may ask for dynamic
	 * resources of this identity on the socket (empty: anyone).  Required,
	 * and no wider than every restricted audience's rules, when the identity
	 * (or one that may be the same principal) has restricted audiences.
	 */
	struct config_acl dynamic_allow;
};

struct config_audience {
	char *name;
	int line;
	char *identity_name;
	struct config_identity *identity; /* resolved */
	char *resource;
	bool prefetch;
	uid_t *allow_uids; /* NULL when no restriction on uids */
	size_t n_allow_uids;
	gid_t *allow_gids;
	size_t n_allow_gids;
};

/* A listen address "IPv4:PORT", "[IPv6]:PORT" or "localhost:PORT" (port 0: any free port). */
struct config_listen {
	char *text; /* as written */
	struct sockaddr_storage addr;
	socklen_t addr_len;
};

/* [compat]: the IMDS- and App-Service-compatible listeners for unmodified Azure SDKs. */
struct config_compat {
	int line; /* of the section header; 0 when there is no [compat] */
	char *identity_name;
	struct config_identity *identity;	 /* resolved: answers requests without a selector */
	struct config_listen *imds_listen;	 /* NULL: no IMDS-compatible listener */
	struct config_listen *appservice_listen; /* NULL: no App-Service-compatible listener */
	char *appservice_secret_file;		 /* default: identity-header beside the socket */
	bool dynamic_resources; /* any resource, bounded by max_entries; default no */
	char **resources;	/* NULL-terminated allow-list besides the audiences, or NULL */
	bool allow_non_loopback;
	/*
	 * imds_relay: the IMDS listener passes IMDS's other paths (instance,
	 * attested, scheduledevents, versions, loadbalancer) on to the real IMDS
	 * of [compat] identity (an azure-imds one); default no: 403
	 */
	bool imds_relay;
	/* env_allow_uids / env_allow_gids: who may read GET /v1/compat/env (empty: anyone) */
	struct config_acl env_allow;
};

struct config {
	char *path;
	char *socket;
	mode_t socket_mode;	/* default 0660 */
	char *socket_group;	/* NULL: the daemon's group */
	int log_level;		/* enum log_level, default info */
	int64_t min_validity;	/* seconds, default 300 */
	int64_t refresh_margin; /* seconds, default 900 */
	int64_t idle_timeout;	/* seconds, default 3600 */
	int64_t wait_timeout;	/* seconds, default 5 */
	size_t max_entries;	/* default 10000 */
	unsigned dynamic_rate;	/* new dynamic entries per second per caller, 0: no limit; 10 */
	char *ca_file;		/* extra trust anchor for every upstream, or NULL */
	/* bounds on callers, for every listener (http_limits); keys of the same names */
	unsigned max_connections;	  /* per listener, default 1024 */
	unsigned max_connections_per_uid; /* per listener and peer uid; 0 = no limit; default
					     max_connections / 4 */
	unsigned header_timeout;	  /* s to receive a request head, default 10 */
	unsigned keepalive_timeout;	  /* s an idle client connection stays open, default 60 */
	struct config_listen *metrics_listen; /* TCP listener serving only /metrics, or NULL */
	bool metrics_allow_non_loopback;      /* metrics_listen may be a non-loopback address */
	struct config_identity *identities;
	size_t n_identities;
	struct config_audience *audiences;
	size_t n_audiences;
	struct config_compat compat;
	struct config_proxy *proxy; /* [proxy] and [route "x"] (config_proxy.h); NULL if none */
};

/*
 * Parses and validates the file at path.  Every problem is printed to errs as
 * "FILE:LINE: message" (all of them, not just the first); then returns -EINVAL.
 * Returns -errno when the file cannot be read (message printed too).
 */
int config_load(struct config **out, const char *path, FILE *errs);

/* Same, from a string; name stands in for FILE in messages. */
int config_load_string(struct config **out, const char *name, const char *text, FILE *errs);

/*
 * The embedded development configuration of --dev: identity "dev" (source dev),
 * audience "demo", the socket at socket_path.
 */
int config_load_dev(struct config **out, const char *socket_path, FILE *errs);

const struct config_identity *config_identity_find(const struct config *c, const char *name);
const struct config_audience *config_audience_find(const struct config *c, const char *name);
/* The audience fetched by identity id for resource, or NULL: its caller rules apply however it is
 * asked for. */
const struct config_audience *config_audience_for_resource(const struct config *c,
							   const struct config_identity *id,
							   const char *resource);
/* Position of id in c->identities (sources and other per-identity arrays use it). */
size_t config_identity_index(const struct config *c, const struct config_identity *id);
/* True when a and b would make identical sources (every key, not the line): reload keeps its
 * tokens. */
bool config_identity_equal(const struct config_identity *a, const struct config_identity *b);

struct config *config_free(struct config *c);

/* Names, and the caller and principal rules that the API, compat and the proxy apply */

/* Longest identity or audience name; names are [A-Za-z0-9._-]{1,CONFIG_NAME_MAX}. */
#define CONFIG_NAME_MAX 128

/* "dev", "azure-imds": the spelling of the source key, for logs and status. */
const char *config_source_name(enum config_source s);

/*
 * True when a peer (SO_PEERCRED uid and primary gid) may use the audience:
 * always when it has neither allow_uids nor allow_gids, otherwise when the
 * uid is in allow_uids or the gid is in allow_gids.
 */
bool config_audience_allows(const struct config_audience *a, uid_t uid, gid_t gid);

/* True when acl is empty (no restriction) or lists the uid or the gid. */
bool config_acl_allows(const struct config_acl *acl, uid_t uid, gid_t gid);
/* True when acl lists anyone, i.e. restricts. */
bool config_acl_restricts(const struct config_acl *acl);

/*
 * True when a and b may fetch tokens as one upstream principal, so that what
 * one hands out the other could too.  Conservative: the same source family
 * and upstream, and selectors that do not tell them apart for certain (an
 * IMDS identity without a selector may be the only user-assigned one; a
 * client_id and an object_id may name the same identity).
 */
bool config_identity_same_principal(const struct config_identity *a,
				    const struct config_identity *b);

/*
 * True when two resources may name one API the way Entra resolves them:
 * equal ignoring ASCII case, surrounding blanks, trailing slashes and a
 * trailing "/.default".  (An app's GUID and its URI cannot be matched.)
 */
bool config_resources_alike(const char *a, const char *b);

/* True for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
bool config_addr_is_loopback(const struct sockaddr_storage *a);

#endif
