/*
 * The azure-appservice source: tokens from the App Service / Functions
 * managed-identity endpoint (2019-08-01 protocol): GET {endpoint}?api-version=
 * 2019-08-01&resource=..[&client_id=|&principal_id=|&mi_res_id=] with the
 * header X-IDENTITY-HEADER.  The endpoint and the secret come from the config
 * or, as the SDKs take them, from $IDENTITY_ENDPOINT and $IDENTITY_HEADER.
 * A secret in identity_header_file is read for every request, so a rotated
 * secret is picked up without a reload.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "secret.h"
#include "source.h"
#include "source_azure.h"
#include "wipe.h"

#define APPSVC_API_VERSION     "2019-08-01"
#define APPSVC_HEADER	       "X-IDENTITY-HEADER"
#define APPSVC_MAX_SECRET      4096 /* the platform's is a GUID-sized string */
#define APPSVC_DEFAULT_TIMEOUT 10   /* seconds, when the config says 0 */
#define APPSVC_MAX_TIMEOUT     600  /* seconds: bounds a silly config value */

struct appservice_source {
	struct source s; /* first: the generic header */
	struct azure_mi *mi;
	char *secret_file; /* read per request, or NULL */
	char *secret;	   /* $IDENTITY_HEADER when there is no file; wiped on free */
};

static const char *const appservice_headers[] = {
    "Accept: application/json",
    NULL,
};

/* Trailing whitespace (a newline from echo) is not part of the secret; the rest must be a
 * header value that cannot split the request. */
static int
secret_check(char *s)
{
	size_t n = strlen(s);

	while (n > 0 &&
	       (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
	if (n == 0)
		return -ENODATA;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c > 0x7e)
			return -EILSEQ;
	}
	return 0;
}

static const char *
secret_error(int rc)
{
	switch (rc) {
	case -ENODATA:
		return "it is empty";
	case -EILSEQ:
		return "it holds characters a header value cannot";
	default:
		return strerror(-rc);
	}
}

/*
 * Reads the secret file (ownership and mode checked by secret.c) into a new
 * string that can go into a header; msg says why not.  Wiped by the caller.
 */
static int
secret_load(const char *path, char **out, char *msg, size_t msg_size)
{
	char *buf = NULL, why[200];
	size_t len = 0;
	int rc;

	rc = secret_read(path, false, &buf, &len, why, sizeof(why));
	if (rc < 0) {
		snprintf(msg, msg_size, "identity_header_file: %s", why);
		return rc;
	}
	if (len > APPSVC_MAX_SECRET || strlen(buf) != len)
		rc = -EFBIG;
	else
		rc = secret_check(buf);
	if (rc < 0) {
		snprintf(msg, msg_size, "identity_header_file: '%s': %s", path,
			 rc == -EFBIG ? "it is not a header value of at most 4096 bytes"
				      : secret_error(rc));
		wipe_free(buf, len);
		return rc;
	}
	*out = buf;
	return 0;
}

/* azure_secret_fn: the X-IDENTITY-HEADER line of one request. */
static int
appservice_secret(void *ctx, char **line, char *msg, size_t msg_size)
{
	struct appservice_source *src = ctx;
	char *secret = src->secret;
	int rc;

	if (src->secret_file != NULL) {
		rc = secret_load(src->secret_file, &secret, msg, msg_size);
		if (rc < 0)
			return rc;
	}
	rc = asprintf(line, APPSVC_HEADER ": %s", secret);
	if (secret != src->secret)
		wipe_free_str(secret);
	if (rc < 0) {
		snprintf(msg, msg_size, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

static int
appservice_fetch(struct source *s, const char *resource, source_done_fn *done, void *arg)
{
	struct appservice_source *src = (struct appservice_source *)s;

	return azure_mi_fetch(src->mi, resource, done, arg);
}

static int
appservice_fetch_prio(struct source *s, const char *resource, enum source_priority prio,
		      source_done_fn *done, void *arg)
{
	struct appservice_source *src = (struct appservice_source *)s;

	return azure_mi_fetch_prio(src->mi, resource, prio, done, arg);
}

static int
appservice_cancel(struct source *s, source_done_fn *done, void *arg)
{
	struct appservice_source *src = (struct appservice_source *)s;

	return azure_mi_cancel(src->mi, done, arg);
}

static int
appservice_jwks(struct source *s, struct evbuffer *out)
{
	(void)s;
	(void)out;
	return -ENOTSUP;
}

static void
appservice_free(struct source *s)
{
	struct appservice_source *src = (struct appservice_source *)s;

	azure_mi_free(src->mi);
	free(src->secret_file);
	wipe_free_str(src->secret);
	free(src);
}

static const struct source_ops appservice_ops = {
    .kind = "azure-appservice",
    .fetch = appservice_fetch,
    .fetch_prio = appservice_fetch_prio,
    .cancel = appservice_cancel,
    .jwks = appservice_jwks,
    .free = appservice_free,
};

/* Where the secret comes from, checked now so a mistake stops the start, not each fetch. */
static int
secret_setup(struct appservice_source *src, const struct config_identity *id)
{
	const char *env;
	char *probe = NULL, msg[256];
	int rc;

	if (id->identity_header_file != NULL) {
		src->secret_file = strdup(id->identity_header_file);
		if (src->secret_file == NULL)
			return -ENOMEM;
		rc = secret_load(src->secret_file, &probe, msg, sizeof(msg));
		if (rc < 0) {
			log_error("cannot use identity_header_file", "identity=%s error=\"%s\"",
				  id->name, msg);
			return rc;
		}
		wipe_free_str(probe);
		return 0;
	}
	env = getenv("IDENTITY_HEADER");
	if (env == NULL || env[0] == '\0') {
		log_error("azure-appservice needs identity_header_file or $IDENTITY_HEADER",
			  "identity=%s", id->name);
		return -EINVAL;
	}
	src->secret = strdup(env);
	if (src->secret == NULL)
		return -ENOMEM;
	rc = secret_check(src->secret);
	if (rc < 0)
		log_error("cannot use $IDENTITY_HEADER", "identity=%s error=\"%s\"", id->name,
			  secret_error(rc));
	return rc;
}

int
source_appservice_new(struct source **out, const struct config_identity *id,
		      struct event_base *base, struct fetch *fetch)
{
	static const char *const names[] = {"client_id", "principal_id", "mi_res_id", "object_id"};
	struct azure_mi_params p = {
	    .api_version = APPSVC_API_VERSION,
	    .headers = appservice_headers,
	    .max_concurrent = AZURE_MAX_CONCURRENT,
	    .max_per_window = AZURE_MAX_PER_WINDOW,
	    .secret = appservice_secret,
	};
	const char *values[4];
	struct appservice_source *src;
	char *selector = NULL;
	int64_t timeout;
	int rc;

	if (id == NULL || fetch == NULL)
		return -EINVAL;
	p.endpoint = id->endpoint != NULL ? id->endpoint : getenv("IDENTITY_ENDPOINT");
	if (p.endpoint == NULL || p.endpoint[0] == '\0') {
		log_error("azure-appservice needs endpoint or $IDENTITY_ENDPOINT", "identity=%s",
			  id->name);
		return -EINVAL;
	}
	values[0] = id->client_id;
	values[1] = id->principal_id;
	values[2] = id->mi_res_id;
	values[3] = id->object_id; /* App Service's alias of principal_id */
	rc = azure_selector(&selector, names, values, 4);
	if (rc < 0)
		return rc;
	src = calloc(1, sizeof(*src));
	if (src == NULL) {
		free(selector);
		return -ENOMEM;
	}
	src->s.ops = &appservice_ops;
	src->s.id = id;
	rc = secret_setup(src, id);
	if (rc < 0)
		goto fail;
	timeout = id->timeout > 0 ? id->timeout : APPSVC_DEFAULT_TIMEOUT;
	p.name = id->name;
	p.selector = selector;
	p.ca_file = id->ca_file;
	p.timeout_ms = (long)(timeout < APPSVC_MAX_TIMEOUT ? timeout : APPSVC_MAX_TIMEOUT) * 1000L;
	p.secret_ctx = src;
	rc = azure_mi_new(&src->mi, base, fetch, &p);
	if (rc < 0)
		goto fail;
	free(selector);
	*out = &src->s;
	return 0;

fail:
	free(selector);
	appservice_free(&src->s);
	return rc;
}
