/* Sources: how an identity gets tokens.  One instance per configured identity. */
#ifndef BEARERD_SOURCE_H
#define BEARERD_SOURCE_H

#include "token.h"

struct event_base;
struct evbuffer;
struct fetch;
struct config_identity;
struct source;

/*
 * How urgently a fetch is wanted.  Sources serve SOURCE_PRIO_HIGH first and
 * bound how many SOURCE_PRIO_LOW ones wait, so that a flood of new dynamic
 * resources cannot hold up configured audiences or the refresh of tokens in
 * use.
 */
enum source_priority {
	SOURCE_PRIO_HIGH = 0, /* a configured audience, or a refresh of a token callers hold */
	SOURCE_PRIO_LOW,      /* the first token of a dynamic resource */
};

/* SOURCE_PRIO_LOW fetches that may wait in one source's queue; beyond, -ENOBUFS. */
#define SOURCE_MAX_QUEUED_LOW 100
/* Fetches of one oauth2 or entra-* identity in flight at once (the rest wait in its queue). */
#define SOURCE_MAX_IN_FLIGHT 16

/* Called exactly once per source_fetch, always from the loop, never from inside source_fetch. */
typedef void source_done_fn(void *arg, struct token_result *res);

/* Creates the source for id. fetch may be NULL for dev. */
int source_new(struct source **out, const struct config_identity *id, struct event_base *base,
	       struct fetch *fetch);
struct source *source_free(struct source *s);

/*
 * Starts one upstream token request for resource.  The result, owned by the
 * source, is valid only during the callback (the callee may steal
 * access_token by setting it to NULL).
 */
int source_fetch(struct source *s, const char *resource, source_done_fn *done, void *arg);
/* source_fetch with a priority; -ENOBUFS when a SOURCE_PRIO_LOW one finds the queue full. */
int source_fetch_prio(struct source *s, const char *resource, enum source_priority prio,
		      source_done_fn *done, void *arg);
/*
 * Withdraws the fetch started with (done, arg) if it is still queued: 0,
 * and done will not be called.  -EBUSY when it has left (done will be
 * called), -ENOENT when there is no such fetch.
 */
int source_cancel(struct source *s, source_done_fn *done, void *arg);

/* "dev", "azure-imds", ... */
const char *source_kind(const struct source *s);

/* The dev issuer's JWKS document; -ENOTSUP for other sources. */
int source_jwks(struct source *s, struct evbuffer *out);

/* Per-kind constructors, used by source_new. */
int source_dev_new(struct source **out, const struct config_identity *id, struct event_base *base);
int source_imds_new(struct source **out, const struct config_identity *id, struct event_base *base,
		    struct fetch *fetch);
int source_appservice_new(struct source **out, const struct config_identity *id,
			  struct event_base *base, struct fetch *fetch);
/* entra-secret, entra-certificate, entra-federated and oauth2 (source_oauth2.c). */
int source_oauth2_new(struct source **out, const struct config_identity *id,
		      struct event_base *base, struct fetch *fetch);

/* The common header every source struct starts with. */
struct source_ops {
	const char *kind;
	int (*fetch)(struct source *s, const char *resource, source_done_fn *done, void *arg);
	/*
	 * Optional, together: a source with its own queue (the azure ones)
	 * orders and bounds it itself.  Without them, source.c queues in front
	 * of fetch for sources that call an upstream.
	 */
	int (*fetch_prio)(struct source *s, const char *resource, enum source_priority prio,
			  source_done_fn *done, void *arg);
	int (*cancel)(struct source *s, source_done_fn *done, void *arg);
	int (*jwks)(struct source *s, struct evbuffer *out);
	void (*free)(struct source *s);
};

struct source_queue;

struct source {
	const struct source_ops *ops;
	const struct config_identity *id;
	struct source_queue *queue; /* source.c's, created on first use (zeroed by calloc) */
};

#endif
