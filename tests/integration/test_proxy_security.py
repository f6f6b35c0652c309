"""The proxy under attack: the findings of the outside security review (issue 11) that concern
the proxy, each driven from outside as a hostile local program or web page would, and each
showing that the daemon survives, refuses, and keeps serving everyone else."""

import json
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import remember_token, wait_for
from test_proxy import (API_HOST, Proxied, api, curl, free_port, intercept_config,  # noqa: F401
                        proxied, proxy_config, raw)

CONNECT = f"CONNECT {API_HOST}:443 HTTP/1.1\r\nHost: {API_HOST}:443\r\n\r\n".encode()


def client_hello(version=None):
    """The first flight of a TLS client (a ClientHello record), made by Python's ssl module on
    memory BIOs so that it can be sent in the same write as the CONNECT."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.set_ciphers("DEFAULT@SECLEVEL=0")
            ctx.minimum_version = version
            ctx.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = ctx.wrap_bio(incoming, outgoing, server_hostname=API_HOST)
    try:
        s.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert hello[0] == 0x16, "a TLS handshake record"
    return hello


def intercept_get(pp, tmp_path, path="/api/items"):
    return curl("-x", f"http://127.0.0.1:{pp}", "--cacert", str(tmp_path / "ca" / "ca.pem"),
                f"https://{API_HOST}{path}")


# Finding 1: one packet after CONNECT must not kill the daemon (intercept mode)


def tls10_hello():
    return client_hello(ssl.TLSVersion.TLSv1)


AFTER_CONNECT = {
    "garbage": lambda: b"XXXXXXXX",
    "tls1.0-client-hello": tls10_hello,
    "tls1.1-client-hello": lambda: client_hello(ssl.TLSVersion.TLSv1_1),
    "a-plain-http-request": lambda: f"GET / HTTP/1.1\r\nHost: {API_HOST}\r\n\r\n".encode(),
    "one-byte": lambda: b"\x16",
    "a-bad-record-header": lambda: b"\x16\x03\x01\xff\xff" + b"\x00" * 64,
    "binary-junk": lambda: bytes(range(256)) * 4,
}


@pytest.mark.parametrize("what", sorted(AFTER_CONNECT))
def test_intercept_survives_bytes_sent_with_connect(start_daemon, api, tmp_path, what):
    """CONNECT and what follows in one write: the handshake runs on bytes already buffered
    and fails at once; the connection is closed, never freed twice, and the daemon keeps
    serving (start_daemon's teardown checks that it exits 0 on SIGTERM)."""
    pp = free_port()
    p = Proxied(start_daemon(intercept_config(api, pp, tmp_path)), pp)
    for _ in range(3):
        raw(pp, CONNECT + AFTER_CONNECT[what](), timeout=5)
    assert p.d.proc.poll() is None, p.d.logs()
    code, body = intercept_get(pp, tmp_path)
    assert code == 200, body
    assert p.request("GET", f"http://{API_HOST}/api/items")[0] == 200


def test_intercept_survives_a_partial_client_hello_then_close(start_daemon, api, tmp_path):
    """Half a ClientHello with the CONNECT, then the client goes away: the waiting handshake
    ends with the connection; meanwhile, and after, other clients are served."""
    pp = free_port()
    p = Proxied(start_daemon(intercept_config(api, pp, tmp_path)), pp)
    hello = client_hello()
    held = []
    for cut in (1, 5, 20, len(hello) // 2, len(hello) - 1):
        s = socket.create_connection(("127.0.0.1", pp), timeout=10)
        s.sendall(CONNECT + hello[:cut])
        held.append(s)
    code, body = intercept_get(pp, tmp_path)  # served while the partial handshakes wait
    assert code == 200, body
    for s in held:
        s.close()
    time.sleep(0.2)
    assert p.d.proc.poll() is None, p.d.logs()
    code, body = intercept_get(pp, tmp_path)
    assert code == 200, body


def test_intercept_client_hello_with_connect_completes(start_daemon, api, tmp_path):
    """The legitimate case of the same path: a client that sends its (TLS 1.2+) ClientHello
    together with the CONNECT, without waiting for the 200, gets through and is stamped."""
    pp = free_port()
    p = Proxied(start_daemon(intercept_config(api, pp, tmp_path)), pp)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.pem"))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    t = ctx.wrap_bio(incoming, outgoing, server_hostname=API_HOST)
    try:
        t.do_handshake()
    except ssl.SSLWantReadError:
        pass
    s = socket.create_connection(("127.0.0.1", pp), timeout=10)
    s.sendall(CONNECT + outgoing.read())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 200 ")
    while True:
        try:
            t.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        if outgoing.pending:
            s.sendall(outgoing.read())
        data = s.recv(65536)
        assert data, "the proxy closed during the handshake"
        incoming.write(data)
    if outgoing.pending:
        s.sendall(outgoing.read())
    t.write(f"GET /api/items HTTP/1.1\r\nHost: {API_HOST}\r\nConnection: close\r\n\r\n"
            .encode())
    s.sendall(outgoing.read())
    out = b""
    while True:
        data = s.recv(65536)
        if not data:
            break
        incoming.write(data)
        try:
            while True:
                out += t.read(65536)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
    s.close()
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["roles"]
    assert p.d.proc.poll() is None


# Finding 6: header_timeout is a deadline from the first byte, and the cap answers 503


def trickle(conns, first, rest, every=1.5, bound=12.0):
    """Sends `first` on each connection (plain or TLS), then one byte of `rest` every `every`
    s (pacing, not an assertion), until each is closed.  Returns (seconds to each close, what
    each received); a connection still open after `bound` s counts as never closed."""
    import select
    start = time.monotonic()
    for s in conns:
        s.sendall(first)
        s.setblocking(False)
    closed = {}
    got = {s: b"" for s in conns}
    sent = 0
    next_byte = start + every
    while len(closed) < len(conns) and time.monotonic() - start < bound:
        if time.monotonic() >= next_byte and sent < len(rest):
            for s in conns:
                if s not in closed:
                    try:
                        s.send(rest[sent:sent + 1])
                    except (OSError, ssl.SSLError):
                        pass
            sent += 1
            next_byte += every
        readable, _, _ = select.select([s for s in conns if s not in closed], [], [], 0.05)
        for s in readable:
            try:
                b = s.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            except (OSError, ssl.SSLError):
                b = b""
            if b:
                got[s] += b
            else:
                closed[s] = time.monotonic() - start
    for s in conns:
        s.close()
    return [closed.get(s, float("inf")) for s in conns], [got[s] for s in conns]


SLOW_HEAD = (f"GET http://{API_HOST}/api/items HTTP/1.1\r\nHost: {API_HOST}\r\n"
             "X-Slow: " + "a" * 40 + "\r\n\r\n").encode()


@pytest.mark.parametrize("where", ["forward", "base-url"])
def test_header_timeout_is_a_deadline_not_an_idle_timer(start_daemon, api, where):
    """20 clients each trickle a request head one byte every 1.5 s, with header_timeout = 2:
    every one is cut about 2 s after its first byte (a 408), not kept open by its bytes."""
    pp, bp = free_port(), free_port()
    d = start_daemon(proxy_config(api, pp, bp, proxy_extra="header_timeout = 2"))
    Proxied(d, pp, bp)
    port = pp if where == "forward" else bp
    head = SLOW_HEAD if where == "forward" else (
        f"GET /api/items HTTP/1.1\r\nHost: 127.0.0.1:{bp}\r\nX-Slow: " + "a" * 40 +
        "\r\n\r\n").encode()
    conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    times, got = trickle(conns, head[:1], head[1:])
    assert max(times) < 6, f"closed after {sorted(times)} s"
    for g in got:
        assert g.startswith(b"HTTP/1.1 408 "), g[:100]
        assert json.loads(g.split(b"\r\n\r\n", 1)[1])["error"] == "invalid_request"
    # meanwhile and after, a prompt client is served
    assert raw(pp, SLOW_HEAD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
               ).startswith(b"HTTP/1.1 200 ")


def test_intercept_handshake_has_a_deadline(start_daemon, api, tmp_path):
    """The same against the intercept TLS handshake: a ClientHello trickled after CONNECT."""
    pp = free_port()
    conf = intercept_config(api, pp, tmp_path).replace("[proxy]", "[proxy]\nheader_timeout = 2")
    Proxied(start_daemon(conf), pp)
    conns = [socket.create_connection(("127.0.0.1", pp), timeout=10) for _ in range(20)]
    times, got = trickle(conns, CONNECT, client_hello())
    assert max(times) < 6, f"closed after {sorted(times)} s"
    for g in got:
        assert g.startswith(b"HTTP/1.1 200 Connection Established\r\n\r\n"), g[:100]
    code, body = intercept_get(pp, tmp_path)
    assert code == 200, body


def test_intercepted_head_has_a_deadline(start_daemon, api, tmp_path):
    """And against a request head inside an intercepted connection, one TLS record per byte."""
    pp = free_port()
    conf = intercept_config(api, pp, tmp_path).replace("[proxy]", "[proxy]\nheader_timeout = 2")
    Proxied(start_daemon(conf), pp)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.pem"))
    conns = []
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", pp), timeout=10)
        s.sendall(CONNECT)
        assert s.recv(100).startswith(b"HTTP/1.1 200 ")
        conns.append(ctx.wrap_socket(s, server_hostname=API_HOST))
    head = f"GET /api/items HTTP/1.1\r\nHost: {API_HOST}\r\n\r\n".encode()
    times, got = trickle(conns, head[:1], head[1:])
    assert max(times) < 6, f"closed after {sorted(times)} s"
    for g in got:
        assert g.startswith(b"HTTP/1.1 408 "), g[:100]


@pytest.mark.parametrize("over", ["forward", "base-url"])
def test_max_connections_answers_503(start_daemon, api, over):
    """At max_connections (a total over all listeners) a new client gets 503 with a JSON
    error at once, instead of waiting unanswered in the backlog; a freed slot serves again."""
    pp, bp = free_port(), free_port()
    p = Proxied(start_daemon(proxy_config(api, pp, bp, proxy_extra="max_connections = 2")),
                pp, bp)
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for port in (pp, bp)]
    time.sleep(0.3)  # both accepted
    port = pp if over == "forward" else bp
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except ConnectionResetError:
        pass
    s.close()
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), out[:200]
    assert b"Retry-After: 1" in head and b"Content-Type: application/json" in head
    assert json.loads(body) == {"error": "temporarily_unavailable",
                                "error_description": "too many connections"}
    held[0].close()
    time.sleep(0.3)
    assert p.request("GET", f"http://{API_HOST}/api/items")[0] == 200
    held[1].close()


# Finding 7: TRACE would hand the stamped token back


class EchoUpstream:
    """An upstream that answers every request with the request's own head as its body, as
    TRACE asks a server to do (and as some servers do for any method)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.methods = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(c,), daemon=True).start()

    def one(self, c):
        with c:
            f = c.makefile("rb")
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = f.readline()
                    if not line:
                        return
                    head += line
                self.methods.append(head.split(b" ", 1)[0].decode())
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: message/http\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(head) + head)

    def stop(self):
        self.sock.close()


@pytest.fixture
def echo():
    e = EchoUpstream()
    yield e
    e.stop()


def echo_config(echo, pp, bp, tmp_path, connect=""):
    class Up:
        port = echo.port
    extra = f"connect = intercept\nintercept_ca_dir = {tmp_path / 'ca'}" if connect else ""
    return proxy_config(Up, pp, bp, proxy_extra=extra)


def test_trace_is_refused_on_every_path(start_daemon, echo, tmp_path):
    """TRACE gets 405 with an Allow header and a JSON error on the forward, base-URL and
    intercepted paths; the echoing upstream never sees it, so the token never comes back."""
    pp, bp = free_port(), free_port()
    Proxied(start_daemon(echo_config(echo, pp, bp, tmp_path, connect="intercept")), pp, bp)
    proxy = f"http://127.0.0.1:{pp}"
    ca = str(tmp_path / "ca" / "ca.pem")
    # the control: this upstream does echo what it gets, token and all
    code, body = curl(f"http://{API_HOST}/api/items", proxy=proxy)
    echoed = code == 200 and "Authorization: Bearer " in body
    assert echoed, "the echo upstream did not echo the stamped request"
    echo.methods.clear()
    for args in ([f"http://{API_HOST}/api/items"], [f"http://127.0.0.1:{bp}/api/items"],
                 ["--cacert", ca, f"https://{API_HOST}/api/items"]):
        for method in ("TRACE", "TRACK", "trace"):
            r = subprocess.run(["curl", "-sS", "-i", "-X", method, "-x", proxy, *args],
                               capture_output=True, text=True, timeout=30,
                               env={k: v for k, v in os.environ.items()
                                    if "proxy" not in k.lower()})
            assert r.returncode == 0, r.stderr
            head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
            if head.startswith("HTTP/1.1 200 Connection Established"):
                head, _, body = body.partition("\n\n")
            leaked = "Bearer" in r.stdout
            assert not leaked, f"{method} {args[-1]}: the token came back"
            assert head.startswith("HTTP/1.1 405 "), (method, args[-1], head)
            assert "Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS" in head
            assert json.loads(body)["error"] == "invalid_request"
    assert echo.methods == []


# Finding 8: the web-page guard on the forward and intercept paths too


WEB_MARKS = [{"Origin": "https://evil.example"}, {"Origin": "null"},
             {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
             {"Sec-Fetch-Site": "same-origin"},
             {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}]


def header_args(fields):
    return [a for k, v in fields.items() for a in ("-H", f"{k}: {v}")]


@pytest.mark.parametrize("fields", WEB_MARKS, ids=lambda f: "+".join(f"{k}={v}" for k, v in
                                                                   f.items()))
def test_web_page_requests_refused_on_forward_and_intercept(start_daemon, api, tmp_path, fields):
    """A browser that inherited http_proxy/https_proxy must not let a site make stamped calls:
    requests with Origin, or Sec-Fetch-Site other than none, get 403 and reach nothing."""
    pp = free_port()
    Proxied(start_daemon(intercept_config(api, pp, tmp_path)), pp)
    proxy = f"http://127.0.0.1:{pp}"
    ca = str(tmp_path / "ca" / "ca.pem")
    before = api.stats()["requests"]
    code, body = curl(*header_args(fields), f"http://{API_HOST}/api/items", proxy=proxy)
    assert code == 403 and json.loads(body)["error"] == "forbidden", body
    code, body = curl("-x", proxy, "--cacert", ca, *header_args(fields),
                      f"https://{API_HOST}/api/items")
    assert code == 403 and json.loads(body)["error"] == "forbidden", body
    assert api.stats()["requests"] == before + 1  # nothing forwarded: only the stats call
    # what a program (or a typed URL) sends still gets through on both paths
    for extra in ([], ["-H", "Sec-Fetch-Site: none"]):
        code, body = curl(*extra, f"http://{API_HOST}/api/items", proxy=proxy)
        assert code == 200, body
        code, body = curl("-x", proxy, "--cacert", ca, *extra, f"https://{API_HOST}/api/items")
        assert code == 200, body


# Finding 12: localhost is loopback by definition, never a resolver's answer


ROGUE = "127.0.0.9"  # where the fake DNS sends every name: loopback too, so nothing leaves


class FakeDNS:
    """A DNS server on 127.0.0.1:53 (UDP and TCP) that answers every A query with ROGUE and
    records each name asked; with /etc/hosts lacking localhost and a search domain in
    resolv.conf, this is what a resolver asks when it is asked for localhost."""

    def __init__(self):
        import struct
        self.struct = struct
        self.names = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 53))
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", 53))
        self.tcp.listen(8)
        self.udp.settimeout(0.1)
        self.tcp.settimeout(0.1)
        self.stopped = False
        self.threads = [threading.Thread(target=self.serve_udp, daemon=True),
                        threading.Thread(target=self.serve_tcp, daemon=True)]
        for t in self.threads:
            t.start()

    def answer(self, q):
        st = self.struct
        tid = st.unpack(">H", q[:2])[0]
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode(errors="replace"))
            i += 1 + q[i]
        qtype = st.unpack(">H", q[i + 1:i + 3])[0]
        self.names.append(".".join(labels))
        question = q[12:i + 5]
        if qtype != 1:
            return st.pack(">HHHHHH", tid, 0x8180, 1, 0, 0, 0) + question
        rr = b"\xc0\x0c" + st.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(ROGUE)
        return st.pack(">HHHHHH", tid, 0x8180, 1, 1, 0, 0) + question + rr

    def serve_udp(self):
        while not self.stopped:
            try:
                q, addr = self.udp.recvfrom(4096)
                self.udp.sendto(self.answer(q), addr)
            except socket.timeout:
                continue
            except (OSError, IndexError, self.struct.error):
                if self.stopped:
                    return

    def serve_tcp(self):
        while not self.stopped:
            try:
                c, _ = self.tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with c:
                try:
                    n = self.struct.unpack(">H", c.recv(2))[0]
                    a = self.answer(c.recv(n))
                    c.sendall(self.struct.pack(">H", len(a)) + a)
                except (OSError, IndexError, self.struct.error):
                    pass

    def stop(self):
        """Ends both threads before the sockets close, so that port 53 is free at once."""
        self.stopped = True
        for t in self.threads:
            t.join()
        self.udp.close()
        self.tcp.close()


class Rogue:
    """Listens on ROGUE:port and counts who comes: where a token would go if localhost were
    resolved through the fake DNS."""

    def __init__(self, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ROGUE, port))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.visits = 0
        self.stopped = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.visits += 1
            c.close()

    def stop(self):
        self.stopped = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def no_localhost(tmp_path, monkeypatch):
    """bearerd started in its own mount namespace where /etc/hosts has no localhost line,
    nsswitch asks files then DNS, and resolv.conf names the fake DNS with a search domain;
    yields the fake DNS."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs root in the test's namespace for a mount namespace")
    import conftest
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("127.0.0.1 something-else\n")
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\nsearch example.test\n")
    (etc / "nsswitch.conf").write_text("hosts: files dns\n")
    wrapper = tmp_path / "bearerd-without-localhost"
    mounts = " && ".join(f"mount --bind {etc / n} /etc/{n}"
                         for n in ("hosts", "resolv.conf", "nsswitch.conf"))
    wrapper.write_text("#!/bin/sh\n"
                       f"exec unshare -m sh -c '{mounts} && exec \"$0\" \"$@\"' "
                       f"{conftest.BEARERD} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setattr(conftest, "BEARERD", wrapper)
    subprocess.run(["ip", "addr", "add", f"{ROGUE}/32", "dev", "lo"], capture_output=True)
    dns = FakeDNS()
    # the control: inside such a namespace, the system resolver does send localhost to DNS
    r = subprocess.run(["unshare", "-m", "sh", "-c", f"{mounts} && getent ahostsv4 localhost"],
                       capture_output=True, text=True)
    assert ROGUE in r.stdout and dns.names, "the test namespace does not reproduce the finding"
    dns.names.clear()
    yield dns
    dns.stop()


def test_proxy_upstream_localhost_is_never_resolved(no_localhost, start_daemon, api):
    """upstream = http://localhost:PORT (and a *.localhost name, and a tunnel to localhost)
    goes to 127.0.0.1: no DNS query, nothing reaches what DNS would have answered."""
    rogue = Rogue(api.port)
    pp = free_port()
    conf = proxy_config(api, pp, upstream=f"http://localhost:{api.port}",
                        proxy_extra=f"connect = tunnel\ntunnel_hosts = localhost:{api.port}",
                        extra_sections=f"""
[route "sub"]
match = sub.{API_HOST}
audience = apim
upstream = http://api.localhost.:{api.port}
""")
    p = Proxied(start_daemon(conf), pp)
    st, _, body = p.request("GET", f"http://{API_HOST}/api/items")
    assert st == 200, body
    st, _, body = p.request("GET", f"http://sub.{API_HOST}/api/items")
    assert st == 200, body
    s = socket.create_connection(("127.0.0.1", pp), timeout=10)
    s.sendall(f"CONNECT localhost:{api.port} HTTP/1.1\r\nHost: localhost:{api.port}\r\n\r\n"
              .encode())
    assert s.recv(100).startswith(b"HTTP/1.1 200 ")
    s.sendall(b"GET /_fake/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert s.makefile("rb").read().startswith(b"HTTP/1.1 200 ")
    s.close()
    rogue.stop()
    assert rogue.visits == 0
    assert [n for n in no_localhost.names if "localhost" in n] == []


def test_token_requests_to_localhost_are_never_resolved(no_localhost, start_daemon, fake, fe,
                                                         tmp_path, testca):
    """The token sources' upstream calls through libcurl: http://localhost (IMDS) and
    https://localhost. (Entra, a name libcurl 7.88 would otherwise resolve itself) go to
    127.0.0.1 with no DNS query, and the certificate is still checked for localhost."""
    from conftest import secret_file
    rogue_imds, rogue_entra = Rogue(fake.port), Rogue(fe.port)
    secret = remember_token("Xy7~Q.local-" + os.urandom(8).hex())
    fe.configure(tenant="t1", clients={"c1": {"secret": secret}})
    path = secret_file(tmp_path, "client-secret", secret + "\n")
    conf = f"""[bearerd]
socket = @SOCKET@
log_level = debug
ca_file = {testca.ca.cert}

[identity "vm"]
source = azure-imds
endpoint = http://localhost:{fake.port}/metadata/identity/oauth2/token

[identity "app"]
source = entra-secret
authority = https://localhost.:{fe.port}
tenant = t1
client_id = c1
client_secret_file = {path}

[audience "imds"]
identity = vm
resource = api://imds

[audience "entra"]
identity = app
resource = api://entra
"""
    d = start_daemon(conf)
    for aud in ("imds", "entra"):
        r = d.get(f"/v1/token/{aud}")
        assert r.status == 200, r.body
        remember_token(r.json()["access_token"])
    rogue_imds.stop()
    rogue_entra.stop()
    assert rogue_imds.visits == 0 and rogue_entra.visits == 0
    assert [n for n in no_localhost.names if "localhost" in n] == []


# Finding 11: the intercept CA is bearerd's own, and trusting it trusts only the routed hosts


def openssl(*args, cwd=None, check=True):
    return subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd,
                          check=check)


def leaf_verifies(ca_dir, tmp, name):
    """Signs a leaf for name (DNS or IP) with the CA's own key, the way anyone holding the key
    could, and asks openssl whether a client trusting ca.pem would accept it."""
    ip = name.replace(".", "").isdigit() or ":" in name
    san = f"IP:{name}" if ip else f"DNS:{name}"
    cn = "a leaf for an address" if ip else name  # an address as CN is checked as a DNS name
    key, csr, crt, ext = (tmp / f"leaf-{name}.{x}" for x in ("key", "csr", "pem", "ext"))
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_dir / "ca.pem"), "-CAkey",
            str(ca_dir / "ca.key"), "-CAcreateserial", "-out", str(crt), "-days", "1",
            "-extfile", str(ext))
    r = openssl("verify", "-CAfile", str(ca_dir / "ca.pem"), str(crt), check=False)
    return r.returncode == 0, r.stdout + r.stderr


def ca_text(ca_dir):
    return openssl("x509", "-in", str(ca_dir / "ca.pem"), "-noout", "-text").stdout


def test_intercept_ca_is_name_constrained(start_daemon, api, tmp_path):
    """ca.pem carries critical, permitted nameConstraints for the routed hosts (a DNS name and
    an address here): a leaf its key signed for any other name or address does not verify."""
    pp = free_port()
    conf = intercept_config(api, pp, tmp_path) + f"""
[route "by-address"]
match = 10.1.2.3
audience = apim
upstream = http://127.0.0.1:{api.port}
"""
    Proxied(start_daemon(conf), pp)
    ca = tmp_path / "ca"
    text = ca_text(ca)
    assert "X509v3 Name Constraints: critical" in text, text
    permitted = text.split("Permitted:", 1)[1].split("Signature Algorithm", 1)[0]
    assert "DNS:api.example.com" in permitted and "IP:10.1.2.3/255.255.255.255" in permitted
    assert "Excluded" not in text
    for name in (API_HOST, "10.1.2.3"):
        ok, why = leaf_verifies(ca, tmp_path, name)
        assert ok, why
    for name in ("evil.example", "example.com", "login.microsoftonline.com", "10.1.2.4",
                 "127.0.0.1", "::1"):
        ok, why = leaf_verifies(ca, tmp_path, name)
        assert not ok and "permitted subtree violation" in why, (name, why)
    # and what bearerd mints itself still verifies, for a name and for an address
    code, body = intercept_get(pp, tmp_path)
    assert code == 200, body
    code, body = curl("-x", f"http://127.0.0.1:{pp}", "--cacert", str(ca / "ca.pem"),
                      "https://10.1.2.3/api/items")
    assert code == 200, body


def test_intercept_ca_remade_when_routed_hosts_change(start_daemon, api, tmp_path):
    """A CA made for other hosts (or an old one without constraints) is replaced at start by a
    new key and certificate: clients that trusted the old ca.pem trust nothing new."""
    pp = free_port()
    ca = tmp_path / "ca"
    d = start_daemon(intercept_config(api, pp, tmp_path))
    key1, pem1 = (ca / "ca.key").read_bytes(), (ca / "ca.pem").read_bytes()
    assert d.stop() == 0
    # the same routes, in another order and with a duplicate host: kept
    conf = intercept_config(api, pp, tmp_path) + f"""
[route "again"]
match = {API_HOST}/v2
audience = apim
upstream = http://127.0.0.1:{api.port}
"""
    d = start_daemon(conf)
    assert (ca / "ca.key").read_bytes() == key1 and (ca / "ca.pem").read_bytes() == pem1
    assert d.stop() == 0
    conf += f"""
[route "more"]
match = other.example.net
audience = apim
upstream = http://127.0.0.1:{api.port}
"""
    d = start_daemon(conf)
    assert (ca / "ca.key").read_bytes() != key1 and (ca / "ca.pem").read_bytes() != pem1
    assert "the routed hosts changed" in d.logs()
    assert oct((ca / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert "DNS:other.example.net" in ca_text(ca) and "DNS:api.example.com" in ca_text(ca)
    assert intercept_get(pp, tmp_path)[0] == 200
    assert d.stop() == 0
    # an unconstrained CA (as earlier versions made) is replaced as well
    (ca / "ca.key").unlink()
    (ca / "ca.pem").unlink()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(ca / "ca.key"), "-out", str(ca / "ca.pem"), "-days", "2", "-subj",
            "/CN=bearerd local interception CA")
    os.chmod(ca / "ca.key", 0o600)
    old = (ca / "ca.pem").read_bytes()
    d = start_daemon(conf)
    assert (ca / "ca.pem").read_bytes() != old
    assert "X509v3 Name Constraints: critical" in ca_text(ca)
    # TLS verifies against the new ca.pem (curl fails otherwise); the fake API knows only an
    # earlier daemon's dev key, so its answer may be a 401
    assert intercept_get(pp, tmp_path)[0] in (200, 401)


def spoil_owner(path):
    os.chown(path, 65534, 65534, follow_symlinks=False)


def spoil_symlink_key(ca):
    real = ca.parent / "elsewhere.key"
    os.rename(ca / "ca.key", real)
    os.symlink(real, ca / "ca.key")


def spoil_symlink_pem(ca):
    real = ca.parent / "elsewhere.pem"
    os.rename(ca / "ca.pem", real)
    os.symlink(real, ca / "ca.pem")


SPOILED = {
    "key-owned-by-another-user": (lambda ca: spoil_owner(ca / "ca.key"), "file=ca.key"),
    "key-group-readable": (lambda ca: os.chmod(ca / "ca.key", 0o640), "file=ca.key"),
    "key-world-readable": (lambda ca: os.chmod(ca / "ca.key", 0o604), "file=ca.key"),
    "key-a-symlink": (spoil_symlink_key, "file=ca.key"),
    "pem-owned-by-another-user": (lambda ca: spoil_owner(ca / "ca.pem"), "file=ca.pem"),
    "pem-group-writable": (lambda ca: os.chmod(ca / "ca.pem", 0o664), "file=ca.pem"),
    "pem-a-symlink": (spoil_symlink_pem, "file=ca.pem"),
    "dir-owned-by-another-user": (lambda ca: spoil_owner(ca), "file=-"),
    "dir-world-writable-sticky": (lambda ca: os.chmod(ca, 0o1777), "file=-"),
    "dir-group-writable": (lambda ca: os.chmod(ca, 0o770), "file=-"),
}


@pytest.mark.parametrize("how", sorted(SPOILED))
def test_intercept_ca_refuses_files_others_control(start_daemon, api, tmp_path, how):
    """An existing CA that another user could have planted, read or swapped is refused: bearerd
    does not start (exit 1) and says which file is wrong and why, in one line.  bearerd -n
    checks the configuration only (the directory may not exist before the first start)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give files to another user")
    pp = free_port()
    conf = intercept_config(api, pp, tmp_path)
    assert start_daemon(conf).stop() == 0  # a good CA first
    ca = tmp_path / "ca"
    spoil, where = SPOILED[how]
    spoil(ca)
    path = tmp_path / "spoiled.conf"
    path.write_text(conf.replace("@SOCKET@", str(tmp_path / "spoiled.sock")))
    from conftest import BEARERD
    r = subprocess.run([str(BEARERD), "-c", str(path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if "cannot use the interception CA" in line]
    assert len(lines) == 1 and where in lines[0] and "hint=" in lines[0], r.stderr
    assert subprocess.run([str(BEARERD), "-n", "-c", str(path)], capture_output=True,
                          timeout=30).returncode == 0
