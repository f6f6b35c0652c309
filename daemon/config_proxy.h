/* Configuration of the proxy: [proxy] and [route "NAME"] (parsed by config_proxy.c). */
#ifndef BEARERD_CONFIG_PROXY_H
#define BEARERD_CONFIG_PROXY_H

#include "config.h"

struct config_proxy {
	int line; /* of [proxy]; 0 when there is none */
};

#endif
