/*
 * Local CA for intercept mode (see proxy_ca.h).  Keys are EC P-256: fast to
 * generate and to sign with.  The CA key never leaves ca.key (mode 0600, a
 * file others may read is refused); leaves share one key that lives only in
 * memory, and are valid for 30 days (re-minted when less than a day is left).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "proxy_ca.h"

#define CA_DAYS	    825
#define LEAF_DAYS   30
#define LEAF_RENEW  86400 /* s of validity left below which a leaf is minted again */
#define LEAF_CACHE  128
#define CA_SUBJECT  "bearerd local interception CA"
#define CA_KEY_NAME "ca.key"
#define CA_PEM_NAME "ca.pem"

struct leaf {
	char *host;
	X509 *cert;
	time_t expires;
	uint64_t used;
};

struct proxy_ca {
	EVP_PKEY *key;
	X509 *cert;
	EVP_PKEY *leaf_key;
	SSL_CTX *ctx;
	struct leaf leaves[LEAF_CACHE];
	uint64_t tick;
};

static int
add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
	X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, v3, nid, value);
	int ok;

	if (e == NULL)
		return -EINVAL;
	ok = X509_add_ext(x, e, -1);
	X509_EXTENSION_free(e);
	return ok == 1 ? 0 : -ENOMEM;
}

static bool
is_ip(const char *h)
{
	unsigned char buf[16];

	return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* A certificate for pub: self-signed CA when issuer is NULL, else a server leaf for cn. */
static X509 *
make_cert(EVP_PKEY *pub, const char *cn, X509 *issuer, EVP_PKEY *signer, long days)
{
	X509 *x = X509_new();
	X509_NAME *name;
	X509V3_CTX v3;
	BIGNUM *serial = BN_new();
	char san[300];
	int bad = 0;

	if (x == NULL || serial == NULL)
		goto fail;
	bad |= X509_set_version(x, 2) != 1;
	bad |= BN_rand(serial, 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1;
	bad |= BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) == NULL;
	bad |= X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL;
	bad |= X509_gmtime_adj(X509_getm_notAfter(x), days * 86400) == NULL;
	bad |= X509_set_pubkey(x, pub) != 1;
	name = X509_get_subject_name(x);
	bad |= X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
					  -1, 0) != 1;
	bad |= X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name) != 1;
	if (bad)
		goto fail;
	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, issuer != NULL ? issuer : x, x, NULL, NULL, 0);
	if (issuer == NULL) {
		bad |= add_ext(x, &v3, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
		bad |= add_ext(x, &v3, NID_key_usage, "critical,keyCertSign,cRLSign");
		bad |= add_ext(x, &v3, NID_subject_key_identifier, "hash");
	} else {
		snprintf(san, sizeof(san), "%s:%s", is_ip(cn) ? "IP" : "DNS", cn);
		bad |= add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE");
		bad |= add_ext(x, &v3, NID_key_usage, "critical,digitalSignature");
		bad |= add_ext(x, &v3, NID_ext_key_usage, "serverAuth");
		bad |= add_ext(x, &v3, NID_subject_alt_name, san);
		bad |= add_ext(x, &v3, NID_authority_key_identifier, "keyid:always");
	}
	if (bad || X509_sign(x, signer, EVP_sha256()) <= 0)
		goto fail;
	BN_free(serial);
	return x;
fail:
	BN_free(serial);
	X509_free(x);
	ERR_clear_error();
	return NULL;
}

static int
path_in(char *buf, size_t size, const char *dir, const char *name)
{
	int n = snprintf(buf, size, "%s/%s", dir, name);

	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/* Loads both; -ENOENT for a missing ca.key, -ESRCH for a good ca.key without ca.pem. */
static int
load(struct proxy_ca *ca, const char *key_path, const char *pem_path)
{
	struct stat st;
	FILE *f;

	f = fopen(key_path, "re");
	if (f == NULL)
		return -errno;
	if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode) || (st.st_mode & 077) != 0) {
		fclose(f);
		return -EPERM;
	}
	ca->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	f = fopen(pem_path, "re");
	if (f == NULL && errno == ENOENT && ca->key != NULL)
		return -ESRCH;
	if (f == NULL)
		return -errno;
	ca->cert = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (ca->key == NULL || ca->cert == NULL || X509_check_private_key(ca->cert, ca->key) != 1) {
		ERR_clear_error();
		return -EINVAL;
	}
	return 0;
}

/*
 * Writes path.tmp with O_EXCL at mode (never briefly wider than it ends),
 * syncs it, then links it to path, which must not exist: a crash leaves path
 * whole or absent, never half written, and an existing file is never replaced.
 */
static int
write_new(const char *path, mode_t mode, EVP_PKEY *key, X509 *cert)
{
	char tmp[4200];
	FILE *f;
	int fd, ok, r = 0;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	unlink(tmp); /* left by a crash */
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	f = fdopen(fd, "w");
	if (f == NULL) {
		close(fd);
		unlink(tmp);
		return -ENOMEM;
	}
	ok = key != NULL ? PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL)
			 : PEM_write_X509(f, cert);
	if (fflush(f) != 0 || fsync(fd) < 0)
		ok = 0;
	if (fclose(f) != 0 || ok != 1)
		r = -EIO;
	else if (link(tmp, path) < 0)
		r = -errno;
	unlink(tmp);
	return r;
}

static int
create(struct proxy_ca *ca, const char *dir, const char *key_path, const char *pem_path)
{
	int r;

	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	ca->key = EVP_EC_gen("P-256");
	if (ca->key == NULL)
		return -ENOMEM;
	ca->cert = make_cert(ca->key, CA_SUBJECT, NULL, ca->key, CA_DAYS);
	if (ca->cert == NULL)
		return -ENOMEM;
	r = write_new(key_path, 0600, ca->key, NULL);
	if (r < 0)
		return r;
	r = write_new(pem_path, 0644, NULL, ca->cert);
	if (r < 0)
		unlink(key_path);
	if (r == 0)
		log_info("created the interception CA: clients must trust it", "certificate=%s",
			 pem_path);
	return r;
}

/* ca.key was written but not ca.pem (a crash in between): no client trusts it yet. */
static int
complete(struct proxy_ca *ca, const char *pem_path)
{
	int r;

	ca->cert = make_cert(ca->key, CA_SUBJECT, NULL, ca->key, CA_DAYS);
	if (ca->cert == NULL)
		return -ENOMEM;
	r = write_new(pem_path, 0644, NULL, ca->cert);
	if (r == 0)
		log_info(
		    "completed the interception CA (ca.pem was missing): clients must trust it",
		    "certificate=%s", pem_path);
	return r;
}

int
proxy_ca_new(struct proxy_ca **out, const char *dir)
{
	struct proxy_ca *ca = calloc(1, sizeof(*ca));
	char key_path[4096], pem_path[4096];
	int r;

	if (ca == NULL)
		return -ENOMEM;
	if ((r = path_in(key_path, sizeof(key_path), dir, CA_KEY_NAME)) < 0 ||
	    (r = path_in(pem_path, sizeof(pem_path), dir, CA_PEM_NAME)) < 0)
		goto fail;
	r = load(ca, key_path, pem_path);
	if (r == -ENOENT)
		r = create(ca, dir, key_path, pem_path);
	else if (r == -ESRCH)
		r = complete(ca, pem_path);
	if (r < 0) {
		log_error("cannot use the interception CA", "dir=%s error=\"%s\"%s", dir,
			  strerror(-r),
			  r == -EPERM ? " hint=\"ca.key must be a regular file only its owner can "
					"read\""
				      : "");
		goto fail;
	}
	ca->leaf_key = EVP_EC_gen("P-256");
	ca->ctx = SSL_CTX_new(TLS_server_method());
	if (ca->leaf_key == NULL || ca->ctx == NULL) {
		r = -ENOMEM;
		goto fail;
	}
	SSL_CTX_set_min_proto_version(ca->ctx, TLS1_2_VERSION);
	*out = ca;
	return 0;
fail:
	proxy_ca_free(ca);
	return r;
}

struct proxy_ca *
proxy_ca_free(struct proxy_ca *ca)
{
	if (ca == NULL)
		return NULL;
	for (size_t i = 0; i < LEAF_CACHE; i++) {
		free(ca->leaves[i].host);
		X509_free(ca->leaves[i].cert);
	}
	SSL_CTX_free(ca->ctx);
	EVP_PKEY_free(ca->leaf_key);
	EVP_PKEY_free(ca->key);
	X509_free(ca->cert);
	free(ca);
	return NULL;
}

/* The cached leaf for host, or a new one in the least recently used slot. */
static X509 *
leaf_for(struct proxy_ca *ca, const char *host)
{
	time_t now = time(NULL);
	struct leaf *slot = &ca->leaves[0];

	for (size_t i = 0; i < LEAF_CACHE; i++) {
		struct leaf *l = &ca->leaves[i];

		if (l->host != NULL && strcmp(l->host, host) == 0 &&
		    l->expires - now > LEAF_RENEW) {
			l->used = ++ca->tick;
			return l->cert;
		}
		if (l->used < slot->used)
			slot = l;
	}
	free(slot->host);
	X509_free(slot->cert);
	memset(slot, 0, sizeof(*slot));
	slot->cert = make_cert(ca->leaf_key, host, ca->cert, ca->key, LEAF_DAYS);
	slot->host = strdup(host);
	if (slot->cert == NULL || slot->host == NULL) {
		free(slot->host);
		X509_free(slot->cert);
		memset(slot, 0, sizeof(*slot));
		return NULL;
	}
	slot->expires = now + (time_t)LEAF_DAYS * 86400;
	slot->used = ++ca->tick;
	return slot->cert;
}

SSL *
proxy_ca_ssl(struct proxy_ca *ca, const char *host)
{
	X509 *leaf = leaf_for(ca, host);
	SSL *ssl;

	if (leaf == NULL)
		return NULL;
	ssl = SSL_new(ca->ctx);
	if (ssl == NULL)
		return NULL;
	if (SSL_use_certificate(ssl, leaf) != 1 || SSL_use_PrivateKey(ssl, ca->leaf_key) != 1 ||
	    SSL_add1_chain_cert(ssl, ca->cert) != 1) {
		SSL_free(ssl);
		ERR_clear_error();
		return NULL;
	}
	return ssl;
}
