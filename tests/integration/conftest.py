"""Fixtures for the integration tests: a private bearerd on a temporary socket,
driven from outside the way a user drives it, against a scriptable fake IMDS.

Run inside a network namespace that has only lo (scripts/check does), so a
mistake that aims at a real host fails instead of leaving the machine."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("BEARERD_BUILD", ROOT / "build"))
BEARERD = BUILD / "daemon" / "bearerd"
BEARERCTL = BUILD / "client" / "bearerctl"
BEARER_GET = BUILD / "client" / "bearer-get"
FAKE_IMDS = ROOT / "tests" / "fakes" / "fake_imds.py"


def wait_for(pred, timeout=10.0, step=0.02, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


class FakeIMDS:
    def __init__(self, tmp, args=(), name="fake"):
        port_file = tmp / f"{name}.port"
        self.log = open(tmp / f"{name}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE_IMDS), "--port", "0", "--port-file", str(port_file),
             *args],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(),
                 what="fake IMDS to listen")
        self.port = int(port_file.read_text().strip())
        self.base = f"http://127.0.0.1:{self.port}"
        self.endpoint = self.base + "/metadata/identity/oauth2/token"

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def configure(self, **behaviour):
        return self._call("POST", "/_fake/config", behaviour)

    def stats(self):
        return self._call("GET", "/_fake/stats")

    def reset(self):
        return self._call("POST", "/_fake/reset", {})

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


class Daemon:
    """A bearerd started on a config written to a temporary directory."""

    def __init__(self, tmp, config_text=None, args=None, env=None, prefix=()):
        self.tmp = tmp
        self.socket = str(tmp / "bearerd.sock")
        self.config = tmp / "bearerd.conf"
        self.log_path = tmp / "bearerd.log"
        if config_text is not None:
            self.config.write_text(config_text.replace("@SOCKET@", self.socket))
            argv = [str(BEARERD), "-c", str(self.config)]
        else:
            argv = [str(BEARERD)]
        argv = [*prefix, *argv, *(args or [])]  # prefix: a wrapper that execs bearerd
        e = dict(os.environ)
        e["BEARERD_SOCKET"] = self.socket
        e.update(env or {})
        self.env = e
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=e)
        try:
            wait_for(lambda: self.proc.poll() is not None or self._answers(),
                     what="bearerd to listen")
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise AssertionError(f"bearerd exited {self.proc.returncode}:\n{self.logs()}")

    def _answers(self):
        try:
            return self.get("/healthz").status == 200
        except OSError:
            return False

    def request(self, method, path, headers=None, timeout=30):
        c = UnixHTTPConnection(self.socket, timeout=timeout)
        try:
            c.request(method, path, headers=headers or {})
            r = c.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            c.close()

    def get(self, path, headers=None, timeout=30):
        return self.request("GET", path, headers, timeout)

    def ctl(self, *args, check=False, input=None):
        return subprocess.run([str(BEARERCTL), "-s", self.socket, *args], capture_output=True,
                              text=True, timeout=60, check=check, input=input)

    def logs(self):
        self.log.flush()
        return self.log_path.read_text()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


# Every token handed to a test is recorded; no log line may contain one.
SEEN_TOKENS = set()


def remember_token(tok):
    if tok:
        SEEN_TOKENS.add(tok)
    return tok


@pytest.fixture
def fake(tmp_path):
    f = FakeIMDS(tmp_path)
    yield f
    f.stop()


@pytest.fixture
def start_daemon(tmp_path):
    started = []

    def start(config_text=None, **kw):
        d = Daemon(tmp_path, config_text, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        rc = d.stop()
        text = d.log_path.read_text()
        for tok in SEEN_TOKENS:
            assert tok not in text, "a token appeared in bearerd's log"
        assert rc == 0, f"bearerd exited {rc}:\n{text}"


def imds_config(fake, **over):
    """A config with one azure-imds identity aimed at the fake and audience 'api'."""
    g = {"min_validity": 300, "refresh_margin": 900, "log_level": "debug"}
    g.update({k: v for k, v in over.items() if k in g or k in ("wait_timeout", "idle_timeout",
                                                                 "max_entries")})
    lines = ["[bearerd]", "socket = @SOCKET@"] + [f"{k} = {v}" for k, v in g.items()]
    lines += ["", '[identity "vm"]', "source = azure-imds", f"endpoint = {fake.endpoint}",
              "dynamic_resources = yes"]
    lines += ["", '[audience "api"]', "identity = vm",
              f"resource = {over.get('resource', 'api://test-app')}",
              f"prefetch = {over.get('prefetch', 'no')}"]
    return "\n".join(lines) + "\n"


# -- Entra ID / OAuth2 sources: a test CA, the fake Entra over TLS, oidc-provider ---------------

FAKE_ENTRA = ROOT / "tests" / "fakes" / "fake_entra.py"
OIDC_DIR = ROOT / "tests" / "oidc"


def remember_secret(secret):
    """Client secrets, federated assertions, key material: no log line may contain one either."""
    return remember_token(secret)


@pytest.fixture(scope="session")
def testca(tmp_path_factory):
    from testca import TestCA
    return TestCA(tmp_path_factory.mktemp("pki"))


class FakeEntra:
    """tests/fakes/fake_entra.py on an ephemeral loopback port, serving cert/key over TLS."""

    def __init__(self, tmp, cert, key, client_ca=None, name="fake-entra"):
        import ssl
        port_file = tmp / f"{name}.port"
        self.log_path = tmp / f"{name}.log"
        self.log = open(self.log_path, "w")
        argv = [sys.executable, str(FAKE_ENTRA), "--port", "0", "--port-file", str(port_file),
                "--cert", str(cert), "--key", str(key)]
        if client_ca is not None:
            argv += ["--client-ca", str(client_ca)]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(),
                 what="fake Entra to listen")
        self.port = int(port_file.read_text().strip())
        self.authority = f"https://127.0.0.1:{self.port}"
        self.token_url = self.authority + "/token"
        # the control API is test plumbing on loopback: no verification needed there
        self._ctx = ssl.create_default_context()
        self._ctx.check_hostname = False
        self._ctx.verify_mode = ssl.CERT_NONE

    def entra_url(self, tenant):
        return f"{self.authority}/{tenant}/oauth2/v2.0/token"

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.authority + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=self._ctx))
        with opener.open(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def configure(self, **behaviour):
        return self._call("POST", "/_fake/config", behaviour)

    def stats(self):
        return self._call("GET", "/_fake/stats")

    def reset(self):
        return self._call("POST", "/_fake/reset", {})

    def logs(self):
        self.log.flush()
        return self.log_path.read_text()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
        text = self.log_path.read_text()
        for s in SEEN_TOKENS:
            assert s not in text, "a token or secret appeared in the fake's log"


@pytest.fixture
def fake_entra(tmp_path, testca):
    """The fake Entra with the CA-signed server certificate; asks for client certificates."""
    f = FakeEntra(tmp_path, testca.server.cert, testca.server.key, client_ca=testca.ca.cert)
    yield f
    f.stop()


@pytest.fixture
def untrusted_entra(tmp_path, testca):
    """The fake Entra serving a self-signed certificate nobody vouches for."""
    f = FakeEntra(tmp_path, testca.untrusted.cert, testca.untrusted.key, name="untrusted")
    yield f
    f.stop()


def secret_file(tmp, name, content):
    """A secret file as bearerd accepts it: 0600, owned by us."""
    p = tmp / name
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.chmod(p, 0o600)
    return p


def identity_config(identity, audiences, ca_file=None, **glob):
    """A config with one identity (a dict of keys) named 'app' and audiences {name: resource}."""
    g = {"min_validity": 300, "refresh_margin": 900, "log_level": "debug"}
    g.update(glob)
    lines = ["[bearerd]", "socket = @SOCKET@"] + [f"{k} = {v}" for k, v in g.items()]
    if ca_file is not None:
        lines.append(f"ca_file = {ca_file}")
    lines += ["", '[identity "app"]'] + [f"{k} = {v}" for k, v in identity.items()]
    for name, resource in audiences.items():
        lines += ["", f'[audience "{name}"]', "identity = app", f"resource = {resource}"]
    return "\n".join(lines) + "\n"


# -- azure-appservice (added for test_sources_azure.py) ---------------------

APPSERVICE_SECRET = "fake-identity-header"


def appservice_secret_file(tmp, secret=APPSERVICE_SECRET):
    """The App Service identity header in a 0600 file, as identity_header_file wants it."""
    path = tmp / "identity-header"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path


def appservice_config(fake, secret_file=None, selector=None, **over):
    """A config with one azure-appservice identity aimed at the fake's /msi/token and
    audience 'api'.  Without secret_file the endpoint and the header come from the
    environment (IDENTITY_ENDPOINT, IDENTITY_HEADER) as on App Service itself."""
    g = {"min_validity": 300, "refresh_margin": 900, "log_level": "debug"}
    g.update({k: v for k, v in over.items() if k in g or k in ("wait_timeout", "idle_timeout",
                                                                 "max_entries")})
    lines = ["[bearerd]", "socket = @SOCKET@"] + [f"{k} = {v}" for k, v in g.items()]
    lines += ["", '[identity "app"]', "source = azure-appservice", "dynamic_resources = yes"]
    if secret_file is not None:
        lines += [f"endpoint = {fake.base}/msi/token", f"identity_header_file = {secret_file}"]
    if selector is not None:
        lines.append(f"{selector[0]} = {selector[1]}")
    lines += ["", '[audience "api"]', "identity = app",
              f"resource = {over.get('resource', 'api://test-app')}",
              f"prefetch = {over.get('prefetch', 'no')}"]
    return "\n".join(lines) + "\n"


class OIDCProvider:
    """tests/oidc/server.mjs: oidc-provider from npm on loopback, over TLS with the test CA."""

    RESOURCE = "https://api.example.test"

    def __init__(self, tmp, testca, tls=True):
        import secrets as _secrets
        if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            raise AssertionError("tests/oidc/node_modules is missing: run "
                                 "npm ci --prefix tests/oidc (scripts/check does)")
        self.secret_basic = remember_secret("b a+s/i:c%" + _secrets.token_urlsafe(16))
        self.secret_post = remember_secret("p=o&s t" + _secrets.token_urlsafe(16))
        self.kid = "bearerd-test-key"
        self.log_path = tmp / "oidc.log"
        self.log = open(self.log_path, "w")
        env = dict(os.environ)
        env.pop("OIDC_TLS_CERT", None)
        if tls:
            env.update(OIDC_TLS_CERT=str(testca.server.cert),
                       OIDC_TLS_KEY=str(testca.server.key))
        env.update(OIDC_CLIENT_CERT=str(testca.clients["rsa-pkcs8"].cert),
                   OIDC_CLIENT_CERT_EC=str(testca.clients["ec"].cert),
                   OIDC_CLIENT_KID=self.kid, OIDC_SECRET_BASIC=self.secret_basic,
                   OIDC_SECRET_POST=self.secret_post, OIDC_RESOURCES=self.RESOURCE)
        self.proc = subprocess.Popen(["node", str(OIDC_DIR / "server.mjs"), "0"],
                                     stdout=subprocess.PIPE, stderr=self.log, env=env, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            self.stop()
            raise AssertionError(f"oidc-provider did not start:\n{self.log_path.read_text()}")
        self.issuer = line.split()[1]
        self.token_url = self.issuer + "/token"
        self.ca = testca.ca.cert

    def jwks(self):
        import ssl
        ctx = ssl.create_default_context(cafile=str(self.ca))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
        with opener.open(self.issuer + "/jwks", timeout=10) as r:
            return json.loads(r.read())

    def logs(self):
        self.log.flush()
        return self.log_path.read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


@pytest.fixture(scope="module")
def oidc(tmp_path_factory, testca):
    p = OIDCProvider(tmp_path_factory.mktemp("oidc"), testca)
    yield p
    p.stop()


@pytest.fixture
def oidc_http(tmp_path, testca):
    """The same oidc-provider over plain HTTP: bearerd allows that to loopback only."""
    p = OIDCProvider(tmp_path, testca, tls=False)
    yield p
    p.stop()


def remember_fake(fake):
    """Everything secret the fake Entra saw goes to the log scan of start_daemon's teardown."""
    st = fake.stats()
    for tok in st["issued"]:
        remember_token(tok)
    for sig in st["assertion_signatures"]:
        remember_secret(sig)


@pytest.fixture
def fe(fake_entra, start_daemon):
    """fake_entra, set up after start_daemon so that it is torn down (and what it saw
    remembered) before the daemon's log scan."""
    yield fake_entra
    remember_fake(fake_entra)


def remember_key(path):
    """The base64 lines of a PEM private key: none may appear in a log."""
    for line in path.read_text().splitlines():
        if len(line) >= 40 and not line.startswith("-----"):
            remember_secret(line)
