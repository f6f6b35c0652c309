/*
 * The dev source: bearerd mints RS256 JWTs itself with a key generated at
 * start, and publishes the public half as a JWKS.  For development only; it
 * says so in the log.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "base64.h"
#include "config.h"
#include "json_write.h"
#include "jwt.h"
#include "log.h"
#include "source.h"
#include "wipe.h"

#define DEV_KEY_BITS	   2048
#define DEV_MAX_RESOURCE   4096		 /* longest audience we put in a token */
#define DEV_MAX_LIFETIME   (366 * 86400) /* what the cache accepts from any source */
#define DEV_DEFAULT_ISSUER "bearerd-dev"

/* One fetch waiting for the loop to deliver its already minted result. */
struct dev_fetch {
	TAILQ_ENTRY(dev_fetch) entry;
	struct source_dev *dev;
	struct event *ev;
	source_done_fn *done;
	void *arg;
	struct token_result res;
};

struct source_dev {
	struct source base; /* first: the common header */
	struct event_base *evbase;
	EVP_PKEY *key;
	char *kid;
	char *header_json; /* the JOSE header, the same for every token */
	char *jwks_json;
	size_t jwks_len;
	TAILQ_HEAD(, dev_fetch) pending;
};

static const struct source_ops dev_ops;

/* token.c's init/clear, kept local so this file links without it. */
static void
dev_result_init(struct token_result *r)
{
	memset(r, 0, sizeof(*r));
	r->retry_after = -1;
}

static void
dev_result_clear(struct token_result *r)
{
	wipe_free(r->access_token, r->token_len);
	dev_result_init(r);
}

/* Takes the buffer's contents as a new NUL-terminated string. */
static int
dev_buffer_string(struct evbuffer *b, char **out, size_t *out_len)
{
	size_t n = evbuffer_get_length(b);
	char *s;

	s = malloc(n + 1);
	if (s == NULL)
		return -ENOMEM;
	if (evbuffer_copyout(b, s, n) != (ev_ssize_t)n) {
		free(s);
		return -EIO;
	}
	s[n] = '\0';
	*out = s;
	if (out_len != NULL)
		*out_len = n;
	return 0;
}

static int
dev_add_member(struct evbuffer *b, const char *prefix, const char *value)
{
	if (evbuffer_add_printf(b, "%s", prefix) < 0)
		return -ENOMEM;
	return json_append_string(b, value, strlen(value));
}

/* A big-endian RSA parameter of key, base64url encoded as JWK wants it. */
static int
dev_key_param(EVP_PKEY *key, const char *name, char **out)
{
	BIGNUM *bn = NULL;
	unsigned char *bin = NULL;
	int n, r;

	if (EVP_PKEY_get_bn_param(key, name, &bn) != 1) {
		ERR_clear_error();
		return -EIO;
	}
	n = BN_num_bytes(bn);
	bin = malloc(n > 0 ? (size_t)n : 1);
	if (bin == NULL) {
		r = -ENOMEM;
		goto out;
	}
	BN_bn2bin(bn, bin);
	r = base64url_encode(bin, (size_t)n, out);
out:
	free(bin);
	BN_free(bn);
	return r;
}

/*
 * Derives the kid (RFC 7638 thumbprint), the JOSE header and the JWKS
 * document from the key.
 */
static int
dev_key_documents(struct source_dev *d)
{
	struct evbuffer *b = NULL;
	char *n = NULL, *e = NULL, *thumb_in = NULL;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	size_t thumb_len;
	int r;

	r = dev_key_param(d->key, OSSL_PKEY_PARAM_RSA_N, &n);
	if (r < 0)
		goto out;
	r = dev_key_param(d->key, OSSL_PKEY_PARAM_RSA_E, &e);
	if (r < 0)
		goto out;
	b = evbuffer_new();
	if (b == NULL) {
		r = -ENOMEM;
		goto out;
	}

	/* the required members in lexicographic order, no whitespace */
	if ((r = dev_add_member(b, "{\"e\":", e)) < 0 ||
	    (r = dev_add_member(b, ",\"kty\":", "RSA")) < 0 ||
	    (r = dev_add_member(b, ",\"n\":", n)) < 0 || (r = evbuffer_add(b, "}", 1)) < 0 ||
	    (r = dev_buffer_string(b, &thumb_in, &thumb_len)) < 0)
		goto nomem;
	if (EVP_Digest(thumb_in, thumb_len, md, &mdlen, EVP_sha256(), NULL) != 1) {
		ERR_clear_error();
		r = -EIO;
		goto out;
	}
	r = base64url_encode(md, mdlen, &d->kid);
	if (r < 0)
		goto out;

	evbuffer_drain(b, evbuffer_get_length(b));
	if ((r = dev_add_member(b, "{\"alg\":", "RS256")) < 0 ||
	    (r = dev_add_member(b, ",\"typ\":", "JWT")) < 0 ||
	    (r = dev_add_member(b, ",\"kid\":", d->kid)) < 0 || (r = evbuffer_add(b, "}", 1)) < 0 ||
	    (r = dev_buffer_string(b, &d->header_json, NULL)) < 0)
		goto nomem;

	evbuffer_drain(b, evbuffer_get_length(b));
	if ((r = dev_add_member(b, "{\"keys\":[{\"kty\":", "RSA")) < 0 ||
	    (r = dev_add_member(b, ",\"use\":", "sig")) < 0 ||
	    (r = dev_add_member(b, ",\"alg\":", "RS256")) < 0 ||
	    (r = dev_add_member(b, ",\"kid\":", d->kid)) < 0 ||
	    (r = dev_add_member(b, ",\"n\":", n)) < 0 ||
	    (r = dev_add_member(b, ",\"e\":", e)) < 0 || (r = evbuffer_add(b, "}]}", 3)) < 0 ||
	    (r = dev_buffer_string(b, &d->jwks_json, &d->jwks_len)) < 0)
		goto nomem;
	r = 0;
	goto out;

nomem:
	if (r != -EIO)
		r = -ENOMEM;
out:
	if (b != NULL)
		evbuffer_free(b);
	free(thumb_in);
	free(n);
	free(e);
	return r;
}

/* The claims of one token for resource, issued at now. */
static int
dev_claims(const struct config_identity *id, const char *resource, int64_t now, char **out)
{
	const char *issuer = id->issuer != NULL ? id->issuer : DEV_DEFAULT_ISSUER;
	const char *subject = id->subject != NULL ? id->subject : id->name;
	static const char hex[] = "0123456789abcdef";
	unsigned char rnd[16];
	char jti[2 * sizeof(rnd) + 1];
	struct evbuffer *b;
	int r = -ENOMEM;

	if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
		ERR_clear_error();
		return -EIO;
	}
	for (size_t i = 0; i < sizeof(rnd); i++) {
		jti[2 * i] = hex[rnd[i] >> 4];
		jti[2 * i + 1] = hex[rnd[i] & 0xf];
	}
	jti[sizeof(jti) - 1] = '\0';

	b = evbuffer_new();
	if (b == NULL)
		return -ENOMEM;
	if (dev_add_member(b, "{\"iss\":", issuer) < 0 ||
	    dev_add_member(b, ",\"sub\":", subject) < 0 ||
	    dev_add_member(b, ",\"aud\":", resource) < 0)
		goto out;
	if (id->roles != NULL && id->roles[0] != NULL) {
		if (evbuffer_add_printf(b, ",\"roles\":[") < 0)
			goto out;
		for (size_t i = 0; id->roles[i] != NULL; i++) {
			if ((i > 0 && evbuffer_add(b, ",", 1) < 0) ||
			    json_append_string(b, id->roles[i], strlen(id->roles[i])) < 0)
				goto out;
		}
		if (evbuffer_add(b, "]", 1) < 0)
			goto out;
	}
	if (evbuffer_add_printf(b, ",\"iat\":%" PRId64 ",\"nbf\":%" PRId64 ",\"exp\":%" PRId64, now,
				now, now + id->lifetime) < 0 ||
	    dev_add_member(b, ",\"jti\":", jti) < 0 ||
	    dev_add_member(b, ",\"idtyp\":", "app") < 0 || evbuffer_add(b, "}", 1) < 0)
		goto out;
	r = dev_buffer_string(b, out, NULL);
out:
	evbuffer_free(b);
	return r;
}

/* Mints a token for resource into res; failures are reported in res as well. */
static int
dev_mint(struct source_dev *d, const char *resource, struct token_result *res)
{
	const struct config_identity *id = d->base.id;
	int64_t now = (int64_t)time(NULL);
	char *claims = NULL, *token = NULL;
	int r;

	r = dev_claims(id, resource, now, &claims);
	if (r == 0)
		r = jwt_sign_rs256(d->key, d->header_json, claims, &token);
	free(claims);
	if (r < 0) {
		res->error = r;
		snprintf(res->error_code, sizeof(res->error_code), "dev_mint_failed");
		snprintf(res->message, sizeof(res->message),
			 "the dev source could not mint a token");
		return r;
	}
	res->access_token = token;
	res->token_len = strlen(token);
	res->expires_in = id->lifetime;
	res->expires_on = now + id->lifetime;
	return 0;
}

static void
dev_fetch_free(struct dev_fetch *f)
{
	if (f->ev != NULL)
		event_free(f->ev);
	dev_result_clear(&f->res);
	free(f);
}

static void
dev_fetch_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dev_fetch *f = arg;

	/* done may free the source: f is already off its list and touches nothing of it after */
	TAILQ_REMOVE(&f->dev->pending, f, entry);
	f->done(f->arg, &f->res);
	dev_fetch_free(f);
}

static int
dev_fetch(struct source *s, const char *resource, source_done_fn *done, void *arg)
{
	struct source_dev *d = (struct source_dev *)s;
	const struct timeval now = {0, 0};
	struct dev_fetch *f;

	if (resource == NULL || resource[0] == '\0' ||
	    strnlen(resource, DEV_MAX_RESOURCE + 1) > DEV_MAX_RESOURCE)
		return -EINVAL;
	f = calloc(1, sizeof(*f));
	if (f == NULL)
		return -ENOMEM;
	f->dev = d;
	f->done = done;
	f->arg = arg;
	dev_result_init(&f->res);
	f->ev = evtimer_new(d->evbase, dev_fetch_cb, f);
	if (f->ev == NULL || evtimer_add(f->ev, &now) < 0) {
		dev_fetch_free(f);
		return -ENOMEM;
	}
	/* a minting failure still arrives through done, like an upstream error would */
	dev_mint(d, resource, &f->res);
	TAILQ_INSERT_TAIL(&d->pending, f, entry);
	return 0;
}

static int
dev_jwks(struct source *s, struct evbuffer *out)
{
	struct source_dev *d = (struct source_dev *)s;

	if (evbuffer_add(out, d->jwks_json, d->jwks_len) < 0)
		return -ENOMEM;
	return 0;
}

static void
dev_free(struct source *s)
{
	struct source_dev *d = (struct source_dev *)s;
	struct dev_fetch *f;

	/* pending fetches are cancelled: their callbacks never run */
	while ((f = TAILQ_FIRST(&d->pending)) != NULL) {
		TAILQ_REMOVE(&d->pending, f, entry);
		dev_fetch_free(f);
	}
	EVP_PKEY_free(d->key);
	free(d->kid);
	free(d->header_json);
	free(d->jwks_json);
	free(d);
}

static const struct source_ops dev_ops = {
    .kind = "dev",
    .fetch = dev_fetch,
    .jwks = dev_jwks,
    .free = dev_free,
};

int
source_dev_new(struct source **out, const struct config_identity *id, struct event_base *base)
{
	struct source_dev *d;
	int r;

	if (id->source != CONFIG_SOURCE_DEV || id->lifetime <= 0 || id->lifetime > DEV_MAX_LIFETIME)
		return -EINVAL;
	d = calloc(1, sizeof(*d));
	if (d == NULL)
		return -ENOMEM;
	d->base.ops = &dev_ops;
	d->base.id = id;
	d->evbase = base;
	TAILQ_INIT(&d->pending);
	d->key = EVP_RSA_gen(DEV_KEY_BITS);
	if (d->key == NULL) {
		ERR_clear_error();
		r = -EIO;
		goto fail;
	}
	r = dev_key_documents(d);
	if (r < 0)
		goto fail;
	log_warnx("dev source mints its own tokens: for development only", "identity=%s", id->name);
	*out = &d->base;
	return 0;

fail:
	dev_free(&d->base);
	return r;
}
