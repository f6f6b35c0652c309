"""Unmodified Azure SDK clients (tests/clients, real npm packages) get their
tokens through bearerd's IMDS- and App-Service-compatible listeners, and the
listeners reject what IMDS and App Service reject."""

import http.client
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import BEARERD, ROOT, Daemon, remember_token, wait_for

CLIENTS = ROOT / "tests" / "clients"
SCRIPT = CLIENTS / "get-token.mjs"
UA_CLIENT_ID = "2b7c1d4e-0f5a-4c3b-9e8d-7a6b5c4d3e2f"
RESOURCE = "https://storage.azure.com"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compat_config(fake, tmp, **over):
    """Identity vm (system-assigned) answers SDK requests; ua is a user-assigned one.
    The uid-restricted audience 'locked' exists only with dynamic = "no": bearerd -n refuses
    compat dynamic resources beside it (TCP callers cannot be told apart)."""
    imds, app = free_port(), free_port()
    dynamic = over.get('dynamic', 'yes')
    locked = """
[audience "locked"]
identity = vm
resource = api://locked
allow_uids = 0
""" if dynamic == "no" else ""
    text = f"""[bearerd]
socket = @SOCKET@
log_level = debug
min_validity = {over.get('min_validity', 300)}
wait_timeout = {over.get('wait_timeout', 5)}

[identity "vm"]
source = azure-imds
endpoint = {fake.endpoint}
dynamic_resources = yes
dynamic_allow_uids = 0

[identity "ua"]
source = azure-imds
endpoint = {fake.endpoint}
client_id = {UA_CLIENT_ID}

[audience "api"]
identity = vm
resource = api://test-app
{locked}
[compat]
identity = vm
imds_listen = 127.0.0.1:{imds}
appservice_listen = 127.0.0.1:{app}
appservice_secret_file = {tmp}/identity-header
dynamic_resources = {dynamic}
{over.get('compat_extra', '')}
"""
    return text, imds, app


@pytest.fixture
def compat(fake, start_daemon, tmp_path):
    def start(**over):
        text, imds, app = compat_config(fake, tmp_path, **over)
        d = start_daemon(text)
        d.imds_port, d.app_port = imds, app
        d.secret = (tmp_path / "identity-header").read_text().strip()
        return d
    return start


def node_env(d, via):
    """A clean environment: nothing but the variables that point the SDK at bearerd."""
    if shutil.which("node") is None or not (CLIENTS / "node_modules").is_dir():
        pytest.fail("node and tests/clients/node_modules are needed: "
                    "npm ci --prefix tests/clients (scripts/check does it)")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(d.tmp),
           "NO_PROXY": "*"}
    if via == "appservice":
        env["IDENTITY_ENDPOINT"] = f"http://127.0.0.1:{d.app_port}/msi/token"
        env["IDENTITY_HEADER"] = d.secret
    else:
        env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = f"http://127.0.0.1:{d.imds_port}"
    return env


def run_client(d, kind, via, resource=RESOURCE, client_id=None, timeout=60):
    argv = ["node", str(SCRIPT), kind, resource] + ([client_id] if client_id else [])
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                       env=node_env(d, via), cwd=str(CLIENTS))
    out = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
    out["_rc"], out["_stderr"], out["_elapsed"] = p.returncode, p.stderr, time.monotonic() - t0
    return out


def compat_requests(d, listener):
    return d.logs().count(f'msg="compat request" listener={listener} ')


@pytest.mark.parametrize("via", ["appservice", "imds"])
@pytest.mark.parametrize("kind,client_id", [("mi", None), ("mi", UA_CLIENT_ID), ("dac", None),
                                            ("msal", None), ("msal", UA_CLIENT_ID)])
def test_sdk_gets_the_upstream_token(fake, compat, via, kind, client_id):
    d = compat()
    out = run_client(d, kind, via, client_id=client_id)
    assert out["_rc"] == 0, out
    tok = remember_token(out["token"])
    st = fake.stats()
    assert st["issued"] == [tok], "the SDK did not get the upstream's token byte for byte"
    assert st["requests"] == 1
    assert st["last_query"]["resource"] == RESOURCE
    if client_id:
        assert st["last_query"]["client_id"] == client_id
    else:
        assert "client_id" not in st["last_query"]
    # expiry: the upstream's expires_on, to the second
    now = time.time()
    assert abs(out["expiresOnTimestamp"] / 1000 - (now + 3600)) < 30
    assert out["expiresOnTimestamp"] % 1000 == 0
    # the second getToken came from the SDK's own cache: bearerd saw one request
    assert out["second_token"] == tok
    assert compat_requests(d, via) == 1, d.logs()


def test_ten_processes_one_upstream_request(fake, compat):
    fake.configure(delay=0.5)
    d = compat()
    vias = ["appservice", "imds"] * 5
    with ThreadPoolExecutor(10) as ex:
        outs = list(ex.map(lambda v: run_client(d, "mi", v), vias))
    for o in outs:
        assert o["_rc"] == 0, o
    toks = {remember_token(o["token"]) for o in outs}
    assert len(toks) == 1
    assert fake.stats()["requests"] == 1
    # the local API shares the entry the SDKs created
    r = d.get("/v1/token?resource=" + RESOURCE + "&identity=vm")
    assert r.status == 200 and r.json()["access_token"] in toks
    assert fake.stats()["requests"] == 1


@pytest.mark.parametrize("kind,via", [("mi", "appservice"), ("msal", "imds"), ("dac", "imds")])
def test_upstream_failure_is_a_clear_error_soon(fake, compat, kind, via):
    fake.configure(status=500)
    d = compat()
    out = run_client(d, kind, via, timeout=30)
    assert out["_rc"] == 1, out
    assert "token" not in out
    assert "fake_imds scripted error 500" in out["error"]
    assert out["_elapsed"] < 12, out


def raw(port, path, headers=None, method="GET"):
    """headers: a dict, or a list of (name, value) to send fields more than once."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        if isinstance(headers, list):
            c.putrequest(method, path, skip_host=any(k == "Host" for k, _ in headers),
                         skip_accept_encoding=True)
            for k, v in headers:
                c.putheader(k, v)
            c.endheaders()
        else:
            c.request(method, path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


TOKEN = "/metadata/identity/oauth2/token"
Q = "?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
MD = {"Metadata": "true"}


def test_imds_listener_rules(fake, compat):
    d = compat()
    p = d.imds_port
    # path variants clients build (msal-node adds "/", a host ending in "/" doubles the first)
    for path in (TOKEN, TOKEN + "/", "/" + TOKEN, "/METADATA/identity/oauth2/token",
                 "//Metadata/identity/oauth2/token/"):
        st, h, body = raw(p, path + Q + "&x-client-SKU=test", dict(MD, **{"X-Unknown": "1"}))
        assert st == 200, (path, body)
        doc = json.loads(body)
        remember_token(doc["access_token"])
        assert doc["resource"] == "https://vault.azure.net"
        assert doc["token_type"] == "Bearer"
        for k in ("expires_in", "expires_on", "not_before"):
            assert isinstance(doc[k], str) and doc[k].isdigit(), k
        assert int(doc["expires_in"]) > 300
        assert "refresh_in" not in doc and "client_id" not in doc
    assert fake.stats()["requests"] == 1

    missing = b'{"error":"invalid_request","error_description":"Required metadata header not specified"}'
    # the JS probe: no query, no Metadata header -> a 400 it reads as "available"
    assert raw(p, TOKEN)[::2] == (400, missing)
    assert raw(p, TOKEN + Q)[::2] == (400, missing)
    assert raw(p, TOKEN + Q, {"Metadata": "True"})[::2] == (400, missing)
    st, _, body = raw(p, TOKEN + Q, dict(MD, **{"X-Forwarded-For": "10.0.0.1"}))
    assert st == 400 and b"X-Forwarded-For" in body
    st, _, body = raw(p, TOKEN + Q + "&resource=x", MD)
    assert st == 400 and b"Duplicate" in body
    st, _, body = raw(p, TOKEN + Q + "&api-version=2018-02-01", MD)
    assert st == 400 and b"Duplicate" in body
    assert raw(p, TOKEN + "?api-version=2018-02-01", MD)[0] == 400
    assert raw(p, TOKEN + "?resource=x", MD)[0] == 400
    # unknown paths (IMDSv2's probe and /metadata/instance get 403: test_dotnet.py)
    for path in ("/", "/metadata/identity/oauth2/tokens"):
        assert raw(p, path, MD)[0] == 404, path
    st, h, _ = raw(p, TOKEN + Q, MD, method="PUT")
    assert (st, h["allow"]) == (405, "GET, POST")  # POST is Cloud Shell's (test_cloud_shell_*)
    # selectors map to configured identities
    st, _, body = raw(p, TOKEN + Q + "&client_id=" + UA_CLIENT_ID, MD)
    assert st == 200 and json.loads(body)["client_id"] == UA_CLIENT_ID
    remember_token(json.loads(body)["access_token"])
    st, _, body = raw(p, TOKEN + Q + "&client_id=00000000-0000-0000-0000-000000000000", MD)
    assert (st, json.loads(body)) == (400, {"error": "invalid_request",
                                            "error_description": "Identity not found"})
    st, _, body = raw(p, TOKEN + Q + "&object_id=nope", MD)
    assert st == 400 and b"Identity not found" in body
    st, _, body = raw(p, TOKEN + Q + "&client_id=" + UA_CLIENT_ID + "&msi_res_id=x", MD)
    assert st == 400


def test_appservice_listener_rules(fake, compat):
    d = compat()
    p = d.app_port
    ok = "/msi/token?api-version=2019-08-01&resource=api%3A%2F%2Ftest-app"
    hdr = {"X-IDENTITY-HEADER": d.secret}
    st, h, body = raw(p, ok, hdr)
    assert st == 200, body
    doc = json.loads(body)
    remember_token(doc["access_token"])
    assert doc["resource"] == "api://test-app"
    assert doc["expires_on"].isdigit() and doc["expires_in"].isdigit()
    # the configured audience api shares the entry
    assert d.get("/v1/token/api").json()["access_token"] == doc["access_token"]
    assert fake.stats()["requests"] == 1

    for bad in ({}, {"X-IDENTITY-HEADER": ""}, {"X-IDENTITY-HEADER": d.secret[:-1]},
                {"X-IDENTITY-HEADER": d.secret + "0"},
                {"X-IDENTITY-HEADER": d.secret[:-1] + ("1" if d.secret[-1] != "1" else "2")}):
        st, _, body = raw(p, ok, bad)
        assert st == 401 and b"access_token" not in body, bad
    st, _, body = raw(p, ok + "&resource=x", hdr)
    assert st == 400 and b"Duplicate" in body
    st, _, body = raw(p, ok, dict(hdr, **{"X-Forwarded-For": "10.0.0.1"}))
    assert st == 400
    # 2017-09-01 takes the secret in "secret", not X-IDENTITY-HEADER (test_appservice_2017_*)
    assert raw(p, "/msi/token?api-version=2017-09-01&resource=x", hdr)[0] == 401
    assert raw(p, "/msi/token?api-version=2018-02-01&resource=x", hdr)[0] == 400
    assert raw(p, "/msi/token?api-version=2019-08-01", hdr)[0] == 400
    assert raw(p, "/msi/tokens" + ok[10:], hdr)[0] == 404
    assert raw(p, TOKEN + Q, dict(hdr, **MD))[0] == 404
    st, _, body = raw(p, ok + "&principal_id=nope", hdr)
    assert st == 400 and b"Identity not found" in body
    st, _, body = raw(p, ok + "&mi_res_id=nope", hdr)
    assert st == 400 and b"Identity not found" in body

    # bearerctl env prints what the SDK needs
    env = d.ctl("env")
    assert env.returncode == 0, env.stderr
    assert env.stdout == (f"IDENTITY_ENDPOINT=http://127.0.0.1:{p}/msi/token\n"
                          f"IDENTITY_HEADER={d.secret}\n")


def raw_bytes(port, data, timeout=10):
    """Sends data as is on a new connection; the status of the answer and its body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


WEB_RESOURCE = "https://rebind.example"


def shown(body):
    """A body for an assertion message: never a token, even when the test fails."""
    return "<an answer with a token>" if b"access_token" in body else body


@pytest.mark.parametrize("listener", ["imds", "appservice"])
def test_web_pages_are_refused(fake, compat, listener):
    """DNS rebinding and cross-site requests: the Host must name this host by address or as
    localhost, and nothing may carry a web page's Origin or Sec-Fetch-Site.  Refusals are
    JSON 4xx and never reach the cache.  What SDKs send (Host: 127.0.0.1:PORT, localhost,
    169.254.169.254 behind a redirect, no port for :80) is served."""
    d = compat()
    port = d.imds_port if listener == "imds" else d.app_port
    path = (TOKEN + "?api-version=2018-02-01" if listener == "imds"
            else "/msi/token?api-version=2019-08-01") + "&resource=" + WEB_RESOURCE
    auth = MD if listener == "imds" else {"X-IDENTITY-HEADER": d.secret}

    def ask(**headers):
        st, _, body = raw(port, path, dict(auth, **headers))
        return st, body

    refused = [
        # the review's request: a rebound name with the listener's port, and an Origin
        ({"Host": f"rebind.attacker.example:{port}",
          "Origin": f"http://rebind.attacker.example:{port}"}, 400),
        ({"Host": f"rebind.attacker.example:{port}"}, 400),  # same-origin GET: no Origin
        ({"Host": "rebind.attacker.example"}, 400),
        ({"Host": f"localhost.:{port}"}, 400),
        ({"Host": f"127.0.0.1.nip.io:{port}"}, 400),
        ({"Host": f"localhost.attacker.example:{port}"}, 400),
        ({"Host": "2130706433"}, 400),  # 127.0.0.1 as one number: a name to a resolver
        ({"Host": f"[::1:{port}"}, 400),
        ({"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"}, 403),
        ({"Host": f"127.0.0.1:{port}", "Origin": "null"}, 403),
        ({"Host": f"127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}, 403),
        ({"Host": f"127.0.0.1:{port}", "Sec-Fetch-Site": "cross-site"}, 403),
        ({"Host": f"localhost:{port}", "Sec-Fetch-Site": "same-site"}, 403),
    ]
    # a repeated Sec-Fetch-Site is judged by every occurrence
    st, _, body = raw(port, path, [("Host", f"127.0.0.1:{port}"), *auth.items(),
                                   ("Sec-Fetch-Site", "none"), ("Sec-Fetch-Site", "cross-site")])
    assert st == 403 and b"access_token" not in body, (st, shown(body))
    for headers, want in refused:
        st, body = ask(**headers)
        doc = json.loads(body)
        assert (st, sorted(doc)) == (want, ["error", "error_description"]), \
            (headers, st, shown(body))
        assert doc["error"] == ("invalid_request" if want == 400 else "forbidden")
    assert b"access_token" not in body
    # a request without any Host (HTTP/1.1 and 1.0), as bytes
    for version in (b"1.1", b"1.0"):
        head = b"GET " + path.encode() + b" HTTP/" + version + b"\r\n" + \
            b"".join(k.encode() + b": " + v.encode() + b"\r\n" for k, v in auth.items()) + \
            b"Connection: close\r\n\r\n"
        st, body = raw_bytes(port, head)
        assert st == 400 and b"Host header" in body, (version, st, shown(body))
    # none of them reached the cache: no fetch, no entry
    assert fake.stats()["requests"] == 0
    assert all(e.get("resource") != WEB_RESOURCE for e in d.get("/v1/status").json())

    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", "127.0.0.1",
                 "169.254.169.254", "169.254.169.254:80", f"[::1]:{port}",
                 f"[::ffff:127.0.0.1]:{port}"):
        st, body = ask(Host=host, **{"Sec-Fetch-Site": "none"} if host == "127.0.0.1" else {})
        assert st == 200, (host, st, shown(body))
        remember_token(json.loads(body)["access_token"])
    assert fake.stats()["requests"] == 1


@pytest.mark.parametrize("listener", ["imds", "appservice"])
def test_forwarding_proxy_fields_are_refused(fake, compat, listener):
    """IMDS refuses requests that went through a proxy: X-Forwarded-For, and the other
    fields a proxy adds (Forwarded, Via, X-Real-IP), whatever their case."""
    d = compat()
    port = d.imds_port if listener == "imds" else d.app_port
    path = (TOKEN + Q if listener == "imds"
            else "/msi/token?api-version=2019-08-01&resource=api%3A%2F%2Ftest-app")
    auth = MD if listener == "imds" else {"X-IDENTITY-HEADER": d.secret}
    for name, value in (("X-Forwarded-For", "10.0.0.1"), ("Forwarded", "for=10.0.0.1"),
                        ("forwarded", "for=10.0.0.1;proto=http"), ("Via", "1.1 squid"),
                        ("VIA", "1.0 proxy"), ("X-Real-IP", "10.0.0.1"),
                        ("x-real-ip", "10.0.0.1")):
        st, _, body = raw(port, path, dict(auth, **{name: value}))
        canonical = {"x-forwarded-for": "X-Forwarded-For", "forwarded": "Forwarded",
                     "via": "Via", "x-real-ip": "X-Real-IP"}[name.lower()]
        assert (st, body) == (400, json.dumps({
            "error": "invalid_request",
            "error_description": f"{canonical} header is not allowed"},
            separators=(",", ":")).encode()), (name, st, shown(body))
    assert fake.stats()["requests"] == 0
    st, _, body = raw(port, path, auth)
    assert st == 200, shown(body)
    remember_token(json.loads(body)["access_token"])


def test_validity_and_allow_list(fake, compat):
    fake.configure(lifetime=200)  # under min_validity: never handed out
    d = compat(dynamic="no")
    st, h, body = raw(d.imds_port, TOKEN + Q, MD)
    assert st == 400 and b"invalid_resource" in body  # not an audience, not allowed
    # a uid-restricted audience stays on the socket
    st, _, body = raw(d.imds_port, TOKEN + "?api-version=2018-02-01&resource=api://locked", MD)
    assert st == 403
    st, h, body = raw(d.imds_port, TOKEN + "?api-version=2018-02-01&resource=api://test-app",
                      MD)
    assert st == 503 and b"access_token" not in body
    assert h["retry-after"] == "1"


def test_wait_timeout_is_503_not_504(fake, compat):
    fake.configure(delay=3)
    d = compat(wait_timeout=1)
    t0 = time.monotonic()
    st, h, body = raw(d.imds_port, TOKEN + Q, MD)
    assert st == 503 and h["retry-after"] == "1" and b"access_token" not in body
    assert time.monotonic() - t0 < 2.5
    # the fetch went on: the token arrives for the next caller, still one upstream request
    wait_for(lambda: raw(d.imds_port, TOKEN + Q, MD)[0] == 200, timeout=10, what="the token")
    assert fake.stats()["requests"] == 1


def test_secret_file_generated_private_and_refused_when_readable(fake, start_daemon, tmp_path):
    text, _, _ = compat_config(fake, tmp_path)
    d = start_daemon(text)
    f = tmp_path / "identity-header"
    mode = stat.S_IMODE(f.stat().st_mode)
    assert mode == 0o640
    secret = f.read_text().strip()
    assert len(secret) == 64 and int(secret, 16) >= 0
    d.stop()
    os.chmod(f, 0o644)
    with pytest.raises(AssertionError, match="secret file"):
        Daemon(tmp_path, text)


def test_compat_example_config_is_valid():
    p = subprocess.run([str(BEARERD), "-n", "-c", str(ROOT / "config" / "examples" /
                                                      "compat.conf")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_non_loopback_listener_needs_allow(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text('[identity "vm"]\nsource = azure-imds\n[compat]\n'
                    "imds_listen = 0.0.0.0:50342\n")
    p = subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True, text=True)
    assert p.returncode == 1 and "not a loopback address" in p.stderr
    conf.write_text(conf.read_text() + "allow_non_loopback = yes\n")
    p = subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


# -- issue 15: App Service 2017-09-01, Cloud Shell, self-loops, IMDS's other paths -------------

from urllib.parse import quote  # noqa: E402

Q17 = "/msi/token?api-version=2017-09-01&resource=" + quote(RESOURCE, safe="")


def error_of(body):
    doc = json.loads(body)
    assert sorted(doc) == ["error", "error_description"], shown(body)
    return doc


def test_appservice_2017_secret_header_and_clientid(fake, compat):
    """MSI_ENDPOINT + MSI_SECRET clients (Go's adal, msrestazure, the Azure CLI): GET with
    api-version=2017-09-01, the secret in a field called "secret" in any case, a
    user-assigned identity as clientid.  expires_on is epoch seconds here too."""
    d = compat()
    p = d.app_port
    for name in ("secret", "Secret", "SECRET"):
        st, _, body = raw(p, Q17, {name: d.secret})
        assert st == 200, shown(body)
        doc = json.loads(body)
        remember_token(doc["access_token"])
        assert doc["resource"] == RESOURCE and doc["token_type"] == "Bearer"
        assert doc["expires_on"].isdigit() and int(doc["expires_on"]) > time.time() + 3000
    # msrestazure appends "/?resource=" to MSI_ENDPOINT, which may end in "/" already
    for path in ("/msi/token/", "/MSI/token//"):
        st, _, body = raw(p, path + Q17[len("/msi/token"):], {"secret": d.secret})
        assert st == 200, (path, shown(body))
        remember_token(json.loads(body)["access_token"])
    # clientid picks the user-assigned identity; the answer names it client_id
    st, _, body = raw(p, Q17 + "&clientid=" + UA_CLIENT_ID, {"secret": d.secret})
    assert st == 200, shown(body)
    doc = json.loads(body)
    remember_token(doc["access_token"])
    assert doc["client_id"] == UA_CLIENT_ID and "clientid" not in doc
    assert fake.stats()["last_query"]["client_id"] == UA_CLIENT_ID
    for sel in ("clientid=nope", "principal_id=nope", "mi_res_id=nope"):
        st, _, body = raw(p, Q17 + "&" + sel, {"secret": d.secret})
        assert (st, error_of(body)["error_description"]) == (400, "Identity not found"), sel
    st, _, body = raw(p, Q17 + "&clientid=" + UA_CLIENT_ID + "&mi_res_id=x",
                      {"secret": d.secret})
    assert st == 400
    assert fake.stats()["requests"] == 2  # one per identity, whatever the spelling


def test_appservice_wrong_secret_is_401_and_fetches_nothing(fake, compat):
    d = compat()
    p = d.app_port
    s = d.secret
    other = s[:-1] + ("1" if s[-1] != "1" else "2")
    for headers in ({}, {"secret": ""}, {"secret": s[:-1]}, {"secret": s + "0"},
                    {"secret": other}, {"X-IDENTITY-HEADER": s}):
        st, _, body = raw(p, Q17, headers)
        assert st == 401 and error_of(body)["error"] == "unauthorized", (headers, shown(body))
        assert b"access_token" not in body
    # the 2019 protocol takes X-IDENTITY-HEADER only; another api-version is a 400 only
    # for a caller that knows the secret
    q19 = Q17.replace("2017-09-01", "2019-08-01")
    assert raw(p, q19, {"secret": s})[0] == 401
    assert raw(p, Q17.replace("2017-09-01", "2018-02-01"), {"Secret": other})[0] == 401
    st, _, body = raw(p, Q17.replace("2017-09-01", "2018-02-01"), {"Secret": s})
    assert st == 400 and b"2017-09-01" in body
    assert fake.stats()["requests"] == 0
    st, _, body = raw(p, Q17, {"secret": s})
    assert st == 200, shown(body)
    remember_token(json.loads(body)["access_token"])


def post(port, path, body, headers=None, chunked=False):
    """A POST as bytes: Content-Length, or chunked in two chunks; (status, headers, body)."""
    fields = {"Host": f"127.0.0.1:{port}", "Metadata": "true",
              "Content-Type": "application/x-www-form-urlencoded"}
    fields.update(headers or {})
    head = f"POST {path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    if chunked:
        half = len(body) // 2
        data = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:])
                        if c) + b"0\r\n\r\n"
        head += "Transfer-Encoding: chunked\r\n"
    else:
        data = body
        head += f"Content-Length: {len(body)}\r\n"
    head += "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sk:
        sk.sendall(head.encode() + data)
        out = b""
        while True:
            chunk = sk.recv(65536)
            if not chunk:
                break
            out += chunk
    top, _, rest = out.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    hdrs = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), hdrs, rest


FORM = b"resource=" + quote(RESOURCE, safe="").encode()


def test_cloud_shell_form(fake, compat):
    """MSI_ENDPOINT alone (Go's adal, msrestazure, the Azure CLI): POST with Metadata: true and
    resource=... in a form body, chunked (Go) or with a Content-Length (Python), on Cloud
    Shell's /oauth2/token or the IMDS path; the answer is IMDS's."""
    d = compat()
    p = d.imds_port
    toks = set()
    for path in ("/oauth2/token", "/oauth2/token/", TOKEN, TOKEN + "/"):
        for chunked in (False, True):
            st, h, body = post(p, path, FORM, chunked=chunked)
            assert st == 200, (path, chunked, shown(body))
            doc = json.loads(body)
            toks.add(remember_token(doc["access_token"]))
            assert doc["resource"] == RESOURCE
            for k in ("expires_in", "expires_on", "not_before"):
                assert doc[k].isdigit(), k
    assert len(toks) == 1 and fake.stats()["requests"] == 1
    # a charset parameter, selectors in the body, and form decoding ('+' is a space)
    st, _, body = post(p, "/oauth2/token", FORM + b"&client_id=" + UA_CLIENT_ID.encode(),
                       {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    assert st == 200 and json.loads(body)["client_id"] == UA_CLIENT_ID, shown(body)
    remember_token(json.loads(body)["access_token"])
    assert fake.stats()["last_query"]["client_id"] == UA_CLIENT_ID
    for form, resource in ((b"resource=api%3A%2F%2Fa%2Bb", "api://a+b"),
                           (b"resource=api%3A%2F%2Fa+b", "api://a b")):
        st, _, body = post(p, "/oauth2/token", form)
        assert st == 200 and json.loads(body)["resource"] == resource, shown(body)
        remember_token(json.loads(body)["access_token"])
        assert fake.stats()["last_query"]["resource"] == resource
    st, _, body = post(p, "/oauth2/token", b"resource=x&object_id=nope")
    assert (st, error_of(body)["error_description"]) == (400, "Identity not found")


def test_cloud_shell_refusals(fake, compat):
    """Each a clear JSON error, nothing fetched, and the daemon goes on serving."""
    d = compat()
    p = d.imds_port
    missing = "Required metadata header not specified"
    cases = [
        ({"Metadata": None}, FORM, 400, missing),
        ({"Metadata": "True"}, FORM, 400, missing),
        ({"Content-Type": None}, FORM, 400, "Content-Type"),
        ({"Content-Type": "text/plain"}, FORM, 400, "Content-Type"),
        ({"Content-Type": "application/json"}, b'{"resource":"x"}', 400, "Content-Type"),
        ({"Content-Type": "application/x-www-form-urlencodedx"}, FORM, 400, "Content-Type"),
        ({}, FORM + b"&resource=x", 400, "Duplicate"),
        ({}, b"", 400, "Required audience parameter not specified"),
        ({}, b"client_id=x", 400, "Required audience parameter not specified"),
        ({}, b"resource=%zz", 400, "malformed"),
        ({"X-Forwarded-For": "10.0.0.1"}, FORM, 400, "X-Forwarded-For"),
        ({"Via": "1.1 proxy"}, FORM, 400, "Via"),
        ({"Host": "rebind.example"}, FORM, 400, "Host"),
        ({"Origin": "http://127.0.0.1"}, FORM, 403, "web pages"),
        ({"Sec-Fetch-Site": "cross-site"}, FORM, 403, "web pages"),
    ]
    for headers, body, want, text in cases:
        for chunked in (False, True):
            st, _, out = post(p, "/oauth2/token", body, headers, chunked=chunked)
            assert st == want and text in error_of(out)["error_description"], \
                (headers, body, chunked, st, shown(out))
    # parameters go in the body
    st, _, out = post(p, "/oauth2/token?resource=x", FORM)
    assert st == 400 and "body" in error_of(out)["error_description"]
    # too large: 413 before the handler, Content-Length or chunked
    big = FORM + b"&x=" + b"a" * 20000
    for chunked in (False, True):
        st, _, out = post(p, "/oauth2/token", big, chunked=chunked)
        assert st == 413 and "too large" in error_of(out)["error_description"], (chunked, st)
    # wrong method: 405 with Allow
    for method, path, allow in (("GET", "/oauth2/token", "POST"), ("PUT", "/oauth2/token", "POST"),
                                ("DELETE", TOKEN, "GET, POST")):
        st, h, out = raw(p, path, MD, method=method)
        assert (st, h["allow"], error_of(out)["error"]) == (405, allow, "method_not_allowed")
    # Cloud Shell's form on the App Service listener: no secret there, so a pointer instead
    st, h, out = post(d.app_port, "/msi/token", FORM)
    assert (st, h["allow"]) == (405, "GET") and "IMDS listener" in error_of(out)[
        "error_description"]
    assert fake.stats()["requests"] == 0
    st, _, out = post(p, "/oauth2/token", FORM)
    assert st == 200, shown(out)
    remember_token(json.loads(out)["access_token"])


def test_self_loop_is_refused_at_start(tmp_path):
    """An identity whose endpoint is a compat listener would ask bearerd itself."""
    imds, app = free_port(), free_port()

    def check(identity, listen, ok):
        conf = tmp_path / "c.conf"
        secret = f"appservice_secret_file = {tmp_path}/s\n" if "appservice" in listen else ""
        conf.write_text(f"[identity \"vm\"]\n{identity}\n[compat]\n{listen}\n{secret}")
        p = subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True,
                           text=True)
        if ok:
            assert p.returncode == 0, (identity, listen, p.stderr)
        else:
            assert p.returncode == 1 and "bearerd would ask itself" in p.stderr, \
                (identity, listen, p.stderr)
        return p.stderr

    imds_id = "source = azure-imds\nendpoint = http://{}/metadata/identity/oauth2/token"
    err = check(imds_id.format(f"127.0.0.1:{imds}"), f"imds_listen = 127.0.0.1:{imds}", False)
    assert f"c.conf:5: imds_listen: 127.0.0.1:{imds} is where identity 'vm' (line 1)" in err
    check(imds_id.format(f"localhost:{imds}"), f"imds_listen = 127.0.0.1:{imds}", False)
    check(imds_id.format(f"[::1]:{imds}"), f"imds_listen = [::1]:{imds}", False)
    check(imds_id.format(f"127.0.0.1:{imds}"),
          f"imds_listen = 0.0.0.0:{imds}\nallow_non_loopback = yes", False)
    # the pod's transparent IMDS beside an azure-imds identity with the default endpoint
    check("source = azure-imds", "imds_listen = 169.254.169.254:80\nallow_non_loopback = yes",
          False)
    check("source = azure-appservice\nendpoint = http://127.0.0.1:%d/msi/token\n"
          "identity_header_file = /nonexistent" % app,
          f"appservice_listen = 127.0.0.1:{app}", False)
    # not a loop: another port, another address, a name bearerd cannot know
    check(imds_id.format(f"127.0.0.1:{imds}"), f"imds_listen = 127.0.0.1:{app}", True)
    check(imds_id.format(f"127.0.0.2:{imds}"), f"imds_listen = 127.0.0.1:{imds}", True)
    check("source = azure-imds", "imds_listen = 127.0.0.1:50342", True)


RELAY_PY = ROOT / "tests" / "container" / "relay.py"


def test_self_loop_is_detected_at_the_first_request(fake, start_daemon, tmp_path):
    """A redirect that does not exempt bearerd (here a TCP relay standing for it) sends
    bearerd's own IMDS request back to its listener: refused at once (508, logged), so the
    caller gets a 503 that says why, long before wait_timeout, and nothing hangs."""
    imds, relay_port = free_port(), free_port()
    ready = tmp_path / "relay.ready"
    relay = subprocess.Popen([sys.executable, str(RELAY_PY), "127.0.0.1", str(relay_port),
                              "127.0.0.1", str(imds), "--ready-file", str(ready)])
    try:
        wait_for(lambda: ready.exists(), what="the relay")
        d = start_daemon(f"""[bearerd]
socket = @SOCKET@
log_level = debug
wait_timeout = 10
[identity "vm"]
source = azure-imds
endpoint = http://127.0.0.1:{relay_port}/metadata/identity/oauth2/token
dynamic_resources = yes
[compat]
identity = vm
imds_listen = 127.0.0.1:{imds}
dynamic_resources = yes
""")
        t0 = time.monotonic()
        st, h, body = raw(imds, TOKEN + Q, MD)
        elapsed = time.monotonic() - t0
        assert st == 503 and h["retry-after"] == "1", shown(body)
        assert "came back to bearerd" in error_of(body)["error_description"]
        assert elapsed < 5, elapsed  # wait_timeout is 10 s: not a wait for itself
        log = d.logs()
        assert "bearerd asked itself for a token" in log and "status=508" in log
        assert fake.stats()["requests"] == 0
    finally:
        relay.terminate()
        relay.wait(10)


OTHER_PATHS = ["/metadata/instance", "/metadata/instance/compute?api-version=2021-02-01",
               "/metadata/attested/document?api-version=2020-09-01",
               "/metadata/scheduledevents?api-version=2020-07-01",
               "/metadata/versions", "/metadata/loadbalancer?api-version=2020-10-01",
               "/Metadata/instance/network"]


def test_other_imds_paths_are_403_without_imds_relay(fake, compat):
    """In a pod (or with imds_relay = no) IMDS's other paths get a documented 403: not 404,
    which Azure.Core retries for about 25 s; not 400, which .NET reads as IMDSv2."""
    d = compat()
    for path in OTHER_PATHS + ["/metadata/identity/getplatformmetadata?cred-api-version=2.0"]:
        for headers in (MD, {}):
            st, _, body = raw(d.imds_port, path, headers)
            assert (st, error_of(body)["error"]) == (403, "forbidden"), (path, headers, body)
    assert fake.stats()["other"] == []


def test_imds_relay_passes_other_paths_to_the_real_imds(fake, compat):
    """imds_relay = yes (a VM, where bearerd holds 169.254.169.254:80 behind a redirect):
    IMDS's other paths reach the IMDS of [compat] identity untouched, after the same guards
    as a token request; never an identity path, and never getplatformmetadata."""
    d = compat(compat_extra="imds_relay = yes")
    p = d.imds_port
    st, h, body = raw(p, "/metadata/instance?api-version=2021-02-01", MD)
    assert st == 200 and json.loads(body)["compute"]["name"] == "fake-vm", body
    assert h["content-type"].startswith("application/json")
    st, h, body = raw(p, "/metadata/instance/compute/name?api-version=2021-02-01&format=text",
                      MD)
    assert (st, body, h["content-type"]) == (200, b"fake-vm", "text/plain; charset=utf-8")
    for path in ("/metadata/versions", "/metadata/attested/document?api-version=2020-09-01",
                 "/metadata/scheduledevents?api-version=2020-07-01"):
        assert raw(p, path, MD)[0] == 200, path
    ack = b'{"StartRequests":[{"EventId":"f020ba2e-3bc0-4c40-a10b-86575a9eabd5"}]}'
    c = http.client.HTTPConnection("127.0.0.1", p, timeout=10)
    c.request("POST", "/metadata/scheduledevents?api-version=2020-07-01", body=ack,
              headers={"Metadata": "true", "Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    c.close()
    other = fake.stats()["other"]
    assert [(o["method"], o["path"]) for o in other] == [
        ("GET", "/metadata/instance"), ("GET", "/metadata/instance/compute/name"),
        ("GET", "/metadata/versions"), ("GET", "/metadata/attested/document"),
        ("GET", "/metadata/scheduledevents"), ("POST", "/metadata/scheduledevents")]
    assert other[1]["query"] == "api-version=2021-02-01&format=text"
    assert (other[-1]["body"], other[-1]["content_type"]) == (ack.decode(), "application/json")
    assert all(o["metadata"] == "true" and o["loop"] for o in other)
    # refused here, relayed nowhere
    xff, host, origin = ({"X-Forwarded-For": "1.2.3.4"}, {"Host": "imds.example"},
                         {"Origin": "http://x"})
    refused = [({}, "/metadata/instance", 400), (dict(MD, **xff), "/metadata/instance", 400),
               (dict(MD, **host), "/metadata/instance", 400),
               (dict(MD, **origin), "/metadata/instance", 403),
               (MD, "/metadata/instance/../identity/oauth2/token", 400),
               (MD, "/metadata/instance/%2e%2e/identity", 400),
               (MD, "/metadata/instance?a=1&a=2", 400),
               (MD, "/metadata/identity/getplatformmetadata", 403),
               (MD, "/metadata/identity/info?api-version=2018-02-01", 404)]
    for headers, path, want in refused:
        st, _, body = raw(p, path, headers)
        assert st == want, (headers, path, st, body)
    st, h, _ = raw(p, "/metadata/instance", MD, method="POST")
    assert (st, h["allow"]) == (405, "GET")
    assert len(fake.stats()["other"]) == len(other)
    # the real IMDS does not answer: 502, and the token path is not affected
    fake.stop()
    st, _, body = raw(p, "/metadata/instance?api-version=2021-02-01", MD)
    assert st == 502 and error_of(body)["error"] == "bad_gateway", body
    assert raw(p, TOKEN + Q, MD)[0] == 503


def test_imds_relay_needs_an_imds_identity(tmp_path):
    conf = tmp_path / "c.conf"
    for body, msg in (
            ('[identity "d"]\nsource = dev\n[compat]\nimds_listen = 127.0.0.1:0\n'
             "imds_relay = yes\n", "not an azure-imds identity"),
            ('[identity "vm"]\nsource = azure-imds\n[compat]\n'
             "appservice_listen = 127.0.0.1:0\nimds_relay = yes\n"
             f"appservice_secret_file = {tmp_path}/s\n", "without imds_listen")):
        conf.write_text(body)
        p = subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True,
                           text=True)
        assert p.returncode == 1 and msg in p.stderr, p.stderr
