/* Configuration of the proxy: [proxy] and [route "NAME"]. */
#include <stdlib.h>
#include <string.h>

#include "config_parse.h"
#include "config_proxy.h"

bool
config_proxy_section(struct parser *p, const char *kind, char *rest)
{
	if (strcmp(kind, "proxy") != 0 && strcmp(kind, "route") != 0)
		return false;
	(void)rest;
	perr(p, "section [%s] is not supported by this build yet", kind);
	p->sec = SEC_SKIP;
	return true;
}

void
config_proxy_key(struct parser *p, const char *key, const char *v)
{
	(void)p;
	(void)key;
	(void)v;
}

int
config_proxy_finish(struct parser *p)
{
	(void)p;
	return 0;
}

void
config_proxy_parse_free(struct parser *p)
{
	free(p->ext);
	p->ext = NULL;
}

void
config_proxy_free(struct config_proxy *cp)
{
	free(cp);
}
