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
    def __init__(self, tmp):
        port_file = tmp / "fake.port"
        self.log = open(tmp / "fake.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE_IMDS), "--port", "0", "--port-file", str(port_file)],
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

    def __init__(self, tmp, config_text=None, args=None, env=None):
        self.tmp = tmp
        self.socket = str(tmp / "bearerd.sock")
        self.config = tmp / "bearerd.conf"
        self.log_path = tmp / "bearerd.log"
        if config_text is not None:
            self.config.write_text(config_text.replace("@SOCKET@", self.socket))
            argv = [str(BEARERD), "-c", str(self.config)]
        else:
            argv = [str(BEARERD)]
        argv += args or []
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
