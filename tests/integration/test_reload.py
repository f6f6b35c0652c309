"""SIGHUP: the configuration is reloaded atomically.  Unchanged identities keep their tokens,
changed ones refetch, audiences come and go, listeners that did not change keep their sockets,
a bad file is rejected with its errors logged while the old configuration keeps serving, and
requests under continuous load never fail."""

import http.client
import os
import re
import signal
import threading

from conftest import remember_token, wait_for
from test_metrics import get_metrics, value
from test_systemd import NotifySocket, short_tmp  # noqa: F401  (fixture)


def two_identity_config(fake, extra_identity="", audiences=None, compat_port=None, more=""):
    """Identities a and b on the same fake; audience x on a, y on b, plus audiences."""
    lines = ["[bearerd]", "socket = @SOCKET@", "log_level = debug", more,
             '[identity "a"]', "source = azure-imds", f"endpoint = {fake.endpoint}",
             '[identity "b"]', "source = azure-imds", f"endpoint = {fake.endpoint}",
             extra_identity]
    for name, ident, res, pre in audiences or [("x", "a", "api://x", "no"),
                                               ("y", "b", "api://y", "no")]:
        lines += [f'[audience "{name}"]', f"identity = {ident}", f"resource = {res}",
                  f"prefetch = {pre}"]
    if compat_port is not None:
        lines += ["[compat]", "identity = a", f"imds_listen = 127.0.0.1:{compat_port}"]
    return "\n".join(lines) + "\n"


def reload(d, text, expect="ok"):
    """Writes the config, sends SIGHUP, waits until the daemon says how it went."""
    logs = d.logs()
    done = logs.count("configuration reloaded") + logs.count("reload failed")
    d.config.write_text(text.replace("@SOCKET@", d.socket))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: d.logs().count("configuration reloaded") +
             d.logs().count("reload failed") > done, what="the reload to finish")
    ok = d.logs().count("configuration reloaded") > logs.count("configuration reloaded")
    assert ok == (expect == "ok"), d.logs()[len(logs):]


def token(d, aud):
    r = d.get(f"/v1/token/{aud}")
    assert r.status == 200, r.body
    return remember_token(r.json()["access_token"])


def test_reload_under_load_no_failures_no_refetch(fake, start_daemon):
    text = two_identity_config(fake)
    d = start_daemon(text)
    first = token(d, "x")
    token(d, "y")
    stop = threading.Event()
    results = {"ok": 0, "fail": []}

    def hammer():
        while not stop.is_set():
            try:
                r = d.get("/v1/token/x", timeout=10)
                if r.status == 200 and r.json()["access_token"] == first:
                    results["ok"] += 1
                else:
                    results["fail"].append((r.status, r.body[:200]))
            except OSError as e:
                results["fail"].append(("exception", repr(e)))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            before = results["ok"]
            reload(d, text)
            wait_for(lambda: results["ok"] > before + 20, what="requests after a reload")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert results["fail"] == [], results["fail"][:5]
    assert results["ok"] > 100
    # the unchanged identities kept their tokens: one upstream request per resource, ever
    assert fake.stats()["by_resource"] == {"api://x": 1, "api://y": 1}
    assert token(d, "x") == first
    fams = get_metrics(d)
    assert value(fams, "bearerd_reloads_total", result="ok") == 5


def test_added_removed_and_changed(fake, start_daemon):
    d = start_daemon(two_identity_config(fake))
    tx, ty = token(d, "x"), token(d, "y")
    # identity b changes (a key of its own), x unchanged, z added with prefetch
    changed = two_identity_config(
        fake, audiences=[("x", "a", "api://x", "no"), ("y", "b", "api://y", "no"),
                         ("z", "a", "api://z", "yes")]).replace(
        '[identity "b"]\nsource = azure-imds',
        '[identity "b"]\nsource = azure-imds\ntimeout = 7')
    reload(d, changed)
    # prefetched without a request
    wait_for(lambda: fake.stats()["by_resource"].get("api://z") == 1, what="z prefetched")
    assert token(d, "x") == tx
    assert token(d, "z")
    ty2 = token(d, "y")
    assert ty2 != ty, "a changed identity must fetch anew"
    by = fake.stats()["by_resource"]
    assert by["api://x"] == 1 and by["api://y"] == 2
    # remove x and z
    reload(d, two_identity_config(fake, audiences=[("y", "b", "api://y", "no")]).replace(
        '[identity "b"]\nsource = azure-imds', '[identity "b"]\nsource = azure-imds\ntimeout = 7'))
    assert d.get("/v1/token/x").status == 404
    assert d.get("/v1/token/z").status == 404
    assert token(d, "y") == ty2
    status = d.get("/v1/status").json()
    assert {e["resource"] for e in status} == {"api://y"}, status


def test_removed_identity_entries_dropped(fake, start_daemon):
    d = start_daemon(two_identity_config(fake))
    token(d, "x")
    token(d, "y")
    reload(d, two_identity_config(fake, audiences=[("x", "a", "api://x", "no")]).replace(
        '[identity "b"]\nsource = azure-imds\nendpoint = ' + fake.endpoint + "\n", ""))
    assert d.get("/v1/token/y").status == 404
    assert {e["identity"] for e in d.get("/v1/status").json()} == {"a"}


def test_bad_config_rejected_old_keeps_serving(fake, start_daemon):
    text = two_identity_config(fake)
    d = start_daemon(text)
    tx = token(d, "x")
    bad = text + "\n[audience \"w\"]\nidentity = nobody\nresource = api://w\nbogus_key = 1\n"
    reload(d, bad, expect="error")
    new = d.logs().split("level=info msg=\"reloading\"")[-1]
    # every error, at error level, naming FILE:LINE
    errors = [l for l in new.splitlines() if l.startswith("level=error")]
    file_line = [l for l in errors if re.search(re.escape(str(d.config)) + r":\d+: ", l)]
    assert len(file_line) >= 2, new
    assert any("bogus_key" in l for l in file_line), new
    assert token(d, "x") == tx
    assert d.get("/v1/token/w").status == 404
    assert fake.stats()["by_resource"] == {"api://x": 1}
    assert value(get_metrics(d), "bearerd_reloads_total", result="error") == 1
    # a good reload afterwards still works
    reload(d, text)
    assert token(d, "x") == tx


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def imds_get(port, resource="api://x"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/metadata/identity/oauth2/token?api-version=2018-02-01&resource="
                  + resource, headers={"Metadata": "true"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_listeners_kept(fake, start_daemon):
    port = free_port()
    text = two_identity_config(fake, compat_port=port)
    d = start_daemon(text)
    ino = os.stat(d.socket).st_ino
    assert imds_get(port)[0] == 200
    # a keep-alive connection to the compat port survives the reload
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    path = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=api://x"
    c.request("GET", path, headers={"Metadata": "true"})
    r = c.getresponse()
    r.read()
    assert r.status == 200
    stop = threading.Event()
    fails = []

    def probe():
        while not stop.is_set():
            try:
                s, body = imds_get(port)
                if s != 200:
                    fails.append((s, body[:100]))
            except OSError as e:
                fails.append(repr(e))

    t = threading.Thread(target=probe)
    t.start()
    try:
        for _ in range(3):
            reload(d, text + "\n")  # same listeners, other bytes
    finally:
        stop.set()
        t.join(30)
    assert fails == []
    assert os.stat(d.socket).st_ino == ino
    c.request("GET", path, headers={"Metadata": "true"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, "the open compat connection was closed"
    c.close()
    closed = d.logs().count("compat listener closed")
    assert closed == 0
    # a changed compat address is bound anew, the old one closed
    port2 = free_port()
    reload(d, two_identity_config(fake, compat_port=port2))
    assert imds_get(port2)[0] == 200
    try:
        imds_get(port)
        raise AssertionError("the old compat port still answers")
    except ConnectionRefusedError:
        pass
    assert os.stat(d.socket).st_ino == ino


def test_notify_reload_ready_even_when_rejected(fake, start_daemon, short_tmp):  # noqa: F811
    n = NotifySocket(short_tmp / "notify")
    try:
        text = two_identity_config(fake)
        d = start_daemon(text, env={"NOTIFY_SOCKET": n.path})
        n.wait_for("READY")
        for good in (True, False):
            d.config.write_text((text if good else text + "junk\n").replace("@SOCKET@",
                                                                               d.socket))
            d.proc.send_signal(signal.SIGHUP)
            msg, pid = n.wait_for("RELOADING")
            assert msg["RELOADING"] == "1" and pid == d.proc.pid
            msg, _ = n.wait_for("READY")
            assert msg["READY"] == "1"
        assert "reload failed" in d.logs()
    finally:
        n.close()


def test_changed_identity_with_fetch_in_flight(fake, start_daemon):
    """A fetch in flight for an identity the reload replaces: its waiters get a retryable 503,
    the late answer is discarded, the old source is freed only after it (ASan checks), and
    the next request fetches through the new source."""
    fake.configure(delay=2)
    text = two_identity_config(fake, more="wait_timeout = 10")
    d = start_daemon(text)
    out = []
    t = threading.Thread(target=lambda: out.append(d.get("/v1/token/y")))
    t.start()
    wait_for(lambda: fake.stats()["requests"] == 1, what="the fetch to start")
    reload(d, text.replace('[identity "b"]\nsource = azure-imds',
                           '[identity "b"]\nsource = azure-imds\ntimeout = 9'))
    t.join(30)
    assert out[0].status == 503 and "retry-after" in out[0].headers, out[0].body
    fake.configure(delay=0)
    assert token(d, "y")
    assert fake.stats()["by_resource"]["api://y"] == 2

    # the late answer to the old source arrives and is counted, then discarded
    def upstream_b():
        fams = get_metrics(d)
        return sum(v for (_, ls), v in
                   fams["bearerd_upstream_requests_total"]["samples"].items()
                   if ("identity", "b") in ls)
    wait_for(lambda: upstream_b() == 2, what="the old fetch to finish")
    assert token(d, "y")
