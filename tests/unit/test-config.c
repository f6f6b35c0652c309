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
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

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
				     "dynamic_allow_uids = 0\n"
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
	assert_int_equal(vm->dynamic_allow.n_uids, 1);
	assert_int_equal(vm->dynamic_allow.uids[0], 0);
	assert_null(vm->dynamic_allow.gids);
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
	assert_int_equal(a->line, 28);
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
			   "[bearerd]\nsockett = /x\n[Bearerd]\n",
		      "t.conf:3: unknown key 'colour' in [identity \"vm\"]\n"
		      "t.conf:7: unknown key 'x' in [audience \"a\"]\n"
		      "t.conf:9: unknown key 'sockett' in [bearerd]\n"
		      "t.conf:10: unknown section [Bearerd]\n");
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
		      "t.conf:2: source: unknown source 'DEV' (expected dev, azure-imds, "
		      "azure-appservice, entra-secret, entra-certificate, entra-federated or "
		      "oauth2)\n");
	expect_errors("[identity \"d\"]\nsource =\n",
		      "t.conf:2: source: unknown source '' (expected dev, azure-imds, "
		      "azure-appservice, entra-secret, entra-certificate, entra-federated or "
		      "oauth2)\n");
}

static void
test_unknown_source(void **state)
{
	/* the keys of an unknown source are not piled on as unknown keys */
	expect_errors(IMDS "[identity \"e\"]\ntenant = t\nsource = entra-magic\n"
			   "client_secret_file = /x\n",
		      "t.conf:5: source: unknown source 'entra-magic' (expected dev, azure-imds, "
		      "azure-appservice, entra-secret, entra-certificate, entra-federated or "
		      "oauth2)\n");
	/* but they are when the source is a known one */
	expect_errors(IMDS "tenant = t\n",
		      "t.conf:3: key 'tenant' does not apply to source azure-imds\n");
	expect_errors(IMDS "tenancy = t\n",
		      "t.conf:3: unknown key 'tenancy' in [identity \"vm\"]\n");
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

	c = expect_ok(IMDS "[audience \"a\"]\nidentity = vm\nresource = ra\nallow_uids = root 0\n"
			   "[audience \"b\"]\nidentity = vm\nresource = rb\nallow_gids = root 0 7\n"
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

/*
 * An azure-imds or azure-appservice endpoint that is a compat listener: bearerd
 * would ask itself (issue 15).  Same address and port, localhost, the IMDS
 * default beside imds_listen = 169.254.169.254:80, a wildcard listener and a
 * loopback endpoint; not another port, address or a host name.
 */
static void
test_compat_self_loop(void **state)
{
	struct config *c;

	(void)state;
	expect_errors("[identity \"vm\"]\nsource = azure-imds\n"
		      "endpoint = http://127.0.0.1:8080/metadata/identity/oauth2/token\n"
		      "[compat]\nimds_listen = 127.0.0.1:8080\n",
		      "t.conf:5: imds_listen: 127.0.0.1:8080 is where identity 'vm' (line 1) asks "
		      "for its tokens (endpoint http://127.0.0.1:8080/metadata/identity/oauth2/"
		      "token): bearerd would ask itself; point the endpoint at the real one, or "
		      "move the listener\n");
	expect_errors(
	    IMDS "[compat]\nimds_listen = 169.254.169.254:80\nallow_non_loopback = yes\n",
	    "t.conf:4: imds_listen: 169.254.169.254:80 is where identity 'vm' (line 1) "
	    "asks for its tokens (endpoint http://169.254.169.254/metadata/identity/"
	    "oauth2/token): bearerd would ask itself; point the endpoint at the real one, "
	    "or move the listener\n");
	expect_errors("[identity \"vm\"]\nsource = azure-imds\nendpoint = http://localhost:9/x\n"
		      "[compat]\nimds_listen = [::]:9\nallow_non_loopback = yes\n"
		      "imds_listen = 0.0.0.0:9\n",
		      "t.conf:7: duplicate key 'imds_listen' (first set on line 5)\n");
	expect_errors("[identity \"vm\"]\nsource = azure-imds\nendpoint = http://localhost:9/x\n"
		      "[compat]\nimds_listen = 0.0.0.0:9\nallow_non_loopback = yes\n",
		      "t.conf:5: imds_listen: 0.0.0.0:9 is where identity 'vm' (line 1) asks for "
		      "its tokens (endpoint http://localhost:9/x): bearerd would ask itself; point "
		      "the endpoint at the real one, or move the listener\n");
	expect_errors("[identity \"vm\"]\nsource = azure-imds\nendpoint = http://[::1]:9/x\n"
		      "[compat]\nimds_listen = [::1]:9\n",
		      "t.conf:5: imds_listen: [::1]:9 is where identity 'vm' (line 1) asks for its "
		      "tokens (endpoint http://[::1]:9/x): bearerd would ask itself; point the "
		      "endpoint at the real one, or move the listener\n");
	setenv("IDENTITY_HEADER", "x", 1);
	expect_errors(
	    "[identity \"a\"]\nsource = azure-appservice\n"
	    "endpoint = http://127.0.0.1:7/msi/token\n"
	    "[compat]\nappservice_listen = 127.0.0.1:7\nappservice_secret_file = /y\n",
	    "t.conf:5: appservice_listen: 127.0.0.1:7 is where identity 'a' (line 1) asks "
	    "for its tokens (endpoint http://127.0.0.1:7/msi/token): bearerd would ask "
	    "itself; point the endpoint at the real one, or move the listener\n");
	unsetenv("IDENTITY_HEADER");
	/* not loops */
	c = expect_ok("[identity \"vm\"]\nsource = azure-imds\nendpoint = http://127.0.0.1:9/x\n"
		      "[compat]\nimds_listen = 127.0.0.1:10\n");
	config_free(c);
	c = expect_ok("[identity \"vm\"]\nsource = azure-imds\nendpoint = http://127.0.0.2:9/x\n"
		      "[compat]\nimds_listen = 127.0.0.1:9\n");
	config_free(c);
	c = expect_ok(
	    "[identity \"vm\"]\nsource = azure-imds\n"
	    "endpoint = https://imds.example:443/x\n[compat]\nimds_listen = 127.0.0.1:443\n");
	config_free(c);
	c = expect_ok(IMDS "[compat]\nimds_listen = 127.0.0.1:80\n");
	config_free(c);
}

/* imds_relay: off by default; needs imds_listen and an azure-imds [compat] identity. */
static void
test_compat_imds_relay(void **state)
{
	struct config *c;

	(void)state;
	c = expect_ok(IMDS "[compat]\nimds_listen = 127.0.0.1:1\n");
	assert_false(c->compat.imds_relay);
	config_free(c);
	c = expect_ok(IMDS "[compat]\nimds_listen = 127.0.0.1:1\nimds_relay = yes\n");
	assert_true(c->compat.imds_relay);
	config_free(c);
	expect_errors(
	    "[identity \"d\"]\nsource = dev\n[compat]\nimds_listen = 127.0.0.1:1\n"
	    "imds_relay = yes\n",
	    "t.conf:5: imds_relay: relays to the IMDS that [compat] identity 'd' gets its "
	    "tokens from, but it is not an azure-imds identity\n");
	expect_errors(IMDS "[compat]\nappservice_listen = 127.0.0.1:1\nimds_relay = maybe\n"
			   "appservice_secret_file = /x\n",
		      "t.conf:5: imds_relay: expected yes or no, got 'maybe'\n");
	expect_errors(IMDS "[compat]\nappservice_listen = 127.0.0.1:1\nimds_relay = yes\n"
			   "appservice_secret_file = /x\n",
		      "t.conf:5: imds_relay: without imds_listen there is nothing to relay\n");
}

/* [bearerd] bounds on callers: defaults, values, ranges. */
static void
test_limits(void **state)
{
	struct config *c = expect_ok(IMDS);

	assert_int_equal(c->max_connections, 1024);
	assert_int_equal(c->max_connections_per_uid, 256); /* a quarter of max_connections */
	assert_int_equal(c->header_timeout, 10);
	assert_int_equal(c->keepalive_timeout, 60);
	assert_null(c->ca_file);
	config_free(c);
	c = expect_ok("[bearerd]\nmax_connections = 100000\nmax_connections_per_uid = 8\n"
		      "header_timeout = 300\nkeepalive_timeout = 1\n" IMDS);
	assert_int_equal(c->max_connections, 100000);
	assert_int_equal(c->max_connections_per_uid, 8);
	assert_int_equal(c->header_timeout, 300);
	assert_int_equal(c->keepalive_timeout, 1);
	config_free(c);
	/* the default follows max_connections; 0 says "no limit" */
	c = expect_ok("[bearerd]\nmax_connections = 10\n" IMDS);
	assert_int_equal(c->max_connections_per_uid, 2);
	config_free(c);
	c = expect_ok("[bearerd]\nmax_connections = 3\nmax_connections_per_uid = 0\n" IMDS);
	assert_int_equal(c->max_connections_per_uid, 0);
	config_free(c);
	expect_errors("[bearerd]\nmax_connections = 0\nmax_connections_per_uid = 100001\n"
		      "header_timeout = 0\nkeepalive_timeout = 3601\nmax_connections = 5\n" IMDS,
		      "t.conf:2: max_connections: 0 is out of range (1..100000)\n"
		      "t.conf:3: max_connections_per_uid: 100001 is out of range (0..100000)\n"
		      "t.conf:4: header_timeout: 0 is out of range (1..300)\n"
		      "t.conf:5: keepalive_timeout: 3601 is out of range (1..3600)\n"
		      "t.conf:6: duplicate key 'max_connections' (first set on line 2)\n");
}

/* Files for the identity tests, in a private directory. */
struct files {
	char dir[64];
	char *secret;	/* 0600 */
	char *group;	/* 0640: group-readable is fine */
	char *world;	/* 0644: refused for secrets */
	char *writable; /* 0602 */
	char *cert;	/* 0644, not a secret */
	char *missing;	/* does not exist */
	/* real keys and certificates for the client assertion sources */
	char *ec_key, *ec_cert, *rsa_key, *rsa_cert, *enc_key;
};

static char *
write_pem(const char *dir, const char *name, EVP_PKEY *k, X509 *c, bool encrypt)
{
	char *path = NULL;
	FILE *f;

	assert_true(asprintf(&path, "%s/%s", dir, name) > 0);
	f = fopen(path, "w");
	assert_non_null(f);
	if (c != NULL)
		assert_int_equal(PEM_write_X509(f, c), 1);
	else
		assert_int_equal(PEM_write_PrivateKey(f, k, encrypt ? EVP_aes_128_cbc() : NULL,
						      (unsigned char *)"pw", encrypt ? 2 : 0, NULL,
						      NULL),
				 1);
	fclose(f);
	assert_int_equal(chmod(path, c != NULL ? 0644 : 0600), 0);
	return path;
}

static X509 *
self_signed(EVP_PKEY *k)
{
	X509 *c = X509_new();

	assert_non_null(c);
	ASN1_INTEGER_set(X509_get_serialNumber(c), 1);
	X509_gmtime_adj(X509_getm_notBefore(c), 0);
	X509_gmtime_adj(X509_getm_notAfter(c), 3600);
	X509_set_pubkey(c, k);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_ASC,
				   (unsigned char *)"t", -1, -1, 0);
	X509_set_issuer_name(c, X509_get_subject_name(c));
	assert_true(X509_sign(c, k, EVP_sha256()) > 0);
	return c;
}

static void
make_keys(struct files *fs)
{
	static EVP_PKEY *ec, *rsa; /* generated once: RSA takes a while */
	X509 *c;

	if (ec == NULL) {
		ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
		rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
		assert_non_null(ec);
		assert_non_null(rsa);
	}
	fs->ec_key = write_pem(fs->dir, "ec.key", ec, NULL, false);
	fs->rsa_key = write_pem(fs->dir, "rsa.key", rsa, NULL, false);
	fs->enc_key = write_pem(fs->dir, "enc.key", rsa, NULL, true);
	c = self_signed(ec);
	fs->ec_cert = write_pem(fs->dir, "ec.crt", NULL, c, false);
	X509_free(c);
	c = self_signed(rsa);
	fs->rsa_cert = write_pem(fs->dir, "rsa.crt", NULL, c, false);
	X509_free(c);
}

static char *
mkfile(const char *dir, const char *name, mode_t mode)
{
	char *path = NULL;
	FILE *f;

	assert_true(asprintf(&path, "%s/%s", dir, name) > 0);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("s3cret\n", f);
	fclose(f);
	assert_int_equal(chmod(path, mode), 0);
	return path;
}

static void
files_make(struct files *fs)
{
	static const char *const vars[] = {
	    "AZURE_CLIENT_ID",	     "AZURE_TENANT_ID",	  "AZURE_FEDERATED_TOKEN_FILE",
	    "AZURE_AUTHORITY_HOST",  "IDENTITY_ENDPOINT", "IDENTITY_HEADER",
	    "CREDENTIALS_DIRECTORY",
	};

	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		unsetenv(vars[i]);
	snprintf(fs->dir, sizeof(fs->dir), "/tmp/test-config.XXXXXX");
	assert_non_null(mkdtemp(fs->dir));
	fs->secret = mkfile(fs->dir, "secret", 0600);
	fs->group = mkfile(fs->dir, "group", 0640);
	fs->world = mkfile(fs->dir, "world", 0644);
	fs->writable = mkfile(fs->dir, "writable", 0602);
	fs->cert = mkfile(fs->dir, "cert.pem", 0644);
	assert_true(asprintf(&fs->missing, "%s/missing", fs->dir) > 0);
	make_keys(fs);
}

static void
files_remove(struct files *fs)
{
	char *paths[] = {fs->secret, fs->group,	  fs->world,   fs->writable, fs->cert,
			 fs->ec_key, fs->ec_cert, fs->rsa_key, fs->rsa_cert, fs->enc_key};

	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		assert_int_equal(unlink(paths[i]), 0);
		free(paths[i]);
	}
	free(fs->missing);
	assert_int_equal(rmdir(fs->dir), 0);
}

/* printf into a new string, for configs and messages that name temporary files */
static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));

static char *
fmt(const char *f, ...)
{
	va_list ap;
	char *s = NULL;

	va_start(ap, f);
	assert_true(vasprintf(&s, f, ap) >= 0);
	va_end(ap);
	return s;
}

static void
expect_errors_free(char *text, char *expected)
{
	expect_errors(text, expected);
	free(text);
	free(expected);
}

static struct config *
expect_ok_free(char *text)
{
	struct config *c = expect_ok(text);

	free(text);
	return c;
}

#define ENTRA_SECRET "[identity \"e\"]\nsource = entra-secret\n"

static void
test_entra_secret(void **state)
{
	struct files fs;
	struct config *c;
	const struct config_identity *id;

	files_make(&fs);
	c = expect_ok_free(fmt(ENTRA_SECRET "tenant = contoso.onmicrosoft.com\nclient_id = app\n"
					    "client_secret_file = %s\n",
			       fs.group));
	id = &c->identities[0];
	assert_int_equal(id->source, CONFIG_SOURCE_ENTRA_SECRET);
	assert_string_equal(id->authority, "https://login.microsoftonline.com");
	assert_string_equal(id->tenant, "contoso.onmicrosoft.com");
	assert_string_equal(id->client_id, "app");
	assert_string_equal(id->client_secret_file, fs.group);
	assert_int_equal(id->timeout, 10);
	assert_null(id->ca_file);
	config_free(c);

	/* trailing slashes go; loopback http is fine; every upstream source takes timeout */
	c = expect_ok_free(fmt(ENTRA_SECRET "authority = http://127.0.0.1:8443//\ntenant = t\n"
					    "client_id = a\nclient_secret_file = %s\ntimeout = 3\n"
					    "ca_file = %s\n",
			       fs.secret, fs.cert));
	assert_string_equal(c->identities[0].authority, "http://127.0.0.1:8443");
	assert_int_equal(c->identities[0].timeout, 3);
	assert_string_equal(c->identities[0].ca_file, fs.cert);
	config_free(c);
	c = expect_ok_free(fmt(ENTRA_SECRET "authority = http://[::1]:99/x\ntenant = t\n"
					    "client_id = a\nclient_secret_file = %s\n",
			       fs.secret));
	assert_string_equal(c->identities[0].authority, "http://[::1]:99/x");
	config_free(c);

	expect_errors(ENTRA_SECRET "token_url = https://x\nissuer = me\n",
		      "t.conf:1: identity 'e': missing required key 'tenant'\n"
		      "t.conf:1: identity 'e': missing required key 'client_id'\n"
		      "t.conf:1: identity 'e': missing required key 'client_secret_file'\n"
		      "t.conf:3: key 'token_url' does not apply to source entra-secret\n"
		      "t.conf:4: key 'issuer' does not apply to source entra-secret\n");
	expect_errors_free(
	    fmt(ENTRA_SECRET "authority = http://login.test\ntenant = a/b\nclient_id = a\n"
			     "client_secret_file = %s\n[identity \"f\"]\nsource = entra-secret\n"
			     "authority = ftp://x\ntenant = t\nclient_id = a\n"
			     "client_secret_file = %s\n[identity \"g\"]\nsource = entra-secret\n"
			     "authority = https://u:p@x\ntenant = t\nclient_id = a\n"
			     "client_secret_file = %s\n",
		fs.secret, fs.secret, fs.secret),
	    fmt("t.conf:3: authority: plain http:// is allowed only to a loopback host (127.0.0.1, "
		"[::1], localhost), got 'http://login.test'\n"
		"t.conf:4: tenant: expected a tenant id or domain (A-Z a-z 0-9 . _ -), got 'a/b'\n"
		"t.conf:9: authority: expected an https:// URL, got 'ftp://x'\n"
		"t.conf:15: authority: user or password in the URL: put secrets in files, got "
		"'https://u:p@x'\n"));
	files_remove(&fs);
}

/* The rule for secret files: owner, mode, existence, $CREDENTIALS_DIRECTORY. */
static void
test_secret_files(void **state)
{
	struct files fs;
	struct config *c;
	char *want;

	files_make(&fs);
	expect_errors_free(
	    fmt(ENTRA_SECRET "tenant = t\nclient_id = a\nclient_secret_file = %s\n", fs.world),
	    fmt("t.conf:5: client_secret_file: '%s' is readable by other users (mode 0644): "
		"chmod o-rwx it\n",
		fs.world));
	expect_errors_free(
	    fmt(ENTRA_SECRET "tenant = t\nclient_id = a\nclient_secret_file = %s\n", fs.writable),
	    fmt("t.conf:5: client_secret_file: '%s' is writable by other users (mode 0602): "
		"chmod o-rwx it\n",
		fs.writable));
	expect_errors_free(
	    fmt(ENTRA_SECRET "tenant = t\nclient_id = a\nclient_secret_file = %s\n", fs.missing),
	    fmt("t.conf:5: client_secret_file: cannot read '%s': No such file or directory\n",
		fs.missing));
	expect_errors_free(
	    fmt(ENTRA_SECRET "tenant = t\nclient_id = a\nclient_secret_file = %s\n", fs.dir),
	    fmt("t.conf:5: client_secret_file: '%s' is not a regular file\n", fs.dir));
	expect_errors(ENTRA_SECRET "tenant = t\nclient_id = a\nclient_secret_file = secret\n",
		      "t.conf:5: client_secret_file: expected an absolute path, got 'secret'\n");
	expect_errors(ENTRA_SECRET "tenant = t\nclient_id = a\n"
				   "client_secret_file = $CREDENTIALS_DIRECTORY/secret\n",
		      "t.conf:5: client_secret_file: '$CREDENTIALS_DIRECTORY/secret' uses "
		      "$CREDENTIALS_DIRECTORY, which is not set (systemd sets it for "
		      "LoadCredential=)\n");

	/* LoadCredential=: the directory comes from the environment */
	setenv("CREDENTIALS_DIRECTORY", fs.dir, 1);
	c = expect_ok(ENTRA_SECRET "tenant = t\nclient_id = a\n"
				   "client_secret_file = $CREDENTIALS_DIRECTORY/secret\n");
	assert_string_equal(c->identities[0].client_secret_file, fs.secret);
	config_free(c);
	c = expect_ok(ENTRA_SECRET "tenant = t\nclient_id = a\n"
				   "client_secret_file = ${CREDENTIALS_DIRECTORY}/group\n");
	assert_string_equal(c->identities[0].client_secret_file, fs.group);
	config_free(c);
	/* only the whole variable name at the start is expanded */
	expect_errors(ENTRA_SECRET "tenant = t\nclient_id = a\n"
				   "client_secret_file = $CREDENTIALS_DIRECTORYX/secret\n",
		      "t.conf:5: client_secret_file: expected an absolute path, got "
		      "'$CREDENTIALS_DIRECTORYX/secret'\n");
	unsetenv("CREDENTIALS_DIRECTORY");

	/* a file some other user owns (root can make one) */
	if (geteuid() == 0) {
		assert_int_equal(chown(fs.secret, 12345, 0), 0);
		want = fmt("t.conf:5: client_secret_file: '%s' is owned by uid 12345, not by "
			   "bearerd's user (uid 0) or root\n",
			   fs.secret);
		expect_errors_free(fmt(ENTRA_SECRET "tenant = t\nclient_id = a\n"
						    "client_secret_file = %s\n",
				       fs.secret),
				   want);
		assert_int_equal(chown(fs.secret, 0, 0), 0);
	}
	files_remove(&fs);
}

static void
test_entra_certificate(void **state)
{
	struct files fs;
	struct config *c;
	const struct config_identity *id;

	files_make(&fs);
	c = expect_ok_free(fmt("[identity \"c\"]\nsource = entra-certificate\ntenant = t\n"
			       "client_id = a\ncertificate_file = %s\nprivate_key_file = %s\n",
			       fs.ec_cert, fs.ec_key));
	id = &c->identities[0];
	assert_int_equal(id->assertion_alg, CONFIG_ALG_DEFAULT);
	assert_false(id->send_x5c);
	assert_string_equal(id->certificate_file, fs.ec_cert);
	assert_string_equal(id->private_key_file, fs.ec_key);
	config_free(c);
	c = expect_ok_free(fmt("[identity \"c\"]\nsource = entra-certificate\ntenant = t\n"
			       "client_id = a\ncertificate_file = %s\nprivate_key_file = %s\n"
			       "assertion_alg = RS256\nsend_x5c = yes\n",
			       fs.rsa_cert, fs.rsa_key));
	assert_int_equal(c->identities[0].assertion_alg, CONFIG_ALG_RS256);
	assert_true(c->identities[0].send_x5c);
	config_free(c);

	expect_errors("[identity \"c\"]\nsource = entra-certificate\ntenant = t\nclient_id = a\n"
		      "assertion_alg = HS256\nclient_secret_file = /x\nkey_id = k\n",
		      "t.conf:1: identity 'c': missing required key 'certificate_file'\n"
		      "t.conf:1: identity 'c': missing required key 'private_key_file'\n"
		      "t.conf:5: assertion_alg: expected PS256, RS256 or ES256, got 'HS256'\n"
		      "t.conf:6: key 'client_secret_file' does not apply to source "
		      "entra-certificate\n"
		      "t.conf:7: key 'key_id' does not apply to source entra-certificate\n");
	expect_errors_free(
	    fmt("[identity \"c\"]\nsource = entra-certificate\ntenant = t\nclient_id = a\n"
		"certificate_file = %s\nprivate_key_file = %s\n",
		fs.missing, fs.world),
	    fmt("t.conf:5: certificate_file: cannot read '%s': No such file or directory\n"
		"t.conf:6: private_key_file: '%s' is readable by other users (mode 0644): chmod "
		"o-rwx it\n",
		fs.missing, fs.world));
	/* the key is loaded as the source will load it: its problems have a FILE:LINE */
	expect_errors_free(
	    fmt("[identity \"c\"]\nsource = entra-certificate\ntenant = t\nclient_id = a\n"
		"certificate_file = %s\nprivate_key_file = %s\n[identity \"d\"]\n"
		"source = entra-certificate\ntenant = t\nclient_id = a\ncertificate_file = %s\n"
		"private_key_file = %s\n[identity \"e\"]\nsource = entra-certificate\n"
		"tenant = t\nclient_id = a\ncertificate_file = %s\nprivate_key_file = %s\n"
		"assertion_alg = PS256\n[identity \"f\"]\nsource = entra-certificate\n"
		"tenant = t\nclient_id = a\ncertificate_file = %s\nprivate_key_file = %s\n",
		fs.rsa_cert, fs.ec_key, fs.rsa_cert, fs.enc_key, fs.ec_cert, fs.ec_key, fs.secret,
		fs.rsa_key),
	    fmt("t.conf:6: private_key_file: the private key does not match the certificate "
		"'%s'\n"
		"t.conf:12: private_key_file: '%s' is an encrypted key: bearerd needs it "
		"unencrypted (protect the file instead)\n"
		"t.conf:18: private_key_file: '%s': assertion_alg PS256 needs an RSA key\n"
		"t.conf:24: certificate_file: '%s' holds no PEM certificate\n",
		fs.rsa_cert, fs.enc_key, fs.ec_key, fs.secret));
	files_remove(&fs);
}

static void
test_entra_federated(void **state)
{
	struct files fs;
	struct config *c;
	const struct config_identity *id;

	files_make(&fs);
	expect_errors("[identity \"w\"]\nsource = entra-federated\n",
		      "t.conf:1: identity 'w': missing required key 'tenant' (and "
		      "$AZURE_TENANT_ID is not set)\n"
		      "t.conf:1: identity 'w': missing required key 'client_id' (and "
		      "$AZURE_CLIENT_ID is not set)\n"
		      "t.conf:1: identity 'w': missing required key 'federated_token_file' (and "
		      "$AZURE_FEDERATED_TOKEN_FILE is not set)\n");

	/* AKS workload identity: the webhook's variables are the defaults */
	setenv("AZURE_TENANT_ID", "tenant-1", 1);
	setenv("AZURE_CLIENT_ID", "client-1", 1);
	setenv("AZURE_FEDERATED_TOKEN_FILE", fs.world, 1); /* projected 0644: allowed */
	setenv("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/", 1);
	c = expect_ok("[identity \"w\"]\nsource = entra-federated\n");
	id = &c->identities[0];
	assert_string_equal(id->tenant, "tenant-1");
	assert_string_equal(id->client_id, "client-1");
	assert_string_equal(id->federated_token_file, fs.world);
	assert_string_equal(id->authority, "https://login.microsoftonline.us");
	config_free(c);
	/* keys win over the environment */
	c = expect_ok_free(fmt("[identity \"w\"]\nsource = entra-federated\ntenant = t2\n"
			       "client_id = c2\nauthority = https://a.test\n"
			       "federated_token_file = %s\n",
			       fs.secret));
	id = &c->identities[0];
	assert_string_equal(id->tenant, "t2");
	assert_string_equal(id->client_id, "c2");
	assert_string_equal(id->authority, "https://a.test");
	assert_string_equal(id->federated_token_file, fs.secret);
	config_free(c);
	/* entra-secret does not read the workload identity variables */
	expect_errors("[identity \"s\"]\nsource = entra-secret\nclient_secret_file = /x\n",
		      "t.conf:1: identity 's': missing required key 'tenant'\n"
		      "t.conf:1: identity 's': missing required key 'client_id'\n"
		      "t.conf:3: client_secret_file: cannot read '/x': No such file or "
		      "directory\n");

	/* bad values from the environment are reported on the header line */
	setenv("AZURE_AUTHORITY_HOST", "http://login.test", 1);
	setenv("AZURE_TENANT_ID", "a b", 1);
	setenv("AZURE_FEDERATED_TOKEN_FILE", fs.writable, 1);
	expect_errors_free(
	    strdup("[identity \"w\"]\nsource = entra-federated\n"),
	    fmt("t.conf:1: identity 'w': $AZURE_AUTHORITY_HOST (default for authority): plain "
		"http:// is allowed only to a loopback host (127.0.0.1, [::1], localhost), got "
		"'http://login.test'\n"
		"t.conf:1: identity 'w': $AZURE_TENANT_ID (default for tenant): must not contain "
		"blanks, got 'a b'\n"
		"t.conf:1: identity 'w': missing required key 'tenant' (and $AZURE_TENANT_ID is "
		"not "
		"set)\n"
		"t.conf:1: federated_token_file: '%s' is writable by other users (mode 0602): "
		"chmod o-rwx it\n",
		fs.writable));
	files_remove(&fs);
}

#define OAUTH2 "[identity \"o\"]\nsource = oauth2\ntoken_url = https://idp.test/token\n"

static void
test_oauth2(void **state)
{
	struct files fs;
	struct config *c;
	const struct config_identity *id;

	files_make(&fs);
	c = expect_ok_free(fmt(OAUTH2 "client_id = a\nclient_secret_file = %s\n", fs.secret));
	id = &c->identities[0];
	assert_int_equal(id->source, CONFIG_SOURCE_OAUTH2);
	assert_string_equal(id->token_url, "https://idp.test/token");
	assert_int_equal(id->auth_method, CONFIG_AUTH_SECRET_BASIC);
	assert_int_equal(id->audience_param, CONFIG_AUD_SCOPE);
	assert_null(id->scopes);
	assert_null(id->extra_params);
	assert_null(id->tls_certificate_file);
	config_free(c);

	c = expect_ok_free(
	    fmt("[identity \"o\"]\nsource = oauth2\n"
		"token_url = http://localhost:8080/realms/x/token?a=b\n"
		"client_id = a\nauth_method = private_key_jwt\nprivate_key_file = %s\n"
		"certificate_file = %s\nkey_id = k1\nassertion_alg = ES256\n"
		"audience_param = resource audience\nscope = openid  api.read\n"
		"extra_params = organization=org_1 x=a=b\n"
		"tls_certificate_file = %s\ntls_private_key_file = %s\n",
		fs.ec_key, fs.ec_cert, fs.cert, fs.group));
	id = &c->identities[0];
	assert_int_equal(id->auth_method, CONFIG_AUTH_PRIVATE_KEY_JWT);
	assert_string_equal(id->key_id, "k1");
	assert_int_equal(id->assertion_alg, CONFIG_ALG_ES256);
	assert_int_equal(id->audience_param, CONFIG_AUD_RESOURCE | CONFIG_AUD_AUDIENCE);
	assert_string_equal(id->scopes[0], "openid");
	assert_string_equal(id->scopes[1], "api.read");
	assert_null(id->scopes[2]);
	assert_string_equal(id->extra_params[0], "organization=org_1");
	assert_string_equal(id->extra_params[1], "x=a=b");
	assert_null(id->extra_params[2]);
	assert_string_equal(id->tls_certificate_file, fs.cert);
	assert_string_equal(id->tls_private_key_file, fs.group);
	config_free(c);
	c = expect_ok_free(fmt(OAUTH2 "client_id = a\nclient_secret_file = %s\n"
				      "auth_method = client_secret_post\n",
			       fs.secret));
	assert_int_equal(c->identities[0].auth_method, CONFIG_AUTH_SECRET_POST);
	config_free(c);

	expect_errors("[identity \"o\"]\nsource = oauth2\ntenant = t\n",
		      "t.conf:1: identity 'o': missing required key 'token_url'\n"
		      "t.conf:1: identity 'o': missing required key 'client_id'\n"
		      "t.conf:1: identity 'o': missing required key 'client_secret_file'\n"
		      "t.conf:3: key 'tenant' does not apply to source oauth2\n");
	expect_errors(
	    "[identity \"o\"]\nsource = oauth2\nauth_method = private_key_jwt\n"
	    "token_url = http://10.0.0.1/token\nclient_id = a\nclient_secret_file = /x\n",
	    "t.conf:1: identity 'o': missing required key 'private_key_file'\n"
	    "t.conf:4: token_url: plain http:// is allowed only to a loopback host "
	    "(127.0.0.1, [::1], localhost), got 'http://10.0.0.1/token'\n"
	    "t.conf:6: client_secret_file: not used with auth_method = private_key_jwt\n");
	expect_errors_free(
	    fmt(OAUTH2 "client_id = a\nclient_secret_file = %s\nkey_id = k\nassertion_alg = RS256\n"
		       "auth_method = client_secret\ntls_certificate_file = %s\n",
		fs.secret, fs.cert),
	    strdup("t.conf:6: key_id: used only with auth_method = private_key_jwt\n"
		   "t.conf:7: assertion_alg: used only with auth_method = private_key_jwt\n"
		   "t.conf:8: auth_method: expected client_secret_basic, client_secret_post or "
		   "private_key_jwt, got 'client_secret'\n"
		   "t.conf:9: tls_certificate_file: mTLS needs both tls_certificate_file and "
		   "tls_private_key_file\n"));
	expect_errors_free(
	    fmt(OAUTH2
		"client_id = a\nclient_secret_file = %s\naudience_param = scope scope\n"
		"scope =\nextra_params = grant_type=x a=1 a=2 novalue =v client_assertion=1\n"
		"[identity \"p\"]\nsource = oauth2\ntoken_url = https://x\nclient_id = a\n"
		"client_secret_file = %s\naudience_param = aud\nextra_params =\n",
		fs.secret, fs.secret),
	    strdup("t.conf:6: audience_param: 'scope' given twice\n"
		   "t.conf:7: scope: empty value\n"
		   "t.conf:8: extra_params: bearerd sets 'grant_type' itself\n"
		   "t.conf:8: extra_params: 'a' given twice\n"
		   "t.conf:8: extra_params: expected name=value, got 'novalue'\n"
		   "t.conf:8: extra_params: expected name=value, got '=v'\n"
		   "t.conf:8: extra_params: bearerd sets 'client_assertion' itself\n"
		   "t.conf:14: audience_param: expected scope, resource or audience, got 'aud'\n"
		   "t.conf:15: extra_params: empty value\n"));
	files_remove(&fs);
}

#define APPSERVICE "[identity \"a\"]\nsource = azure-appservice\n"

static void
test_appservice(void **state)
{
	struct files fs;
	struct config *c;
	const struct config_identity *id;

	files_make(&fs);
	expect_errors(APPSERVICE,
		      "t.conf:1: identity 'a': missing required key 'endpoint' (and "
		      "$IDENTITY_ENDPOINT is not set)\n"
		      "t.conf:1: identity 'a': set identity_header_file, or IDENTITY_HEADER in "
		      "bearerd's environment\n");
	setenv("IDENTITY_ENDPOINT", "http://169.254.255.2:8081/msi/token", 1);
	setenv("IDENTITY_HEADER", "h", 1);
	c = expect_ok(APPSERVICE "mi_res_id = /subscriptions/x\n");
	id = &c->identities[0];
	assert_string_equal(id->endpoint, "http://169.254.255.2:8081/msi/token");
	assert_null(id->identity_header_file);
	assert_string_equal(id->mi_res_id, "/subscriptions/x");
	assert_int_equal(id->timeout, 10);
	config_free(c);
	unsetenv("IDENTITY_HEADER");
	c = expect_ok_free(fmt(APPSERVICE "endpoint = http://127.0.0.1:1/msi/token\n"
					  "identity_header_file = %s\nprincipal_id = p\n",
			       fs.secret));
	id = &c->identities[0];
	assert_string_equal(id->endpoint, "http://127.0.0.1:1/msi/token");
	assert_string_equal(id->identity_header_file, fs.secret);
	assert_string_equal(id->principal_id, "p");
	config_free(c);
	expect_errors_free(fmt(APPSERVICE "identity_header_file = %s\nprincipal_id = p\n"
					  "client_id = c\nmi_res_id = m\nobject_id = o\n",
			       fs.world),
			   fmt("t.conf:3: identity_header_file: '%s' is readable by other users "
			       "(mode 0644): chmod o-rwx it\n"
			       "t.conf:5: client_id conflicts with principal_id (line 4): set at "
			       "most one of client_id, principal_id, mi_res_id\n"
			       "t.conf:6: mi_res_id conflicts with principal_id (line 4): set at "
			       "most one of client_id, principal_id, mi_res_id\n"
			       "t.conf:7: key 'object_id' does not apply to source "
			       "azure-appservice\n",
			       fs.world));
	unsetenv("IDENTITY_ENDPOINT");
	files_remove(&fs);
}

/* [bearerd] ca_file: the default trust anchor of every upstream identity. */
static void
test_global_ca_file(void **state)
{
	struct files fs;
	struct config *c;

	files_make(&fs);
	c = expect_ok_free(
	    fmt("[bearerd]\nca_file = %s\n" IMDS "[identity \"own\"]\n"
		"source = azure-imds\nca_file = %s\n[identity \"d\"]\nsource = dev\n",
		fs.cert, fs.secret));
	assert_string_equal(c->ca_file, fs.cert);
	assert_string_equal(config_identity_find(c, "vm")->ca_file, fs.cert);
	assert_string_equal(config_identity_find(c, "own")->ca_file, fs.secret);
	assert_null(config_identity_find(c, "d")->ca_file);
	config_free(c);
	expect_errors_free(
	    fmt("[bearerd]\nca_file = %s\n" IMDS, fs.missing),
	    fmt("t.conf:2: ca_file: cannot read '%s': No such file or directory\n", fs.missing));
	expect_errors_free(
	    fmt("[identity \"d\"]\nsource = dev\nca_file = %s\ntimeout = 3\n", fs.cert),
	    strdup("t.conf:3: key 'ca_file' does not apply to source dev\n"
		   "t.conf:4: key 'timeout' does not apply to source dev\n"));
	files_remove(&fs);
}

/* config_identity_equal: every key counts, the line does not. */
static void
test_identity_equal(void **state)
{
	static const char *const variants[] = {
	    "client_id = b\n",
	    "scope = s\n",
	    "scope = s t\n",
	    "audience_param = resource\n",
	    "auth_method = client_secret_post\n",
	    "extra_params = a=1\n",
	    "timeout = 11\n",
	    "dynamic_resources = yes\n",
	    "token_url = https://idp.test/token2\n",
	};
	struct files fs;
	struct config *a, *b;
	char *base;

	files_make(&fs);
	base = fmt("client_secret_file = %s\n", fs.secret);
	a = expect_ok_free(fmt(OAUTH2 "%sclient_id = a\nscope = s t\n", base));
	b = expect_ok_free(fmt("\n\n" OAUTH2 "%sclient_id = a\nscope = s t\n", base));
	assert_int_not_equal(a->identities[0].line, b->identities[0].line);
	assert_true(config_identity_equal(&a->identities[0], &b->identities[0]));
	config_free(b);
	for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
		const char *v = variants[i];
		bool has_scope = strncmp(v, "scope", 5) == 0;
		bool has_url = strncmp(v, "token_url", 9) == 0;
		bool has_id = strncmp(v, "client_id", 9) == 0;

		b = expect_ok_free(fmt("[identity \"o\"]\nsource = oauth2\n%s%s%s%s%s", base,
				       has_url ? "" : "token_url = https://idp.test/token\n",
				       has_id ? "" : "client_id = a\n",
				       has_scope ? "" : "scope = s t\n", v));
		if (strcmp(v, "scope = s t\n") == 0)
			assert_true(config_identity_equal(&a->identities[0], &b->identities[0]));
		else
			assert_false(config_identity_equal(&a->identities[0], &b->identities[0]));
		config_free(b);
	}
	/* another name or source is another identity */
	b = expect_ok_free(fmt("[identity \"p\"]\nsource = oauth2\n%stoken_url = "
			       "https://idp.test/token\nclient_id = a\nscope = s t\n",
			       base));
	assert_false(config_identity_equal(&a->identities[0], &b->identities[0]));
	config_free(b);
	config_free(a);
	a = expect_ok(IMDS "client_id = x\n");
	b = expect_ok(IMDS "object_id = x\n");
	assert_false(config_identity_equal(&a->identities[0], &b->identities[0]));
	assert_true(config_identity_equal(&a->identities[0], &a->identities[0]));
	config_free(a);
	config_free(b);
	free(base);
	files_remove(&fs);
}

/* A restricted audience on an identity that serves dynamic resources (finding 2, issue 11). */
#define PAYROLL "[audience \"payroll\"]\nidentity = vm\nresource = payroll.admin\nallow_uids = 0\n"

static void
test_dynamic_rules(void **state)
{
	struct config *c;
	const struct config_identity *id;

	(void)state;
	/* dynamic resources beside a restricted audience, and no rule for them: refused */
	expect_errors(IMDS "dynamic_resources = yes\n" PAYROLL,
		      "t.conf:3: dynamic_resources: identity 'vm' has the restricted audience "
		      "'payroll' (line 4); a dynamic resource naming the same API another way "
		      "(case, a trailing slash, /.default, the app's GUID) would get its token for "
		      "any caller: set dynamic_allow_uids or dynamic_allow_gids to callers every "
		      "restricted audience allows, or dynamic_resources = no\n");
	/* without restricted audiences, or without dynamic resources: fine */
	config_free(expect_ok(IMDS "dynamic_resources = yes\n[audience \"a\"]\nidentity = vm\n"
				   "resource = r\n"));
	config_free(expect_ok(IMDS "dynamic_resources = no\n" PAYROLL));
	/* a rule within the restricted audience's: fine, and parsed */
	c = expect_ok(IMDS "dynamic_resources = yes\ndynamic_allow_uids = root\n" PAYROLL);
	id = config_identity_find(c, "vm");
	assert_int_equal(id->dynamic_allow.n_uids, 1);
	assert_true(config_acl_allows(&id->dynamic_allow, 0, 1000));
	assert_false(config_acl_allows(&id->dynamic_allow, 1000, 0));
	assert_true(config_acl_restricts(&id->dynamic_allow));
	config_free(c);
	c = expect_ok(IMDS "dynamic_resources = yes\ndynamic_allow_gids = 7\n"
			   "[audience \"p\"]\nidentity = vm\nresource = r\nallow_gids = 7 8\n");
	id = config_identity_find(c, "vm");
	assert_true(config_acl_allows(&id->dynamic_allow, 1000, 7));
	assert_false(config_acl_allows(&id->dynamic_allow, 1000, 8));
	config_free(c);
	/* wider than the audience's rules: each id that is not allowed there, on its line */
	expect_errors(IMDS "dynamic_resources = yes\ndynamic_allow_uids = 0 1000\n"
			   "dynamic_allow_gids = 5\n" PAYROLL,
		      "t.conf:4: dynamic_allow_uids: uid 1000 is not in allow_uids of audience "
		      "'payroll' (line 6), whose token a dynamic resource naming the same API "
		      "another way would get\n"
		      "t.conf:5: dynamic_allow_gids: gid 5 is not in allow_gids of audience "
		      "'payroll' (line 6), whose token a dynamic resource naming the same API "
		      "another way would get\n");
	/* an audience whose resource is missing is reported once, and looked at no further
	 * (found by fuzz-config: the rules compared its NULL resource) */
	expect_errors(IMDS "dynamic_resources = yes\n[audience \"p\"]\nidentity = vm\n"
			   "allow_uids = 0\n[audience \"q\"]\nidentity = vm\nresource = r\n"
			   "[compat]\nimds_listen = 127.0.0.1:0\nresources = r/\n",
		      "t.conf:4: audience 'p': missing required key 'resource'\n");
	/* a rule without dynamic resources is a mistake */
	expect_errors(IMDS "dynamic_allow_gids = 5\n",
		      "t.conf:3: dynamic_allow_gids: used only with dynamic_resources = yes\n");
	expect_errors(IMDS "dynamic_resources = yes\ndynamic_allow_uids = nobody-bearerd-test\n",
		      "t.conf:4: dynamic_allow_uids: unknown user 'nobody-bearerd-test'\n");
}

/* Two [identity] sections that may be one upstream principal count as one for the rule. */
static void
test_dynamic_rules_same_principal(void **state)
{
	(void)state;
	/* IMDS without a selector may be the VM's only user-assigned identity */
	expect_errors(IMDS PAYROLL "[identity \"ua\"]\nsource = azure-imds\nclient_id = AAA\n"
				   "dynamic_resources = yes\n",
		      "t.conf:10: dynamic_resources: identity 'ua' has the restricted audience "
		      "'payroll' (line 3) (through identity 'vm', which may be the same "
		      "principal); a dynamic resource naming the same API another way (case, a "
		      "trailing slash, /.default, the app's GUID) would get its token for any "
		      "caller: set dynamic_allow_uids or dynamic_allow_gids to callers every "
		      "restricted audience allows, or dynamic_resources = no\n");
	/* a client_id and an object_id may name the same identity */
	expect_errors("[identity \"a\"]\nsource = azure-imds\nclient_id = AAA\n"
		      "[identity \"b\"]\nsource = azure-imds\nobject_id = BBB\n"
		      "dynamic_resources = yes\n"
		      "[audience \"p\"]\nidentity = a\nresource = r\nallow_uids = 0\n",
		      "t.conf:7: dynamic_resources: identity 'b' has the restricted audience 'p' "
		      "(line 8) (through identity 'a', which may be the same principal); a dynamic "
		      "resource naming the same API another way (case, a trailing slash, "
		      "/.default, the app's GUID) would get its token for any caller: set "
		      "dynamic_allow_uids or dynamic_allow_gids to callers every restricted "
		      "audience allows, or dynamic_resources = no\n");
	/* two client_ids (case-insensitively different) are two identities */
	config_free(expect_ok("[identity \"a\"]\nsource = azure-imds\nclient_id = AAA\n"
			      "[identity \"b\"]\nsource = azure-imds\nclient_id = BBB\n"
			      "dynamic_resources = yes\n"
			      "[audience \"p\"]\nidentity = a\nresource = r\nallow_uids = 0\n"));
	expect_errors("[identity \"a\"]\nsource = azure-imds\nclient_id = AAA\n"
		      "[identity \"b\"]\nsource = azure-imds\nclient_id = aaa\n"
		      "dynamic_resources = yes\ndynamic_allow_uids = 1\n"
		      "[audience \"p\"]\nidentity = a\nresource = r\nallow_uids = 0\n",
		      "t.conf:8: dynamic_allow_uids: uid 1 is not in allow_uids of audience 'p' "
		      "(line 9) (through identity 'a', which may be the same principal), whose "
		      "token a dynamic resource naming the same API another way would get\n");
	/* another IMDS endpoint, or another kind of source: another principal */
	config_free(
	    expect_ok("[identity \"a\"]\nsource = azure-imds\nendpoint = http://127.0.0.1:1/t\n"
		      "[identity \"b\"]\nsource = azure-imds\ndynamic_resources = yes\n"
		      "[audience \"p\"]\nidentity = a\nresource = r\nallow_uids = 0\n"));
	config_free(expect_ok("[identity \"a\"]\nsource = dev\n" IMDS "dynamic_resources = yes\n"
			      "[audience \"p\"]\nidentity = a\nresource = r\nallow_uids = 0\n"));
	/* dev identities are the same principal when they mint for the same issuer and subject */
	config_free(expect_ok("[identity \"a\"]\nsource = dev\n"
			      "[identity \"b\"]\nsource = dev\ndynamic_resources = yes\n"
			      "[audience \"p\"]\nidentity = a\nresource = r\nallow_uids = 0\n"));
	expect_errors("[identity \"a\"]\nsource = dev\nsubject = s\n"
		      "[identity \"b\"]\nsource = dev\nsubject = s\ndynamic_resources = yes\n"
		      "dynamic_allow_gids = 0\n"
		      "[audience \"p\"]\nidentity = a\nresource = r\nallow_uids = 0\n",
		      "t.conf:8: dynamic_allow_gids: gid 0 is not in allow_gids of audience 'p' "
		      "(line 9) (through identity 'a', which may be the same principal), whose "
		      "token a dynamic resource naming the same API another way would get\n");
}

/* The compat listeners cannot tell TCP callers apart. */
static void
test_compat_dynamic_rules(void **state)
{
	(void)state;
	expect_errors(IMDS PAYROLL "[compat]\nimds_listen = 127.0.0.1:0\ndynamic_resources = yes\n",
		      "t.conf:9: dynamic_resources: the compat listeners may answer for identity "
		      "'vm', which has the restricted audience 'payroll' (line 3); their TCP "
		      "callers cannot be told apart, so a resource naming the same API another "
		      "way would hand its token to anyone: set dynamic_resources = no (and list "
		      "what SDKs need in 'resources')\n");
	/* an identity compat reaches through a selector counts too */
	expect_errors(IMDS "[identity \"ua\"]\nsource = azure-imds\nclient_id = AAA\n"
			   "[audience \"p\"]\nidentity = ua\nresource = r\nallow_gids = 0\n"
			   "[compat]\nidentity = vm\nimds_listen = 127.0.0.1:0\n"
			   "dynamic_resources = yes\n",
		      "t.conf:13: dynamic_resources: the compat listeners may answer for identity "
		      "'vm', which has the restricted audience 'p' (line 6) (through identity "
		      "'ua', which may be the same principal); their TCP callers cannot be told "
		      "apart, so a resource naming the same API another way would hand its token "
		      "to anyone: set dynamic_resources = no (and list what SDKs need in "
		      "'resources')\n");
	/* without dynamic resources, or with an allow-list, compat serves only what is named */
	config_free(expect_ok(IMDS PAYROLL "[compat]\nimds_listen = 127.0.0.1:0\n"));
	config_free(expect_ok(IMDS PAYROLL "[compat]\nimds_listen = 127.0.0.1:0\n"
					   "dynamic_resources = yes\nresources = https://a\n"));
	/* but a listed resource that names the restricted audience's API is refused */
	expect_errors(IMDS PAYROLL "[compat]\nimds_listen = 127.0.0.1:0\n"
				   "resources = https://a PAYROLL.admin/\n",
		      "t.conf:9: resources: 'PAYROLL.admin/' names the API of the restricted "
		      "audience 'payroll' (line 3), and the compat listeners cannot tell callers "
		      "apart\n");
	/* the very resource of the audience is its audience (refused on TCP), not a respelling */
	config_free(expect_ok(IMDS PAYROLL "[compat]\nimds_listen = 127.0.0.1:0\n"
					   "resources = payroll.admin\n"));
	/* an identity compat cannot reach (no selector, not the default) is not its concern */
	config_free(expect_ok(IMDS "[identity \"d\"]\nsource = dev\n"
				   "[audience \"p\"]\nidentity = d\nresource = r\nallow_uids = 0\n"
				   "[compat]\nidentity = vm\nimds_listen = 127.0.0.1:0\n"
				   "dynamic_resources = yes\n"));
}

/* Two audiences that get one token (finding 10, issue 11). */
static void
test_audience_aliases(void **state)
{
	(void)state;
	/* one cache entry, two sets of rules: the open one would hand out the other's token */
	expect_errors(IMDS PAYROLL "[audience \"open\"]\nidentity = vm\nresource = payroll.admin\n",
		      "t.conf:7: audience 'open': gets the same token as audience 'payroll' "
		      "(line 3), one cache entry for the same identity and resource, but their "
		      "allow_uids/allow_gids differ, so one would hand out the other's token: give "
		      "both the same rules, or drop one\n");
	/* also when the restricted one comes second, and for rules that differ in gids only */
	expect_errors(IMDS "[audience \"a\"]\nidentity = vm\nresource = r\nallow_uids = 0\n"
			   "allow_gids = 5\n"
			   "[audience \"b\"]\nidentity = vm\nresource = r\nallow_uids = 0\n",
		      "t.conf:8: audience 'b': gets the same token as audience 'a' (line 3), one "
		      "cache entry for the same identity and resource, but their "
		      "allow_uids/allow_gids differ, so one would hand out the other's token: give "
		      "both the same rules, or drop one\n");
	/* another spelling of the same API, or the same principal under another name */
	expect_errors(IMDS PAYROLL "[audience \"open\"]\nidentity = vm\nresource = Payroll.Admin/"
				   ".default\n",
		      "t.conf:7: audience 'open': gets the same token as audience 'payroll' "
		      "(line 3), the same principal and a resource naming the same API, but their "
		      "allow_uids/allow_gids differ, so one would hand out the other's token: give "
		      "both the same rules, or drop one\n");
	expect_errors(IMDS PAYROLL "[identity \"ua\"]\nsource = azure-imds\nclient_id = AAA\n"
				   "[audience \"open\"]\nidentity = ua\nresource = payroll.admin\n",
		      "t.conf:10: audience 'open': gets the same token as audience 'payroll' "
		      "(line 3), the same principal and a resource naming the same API, but their "
		      "allow_uids/allow_gids differ, so one would hand out the other's token: give "
		      "both the same rules, or drop one\n");
	/* the same rules (in another order), another API or another principal: fine */
	config_free(expect_ok(IMDS PAYROLL "[audience \"b\"]\nidentity = vm\nresource = "
					   "payroll.admin\nallow_uids = root 0\n"));
	config_free(expect_ok(IMDS PAYROLL "[audience \"b\"]\nidentity = vm\nresource = other\n"));
	config_free(expect_ok(IMDS PAYROLL
			      "[identity \"d\"]\nsource = dev\n"
			      "[audience \"b\"]\nidentity = d\nresource = payroll.admin\n"));
}

static void
test_resources_alike(void **state)
{
	(void)state;
	assert_true(config_resources_alike("api://secret", "api://secret"));
	assert_true(config_resources_alike("api://secret", "api://secret/"));
	assert_true(config_resources_alike("api://secret", "API://secret"));
	assert_true(config_resources_alike("api://secret", "api://SECRET"));
	assert_true(config_resources_alike("api://secret", "api://secret/.default"));
	assert_true(config_resources_alike("api://secret", "api://secret//.DEFAULT/ "));
	assert_true(config_resources_alike("payroll.admin", " payroll.admin "));
	assert_true(config_resources_alike("https://graph.microsoft.com/",
					   "https://graph.microsoft.com//.default"));
	assert_false(config_resources_alike("api://secret", "api://secret2"));
	assert_false(config_resources_alike("api://secret", "api://secre"));
	assert_false(config_resources_alike("api://a/b", "api://a"));
	assert_true(config_resources_alike("", "/"));
}

static void
test_dynamic_rate(void **state)
{
	struct config *c = expect_ok(IMDS);

	(void)state;
	assert_int_equal(c->dynamic_rate, 10);
	config_free(c);
	c = expect_ok("[bearerd]\ndynamic_rate = 0\n" IMDS);
	assert_int_equal(c->dynamic_rate, 0);
	config_free(c);
	expect_errors("[bearerd]\ndynamic_rate = -1\n" IMDS,
		      "t.conf:2: dynamic_rate: must not be negative, got '-1'\n");
}

static void
test_compat_env_allow(void **state)
{
	struct config *c;

	(void)state;
	c = expect_ok(IMDS "[compat]\nimds_listen = 127.0.0.1:0\nenv_allow_uids = 0 7\n"
			   "env_allow_gids = 9\n");
	assert_true(config_acl_allows(&c->compat.env_allow, 7, 1));
	assert_true(config_acl_allows(&c->compat.env_allow, 8, 9));
	assert_false(config_acl_allows(&c->compat.env_allow, 8, 8));
	config_free(c);
	c = expect_ok(IMDS "[compat]\nimds_listen = 127.0.0.1:0\n");
	assert_false(config_acl_restricts(&c->compat.env_allow));
	assert_true(config_acl_allows(&c->compat.env_allow, 8, 8));
	config_free(c);
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
	    cmocka_unit_test(test_unknown_source),
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
	    cmocka_unit_test(test_limits),
	    cmocka_unit_test(test_entra_secret),
	    cmocka_unit_test(test_secret_files),
	    cmocka_unit_test(test_entra_certificate),
	    cmocka_unit_test(test_entra_federated),
	    cmocka_unit_test(test_oauth2),
	    cmocka_unit_test(test_appservice),
	    cmocka_unit_test(test_global_ca_file),
	    cmocka_unit_test(test_identity_equal),
	    cmocka_unit_test(test_dynamic_rules),
	    cmocka_unit_test(test_dynamic_rules_same_principal),
	    cmocka_unit_test(test_compat_dynamic_rules),
	    cmocka_unit_test(test_audience_aliases),
	    cmocka_unit_test(test_resources_alike),
	    cmocka_unit_test(test_dynamic_rate),
	    cmocka_unit_test(test_compat_env_allow),
	    cmocka_unit_test(test_compat_self_loop),
	    cmocka_unit_test(test_compat_imds_relay),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
