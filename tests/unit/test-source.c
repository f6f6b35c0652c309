/*
 * Unit tests for daemon/source.c: the queue in front of sources without one
 * of their own (oauth2, entra-*), driven through a fake source whose fetches
 * finish when the test says so.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "source.h"

#define MAX_STARTED 256

struct fake_source {
	struct source s; /* first */
	int fail_next;	 /* the next fetch fails synchronously with this */
	struct {
		source_done_fn *done;
		void *arg;
		char resource[32];
	} started[MAX_STARTED];
	int n_started;	/* ever */
	int first_open; /* index of the oldest not finished */
};

static int
fake_fetch(struct source *s, const char *resource, source_done_fn *done, void *arg)
{
	struct fake_source *f = (struct fake_source *)s;

	if (f->fail_next) {
		int r = f->fail_next;

		f->fail_next = 0;
		return r;
	}
	assert_true(f->n_started < MAX_STARTED);
	f->started[f->n_started].done = done;
	f->started[f->n_started].arg = arg;
	snprintf(f->started[f->n_started].resource, sizeof(f->started[0].resource), "%s", resource);
	f->n_started++;
	return 0;
}

static void
fake_free(struct source *s)
{
	free(s);
}

static const struct source_ops fake_ops = {
    .kind = "oauth2",
    .fetch = fake_fetch,
    .free = fake_free,
};

static struct config_identity fake_id = {.name = "app", .source = CONFIG_SOURCE_OAUTH2};

static struct fake_source *
fake_new(void)
{
	struct fake_source *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	f->s.ops = &fake_ops;
	f->s.id = &fake_id;
	return f;
}

/* Finishes the oldest started fetch (with an error: the queue does not look). */
static void
finish_oldest(struct fake_source *f)
{
	struct token_result r;
	int i = f->first_open++;

	assert_true(i < f->n_started);
	token_result_init(&r);
	r.error = -EIO;
	f->started[i].done(f->started[i].arg, &r);
	token_result_clear(&r);
}

static int
in_flight(const struct fake_source *f)
{
	return f->n_started - f->first_open;
}

struct calls {
	int n;
	int err; /* of the last */
};

static void
on_done(void *arg, struct token_result *r)
{
	struct calls *c = arg;

	c->n++;
	c->err = r->error;
}

static void
test_queue_order_and_reserve(void **state)
{
	struct fake_source *f = fake_new();
	struct calls c = {0}, x = {0}, y = {0}, h5 = {0};
	const int low_slots = SOURCE_MAX_IN_FLIGHT - SOURCE_MAX_IN_FLIGHT / 4;
	char res[32];

	(void)state;
	/* new dynamic resources take the slots they may, then wait */
	for (int i = 0; i < low_slots; i++) {
		snprintf(res, sizeof(res), "low%d", i);
		assert_int_equal(source_fetch_prio(&f->s, res, SOURCE_PRIO_LOW, on_done, &c), 0);
	}
	assert_int_equal(in_flight(f), low_slots);
	assert_int_equal(source_fetch_prio(&f->s, "x", SOURCE_PRIO_LOW, on_done, &x), 0);
	assert_int_equal(in_flight(f), low_slots);
	/* configured audiences still start at once, up to every slot */
	for (int i = low_slots; i < SOURCE_MAX_IN_FLIGHT; i++) {
		snprintf(res, sizeof(res), "high%d", i);
		assert_int_equal(source_fetch(&f->s, res, on_done, &c), 0);
	}
	assert_int_equal(in_flight(f), SOURCE_MAX_IN_FLIGHT);
	assert_int_equal(source_fetch(&f->s, "h5", on_done, &h5), 0);
	assert_int_equal(source_fetch_prio(&f->s, "y", SOURCE_PRIO_LOW, on_done, &y), 0);
	assert_int_equal(in_flight(f), SOURCE_MAX_IN_FLIGHT);
	/* a slot frees: the waiting configured audience goes first, though the low came first */
	finish_oldest(f);
	assert_int_equal(in_flight(f), SOURCE_MAX_IN_FLIGHT);
	assert_string_equal(f->started[f->n_started - 1].resource, "h5");
	/* low ones start only once they leave the reserved slots free */
	while (in_flight(f) > low_slots)
		finish_oldest(f);
	assert_int_equal(x.n + y.n, 0);
	finish_oldest(f);
	assert_string_equal(f->started[f->n_started - 1].resource, "x");
	/* y is withdrawn while waiting: never started, never answered */
	assert_int_equal(source_cancel(&f->s, on_done, &y), 0);
	assert_int_equal(source_cancel(&f->s, on_done, &y), -ENOENT);
	assert_int_equal(source_cancel(&f->s, on_done, &x), -EBUSY);
	while (in_flight(f) > 0)
		finish_oldest(f);
	assert_int_equal(y.n, 0);
	assert_int_equal(x.n, 1);
	assert_int_equal(h5.n, 1);
	for (int i = 0; i < f->n_started; i++)
		assert_string_not_equal(f->started[i].resource, "y");
	source_free(&f->s);
}

static void
test_queue_bound_and_failures(void **state)
{
	struct fake_source *f = fake_new();
	struct calls c = {0}, q = {0}, h = {0};
	char res[32];

	(void)state;
	for (int i = 0; i < SOURCE_MAX_IN_FLIGHT; i++) {
		snprintf(res, sizeof(res), "h%d", i);
		assert_int_equal(source_fetch(&f->s, res, on_done, &c), 0);
	}
	for (int i = 0; i < SOURCE_MAX_QUEUED_LOW; i++) {
		snprintf(res, sizeof(res), "q%d", i);
		assert_int_equal(source_fetch_prio(&f->s, res, SOURCE_PRIO_LOW, on_done, &q), 0);
	}
	/* the queue of new resources is full: fail fast; configured audiences still wait */
	assert_int_equal(source_fetch_prio(&f->s, "over", SOURCE_PRIO_LOW, on_done, &q), -ENOBUFS);
	assert_int_equal(source_fetch(&f->s, "high", on_done, &h), 0);
	assert_int_equal(q.n + h.n, 0);
	/* a waiting fetch that cannot start is answered from the loop, like an upstream error */
	f->fail_next = -EMFILE;
	finish_oldest(f);
	assert_int_equal(h.n, 1);
	assert_int_equal(h.err, -EMFILE);
	/* a direct start that fails is the caller's to handle: nothing is kept */
	source_free(&f->s); /* waiting and started ones are freed untold: ASan checks */
	assert_int_equal(q.n, 0);

	f = fake_new();
	f->fail_next = -EIO;
	assert_int_equal(source_fetch(&f->s, "a", on_done, &c), -EIO);
	assert_int_equal(source_cancel(&f->s, on_done, &c), -ENOENT);
	assert_int_equal(source_fetch_prio(&f->s, "", SOURCE_PRIO_LOW, NULL, NULL), -EINVAL);
	source_free(&f->s);
}

/* A dev source answers in the loop's next turn: nothing is queued in front of it. */
static void
test_dev_is_not_queued(void **state)
{
	static struct config_identity dev = {.name = "d", .source = CONFIG_SOURCE_DEV};
	struct fake_source *f = fake_new();
	struct calls c = {0};
	char res[32];

	(void)state;
	f->s.id = &dev;
	for (int i = 0; i < 3 * SOURCE_MAX_IN_FLIGHT; i++) {
		snprintf(res, sizeof(res), "r%d", i);
		assert_int_equal(source_fetch_prio(&f->s, res, SOURCE_PRIO_LOW, on_done, &c), 0);
	}
	assert_int_equal(in_flight(f), 3 * SOURCE_MAX_IN_FLIGHT);
	assert_null(f->s.queue);
	assert_int_equal(source_cancel(&f->s, on_done, &c), -ENOENT);
	source_free(&f->s);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_queue_order_and_reserve),
	    cmocka_unit_test(test_queue_bound_and_failures),
	    cmocka_unit_test(test_dev_is_not_queued),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
