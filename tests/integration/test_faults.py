"""Fault injection: a broken IMDS upstream, one fault at a time, cold and warm.

For every fault of tests/fakes/faulty_upstream.py, with no token cached yet
(cold) and with a valid token cached when the fault starts (warm):
- bearerd stays up and keeps answering;
- it never hands out an expired, empty or malformed token: every 200 carries a
  non-empty token with more than min_validity left, and while warm it is the
  token fetched before the fault;
- the fault shows in GET /v1/status and `bearerctl status` (last error, the
  upstream's status) and, when the daemon has /metrics, in its metrics;
- once the fault clears, a forced refresh brings a new token at once (the
  backoff cap itself is covered by test_natural_recovery_within_backoff_cap).
"""

import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import ROOT, remember_token, wait_for

FAULTY = ROOT / "tests" / "fakes" / "faulty_upstream.py"
MIN_VALIDITY = 300
UPSTREAM_TIMEOUT = 2  # identity timeout: hung upstreams fail after this
WAIT_TIMEOUT = 1  # [bearerd] wait_timeout: a waiting request gets 504 after this

# fault -> (regex the last error must match, upstream status recorded or None)
FAULTS = {
    "refuse": (r"unreachable|connect", None),
    "hang": (r"timed out|timeout", None),
    "stall_body": (r"timed out|timeout|partial|transfer closed", None),
    "http_500": (r"scripted 500", 500),
    "http_503": (r"scripted 503", 503),
    "http_429": (r"slow down", 429),
    "http_410": (r"scripted 410", 410),  # retried inside one fetch: see test_fault
    "entra_400": (r"AADSTS500011", 400),
    "malformed_json": (r"JSON|invalid_response", None),
    "no_access_token": (r"access_token", None),
    "expires_zero": (r"expired|lifetime", None),
    "expires_negative": (r"expired|lifetime", None),
    "expires_huge": (r"longer than|lifetime", None),
    "expires_nan": (r"not an integer|expires_in", None),
    "expires_short": (r"min_validity|lifetime", None),
    "body_10mb": (r"larger than|too large|size", None),
    "body_10mb_chunked": (r"larger than|too large|size", None),
    "tls_untrusted": (r"SSL|certificate|TLS|verif", None),
    "tls_wrong_host": (r"SSL|certificate|TLS|verif|name|match", None),
}
TLS_FAULTS = ("tls_untrusted", "tls_wrong_host")
RETRY_AFTER = 3  # the fake's Retry-After with http_429
BIG_BODY = ("body_10mb", "body_10mb_chunked")
MAX_PEAK_GROWTH_KB = 4096  # a buffered 10 MiB answer would grow the peak RSS by >= 10240


class FaultyUpstream:
    def __init__(self, tmp, certs):
        port_file = tmp / "faulty.ports"
        self.log = open(tmp / "faulty.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(FAULTY), "--port-file", str(port_file),
             "--tls-cert", str(certs["good_cert"]), "--tls-key", str(certs["good_key"]),
             "--bad-cert", str(certs["bad_cert"]), "--bad-key", str(certs["bad_key"]),
             "--wrong-cert", str(certs["wrong_cert"]), "--wrong-key", str(certs["wrong_key"])],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(),
                 what="faulty upstream to listen")
        control, plain, tls = (int(x) for x in port_file.read_text().split())
        self.control = f"http://127.0.0.1:{control}"
        path = "/metadata/identity/oauth2/token"
        self.plain_endpoint = f"http://127.0.0.1:{plain}{path}"
        self.tls_endpoint = f"https://127.0.0.1:{tls}{path}"
        self.ca = certs["ca_cert"]

    def _call(self, method, path, doc=None):
        data = None if doc is None else json.dumps(doc).encode()
        req = urllib.request.Request(self.control + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as r:
            return json.loads(r.read())

    def fault(self, name, retry_after=None):
        doc = {"fault": name}
        if retry_after is not None:
            doc["retry_after"] = retry_after
        return self._call("POST", "/_fake/fault", doc)

    def stats(self):
        return self._call("GET", "/_fake/stats")

    def reset(self):
        return self._call("POST", "/_fake/reset", {})

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(d):
    """A CA and a leaf for 127.0.0.1 it signed, one it signed for another host, and a
    self-signed leaf for 127.0.0.1 nobody trusts."""
    usage = ("basicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\n"
             "extendedKeyUsage = serverAuth\n")
    (d / "leaf.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n" + usage)
    (d / "wrong.ext").write_text("subjectAltName = DNS:other.example, IP:192.0.2.1\n" + usage)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=bearerd test CA", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "good.key", "-out", "good.csr",
            "-subj", "/CN=127.0.0.1", cwd=d)
    openssl("x509", "-req", "-in", "good.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "good.pem", "-days", "2", "-extfile", "leaf.ext", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "wrong.key", "-out", "wrong.csr",
            "-subj", "/CN=other.example", cwd=d)
    openssl("x509", "-req", "-in", "wrong.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "wrong.pem", "-days", "2", "-extfile", "wrong.ext", cwd=d)
    # same name and key usage, but self-signed: only the chain of trust is wrong
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "bad.key", "-out",
            "bad.pem", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName = IP:127.0.0.1, DNS:localhost", cwd=d)
    return {"ca_cert": d / "ca.pem", "good_cert": d / "good.pem", "good_key": d / "good.key",
            "bad_cert": d / "bad.pem", "bad_key": d / "bad.key",
            "wrong_cert": d / "wrong.pem", "wrong_key": d / "wrong.key"}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faulty")
    u = FaultyUpstream(tmp, make_certs(tmp))
    yield u
    u.stop()


@pytest.fixture
def faulty(upstream):
    upstream.reset()
    yield upstream
    upstream.reset()  # releases hung connections


def fault_config(u, tls):
    lines = [
        "[bearerd]", "socket = @SOCKET@", "log_level = debug",
        f"min_validity = {MIN_VALIDITY}", "refresh_margin = 900",
        f"wait_timeout = {WAIT_TIMEOUT}", "",
        '[identity "vm"]', "source = azure-imds",
        f"endpoint = {u.tls_endpoint if tls else u.plain_endpoint}",
        f"timeout = {UPSTREAM_TIMEOUT}", "dynamic_resources = yes",
    ]
    if tls:
        lines.append(f"ca_file = {u.ca}")
    lines += ["", '[audience "api"]', "identity = vm", "resource = api://faults",
              "prefetch = no"]
    return "\n".join(lines) + "\n"


def checked(r):
    """Every 200 from bearerd: a non-empty token with more than min_validity left."""
    if r.status == 200:
        body = r.json()
        tok = body["access_token"]
        assert isinstance(tok, str) and tok, "an empty token was served"
        remember_token(tok)
        assert tok.startswith("faulty.") and tok.split(".")[1].isdigit(), \
            "a token from a broken answer was served"
        assert body["expires_in"] > MIN_VALIDITY
        assert body["expires_on"] > time.time() + MIN_VALIDITY
    else:
        # errors are JSON with a code; failures say when to come back
        body = r.json()
        assert body["error"]
        if r.status in (503, 504):
            assert int(r.headers["retry-after"]) >= 1
    return r


def token(d):
    return checked(d.get("/v1/token/api", timeout=15))


def entry(d):
    st = d.get("/v1/status").json()
    return next(e for e in st if e["audience"] == "api")


def peak_rss_kb(d):
    for line in open(f"/proc/{d.proc.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def alive(d):
    assert d.proc.poll() is None, "bearerd died:\n" + d.logs()
    assert d.get("/healthz").status == 200


def assert_fault_reported(d, fault):
    pattern, status = FAULTS[fault]
    e = entry(d)
    assert e["failures"] >= 1
    assert re.search(pattern, e["last_error"], re.I), e["last_error"]
    if status is not None:
        assert e["last_status"] == status
    out = d.ctl("status")
    assert out.returncode == 0, out.stderr
    # the table shows (the start of) the same last error on the audience's row
    row = next(line for line in out.stdout.splitlines() if line.startswith("api"))
    assert e["last_error"][:20] in row, (row, e["last_error"])
    m = d.get("/metrics")
    if m.status != 404:  # /metrics is optional in a build; when it is there it must count this
        assert m.status == 200
        text = m.body.decode()
        fails = [ln for ln in text.splitlines()
                 if ln.startswith("bearerd_refresh_failures_total{") and 'identity="vm"' in ln
                 and float(ln.rsplit(None, 1)[1]) > 0]
        assert fails, text


def wait_failures(d, at_least):
    return wait_for(lambda: entry(d)["failures"] >= at_least and entry(d),
                    timeout=UPSTREAM_TIMEOUT + 10, step=0.05, what="the fetch to fail")


def recover(d, u, old=None):
    """Clears the fault and forces refreshes until a new token is served.  A forced refresh
    waits for the end of a backoff (a client error's lasts 30 s): allow for it."""
    u.fault("none")
    backoff = max(0, entry(d)["refresh_in"])

    def fresh():
        d.request("POST", "/v1/refresh/api")
        r = token(d)
        return r.status == 200 and r.json()["access_token"] != old and r

    r = wait_for(fresh, timeout=UPSTREAM_TIMEOUT + 13 + backoff, step=0.2, what="recovery")
    assert entry(d)["last_error"] == ""
    return r


def start_fault(d, u, fault, phase, good):
    """Turns the fault on; returns once bearerd has failed a fetch because of it."""
    u.fault(fault, retry_after=RETRY_AFTER)
    if phase == "warm":
        assert d.request("POST", "/v1/refresh/api").status == 202
        # while the refresh fails, the cached token keeps being served
        end = time.monotonic() + UPSTREAM_TIMEOUT + 10
        while entry(d)["failures"] < 1:
            assert time.monotonic() < end, "the refresh did not fail: " + str(entry(d))
            r = token(d)
            assert r.status == 200 and r.json()["access_token"] == good
            time.sleep(0.05)
        for _ in range(3):
            r = token(d)
            assert r.status == 200 and r.json()["access_token"] == good
        assert entry(d)["state"] in ("valid", "refreshing")
    else:
        r = token(d)
        assert r.status in (503, 504), (r.status, r.body)
        wait_failures(d, 1)
        r = token(d)
        assert r.status in (503, 504), (r.status, r.body)
        if fault == "http_429":
            assert int(r.headers["retry-after"]) >= RETRY_AFTER - 1
        assert entry(d)["state"] in ("failed", "fetching")


def start_gone(d, u, phase, good):
    """410 "IMDS is updating": retried inside one fetch for over 70 s, as the SDKs do."""
    u.fault("http_410")
    if phase == "warm":
        assert d.request("POST", "/v1/refresh/api").status == 202
    else:
        r = token(d)
        assert r.status == 504, (r.status, r.body)  # the fetch goes on
    wait_for(lambda: u.stats()["by_fault"].get("http_410", 0) >= 2, timeout=10,
             what="a second try after 410")
    r = token(d)
    if phase == "warm":
        assert r.status == 200 and r.json()["access_token"] == good
    else:
        assert r.status == 504, (r.status, r.body)  # still fetching: come back shortly
    e = entry(d)
    assert e["state"] == ("refreshing" if phase == "warm" else "fetching")
    assert "IMDS is updating" in d.logs()


@pytest.mark.parametrize("phase", ["cold", "warm"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault(faulty, start_daemon, fault, phase):
    d = start_daemon(fault_config(faulty, tls=fault in TLS_FAULTS))
    good = None
    if phase == "warm":
        r = token(d)
        assert r.status == 200
        good = r.json()["access_token"]
    elif fault in BIG_BODY:
        # touch libcurl's code once on another resource, so the peak below is the answer's
        assert checked(d.get("/v1/token?resource=api://warm-up")).status == 200
    peak = peak_rss_kb(d)
    if fault == "http_410":
        start_gone(d, faulty, phase, good)
    else:
        start_fault(d, faulty, fault, phase, good)
        assert_fault_reported(d, fault)
    if fault in BIG_BODY:
        grown = peak_rss_kb(d) - peak
        print(f"{fault} {phase}: peak RSS grew by {grown} kB")
        assert grown < MAX_PEAK_GROWTH_KB, f"peak RSS grew by {grown} kB"
    alive(d)
    recover(d, faulty, good)
    alive(d)


def test_natural_recovery_within_backoff_cap(faulty, start_daemon):
    """Without a forced refresh: the retry timer alone brings the token back within 60 s."""
    d = start_daemon(fault_config(faulty, tls=False))
    faulty.fault("http_503")
    assert token(d).status == 503
    wait_failures(d, 2)  # retried on its own, with nobody asking
    faulty.fault("none")
    t0 = time.monotonic()
    r = wait_for(lambda: token(d).status == 200, timeout=65, step=0.25,
                 what="recovery within the backoff cap")
    assert r
    print(f"recovered {time.monotonic() - t0:.1f} s after the fault cleared")
    alive(d)


@pytest.mark.parametrize("fault", ["hang", "stall_body"])
def test_sigterm_with_a_fetch_in_flight_exits_cleanly(faulty, start_daemon, fault):
    """SIGTERM while the upstream hangs: bearerd exits 0 at once, with nothing leaked
    (the ASan build of the suite checks the leak part)."""
    d = start_daemon(fault_config(faulty, tls=False))
    faulty.fault(fault)
    assert token(d).status == 504  # the fetch is still in flight
    assert entry(d)["state"] == "fetching"
    t0 = time.monotonic()
    rc = d.stop()
    print(f"stopped in {time.monotonic() - t0:.2f} s")
    assert rc == 0, d.log_path.read_text()
