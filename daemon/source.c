/*
 * Sources: dispatch from a configured identity to the code that gets its
 * tokens, and the queue in front of those that call an upstream without a
 * queue of their own (oauth2 and entra-*; the azure sources order theirs in
 * source_azure.c).  The queue bounds an identity's fetches in flight, so that
 * one identity cannot take every upstream connection libcurl has, serves
 * SOURCE_PRIO_HIGH first, keeps some slots for it, and bounds how many
 * SOURCE_PRIO_LOW fetches may wait.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "config.h"
#include "source.h"

/* Slots of SOURCE_MAX_IN_FLIGHT that SOURCE_PRIO_LOW fetches leave free. */
#define SOURCE_RESERVED_HIGH (SOURCE_MAX_IN_FLIGHT / 4)

/* One fetch through the queue: waiting (resource set) or started. */
struct source_call {
	struct source *s;
	source_done_fn *done;
	void *arg;
	char *resource; /* while waiting */
	enum source_priority prio;
	TAILQ_ENTRY(source_call) link;
};

TAILQ_HEAD(source_calls, source_call);

struct source_queue {
	struct source_calls high, low; /* waiting, in order */
	struct source_calls started;   /* in flight */
	unsigned n_low;
	unsigned in_flight;
};

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

static void
call_free(struct source_call *call)
{
	free(call->resource);
	free(call);
}

static void
calls_free(struct source_calls *list)
{
	struct source_call *call;

	while ((call = TAILQ_FIRST(list)) != NULL) {
		TAILQ_REMOVE(list, call, link);
		call_free(call);
	}
}

struct source *
source_free(struct source *s)
{
	struct source_queue *q;

	if (s == NULL)
		return NULL;
	q = s->queue;
	/*
	 * Fetches in flight are orphaned by the source itself, which never calls
	 * them back once freed; waiting ones are dropped untold, as the azure
	 * sources drop theirs.
	 */
	s->ops->free(s);
	if (q != NULL) {
		calls_free(&q->high);
		calls_free(&q->low);
		calls_free(&q->started);
		free(q);
	}
	return NULL;
}

/* Whether source.c queues this source's fetches (a dev source answers in the loop's next turn). */
static bool
queued_here(const struct source *s)
{
	return s->ops->fetch_prio == NULL && s->id != NULL && s->id->source != CONFIG_SOURCE_DEV;
}

static struct source_queue *
queue_get(struct source *s)
{
	struct source_queue *q = s->queue;

	if (q == NULL) {
		q = calloc(1, sizeof(*q));
		if (q == NULL)
			return NULL;
		TAILQ_INIT(&q->high);
		TAILQ_INIT(&q->low);
		TAILQ_INIT(&q->started);
		s->queue = q;
	}
	return q;
}

/* Whether a fetch of prio may start now, with the slots taken. */
static bool
slot_free(const struct source_queue *q, enum source_priority prio)
{
	unsigned limit = prio == SOURCE_PRIO_HIGH ? SOURCE_MAX_IN_FLIGHT
						  : SOURCE_MAX_IN_FLIGHT - SOURCE_RESERVED_HIGH;

	return q->in_flight < limit;
}

static void call_done(void *arg, struct token_result *res);

/* Starts call (waiting no more); on failure it is still the caller's. */
static int
call_start(struct source_queue *q, struct source_call *call, const char *resource)
{
	int r;

	q->in_flight++;
	TAILQ_INSERT_TAIL(&q->started, call, link);
	r = call->s->ops->fetch(call->s, resource, call_done, call);
	if (r < 0) {
		TAILQ_REMOVE(&q->started, call, link);
		q->in_flight--;
	}
	return r;
}

/* Starts waiting fetches while there are slots, the high ones first. */
static void
pump(struct source *s)
{
	struct source_queue *q = s->queue;
	struct source_call *call;

	for (;;) {
		struct source_calls *list;
		char *resource;
		int r;

		if (!TAILQ_EMPTY(&q->high) && slot_free(q, SOURCE_PRIO_HIGH))
			list = &q->high;
		else if (TAILQ_EMPTY(&q->high) && !TAILQ_EMPTY(&q->low) &&
			 slot_free(q, SOURCE_PRIO_LOW))
			list = &q->low;
		else
			return;
		call = TAILQ_FIRST(list);
		TAILQ_REMOVE(list, call, link);
		if (list == &q->low)
			q->n_low--;
		resource = call->resource;
		call->resource = NULL;
		r = call_start(q, call, resource);
		free(resource);
		if (r < 0) {
			struct token_result res;

			/* reported like an upstream failure; from the loop, as done must be */
			token_result_start_failed(&res, r);
			call->done(call->arg, &res);
			token_result_clear(&res);
			call_free(call);
		}
	}
}

static void
call_done(void *arg, struct token_result *res)
{
	struct source_call *call = arg;
	struct source *s = call->s;
	struct source_queue *q = s->queue;
	source_done_fn *done = call->done;
	void *done_arg = call->arg;

	TAILQ_REMOVE(&q->started, call, link);
	q->in_flight--;
	call_free(call);
	/* the freed slot goes to those waiting first, then to whatever done starts */
	pump(s);
	done(done_arg, res);
}

int
source_fetch_prio(struct source *s, const char *resource, enum source_priority prio,
		  source_done_fn *done, void *arg)
{
	struct source_queue *q;
	struct source_call *call;
	bool now;
	int r;

	if (s->ops->fetch_prio != NULL)
		return s->ops->fetch_prio(s, resource, prio, done, arg);
	if (!queued_here(s))
		return s->ops->fetch(s, resource, done, arg);
	if (resource == NULL || done == NULL)
		return -EINVAL;
	q = queue_get(s);
	if (q == NULL)
		return -ENOMEM;
	/* it starts now unless a slot is missing or one of its priority or higher waits */
	now = slot_free(q, prio) && TAILQ_EMPTY(&q->high) &&
	      (prio == SOURCE_PRIO_HIGH || TAILQ_EMPTY(&q->low));
	if (!now && prio == SOURCE_PRIO_LOW && q->n_low >= SOURCE_MAX_QUEUED_LOW)
		return -ENOBUFS;
	call = calloc(1, sizeof(*call));
	if (call == NULL)
		return -ENOMEM;
	*call = (struct source_call){.s = s, .done = done, .arg = arg, .prio = prio};
	if (now) {
		r = call_start(q, call, resource);
		if (r < 0)
			call_free(call);
		return r;
	}
	call->resource = strdup(resource);
	if (call->resource == NULL) {
		free(call);
		return -ENOMEM;
	}
	if (prio == SOURCE_PRIO_HIGH) {
		TAILQ_INSERT_TAIL(&q->high, call, link);
	} else {
		TAILQ_INSERT_TAIL(&q->low, call, link);
		q->n_low++;
	}
	return 0;
}

int
source_fetch(struct source *s, const char *resource, source_done_fn *done, void *arg)
{
	return source_fetch_prio(s, resource, SOURCE_PRIO_HIGH, done, arg);
}

static struct source_call *
calls_find(struct source_calls *list, source_done_fn *done, void *arg)
{
	struct source_call *call;

	TAILQ_FOREACH(call, list, link)
	{
		if (call->done == done && call->arg == arg)
			return call;
	}
	return NULL;
}

int
source_cancel(struct source *s, source_done_fn *done, void *arg)
{
	struct source_queue *q = s->queue;
	struct source_call *call;

	if (s->ops->cancel != NULL)
		return s->ops->cancel(s, done, arg);
	if (q == NULL)
		return -ENOENT;
	if ((call = calls_find(&q->high, done, arg)) != NULL) {
		TAILQ_REMOVE(&q->high, call, link);
	} else if ((call = calls_find(&q->low, done, arg)) != NULL) {
		TAILQ_REMOVE(&q->low, call, link);
		q->n_low--;
	} else {
		return calls_find(&q->started, done, arg) != NULL ? -EBUSY : -ENOENT;
	}
	call_free(call);
	return 0;
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
