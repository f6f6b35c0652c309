/* The azure-appservice source (not implemented yet). */
#include <errno.h>

#include "source.h"

int
source_appservice_new(struct source **out, const struct config_identity *id,
		      struct event_base *base, struct fetch *fetch)
{
	(void)out;
	(void)id;
	(void)base;
	(void)fetch;
	return -ENOTSUP;
}
