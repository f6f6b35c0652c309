/*
 * The local CA of intercept mode: a key and a self-signed certificate kept in
 * intercept_ca_dir (ca.key, 0600, and ca.pem, which clients are told to
 * trust), created at first start, and leaf certificates minted per host on
 * demand and kept for reuse.  The certificate carries permitted
 * nameConstraints for the routed hosts, so trusting it trusts nothing else.
 */
#ifndef BEARERD_PROXY_CA_H
#define BEARERD_PROXY_CA_H

#include <openssl/ssl.h>

struct proxy_ca;

/*
 * Loads dir/ca.key and dir/ca.pem, or creates both (and dir, 0700) when
 * absent.  The CA is constrained to hosts (DNS names and addresses, the
 * routes' match hosts); when the existing one was made for other hosts, a
 * new key and certificate replace it.  Refuses (-EPERM, -ELOOP) a directory
 * or file that someone other than bearerd's user or root owns or may write,
 * a key others may read, and symbolic links; logs why.
 */
int proxy_ca_new(struct proxy_ca **out, const char *dir, const char *const *hosts, size_t n_hosts);
struct proxy_ca *proxy_ca_free(struct proxy_ca *ca);

/*
 * A server-side SSL for host (a DNS name or an address): its certificate is
 * a leaf for host signed by the CA (minted now or reused).  NULL on failure.
 */
SSL *proxy_ca_ssl(struct proxy_ca *ca, const char *host);

#endif
