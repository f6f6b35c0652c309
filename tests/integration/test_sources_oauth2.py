"""The generic oauth2 source: against oidc-provider (a real authorization server from npm,
tests/oidc/server.mjs) with each client authentication method, the tokens verified against
its JWKS; and against the strict fake's generic /token endpoint (tests/fakes/fake_entra.py)
for the audience parameters, scopes, extra parameters and mutual TLS."""

import json
import secrets
import time

import jwt
import pytest

from conftest import (identity_config, remember_key,
                      remember_secret, remember_token, secret_file, wait_for)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RESOURCE = "https://api.example.test"


def token(d, aud="api"):
    r = d.get(f"/v1/token/{aud}")
    if r.status == 200:
        remember_token(r.json()["access_token"])
    return r


def status_of(d, aud="api"):
    for e in d.get("/v1/status").json():
        if e["audience"] == aud:
            return e
    raise AssertionError(f"no status entry for {aud}")


def verify_with_jwks(oidc, tok, client_id):
    """The access token is a JWT signed by oidc-provider's key, for the resource."""
    header = jwt.get_unverified_header(tok)
    keys = {k["kid"]: k for k in oidc.jwks()["keys"]}
    assert header["kid"] in keys
    key = jwt.PyJWK(keys[header["kid"]]).key
    claims = jwt.decode(tok, key, algorithms=["RS256"], audience=RESOURCE, issuer=oidc.issuer)
    assert claims["client_id"] == client_id
    assert claims["exp"] > time.time() + 3000
    return claims


# -- oidc-provider ------------------------------------------------------------------------------


def oidc_identity(oidc, tmp_path, testca, method):
    ident = {"source": "oauth2", "token_url": oidc.token_url, "auth_method": method,
             "audience_param": "resource", "ca_file": testca.ca.cert}
    if method == "client_secret_basic":
        ident["client_id"] = "bearerd-basic"
        ident["client_secret_file"] = secret_file(tmp_path, "secret", oidc.secret_basic)
    elif method == "client_secret_post":
        ident["client_id"] = "bearerd-post"
        ident["client_secret_file"] = secret_file(tmp_path, "secret", oidc.secret_post)
    return ident


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_oidc_provider_client_secret(oidc, start_daemon, tmp_path, testca, method):
    ident = oidc_identity(oidc, tmp_path, testca, method)
    d = start_daemon(identity_config(ident, {"api": RESOURCE}))
    r = token(d)
    assert r.status == 200, (r.body, oidc.logs()[-2000:])
    body = r.json()
    assert body["resource"] == RESOURCE and body["token_type"] == "Bearer"
    assert 3590 <= body["expires_in"] <= 3600
    verify_with_jwks(oidc, body["access_token"], ident["client_id"])


@pytest.mark.parametrize("kind,client_id,alg", [("rsa-pkcs8", "bearerd-jwt", "RS256"),
                                                ("ec", "bearerd-jwt-ec", "ES256")])
def test_oidc_provider_private_key_jwt(oidc, start_daemon, tmp_path, testca, kind, client_id,
                                       alg):
    cred = testca.clients[kind]
    remember_key(cred.key)
    ident = {"source": "oauth2", "token_url": oidc.token_url, "auth_method": "private_key_jwt",
             "client_id": client_id, "private_key_file": cred.key,
             "audience_param": "resource", "ca_file": testca.ca.cert}
    if kind == "rsa-pkcs8":
        ident["key_id"] = oidc.kid
    d = start_daemon(identity_config(ident, {"api": RESOURCE}))
    r = token(d)
    assert r.status == 200, (r.body, oidc.logs()[-2000:])
    verify_with_jwks(oidc, r.json()["access_token"], client_id)
    # oidc-provider keeps every jti (replay detection): a refresh needs a fresh assertion
    first = r.json()["access_token"]
    assert d.request("POST", "/v1/refresh/api").status == 202
    wait_for(lambda: token(d).json()["access_token"] != first, timeout=10,
             what="a refreshed token")
    assert status_of(d)["failures"] == 0


def test_oidc_provider_plain_http_on_loopback(oidc_http, start_daemon, tmp_path, testca):
    assert oidc_http.token_url.startswith("http://127.0.0.1:")
    ident = oidc_identity(oidc_http, tmp_path, testca, "client_secret_basic")
    del ident["ca_file"]
    d = start_daemon(identity_config(ident, {"api": RESOURCE}))
    r = token(d)
    assert r.status == 200, (r.body, oidc_http.logs()[-2000:])
    verify_with_jwks(oidc_http, r.json()["access_token"], "bearerd-basic")


def test_oidc_provider_wrong_secret_surfaced(oidc, start_daemon, tmp_path, testca):
    ident = oidc_identity(oidc, tmp_path, testca, "client_secret_post")
    wrong = remember_secret("wrong-" + secrets.token_urlsafe(16))
    ident["client_secret_file"] = secret_file(tmp_path, "wrong", wrong)
    d = start_daemon(identity_config(ident, {"api": RESOURCE}))
    r = token(d)
    assert r.status == 503, r.body
    assert "invalid_client" in r.body.decode()
    assert "invalid_client" in status_of(d)["last_error"]
    leaked = wrong in r.body.decode() or wrong in json.dumps(status_of(d))
    assert not leaked, "the secret appeared in an answer"


# -- the fake's generic /token: audience parameters, scopes, extras, mTLS ----------------------


CLIENT = "generic-client"


def generic_identity(fake, tmp_path, secret, **keys):
    ident = {"source": "oauth2", "token_url": fake.token_url, "client_id": CLIENT,
             "client_secret_file": secret_file(tmp_path, "secret", secret)}
    ident.update(keys)
    return ident


def new_secret():
    return remember_secret("g3n:er ic+" + secrets.token_urlsafe(16) + "%&=")


@pytest.mark.parametrize("params,expect", [
    (None, {"scope": RESOURCE}),  # the default: the audience as scope
    ("scope", {"scope": RESOURCE}),
    ("resource", {"resource": RESOURCE}),
    ("audience", {"audience": RESOURCE}),
    ("resource audience", {"resource": RESOURCE, "audience": RESOURCE}),
])
def test_generic_audience_param(fe, start_daemon, tmp_path, testca, params, expect):
    secret = new_secret()
    fe.configure(clients={CLIENT: {"secret": secret, "auth_method": "client_secret_basic"}})
    keys = {"audience_param": params} if params else {}
    d = start_daemon(identity_config(generic_identity(fe, tmp_path, secret, **keys),
                                     {"api": RESOURCE}, ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 200, (r.body, fe.stats()["last_error"])
    st = fe.stats()
    assert st["by_path"] == {"/token": 1}
    assert st["last_auth"] == "client_secret_basic"
    form = dict(st["last_form"])
    form.pop("client_id", None)  # allowed, not required, beside Basic credentials
    assert form == {"grant_type": "client_credentials", **expect}
    assert st["issued"] == [r.json()["access_token"]]


def test_generic_scopes_and_extra_params(fe, start_daemon, tmp_path, testca):
    secret = new_secret()
    fe.configure(clients={CLIENT: {"secret": secret, "auth_method": "client_secret_post"}},
                 extra_params={"tenant": "acme", "prompt": "none"})
    ident = generic_identity(fe, tmp_path, secret, auth_method="client_secret_post",
                             audience_param="resource", scope="read write",
                             extra_params="tenant=acme prompt=none")
    d = start_daemon(identity_config(ident, {"api": RESOURCE}, ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 200, (r.body, fe.stats()["last_error"])
    st = fe.stats()
    assert st["last_auth"] == "client_secret_post"
    form = dict(st["last_form"])
    assert sorted(form.pop("scope").split(" ")) == ["read", "write"]
    assert form == {"grant_type": "client_credentials", "client_id": CLIENT,
                    "client_secret": "<redacted>", "resource": RESOURCE,
                    "tenant": "acme", "prompt": "none"}


def test_generic_scope_list_with_audience_as_scope(fe, start_daemon, tmp_path, testca):
    secret = new_secret()
    fe.configure(clients={CLIENT: {"secret": secret}})
    ident = generic_identity(fe, tmp_path, secret, audience_param="scope",
                             scope="openid offline")
    d = start_daemon(identity_config(ident, {"api": RESOURCE}, ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 200, (r.body, fe.stats()["last_error"])
    form = fe.stats()["last_form"]
    assert sorted(form["scope"].split(" ")) == sorted([RESOURCE, "openid", "offline"])
    assert "resource" not in form and "audience" not in form


def test_generic_standard_error_surfaced(fe, start_daemon, tmp_path, testca):
    secret = new_secret()
    fe.configure(clients={CLIENT: {"secret": secret}}, status=400, error="invalid_scope",
                 error_code=70011)
    d = start_daemon(identity_config(generic_identity(fe, tmp_path, secret),
                                     {"api": RESOURCE}, ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 503, r.body
    assert "invalid_scope" in r.body.decode()
    assert "invalid_scope" in status_of(d)["last_error"]


def test_generic_private_key_jwt_with_certificate_and_kid(fe, start_daemon, testca):
    cred = testca.clients["rsa-trad"]
    remember_key(cred.key)
    fe.configure(clients={CLIENT: {"certificate": cred.cert_pem, "kid": "key-1",
                                   "auth_method": "private_key_jwt"}})
    ident = {"source": "oauth2", "token_url": fe.token_url, "client_id": CLIENT,
             "auth_method": "private_key_jwt", "private_key_file": cred.key,
             "certificate_file": cred.cert, "key_id": "key-1", "audience_param": "audience"}
    d = start_daemon(identity_config(ident, {"api": RESOURCE}, ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 200, (r.body, fe.stats()["last_error"])
    st = fe.stats()
    a = st["last_assertion"]
    assert a["header"]["kid"] == "key-1" and "x5t#S256" in a["header"]
    assert a["header"]["alg"] == "RS256"
    assert a["claims"]["aud"] == fe.token_url
    assert a["claims"]["iss"] == a["claims"]["sub"] == CLIENT
    assert 0 < a["claims"]["exp"] - a["claims"]["nbf"] <= 600
    form = dict(st["last_form"])
    form.pop("client_id", None)
    assert form == {"grant_type": "client_credentials", "audience": RESOURCE,
                    "client_assertion_type": ASSERTION_TYPE, "client_assertion": "<redacted>"}


def test_generic_mtls_client_certificate(fe, start_daemon, tmp_path, testca):
    secret = new_secret()
    remember_key(testca.mtls.key)
    fe.configure(clients={CLIENT: {"secret": secret}}, require_client_cert=True)
    ident = generic_identity(fe, tmp_path, secret, tls_certificate_file=testca.mtls.cert,
                             tls_private_key_file=testca.mtls.key)
    d = start_daemon(identity_config(ident, {"api": RESOURCE}, ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 200, (r.body, fe.stats()["last_error"])
    assert fe.stats()["last_client_cert"] == "bearerd-mtls-client"


def test_generic_without_client_certificate_refused_by_mtls_server(fe, start_daemon, tmp_path,
                                                                   testca):
    """Counterpart: the fake really insists on the client certificate."""
    secret = new_secret()
    fe.configure(clients={CLIENT: {"secret": secret}}, require_client_cert=True)
    d = start_daemon(identity_config(generic_identity(fe, tmp_path, secret),
                                     {"api": RESOURCE}, ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 503, r.body
    assert fe.stats()["last_client_cert"] is None
    assert "invalid_client" in status_of(d)["last_error"]


def test_basic_credentials_are_form_encoded(fe, start_daemon, tmp_path, testca):
    """RFC 6749 2.3.1: id and secret are form-urlencoded before base64 (the fake decodes
    them that way; a raw ':' or '%' in the secret would not survive otherwise)."""
    secret = remember_secret("a:b%c+d e/" + secrets.token_urlsafe(8))
    fe.configure(clients={CLIENT: {"secret": secret, "auth_method": "client_secret_basic"}})
    d = start_daemon(identity_config(generic_identity(fe, tmp_path, secret),
                                     {"api": RESOURCE}, ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 200, (r.body, fe.stats()["last_error"])
    assert fe.stats()["last_auth"] == "client_secret_basic"


def test_plain_http_token_url_refused_for_non_loopback(tmp_path):
    import subprocess
    from conftest import BEARERD
    path = secret_file(tmp_path, "secret", "x")
    ident = {"source": "oauth2", "token_url": "http://auth.example.test/token",
             "client_id": CLIENT, "client_secret_file": path}
    conf = tmp_path / "bearerd.conf"
    conf.write_text(identity_config(ident, {"api": RESOURCE}).replace(
        "@SOCKET@", str(tmp_path / "s.sock")))
    r = subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and f"{conf}:" in r.stderr, r.stderr
    assert "token_url" in r.stderr, r.stderr


def test_burst_of_resources_is_bounded_in_flight(fe, start_daemon, tmp_path, testca):
    """80 distinct dynamic resources at once: bearerd queues beyond SOURCE_MAX_IN_FLIGHT (16)
    per identity (libcurl beyond FETCH_MAX_CONNECTIONS, 32) instead of opening one upstream
    connection per resource; every caller still gets a token (dynamic_rate = 0: this is one
    caller's burst, which the default limit would cut short)."""
    import threading
    import urllib.parse
    secret = new_secret()
    fe.configure(clients={CLIENT: {"secret": secret}}, delay=0.3)
    ident = generic_identity(fe, tmp_path, secret, dynamic_resources="yes")
    d = start_daemon(identity_config(ident, {"api": RESOURCE}, ca_file=testca.ca.cert,
                                     wait_timeout=30, dynamic_rate=0))
    statuses = []

    def ask(i):
        res = urllib.parse.quote(f"https://api{i}.example.test", safe="")
        r = d.get(f"/v1/token?resource={res}&identity=app", timeout=60)
        if r.status == 200:
            remember_token(r.json()["access_token"])
        statuses.append(r.status)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(80)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = fe.stats()
    assert statuses == [200] * 80
    assert st["requests"] == 80
    assert 8 <= st["max_in_flight"] <= 32, st["max_in_flight"]
