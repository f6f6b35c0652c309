/*
 * The azure-imds source: tokens from the Azure Instance Metadata Service
 * managed-identity endpoint (GET {endpoint}?api-version=2018-02-01&resource=
 * with "Metadata: true"; normally http://169.254.169.254/metadata/identity/
 * oauth2/token, taken from the config so tests can point it at loopback).
 * The selectors client_id, object_id and msi_res_id pick a user-assigned
 * identity.  Limits, 410 retries and error mapping live in source_azure.c.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "config.h"
#include "source.h"
#include "source_azure.h"

#define IMDS_API_VERSION     "2018-02-01"
#define IMDS_DEFAULT_TIMEOUT 10	 /* seconds, when the config says 0 */
#define IMDS_MAX_TIMEOUT     600 /* seconds: bounds a silly config value */

struct imds_source {
	struct source s; /* first: the generic header */
	struct azure_mi *mi;
};

static const char *const imds_headers[] = {
    "Metadata: true",
    "Accept: application/json",
    NULL,
};

static int
imds_fetch(struct source *s, const char *resource, source_done_fn *done, void *arg)
{
	struct imds_source *src = (struct imds_source *)s;

	return azure_mi_fetch(src->mi, resource, done, arg);
}

static int
imds_fetch_prio(struct source *s, const char *resource, enum source_priority prio,
		source_done_fn *done, void *arg)
{
	struct imds_source *src = (struct imds_source *)s;

	return azure_mi_fetch_prio(src->mi, resource, prio, done, arg);
}

static int
imds_cancel(struct source *s, source_done_fn *done, void *arg)
{
	struct imds_source *src = (struct imds_source *)s;

	return azure_mi_cancel(src->mi, done, arg);
}

static int
imds_jwks(struct source *s, struct evbuffer *out)
{
	(void)s;
	(void)out;
	return -ENOTSUP;
}

static void
imds_free(struct source *s)
{
	struct imds_source *src = (struct imds_source *)s;

	azure_mi_free(src->mi);
	free(src);
}

static const struct source_ops imds_ops = {
    .kind = "azure-imds",
    .fetch = imds_fetch,
    .fetch_prio = imds_fetch_prio,
    .cancel = imds_cancel,
    .jwks = imds_jwks,
    .free = imds_free,
};

int
source_imds_new(struct source **out, const struct config_identity *id, struct event_base *base,
		struct fetch *fetch)
{
	static const char *const names[] = {"client_id", "object_id", "msi_res_id"};
	const char *values[] = {id != NULL ? id->client_id : NULL,
				id != NULL ? id->object_id : NULL,
				id != NULL ? id->msi_res_id : NULL};
	struct azure_mi_params p = {
	    .api_version = IMDS_API_VERSION,
	    .headers = imds_headers,
	    .retry_gone = true,
	    .max_concurrent = AZURE_MAX_CONCURRENT,
	    .max_per_window = AZURE_MAX_PER_WINDOW,
	};
	struct imds_source *src;
	char *selector = NULL;
	int64_t timeout;
	int rc;

	if (id == NULL || fetch == NULL || id->endpoint == NULL || id->endpoint[0] == '\0')
		return -EINVAL;
	rc = azure_selector(&selector, names, values, 3);
	if (rc < 0)
		return rc;
	timeout = id->timeout > 0 ? id->timeout : IMDS_DEFAULT_TIMEOUT;
	p.name = id->name;
	p.endpoint = id->endpoint;
	p.selector = selector;
	p.ca_file = id->ca_file;
	p.timeout_ms = (long)(timeout < IMDS_MAX_TIMEOUT ? timeout : IMDS_MAX_TIMEOUT) * 1000L;

	src = calloc(1, sizeof(*src));
	if (src == NULL) {
		free(selector);
		return -ENOMEM;
	}
	src->s.ops = &imds_ops;
	src->s.id = id;
	rc = azure_mi_new(&src->mi, base, fetch, &p);
	free(selector);
	if (rc < 0) {
		free(src);
		return rc;
	}
	*out = &src->s;
	return 0;
}
