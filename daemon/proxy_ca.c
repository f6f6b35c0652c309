/*
 * Local CA for intercept mode (see proxy_ca.h).  Keys are EC P-256: fast to
 * generate and to sign with.  The CA key never leaves ca.key (mode 0600; a
 * key, certificate or directory that anyone but bearerd's user or root could
 * have written is refused, and links are never followed).  The CA is
 * name-constrained to the routed hosts and made anew when they change.
 * Leaves share one key that lives only in memory, and are valid for 30 days
 * (re-minted when less than a day is left).
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

#define CA_DAYS		825
#define LEAF_DAYS	30
#define LEAF_RENEW	86400 /* s of validity left below which a leaf is minted again */
#define LEAF_CACHE	128
#define CA_SUBJECT	"bearerd local interception CA"
#define LEAF_IP_SUBJECT "bearerd interception leaf for an address"
#define CA_KEY_NAME	"ca.key"
#define CA_PEM_NAME	"ca.pem"

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

/*
 * A certificate for pub: a self-signed CA limited to constraints (a
 * nameConstraints value) when issuer is NULL, else a server leaf for cn.
 */
static X509 *
make_cert(EVP_PKEY *pub, const char *cn, X509 *issuer, EVP_PKEY *signer, long days,
	  const char *constraints)
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
	/*
	 * Verifiers check a leaf's CN against the DNS constraints when it has no
	 * DNS name, and an address looks like one: an address leaf's CN is not it.
	 */
	bad |= X509_NAME_add_entry_by_txt(
		   name, "CN", MBSTRING_UTF8,
		   (const unsigned char *)(issuer != NULL && is_ip(cn) ? LEAF_IP_SUBJECT : cn), -1,
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
		bad |= add_ext(x, &v3, NID_name_constraints, constraints);
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
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Appends s to the growing string *p (length *len, capacity *cap). */
static int
append(char **p, size_t *len, size_t *cap, const char *s)
{
	size_t n = strlen(s);

	if (*len + n + 1 > *cap) {
		size_t c = (*len + n + 1) * 2;
		char *q = realloc(*p, c);

		if (q == NULL)
			return -ENOMEM;
		*p = q;
		*cap = c;
	}
	memcpy(*p + *len, s, n + 1);
	*len += n;
	return 0;
}

/*
 * The permitted nameConstraints for hosts (RFC 5280 4.2.1.10), as an OpenSSL
 * extension value: one DNS subtree per routed name, one IP subtree per
 * routed address.  A name type without a subtree would be unconstrained, so
 * a type no route uses gets one that matches nothing real (DNS "invalid",
 * RFC 6761; the IP addresses 0.0.0.0/32 and ::/128).  Sorted and without
 * duplicates, so that the same hosts always give the same extension.
 */
static char *
constraints_for(const char *const *hosts, size_t n_hosts)
{
	char **sorted = calloc(n_hosts + 1, sizeof(*sorted));
	char *buf = NULL, *out = NULL;
	size_t len = 0, cap = 0;
	bool dns = false, ip = false;

	if (sorted == NULL)
		return NULL;
	for (size_t i = 0; i < n_hosts; i++) {
		size_t n = strlen(hosts[i]);

		sorted[i] = strndup(hosts[i], n > 0 && hosts[i][n - 1] == '.' ? n - 1 : n);
		if (sorted[i] == NULL)
			goto out;
	}
	qsort(sorted, n_hosts, sizeof(*sorted), cmp_str);
	if (append(&buf, &len, &cap, "critical") < 0)
		goto out;
	for (size_t i = 0; i < n_hosts; i++) {
		unsigned char a[16];
		char item[400];

		if (sorted[i][0] == '\0' || (i > 0 && strcmp(sorted[i], sorted[i - 1]) == 0))
			continue;
		if (inet_pton(AF_INET, sorted[i], a) == 1) {
			snprintf(item, sizeof(item), ",permitted;IP:%s/255.255.255.255", sorted[i]);
			ip = true;
		} else if (inet_pton(AF_INET6, sorted[i], a) == 1) {
			snprintf(item, sizeof(item),
				 ",permitted;IP:%s/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
				 sorted[i]);
			ip = true;
		} else {
			snprintf(item, sizeof(item), ",permitted;DNS:%s", sorted[i]);
			dns = true;
		}
		if (append(&buf, &len, &cap, item) < 0)
			goto out;
	}
	if ((!dns && append(&buf, &len, &cap, ",permitted;DNS:invalid") < 0) ||
	    (!ip && append(&buf, &len, &cap,
			   ",permitted;IP:0.0.0.0/255.255.255.255"
			   ",permitted;IP:::/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") < 0))
		goto out;
	out = buf;
	buf = NULL;
out:
	free(buf);
	for (size_t i = 0; i < n_hosts; i++)
		free(sorted[i]);
	free(sorted);
	return out;
}

/* True when cert carries exactly the nameConstraints extension want. */
static bool
constraints_equal(X509 *cert, X509_EXTENSION *want)
{
	int i = X509_get_ext_by_NID(cert, NID_name_constraints, -1);
	X509_EXTENSION *have = i >= 0 ? X509_get_ext(cert, i) : NULL;

	return have != NULL && X509_get_ext_by_NID(cert, NID_name_constraints, i) < 0 &&
	       X509_EXTENSION_get_critical(have) == X509_EXTENSION_get_critical(want) &&
	       ASN1_OCTET_STRING_cmp(X509_EXTENSION_get_data(have),
				     X509_EXTENSION_get_data(want)) == 0;
}

/*
 * Opens name in the CA directory, never through a symbolic link, and checks
 * that bearerd's user or root owns it and nobody else may write it (nor read
 * it, for the key): a CA key someone else planted, or could swap, would sign
 * leaves that clients trust.  -ELOOP for a link, -EPERM otherwise.
 */
static int
open_checked(int dfd, const char *name, bool secret, FILE **out)
{
	struct stat st;
	int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    (st.st_uid != geteuid() && st.st_uid != 0) ||
	    (st.st_mode & (secret ? 077 : 022)) != 0) {
		close(fd);
		return -EPERM;
	}
	*out = fdopen(fd, "r");
	if (*out == NULL) {
		close(fd);
		return -ENOMEM;
	}
	return 0;
}

/*
 * Loads both; -ENOENT for a missing ca.key, -ESRCH for a good ca.key without
 * a ca.pem that belongs to it (a crash between writing the two).
 */
static int
load(struct proxy_ca *ca, int dfd, const char **bad)
{
	FILE *f;
	int r;

	*bad = CA_KEY_NAME;
	r = open_checked(dfd, CA_KEY_NAME, true, &f);
	if (r < 0)
		return r;
	ca->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (ca->key == NULL) {
		ERR_clear_error();
		return -EINVAL;
	}
	*bad = CA_PEM_NAME;
	r = open_checked(dfd, CA_PEM_NAME, false, &f);
	if (r == -ENOENT)
		return -ESRCH;
	if (r < 0)
		return r;
	ca->cert = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (ca->cert == NULL || X509_check_private_key(ca->cert, ca->key) != 1) {
		ERR_clear_error();
		X509_free(ca->cert);
		ca->cert = NULL;
		return -ESRCH;
	}
	return 0;
}

/*
 * Writes name.tmp with O_EXCL at mode (never briefly wider than it ends),
 * syncs it, then links it to name, which must not exist (replace: renames it
 * over name): a crash leaves name whole or absent, never half written.
 */
static int
write_new(int dfd, const char *name, mode_t mode, EVP_PKEY *key, X509 *cert, bool replace)
{
	char tmp[64];
	FILE *f;
	int fd, ok, r = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp", name);
	unlinkat(dfd, tmp, 0); /* left by a crash */
	fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0)
		return -errno;
	f = fdopen(fd, "w");
	if (f == NULL) {
		close(fd);
		unlinkat(dfd, tmp, 0);
		return -ENOMEM;
	}
	ok = key != NULL ? PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL)
			 : PEM_write_X509(f, cert);
	if (fflush(f) != 0 || fsync(fd) < 0)
		ok = 0;
	if (fclose(f) != 0 || ok != 1)
		r = -EIO;
	else if (replace ? renameat(dfd, tmp, dfd, name) < 0 : linkat(dfd, tmp, dfd, name, 0) < 0)
		r = -errno;
	unlinkat(dfd, tmp, 0);
	if (r == 0)
		fsync(dfd);
	return r;
}

/*
 * A new key and certificate.  replace: over an existing pair (the routed
 * hosts changed), key first; a crash in between leaves a ca.pem that does
 * not belong to ca.key, which the next start completes.
 */
static int
create(struct proxy_ca *ca, int dfd, const char *constraints, bool replace)
{
	int r;

	EVP_PKEY_free(ca->key);
	X509_free(ca->cert);
	ca->cert = NULL;
	ca->key = EVP_EC_gen("P-256");
	if (ca->key == NULL)
		return -ENOMEM;
	ca->cert = make_cert(ca->key, CA_SUBJECT, NULL, ca->key, CA_DAYS, constraints);
	if (ca->cert == NULL)
		return -ENOMEM;
	r = write_new(dfd, CA_KEY_NAME, 0600, ca->key, NULL, replace);
	if (r < 0)
		return r;
	r = write_new(dfd, CA_PEM_NAME, 0644, NULL, ca->cert, replace);
	if (r < 0 && !replace)
		unlinkat(dfd, CA_KEY_NAME, 0);
	return r;
}

/* ca.key is good but ca.pem is missing or not its own (a crash): no client trusts it yet. */
static int
complete(struct proxy_ca *ca, int dfd, const char *constraints)
{
	ca->cert = make_cert(ca->key, CA_SUBJECT, NULL, ca->key, CA_DAYS, constraints);
	if (ca->cert == NULL)
		return -ENOMEM;
	return write_new(dfd, CA_PEM_NAME, 0644, NULL, ca->cert, true);
}

/*
 * The directory: created 0700 when absent; else bearerd's user or root must
 * own it and nobody else may write it (sticky or not), so that nobody else
 * can plant, swap or remove what is in it.  The open descriptor is used for
 * every file after this check.
 */
static int
open_dir(const char *dir)
{
	struct stat st;
	int fd;

	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || (st.st_uid != geteuid() && st.st_uid != 0) ||
	    (st.st_mode & 022) != 0) {
		close(fd);
		return -EPERM;
	}
	return fd;
}

/* One line that says what is wrong with which file (what: NULL for the directory). */
static void
log_failure(const char *dir, const char *what, int r)
{
	const char *hint = "";

	if (r == -EPERM && what == NULL)
		hint = "the directory must be owned by bearerd's user or root and writable by "
		       "nobody else";
	else if (r == -EPERM && strcmp(what, CA_KEY_NAME) == 0)
		hint = "ca.key must be a regular file owned by bearerd's user or root that nobody "
		       "else can read or write";
	else if (r == -EPERM)
		hint = "ca.pem must be a regular file owned by bearerd's user or root that nobody "
		       "else can write";
	else if (r == -ELOOP)
		hint = "symbolic links are not followed here";
	log_error("cannot use the interception CA", "dir=%s file=%s error=\"%s\"%s%s%s", dir,
		  what != NULL ? what : "-", strerror(-r), hint[0] != '\0' ? " hint=\"" : "", hint,
		  hint[0] != '\0' ? "\"" : "");
}

int
proxy_ca_new(struct proxy_ca **out, const char *dir, const char *const *hosts, size_t n_hosts)
{
	struct proxy_ca *ca = calloc(1, sizeof(*ca));
	X509_EXTENSION *want = NULL;
	X509V3_CTX v3;
	char *constraints = NULL;
	const char *what = NULL; /* the file a failure concerns; NULL: the directory */
	int dfd = -1, r = -ENOMEM;

	if (ca == NULL)
		return -ENOMEM;
	constraints = constraints_for(hosts, n_hosts);
	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, NULL, NULL, NULL, NULL, 0);
	want = constraints != NULL
		   ? X509V3_EXT_conf_nid(NULL, &v3, NID_name_constraints, constraints)
		   : NULL;
	if (want == NULL) {
		log_error("cannot build the interception CA's name constraints", "dir=%s", dir);
		ERR_clear_error();
		r = -EINVAL;
		goto fail;
	}
	dfd = open_dir(dir);
	if (dfd < 0) {
		r = dfd;
		goto fail_log;
	}
	r = load(ca, dfd, &what);
	if (r == -ENOENT) {
		what = NULL;
		r = create(ca, dfd, constraints, false);
		if (r == 0)
			log_info("created the interception CA: clients must trust it",
				 "dir=%s certificate=%s", dir, CA_PEM_NAME);
	} else if (r == -ESRCH) {
		what = CA_PEM_NAME;
		r = complete(ca, dfd, constraints);
		if (r == 0)
			log_info(
			    "completed the interception CA (ca.pem was missing or not ca.key's): "
			    "clients must trust it",
			    "dir=%s certificate=%s", dir, CA_PEM_NAME);
	} else if (r == 0 && !constraints_equal(ca->cert, want)) {
		/*
		 * A new key, not only a new certificate: clients that trust the old
		 * ca.pem would otherwise keep trusting leaves for the old hosts.
		 */
		what = NULL;
		r = create(ca, dfd, constraints, true);
		if (r == 0)
			log_warnx("the routed hosts changed: created a new interception CA, which "
				  "clients must trust instead of the old one",
				  "dir=%s certificate=%s", dir, CA_PEM_NAME);
	}
	if (r < 0)
		goto fail_log;
	ca->leaf_key = EVP_EC_gen("P-256");
	ca->ctx = SSL_CTX_new(TLS_server_method());
	if (ca->leaf_key == NULL || ca->ctx == NULL) {
		r = -ENOMEM;
		goto fail;
	}
	SSL_CTX_set_min_proto_version(ca->ctx, TLS1_2_VERSION);
	close(dfd);
	X509_EXTENSION_free(want);
	free(constraints);
	*out = ca;
	return 0;
fail_log:
	log_failure(dir, what, r);
fail:
	if (dfd >= 0)
		close(dfd);
	X509_EXTENSION_free(want);
	free(constraints);
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
	slot->cert = make_cert(ca->leaf_key, host, ca->cert, ca->key, LEAF_DAYS, NULL);
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
