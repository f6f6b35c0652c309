/*
 * Azure-compatible listeners for unmodified SDK clients: an IMDS look-alike
 * (for AZURE_POD_IDENTITY_AUTHORITY_HOST) and an App Service look-alike (for
 * IDENTITY_ENDPOINT + IDENTITY_HEADER), both answered from the shared cache.
 */
#ifndef BEARERD_COMPAT_H
#define BEARERD_COMPAT_H

struct cache;
struct compat;
struct config;
struct event_base;
struct evbuffer;
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

/* Stops accepting new connections (shutdown). */
void compat_stop_accepting(struct compat *c);
/* Requests still waiting for a token. */
unsigned compat_pending(const struct compat *c);

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
