"""Load and slow clients: many connections, slowloris, non-reading clients, and
the upstream bounds (single flight, max_entries) under concurrency.

Thousands of connections are driven from one thread with non-blocking sockets
and a selector; the file-descriptor limit is raised for this process and, by
inheritance, for the bearerd it starts.  Memory figures are printed (run with
-s to see them) and bounded: the bounds are several times what bearerd needs,
and far below what it would take if it buffered without limit.
"""

import http.client
import json
import os
import resource
import selectors
import socket
import threading
import time

import pytest

from conftest import BEARERD, remember_token, wait_for

CONNS = 10_000
SLOW = 1_000
HEADER_TIMEOUT = 3


def sanitized():
    """ASan builds keep freed memory in quarantine: memory bounds are scaled for them."""
    return b"__asan_init" in BEARERD.read_bytes()


MEM_SCALE = 4 if sanitized() else 1


@pytest.fixture
def many_fds():
    """Raises RLIMIT_NOFILE to the hard limit; bearerd inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = CONNS + 1000
    if hard != resource.RLIM_INFINITY and hard < need:
        raise AssertionError(f"the hard fd limit ({hard}) is below {need}: raise it to run this")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def load_config(fake, compat_port=None, **bearerd):
    g = {"log_level": "info", "min_validity": 300, "refresh_margin": 900,
         "max_connections": 20000, "header_timeout": HEADER_TIMEOUT}
    g.update(bearerd)
    lines = ["[bearerd]", "socket = @SOCKET@"] + [f"{k} = {v}" for k, v in g.items()]
    lines += ["", '[identity "vm"]', "source = azure-imds", f"endpoint = {fake.endpoint}",
              "dynamic_resources = yes", "timeout = 10"]
    lines += ["", '[audience "api"]', "identity = vm", "resource = api://load", "prefetch = no"]
    if compat_port is not None:
        lines += ["", "[compat]", "identity = vm", f"imds_listen = 127.0.0.1:{compat_port}"]
    return "\n".join(lines) + "\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(d):
    """(VmRSS, RssAnon) of bearerd in KiB."""
    out = {}
    with open(f"/proc/{d.proc.pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon"):
                out[k] = int(v.split()[0])
    return out["VmRSS"], out["RssAnon"]


def open_fds(d):
    return len(os.listdir(f"/proc/{d.proc.pid}/fd"))


class Client:
    """One raw connection: what to send, what came back."""

    __slots__ = ("sock", "out", "buf", "status", "body", "headers", "eof")

    def __init__(self, sock, request):
        self.sock = sock
        self.out = request
        self.buf = b""
        self.status = None
        self.body = None
        self.headers = {}
        self.eof = False

    def parse(self):
        """True once a whole response (or EOF) is in."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return self.eof
        head = self.buf[:end].decode("latin-1").split("\r\n")
        self.status = int(head[0].split()[1])
        self.headers = {k.strip().lower(): v.strip()
                        for k, _, v in (h.partition(":") for h in head[1:])}
        n = int(self.headers.get("content-length", "0"))
        if len(self.buf) < end + 4 + n:
            return self.eof
        self.body = self.buf[end + 4:end + 4 + n]
        return True


def connect_all(path, n):
    """n connections, all open at once (blocking connects: the daemon drains its backlog).
    path is the Unix socket, or (host, port) for a loopback TCP listener."""
    socks = []
    family = socket.AF_INET if isinstance(path, tuple) else socket.AF_UNIX
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.settimeout(30)
            # A full AF_UNIX backlog answers a connect in timeout mode with EAGAIN at
            # once rather than waiting (a loaded machine accepts late): retry it.
            deadline = time.monotonic() + 30
            while True:
                try:
                    s.connect(path)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            s.setblocking(False)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def exchange(socks, request, timeout=60):
    """Sends request on every socket at once and reads one response from each."""
    sel = selectors.DefaultSelector()
    clients = [Client(s, request) for s in socks]
    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if request else 0)
    for c in clients:
        sel.register(c.sock, events, c)
    left = len(clients)
    end = time.monotonic() + timeout
    while left and time.monotonic() < end:
        for key, ev in sel.select(1.0):
            c = key.data
            if ev & selectors.EVENT_WRITE and c.out:
                try:
                    c.out = c.out[c.sock.send(c.out):]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    c.out = b""
                if not c.out:
                    sel.modify(c.sock, selectors.EVENT_READ, c)
            if ev & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    c.buf += data
                else:
                    c.eof = True
                if c.parse():
                    sel.unregister(c.sock)
                    left -= 1
    sel.close()
    assert left == 0, f"{left} connections got no answer within {timeout} s"
    return clients


def get_request(path="/v1/token/api"):
    return f"GET {path} HTTP/1.1\r\nHost: bearerd\r\nAccept: text/plain\r\n\r\n".encode()


def close_all(socks):
    for s in socks:
        s.close()


def test_10k_concurrent_connections_all_get_a_token(many_fds, fake, start_daemon):
    # one uid holds them all, and the first waits for the last to connect before it asks
    d = start_daemon(load_config(fake, max_connections_per_uid=0, header_timeout=60))
    tok = d.get("/v1/token/api").json()["access_token"]
    remember_token(tok)
    rss0, anon0 = memory(d)
    socks = connect_all(d.socket, CONNS)
    try:
        # every connection is open (accepted) before any request is sent
        wait_for(lambda: open_fds(d) >= CONNS, timeout=30, what="bearerd to accept them all")
        clients = exchange(socks, get_request())
        rss, anon = memory(d)
        print(f"\n{CONNS} connections open: VmRSS {rss0} -> {rss} KiB, "
              f"RssAnon {anon0} -> {anon} KiB ({(anon - anon0) * 1024 // CONNS} B/connection)")
        statuses = {}
        for c in clients:
            statuses[c.status] = statuses.get(c.status, 0) + 1
        assert statuses == {200: CONNS}, statuses
        assert all(c.body.decode() == tok for c in clients)
        # one upstream fetch in all: the rest were cache hits
        assert fake.stats()["requests"] == 1
        # about 2 KiB of private memory per connection: 64 MiB is a generous bound
        assert anon - anon0 < 64 * 1024 * MEM_SCALE
    finally:
        close_all(socks)
    wait_for(lambda: open_fds(d) < 100, timeout=30, what="bearerd to close them")
    assert d.get("/healthz").status == 200


def test_connections_over_the_cap_get_a_clear_503(fake, start_daemon):
    """The contract beyond [bearerd] max_connections: 503 JSON, Connection: close, no hang."""
    cap = 100
    d = start_daemon(load_config(fake, max_connections=cap, max_connections_per_uid=0))
    held = connect_all(d.socket, cap)
    try:
        wait_for(lambda: open_fds(d) >= cap, timeout=10, what="bearerd to accept them")
        extra = connect_all(d.socket, 20)
        over = exchange(extra, b"", timeout=10)  # answered without even asking
        close_all(extra)
        for c in over:
            assert c.status == 503, c.buf[:200]
            body = c.buf[c.buf.find(b"\r\n\r\n") + 4:]
            assert c.body is not None, \
                f"503 cut short: Content-Length {c.headers['content-length']}, " \
                f"{len(body)} bytes before the close: {body!r}"
            assert b"too many connections" in c.body
            assert c.headers.get("connection") == "close"
        # the ones within the cap are served
        ok = exchange(held, get_request())
        assert {c.status for c in ok} == {200}
        for c in ok:
            remember_token(c.body.decode())
    finally:
        close_all(held)
    # room again once they are gone
    wait_for(lambda: d.get("/healthz").status == 200, timeout=10, what="a free slot")


def test_connections_per_uid_are_capped(fake, start_daemon):
    """[bearerd] max_connections_per_uid: one local user cannot take every slot."""
    per_uid = 10
    d = start_daemon(load_config(fake, max_connections_per_uid=per_uid))
    held = connect_all(d.socket, per_uid)
    try:
        wait_for(lambda: open_fds(d) >= per_uid, timeout=10, what="bearerd to accept them")
        extra = connect_all(d.socket, 1)
        over = exchange(extra, b"", timeout=10)
        close_all(extra)
        assert over[0].status == 503, over[0].buf[:200]
        assert b"too many connections" in over[0].buf
        ok = exchange(held, get_request())
        assert {c.status for c in ok} == {200}
        for c in ok:
            remember_token(c.body.decode())
    finally:
        close_all(held)
    wait_for(lambda: d.get("/healthz").status == 200, timeout=10, what="a free slot")


SLOW_HEAD = b"GET /v1/token/api HTTP/1.1\r\nHost: bearerd\r\nX-Slow: " + b"a" * 4096
# a complete head, then a body that never finishes: header_timeout covers the whole request
SLOW_BODY = b"POST /v1/refresh/api HTTP/1.1\r\nHost: bearerd\r\nContent-Length: 4096\r\n\r\n" + \
    b"{" * 4096


SLOW_COMPAT = b"GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=api://load " \
    b"HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\nX-Slow: " + b"a" * 4096


def compat_get(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", "/metadata/identity/oauth2/token?api-version=2018-02-01"
                  "&resource=api://load", headers={"Metadata": "true"})
        r = c.getresponse()
        body = r.read()
        return r.status, json.loads(body)["access_token"] if r.status == 200 else None
    finally:
        c.close()


@pytest.mark.parametrize("where,partial", [("unix", SLOW_HEAD), ("unix", SLOW_BODY),
                                           ("compat", SLOW_COMPAT)],
                         ids=["head", "body", "compat-tcp"])
def test_slowloris_is_cut_off_and_others_keep_getting_tokens(fake, start_daemon, where, partial):
    """Slow clients on the Unix socket, or on the IMDS-compatible TCP listener."""
    port = free_port() if where == "compat" else None
    d = start_daemon(load_config(fake, compat_port=port))
    remember_token(d.get("/v1/token/api").json()["access_token"])
    first = partial.index(b"\r\n\r\n") + 4 if partial is SLOW_BODY else 1
    socks = connect_all(d.socket if port is None else ("127.0.0.1", port), SLOW)
    sel = selectors.DefaultSelector()
    cut = {}  # socket -> (seconds after its first byte, what it got)
    good = []  # (start, seconds, status)
    stop = threading.Event()

    def well_behaved():
        while not stop.is_set():
            t = time.monotonic()
            if port is None:
                r = d.get("/v1/token/api", headers={"Accept": "text/plain"}, timeout=30)
                status, tok = r.status, r.body.decode()
            else:
                status, tok = compat_get(port)
            good.append((t, time.monotonic() - t, status))
            if status == 200:
                remember_token(tok)
            time.sleep(0.02)

    try:
        sent = {s: 0 for s in socks}
        t0 = time.monotonic()
        for s in socks:
            s.send(partial[:first])
            sent[s] = first
            sel.register(s, selectors.EVENT_READ)
        t_open = time.monotonic()
        th = threading.Thread(target=well_behaved)
        th.start()
        # one more byte per connection every 0.25 s, until bearerd hangs up on each
        end = t0 + HEADER_TIMEOUT + 3
        next_drip = time.monotonic()
        while len(cut) < SLOW and time.monotonic() < end:
            for key, _ in sel.select(0.05):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                cut[s] = (time.monotonic() - t0, data[:12])
                sel.unregister(s)
            if time.monotonic() >= next_drip:
                next_drip += 0.25
                for s in socks:
                    if s not in cut and sent[s] < len(partial):
                        try:
                            s.send(partial[sent[s]:sent[s] + 1])
                            sent[s] += 1
                        except OSError:
                            pass
        stop.set()
        th.join(30)
    finally:
        stop.set()
        sel.close()
        close_all(socks)
    first_cut = min((t for t, _ in cut.values()), default=None)
    lat = sorted(s for _, s, _ in good)
    kind = {SLOW_HEAD: "head", SLOW_BODY: "body", SLOW_COMPAT: "compat tcp"}[partial]
    print(f"\nslowloris ({kind}): {len(cut)}/{SLOW} cut off between {first_cut:.2f} and "
          f"{max(t for t, _ in cut.values()):.2f} s; well-behaved: {len(good)} requests, "
          f"latency median {lat[len(lat) // 2] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")
    assert len(cut) == SLOW, f"only {len(cut)} of {SLOW} slow connections were closed"
    # cut off by header_timeout, not by anything earlier
    assert first_cut >= HEADER_TIMEOUT - 0.5
    assert all(got in (b"", b"HTTP/1.1 408") for _, got in cut.values()), \
        {got for _, got in cut.values()}
    # while all of them were open, the others were served
    assert all(st == 200 for _, _, st in good), [st for _, _, st in good]
    during = [1 for t, s, _ in good if t >= t_open and t + s < t0 + first_cut]
    assert len(during) >= 10, f"only {len(during)} tokens while the slow clients were open"
    assert d.get("/healthz").status == 200


def test_clients_that_never_read_do_not_grow_memory(fake, start_daemon):
    """Pipelined requests, no reads: bearerd stops reading instead of buffering replies."""
    d = start_daemon(load_config(fake))
    remember_token(d.get("/v1/token/api").json()["access_token"])
    n = 20
    per_client_cap = 16 << 20
    chunk = get_request() * 256
    _, anon0 = memory(d)
    socks = connect_all(d.socket, n)
    pushed = {s: 0 for s in socks}
    try:
        stalled_since = {s: None for s in socks}
        end = time.monotonic() + 20
        while time.monotonic() < end:
            busy = False
            for s in socks:
                if pushed[s] >= per_client_cap:
                    continue
                try:
                    pushed[s] += s.send(chunk)
                    stalled_since[s] = None
                    busy = True
                except BlockingIOError:
                    if stalled_since[s] is None:
                        stalled_since[s] = time.monotonic()
            # done once every client has been unable to send for a whole second
            if not busy and all(t is not None and time.monotonic() - t > 1.0
                                for t in stalled_since.values()):
                break
            if not busy:
                time.sleep(0.01)
        _, anon = memory(d)
        total = sum(pushed.values())
        print(f"\nnon-readers: {n} clients pushed {total >> 10} KiB of pipelined requests; "
              f"RssAnon {anon0} -> {anon} KiB")
        assert all(v < per_client_cap for v in pushed.values()), \
            "bearerd kept reading from a client that never reads its replies"
        assert anon - anon0 < 16 * 1024 * MEM_SCALE
        # and the others are still served
        r = d.get("/v1/token/api", headers={"Accept": "text/plain"})
        assert r.status == 200
        remember_token(r.body.decode())
    finally:
        close_all(socks)


def test_single_flight_1000_waiters_one_upstream_request(fake, start_daemon):
    fake.configure(delay=2)
    d = start_daemon(load_config(fake, wait_timeout=20))
    socks = connect_all(d.socket, 1000)
    try:
        clients = exchange(socks, get_request(), timeout=60)
    finally:
        close_all(socks)
    assert {c.status for c in clients} == {200}, {c.status for c in clients}
    toks = {c.body.decode() for c in clients}
    assert len(toks) == 1
    remember_token(toks.pop())
    assert fake.stats()["requests"] == 1


def test_dynamic_resources_beyond_max_entries_are_refused_not_stored(fake, start_daemon):
    max_entries = 50
    fake.configure(delay=0.5)
    # one caller's 300 new resources at once: dynamic_rate would refuse most of them (429);
    # this test is about max_entries
    d = start_daemon(load_config(fake, max_entries=max_entries, wait_timeout=2, dynamic_rate=0))
    n = 300
    socks = connect_all(d.socket, n)
    try:
        clients = []
        sel_socks = list(socks)
        sends = [get_request(f"/v1/token?resource=api://dyn-{i}") for i in range(n)]
        # distinct resources, all at once: each client its own request
        sel = selectors.DefaultSelector()
        for s, req in zip(sel_socks, sends):
            s.setblocking(True)
            s.sendall(req)
            s.setblocking(False)
            c = Client(s, b"")
            clients.append(c)
            sel.register(s, selectors.EVENT_READ, c)
        left, end = n, time.monotonic() + 60
        while left and time.monotonic() < end:
            for key, _ in sel.select(1.0):
                c = key.data
                data = c.sock.recv(65536)
                c.buf += data
                c.eof = not data
                if c.parse():
                    sel.unregister(c.sock)
                    left -= 1
        sel.close()
        assert left == 0
    finally:
        close_all(socks)
    by = {}
    for c in clients:
        by[c.status] = by.get(c.status, 0) + 1
        if c.status == 200:
            remember_token(c.body.decode())
        else:
            assert c.status in (503, 504), (c.status, c.body)
            assert int(c.headers["retry-after"]) >= 1
    print(f"\n{n} distinct resources, max_entries {max_entries}: {by}")
    assert by.get(503, 0) >= n - max_entries
    # the upstream saw at most one request per entry that fit
    wait_for(lambda: fake.stats()["requests"] >= 1, what="an upstream request")
    assert fake.stats()["requests"] <= max_entries
    st = d.get("/v1/status").json()
    assert len(st) <= max_entries + 1  # + the configured audience
    # idle dynamic entries make room for new ones (LRU): a new resource is served
    fake.configure(delay=0)
    wait_for(lambda: d.get("/v1/token?resource=api://later").status == 200, timeout=15,
             what="a new resource once the others are idle")
    assert len(d.get("/v1/status").json()) <= max_entries + 1


def test_idle_connections_are_closed_after_keepalive_timeout(fake, start_daemon):
    """Connections that never send a byte, or go quiet after a reply, do not stay forever."""
    d = start_daemon(load_config(fake, keepalive_timeout=2))
    silent = connect_all(d.socket, 200)
    used = connect_all(d.socket, 200)
    try:
        for c in exchange(used, get_request()):
            assert c.status == 200
            remember_token(c.body.decode())
        t0 = time.monotonic()
        gone = exchange(silent + used, b"", timeout=10)  # each reads until EOF
        took = time.monotonic() - t0
        assert all(c.eof and not c.buf for c in gone)
        print(f"\n400 idle connections closed within {took:.1f} s")
        assert took >= 1.5
    finally:
        close_all(silent + used)
