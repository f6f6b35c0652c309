"""The proxy: programs that know nothing about tokens call an OAuth-protected API
(tests/fakes/protected_api.py, the API Management scenario) through bearerd,
as HTTP_PROXY or as their base URL, and every call leaves with the right
Bearer token, only to the hosts that should get it."""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import BEARERD, ROOT, remember_token, wait_for

PROTECTED_API = ROOT / "tests" / "fakes" / "protected_api.py"
API_HOST = "api.example.com"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProtectedAPI:
    def __init__(self, tmp, jwks_socket, name="api", tls=None):
        port_file = tmp / f"{name}.port"
        self.log = open(tmp / f"{name}.log", "w")
        argv = [sys.executable, str(PROTECTED_API), "--port", "0", "--port-file", str(port_file),
                "--jwks-socket", jwks_socket]
        if tls:
            argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_file.exists(), what="protected API to listen")
        self.port = int(port_file.read_text())
        self.scheme = "https" if tls else "http"

    def call(self, method, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        if self.scheme == "https":
            import ssl
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            c = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=ctx)
        c.request(method, path)
        r = c.getresponse()
        body = json.loads(r.read())
        c.close()
        return body

    def stats(self):
        return self.call("GET", "/_fake/stats")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def api(tmp_path):
    a = ProtectedAPI(tmp_path, str(tmp_path / "bearerd.sock"))
    yield a
    a.stop()


def proxy_config(api, proxy_port, base_port=None, route_extra="", proxy_extra="",
                 upstream=None, extra_sections=""):
    up = upstream or f"http://127.0.0.1:{api.port}"
    base = f"listen = 127.0.0.1:{base_port}\n" if base_port else ""
    return f"""[bearerd]
socket = @SOCKET@
log_level = debug

[identity "dev"]
source = dev
roles = Sample.Read Sample.Write

[audience "apim"]
identity = dev
resource = api://apim-demo

[proxy]
listen = 127.0.0.1:{proxy_port}
{proxy_extra}

[route "demo"]
match = {API_HOST}
audience = apim
upstream = {up}
{base}{route_extra}
{extra_sections}"""


class Proxied:
    """A daemon with the proxy on proxy_port (and a base-URL listener on base_port)."""

    def __init__(self, d, proxy_port, base_port=None):
        self.d = d
        self.port = proxy_port
        self.base_port = base_port
        tok = d.ctl("token", "apim").stdout.strip()
        remember_token(tok)

    def request(self, method, url, body=None, headers=None, port=None):
        c = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=30)
        c.request(method, url, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data


@pytest.fixture
def proxied(start_daemon, api):
    def start(**kw):
        pp, bp = free_port(), free_port()
        d = start_daemon(proxy_config(api, pp, bp, **kw))
        return Proxied(d, pp, bp)
    return start


def raw(port, data, timeout=10):
    """Sends bytes, returns everything the proxy answers until it closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    return out


def curl(*args, proxy=None):
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    if proxy:
        env["http_proxy"] = proxy
    r = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True,
                       text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    body, _, code = r.stdout.rpartition("\n")
    return int(code), body


# The scenario


def test_scenario_curl_http_proxy(proxied, api):
    p = proxied()
    proxy = f"http://127.0.0.1:{p.port}"
    code, body = curl(f"http://{API_HOST}/api/items", proxy=proxy)
    assert code == 200, body
    first = json.loads(body)
    assert first["roles"] == ["Sample.Read", "Sample.Write"]
    code, body = curl("-X", "POST", "-d", "name=x", f"http://{API_HOST}/api/items", proxy=proxy)
    assert code == 200 and json.loads(body)["body_len"] == 6
    code, body = curl("-X", "DELETE", f"http://{API_HOST}/api/items/1", proxy=proxy)
    assert code == 401 and "insufficient_scope" in body
    # the token is cached: the same iat every time
    code, body = curl(f"http://{API_HOST}/api/items", proxy=proxy)
    assert json.loads(body)["iat"] == first["iat"]
    # the upstream saw its own Host and our Via
    assert first["host"] == f"127.0.0.1:{api.port}"
    assert first["via"] == "1.1 bearerd"


def test_metrics_per_route_and_status(proxied):
    p = proxied()
    assert p.request("GET", f"http://{API_HOST}/api/items")[0] == 200
    assert p.request("DELETE", f"http://{API_HOST}/api/items/1")[0] == 401
    assert p.request("GET", "http://unrouted.example.com/")[0] == 403
    r = p.d.get("/metrics")
    if r.status == 404:
        pytest.skip("this daemon has no /metrics (main.c without the metrics wiring)")
    text = r.body.decode()
    assert 'bearerd_proxy_requests_total{route="demo",status="200"} 1' in text
    assert 'bearerd_proxy_requests_total{route="demo",status="401"} 1' in text
    assert 'bearerd_proxy_requests_total{route="none",status="403"} 1' in text
    assert 'bearerd_proxy_upstream_duration_seconds_count{route="demo"} 2' in text
    assert 'bearerd_connections_open{listener="proxy-forward"}' in text


def test_scenario_base_url_listener(proxied):
    p = proxied()
    base = f"http://127.0.0.1:{p.base_port}"
    code, body = curl(f"{base}/api/items")
    assert code == 200
    iat = json.loads(body)["iat"]
    code, body = curl("-X", "POST", "--data-binary", "abc", f"{base}/api/items")
    assert code == 200 and json.loads(body)["iat"] == iat
    code, _ = curl("-X", "DELETE", f"{base}/api/items/1")
    assert code == 401


def test_python_urllib_through_http_proxy(proxied):
    p = proxied()
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{p.port}"}))
    with opener.open(f"http://{API_HOST}/api/items", timeout=10) as r:
        assert r.status == 200
        assert json.loads(r.read())["method"] == "GET"
    req = urllib.request.Request(f"http://{API_HOST}/api/items", data=b'{"a":1}',
                                 method="POST", headers={"Content-Type": "application/json"})
    with opener.open(req, timeout=10) as r:
        assert json.loads(r.read())["body_len"] == 7
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(urllib.request.Request(f"http://{API_HOST}/api/x", method="DELETE"),
                    timeout=10)
    assert e.value.code == 401


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_fetch_through_base_url(proxied):
    """Node 20's built-in fetch ignores HTTP_PROXY: the base-URL listener needs nothing."""
    p = proxied()
    script = f"""
const base = "http://127.0.0.1:{p.base_port}";
const g = await fetch(base + "/api/items");
const p = await fetch(base + "/api/items", {{method: "POST", body: "hello"}});
const d = await fetch(base + "/api/items/1", {{method: "DELETE"}});
console.log(JSON.stringify([g.status, (await g.json()).iat, p.status, d.status]));
"""
    r = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    g, iat, post, delete = json.loads(r.stdout)
    assert (g, post, delete) == (200, 200, 401) and iat > 0


def test_base_url_refuses_web_pages_and_foreign_hosts(proxied, api):
    """A page in a browser can reach http://127.0.0.1:PORT too: cross-site requests carry
    Origin or Sec-Fetch-Site, and after DNS rebinding the Host is the page's own name.
    Neither gets the route's token; what programs send does."""
    p = proxied()
    bp = p.base_port

    def get(fields):
        out = raw(bp, f"GET /api/items HTTP/1.1\r\n{fields}Connection: close\r\n\r\n"
                  .encode())
        head, _, body = out.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), body

    before = api.stats()["requests"]
    for fields in (f"Host: rebound.example:{bp}\r\n", "Host: rebound.example\r\n",
                   f"Host: 127.0.0.1:{bp + 1}\r\n", "Host: 127.0.0.1\r\n",
                   f"Host: 10.0.0.1:{bp}\r\n", ""):
        st, body = get(fields)
        assert st == 400 and json.loads(body)["error"] == "invalid_request", fields
        assert "Host" in json.loads(body)["error_description"]
    for fields in ("Origin: https://evil.example\r\n", "Origin: null\r\n",
                   f"Origin: http://127.0.0.1:{bp}\r\n", "Sec-Fetch-Site: cross-site\r\n",
                   "Sec-Fetch-Site: same-origin\r\n", "Sec-Fetch-Site: same-site\r\n"):
        st, body = get(f"Host: 127.0.0.1:{bp}\r\n" + fields)
        assert st == 403 and json.loads(body)["error"] == "forbidden", fields
    assert api.stats()["requests"] == before + 1  # nothing forwarded: only the stats call
    for fields in (f"Host: 127.0.0.1:{bp}\r\n", f"Host: localhost:{bp}\r\n",
                   f"Host: LocalHost:{bp}\r\n",
                   f"Host: 127.0.0.1:{bp}\r\nSec-Fetch-Site: none\r\nSec-Fetch-Mode: cors\r\n"):
        st, body = get(fields)
        assert st == 200 and json.loads(body)["path"] == "/api/items", fields
    # the forward proxy names the API in Host, as it should
    assert p.request("GET", f"http://{API_HOST}/api/items")[0] == 200


# Only the hosts that should get a token


def test_unmatched_host_is_refused_and_nothing_forwarded(proxied, api):
    p = proxied()
    before = api.stats()["requests"]
    code, body = curl(f"http://127.0.0.1:{api.port}/api/items",
                      proxy=f"http://127.0.0.1:{p.port}")
    assert code == 403 and json.loads(body)["error"] == "forbidden"
    code, _ = curl("http://other.example.com/", proxy=f"http://127.0.0.1:{p.port}")
    assert code == 403
    assert api.stats()["requests"] == before + 1  # only our own stats call


def test_path_prefix_routes(start_daemon, api):
    pp = free_port()
    conf = proxy_config(api, pp, extra_sections=f"""
[route "writes"]
match = {API_HOST}:8080/api/v2
audience = apim
upstream = http://127.0.0.1:{api.port}/base
""")
    d = start_daemon(conf)
    p = Proxied(d, pp)
    st, _, body = p.request("GET", f"http://{API_HOST}:8080/api/v2/items")
    assert st == 200 and json.loads(body)["path"] == "/base/api/v2/items"
    # a prefix ends at a segment boundary, and dot segments cannot escape it
    assert p.request("GET", f"http://{API_HOST}:8080/api/v2x")[0] == 403
    assert p.request("GET", f"http://{API_HOST}:8080/api/v2/../admin")[0] == 400
    assert p.request("GET", f"http://{API_HOST}:8080/api/v2/%2e%2e/admin")[0] == 400
    # Tomcat, Jetty and Spring read "..;x" as ".." (issue 11, finding 9)
    for seg in ("..;", "..;x=1", ".;", "%2e%2e;", "..%3b", "%2E%2e%3Bjsessionid=1"):
        assert p.request("GET", f"http://{API_HOST}:8080/api/v2/{seg}/admin")[0] == 400, seg
    assert p.request("GET", f"http://{API_HOST}:8080/other")[0] == 403


def test_host_header_must_agree_with_target(proxied, api):
    p = proxied()
    before = api.stats()["requests"]
    out = raw(p.port, f"GET http://{API_HOST}/api/items HTTP/1.1\r\nHost: evil.example\r\n"
                      "\r\n".encode())
    assert out.startswith(b"HTTP/1.1 400 ")
    assert api.stats()["requests"] == before + 1


def test_origin_form_on_forward_listener_is_refused(proxied):
    p = proxied()
    out = raw(p.port, b"GET /api/items HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")


def test_hop_by_hop_headers_removed(proxied, api):
    p = proxied()
    st, headers, body = p.request("GET", f"http://{API_HOST}/api/items", headers={
        "Connection": "keep-alive, X-Private", "X-Private": "secret", "X-Kept": "yes",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==", "Keep-Alive": "timeout=5",
        "TE": "trailers"})
    assert st == 200
    seen = {k.lower(): v for k, v in api.stats()["last_headers"].items()}
    assert seen["x-kept"] == "yes"
    for h in ("x-private", "proxy-authorization", "keep-alive", "te"):
        assert h not in seen
    assert seen["authorization"].startswith("Bearer ")
    assert headers["via"] == "1.1 bearerd"


def test_callers_own_authorization_kept_by_default(proxied, api):
    p = proxied()
    st, _, body = p.request("GET", f"http://{API_HOST}/api/items",
                            headers={"Authorization": "Bearer not-a-jwt"})
    assert st == 401 and b"invalid_token" in body
    assert api.stats()["last_headers"]["Authorization"] == "Bearer not-a-jwt"


def test_callers_own_authorization_replaced_with_overwrite(proxied):
    p = proxied(route_extra="overwrite = yes")
    st, _, _ = p.request("GET", f"http://{API_HOST}/api/items",
                         headers={"Authorization": "Bearer not-a-jwt"})
    assert st == 200


def test_redirect_passes_back_untouched(proxied):
    p = proxied()
    st, headers, _ = p.request("GET", f"http://{API_HOST}/_open/redirect")
    assert st == 302 and headers["location"] == "http://elsewhere.invalid/x"


def test_passthrough_route_sends_no_token(start_daemon, api):
    pp = free_port()
    conf = proxy_config(api, pp, extra_sections=f"""
[route "open"]
match = open.example.com
passthrough = yes
upstream = http://127.0.0.1:{api.port}
""")
    p = Proxied(start_daemon(conf), pp)
    st, _, _ = p.request("GET", "http://open.example.com/api/items")
    assert st == 401
    assert "Authorization" not in api.stats()["last_headers"]


def test_reload_keeps_the_proxy_and_refuses_proxy_changes(proxied):
    import signal
    p = proxied()
    assert p.request("GET", f"http://{API_HOST}/api/items")[0] == 200
    seen = len(p.d.logs())
    p.d.proc.send_signal(signal.SIGHUP)  # same configuration: adopted
    wait_for(lambda: "reload" in p.d.logs()[seen:].lower(), what="the reload")
    if "reload is not implemented" in p.d.logs()[seen:]:
        pytest.skip("this daemon does not reload (main.c without the reload wiring)")
    assert p.request("GET", f"http://{API_HOST}/api/items")[0] == 200
    p.d.config.write_text(p.d.config.read_text().replace(f"match = {API_HOST}",
                                                         "match = changed.example.com"))
    p.d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "restart bearerd to apply them" in p.d.logs(), what="the refusal")
    # the old routes keep serving
    assert p.request("GET", f"http://{API_HOST}/api/items")[0] == 200
    assert p.request("GET", "http://changed.example.com/api/items")[0] == 403


def test_reload_then_metrics_reads_no_freed_configuration(start_daemon, api):
    """The listeners' names outlive the configuration they came from: after a reload has
    retired the old one (wait_timeout + 1 s later), /metrics still names them.  Under
    AddressSanitizer a dangling name is a heap-use-after-free."""
    import signal
    pp, bp = free_port(), free_port()
    conf = proxy_config(api, pp, bp).replace("log_level = debug",
                                             "log_level = debug\nwait_timeout = 1")
    p = Proxied(start_daemon(conf), pp, bp)
    if p.d.get("/metrics").status == 404:
        pytest.skip("this daemon has no /metrics (main.c without the metrics wiring)")
    seen = len(p.d.logs())
    p.d.config.write_text(p.d.config.read_text().replace(
        "roles = Sample.Read Sample.Write", "roles = Sample.Read Sample.Write Sample.Delete"))
    p.d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(m in p.d.logs()[seen:] for m in
                         ("configuration reloaded", "reload failed", "not implemented")),
             what="the reload")
    if "reload is not implemented" in p.d.logs()[seen:]:
        pytest.skip("this daemon does not reload (main.c without the reload wiring)")
    assert "configuration reloaded" in p.d.logs()[seen:]
    time.sleep(3.5)  # the old configuration is freed 2 s after the reload
    for _ in range(3):  # allocations that may reuse the freed memory
        assert p.request("GET", f"http://{API_HOST}/api/items")[0] == 200
        assert curl(f"http://127.0.0.1:{bp}/api/items")[0] == 200
    text = p.d.get("/metrics").body.decode()
    assert 'bearerd_connections_open{listener="proxy-demo"} 0' in text
    assert 'bearerd_connections_open{listener="proxy-forward"} 0' in text
    assert p.request("DELETE", f"http://{API_HOST}/api/items/1")[0] == 200  # the new roles


# Keep-alive and upstream reuse


def test_keep_alive_both_sides(proxied, api):
    p = proxied()
    c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    conns = api.stats()["connections"]
    for i in range(5):
        c.request("GET", f"http://{API_HOST}/api/items/{i}")
        r = c.getresponse()
        assert r.status == 200
        r.read()
    c.request("POST", f"http://{API_HOST}/api/items", body=b"x" * 1000)
    assert json.loads(c.getresponse().read())["body_len"] == 1000
    c.close()
    # one upstream connection for six requests (plus the stats calls' own)
    assert api.stats()["connections"] - conns == 2


def test_upstream_bytes_after_a_response_are_not_the_next_response(proxied):
    p = proxied()
    c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    c.request("GET", f"http://{API_HOST}/_open/extra")
    r = c.getresponse()
    assert r.read() == b"ok"
    c.request("GET", f"http://{API_HOST}/api/items")
    r = c.getresponse()
    body = r.read()
    assert r.status == 200 and b"smuggle" not in body and json.loads(body)["path"] == "/api/items"
    c.close()


def test_no_reuse_after_a_204_that_the_upstream_follows_with_bytes(proxied):
    """A 204 has no body, but a broken upstream may send one late: the connection is not
    pooled, or those bytes would be the answer to the next caller's request."""
    p = proxied()
    c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    c.request("GET", f"http://{API_HOST}/_open/late?s=0.5")
    r = c.getresponse()
    assert r.status == 204 and r.read() == b""
    c.request("GET", f"http://{API_HOST}/api/items")
    r = c.getresponse()
    body = r.read()
    assert r.status == 200 and b"smuggle" not in body, body
    assert json.loads(body)["path"] == "/api/items"
    c.close()


def test_no_reuse_after_an_early_error_to_a_request_with_a_body(proxied):
    """An upstream that refused a request before reading its body may read that body as a
    request next: the connection is not pooled."""
    p = proxied()
    c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    c.request("POST", f"http://{API_HOST}/_open/early?s=0.5",
              body=b"GET /_open/redirect HTTP/1.1\r\nHost: x\r\n\r\n")
    r = c.getresponse()
    assert r.status == 400 and json.loads(r.read())["error"] == "refused_early"
    c.request("GET", f"http://{API_HOST}/api/items")
    r = c.getresponse()
    body = r.read()
    assert r.status == 200 and json.loads(body)["path"] == "/api/items", (r.status, body)
    c.close()


def test_chunked_request_body_streams(proxied):
    p = proxied()
    out = raw(p.port, b"POST http://api.example.com/api/items HTTP/1.1\r\n"
                      b"Host: api.example.com\r\nTransfer-Encoding: chunked\r\n"
                      b"Connection: close\r\n\r\n"
                      b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["body_len"] == 11


def test_pipelined_requests_answered_in_order(proxied):
    p = proxied()
    out = raw(p.port, b"GET http://api.example.com/api/one HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
                      b"GET http://api.example.com/api/two HTTP/1.1\r\nHost: api.example.com\r\n"
                      b"Connection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 ") == 2
    assert out.index(b'"/api/one"') < out.index(b'"/api/two"')


def read_until_close(s, limit=5.0):
    """Everything until the peer closes, and whether it closed within limit seconds."""
    s.settimeout(limit)
    out, start = b"", time.monotonic()
    try:
        while True:
            b = s.recv(65536)
            if not b:
                return out, time.monotonic() - start < limit
            out += b
    except socket.timeout:
        return out, False


def test_client_half_close_still_gets_the_answers(proxied):
    """A client may shut its sending side once its request is out: the request was
    forwarded, so the answer goes back (to each pipelined request), then the close."""
    p = proxied()
    for port, target in ((p.port, f"http://{API_HOST}"), (p.base_port, "")):
        host = API_HOST if target else f"127.0.0.1:{port}"
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"GET {target}/_open/slow?s=0.3 HTTP/1.1\r\nHost: {host}\r\n\r\n"
                  f"POST {target}/api/items HTTP/1.1\r\nHost: {host}\r\n"
                  f"Content-Length: 3\r\n\r\nabc".encode())
        s.shutdown(socket.SHUT_WR)
        out, closed = read_until_close(s)
        s.close()
        assert closed and out.count(b"HTTP/1.1 200 ") == 2, out
        assert b'"slept": true' in out and b'"body_len": 3' in out
    # HTTP/1.0, the reviewer's case
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    s.sendall(f"GET http://{API_HOST}/_open/slow?s=0.3 HTTP/1.0\r\n\r\n".encode())
    s.shutdown(socket.SHUT_WR)
    out, closed = read_until_close(s)
    s.close()
    assert closed and out.startswith(b"HTTP/1.1 200 ") and b'"slept": true' in out
    # a body cut short by the half-close is not a request: 400, nothing more
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    s.sendall(f"POST http://{API_HOST}/_open/upload HTTP/1.1\r\nHost: {API_HOST}\r\n"
              f"Content-Length: 10\r\n\r\nabc".encode())
    s.shutdown(socket.SHUT_WR)
    out, closed = read_until_close(s)
    s.close()
    assert closed and out.startswith(b"HTTP/1.1 400 "), out


def test_http10_client_gets_a_dechunked_body(proxied):
    p = proxied()
    out = raw(p.port, b"GET http://api.example.com/_open/download?n=3000&chunked=1 HTTP/1.0\r\n"
                      b"Host: api.example.com\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body == b"x" * 3000


def test_head_request_has_no_body(proxied):
    p = proxied()
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    s.sendall(b"HEAD http://api.example.com/api/items HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
              b"GET http://api.example.com/api/after HTTP/1.1\r\nHost: api.example.com\r\n"
              b"Connection: close\r\n\r\n")
    f = s.makefile("rb")
    out = f.read()
    s.close()
    first, _, rest = out.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ") and b"Content-Length: " in first
    assert rest.startswith(b"HTTP/1.1 200 ")  # the HEAD response had no body
    assert b'"/api/after"' in rest


def test_header_timeout_closes_a_slow_client(start_daemon, api):
    pp = free_port()
    Proxied(start_daemon(proxy_config(api, pp, proxy_extra="header_timeout = 1")), pp)
    s = socket.create_connection(("127.0.0.1", pp), timeout=10)
    s.sendall(b"GET http://api.example.com/api/items HTTP/1.1\r\nHost: api.exa")
    start = time.monotonic()
    out, closed = read_until_close(s, limit=9)
    s.close()
    assert closed, "still open, waiting for ever"
    assert out.startswith(b"HTTP/1.1 408 "), out[:100]
    assert time.monotonic() - start < 9


# max_connections: see test_proxy_security.py::test_max_connections_answers_503


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit is not installed")
def test_out_of_descriptors_rests_then_recovers(proxied):
    p = proxied()
    subprocess.run(["prlimit", "--pid", str(p.d.proc.pid), "--nofile=48:48"], check=True)
    held = [socket.create_connection(("127.0.0.1", p.port), timeout=5) for _ in range(60)]
    wait_for(lambda: "out of descriptors" in p.d.logs(), what="the accept failure")
    for s in held:
        s.close()
    st, _, _ = p.request("GET", f"http://{API_HOST}/api/items")
    assert st == 200
    assert p.d.logs().count("out of descriptors") <= 3  # logged once per starvation


# Strict framing: no smuggling


SMUGGLING = [
    # Content-Length and Transfer-Encoding together
    b"POST http://api.example.com/api/items HTTP/1.1\r\nHost: api.example.com\r\n"
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # two different Content-Lengths
    b"POST http://api.example.com/api/items HTTP/1.1\r\nHost: api.example.com\r\n"
    b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    # obs-fold
    b"GET http://api.example.com/api/items HTTP/1.1\r\nHost: api.example.com\r\n"
    b"X-A: 1\r\n  folded\r\n\r\n",
    # bare LF
    b"GET http://api.example.com/api/items HTTP/1.1\nHost: api.example.com\r\n\r\n",
    # space before the colon
    b"GET http://api.example.com/api/items HTTP/1.1\r\nHost : api.example.com\r\n\r\n",
    # a coding we do not implement
    b"POST http://api.example.com/api/items HTTP/1.1\r\nHost: api.example.com\r\n"
    b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    # control character in a value
    b"GET http://api.example.com/api/items HTTP/1.1\r\nHost: api.example.com\r\n"
    b"X-A: a\x01b\r\n\r\n",
]


@pytest.mark.parametrize("req", SMUGGLING)
def test_ambiguous_framing_rejected(proxied, api, req):
    p = proxied()
    before = api.stats()["requests"]
    out = raw(p.port, req)
    assert out.startswith(b"HTTP/1.1 400 "), out[:100]
    assert b"Connection: close" in out
    assert api.stats()["requests"] == before + 1


def test_malformed_chunked_body_never_reaches_a_second_request(proxied, api):
    p = proxied()
    before = api.stats()["by_path"]
    out = raw(p.port, b"POST http://api.example.com/api/items HTTP/1.1\r\n"
                      b"Host: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\nGET http://api.example.com/api/smuggled HTTP/1.1\r\n"
                      b"Host: api.example.com\r\n\r\n")
    assert b" 400 " in out.split(b"\r\n", 1)[0]
    assert "/api/smuggled" not in api.stats()["by_path"]
    assert before.get("/api/smuggled") is None


def test_oversized_head_431(proxied):
    p = proxied()
    out = raw(p.port, b"GET http://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n" +
              b"X-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")


# Tokens: retry on invalid_token, 503 without a token


def wait_until_newer_tokens(iat):
    """Waits until a token minted now gets an iat above iat.  The dev source stamps
    time(NULL), which lags the precise wall clock that time.time() reads by up to one
    kernel tick (measured: 4.8 ms here): just after a second begins by time.time(),
    time(NULL) still gives the old one.  Waiting only for int(time.time()) > iat let the
    refresh mint a token with the same iat, which the fake then revoked as well (the test
    failed about once in 20 runs, and one in two with a tight poll); 100 ms past the
    second is well beyond any tick."""
    wait_for(lambda: time.time() >= iat + 1.1, what="a newer second by every clock")


def test_invalid_token_refreshes_and_retries_once(proxied, api):
    p = proxied()
    st, _, body = p.request("GET", f"http://{API_HOST}/api/items")
    iat = json.loads(body)["iat"]
    wait_until_newer_tokens(iat)
    api.call("POST", f"/_fake/revoke?iat_le={iat}")
    before = api.stats()["by_path"].get("/api/retry", 0)
    st, _, body = p.request("GET", f"http://{API_HOST}/api/retry")
    assert st == 200, body
    assert json.loads(body)["iat"] > iat
    assert api.stats()["by_path"]["/api/retry"] - before == 2
    assert "refreshing" in p.d.logs()
    remember_token(p.d.ctl("token", "apim").stdout.strip())  # the new one stays out of logs too


def test_non_idempotent_request_not_retried(proxied, api):
    p = proxied()
    st, _, body = p.request("GET", f"http://{API_HOST}/api/items")
    iat = json.loads(body)["iat"]
    wait_until_newer_tokens(iat)
    api.call("POST", f"/_fake/revoke?iat_le={iat}")
    st, _, body = p.request("POST", f"http://{API_HOST}/api/once", body=b"x")
    assert st == 401 and b"invalid_token" in body
    assert api.stats()["by_path"]["/api/once"] == 1


def test_no_token_503_and_nothing_forwarded(start_daemon, api):
    pp = free_port()
    dead = free_port()
    conf = proxy_config(api, pp, extra_sections=f"""
[identity "broken"]
source = azure-imds
endpoint = http://127.0.0.1:{dead}/metadata/identity/oauth2/token

[audience "nope"]
identity = broken
resource = api://nope

[route "broken"]
match = broken.example.com
audience = nope
upstream = http://127.0.0.1:{api.port}
""")
    p = Proxied(start_daemon(conf), pp)
    before = api.stats()["requests"]
    st, headers, body = p.request("GET", "http://broken.example.com/api/items")
    assert st == 503 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]
    assert "retry-after" in headers
    assert api.stats()["requests"] == before + 1


# Upstream trouble


def test_upstream_down_502(start_daemon, api):
    pp = free_port()
    p = Proxied(start_daemon(proxy_config(api, pp,
                                          upstream=f"http://127.0.0.1:{free_port()}")), pp)
    st, headers, body = p.request("GET", f"http://{API_HOST}/api/items")
    assert st == 502 and json.loads(body)["error"] == "bad_gateway"


def test_upstream_timeout_504(start_daemon, api):
    pp = free_port()
    p = Proxied(start_daemon(proxy_config(api, pp, proxy_extra="idle_timeout = 1")), pp)
    st, _, body = p.request("GET", f"http://{API_HOST}/_open/slow")
    assert st == 504 and json.loads(body)["error"] == "gateway_timeout"


def test_slow_upstream_within_idle_timeout_is_waited_for(start_daemon, api):
    pp = free_port()
    p = Proxied(start_daemon(proxy_config(api, pp, proxy_extra="header_timeout = 1\n"
                                                               "idle_timeout = 5")), pp)
    st, _, body = p.request("GET", f"http://{API_HOST}/_open/slow?s=2")
    assert st == 200 and json.loads(body)["slept"]


def test_slow_upload_longer_than_idle_timeout(start_daemon, api):
    """The upstream is silent while the body streams in: that is not a timeout."""
    pp = free_port()
    Proxied(start_daemon(proxy_config(api, pp, proxy_extra="idle_timeout = 1")), pp)
    s = socket.create_connection(("127.0.0.1", pp), timeout=10)
    s.sendall(b"POST http://api.example.com/_open/upload HTTP/1.1\r\nHost: api.example.com\r\n"
              b"Content-Length: 5\r\nConnection: close\r\n\r\n")
    for b in b"abcde":
        time.sleep(0.6)  # pacing the upload, not asserting on time
        s.sendall(bytes([b]))
    out = s.makefile("rb").read()
    s.close()
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["received"] == 5


# HTTPS upstream


def make_pki(tmp):
    def run(*a):
        subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=tmp)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=bearerd proxy test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr",
        "-subj", "/CN=localhost")
    (tmp / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "ext")
    return tmp / "ca.pem", tmp / "leaf.pem", tmp / "leaf.key"


@pytest.fixture
def tls_api(tmp_path):
    ca, cert, key = make_pki(tmp_path)
    a = ProtectedAPI(tmp_path, str(tmp_path / "bearerd.sock"), name="tlsapi", tls=(cert, key))
    a.ca = ca
    yield a
    a.stop()


def test_https_upstream_verified_with_ca_file(start_daemon, tls_api):
    pp, bp = free_port(), free_port()
    conf = proxy_config(tls_api, pp, bp, upstream=f"https://127.0.0.1:{tls_api.port}",
                        route_extra=f"ca_file = {tls_api.ca}")
    Proxied(start_daemon(conf), pp, bp)
    code, body = curl(f"http://{API_HOST}/api/items", proxy=f"http://127.0.0.1:{pp}")
    assert code == 200 and json.loads(body)["roles"]
    code, body = curl("-X", "POST", "-d", "x", f"http://127.0.0.1:{bp}/api/items")
    assert code == 200


def test_https_upstream_untrusted_is_502(start_daemon, tls_api):
    pp = free_port()
    conf = proxy_config(tls_api, pp, upstream=f"https://127.0.0.1:{tls_api.port}")
    p = Proxied(start_daemon(conf), pp)
    st, _, body = p.request("GET", f"http://{API_HOST}/api/items")
    assert st == 502 and b"TLS" in body
    assert tls_api.stats()["requests"] == 1  # only the stats call: no request got through


# CONNECT


def test_connect_denied_by_default(proxied):
    p = proxied()
    out = raw(p.port, b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 403 ")


def test_connect_tunnel_allow_list(start_daemon, api):
    pp = free_port()
    conf = proxy_config(api, pp, proxy_extra=f"connect = tunnel\ntunnel_hosts = 127.0.0.1:{api.port}")
    Proxied(start_daemon(conf), pp)
    s = socket.create_connection(("127.0.0.1", pp), timeout=10)
    s.sendall(f"CONNECT 127.0.0.1:{api.port} HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n\r\n"
              .encode())
    f = s.makefile("rb")
    assert f.readline().startswith(b"HTTP/1.1 200 ")
    assert f.readline() == b"\r\n"
    # bytes relayed untouched: no token is added inside the tunnel
    s.sendall(b"GET /api/items HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    rest = f.read()
    assert rest.startswith(b"HTTP/1.1 401 ")
    s.close()
    out = raw(pp, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 403 ")


def test_connect_tunnel_half_close(start_daemon, api):
    """The client shuts its sending side inside a tunnel: its last bytes still reach the
    far side, which then sees EOF too (so it closes), and its answer comes back."""
    pp = free_port()
    conf = proxy_config(api, pp, proxy_extra=f"connect = tunnel\ntunnel_hosts = 127.0.0.1:{api.port}")
    Proxied(start_daemon(conf), pp)
    s = socket.create_connection(("127.0.0.1", pp), timeout=10)
    s.sendall(f"CONNECT 127.0.0.1:{api.port} HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n\r\n"
              .encode())
    assert s.recv(100).startswith(b"HTTP/1.1 200 ")
    # keep-alive: the fake closes only when it sees EOF
    s.sendall(b"GET /_open/slow?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    out, closed = read_until_close(s)
    s.close()
    assert out.startswith(b"HTTP/1.1 200 ") and b'"slept": true' in out, out
    assert closed


# CONNECT intercept: TLS terminated with a leaf from bearerd's own CA


def intercept_config(api, pp, tmp):
    return proxy_config(api, pp, proxy_extra=f"connect = intercept\n"
                                            f"intercept_ca_dir = {tmp / 'ca'}")


def test_intercept_with_curl_trusting_bearerds_ca(start_daemon, api, tmp_path):
    pp = free_port()
    Proxied(start_daemon(intercept_config(api, pp, tmp_path)), pp)
    ca = tmp_path / "ca" / "ca.pem"
    assert oct((tmp_path / "ca" / "ca.key").stat().st_mode & 0o777) == "0o600"
    proxy = ["-x", f"http://127.0.0.1:{pp}", "--cacert", str(ca)]
    code, body = curl(*proxy, f"https://{API_HOST}/api/items")
    assert code == 200, body
    iat = json.loads(body)["iat"]
    code, body = curl(*proxy, "-X", "POST", "-d", "x", f"https://{API_HOST}/api/items")
    assert code == 200 and json.loads(body)["iat"] == iat
    code, _ = curl(*proxy, "-X", "DELETE", f"https://{API_HOST}/api/items/1")
    assert code == 401
    # a client that does not trust the CA sees through it
    r = subprocess.run(["curl", "-sS", "-x", f"http://127.0.0.1:{pp}",
                        f"https://{API_HOST}/api/items"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 60, r.stderr
    # hosts without a route are not intercepted at all
    r = subprocess.run(["curl", "-sS", *proxy, "https://other.example.com/"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "403" in r.stderr


def test_node_fetch_through_https_proxy_intercept(start_daemon, api, tmp_path):
    """Node's fetch with undici's EnvHttpProxyAgent, which honours HTTPS_PROXY but always
    tunnels with CONNECT: in intercept mode, trusting bearerd's CA through
    NODE_EXTRA_CA_CERTS, the program's calls get their token as curl's do."""
    pp = free_port()
    Proxied(start_daemon(intercept_config(api, pp, tmp_path)), pp)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(HTTPS_PROXY=f"http://127.0.0.1:{pp}",
               NODE_EXTRA_CA_CERTS=str(tmp_path / "ca" / "ca.pem"))
    r = subprocess.run(["node", "--no-warnings", "fetch-via-proxy.mjs", f"https://{API_HOST}"],
                       cwd=ROOT / "tests" / "clients", capture_output=True, text=True,
                       env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    g, iat, post, delete = json.loads(r.stdout)
    assert (g, post, delete) == (200, 200, 401) and iat > 0


def test_intercept_streams_longer_than_idle_timeout(start_daemon, api, tmp_path):
    """idle_timeout is silence, not length: an intercepted response that keeps flowing for
    longer is not cut (the socket under TLS keeps no timeout of its own)."""
    pp = free_port()
    conf = intercept_config(api, pp, tmp_path).replace("[proxy]", "[proxy]\nidle_timeout = 1")
    Proxied(start_daemon(conf), pp)
    code, body = curl("-x", f"http://127.0.0.1:{pp}", "--cacert", str(tmp_path / "ca" / "ca.pem"),
                      f"https://{API_HOST}/_open/drip?n=8&every=0.35")
    assert code == 200 and body == "ab" * 8


def test_intercept_slow_client_holds_the_upstream_back(start_daemon, api, tmp_path):
    """Back-pressure through TLS: a client that reads nothing gets a few buffers, not the
    body; then the whole body arrives."""
    import ssl
    size = 64 << 20
    pp = free_port()
    env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0"}
    d = start_daemon(intercept_config(api, pp, tmp_path), env=env)
    Proxied(d, pp)
    s = socket.create_connection(("127.0.0.1", pp), timeout=30)
    s.sendall(f"CONNECT {API_HOST}:443 HTTP/1.1\r\nHost: {API_HOST}:443\r\n\r\n".encode())
    assert s.recv(100).startswith(b"HTTP/1.1 200 ")
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.pem"))
    ts = ctx.wrap_socket(s, server_hostname=API_HOST)
    start = vmrss_kb(d.proc.pid)
    ts.sendall(f"GET /_open/download?n={size} HTTP/1.1\r\nHost: {API_HOST}\r\n"
               "Connection: close\r\n\r\n".encode())
    time.sleep(1.5)  # reading nothing
    grown = vmrss_kb(d.proc.pid) - start
    n = 0
    head = b""
    while b"\r\n\r\n" not in head:
        head += ts.recv(65536)
    head, _, rest = head.partition(b"\r\n\r\n")
    n = len(rest)
    while True:
        b = ts.recv(1 << 20)
        if not b:
            break
        n += len(b)
    ts.close()
    assert head.startswith(b"HTTP/1.1 200 ") and n == size
    assert grown < 16 * 1024, f"RSS grew by {grown} KiB while the client read nothing"


def test_intercept_host_header_must_agree(start_daemon, api, tmp_path):
    pp = free_port()
    Proxied(start_daemon(intercept_config(api, pp, tmp_path)), pp)
    ca = tmp_path / "ca" / "ca.pem"
    code, body = curl("-x", f"http://127.0.0.1:{pp}", "--cacert", str(ca), "-H",
                      "Host: evil.example", f"https://{API_HOST}/api/items")
    assert code == 400 and "disagrees" in body


def test_intercept_ca_kept_across_restarts(start_daemon, api, tmp_path):
    pp = free_port()
    d = start_daemon(intercept_config(api, pp, tmp_path))
    first = (tmp_path / "ca" / "ca.pem").read_bytes()
    assert d.stop() == 0
    start_daemon(intercept_config(api, pp, tmp_path))
    assert (tmp_path / "ca" / "ca.pem").read_bytes() == first
    assert b"BEGIN CERTIFICATE" in first


def test_intercept_ca_completed_after_a_crash_between_its_files(start_daemon, api, tmp_path):
    """A crash after ca.key was written but before ca.pem: the next start completes the CA
    from the key (no client can trust a ca.pem that never existed) instead of failing."""
    pp = free_port()
    d = start_daemon(intercept_config(api, pp, tmp_path))
    assert d.stop() == 0
    ca = tmp_path / "ca"
    key = (ca / "ca.key").read_bytes()
    (ca / "ca.pem").unlink()
    (ca / "ca.pem.tmp").write_text("half a certif")  # what the crash left behind
    Proxied(start_daemon(intercept_config(api, pp, tmp_path)), pp)
    assert (ca / "ca.key").read_bytes() == key
    assert b"BEGIN CERTIFICATE" in (ca / "ca.pem").read_bytes()
    assert not (ca / "ca.pem.tmp").exists()
    code, body = curl("-x", f"http://127.0.0.1:{pp}", "--cacert", str(ca / "ca.pem"),
                      f"https://{API_HOST}/api/items")
    assert code == 200, body


# Large bodies stream with bounded memory


def vmrss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_large_bodies_stream_with_bounded_rss(start_daemon, api):
    # 256 MiB each way keeps the check quick; PROXY_BIG_BYTES=1073741824 for the 1 GiB figure
    size = int(os.environ.get("PROXY_BIG_BYTES", 256 << 20)) >> 20 << 20
    # AddressSanitizer keeps freed memory in quarantine, which would count as RSS
    env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0"}
    pp = free_port()
    p = Proxied(start_daemon(proxy_config(api, pp), env=env), pp)
    pid = p.d.proc.pid
    peak = [vmrss_kb(pid)]
    start = peak[0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], vmrss_kb(pid))
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    try:
        # upload: Content-Length, streamed from a generator
        c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=120)
        block = b"y" * (1 << 20)
        c.putrequest("POST", f"http://{API_HOST}/_open/upload", skip_host=True)
        c.putheader("Host", API_HOST)
        c.putheader("Content-Length", str(size))
        c.endheaders()
        for _ in range(size // len(block)):
            c.send(block)
        r = c.getresponse()
        assert r.status == 200
        assert json.loads(r.read())["received"] == size
        # download, chunked from the upstream, on the same connection
        c.request("GET", f"http://{API_HOST}/_open/download?n={size}&chunked=1",
                  headers={"Host": API_HOST})
        r = c.getresponse()
        n = 0
        while True:
            b = r.read(1 << 20)
            if not b:
                break
            n += len(b)
        assert n == size
        c.close()
    finally:
        done.set()
        t.join()
    # a few buffers of 256 KiB each way, never the body
    print(f"bearerd VmRSS: {start} KiB before, {peak[0]} KiB peak")
    assert peak[0] - start < 32 * 1024, f"RSS grew by {peak[0] - start} KiB"


# Configuration


def check_config(tmp_path, text):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    return subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True, text=True)


BASE = """[bearerd]
socket = /tmp/x.sock

[identity "dev"]
source = dev

[audience "apim"]
identity = dev
resource = api://apim-demo
"""


@pytest.mark.parametrize("text,line,msg", [
    ("[proxy]\nlisten = 127.0.0.1:1\n[route \"a\"]\nmatch = h\naudience = nope\n"
     "upstream = https://h\n", 15, "no [audience"),
    ("[proxy]\nlisten = 127.0.0.1:1\n[route \"a\"]\nmatch = h\naudience = apim\n"
     "upstream = http://api.example.com\n", 16, "plain HTTP"),
    ("[proxy]\nlisten = 0.0.0.0:1\n[route \"a\"]\nmatch = h\naudience = apim\n"
     "upstream = https://h\n", 12, "not a loopback"),
    ("[proxy]\nlisten = 127.0.0.1:1\n[route \"a\"]\nmatch = h\naudience = apim\n"
     "upstream = https://h\n[route \"b\"]\nmatch = H:80\naudience = apim\nupstream = https://h\n",
     18, "same as route"),
    ("[proxy]\nlisten = 127.0.0.1:1\nconnect = intercept\n[route \"a\"]\nmatch = h\n"
     "audience = apim\nupstream = https://h\n", 13, "needs intercept_ca_dir"),
    ("[proxy]\nlisten = 127.0.0.1:1\nconnect = intercept\nintercept_ca_dir = ca\n"
     "[route \"a\"]\nmatch = h\naudience = apim\nupstream = https://h\n", 14, "absolute path"),
    ("[proxy]\nlisten = 127.0.0.1:1\nbogus = 1\n[route \"a\"]\nmatch = h\naudience = apim\n"
     "upstream = https://h\n", 13, "unknown key"),
    ("[route \"a\"]\nmatch = h\naudience = apim\nupstream = https://h\n", 12, "no listen"),
    ("[audience \"locked\"]\nidentity = dev\nresource = r\nallow_uids = 0\n[proxy]\n"
     "listen = 127.0.0.1:1\n[route \"a\"]\nmatch = h\naudience = locked\n"
     "upstream = https://h\n", 19, "cannot identify"),
])
def test_config_errors_name_file_and_line(tmp_path, text, line, msg):
    r = check_config(tmp_path, BASE + "\n" + text)
    assert r.returncode != 0
    assert f"bad.conf:{line}:" in r.stderr and msg in r.stderr, r.stderr


def test_example_config_is_valid():
    r = subprocess.run([str(BEARERD), "-n", "-c", str(ROOT / "config" / "examples" /
                                                         "proxy.conf")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
