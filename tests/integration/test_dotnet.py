""".NET clients against bearerd: the motivating app (tests/clients/dotnet/ArticleApp)
unmodified, the same app without its identity code (NoIdentityApp) behind a base-URL
route, and every managed-identity route of Azure.Identity and MSAL.NET (MiClient).

The .NET projects are built by scripts/check outside the network namespace
(restore needs the registry); these tests only run the built assemblies.  Without
`dotnet` on PATH the .NET tests are skipped (and counted so); the wire replays at
the top need no .NET and always run.

Upstream: tests/fakes/fake_imds.py with --jwt-key, so the tokens are RS256 JWTs
that tests/fakes/protected_api.py verifies against the key's JWKS (issuer, audience
api://apim-demo, Sample.Read for GET, Sample.Write for POST, Sample.Delete for
DELETE; the fake grants the first two), and every upstream fetch is counted at the
fake.  MiClient never prints a token, only its SHA-256 prefix and claims.
"""

import hashlib
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import BEARERD, FAKE_IMDS, ROOT, FakeIMDS, remember_token, wait_for

DOTNET_DIR = ROOT / "tests" / "clients" / "dotnet"
PROTECTED_API = ROOT / "tests" / "fakes" / "protected_api.py"
LINKLOCAL = DOTNET_DIR / "linklocal.py"
ISSUER = "fake-imds"
AUDIENCE = "api://apim-demo"
PLUS = "api://bearerd+plus"
UA_CLIENT = "11111111-2222-3333-4444-555555555555"
UA_OBJECT = "66666666-7777-8888-9999-000000000000"
UA_RES = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg/providers/"
          "Microsoft.ManagedIdentity/userAssignedIdentities/bearerd-ua")
FN = "/api/CallProtectedApiFunction"

needs_dotnet = pytest.mark.skipif(shutil.which("dotnet") is None,
                                  reason="dotnet is not on PATH: the .NET suite is skipped")


def dll(project):
    return DOTNET_DIR / project / "bin" / "Release" / "net10.0" / f"{project}.dll"


@pytest.fixture(scope="session")
def built():
    missing = [p for p in ("ArticleApp", "NoIdentityApp", "MiClient") if not dll(p).exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not built: scripts/check builds them, or "
                    "dotnet build -c Release tests/clients/dotnet/BearerdDotnet.slnx")


# -- fixtures: a JWT-issuing fake IMDS, the protected API, bearerd ---------------------------

@pytest.fixture(scope="session")
def jwt_keys(tmp_path_factory):
    """An RSA key for the fake's tokens and its JWKS for the protected API."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    d = tmp_path_factory.mktemp("jwt")
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "key.pem").write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key()))
    jwk.update(kid="fake-imds-key", alg="RS256", use="sig")
    (d / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    return d / "key.pem", d / "jwks.json"


class JwtFake(FakeIMDS):
    """tests/fakes/fake_imds.py issuing RS256 JWTs (FakeIMDS's control API and stats)."""

    def __init__(self, tmp, key):
        port_file = tmp / "jwtfake.port"
        self.log = open(tmp / "jwtfake.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE_IMDS), "--port", "0", "--port-file", str(port_file),
             "--jwt-key", str(key), "--jwt-issuer", ISSUER],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(),
                 what="fake IMDS to listen")
        self.port = int(port_file.read_text().strip())
        self.base = f"http://127.0.0.1:{self.port}"
        self.endpoint = self.base + "/metadata/identity/oauth2/token"


@pytest.fixture
def jfake(tmp_path, start_daemon, jwt_keys):
    """Set up after start_daemon: torn down, its tokens remembered, before the log scan."""
    f = JwtFake(tmp_path, jwt_keys[0])
    yield f
    for tok in f.stats()["issued"]:
        remember_token(tok)
    f.stop()


@pytest.fixture
def api(tmp_path, jwt_keys):
    port_file = tmp_path / "api.port"
    log = open(tmp_path / "api.log", "w")
    p = subprocess.Popen([sys.executable, str(PROTECTED_API), "--port", "0", "--port-file",
                          str(port_file), "--jwks-file", str(jwt_keys[1]), "--issuer", ISSUER,
                          "--audience", AUDIENCE], stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: port_file.exists(), what="the protected API")
    yield f"http://127.0.0.1:{int(port_file.read_text())}"
    p.terminate()
    p.wait(10)
    log.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOCKED = """
[audience "locked"]
identity = vm
resource = api://locked
allow_uids = 0
"""


def bearerd_config(tmp, fake, route_upstream=None, locked=False, **g):
    """vm answers SDK requests; uac, uao, uar are user-assigned (client, object, resource id).
    locked adds the uid-restricted audience 'locked' and turns compat's dynamic resources
    off: bearerd -n refuses them beside it (issue 11, finding 2)."""
    imds, app, route = free_port(), free_port(), free_port()
    glob = {"log_level": "debug", "min_validity": 300}
    glob.update(g)
    ids = ""
    for name, sel in (("vm", None), ("uac", ("client_id", UA_CLIENT)),
                      ("uao", ("object_id", UA_OBJECT)), ("uar", ("msi_res_id", UA_RES))):
        ids += f'\n[identity "{name}"]\nsource = azure-imds\nendpoint = {fake.endpoint}\n'
        ids += "dynamic_resources = yes\ndynamic_allow_uids = 0\n"
        ids += f"{sel[0]} = {sel[1]}\n" if sel else ""
    text = "[bearerd]\nsocket = @SOCKET@\n" + "".join(f"{k} = {v}\n" for k, v in glob.items())
    text += ids + f"""
[audience "apim"]
identity = vm
resource = {AUDIENCE}

[audience "plus"]
identity = vm
resource = {PLUS}
{LOCKED if locked else ""}
[compat]
identity = vm
imds_listen = 127.0.0.1:{imds}
appservice_listen = 127.0.0.1:{app}
appservice_secret_file = {tmp}/identity-header
dynamic_resources = {"no" if locked else "yes"}
"""
    if route_upstream is not None:
        text += f"""
[route "apim"]
audience = apim
upstream = {route_upstream}
listen = 127.0.0.1:{route}
"""
    return text, imds, app, route


@pytest.fixture
def bearerd(start_daemon, jfake, tmp_path):
    def start(route_upstream=None, **g):
        text, imds, app, route = bearerd_config(tmp_path, jfake, route_upstream, **g)
        d = start_daemon(text)
        d.imds_port, d.app_port, d.route_port = imds, app, route
        d.secret = (tmp_path / "identity-header").read_text().strip()
        return d
    return start


def compat_requests(d, listener):
    return d.logs().count(f'msg="compat request" listener={listener} ')


def no_jwt_in_log(d):
    """MiClient's tokens are never known to the test: no JWT at all may be in the log."""
    assert "eyJ" not in d.logs(), "something that looks like a JWT is in bearerd's log"


# -- running .NET ------------------------------------------------------------------------

def dotnet_env(tmp, d=None, via=None, **extra):
    """A clean environment: the .NET opt-outs and only the variables that pick the route."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp),
           "DOTNET_CLI_TELEMETRY_OPTOUT": "1", "DOTNET_NOLOGO": "1",
           "DOTNET_SKIP_FIRST_TIME_EXPERIENCE": "1", "NO_PROXY": "*"}
    if via == "appservice":
        env["IDENTITY_ENDPOINT"] = f"http://127.0.0.1:{d.app_port}/msi/token"
        env["IDENTITY_HEADER"] = d.secret
    elif via == "imds":
        env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = f"http://127.0.0.1:{d.imds_port}"
    env.update(extra)
    return env


class Run:
    def __init__(self, p):
        self.rc = p.returncode
        self.stderr = p.stderr
        self.events = [json.loads(line) for line in p.stdout.splitlines()
                       if line.startswith("{")]
        self.tokens = [e for e in self.events if e["event"] == "token"]
        self.errors = [e for e in self.events if e["event"] == "error"]
        self.http = [e for e in self.events if e["event"] == "http"]

    def __repr__(self):
        return f"rc={self.rc} events={self.events} stderr={self.stderr[-2000:]}"

    def attempts(self, path):
        return [e for e in self.http if e["path"] == path]


def mi(env, *args, timeout=180):
    p = subprocess.run(["dotnet", str(dll("MiClient")), *args], env=env, capture_output=True,
                       text=True, timeout=timeout)
    return Run(p)


class App:
    """An ASP.NET Core app on 127.0.0.1 (a port of its choosing, read from its log)."""

    def __init__(self, project, env, tmp, name):
        self.log_path = tmp / f"{name}.log"
        self.proc = subprocess.Popen(["dotnet", str(dll(project)), "--urls",
                                      "http://127.0.0.1:0"], env=env, cwd=str(tmp),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url, lines = None, []
        for line in self.proc.stdout:
            lines.append(line)
            if "Now listening on: " in line:
                self.url = line.split("Now listening on: ")[1].strip()
                break
        if self.url is None:
            self.proc.wait(30)
            raise AssertionError(f"{project} did not start:\n{''.join(lines)}")
        self._log = open(self.log_path, "w")
        self._log.writelines(lines)
        self._drain = threading.Thread(target=self._copy, daemon=True)
        self._drain.start()

    def _copy(self):
        for line in self.proc.stdout:
            self._log.write(line)

    def call(self, method):
        req = urllib.request.Request(self.url + FN, method=method)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, {"raw": body.decode(errors="replace")}

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self._drain.join(10)
        self._log.close()
        return self.log_path.read_text()


def app_env(tmp, d, via, gateway, resource=AUDIENCE, **extra):
    env = dotnet_env(tmp, d, via, ApiManagement__GatewayUrl=gateway,
                     Logging__LogLevel__Default="Warning",
                     **{"Logging__LogLevel__Microsoft.Hosting.Lifetime": "Information"},
                     **extra)
    if resource is not None:
        env["ApiManagement__OAuthTargetResource"] = resource
    return env


def raw(port, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# -- the wire as MSAL.NET and Azure.Identity write it, replayed (no .NET needed) ------------

def test_plus_in_an_unencoded_query_value_is_a_plus(bearerd, jfake):
    """MSAL.NET sends resource=api://bearerd+plus as is; the '+' is not a space."""
    d = bearerd()
    st, body = raw(d.app_port, f"/msi/token?api-version=2019-08-01&resource={PLUS}",
                   {"X-IDENTITY-HEADER": d.secret})
    assert st == 200, body
    doc = json.loads(body)
    remember_token(doc["access_token"])
    assert doc["resource"] == PLUS
    assert jfake.stats()["by_resource"] == {PLUS: 1}
    # the same entry as the configured audience "plus" on the socket
    assert d.get("/v1/token/plus").json()["access_token"] == doc["access_token"]
    # an encoded plus and an encoded space keep their meaning
    st, body = raw(d.imds_port, "/metadata/identity/oauth2/token?api-version=2018-02-01"
                   "&resource=api%3A%2F%2Fbearerd%2Bplus", {"Metadata": "true"})
    assert st == 200 and json.loads(body)["access_token"] == doc["access_token"]
    st, body = raw(d.imds_port, "/metadata/identity/oauth2/token?api-version=2018-02-01"
                   "&resource=api://a%20b", {"Metadata": "true"})
    assert st == 200 and json.loads(body)["resource"] == "api://a b"
    remember_token(json.loads(body)["access_token"])


def test_the_dac_probe_selector_msi_res_id_with_hyphens(bearerd, jfake):
    """The DefaultAzureCredential probe names a resource id msi-res-id: without Metadata it
    gets IMDS's 400 like any probe, and with Metadata it selects that identity, never the
    default one."""
    d = bearerd()
    q = f"/metadata/identity/oauth2/token?api-version=2018-02-01&resource={AUDIENCE}"
    st, body = raw(d.imds_port, q + f"&msi-res-id={UA_RES}")
    assert (st, json.loads(body)) == (400, {"error": "invalid_request", "error_description":
                                            "Required metadata header not specified"})
    st, body = raw(d.imds_port, q + f"&msi-res-id={UA_RES}", {"Metadata": "true"})
    assert st == 200, body
    remember_token(json.loads(body)["access_token"])
    assert jfake.stats()["last_query"].get("msi_res_id") == UA_RES
    st, body = raw(d.imds_port, q + "&msi-res-id=/subscriptions/x/nope", {"Metadata": "true"})
    assert (st, json.loads(body)["error_description"]) == (400, "Identity not found")
    st, body = raw(d.imds_port, q + f"&msi-res-id={UA_RES}&msi_res_id={UA_RES}",
                   {"Metadata": "true"})
    assert st == 400
    assert jfake.stats()["requests"] == 1


def test_pop_discovery_paths_are_neither_400_nor_404(bearerd):
    """getplatformmetadata: a 400 means "IMDSv2 is here"; a 404 is retried.  Same for
    /metadata/instance/compute.  Both get 403, with or without Metadata."""
    d = bearerd()
    for path in ("/metadata/identity/getplatformmetadata?cred-api-version=2.0",
                 "/METADATA/identity/getplatformmetadata/", "/metadata/instance",
                 "/metadata/instance/compute?api-version=2021-02-01",
                 "//metadata/instance/network/interface"):
        for hdr in ({}, {"Metadata": "true"}):
            st, body = raw(d.imds_port, path, hdr)
            assert st == 403 and json.loads(body)["error"] == "forbidden", (path, hdr)
    for path in ("/metadata/identity/issuecredential", "/metadata/instances",
                 "/metadata/identity/getplatformmetadatax", "/metadata"):
        assert raw(d.imds_port, path, {"Metadata": "true"})[0] == 404, path


def test_expires_on_comes_last_in_the_answer(bearerd):
    """expires_in and expires_on set the same field in MSAL.NET and the last one wins:
    bearerd writes the absolute expires_on last."""
    d = bearerd()
    st, body = raw(d.app_port, f"/msi/token?api-version=2019-08-01&resource={AUDIENCE}",
                   {"X-IDENTITY-HEADER": d.secret})
    assert st == 200
    remember_token(json.loads(body)["access_token"])
    assert body.index(b'"expires_in"') < body.index(b'"expires_on"')


# -- item 1: the article's app, unmodified --------------------------------------------------

@needs_dotnet
@pytest.mark.parametrize("via", ["appservice", "imds"])
def test_article_app_get_post_delete_one_upstream_fetch(built, bearerd, jfake, api, tmp_path,
                                                        via):
    """M=3 processes of the app, N=3 calls of each method per process: GET and POST 200,
    DELETE 401, one token (one iat) for all, one upstream fetch.  Via App Service (as on
    Azure Functions) or via the IMDS redirect with AZURE_TOKEN_CREDENTIALS."""
    d = bearerd()
    extra = {"AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential"} if via == "imds" else {}
    apps = [App("ArticleApp", app_env(tmp_path, d, via, api, **extra), tmp_path, f"app{i}")
            for i in range(3)]
    seen = {"GET": set(), "POST": set(), "DELETE": set()}
    try:
        for _ in range(3):
            for a in apps:
                for method in ("GET", "POST", "DELETE"):
                    st, doc = a.call(method)
                    seen[method].add(st)
                    if st == 200:
                        assert doc["method"] == method and doc["path"] == "/protected", doc
                        assert sorted(doc["roles"]) == ["Sample.Read", "Sample.Write"]
                        seen.setdefault("iat", set()).add(doc["iat"])
                    else:
                        assert doc.get("error") == "insufficient_scope", doc
    finally:
        logs = [a.stop() for a in apps]
    assert (seen["GET"], seen["POST"], seen["DELETE"]) == ({200}, {200}, {401}), logs
    assert len(seen["iat"]) == 1, "the apps did not all use the same token"
    assert jfake.stats()["requests"] == 1
    # DefaultAzureCredential is created on every send, but MSAL.NET's cache is per process:
    # each process asks bearerd once
    assert compat_requests(d, "appservice" if via == "appservice" else "imds") == 3
    for text in logs:
        assert "eyJ" not in text


@needs_dotnet
def test_article_app_needs_its_options(built, bearerd, api, tmp_path):
    """[Required] + ValidateOnStart: without OAuthTargetResource the app does not start."""
    d = bearerd()
    env = app_env(tmp_path, d, "appservice", api, resource=None)
    p = subprocess.run(["dotnet", str(dll("ArticleApp")), "--urls", "http://127.0.0.1:0"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "OAuthTargetResource" in p.stdout + p.stderr


# -- item 2: the same app with its identity code deleted ------------------------------------

@needs_dotnet
def test_app_without_identity_code_behind_a_base_url_route(built, bearerd, jfake, api, tmp_path):
    d = bearerd(route_upstream=api)
    gateway = f"http://127.0.0.1:{d.route_port}"
    apps = [App("NoIdentityApp", app_env(tmp_path, None, None, gateway, resource=None),
                tmp_path, f"plain{i}") for i in range(3)]
    seen = {}
    try:
        for _ in range(3):
            for a in apps:
                for method in ("GET", "POST", "DELETE"):
                    st, doc = a.call(method)
                    seen.setdefault(method, set()).add(st)
                    if st == 200:
                        seen.setdefault("iat", set()).add(doc["iat"])
                        assert doc["via"] == "1.1 bearerd"
    finally:
        logs = [a.stop() for a in apps]
    assert (seen["GET"], seen["POST"], seen["DELETE"]) == ({200}, {200}, {401}), logs
    assert len(seen["iat"]) == 1
    assert jfake.stats()["requests"] == 1
    assert not (DOTNET_DIR / "NoIdentityApp" / "AzureCredentialsAuthorizationHandler.cs").exists()
    assert "Azure.Identity" not in (DOTNET_DIR / "NoIdentityApp" / "packages.lock.json").read_text()


# -- item 3: every managed-identity route -------------------------------------------------

def token_of(run):
    assert run.rc == 0 and len(run.tokens) >= 1, run
    return run.tokens[0]


@needs_dotnet
@pytest.mark.parametrize("kind,via,extra", [
    ("mic", "appservice", {}),
    ("dac", "appservice", {}),
    ("msal", "appservice", {}),
    ("mic", "imds", {}),
    ("msal", "imds", {}),
    ("dac", "imds", {"AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential"}),
])
def test_system_assigned_routes(built, bearerd, jfake, tmp_path, kind, via, extra):
    d = bearerd()
    r = mi(dotnet_env(tmp_path, d, via, **extra), "--credential", kind, "--observe",
           "--calls", "2")
    t = token_of(r)
    assert (t["aud"], t["sub"]) == (AUDIENCE, "system")
    assert len(r.tokens) == 2 and r.tokens[1]["sha"] == t["sha"]
    # no probe: every request of these routes carries its guard, and the second call
    # comes from the client's own cache
    assert len(r.http) == 1, r
    assert r.http[0]["metadata"] == (via == "imds")
    assert jfake.stats()["requests"] == 1
    no_jwt_in_log(d)


@needs_dotnet
def test_dac_default_chain_over_the_imds_redirect_does_not_work(built, bearerd, jfake,
                                                                 tmp_path):
    """The probe (no Metadata) gets IMDS's 400, which DefaultAzureCredential takes for
    "no managed identity" from any host but 169.254.169.254: the chain moves on."""
    d = bearerd()
    r = mi(dotnet_env(tmp_path, d, "imds"), "--credential", "dac", "--observe")
    assert r.rc == 1 and r.errors[0]["type"] == "Azure.Identity.CredentialUnavailableException"
    assert [(e["metadata"], e["status"]) for e in r.http] == [(False, 400)], r
    assert jfake.stats()["requests"] == 0


@needs_dotnet
@pytest.mark.parametrize("kind,via,sel,wire", [
    ("mic", "appservice", f"client={UA_CLIENT}", f"client_id={UA_CLIENT}"),
    ("mic", "appservice", f"resource={UA_RES}", f"mi_res_id={UA_RES}"),
    ("mic", "appservice", f"object={UA_OBJECT}", f"object_id={UA_OBJECT}"),
    ("mic", "imds", f"client={UA_CLIENT}", f"client_id={UA_CLIENT}"),
    ("mic", "imds", f"resource={UA_RES}", f"msi_res_id={UA_RES}"),
    ("mic", "imds", f"object={UA_OBJECT}", f"object_id={UA_OBJECT}"),
    ("msal", "appservice", f"resource={UA_RES}", f"mi_res_id={UA_RES}"),
    ("msal", "imds", f"object={UA_OBJECT}", f"object_id={UA_OBJECT}"),
    ("dac", "appservice", f"resource={UA_RES}", f"mi_res_id={UA_RES}"),
    ("dac-env", "appservice", None, f"client_id={UA_CLIENT}"),
    ("dac-env", "imds", None, f"client_id={UA_CLIENT}"),
])
def test_user_assigned_routes(built, bearerd, jfake, tmp_path, kind, via, sel, wire):
    """ManagedIdentityId.FromUserAssigned{ClientId,ResourceId,ObjectId}, MSAL.NET's
    WithUserAssigned*, DefaultAzureCredentialOptions.ManagedIdentityResourceId and
    AZURE_CLIENT_ID (which DefaultAzureCredential turns into client_id): each selector
    reaches the configured identity, sent the way the client writes it."""
    d = bearerd()
    extra = {}
    if kind == "dac-env":
        extra["AZURE_CLIENT_ID"] = UA_CLIENT
        if via == "imds":
            extra["AZURE_TOKEN_CREDENTIALS"] = "ManagedIdentityCredential"
    args = ["--credential", kind.split("-")[0], "--observe"] + (["--id", sel] if sel else [])
    r = mi(dotnet_env(tmp_path, d, via, **extra), *args)
    t = token_of(r)
    upstream = {"client_id": f"client_id={UA_CLIENT}", "mi_res_id": f"msi_res_id={UA_RES}",
                "msi_res_id": f"msi_res_id={UA_RES}",
                "object_id": f"object_id={UA_OBJECT}"}[wire.split("=")[0]]
    assert t["sub"] == upstream, r
    assert [e["query"].split("&")[-1] for e in r.http] == [wire], r
    no_jwt_in_log(d)


@needs_dotnet
def test_routes_at_169_254_169_254_with_nothing_set(built, tmp_path):
    """bearerd holds 169.254.169.254:80 in a namespace of its own: DefaultAzureCredential
    with no variable at all (its probe's 400 now comes from the IMDS address),
    ManagedIdentityCredential, MSAL.NET and the article's app all get tokens."""
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    p = subprocess.run(unshare + [sys.executable, str(LINKLOCAL), "--bearerd", str(BEARERD),
                                  "--dir", str(tmp_path), "--miclient", str(dll("MiClient")),
                                  "--article", str(dll("ArticleApp")),
                                  "--protected-api", str(PROTECTED_API)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    log = (tmp_path / "bearerd.log").read_text()
    assert "eyJ" not in log
    assert out["bearerd_rc"] == 0, log
    for kind, res in out["clients"].items():
        toks = [e for e in res["events"] if e["event"] == "token"]
        assert res["rc"] == 0 and toks and toks[0]["aud"] == AUDIENCE, (kind, res)
    dac = [e for e in out["clients"]["dac"]["events"] if e["event"] == "http"]
    assert [(e["host"], e["metadata"], e["status"]) for e in dac] == [
        ("169.254.169.254", False, 400), ("169.254.169.254", True, 200)], dac
    art = out["article"]
    assert (art["GET"]["status"], art["POST"]["status"], art["DELETE"]["status"]) == \
        (200, 200, 401), art
    assert art["GET"]["body"]["iat"] == art["POST"]["body"]["iat"]


# -- item 4: MSAL.NET's wire habits, with the real client ----------------------------------

class Capture:
    """A stand-in managed-identity endpoint that records request lines verbatim and
    answers with a body the test chooses."""

    def __init__(self):
        self.lines, self.body = [], b"{}"
        cap = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                cap.lines.append(self.requestline)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(cap.body)))
                self.end_headers()
                self.wfile.write(cap.body)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def capture():
    c = Capture()
    yield c
    c.stop()


@needs_dotnet
@pytest.mark.parametrize("via", ["appservice", "imds"])
def test_msal_writes_query_values_unencoded(built, capture, tmp_path, via):
    now = int(time.time())
    capture.body = json.dumps({"access_token": "opaque-capture-token", "token_type": "Bearer",
                               "expires_on": str(now + 3600), "resource": PLUS}).encode()
    if via == "appservice":
        env = dotnet_env(tmp_path, IDENTITY_ENDPOINT=f"http://127.0.0.1:{capture.port}/msi/token",
                         IDENTITY_HEADER="capture")
        want = f"GET /msi/token?api-version=2019-08-01&resource={PLUS}&mi_res_id={UA_RES} HTTP/1.1"
    else:
        env = dotnet_env(tmp_path,
                         AZURE_POD_IDENTITY_AUTHORITY_HOST=f"http://127.0.0.1:{capture.port}")
        want = (f"GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource={PLUS}"
                f"&msi_res_id={UA_RES} HTTP/1.1")
    r = mi(env, "--credential", "mic", "--scope", PLUS, "--id", f"resource={UA_RES}")
    assert r.rc == 0, r
    assert capture.lines == [want]


@needs_dotnet
@pytest.mark.parametrize("order", ["in_then_on", "on_then_in"])
def test_the_last_of_expires_in_and_expires_on_wins(built, capture, tmp_path, order):
    """Answers whose expires_in and expires_on disagree: the client's ExpiresOn follows
    whichever comes last, which is why bearerd writes expires_on last."""
    now = int(time.time())
    fields = [("expires_in", "1800"), ("expires_on", str(now + 7000))]
    if order == "on_then_in":
        fields.reverse()
    body = '{"access_token":"opaque-capture-token","token_type":"Bearer",' + \
        ",".join(f'"{k}":"{v}"' for k, v in fields) + "}"
    capture.body = body.encode()
    env = dotnet_env(tmp_path, IDENTITY_ENDPOINT=f"http://127.0.0.1:{capture.port}/msi/token",
                     IDENTITY_HEADER="capture")
    t = token_of(mi(env, "--credential", "mic"))
    want = now + 7000 if order == "in_then_on" else now + 1800
    assert abs(t["expires_on"] - want) <= 5, (t, want)


@needs_dotnet
@pytest.mark.parametrize("via", ["appservice", "imds"])
def test_plus_resource_with_the_real_client(built, bearerd, jfake, tmp_path, via):
    d = bearerd()
    t = token_of(mi(dotnet_env(tmp_path, d, via), "--credential", "mic", "--scope", PLUS))
    assert t["aud"] == PLUS
    assert jfake.stats()["by_resource"] == {PLUS: 1}
    tok = d.get("/v1/token/plus").json()["access_token"]
    assert hashlib.sha256(tok.encode()).hexdigest()[:16] == t["sha"]


@needs_dotnet
@pytest.mark.parametrize("case,status,attempts", [
    ("unknown identity", 400, 1),
    ("wrong identity header", 401, 1),
    ("restricted audience", 403, 1),
    ("upstream failing", 503, 6),
    ("IDENTITY_ENDPOINT without /msi/token", 404, 6),
])
def test_what_each_bearerd_status_costs_the_client(built, bearerd, jfake, tmp_path, case,
                                                    status, attempts):
    """Azure.Identity's managed-identity pipeline fails fast on 400/401/403 and retries
    404/429/5xx five times (honouring Retry-After, which bearerd sets to 1 s): bearerd
    answers 400 for what asking again will not fix and 503 for what it may."""
    d = bearerd(locked=case == "restricted audience")
    env = dotnet_env(tmp_path, d, "appservice")
    args = ["--credential", "mic", "--observe", "--retry-delay-ms", "1"]
    if case == "unknown identity":
        args += ["--id", "client=00000000-0000-0000-0000-000000000001"]
    elif case == "wrong identity header":
        env["IDENTITY_HEADER"] = "not-the-secret"
    elif case == "restricted audience":
        args += ["--scope", "api://locked"]
    elif case == "upstream failing":
        jfake.configure(status=500)
    else:
        env["IDENTITY_ENDPOINT"] = env["IDENTITY_ENDPOINT"].replace("/msi/token", "")
    r = mi(env, *args)
    assert r.rc == 1, r
    assert [e["status"] for e in r.http] == [status] * attempts, r
    no_jwt_in_log(d)


@needs_dotnet
def test_an_unknown_azure_client_id_stops_default_azure_credential(built, bearerd, tmp_path):
    """DefaultAzureCredential asks for AZURE_CLIENT_ID's user-assigned identity; bearerd's
    400 for an unknown one fails the chain at once instead of trying developer tools."""
    d = bearerd()
    env = dotnet_env(tmp_path, d, "appservice",
                     AZURE_CLIENT_ID="00000000-0000-0000-0000-000000000001")
    r = mi(env, "--credential", "dac", "--observe")
    assert r.rc == 1 and r.errors[0]["type"] == "Azure.Identity.AuthenticationFailedException", r
    assert [e["status"] for e in r.http] == [400], r


@needs_dotnet
def test_a_transient_upstream_failure_is_retried_through(built, bearerd, jfake, tmp_path):
    d = bearerd()
    jfake.configure(sequence=[500])
    r = mi(dotnet_env(tmp_path, d, "appservice"), "--credential", "mic", "--observe",
           "--retry-delay-ms", "1")
    assert token_of(r)["aud"] == AUDIENCE
    statuses = [e["status"] for e in r.http]
    assert statuses[0] == 503 and statuses[-1] == 200 and len(statuses) <= 6, r
    assert jfake.stats()["by_status"] == {"500": 1, "200": 1}


@needs_dotnet
@pytest.mark.parametrize("lifetime", [360, 3600, 6 * 3600])
def test_lifetimes_the_client_sees(built, bearerd, jfake, tmp_path, lifetime):
    """MSAL.NET takes a token with less than 5 min left for expired, so bearerd never hands
    one out (min_validity >= 300): a 6-min token is cached by the client like any other.
    Tokens living over 2 h get RefreshOn at half of what is left."""
    d = bearerd()
    jfake.configure(lifetime=lifetime)
    r = mi(dotnet_env(tmp_path, d, "imds"), "--credential", "mic", "--observe", "--calls", "2")
    t = token_of(r)
    left = t["expires_on"] - t["now"]
    assert lifetime - 10 <= left <= lifetime
    assert len(r.http) == 1 and r.tokens[1]["sha"] == t["sha"], r
    if lifetime > 7200:
        assert abs(t["refresh_on"] - (t["now"] + left // 2)) <= 5, t
    else:
        assert t["refresh_on"] is None, t


@needs_dotnet
def test_a_token_the_client_would_call_expired_is_never_handed_out(built, bearerd, jfake,
                                                                   tmp_path):
    d = bearerd()
    jfake.configure(lifetime=290)
    r = mi(dotnet_env(tmp_path, d, "appservice"), "--credential", "mic", "--observe",
           "--retry-delay-ms", "1")
    assert r.rc == 1 and not r.tokens
    assert {e["status"] for e in r.http} == {503}, r


@needs_dotnet
def test_pop_discovery_costs_one_request_per_path(built, bearerd, jfake, tmp_path):
    """A proof-of-possession request makes Azure.Identity discover mTLS support first:
    getplatformmetadata (IMDSv2), the IMDSv1 probe, /metadata/instance/compute.  Each is
    asked once (a 404 would be asked six times, about 25 s each), and the client settles
    for a bearer token."""
    d = bearerd()
    r = mi(dotnet_env(tmp_path, d, "imds"), "--credential", "mic", "--observe", "--pop")
    t = token_of(r)
    assert t["token_type"] == "Bearer" and t["aud"] == AUDIENCE
    got = [(e["path"], e["metadata"], e["status"]) for e in r.http]
    assert got == [("/metadata/identity/getplatformmetadata", False, 403),
                   ("/metadata/identity/oauth2/token", False, 400),
                   ("/metadata/instance/compute", True, 403),
                   ("/metadata/identity/oauth2/token", True, 200)], r


@needs_dotnet
def test_msal_capability_discovery(built, bearerd, jfake, tmp_path):
    """MSAL.NET alone (its own retry policies): discovery finds IMDSv1, no mTLS binding."""
    d = bearerd()
    r = mi(dotnet_env(tmp_path, d, "imds"), "--credential", "msal", "--observe", "--discover")
    caps = [e for e in r.events if e["event"] == "capabilities"]
    assert caps and (caps[0]["source"], caps[0]["max_binding"]) == ("Imds", "None"), r
    assert [e["status"] for e in r.http] == [403, 400, 403, 200], r
    assert token_of(r)["aud"] == AUDIENCE


# -- item 5: ten .NET processes against a cold bearerd --------------------------------------

@needs_dotnet
def test_ten_processes_cold_one_upstream_request(built, bearerd, jfake, tmp_path):
    """Ten MiClient processes, started and waiting at a barrier, ask a cold bearerd at
    once (App Service route): one upstream request, one token for all.  Prints how long
    each waited after the upstream answered (a figure for the notes, not an assertion)."""
    d = bearerd(wait_timeout=20)  # a loaded machine must not turn the wait into a 503
    jfake.configure(delay=2.0)
    env = dotnet_env(tmp_path, d, "appservice")
    procs = [subprocess.Popen(["dotnet", str(dll("MiClient")), "--credential", "mic",
                               "--observe", "--barrier"], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(10)]
    for p in procs:
        line = p.stdout.readline()
        assert json.loads(line)["event"] == "ready", line
    go = time.monotonic_ns()
    for p in procs:
        p.stdin.write("\n")
        p.stdin.flush()
    runs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        runs.append(Run(subprocess.CompletedProcess(p.args, p.returncode, out, err)))
    st = jfake.stats()
    assert st["requests"] == 1, st
    assert all(r.rc == 0 and len(r.http) == 1 and r.http[0]["status"] == 200
               for r in runs), runs
    assert len({token_of(r)["sha"] for r in runs}) == 1
    assert compat_requests(d, "appservice") == 10
    no_jwt_in_log(d)

    # CLOCK_MONOTONIC on both sides (Stopwatch on Linux, time.monotonic in the fake)
    up_start, up_end = int(st["log"][0]["t"] * 1e9), int(st["log"][0]["end"] * 1e9)
    ms = lambda ns: round(ns / 1e6, 1)  # noqa: E731
    waiters = [r for r in runs if r.http[0]["sent_ns"] < up_end]
    answer = sorted(r.http[0]["t_ns"] - up_end for r in waiters)
    token = sorted(token_of(r)["t_ns"] - up_end for r in waiters)
    report = {
        "processes": len(runs),
        "asked_before_the_upstream_answered": len(waiters),
        "first_ask_after_go_ms": ms(min(r.http[0]["sent_ns"] for r in runs) - go),
        "last_ask_after_go_ms": ms(max(r.http[0]["sent_ns"] for r in runs) - go),
        "upstream_asked_after_go_ms": ms(up_start - go),
        "upstream_took_ms": ms(up_end - up_start),
        "answer_after_upstream_ms": {"median": ms(answer[len(answer) // 2]),
                                     "last": ms(answer[-1])},
        "token_in_hand_after_upstream_ms": {"median": ms(token[len(token) // 2]),
                                            "last": ms(token[-1])},
    }
    print("ten .NET processes:", json.dumps(report))
    (tmp_path / "ten-processes.json").write_text(json.dumps(report))
