"""Clock jumps seen by a running bearerd: a suspend (the boot and the wall clock run on
while the monotonic clock, which libevent's timers use, stands still) and a step of the
wall clock alone (NTP, an operator).  On the API, the IMDS-compatible endpoint and the
proxy, no token is handed out that has expired by either clock, and a prefetch audience
nobody asks for gets its new token at once, not when a late timer fires.

The wall-clock step uses Debian's libfaketime as the issue describes it:
FAKETIME_DONT_FAKE_MONOTONIC=1 and a FAKETIME_TIMESTAMP_FILE rewritten from "+0" to
"+7200" while the daemon runs.  libfaketime cannot show a suspend: with
FAKETIME_DONT_FAKE_MONOTONIC=1 it leaves CLOCK_BOOTTIME with the monotonic clock, and
without it it moves the monotonic clock too.  The suspend therefore comes from
tests/fakes/clockshift.c, a small LD_PRELOAD shim built here, which moves CLOCK_BOOTTIME
and the wall clock together and leaves CLOCK_MONOTONIC alone.

The dev source mints JWTs whose exp comes from the daemon's (shifted) wall clock, so every
token is checked against the clock the daemon sees: real time plus the shift."""

import base64
import glob
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ROOT, identity_config, remember_token, secret_file, wait_for

MIN_VALIDITY = 300
HOUR = 3600
API_HOST = "api.example.com"
CLOCKSHIFT_SRC = ROOT / "tests" / "fakes" / "clockshift.c"


def free_ports(n):
    """n distinct loopback ports that were free (all held while choosing)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def jwt_claims(tok):
    part = tok.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def preload_env(lib, extra):
    """LD_PRELOAD for the daemon; a sanitized bearerd is told the preload comes first."""
    env = {"LD_PRELOAD": str(lib),
           "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
    env.update(extra)
    return env


class Recorder:
    """The proxy's upstream: answers 200 and keeps the Authorization header it was sent."""

    def __init__(self):
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                seen.append(self.headers.get("Authorization", ""))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    r = Recorder()
    yield r
    r.stop()


def clock_config(upstream, proxy_port, imds_port):
    return f"""[bearerd]
socket = @SOCKET@
min_validity = {MIN_VALIDITY}
log_level = debug

[identity "dev"]
source = dev
lifetime = {HOUR}

[audience "apim"]
identity = dev
resource = api://apim-demo
prefetch = yes

; prefetched and never asked for: only the daemon itself can notice the jump
[audience "idle"]
identity = dev
resource = api://idle
prefetch = yes

[compat]
identity = dev
imds_listen = 127.0.0.1:{imds_port}

[proxy]
listen = 127.0.0.1:{proxy_port}

[route "demo"]
match = {API_HOST}
audience = apim
upstream = http://127.0.0.1:{upstream.port}
"""


class Paths:
    """The three ways a token leaves bearerd; each returns (token, expires_on)."""

    def __init__(self, d, upstream, proxy_port, imds_port):
        self.d = d
        self.upstream = upstream
        self.proxy_port = proxy_port
        self.imds_port = imds_port

    def api(self):
        r = self.d.get("/v1/token/apim")
        assert r.status == 200, r.body
        body = r.json()
        return remember_token(body["access_token"]), body["expires_on"]

    def imds(self):
        c = http.client.HTTPConnection("127.0.0.1", self.imds_port, timeout=10)
        c.request("GET", "/metadata/identity/oauth2/token?api-version=2018-02-01"
                  "&resource=api://apim-demo", headers={"Metadata": "true"})
        r = c.getresponse()
        body = json.loads(r.read())
        c.close()
        assert r.status == 200, body
        return remember_token(body["access_token"]), int(body["expires_on"])

    def proxy(self):
        c = http.client.HTTPConnection("127.0.0.1", self.proxy_port, timeout=10)
        c.request("GET", f"http://{API_HOST}/orders")
        r = c.getresponse()
        r.read()
        c.close()
        assert r.status == 200
        auth = self.upstream.seen[-1]
        stamped = auth.startswith("Bearer ")
        assert stamped, "the proxy sent no Bearer token"
        tok = remember_token(auth[len("Bearer "):])
        return tok, jwt_claims(tok)["exp"]

    def all(self):
        return {"api": self.api(), "imds": self.imds(), "proxy": self.proxy()}


def status_of(d, aud):
    return next(e for e in d.get("/v1/status").json() if e["audience"] == aud)


def assert_fresh(got, old_token, daemon_now):
    """Every path handed out a token that is not the old one and is valid on the daemon's
    clock for more than min_validity, by expires_on and by the JWT's own exp."""
    for path, (tok, expires_on) in got.items():
        now = daemon_now()
        same = tok == old_token  # compared outside the assert: pytest would print tokens
        assert not same, f"{path} handed out the token from before the jump"
        assert expires_on > now + MIN_VALIDITY, (path, expires_on - now)
        exp = jwt_claims(tok)["exp"]
        assert exp > now + MIN_VALIDITY, (path, exp - now)


def assert_refreshed_promptly(d, aud, before_fetches, within=5):
    """The prefetch audience was fetched anew within a few seconds, and holds a token
    valid for (nearly) its whole lifetime."""
    def refreshed():
        st = status_of(d, aud)
        return st["fetches"] > before_fetches and st["state"] == "valid" and st
    st = wait_for(refreshed, timeout=within, step=0.1,
                  what=f"audience {aud} to be refreshed after the jump")
    assert st["expires_in"] > HOUR - 60


def faketime_lib():
    libs = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    assert libs, "libfaketime is missing: apt-get install faketime (scripts/check does)"
    return libs[0]


@pytest.fixture
def faketime(tmp_path):
    """(env for the daemon, shift(seconds)) moving its wall clock only."""
    stamp = tmp_path / "faketime"
    stamp.write_text("+0\n")

    def shift(seconds):
        tmp = tmp_path / "faketime.new"
        tmp.write_text(f"{seconds:+d}\n")
        os.replace(tmp, stamp)

    env = preload_env(faketime_lib(), {"FAKETIME_DONT_FAKE_MONOTONIC": "1",
                                       "FAKETIME_TIMESTAMP_FILE": str(stamp),
                                       "FAKETIME_NO_CACHE": "1"})
    return env, shift


@pytest.fixture
def clockshift(tmp_path):
    """(env for the daemon, shift(seconds[, wall])): a suspend of that long, as the daemon
    sees it (boot and wall clock ahead, monotonic clock not)."""
    lib = tmp_path / "clockshift.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
                    str(lib), str(CLOCKSHIFT_SRC), "-ldl"], check=True)
    offset = tmp_path / "clockshift"
    offset.write_bytes(bytes(16))

    def shift(seconds, wall=None):
        """Asleep for seconds; the wall clock ahead by as much, or by wall seconds."""
        data = b"".join((s * 1000).to_bytes(8, "little", signed=True)
                        for s in (seconds, seconds if wall is None else wall))
        fd = os.open(offset, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)

    return preload_env(lib, {"CLOCKSHIFT_FILE": str(offset)}), shift


def start_with_clock(start_daemon, upstream, env):
    pp, ip = free_ports(2)
    d = start_daemon(clock_config(upstream, pp, ip), env=env)
    wait_for(lambda: d.get("/readyz").status == 200, what="readiness")
    return d, Paths(d, upstream, pp, ip)


def test_shim_moves_boot_and_wall_clock_only(clockshift, tmp_path):
    """The suspend shim itself: what the daemon is shown is what a suspend looks like."""
    env, shift = clockshift
    prog = tmp_path / "clocks.py"
    prog.write_text("import time\n"
                    "print(time.clock_gettime(time.CLOCK_MONOTONIC), "
                    "time.clock_gettime(time.CLOCK_BOOTTIME), time.time())\n")
    shift(HOUR)
    out = subprocess.run([sys.executable, str(prog)], env=dict(os.environ, **env), check=True,
                         capture_output=True, text=True).stdout.split()
    mono, boot, wall = map(float, out)
    assert HOUR - 5 < boot - mono < HOUR + 5
    assert HOUR - 5 < wall - time.time() < HOUR + 5


def test_faketime_leaves_boottime_with_monotonic(faketime, tmp_path):
    """What libfaketime does with FAKETIME_DONT_FAKE_MONOTONIC=1: the wall clock moves,
    CLOCK_BOOTTIME stays with CLOCK_MONOTONIC (hence the shim for a suspend)."""
    env, shift = faketime
    prog = tmp_path / "clocks.py"
    prog.write_text("import time\n"
                    "print(time.clock_gettime(time.CLOCK_MONOTONIC), "
                    "time.clock_gettime(time.CLOCK_BOOTTIME), time.time())\n")
    shift(2 * HOUR)
    out = subprocess.run([sys.executable, str(prog)], env=dict(os.environ, **env), check=True,
                         capture_output=True, text=True).stdout.split()
    mono, boot, wall = map(float, out)
    assert abs(boot - mono) < 5
    assert 2 * HOUR - 5 < wall - time.time() < 2 * HOUR + 5


# a jump ahead by two hours: the wall clock stepped (faketime), or a hibernation (shim)
JUMPS = {"wall-step": ("faketime", "the wall clock was stepped"),
         "suspend": ("clockshift", "resumed from a suspend")}


@pytest.mark.parametrize("jump", list(JUMPS))
def test_jump_ahead_never_hands_out_the_old_token(jump, request, start_daemon, upstream):
    """Requests right after the jump, before the daemon's clock check may have run: the
    hand-out itself refuses the token, which expired on the daemon's clock."""
    env, shift = request.getfixturevalue(JUMPS[jump][0])
    d, paths = start_with_clock(start_daemon, upstream, env)
    before = paths.all()
    old = before["api"][0]
    assert len({tok for tok, _ in before.values()}) == 1
    assert abs(before["api"][1] - (time.time() + HOUR)) < 30

    shift(2 * HOUR)

    def daemon_now():
        return time.time() + 2 * HOUR

    assert_fresh(paths.all(), old, daemon_now)
    assert d.get("/readyz").status == 200


@pytest.mark.parametrize("jump", list(JUMPS))
def test_jump_ahead_refreshes_prefetch_at_once(jump, request, start_daemon, upstream):
    """Nobody asks: the daemon notices the jump by itself within seconds and fetches new
    tokens, instead of waiting for its (monotonic, late) timer to fire in 45 minutes."""
    fixture, said = JUMPS[jump]
    env, shift = request.getfixturevalue(fixture)
    d, paths = start_with_clock(start_daemon, upstream, env)
    fetches = {aud: status_of(d, aud)["fetches"] for aud in ("apim", "idle")}

    shift(2 * HOUR)

    def daemon_now():
        return time.time() + 2 * HOUR

    for aud in ("apim", "idle"):
        assert_refreshed_promptly(d, aud, fetches[aud])
    assert d.logs().count(said) == 1
    # only status was asked for so far; now the new token on every path
    assert_fresh(paths.all(), None, daemon_now)


def test_wall_clock_step_back_does_not_stretch_expires_on(faketime, start_daemon, upstream):
    env, shift = faketime
    d, paths = start_with_clock(start_daemon, upstream, env)
    tok, expires_on = paths.api()
    assert abs(expires_on - (time.time() + HOUR)) < 30

    shift(-HOUR)

    def daemon_now():
        return time.time() - HOUR

    # the token still ends when the boot clock says: expires_on follows it, on every path
    def told_truth():
        got = paths.all()
        return all(t == tok and e - daemon_now() <= HOUR + 2 for t, e in
                   ((got["api"][0], got["api"][1]), (got["imds"][0], got["imds"][1])))
    wait_for(told_truth, timeout=5, step=0.2, what="expires_on to follow the boot clock")
    r = d.get("/v1/token/apim").json()
    assert r["expires_in"] <= HOUR
    assert abs(r["expires_on"] - daemon_now() - r["expires_in"]) <= 2


def test_suspend_with_wall_clock_set_back_never_serves_old_token(clockshift, start_daemon,
                                                                 upstream):
    """Two hours asleep, and the wall clock shows no time passed (set back after the
    resume, or never told): only the boot clock knows the token has expired."""
    env, shift = clockshift
    d, paths = start_with_clock(start_daemon, upstream, env)
    old = paths.api()[0]
    shift(2 * HOUR, wall=0)
    got = paths.all()
    for path, (tok, _) in got.items():
        same = tok == old
        assert not same, f"{path} handed out the token from before the suspend"
    r = d.get("/v1/token/apim").json()
    assert HOUR - 30 < r["expires_in"] <= HOUR
    assert abs(r["expires_on"] - time.time() - r["expires_in"]) <= 2


def test_short_suspend_keeps_valid_token_and_its_expiry(clockshift, start_daemon, upstream):
    """Ten minutes asleep: the token is still good and is served, with ten minutes less."""
    env, shift = clockshift
    d, paths = start_with_clock(start_daemon, upstream, env)
    tok, _ = paths.api()
    shift(600)
    r = d.get("/v1/token/apim").json()
    same = r["access_token"] == tok
    assert same
    assert HOUR - 600 - 30 < r["expires_in"] <= HOUR - 600


def test_suspend_ages_the_federated_token_file(clockshift, fe, start_daemon, tmp_path, testca):
    """entra-federated re-reads its projected token file once it is 5 min old.  After a
    ten-minute suspend the kubelet has rotated the file and the copy read before is older
    than that: the next fetch presents the new one at once, not the old one first (which
    Entra refuses with AADSTS700024 once it has expired)."""
    env, shift = clockshift
    client, tenant = "11111111-2222-3333-4444-555555555555", "0a1b2c3d-tenant"
    old, new = (remember_token(f"federated-{label}-" + os.urandom(16).hex())
                for label in ("before", "after"))
    fe.configure(tenant=tenant, clients={client: {"federated": old}})
    path = secret_file(tmp_path, "azure-identity-token", old)
    ident = {"source": "entra-federated", "authority": fe.authority, "tenant": tenant,
             "client_id": client, "federated_token_file": path}
    d = start_daemon(identity_config(ident, {"api": "api://test-app"}, ca_file=testca.ca.cert),
                     env=env)
    assert d.get("/v1/token/api").status == 200
    assert fe.stats()["federated_matches"] == [True]

    fe.configure(tenant=tenant, clients={client: {"federated": new}})
    secret_file(tmp_path, "azure-identity-token.new", new)
    os.replace(tmp_path / "azure-identity-token.new", path)
    shift(600)
    assert d.ctl("refresh", "api").returncode == 0
    wait_for(lambda: fe.stats()["requests"] >= 2, what="the forced refresh")
    time.sleep(0.5)
    assert fe.stats()["federated_matches"] == [True, True]
    assert status_of(d, "api")["state"] == "valid"
