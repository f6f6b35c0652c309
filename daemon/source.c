/* Sources: dispatch from a configured identity to the code that gets its tokens. */
#include <errno.h>
#include <stddef.h>

#include "config.h"
#include "source.h"

int
source_new(struct source **out, const struct config_identity *id, struct event_base *base,
	   struct fetch *fetch)
{
	switch (id->source) {
	case CONFIG_SOURCE_DEV:
		return source_dev_new(out, id, base);
	case CONFIG_SOURCE_AZURE_IMDS:
		return source_imds_new(out, id, base, fetch);
	case CONFIG_SOURCE_AZURE_APPSERVICE:
		return source_appservice_new(out, id, base, fetch);
	case CONFIG_SOURCE_ENTRA_SECRET:
	case CONFIG_SOURCE_ENTRA_CERTIFICATE:
	case CONFIG_SOURCE_ENTRA_FEDERATED:
	case CONFIG_SOURCE_OAUTH2:
		return source_oauth2_new(out, id, base, fetch);
	}
	return -ENOTSUP;
}

struct source *
source_free(struct source *s)
{
	if (s != NULL)
		s->ops->free(s);
	return NULL;
}

int
source_fetch(struct source *s, const char *resource, source_done_fn *done, void *arg)
{
	return s->ops->fetch(s, resource, done, arg);
}

const char *
source_kind(const struct source *s)
{
	return s->ops->kind;
}

int
source_jwks(struct source *s, struct evbuffer *out)
{
	if (s->ops->jwks == NULL)
		return -ENOTSUP;
	return s->ops->jwks(s, out);
}
