/*
 * Azure-compatible listeners for unmodified SDK clients: an IMDS look-alike
 * (for AZURE_POD_IDENTITY_AUTHORITY_HOST) and an App Service look-alike (for
 * IDENTITY_ENDPOINT + IDENTITY_HEADER), both answered from the shared cache.
 */
#ifndef BEARERD_COMPAT_H
#define BEARERD_COMPAT_H

#include <stdbool.h>

struct cache;
struct compat;
struct config;
struct event_base;
struct evbuffer;
struct metrics;
struct source;

/*
 * Binds the [compat] listeners (none when the config has no [compat]) and
 * reads or creates the App Service secret.  sources[i] belongs to
 * cfg->identities[i]; cache, cfg and sources must outlive the compat.
 */
int compat_new(struct compat **out, struct event_base *base, struct cache *cache,
	       const struct config *cfg, struct source **sources);
/* Closes the listeners and their connections (waiting requests are cancelled). */
struct compat *compat_free(struct compat *c);

/*
 * Switches to a new configuration (reload).  A listener whose address did
 * not change keeps its socket and connections; one that changed is bound
 * anew (first, so a failure changes nothing and returns a negative errno)
 * and the old one closed.  cfg and sources must outlive the compat; the old
 * cfg must outlive requests still waiting (wait_timeout).
 */
int compat_reconfigure(struct compat *c, const struct config *cfg, struct source **sources);

/* Counts token requests in m (bearerd_token_requests_total; NULL: not counted). */
void compat_set_metrics(struct compat *c, struct metrics *m);
/* Sets bearerd_connections_open for the listeners that exist. */
void compat_collect(const struct compat *c, struct metrics *m);

/* Stops accepting new connections (shutdown). */
void compat_stop_accepting(struct compat *c);
/* Requests still waiting for a token. */
unsigned compat_pending(const struct compat *c);
/* The port of the IMDS (imds) or App Service listener, 0 when there is none (tests, fuzzing). */
unsigned compat_port(const struct compat *c, bool imds);
/* Open connections of that listener. */
unsigned compat_connections(const struct compat *c, bool imds);

/*
 * Appends {"IDENTITY_ENDPOINT":"http://...","IDENTITY_HEADER":"<secret>"}
 * for `bearerctl env`; -ENOENT without an App Service listener.
 */
int compat_env(const struct compat *c, struct evbuffer *out);

/*
 * Reads the App Service secret from path, or creates it (0640, 32 random
 * bytes in hex) when absent.  Refuses a file others can read or write, or one
 * owned by another user than ours or root.  *out is malloc'd, *len its length.
 */
int compat_secret_load(const char *path, char **out, size_t *len);

#endif
