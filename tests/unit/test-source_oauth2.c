/*
 * Unit tests for daemon/source_oauth2.c: the exact requests of the
 * client-credentials sources and how answers become token_results, against
 * an in-process HTTP server on 127.0.0.1 driven by the same event loop.
 */
#include <errno.h>
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
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "config.h"
#include "fetch.h"
#include "source.h"
#include "token.h"

/* What the server saw, and what it answers. */
struct server {
	struct evhttp *http;
	int port;
	int requests;
	char path[256];
	char body[4096];
	char auth[512];
	char ctype[128];
	int status;
	const char *answer; /* NULL: an error whose description is the request body */
	const char *retry_after;
};

struct env {
	struct event_base *base;
	struct fetch *fetch;
	struct server srv;
	char dir[64];
	char url[128];
};

struct outcome {
	int calls;
	struct token_result r;
};

static void
on_request(struct evhttp_request *req, void *arg)
{
	struct server *s = arg;
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	struct evbuffer *out = evbuffer_new();
	struct evkeyvalq *h = evhttp_request_get_input_headers(req);
	const char *v;
	size_t n = evbuffer_get_length(in);

	s->requests++;
	snprintf(s->path, sizeof(s->path), "%s", evhttp_request_get_uri(req));
	assert_true(n < sizeof(s->body));
	evbuffer_remove(in, s->body, n);
	s->body[n] = '\0';
	v = evhttp_find_header(h, "Authorization");
	snprintf(s->auth, sizeof(s->auth), "%s", v != NULL ? v : "");
	v = evhttp_find_header(h, "Content-Type");
	snprintf(s->ctype, sizeof(s->ctype), "%s", v != NULL ? v : "");
	if (s->answer != NULL)
		evbuffer_add_printf(out, "%s", s->answer);
	else /* an upstream that echoes the request (the form needs no JSON escaping here) */
		evbuffer_add_printf(out,
				    "{\"error\":\"invalid_client\",\"error_description\":"
				    "\"cannot use %s\"}",
				    s->body);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/json");
	if (s->retry_after != NULL)
		evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After",
				  s->retry_after);
	evhttp_send_reply(req, s->status, "x", out);
	evbuffer_free(out);
}

static int
setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	struct evhttp_bound_socket *sock;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	assert_non_null(e);
	e->base = event_base_new();
	assert_non_null(e->base);
	assert_int_equal(fetch_new(&e->fetch, e->base), 0);
	e->srv.http = evhttp_new(e->base);
	sock = evhttp_bind_socket_with_handle(e->srv.http, "127.0.0.1", 0);
	assert_non_null(sock);
	getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&ss, &len);
	e->srv.port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	evhttp_set_gencb(e->srv.http, on_request, &e->srv);
	e->srv.status = 200;
	e->srv.answer = "{\"token_type\":\"Bearer\",\"expires_in\":3599,\"access_token\":\"t-1\"}";
	snprintf(e->url, sizeof(e->url), "http://127.0.0.1:%d", e->srv.port);
	snprintf(e->dir, sizeof(e->dir), "/tmp/test-source_oauth2.XXXXXX");
	assert_non_null(mkdtemp(e->dir));
	*state = e;
	return 0;
}

static int
teardown(void **state)
{
	struct env *e = *state;
	char *cmd = NULL;

	fetch_free(e->fetch);
	evhttp_free(e->srv.http);
	event_base_free(e->base);
	assert_true(asprintf(&cmd, "rm -rf '%s'", e->dir) > 0);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	free(e);
	return 0;
}

static char *
write_file(struct env *e, const char *name, const char *content, mode_t mode)
{
	char *p = NULL;
	FILE *f;

	assert_true(asprintf(&p, "%s/%s", e->dir, name) > 0);
	f = fopen(p, "w");
	assert_non_null(f);
	fputs(content, f);
	fclose(f);
	assert_int_equal(chmod(p, mode), 0);
	return p;
}

static void
on_done(void *arg, struct token_result *r)
{
	struct outcome *o = arg;

	o->calls++;
	token_result_clear(&o->r);
	o->r = *r;
	if (r->access_token != NULL) {
		o->r.access_token = strdup(r->access_token); /* r is only valid now */
		assert_non_null(o->r.access_token);
	}
}

/* One fetch, run to its answer. */
static void
fetch_one(struct env *e, struct source *s, const char *resource, struct outcome *o)
{
	token_result_init(&o->r);
	o->calls = 0;
	assert_int_equal(source_fetch(s, resource, on_done, o), 0);
	/* never called from inside source_fetch */
	assert_int_equal(o->calls, 0);
	for (int i = 0; i < 2000 && o->calls == 0; i++)
		event_base_loop(e->base, EVLOOP_ONCE);
	assert_int_equal(o->calls, 1);
}

static struct config_identity
identity(enum config_source src)
{
	return (struct config_identity){
	    .name = "t",
	    .source = src,
	    .client_id = "cid",
	    .tenant = "ten",
	    .timeout = 5,
	    .auth_method = CONFIG_AUTH_SECRET_BASIC,
	    .audience_param = CONFIG_AUD_SCOPE,
	};
}

static void
test_entra_secret_form(void **state)
{
	struct env *e = *state;
	struct config_identity id = identity(CONFIG_SOURCE_ENTRA_SECRET);
	char *secret = write_file(e, "secret", "s3 cr+t&=\n", 0600);
	struct source *s = NULL;
	struct outcome o;

	id.authority = e->url;
	id.client_secret_file = secret;
	assert_int_equal(source_new(&s, &id, e->base, e->fetch), 0);
	assert_string_equal(source_kind(s), "entra-secret");
	fetch_one(e, s, "api://app", &o);
	assert_int_equal(o.r.error, 0);
	assert_string_equal(o.r.access_token, "t-1");
	assert_string_equal(e->srv.path, "/ten/oauth2/v2.0/token");
	assert_string_equal(e->srv.body, "grant_type=client_credentials&scope=api%3A%2F%2Fapp%2F."
					 "default&client_id=cid&client_secret=s3%20cr%2Bt%26%3D");
	assert_string_equal(e->srv.ctype, "application/x-www-form-urlencoded");
	assert_string_equal(e->srv.auth, "");
	token_result_clear(&o.r);

	/* a trailing "/" is kept, as the SDKs do; "/.default" is not doubled */
	fetch_one(e, s, "https://db.test/", &o);
	assert_non_null(strstr(e->srv.body, "&scope=https%3A%2F%2Fdb.test%2F%2F.default&"));
	token_result_clear(&o.r);
	fetch_one(e, s, "https://x.test/.default", &o);
	assert_non_null(strstr(e->srv.body, "&scope=https%3A%2F%2Fx.test%2F.default&"));
	token_result_clear(&o.r);

	/* the secret is read per request: a rotated one is used at once */
	free(write_file(e, "secret", "new", 0600));
	fetch_one(e, s, "api://app", &o);
	assert_non_null(strstr(e->srv.body, "&client_secret=new"));
	token_result_clear(&o.r);
	source_free(s);
	free(secret);
}

static void
test_oauth2_basic_and_params(void **state)
{
	struct env *e = *state;
	struct config_identity id = identity(CONFIG_SOURCE_OAUTH2);
	char *secret = write_file(e, "secret", "a:b%c", 0600);
	char *scopes[] = {"openid", "api.read", NULL};
	char *extra[] = {"org=a b", "x=y=z", NULL};
	char url[200];
	struct source *s = NULL;
	struct outcome o;

	snprintf(url, sizeof(url), "%s/realms/r/token", e->url);
	id.token_url = url;
	id.client_id = "my:client";
	id.client_secret_file = secret;
	id.scopes = scopes;
	id.extra_params = extra;
	id.audience_param = CONFIG_AUD_SCOPE | CONFIG_AUD_RESOURCE | CONFIG_AUD_AUDIENCE;
	assert_int_equal(source_new(&s, &id, e->base, e->fetch), 0);
	assert_string_equal(source_kind(s), "oauth2");
	fetch_one(e, s, "https://api.test", &o);
	assert_int_equal(o.r.error, 0);
	assert_string_equal(e->srv.path, "/realms/r/token");
	/* RFC 6749 2.3.1: base64("my%3Aclient:a%3Ab%25c") */
	assert_string_equal(e->srv.auth, "Basic bXklM0FjbGllbnQ6YSUzQWIlMjVj");
	assert_string_equal(e->srv.body,
			    "grant_type=client_credentials&scope=openid%20api.read%20https%3A%2F%2F"
			    "api.test&resource=https%3A%2F%2Fapi.test&audience=https%3A%2F%2Fapi."
			    "test&org=a%20b&x=y%3Dz");
	token_result_clear(&o.r);
	source_free(s);

	/* client_secret_post, the resource only as resource: the scopes alone */
	id.auth_method = CONFIG_AUTH_SECRET_POST;
	id.audience_param = CONFIG_AUD_RESOURCE;
	id.extra_params = NULL;
	assert_int_equal(source_new(&s, &id, e->base, e->fetch), 0);
	fetch_one(e, s, "https://api.test", &o);
	assert_string_equal(e->srv.auth, "");
	assert_string_equal(e->srv.body,
			    "grant_type=client_credentials&scope=openid%20api.read&resource=https%"
			    "3A%2F%2Fapi.test&client_id=my%3Aclient&client_secret=a%3Ab%25c");
	token_result_clear(&o.r);
	source_free(s);
	free(secret);
}

/* Errors: permanent ones are spaced out; an echoed secret never reaches a message. */
static void
test_errors(void **state)
{
	struct env *e = *state;
	struct config_identity id = identity(CONFIG_SOURCE_ENTRA_SECRET);
	char *secret = write_file(e, "secret", "TopSecretValue", 0600);
	struct source *s = NULL;
	struct outcome o;

	id.authority = e->url;
	id.client_secret_file = secret;
	assert_int_equal(source_new(&s, &id, e->base, e->fetch), 0);

	e->srv.status = 401;
	e->srv.answer = "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: "
			"Invalid client secret provided.\",\"error_codes\":[7000215],"
			"\"trace_id\":\"tr\",\"correlation_id\":\"co\"}";
	fetch_one(e, s, "api://app", &o);
	assert_int_equal(o.r.http_status, 401);
	assert_true(o.r.permanent);
	assert_int_equal(o.r.retry_after, 30);
	assert_string_equal(o.r.error_code, "invalid_client");
	assert_string_equal(o.r.message, "AADSTS7000215: Invalid client secret provided. "
					 "trace_id=tr correlation_id=co");

	e->srv.answer = "{\"error\":\"invalid_client\",\"error_description\":\"bad secret "
			"TopSecretValue\"}";
	fetch_one(e, s, "api://app", &o);
	assert_null(strstr(o.r.message, "TopSecretValue"));
	assert_non_null(strstr(o.r.message, "withheld"));

	e->srv.status = 429;
	e->srv.retry_after = "7";
	e->srv.answer = "{\"error\":\"temporarily_unavailable\"}";
	fetch_one(e, s, "api://app", &o);
	assert_false(o.r.permanent);
	assert_int_equal(o.r.retry_after, 7);

	e->srv.status = 400;
	e->srv.retry_after = NULL;
	e->srv.answer = "<html>no</html>";
	fetch_one(e, s, "api://app", &o);
	assert_string_equal(o.r.error_code, "http_error");
	assert_true(o.r.permanent);

	/* the secret file went away: said from the loop, naming the file, not sent */
	e->srv.status = 200;
	assert_int_equal(unlink(secret), 0);
	e->srv.requests = 0;
	fetch_one(e, s, "api://app", &o);
	assert_int_equal(e->srv.requests, 0);
	assert_string_equal(o.r.error_code, "credential_error");
	assert_non_null(strstr(o.r.message, secret));
	assert_non_null(strstr(o.r.message, "No such file"));
	token_result_clear(&o.r);
	source_free(s);
	free(secret);
}

/* A message may hold no run of 8 bytes of the credential. */
static bool
holds_piece(const char *msg, const char *cred)
{
	size_t n = strlen(cred);

	for (size_t i = 0; i + 8 <= n; i++)
		if (memmem(msg, strlen(msg), cred + i, 8) != NULL)
			return true;
	return false;
}

static void
expect_withheld(const struct outcome *o, const char *cred, const char *code, const char *what)
{
	assert_int_not_equal(o->r.error, 0);
	assert_false(holds_piece(o->r.message, cred));
	assert_false(holds_piece(o->r.error_code, cred));
	assert_string_equal(o->r.error_code, code);
	assert_non_null(strstr(o->r.message, "withheld"));
	assert_non_null(strstr(o->r.message, what));
}

/*
 * An answer that echoes the credential, in any form and wherever token.c would
 * cut it: the description is withheld, the error code kept when it is plain.
 */
static void
test_echoed_credential_withheld(void **state)
{
	struct env *e = *state;
	struct config_identity id = identity(CONFIG_SOURCE_OAUTH2);
	const char *secret = "Top Secret+Value/42";
	char *path = write_file(e, "secret", "Top Secret+Value/42\n", 0600);
	char url[200], answer[1024], pad[491];
	struct source *s = NULL;
	struct outcome o;

	snprintf(url, sizeof(url), "%s/token", e->url);
	id.token_url = url;
	id.client_secret_file = path;
	id.auth_method = CONFIG_AUTH_SECRET_POST;
	assert_int_equal(source_new(&s, &id, e->base, e->fetch), 0);
	memset(pad, 'x', sizeof(pad) - 1);
	pad[sizeof(pad) - 1] = '\0';
	e->srv.status = 401;

	/* raw, where the 511-byte description and the ids cut it */
	snprintf(answer, sizeof(answer),
		 "{\"error\":\"invalid_client\",\"error_description\":\"%s%s\","
		 "\"error_codes\":[7000215]}",
		 pad + 5, secret);
	e->srv.answer = answer;
	fetch_one(e, s, "api://app", &o);
	expect_withheld(&o, secret, "invalid_client", "client secret");
	assert_true(o.r.permanent);

	/* form-encoded, as the upstream received it */
	e->srv.answer = "{\"error\":\"invalid_client\",\"error_description\":\"bad: "
			"client_secret=Top%20Secret%2BValue%2F42\"}";
	fetch_one(e, s, "api://app", &o);
	expect_withheld(&o, secret, "invalid_client", "client secret");

	/* JSON-escaped as PHP and .NET write it */
	e->srv.answer = "{\"error\":\"invalid_client\",\"error_description\":\"bad: "
			"Top Secret\\u002BValue\\/42\"}";
	fetch_one(e, s, "api://app", &o);
	expect_withheld(&o, secret, "invalid_client", "client secret");

	/* in the error code itself, cut to 63 bytes: the code goes too */
	snprintf(answer, sizeof(answer), "{\"error\":\"%s%s\"}", pad + 440, secret);
	e->srv.answer = answer;
	fetch_one(e, s, "api://app", &o);
	expect_withheld(&o, secret, "upstream_error", "client secret");

	/* an error document with 200 */
	e->srv.status = 200;
	e->srv.answer = "{\"error\":\"x\",\"error_description\":\"Top Secret+Value/42\"}";
	fetch_one(e, s, "api://app", &o);
	expect_withheld(&o, secret, "x", "client secret");

	/* an echo of something else is kept as it is */
	e->srv.status = 401;
	e->srv.answer = "{\"error\":\"invalid_client\",\"error_description\":\"Top Secret "
			"is not the secret\"}";
	fetch_one(e, s, "api://app", &o);
	assert_string_equal(o.r.message, "Top Secret is not the secret");
	token_result_clear(&o.r);
	source_free(s);

	/* client_secret_basic: the Authorization header's credentials echoed */
	id.auth_method = CONFIG_AUTH_SECRET_BASIC;
	assert_int_equal(source_new(&s, &id, e->base, e->fetch), 0);
	/* base64("cid:Top%20Secret%2BValue%2F42") */
	e->srv.answer = "{\"error\":\"invalid_client\",\"error_description\":\"Basic "
			"Y2lkOlRvcCUyMFNlY3JldCUyQlZhbHVlJTJGNDI=\"}";
	fetch_one(e, s, "api://app", &o);
	assert_string_equal(e->srv.auth, "Basic Y2lkOlRvcCUyMFNlY3JldCUyQlZhbHVlJTJGNDI=");
	expect_withheld(&o, "Y2lkOlRvcCUyMFNlY3JldCUyQlZhbHVlJTJGNDI=", "invalid_client",
			"client secret");
	token_result_clear(&o.r);
	source_free(s);
	free(path);
}

/* A client assertion or federated token echoed back is withheld too. */
static void
test_echoed_assertion_withheld(void **state)
{
	struct env *e = *state;
	struct config_identity id = identity(CONFIG_SOURCE_OAUTH2);
	EVP_PKEY *k = EVP_EC_gen("P-256");
	char *key = NULL, *tok, *a;
	char url[200], assertion[2048];
	struct source *s = NULL;
	struct outcome o;
	FILE *f;

	assert_non_null(k);
	assert_true(asprintf(&key, "%s/key.pem", e->dir) > 0);
	f = fopen(key, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
	fclose(f);
	assert_int_equal(chmod(key, 0600), 0);
	EVP_PKEY_free(k);
	snprintf(url, sizeof(url), "%s/token", e->url);
	id.token_url = url;
	id.auth_method = CONFIG_AUTH_PRIVATE_KEY_JWT;
	id.private_key_file = key;
	assert_int_equal(source_new(&s, &id, e->base, e->fetch), 0);
	e->srv.status = 401;
	e->srv.answer = NULL; /* echoes the form, assertion and all */
	fetch_one(e, s, "api://app", &o);
	a = strstr(e->srv.body, "client_assertion=");
	assert_non_null(a);
	snprintf(assertion, sizeof(assertion), "%s", a + strlen("client_assertion="));
	expect_withheld(&o, assertion, "invalid_client", "client assertion");
	token_result_clear(&o.r);
	source_free(s);
	free(key);

	id = identity(CONFIG_SOURCE_ENTRA_FEDERATED);
	id.authority = e->url;
	tok = write_file(e, "token", "fed.eyJzdWIiOiJzeXN0ZW0.signature-of-it", 0644);
	id.federated_token_file = tok;
	assert_int_equal(source_new(&s, &id, e->base, e->fetch), 0);
	fetch_one(e, s, "api://app", &o);
	expect_withheld(&o, "fed.eyJzdWIiOiJzeXN0ZW0.signature-of-it", "invalid_client",
			"federated token");
	token_result_clear(&o.r);
	source_free(s);
	free(tok);
}

/*
 * A source freed before the loop reported a credential error: the pending
 * report goes with it (nothing left on the loop, nothing leaked, never called).
 */
static void
test_free_with_early_report_pending(void **state)
{
	struct env *e = *state;
	struct config_identity id = identity(CONFIG_SOURCE_ENTRA_SECRET);
	struct source *s = NULL;
	struct outcome o = {0};
	char *missing = NULL;
	int before;

	assert_true(asprintf(&missing, "%s/missing", e->dir) > 0);
	id.authority = e->url;
	id.client_secret_file = missing;
	assert_int_equal(source_new(&s, &id, e->base, e->fetch), 0);
	token_result_init(&o.r);
	before = event_base_get_num_events(e->base, EVENT_BASE_COUNT_ADDED);
	assert_int_equal(source_fetch(s, "api://app", on_done, &o), 0);
	assert_int_equal(event_base_get_num_events(e->base, EVENT_BASE_COUNT_ADDED), before + 1);
	source_free(s);
	assert_int_equal(event_base_get_num_events(e->base, EVENT_BASE_COUNT_ADDED), before);
	event_base_loop(e->base, EVLOOP_NONBLOCK);
	assert_int_equal(o.calls, 0);
	assert_int_equal(e->srv.requests, 0);
	free(missing);
}

/* The federated token is cached, and read again after an error answer. */
static void
test_federated_reread(void **state)
{
	struct env *e = *state;
	struct config_identity id = identity(CONFIG_SOURCE_ENTRA_FEDERATED);
	char *tok = write_file(e, "token", "old.jwt.sig", 0644);
	struct source *s = NULL;
	struct outcome o;

	id.authority = e->url;
	id.federated_token_file = tok;
	assert_int_equal(source_new(&s, &id, e->base, e->fetch), 0);
	fetch_one(e, s, "api://app", &o);
	assert_string_equal(e->srv.body,
			    "grant_type=client_credentials&scope=api%3A%2F%2Fapp%2F.default&"
			    "client_id=cid&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3A"
			    "client-assertion-type%3Ajwt-bearer&client_assertion=old.jwt.sig");
	token_result_clear(&o.r);

	/* rotated, but read at most every 5 minutes while it works */
	free(write_file(e, "token", "new.jwt.sig", 0644));
	fetch_one(e, s, "api://app", &o);
	assert_non_null(strstr(e->srv.body, "&client_assertion=old.jwt.sig"));
	token_result_clear(&o.r);

	/* an error answer (expired assertion): the next request reads the file again */
	e->srv.status = 400;
	e->srv.answer = "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS700024\"}";
	fetch_one(e, s, "api://app", &o);
	assert_non_null(strstr(e->srv.body, "&client_assertion=old.jwt.sig"));
	e->srv.status = 200;
	e->srv.answer = "{\"token_type\":\"Bearer\",\"expires_in\":3599,\"access_token\":\"t-2\"}";
	fetch_one(e, s, "api://app", &o);
	assert_non_null(strstr(e->srv.body, "&client_assertion=new.jwt.sig"));
	assert_string_equal(o.r.access_token, "t-2");
	token_result_clear(&o.r);
	source_free(s);
	free(tok);
}

/* A source freed with a request in flight: the answer is dropped, nothing is called. */
static void
test_free_in_flight(void **state)
{
	struct env *e = *state;
	struct config_identity id = identity(CONFIG_SOURCE_ENTRA_SECRET);
	char *secret = write_file(e, "secret", "x", 0600);
	struct source *s = NULL;
	struct outcome o = {0};

	id.authority = e->url;
	id.client_secret_file = secret;
	assert_int_equal(source_new(&s, &id, e->base, e->fetch), 0);
	token_result_init(&o.r);
	assert_int_equal(source_fetch(s, "api://app", on_done, &o), 0);
	source_free(s);
	for (int i = 0; i < 200 && fetch_in_flight(e->fetch) > 0; i++)
		event_base_loop(e->base, EVLOOP_ONCE);
	assert_int_equal(fetch_in_flight(e->fetch), 0);
	assert_int_equal(o.calls, 0);
	/* bad resources are refused at once */
	assert_int_equal(source_new(&s, &id, e->base, e->fetch), 0);
	assert_int_equal(source_fetch(s, "", on_done, &o), -EINVAL);
	source_free(s);
	free(secret);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_entra_secret_form, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_oauth2_basic_and_params, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_federated_reread, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_free_in_flight, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_echoed_credential_withheld, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_echoed_assertion_withheld, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_free_with_early_report_pending, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
