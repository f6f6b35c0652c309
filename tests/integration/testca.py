"""A throwaway PKI for the upstream-TLS tests, made with the openssl CLI.

TestCA(dir) writes, once:
  ca.pem / ca.key              the test CA (trust anchor given to bearerd as ca_file)
  server.pem / server.key      127.0.0.1 + localhost, signed by the CA (the fakes serve it)
  untrusted.pem / .key         the same names, self-signed: bearerd must refuse it
  mtls.pem / mtls.key          a TLS client certificate signed by the CA (oauth2 mTLS)
and client-assertion credentials, each a self-signed certificate plus its key
(an app registration's certificate is usually self-signed):
  rsa-pkcs8   RSA 2048, key as PKCS#8 ("BEGIN PRIVATE KEY")
  rsa-trad    RSA 2048, key as traditional PEM ("BEGIN RSA PRIVATE KEY")
  ec          EC P-256, key as PKCS#8
  ec-trad     EC P-256, key as traditional PEM ("BEGIN EC PRIVATE KEY")
  encrypted   RSA 2048, key encrypted with a passphrase (bearerd must refuse it)
Private keys are written 0600: bearerd refuses secret files others can read.
"""

import os
import subprocess
from pathlib import Path

CLIENT_KINDS = ("rsa-pkcs8", "rsa-trad", "ec", "ec-trad", "encrypted")


def _openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {r.stderr}")
    return r.stdout


class Credential:
    """A certificate and its private key on disk."""

    def __init__(self, cert, key):
        self.cert = Path(cert)
        self.key = Path(key)

    @property
    def cert_pem(self):
        return self.cert.read_text()


class TestCA:
    __test__ = False  # not a pytest test class

    def __init__(self, directory):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        d = str(self.dir)
        self._ext = self.dir / "ext.cnf"
        self._ext.write_text(
            "[server]\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "[client]\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
        # the CA
        self.ca = Credential(self.dir / "ca.pem", self.dir / "ca.key")
        self._rsa_key(self.ca.key)
        _openssl("req", "-x509", "-new", "-key", "ca.key", "-out", "ca.pem", "-days", "2",
                 "-subj", "/CN=bearerd test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
        self.server = self._signed("server", "/CN=localhost", "server")
        self.mtls = self._signed("mtls", "/CN=bearerd-mtls-client", "client")
        # the same names as server.pem, but nobody vouches for it
        self.untrusted = Credential(self.dir / "untrusted.pem", self.dir / "untrusted.key")
        self._rsa_key(self.untrusted.key)
        _openssl("req", "-x509", "-new", "-key", "untrusted.key", "-out", "untrusted.pem",
                 "-days", "2", "-subj", "/CN=localhost", "-addext",
                 "subjectAltName=IP:127.0.0.1,DNS:localhost", cwd=d)
        self.clients = {k: self._client(k) for k in CLIENT_KINDS}
        self.passphrase = "bearerd-test-passphrase"

    def _rsa_key(self, path):
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out",
                 str(path), cwd=str(self.dir))
        os.chmod(path, 0o600)

    def _signed(self, name, subject, ext):
        d = str(self.dir)
        cred = Credential(self.dir / f"{name}.pem", self.dir / f"{name}.key")
        self._rsa_key(cred.key)
        _openssl("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
                 cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile",
                 str(self._ext), "-extensions", ext, cwd=d)
        return cred

    def server_for(self, dns):
        """A server certificate for the host name dns, signed by the CA: a loopback
        stand-in for a real host (management.azure.com for the Azure CLI)."""
        d = str(self.dir)
        ext = self.dir / f"ext-{dns}.cnf"
        ext.write_text("[s]\nbasicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature,keyEncipherment\n"
                       f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{dns}\n")
        cred = Credential(self.dir / f"{dns}.pem", self.dir / f"{dns}.key")
        if cred.cert.exists():
            return cred
        self._rsa_key(cred.key)
        _openssl("req", "-new", "-key", str(cred.key), "-out", f"{dns}.csr", "-subj",
                 f"/CN={dns}", cwd=d)
        _openssl("x509", "-req", "-in", f"{dns}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", str(cred.cert), "-days", "2", "-extfile", str(ext),
                 "-extensions", "s", cwd=d)
        return cred

    def _client(self, kind):
        d = str(self.dir)
        key = self.dir / f"client-{kind}.key"
        cert = self.dir / f"client-{kind}.pem"
        if kind.startswith("ec"):
            _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-out", str(key), cwd=d)
        else:
            _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                     "-out", str(key), cwd=d)
        os.chmod(key, 0o600)
        _openssl("req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", "2",
                 "-subj", f"/CN=bearerd-test-app-{kind}", cwd=d)
        # openssl truncates -out before reading -in: convert through a second file
        plain = self.dir / f"client-{kind}.plain.key"
        if kind in ("rsa-trad", "ec-trad", "encrypted"):
            os.replace(key, plain)
        if kind == "rsa-trad":
            _openssl("rsa", "-in", str(plain), "-out", str(key), "-traditional", cwd=d)
        elif kind == "ec-trad":
            _openssl("ec", "-in", str(plain), "-out", str(key), cwd=d)
        elif kind == "encrypted":
            _openssl("pkcs8", "-topk8", "-in", str(plain), "-out", str(key), "-v2", "aes-256-cbc",
                     "-passout", "pass:bearerd-test-passphrase", cwd=d)
        if plain.exists():
            plain.unlink()
        os.chmod(key, 0o600)
        return Credential(cert, key)
