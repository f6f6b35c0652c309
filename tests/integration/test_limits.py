"""[bearerd] max_connections, max_connections_per_uid, header_timeout and keepalive_timeout,
applied to the Unix-socket API and to the compat listeners.  Runs as root: a second uid
comes from setpriv."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import Daemon, SEEN_TOKENS

NOBODY = 65534
WAIT = 6  # below every default these tests override (header 10 s, keep-alive 60 s)


@pytest.fixture
def open_tmp():
    """A directory other users can traverse, so a second uid reaches the socket."""
    d = Path(tempfile.mkdtemp(prefix="bd-lim."))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(open_tmp, fake):
    started = []

    def start(**limits):
        lines = ["[bearerd]", "socket = @SOCKET@", "socket_mode = 0666", "log_level = debug"]
        lines += [f"{k} = {v}" for k, v in limits.items()]
        lines += ['[identity "vm"]', "source = azure-imds", f"endpoint = {fake.endpoint}",
                  '[audience "api"]', "identity = vm", "resource = api://limits",
                  "[compat]", "identity = vm", "imds_listen = 127.0.0.1:0"]
        d = Daemon(open_tmp, "\n".join(lines) + "\n")
        started.append(d)
        return d

    yield start
    for d in started:
        rc = d.stop()
        text = d.log_path.read_text()
        assert not any(t in text for t in SEEN_TOKENS)
        assert rc == 0, text


def compat_port(d):
    import re
    return int(re.search(r"listener=imds address=\S+ port=(\d+)", d.logs()).group(1))


def unix_conn(d):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(WAIT)
    s.connect(d.socket)
    return s


def tcp_conn(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return s


def read_all(s):
    """Everything until the peer closes (socket.timeout if it does not within WAIT)."""
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def healthz(s):
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    return int(data.split(b" ", 2)[1])


def as_nobody(d):
    """GET /healthz on the socket as another uid; its status."""
    code = ("import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n"
            "s.sendall(b'GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n"
            "d = b''\n"
            "while True:\n"
            "    c = s.recv(4096)\n"
            "    if not c: break\n"
            "    d += c\n"
            "print(d.split(b' ', 2)[1].decode())\n")
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                        sys.executable, "-c", code, d.socket], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def test_per_uid_cap(daemon):
    cap = 3
    d = daemon(max_connections_per_uid=cap)
    held = [unix_conn(d) for _ in range(cap)]
    try:
        for s in held:
            assert healthz(s) == 200
        # one more from root: refused with a clear error, closed
        s = unix_conn(d)
        reply = read_all(s)
        s.close()
        assert reply.startswith(b"HTTP/1.1 503 "), reply[:100]
        assert b"too many connections" in reply
        # another uid still gets in
        assert as_nobody(d) == 200
    finally:
        for s in held:
            s.close()
    # freed: root gets in again
    from conftest import wait_for
    wait_for(lambda: d.get("/healthz").status == 200, what="a slot for root again")


def test_max_connections(daemon):
    cap = 4
    d = daemon(max_connections=cap, max_connections_per_uid=0)  # the total alone
    # per server: the API's connections do not count against the compat listener's
    for conn, name in ((lambda: unix_conn(d), "api"),
                       (lambda: tcp_conn(compat_port(d)), "imds")):
        held = [conn() for _ in range(cap)]
        try:
            for s in held:
                assert healthz(s) in (200, 404), name  # the compat port has no /healthz
            s = conn()
            reply = read_all(s)
            s.close()
            assert reply.startswith(b"HTTP/1.1 503 "), (name, reply[:100])
            assert b"too many connections" in reply
        finally:
            for s in held:
                s.close()


def test_per_uid_cap_default_is_a_quarter_of_max_connections(daemon):
    """Unset, max_connections_per_uid is max_connections / 4, on the socket and on TCP."""
    d = daemon(max_connections=8)
    for conn in (lambda: unix_conn(d), lambda: tcp_conn(compat_port(d))):
        held = [conn() for _ in range(2)]
        try:
            for s in held:
                assert healthz(s) in (200, 404)
            s = conn()
            reply = read_all(s)
            s.close()
            assert reply.startswith(b"HTTP/1.1 503 ") and b"too many connections" in reply
        finally:
            for s in held:
                s.close()


SDK = Path(__file__).resolve().parents[1] / "clients"


def sdk_as_nobody(port, home):
    """The real @azure/identity ManagedIdentityCredential, run as another uid, through the
    IMDS-compatible listener; its JSON line."""
    import json
    if shutil.which("node") is None or not (SDK / "node_modules").is_dir():
        pytest.fail("node and tests/clients/node_modules are needed: "
                    "npm ci --prefix tests/clients (scripts/check does it)")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "NO_PROXY": "*",
           "AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{port}"}
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                        "node", str(SDK / "get-token.mjs"), "mi", "api://limits"],
                       capture_output=True, text=True, timeout=60, env=env, cwd=str(SDK))
    out = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}
    if "token" in out:
        SEEN_TOKENS.add(out["token"])
    return r.returncode, out, r.stderr


def test_one_uid_holding_tcp_connections_does_not_lock_out_another(daemon, open_tmp):
    """Loopback TCP peers are counted by the uid that owns their socket (sock_diag): root
    holding every connection it may have on the IMDS listener leaves room for nobody's SDK."""
    total, per_uid = 20, 5
    d = daemon(max_connections=total, max_connections_per_uid=per_uid)
    port = compat_port(d)
    held, refused = [], 0
    try:
        for _ in range(total):
            s = tcp_conn(port)
            s.settimeout(0.5)
            try:
                data = s.recv(4096)  # refused connections get a 503 at once
            except socket.timeout:
                data = None
            if data is None:
                held.append(s)
            else:
                assert data.startswith(b"HTTP/1.1 503 ") and b"too many connections" in data
                refused += 1
                s.close()
        assert (len(held), refused) == (per_uid, total - per_uid)
        home = open_tmp / "home"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        rc, out, err = sdk_as_nobody(port, home)
        assert rc == 0 and "token" in out, (out, err)
        assert "too many connections" not in d.logs()
    finally:
        for s in held:
            s.close()


def test_silent_connections_are_closed_after_header_timeout(daemon):
    """A connection that never sends a byte is closed header_timeout after it was accepted,
    not held for keepalive_timeout (60 s here)."""
    d = daemon(header_timeout=1)
    for conn in (lambda: unix_conn(d), lambda: tcp_conn(compat_port(d))):
        s = conn()
        t0 = time.monotonic()
        reply = read_all(s)  # socket.timeout (a failure) if it is still open after WAIT
        took = time.monotonic() - t0
        s.close()
        assert reply == b""
        assert 0.5 < took < WAIT, took
    # a connection that asked once and went quiet keeps keepalive_timeout
    s = unix_conn(d)
    assert healthz(s) == 200
    s.settimeout(2.5)
    with pytest.raises(socket.timeout):
        s.recv(1)
    s.close()


def test_header_timeout_cuts_a_slow_head(daemon):
    d = daemon(header_timeout=1)
    # one after the other: a connection that sent nothing for header_timeout is closed
    for conn in (lambda: unix_conn(d), lambda: tcp_conn(compat_port(d))):
        s = conn()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        t0 = time.monotonic()
        reply = read_all(s)  # socket.timeout (a failure) if it is not cut off
        s.close()
        assert time.monotonic() - t0 < WAIT
        assert reply == b"" or reply.startswith(b"HTTP/1.1 408 "), reply[:100]
    # a complete request on the socket is still served
    assert d.get("/healthz").status == 200


def test_keepalive_timeout_closes_idle(daemon):
    d = daemon(keepalive_timeout=1)
    s = unix_conn(d)
    assert healthz(s) == 200
    assert read_all(s) == b""  # closed by bearerd while idle, well before the 60 s default
    s.close()


def test_soft_fd_limit_raised_to_hard(tmp_path):
    """Started with the usual soft limit of 1024 under a higher hard one, bearerd raises
    its soft limit, so max_connections (not the kernel) decides who is turned away; a cap
    above the hard limit is said in the log."""
    from conftest import BEARERD, wait_for
    conf = tmp_path / "b.conf"
    sock = tmp_path / "b.sock"
    conf.write_text(f'[bearerd]\nsocket = {sock}\nmax_connections = 20000\n'
                    '[identity "dev"]\nsource = dev\n')
    log = tmp_path / "log"
    with open(log, "w") as out:
        p = subprocess.Popen(["prlimit", "--nofile=1024:4096", str(BEARERD), "-c", str(conf)],
                             stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: sock.exists() or p.poll() is not None, what="bearerd to listen")
        assert p.poll() is None, log.read_text()
        limits = Path(f"/proc/{p.pid}/limits").read_text()
        line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
        assert "open-files limit is below max_connections" in log.read_text()
    finally:
        p.terminate()
        p.wait(10)
