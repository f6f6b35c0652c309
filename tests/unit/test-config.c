/* Unit tests for daemon/config.c: defaults, every key, every error with its FILE:LINE. */
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "log.h"

#define IMDS "[identity \"vm\"]\nsource = azure-imds\n"

/* Loads text as "t.conf"; returns the result, *errs gets what was printed. */
static int
load(const char *text, struct config **out, char **errs)
{
	size_t len = 0;
	FILE *f = open_memstream(errs, &len);
	int r;

	assert_non_null(f);
	r = config_load_string(out, "t.conf", text, f);
	fclose(f);
	return r;
}

/* Asserts that text is rejected with exactly the expected error output. */
static void
expect_errors(const char *text, const char *expected)
{
	struct config *c = NULL;
	char *errs = NULL;
	int r;

	r = load(text, &c, &errs);
	if (strcmp(errs, expected) != 0)
		print_error("config:\n%s\nexpected:\n%s\ngot:\n%s\n", text, expected, errs);
	assert_string_equal(errs, expected);
	assert_int_equal(r, -EINVAL);
	assert_null(c);
	free(errs);
}

/* Asserts that text loads without a word on errs. */
static struct config *
expect_ok(const char *text)
{
	struct config *c = NULL;
	char *errs = NULL;
	int r;

	r = load(text, &c, &errs);
	if (r != 0)
		print_error("config:\n%s\nerrors:\n%s\n", text, errs);
	assert_int_equal(r, 0);
	assert_string_equal(errs, "");
	assert_non_null(c);
	free(errs);
	return c;
}

static char *
cat(const char *a, const char *b)
{
	char *s = NULL;

	assert_true(asprintf(&s, "%s%s", a, b) >= 0);
	return s;
}

static void
test_full(void **state)
{
	struct config *c = expect_ok("; every key\n"
				     "[bearerd]\n"
				     "socket = /tmp/b.sock\n"
				     "socket_mode = 0600\n"
				     "socket_group = root\n"
				     "log_level = debug\n"
				     "min_validity = 120\n"
				     "refresh_margin = 600\n"
				     "max_entries = 50\n"
				     "idle_timeout = 60\n"
				     "wait_timeout = 300\n"
				     "\n"
				     "[identity \"vm\"]\n"
				     "source = azure-imds\n"
				     "endpoint = https://imds.test:8443/token\n"
				     "client_id = 00000000-0000-0000-0000-000000000001\n"
				     "timeout = 120\n"
				     "dynamic_resources = on\n"
				     "\n"
				     "[identity \"dev.local_1\"]\n"
				     "source = dev\n"
				     "issuer = https://issuer.test\n"
				     "subject = me\n"
				     "roles = Sample.Read\tSample.Write  Sample.Delete\n"
				     "lifetime = 600\n"
				     "\n"
				     "[audience \"apim\"]\n"
				     "identity = vm\n"
				     "resource = api://apim-managedidentity-nwe-i2jdr ; echoed\n"
				     "prefetch = yes\n"
				     "allow_uids = 0 root 1000\n"
				     "allow_gids = root 42\n"
				     "[audience \"later\"]\n"
				     "identity = dev.local_1\n"
				     "resource = https://management.azure.com/.default?x=1;y=2\n");
	const struct config_identity *vm, *dev;
	const struct config_audience *a;

	assert_string_equal(c->path, "t.conf");
	assert_string_equal(c->socket, "/tmp/b.sock");
	assert_int_equal(c->socket_mode, 0600);
	assert_string_equal(c->socket_group, "root");
	assert_int_equal(c->log_level, LOG_LEVEL_DEBUG);
	assert_int_equal(c->min_validity, 120);
	assert_int_equal(c->refresh_margin, 600);
	assert_int_equal(c->max_entries, 50);
	assert_int_equal(c->idle_timeout, 60);
	assert_int_equal(c->wait_timeout, 300);
	assert_int_equal(c->n_identities, 2);
	assert_int_equal(c->n_audiences, 2);

	vm = config_identity_find(c, "vm");
	assert_non_null(vm);
	assert_int_equal(vm->source, CONFIG_SOURCE_AZURE_IMDS);
	assert_int_equal(vm->line, 13);
	assert_string_equal(vm->endpoint, "https://imds.test:8443/token");
	assert_string_equal(vm->client_id, "00000000-0000-0000-0000-000000000001");
	assert_null(vm->object_id);
	assert_null(vm->msi_res_id);
	assert_null(vm->ca_file);
	assert_int_equal(vm->timeout, 120);
	assert_true(vm->dynamic_resources);
	assert_null(vm->roles);

	dev = config_identity_find(c, "dev.local_1");
	assert_non_null(dev);
	assert_int_equal(dev->source, CONFIG_SOURCE_DEV);
	assert_string_equal(dev->issuer, "https://issuer.test");
	assert_string_equal(dev->subject, "me");
	assert_string_equal(dev->roles[0], "Sample.Read");
	assert_string_equal(dev->roles[1], "Sample.Write");
	assert_string_equal(dev->roles[2], "Sample.Delete");
	assert_null(dev->roles[3]);
	assert_int_equal(dev->lifetime, 600);
	assert_false(dev->dynamic_resources);
	assert_null(dev->endpoint);

	a = config_audience_find(c, "apim");
	assert_non_null(a);
	assert_int_equal(a->line, 27);
	assert_ptr_equal(a->identity, vm);
	assert_string_equal(a->identity_name, "vm");
	assert_string_equal(a->resource, "api://apim-managedidentity-nwe-i2jdr");
	assert_true(a->prefetch);
	assert_int_equal(a->n_allow_uids, 3);
	assert_int_equal(a->allow_uids[0], 0);
	assert_int_equal(a->allow_uids[1], 0);
	assert_int_equal(a->allow_uids[2], 1000);
	assert_int_equal(a->n_allow_gids, 2);
	assert_int_equal(a->allow_gids[0], 0);
	assert_int_equal(a->allow_gids[1], 42);

	a = config_audience_find(c, "later");
	assert_non_null(a);
	assert_ptr_equal(a->identity, dev);
	/* ";" without a blank before it is not a comment */
	assert_string_equal(a->resource, "https://management.azure.com/.default?x=1;y=2");
	assert_false(a->prefetch);
	assert_null(a->allow_uids);
	assert_null(a->allow_gids);

	assert_null(config_identity_find(c, "nope"));
	assert_null(config_audience_find(c, "nope"));
	config_free(c);
}

static void
test_defaults(void **state)
{
	struct config *c = expect_ok(IMDS "[identity \"d\"]\nsource = dev\n");
	const struct config_identity *id;

	assert_string_equal(c->socket, "/run/bearerd/bearerd.sock");
	assert_int_equal(c->socket_mode, 0660);
	assert_null(c->socket_group);
	assert_int_equal(c->log_level, LOG_LEVEL_INFO);
	assert_int_equal(c->min_validity, 300);
	assert_int_equal(c->refresh_margin, 900);
	assert_int_equal(c->max_entries, 10000);
	assert_int_equal(c->idle_timeout, 3600);
	assert_int_equal(c->wait_timeout, 5);
	assert_int_equal(c->n_audiences, 0);
	assert_null(c->audiences);

	id = config_identity_find(c, "vm");
	assert_string_equal(id->endpoint, "http://169.254.169.254/metadata/identity/oauth2/token");
	assert_null(id->client_id);
	assert_int_equal(id->timeout, 10);
	assert_false(id->dynamic_resources);

	id = config_identity_find(c, "d");
	assert_string_equal(id->issuer, "bearerd-dev");
	assert_string_equal(id->subject, "d");
	assert_non_null(id->roles);
	assert_null(id->roles[0]);
	assert_int_equal(id->lifetime, 3600);
	assert_string_equal(config_source_name(id->source), "dev");
	assert_string_equal(config_source_name(CONFIG_SOURCE_AZURE_IMDS), "azure-imds");
	config_free(c);
}

/* One file, many mistakes: every one is reported, in line order. */
static void
test_all_errors_reported(void **state)
{
	expect_errors("[bearerd]\n"	       /* 1 */
		      "socket_mode = 0999\n"   /* 2 */
		      "wait_timeout = 0\n"     /* 3 */
		      "colour = blue\n"	       /* 4 */
		      "log_level = loud\n"     /* 5 */
		      "not a key value line\n" /* 6 */
		      "[identity \"vm\"]\n"    /* 7 */
		      "source = azure-imds\n"  /* 8 */
		      "roles = a b\n"	       /* 9 */
		      "timeout = 10s\n"	       /* 10 */
		      "source = dev\n"	       /* 11 */
		      "[weird]\n"	       /* 12 */
		      "whatever = 1\n"	       /* 13 */
		      "[audience \"a\"]\n"     /* 14 */
		      "identity = missing\n"   /* 15 */
		      "prefetch = perhaps\n"   /* 16 */
		      "\n",		       /* 17 */
		      "t.conf:2: socket_mode: expected an octal mode such as 0660, got '0999'\n"
		      "t.conf:3: wait_timeout: 0 is out of range (1..300)\n"
		      "t.conf:4: unknown key 'colour' in [bearerd]\n"
		      "t.conf:5: log_level: expected error, warning, info or debug, got 'loud'\n"
		      "t.conf:6: syntax error: expected 'key = value' or a [section] header\n"
		      "t.conf:9: key 'roles' does not apply to source azure-imds\n"
		      "t.conf:10: timeout: expected a whole number, got '10s'\n"
		      "t.conf:11: duplicate key 'source' (first set on line 8)\n"
		      "t.conf:12: unknown section [weird]\n"
		      "t.conf:14: audience 'a': missing required key 'resource'\n"
		      "t.conf:15: identity: no [identity \"missing\"] section\n"
		      "t.conf:16: prefetch: expected yes or no, got 'perhaps'\n");
}

static void
test_unknown_key_and_section(void **state)
{
	expect_errors(IMDS "colour = red\n[audience \"a\"]\nidentity = vm\nresource = r\nx = 1\n"
			   "[bearerd]\nsockett = /x\n[proxy]\nlisten = 127.0.0.1:3128\n[Bearerd]\n",
		      "t.conf:3: unknown key 'colour' in [identity \"vm\"]\n"
		      "t.conf:7: unknown key 'x' in [audience \"a\"]\n"
		      "t.conf:9: unknown key 'sockett' in [bearerd]\n"
		      "t.conf:10: section [proxy] is not supported by this build yet\n"
		      "t.conf:12: unknown section [Bearerd]\n");
	/* keys are case-sensitive too */
	expect_errors(IMDS "Source = dev\n",
		      "t.conf:3: unknown key 'Source' in [identity \"vm\"]\n");
}

static void
test_duplicates(void **state)
{
	expect_errors("[bearerd]\nsocket = /a\nsocket = /b\n"
		      "[bearerd]\nsocket = /c\n" IMDS "[identity \"vm\"]\nsource = dev\n"
		      "[audience \"a\"]\nidentity = vm\nresource = r\nresource = r\n"
		      "[audience \"a\"]\nidentity = vm\n",
		      "t.conf:3: duplicate key 'socket' (first set on line 2)\n"
		      "t.conf:4: duplicate section [bearerd] (first on line 1)\n"
		      "t.conf:8: duplicate section [identity \"vm\"] (first on line 6)\n"
		      "t.conf:13: duplicate key 'resource' (first set on line 12)\n"
		      "t.conf:14: duplicate section [audience \"a\"] (first on line 10)\n");
	/* an identity and an audience may share a name */
	config_free(expect_ok(IMDS "[audience \"vm\"]\nidentity = vm\nresource = r\n"));
}

static void
test_numbers(void **state)
{
	static const struct {
		const char *line;
		const char *error; /* NULL: accepted */
	} cases[] = {
	    {"min_validity = 0", NULL},
	    {"min_validity = 86400", NULL},
	    {"min_validity = 86401", "min_validity: 86401 is out of range (0..86400)"},
	    {"min_validity = -1", "min_validity: must not be negative, got '-1'"},
	    {"min_validity = +5", "min_validity: expected a whole number, got '+5'"},
	    {"min_validity = 5m", "min_validity: expected a whole number, got '5m'"},
	    {"min_validity = 1 2", "min_validity: expected a whole number, got '1 2'"},
	    {"min_validity = 0x10", "min_validity: expected a whole number, got '0x10'"},
	    {"min_validity =", "min_validity: expected a whole number, got ''"},
	    {"min_validity = 99999999999999999999999",
	     "min_validity: 99999999999999999999999 is out of range (0..86400)"},
	    {"refresh_margin = 0", NULL},
	    {"refresh_margin = -900", "refresh_margin: must not be negative, got '-900'"},
	    {"max_entries = 1", NULL},
	    {"max_entries = 1000000", NULL},
	    {"max_entries = 0", "max_entries: 0 is out of range (1..1000000)"},
	    {"max_entries = 1000001", "max_entries: 1000001 is out of range (1..1000000)"},
	    {"idle_timeout = 1", NULL},
	    {"idle_timeout = 0", "idle_timeout: 0 is out of range (1..2592000)"},
	    {"idle_timeout = 2592001", "idle_timeout: 2592001 is out of range (1..2592000)"},
	    {"wait_timeout = 1", NULL},
	    {"wait_timeout = 301", "wait_timeout: 301 is out of range (1..300)"},
	    {"socket_mode = 0", NULL},
	    {"socket_mode = 777", NULL},
	    {"socket_mode = 0777", NULL},
	    {"socket_mode = 1777", "socket_mode: 1777 is out of range (0..0777)"},
	    {"socket_mode = 99999999999999999999999999",
	     "socket_mode: expected an octal mode such as 0660, got '99999999999999999999999999'"},
	    {"socket_mode = 77777777777777777777777777",
	     "socket_mode: 77777777777777777777777777 is out of range (0..0777)"},
	    {"socket_mode = rw-rw----",
	     "socket_mode: expected an octal mode such as 0660, got 'rw-rw----'"},
	    {"log_level = error", NULL},
	    {"log_level = warning", NULL},
	    {"log_level = info", NULL},
	    {"log_level = INFO", "log_level: expected error, warning, info or debug, got 'INFO'"},
	    {"socket =", "socket: empty value"},
	    {"socket_group = a b", "socket_group: must not contain blanks, got 'a b'"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *text = NULL, *want = NULL;

		assert_true(asprintf(&text, "[bearerd]\n%s\n" IMDS, cases[i].line) > 0);
		if (cases[i].error == NULL) {
			config_free(expect_ok(text));
		} else {
			assert_true(asprintf(&want, "t.conf:2: %s\n", cases[i].error) > 0);
			expect_errors(text, want);
		}
		free(text);
		free(want);
	}

	/* identity numbers: the line of the key */
	expect_errors(IMDS "timeout = 0\n[identity \"d\"]\nsource = dev\nlifetime = 59\n"
			   "[identity \"e\"]\nsource = dev\nlifetime = 86401\n"
			   "[identity \"f\"]\nsource = dev\nlifetime = 60\n",
		      "t.conf:3: timeout: 0 is out of range (1..120)\n"
		      "t.conf:6: lifetime: 59 is out of range (60..86400)\n"
		      "t.conf:9: lifetime: 86401 is out of range (60..86400)\n"
		      "t.conf:12: lifetime (60) must exceed min_validity (300)\n");
	config_free(expect_ok(IMDS "timeout = 1\n"));
	config_free(expect_ok(IMDS "timeout = 120\n"));
	expect_errors(IMDS "timeout = 121\n", "t.conf:3: timeout: 121 is out of range (1..120)\n");
}

static void
test_lifetime_vs_min_validity(void **state)
{
	/* the lifetime line when it is set */
	expect_errors("[bearerd]\nmin_validity = 600\n[identity \"d\"]\nsource = dev\n"
		      "lifetime = 600\n",
		      "t.conf:5: lifetime (600) must exceed min_validity (600)\n");
	/* the min_validity line when the lifetime is the default */
	expect_errors("[identity \"d\"]\nsource = dev\n[bearerd]\nmin_validity = 7200\n",
		      "t.conf:4: lifetime (3600) must exceed min_validity (7200)\n");
	/* azure-imds lifetimes come from upstream */
	config_free(expect_ok("[bearerd]\nmin_validity = 7200\n" IMDS));
	config_free(expect_ok("[bearerd]\nmin_validity = 600\n[identity \"d\"]\nsource = dev\n"
			      "lifetime = 601\n"));
}

static void
test_bool(void **state)
{
	static const char *const yes[] = {"yes", "true", "1", "on", "YES", "True", "On"};
	static const char *const no[] = {"no", "false", "0", "off", "No", "FALSE", "OFF"};

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		char *text = NULL;
		struct config *c;

		assert_true(asprintf(&text, IMDS "dynamic_resources = %s\n", yes[i]) > 0);
		c = expect_ok(text);
		assert_true(c->identities[0].dynamic_resources);
		config_free(c);
		free(text);
		assert_true(asprintf(&text, IMDS "dynamic_resources = %s\n", no[i]) > 0);
		c = expect_ok(text);
		assert_false(c->identities[0].dynamic_resources);
		config_free(c);
		free(text);
	}
	expect_errors(IMDS "dynamic_resources = y\n[audience \"a\"]\nidentity = vm\nresource = r\n"
			   "prefetch = 2\n[identity \"z\"]\nsource = dev\ndynamic_resources =\n",
		      "t.conf:3: dynamic_resources: expected yes or no, got 'y'\n"
		      "t.conf:7: prefetch: expected yes or no, got '2'\n"
		      "t.conf:10: dynamic_resources: expected yes or no, got ''\n");
}

static void
test_selectors(void **state)
{
	struct config *c;

	c = expect_ok(IMDS "object_id = o\n");
	assert_string_equal(c->identities[0].object_id, "o");
	config_free(c);
	c = expect_ok(IMDS "msi_res_id = /subscriptions/x/resourceGroups/y\n");
	assert_string_equal(c->identities[0].msi_res_id, "/subscriptions/x/resourceGroups/y");
	config_free(c);

	expect_errors(IMDS "object_id = o\nclient_id = c\n",
		      "t.conf:4: client_id conflicts with object_id (line 3): set at most one of "
		      "client_id, object_id, msi_res_id\n");
	expect_errors(IMDS "msi_res_id = m\nobject_id = o\nclient_id = c\n",
		      "t.conf:4: object_id conflicts with msi_res_id (line 3): set at most one of "
		      "client_id, object_id, msi_res_id\n"
		      "t.conf:5: client_id conflicts with msi_res_id (line 3): set at most one of "
		      "client_id, object_id, msi_res_id\n");
	expect_errors(IMDS "client_id = a b\n[identity \"b\"]\nsource = azure-imds\nobject_id =\n",
		      "t.conf:3: client_id: must not contain blanks, got 'a b'\n"
		      "t.conf:6: object_id: empty value\n");
}

static void
test_source_keys(void **state)
{
	/* keys of the other source, reported on their own lines, whatever the order */
	expect_errors(
	    "[identity \"d\"]\nroles = x\nclient_id = c\nsource = dev\nendpoint = http://x\n"
	    "lifetime = 600\n[identity \"v\"]\nissuer = i\nsource = azure-imds\n"
	    "subject = s\nlifetime = 600\ntimeout = 5\n",
	    "t.conf:3: key 'client_id' does not apply to source dev\n"
	    "t.conf:5: key 'endpoint' does not apply to source dev\n"
	    "t.conf:8: key 'issuer' does not apply to source azure-imds\n"
	    "t.conf:10: key 'subject' does not apply to source azure-imds\n"
	    "t.conf:11: key 'lifetime' does not apply to source azure-imds\n");
	expect_errors("[identity \"d\"]\nroles = x\n",
		      "t.conf:1: identity 'd': missing required key 'source'\n");
	expect_errors("[identity \"d\"]\nsource = DEV\n",
		      "t.conf:2: source: unknown source 'DEV' (expected dev or azure-imds)\n");
	expect_errors("[identity \"d\"]\nsource =\n",
		      "t.conf:2: source: unknown source '' (expected dev or azure-imds)\n");
}

static void
test_unsupported_source(void **state)
{
	static const char *const sources[] = {"azure-appservice", "entra-secret",
					      "entra-certificate", "entra-federated", "oauth2"};

	for (size_t i = 0; i < sizeof(sources) / sizeof(sources[0]); i++) {
		char *text = NULL, *want = NULL;

		/* the keys of that source are not piled on as unknown keys */
		assert_true(asprintf(&text,
				     IMDS "[identity \"e\"]\ntenant = t\nsource = %s\n"
					  "client_secret_file = /x\n",
				     sources[i]) > 0);
		assert_true(asprintf(&want,
				     "t.conf:5: source %s is not supported by this build yet\n",
				     sources[i]) > 0);
		expect_errors(text, want);
		free(text);
		free(want);
	}
	/* but they are when the source is a supported one */
	expect_errors(IMDS "tenant = t\n", "t.conf:3: unknown key 'tenant' in [identity \"vm\"]\n");
}

static void
test_audiences(void **state)
{
	struct config *c;

	/* the identity may come later in the file */
	c = expect_ok("[audience \"a\"]\nidentity = vm\nresource = r\n" IMDS);
	assert_ptr_equal(c->audiences[0].identity, &c->identities[0]);
	config_free(c);

	expect_errors(IMDS "[audience \"a\"]\n[audience \"b\"]\nidentity = nope\nresource =\n"
			   "[audience \"c\"]\nidentity = bad name\nresource = r\n",
		      "t.conf:3: audience 'a': missing required key 'identity'\n"
		      "t.conf:3: audience 'a': missing required key 'resource'\n"
		      "t.conf:5: identity: no [identity \"nope\"] section\n"
		      "t.conf:6: resource: empty value\n"
		      "t.conf:8: identity: invalid identity name 'bad name'\n");
}

static void
test_allow_ids(void **state)
{
	struct config *c;
	const struct config_audience *a;

	c = expect_ok(IMDS "[audience \"a\"]\nidentity = vm\nresource = r\nallow_uids = root 0\n"
			   "[audience \"b\"]\nidentity = vm\nresource = r\nallow_gids = root 0 7\n"
			   "[audience \"open\"]\nidentity = vm\nresource = r\n");
	a = config_audience_find(c, "a");
	assert_int_equal(a->n_allow_uids, 2);
	assert_int_equal(a->allow_uids[0], 0);
	assert_int_equal(a->allow_uids[1], 0);
	assert_null(a->allow_gids);
	assert_true(config_audience_allows(a, 0, 1000));
	assert_false(config_audience_allows(a, 1000, 0));

	a = config_audience_find(c, "b");
	assert_int_equal(a->n_allow_gids, 3);
	assert_int_equal(a->allow_gids[2], 7);
	assert_true(config_audience_allows(a, 1000, 7));
	assert_false(config_audience_allows(a, 0, 1000));

	a = config_audience_find(c, "open");
	assert_true(config_audience_allows(a, 1234, 1234));
	config_free(c);

	expect_errors(IMDS "[audience \"a\"]\nidentity = vm\nresource = r\n"
			   "allow_uids = root no-such-user-bearerd 4294967295\n"
			   "allow_gids = no-such-group-bearerd 99999999999999999999\n"
			   "[audience \"b\"]\nidentity = vm\nresource = r\nallow_uids =\n",
		      "t.conf:6: allow_uids: unknown user 'no-such-user-bearerd'\n"
		      "t.conf:6: allow_uids: id 4294967295 is out of range\n"
		      "t.conf:7: allow_gids: unknown group 'no-such-group-bearerd'\n"
		      "t.conf:7: allow_gids: id 99999999999999999999 is out of range\n"
		      "t.conf:11: allow_uids: empty list\n");
}

static void
test_section_headers(void **state)
{
	char name128[129], *text = NULL, *want = NULL;
	struct config *c;

	memset(name128, 'n', 128);
	name128[128] = '\0';
	assert_true(asprintf(&text, "[identity \"%s\"]\nsource = dev\n", name128) > 0);
	c = expect_ok(text);
	assert_string_equal(c->identities[0].name, name128);
	config_free(c);
	free(text);
	assert_true(asprintf(&text, IMDS "[audience \"%sn\"]\nidentity = vm\n", name128) > 0);
	assert_true(
	    asprintf(&want,
		     "t.conf:3: invalid audience name '%sn': use 1 to 128 of A-Z a-z 0-9 . _ "
		     "-\n",
		     name128) > 0);
	expect_errors(text, want);
	free(text);
	free(want);

	/* blanks around the parts are fine */
	config_free(expect_ok("[ identity   \"vm\" ] ; comment\nsource = azure-imds\n"));

	expect_errors("[identity vm]\nsource = azure-imds\n" /* 1 */
		      "[identity]\nsource = dev\n"	     /* 3 */
		      "[identity \"\"]\n"		     /* 5 */
		      "[identity \"a b\"]\n"		     /* 6 */
		      "[identity \"a/b\"]\n"		     /* 7 */
		      "[identity \"x\"\n"		     /* 8 */
		      "[identity \"x\"] trailing\n"	     /* 9 */
		      "[identity \"x\" \"y\"]\n"	     /* 10 */
		      "[identity\"x\"]\n"		     /* 11 */
		      "[bearerd \"x\"]\n"		     /* 12 */
		      "[audience 'a']\n"		     /* 13 */
		      "[]\n",				     /* 14 */
		      "t.conf:1: section name must be quoted: [identity \"vm\"]\n"
		      "t.conf:3: section [identity] needs a name: [identity \"NAME\"]\n"
		      "t.conf:5: invalid identity name '': use 1 to 128 of A-Z a-z 0-9 . _ -\n"
		      "t.conf:6: invalid identity name 'a b': use 1 to 128 of A-Z a-z 0-9 . _ -\n"
		      "t.conf:7: invalid identity name 'a/b': use 1 to 128 of A-Z a-z 0-9 . _ -\n"
		      "t.conf:8: bad section header: missing ']'\n"
		      "t.conf:9: unexpected text after section header: 'trailing'\n"
		      "t.conf:10: bad section header: expected [identity \"NAME\"]\n"
		      "t.conf:11: bad section header: expected [identity \"NAME\"] or "
		      "[audience \"NAME\"]\n"
		      "t.conf:12: section [bearerd] takes no name\n"
		      "t.conf:13: section name must be quoted: [audience \"'a'\"]\n"
		      "t.conf:13: invalid audience name ''a'': use 1 to 128 of A-Z a-z 0-9 . _ -\n"
		      "t.conf:14: unknown section []\n");
}

static void
test_syntax(void **state)
{
	/* an indented line is a key of its own, never a continuation */
	expect_errors(IMDS "client_id = a\n   object_id = b\n",
		      "t.conf:4: object_id conflicts with client_id (line 3): set at most one of "
		      "client_id, object_id, msi_res_id\n");
	expect_errors("socket = /x\n" IMDS "= value\njust words\nkey ; = 1\n\x01 = 2\n",
		      "t.conf:1: key 'socket' outside of any section\n"
		      "t.conf:4: missing key name before '='\n"
		      "t.conf:5: syntax error: expected 'key = value' or a [section] header\n"
		      "t.conf:6: syntax error: expected 'key = value' or a [section] header\n"
		      "t.conf:7: control character in line\n");
	/* ":" separates too, comments with ; and # at the start of a line */
	config_free(expect_ok("# comment\n; comment\n   ; indented comment\n[identity \"vm\"]\n"
			      "source: azure-imds\n"));
}

static void
test_line_endings(void **state)
{
	struct config *c;

	c = expect_ok("\xEF\xBB\xBF[identity \"vm\"]\r\nsource = azure-imds\r\n"
		      "[audience \"a\"]\r\nidentity = vm\r\nresource = r  \r\n");
	assert_string_equal(c->audiences[0].resource, "r");
	config_free(c);
	/* no final newline; the line numbers still count */
	expect_errors(IMDS "\n\nbogus = 1", "t.conf:5: unknown key 'bogus' in [identity \"vm\"]\n");
	expect_errors("[identity \"vm\"]\nsource = azure\rimds\n",
		      "t.conf:2: control character in line\n");
}

static void
test_long_lines(void **state)
{
	char value[301], *text = NULL, *long_line = NULL, *want = NULL;
	struct config *c;

	/* longer than inih's 200-byte buffer: same rules as short lines */
	memset(value, 'r', 300);
	value[300] = '\0';
	assert_true(asprintf(&text,
			     IMDS
			     "msi_res_id = %s    ; a comment\n[audience \"a\"]\nidentity = vm\n"
			     "resource = %s;not a comment\nprefetch:%200s yes\n",
			     value, value, "") > 0);
	c = expect_ok(text);
	assert_string_equal(c->identities[0].msi_res_id, value);
	assert_true(c->audiences[0].prefetch);
	free(text);
	text = cat(value, ";not a comment");
	assert_string_equal(c->audiences[0].resource, text);
	config_free(c);
	free(text);

	/* and their errors have the right line */
	assert_true(asprintf(&text, IMDS "\nbogus%s = 1\nclient_id = %s x\n", value, value) > 0);
	assert_true(asprintf(&want,
			     "t.conf:4: unknown key 'bogus%.59s' in [identity \"vm\"]\n"
			     "t.conf:5: client_id: must not contain blanks, got '%.64s'\n",
			     value, value) > 0);
	expect_errors(text, want);
	free(text);
	free(want);

	/* the bound */
	long_line = calloc(1, 4100);
	assert_non_null(long_line);
	memset(long_line, 'x', 4097);
	memcpy(long_line, "roles = ", 8);
	text = cat("[identity \"d\"]\nsource = dev\n", long_line);
	expect_errors(text, "t.conf:3: line too long (more than 4096 bytes)\n");
	free(text);
	long_line[4096] = '\0';
	text = cat("[identity \"d\"]\nsource = dev\n", long_line);
	c = expect_ok(text);
	assert_int_equal(strlen(c->identities[0].roles[0]), 4096 - 8);
	config_free(c);
	free(text);
	free(long_line);
}

static void
test_file_too_large(void **state)
{
	size_t n = 1024 * 1024 + 100;
	char *text = malloc(n + 1);
	char *errs = NULL;
	struct config *c = NULL;

	assert_non_null(text);
	memcpy(text, IMDS, strlen(IMDS));
	memset(text + strlen(IMDS), '\n', n - strlen(IMDS));
	text[n] = '\0';
	assert_int_equal(load(text, &c, &errs), -EINVAL);
	assert_null(c);
	assert_string_equal(errs, "t.conf:1048543: file too large (more than 1048576 bytes)\n");
	free(errs);
	free(text);
}

static void
test_endpoint(void **state)
{
	config_free(
	    expect_ok(IMDS "endpoint = http://127.0.0.1:8080/metadata/identity/oauth2/token\n"));
	config_free(expect_ok(IMDS "endpoint = https://x\n"));
	expect_errors(IMDS "endpoint = ftp://x\n[identity \"b\"]\nsource = azure-imds\n"
			   "endpoint = http://\n[identity \"c\"]\nsource = azure-imds\n"
			   "endpoint = http://a b\n",
		      "t.conf:3: endpoint: expected an http:// or https:// URL, got 'ftp://x'\n"
		      "t.conf:6: endpoint: expected an http:// or https:// URL, got 'http://'\n"
		      "t.conf:9: endpoint: must not contain blanks, got 'http://a b'\n");
	expect_errors(IMDS "ca_file = /nonexistent/bearerd-ca.pem\n",
		      "t.conf:3: ca_file: cannot read '/nonexistent/bearerd-ca.pem': No such file "
		      "or directory\n");
}

static void
test_socket(void **state)
{
	char path[120], *text = NULL;

	memset(path, 'a', sizeof(path));
	path[0] = '/';
	path[107] = '\0';
	assert_true(asprintf(&text, "[bearerd]\nsocket = %s\n" IMDS, path) > 0);
	config_free(expect_ok(text));
	free(text);
	path[107] = 'a';
	path[108] = '\0';
	assert_true(asprintf(&text, "[bearerd]\nsocket = %s\n" IMDS, path) > 0);
	expect_errors(text, "t.conf:2: socket: path is longer than 107 bytes\n");
	free(text);
}

static void
test_no_identity(void **state)
{
	expect_errors("", "t.conf:1: no [identity \"NAME\"] section: at least one identity is "
			  "required\n");
	expect_errors("[bearerd]\nsocket = /x\n\n", "t.conf:3: no [identity \"NAME\"] section: at "
						    "least one identity is required\n");
}

static void
test_dev_config(void **state)
{
	struct config *c = NULL;
	const struct config_identity *id;
	const struct config_audience *a;
	char *errs = NULL;
	size_t len;
	FILE *f = open_memstream(&errs, &len);

	assert_int_equal(config_load_dev(&c, "/tmp/dev.sock", f), 0);
	fclose(f);
	assert_string_equal(errs, "");
	free(errs);
	assert_string_equal(c->path, "<dev>");
	assert_string_equal(c->socket, "/tmp/dev.sock");
	id = config_identity_find(c, "dev");
	assert_non_null(id);
	assert_int_equal(id->source, CONFIG_SOURCE_DEV);
	assert_string_equal(id->roles[0], "Sample.Read");
	assert_string_equal(id->roles[1], "Sample.Write");
	assert_null(id->roles[2]);
	assert_int_equal(id->lifetime, 3600);
	assert_true(id->dynamic_resources);
	a = config_audience_find(c, "demo");
	assert_non_null(a);
	assert_ptr_equal(a->identity, id);
	assert_string_equal(a->resource, "api://bearerd-demo");
	assert_true(a->prefetch);
	assert_null(config_free(c));
	assert_null(config_free(NULL));
}

/* Files: the path is FILE in messages; unreadable files give -errno. */
static void
test_files(void **state)
{
	char dir[] = "/tmp/test-config.XXXXXX";
	char *path = NULL, *errs = NULL, *want = NULL;
	struct config *c = NULL;
	size_t len;
	FILE *f;

	assert_non_null(mkdtemp(dir));
	assert_true(asprintf(&path, "%s/bearerd.conf", dir) > 0);

	f = open_memstream(&errs, &len);
	assert_int_equal(config_load(&c, path, f), -ENOENT);
	fclose(f);
	assert_null(c);
	assert_true(asprintf(&want, "%s: No such file or directory\n", path) > 0);
	assert_string_equal(errs, want);
	free(errs);
	free(want);

	f = fopen(path, "w");
	assert_non_null(f);
	fputs("[bearerd]\nmax_entries = 0\n" IMDS "lifetime = 100\n", f);
	fclose(f);
	f = open_memstream(&errs, &len);
	assert_int_equal(config_load(&c, path, f), -EINVAL);
	fclose(f);
	assert_null(c);
	assert_true(asprintf(&want,
			     "%s:2: max_entries: 0 is out of range (1..1000000)\n"
			     "%s:5: key 'lifetime' does not apply to source azure-imds\n",
			     path, path) > 0);
	assert_string_equal(errs, want);
	free(errs);
	free(want);

	f = fopen(path, "w");
	assert_non_null(f);
	fputs(IMDS "[audience \"a\"]\nidentity = vm\nresource = r\n", f);
	fclose(f);
	f = open_memstream(&errs, &len);
	assert_int_equal(config_load(&c, path, f), 0);
	fclose(f);
	assert_string_equal(errs, "");
	assert_string_equal(c->path, path);
	free(errs);
	config_free(c);

	/* a directory cannot be read */
	f = open_memstream(&errs, &len);
	assert_int_equal(config_load(&c, dir, f), -EISDIR);
	fclose(f);
	assert_non_null(strstr(errs, "Is a directory"));
	free(errs);

	assert_int_equal(unlink(path), 0);
	assert_int_equal(rmdir(dir), 0);
	free(path);
}

/* The shipped files load: found relative to this source file, or to the current directory. */
static void
test_shipped_files(void **state)
{
	static const char *const files[] = {"config/bearerd.conf", "config/examples/dev.conf",
					    "config/examples/vm-imds.conf",
					    "config/examples/compat.conf"};
	char root[PATH_MAX];
	const char *slash;
	bool found = false;

	snprintf(root, sizeof(root), "%s", __FILE__);
	slash = strstr(root, "tests/unit/test-config.c");
	if (slash != NULL)
		root[slash - root] = '\0';
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
			char *path = NULL, *errs = NULL;
			struct config *c = NULL;
			size_t len;
			FILE *f;
			int r;

			assert_true(asprintf(&path, "%s%s", pass == 0 ? root : "", files[i]) > 0);
			if (access(path, R_OK) < 0) {
				free(path);
				continue;
			}
			found = true;
			f = open_memstream(&errs, &len);
			r = config_load(&c, path, f);
			fclose(f);
			if (r != 0)
				print_error("%s:\n%s", path, errs);
			assert_int_equal(r, 0);
			assert_true(c->n_identities > 0);
			config_free(c);
			free(errs);
			free(path);
		}
		if (found)
			break;
	}
	if (!found)
		skip();
}

static void
test_compat(void **state)
{
	struct config *c;
	const struct sockaddr_in6 *in6;

	/* no [compat]: nothing listens */
	c = expect_ok(IMDS);
	assert_int_equal(c->compat.line, 0);
	assert_null(c->compat.imds_listen);
	config_free(c);

	c = expect_ok("[bearerd]\nsocket = /run/b/s.sock\n" IMDS
		      "[identity \"ua\"]\nsource = azure-imds\nclient_id = abc\n"
		      "[compat]\nidentity = ua\nimds_listen = 127.0.0.1:50342\n"
		      "appservice_listen = [::1]:0\ndynamic_resources = yes\n"
		      "resources = https://a https://b\n");
	assert_int_equal(c->compat.line, 8);
	assert_ptr_equal(c->compat.identity, &c->identities[1]);
	assert_string_equal(c->compat.imds_listen->text, "127.0.0.1:50342");
	assert_int_equal(c->compat.imds_listen->addr.ss_family, AF_INET);
	in6 = (const struct sockaddr_in6 *)&c->compat.appservice_listen->addr;
	assert_int_equal(in6->sin6_family, AF_INET6);
	assert_int_equal(in6->sin6_port, 0);
	assert_true(config_addr_is_loopback(&c->compat.appservice_listen->addr));
	/* the secret defaults to a file beside the socket */
	assert_string_equal(c->compat.appservice_secret_file, "/run/b/identity-header");
	assert_true(c->compat.dynamic_resources);
	assert_string_equal(c->compat.resources[0], "https://a");
	assert_string_equal(c->compat.resources[1], "https://b");
	assert_null(c->compat.resources[2]);
	assert_false(c->compat.allow_non_loopback);
	config_free(c);

	/* the only identity is the default; localhost is 127.0.0.1 */
	c = expect_ok(IMDS "[compat]\nimds_listen = localhost:1\n");
	assert_ptr_equal(c->compat.identity, &c->identities[0]);
	assert_false(c->compat.dynamic_resources);
	assert_null(c->compat.resources);
	assert_null(c->compat.appservice_secret_file);
	config_free(c);

	c = expect_ok(IMDS "[compat]\nimds_listen = 0.0.0.0:1\nallow_non_loopback = yes\n");
	assert_false(config_addr_is_loopback(&c->compat.imds_listen->addr));
	config_free(c);

	expect_errors(IMDS "[identity \"b\"]\nsource = dev\n[compat]\nimds_listen = 127.0.0.1:1\n",
		      "t.conf:5: [compat]: missing key 'identity' (there are 2 identities)\n");
	expect_errors(IMDS "[compat]\nidentity = nope\n",
		      "t.conf:3: [compat]: set imds_listen, appservice_listen or both\n"
		      "t.conf:4: identity: no [identity \"nope\"] section\n");
	expect_errors(IMDS "[compat]\nimds_listen = 10.0.0.1:80\nappservice_listen = "
			   "[::]:80\nappservice_secret_file = rel\n",
		      "t.conf:4: imds_listen: 10.0.0.1:80 is not a loopback address (set "
		      "allow_non_loopback = yes to listen there)\n"
		      "t.conf:5: appservice_listen: [::]:80 is not a loopback address (set "
		      "allow_non_loopback = yes to listen there)\n"
		      "t.conf:6: appservice_secret_file: expected an absolute path, got 'rel'\n");
	expect_errors(IMDS "[compat]\nimds_listen = 127.0.0.1\nappservice_listen = "
			   "127.0.0.1:70000\nimds_listen = host:1\n",
		      "t.conf:4: imds_listen: expected ADDRESS:PORT such as 127.0.0.1:50342, got "
		      "'127.0.0.1'\n"
		      "t.conf:5: appservice_listen: 70000 is out of range (0..65535)\n"
		      "t.conf:6: duplicate key 'imds_listen' (first set on line 4)\n");
	expect_errors(IMDS "[compat]\nimds_listen = example.org:1\ncolour = red\n"
			   "appservice_secret_file = /x\n[compat]\n[compat \"x\"]\n",
		      "t.conf:4: imds_listen: 'example.org' is not a numeric IPv4 address, [IPv6] "
		      "address or localhost\n"
		      "t.conf:5: unknown key 'colour' in [compat]\n"
		      "t.conf:6: appservice_secret_file: without appservice_listen it is not "
		      "used\n"
		      "t.conf:7: duplicate section [compat] (first on line 3)\n"
		      "t.conf:8: section [compat] takes no name\n");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_full),
	    cmocka_unit_test(test_defaults),
	    cmocka_unit_test(test_all_errors_reported),
	    cmocka_unit_test(test_unknown_key_and_section),
	    cmocka_unit_test(test_duplicates),
	    cmocka_unit_test(test_numbers),
	    cmocka_unit_test(test_lifetime_vs_min_validity),
	    cmocka_unit_test(test_bool),
	    cmocka_unit_test(test_selectors),
	    cmocka_unit_test(test_source_keys),
	    cmocka_unit_test(test_unsupported_source),
	    cmocka_unit_test(test_audiences),
	    cmocka_unit_test(test_allow_ids),
	    cmocka_unit_test(test_section_headers),
	    cmocka_unit_test(test_syntax),
	    cmocka_unit_test(test_line_endings),
	    cmocka_unit_test(test_long_lines),
	    cmocka_unit_test(test_file_too_large),
	    cmocka_unit_test(test_endpoint),
	    cmocka_unit_test(test_socket),
	    cmocka_unit_test(test_no_identity),
	    cmocka_unit_test(test_dev_config),
	    cmocka_unit_test(test_files),
	    cmocka_unit_test(test_shipped_files),
	    cmocka_unit_test(test_compat),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
