"""The entra-secret, entra-certificate and entra-federated sources against the fake Entra
ID token endpoint over TLS (tests/fakes/fake_entra.py), which checks every form parameter
and verifies every client assertion (signature, header, claims) the way Entra does."""

import base64
import json
import os
import re
import secrets
import subprocess
import time

import pytest

from conftest import (BEARERD, identity_config, remember_key,
                      remember_secret, remember_token, secret_file, wait_for)

TENANT = "0a1b2c3d-tenant"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def new_secret():
    # characters that need form-encoding, as real Entra secrets have (~ . _ -) and worse
    return remember_secret("Xy7~Q." + secrets.token_urlsafe(18) + "+/=&%")


def federated_jwt(label):
    """Something shaped like a projected Kubernetes service-account token."""
    def part(doc):
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    now = int(time.time())
    tok = ".".join([part({"alg": "RS256", "kid": "sa-key"}),
                    part({"aud": ["api://AzureADTokenExchange"], "iss": "https://oidc.test",
                          "sub": "system:serviceaccount:default:app", "iat": now,
                          "exp": now + 3600, "label": label}),
                    secrets.token_urlsafe(64)])
    return remember_secret(tok)


def token(d, aud="api"):
    r = d.get(f"/v1/token/{aud}")
    if r.status == 200:
        remember_token(r.json()["access_token"])
    return r


def status_of(d, aud="api"):
    r = d.get("/v1/status")
    assert r.status == 200
    for e in r.json():
        if e["audience"] == aud:
            return e
    raise AssertionError(f"no status entry for {aud}")


def secret_identity(fake, secret_path, **keys):
    ident = {"source": "entra-secret", "authority": fake.authority, "tenant": TENANT,
             "client_id": CLIENT_ID, "client_secret_file": secret_path}
    ident.update(keys)
    return ident


def cert_identity(fake, cred, **keys):
    ident = {"source": "entra-certificate", "authority": fake.authority, "tenant": TENANT,
             "client_id": CLIENT_ID, "certificate_file": cred.cert,
             "private_key_file": cred.key}
    ident.update(keys)
    return ident


# -- entra-secret -----------------------------------------------------------------------------


def test_secret_token_served_and_exact_form(fe, start_daemon, tmp_path, testca):
    secret = new_secret()
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"secret": secret}})
    path = secret_file(tmp_path, "client-secret", secret + "\n")
    d = start_daemon(identity_config(secret_identity(fe, path), {"api": "api://test-app"},
                                     ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 200, r.body
    body = r.json()
    st = fe.stats()
    assert st["issued"] == [body["access_token"]]
    assert body["token_type"] == "Bearer" and body["resource"] == "api://test-app"
    assert 3590 <= body["expires_in"] <= 3600
    assert st["by_path"] == {f"/{TENANT}/oauth2/v2.0/token": 1}
    assert st["last_form"] == {"grant_type": "client_credentials", "client_id": CLIENT_ID,
                               "scope": "api://test-app/.default",
                               "client_secret": "<redacted>"}
    assert st["last_auth"] == "client_secret_post"
    headers = {k.lower(): v for k, v in st["last_headers"].items()}
    assert headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert "authorization" not in headers
    # the token is cached: a second client does not cause a second request
    assert token(d).json()["access_token"] == body["access_token"]
    assert fe.stats()["requests"] == 1


def test_secret_scope_for_trailing_slash_and_default_suffix(fe, start_daemon, tmp_path, testca):
    secret = new_secret()
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"secret": secret}})
    path = secret_file(tmp_path, "client-secret", secret)
    auds = {"sql": "https://database.windows.net/", "dflt": "api://already/.default",
            "plain": "https://vault.azure.net"}
    d = start_daemon(identity_config(secret_identity(fe, path), auds, ca_file=testca.ca.cert))
    # what MSAL and the Azure SDKs send: resource + "/.default", a trailing "/" kept
    # (Entra takes everything before the last "/" as the audience)
    expect = {"sql": "https://database.windows.net//.default",
              "dflt": "api://already/.default",
              "plain": "https://vault.azure.net/.default"}
    for aud, scope in expect.items():
        r = token(d, aud)
        assert r.status == 200, r.body
        assert fe.stats()["last_form"]["scope"] == scope
        assert r.json()["resource"] == auds[aud]


def test_wrong_secret_is_permanent_surfaced_and_not_hammered(fe, start_daemon, tmp_path,
                                                             testca):
    registered = new_secret()
    wrong = new_secret()
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"secret": registered}})
    path = secret_file(tmp_path, "client-secret", wrong)
    d = start_daemon(identity_config(secret_identity(fe, path), {"api": "api://test-app"},
                                     ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 503, r.body
    err = r.json()
    assert err["error"]  # an OAuth2-style error document
    assert "invalid_client" in r.body.decode() and "7000215" in r.body.decode()
    leaked = wrong in r.body.decode() or registered in r.body.decode()
    assert not leaked, "a client secret appeared in the 503 body"
    assert "retry-after" in r.headers

    # clients keep asking for 20 s: the daemon must not hammer the token endpoint
    end = time.monotonic() + 20
    answers = set()
    while time.monotonic() < end:
        answers.add(token(d).status)
        time.sleep(0.1)
    assert answers == {503}
    st = fe.stats()
    assert 1 <= st["requests"] <= 3, f"{st['requests']} token requests in 20 s"
    assert st["issued"] == []

    entry = status_of(d)
    assert entry["state"] == "failed"
    assert "invalid_client" in entry["last_error"] and "7000215" in entry["last_error"]
    # what Microsoft support asks for comes through, without Entra's raw CR LF
    assert re.search(r"Trace ID: [0-9a-f-]{36}", entry["last_error"]), entry
    assert re.search(r"Correlation ID: [0-9a-f-]{36}", entry["last_error"]), entry
    assert all(" " <= c <= "~" for c in entry["last_error"]), entry
    for line in d.logs().splitlines():
        assert line.startswith("level="), f"a log line was split: {line!r}"
    ctl = d.ctl("status")
    assert ctl.returncode == 0, ctl.stderr
    assert "invalid_client" in ctl.stdout
    leaked = any(s in ctl.stdout or s in json.dumps(entry) for s in (wrong, registered))
    assert not leaked, "a client secret appeared in the status"


def windows(secret, n=8):
    """Every n-byte piece of a credential: none may appear anywhere a message goes."""
    return {secret[i:i + n] for i in range(len(secret) - n + 1)}


def leaks(text, secret):
    return any(w in text for w in windows(secret))


def echoing_error_body(credential, filler, escape=False):
    """An Entra-style 401 whose description ends with the credential, after filler that
    puts it across the point where bearerd cuts the description (511 bytes less room
    for " error_codes=7000215")."""
    desc = json.dumps("x" * filler + credential)
    if escape:
        # what PHP's json_encode and .NET's encoder send: "\\/" and "\\u002B"
        desc = desc.replace("/", "\\/").replace("+", "\\u002B")
    return '{"error":"invalid_client","error_description":%s,"error_codes":[7000215]}' % desc


@pytest.mark.parametrize("kind", ["secret", "secret-json-escaped", "federated"])
def test_echoed_credential_is_withheld(fe, start_daemon, tmp_path, testca, kind):
    """An upstream error that echoes the credential after a long description: no 8-byte
    piece of it may reach the 503 body, /v1/status or the log (the description is cut
    to length, so looking for the whole credential after the cut would miss it).
    Nothing that may hold the credential is ever handed to assert (pytest prints it)."""
    if kind == "federated":
        cred = federated_jwt("echoed")
        path = secret_file(tmp_path, "azure-identity-token", cred)
        fe.configure(tenant=TENANT, clients={CLIENT_ID: {"federated": cred}}, status=401,
                     error_body=echoing_error_body(cred, 511 - len(cred) // 2))
        ident = {"source": "entra-federated", "authority": fe.authority, "tenant": TENANT,
                 "client_id": CLIENT_ID, "federated_token_file": path}
    else:
        cred = new_secret()
        path = secret_file(tmp_path, "client-secret", cred)
        fe.configure(tenant=TENANT, clients={CLIENT_ID: {"secret": cred}}, status=401,
                     error_body=echoing_error_body(cred, 475, escape=kind != "secret"))
        ident = secret_identity(fe, path)
    d = start_daemon(identity_config(ident, {"api": "api://test-app"},
                                     ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 503
    assert fe.stats()["by_status"] == {"401": 1}  # the fake did echo it
    leaked = leaks(r.body.decode(), cred)
    assert not leaked, "a piece of the credential is in the 503 body"
    desc = r.json()["error_description"]
    kept = desc.startswith("invalid_client: ")
    assert kept, "the error code was not kept"
    withheld = "withheld" in desc
    assert withheld, "the description was not withheld"
    status = json.dumps(d.get("/v1/status").json())
    leaked = leaks(status, cred)
    assert not leaked, "a piece of the credential is in /v1/status"
    withheld = "withheld" in status_of(d)["last_error"]
    assert withheld, "last_error does not say the description was withheld"
    ctl = d.ctl("status")
    leaked = leaks(ctl.stdout, cred)
    assert ctl.returncode == 0
    assert not leaked, "a piece of the credential is in bearerctl status"
    leaked = leaks(d.logs(), cred)
    assert not leaked, "a piece of the credential is in the log"


def test_429_retry_after_is_honoured(fe, start_daemon, tmp_path, testca):
    secret = new_secret()
    wait = 4
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"secret": secret}}, status=429,
                 retry_after=wait)
    path = secret_file(tmp_path, "client-secret", secret)
    d = start_daemon(identity_config(secret_identity(fe, path), {"api": "api://test-app"},
                                     ca_file=testca.ca.cert))
    r = token(d)
    # 503 with the upstream's error, or 504 if the source itself waits out Retry-After
    assert r.status in (503, 504), r.body
    if r.status == 503:
        assert "temporarily_unavailable" in r.body.decode(), r.body
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"secret": secret}})
    # clients keep asking; the daemon waits out Retry-After before asking again
    wait_for(lambda: token(d).status == 200, timeout=30, step=0.2,
             what="a token after Retry-After")
    st = fe.stats()
    times = st["times"]
    assert st["by_status"]["429"] >= 1 and st["by_status"]["200"] == 1
    assert len(times) == st["by_status"]["429"] + 1
    # every request after a 429 came at least Retry-After later
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g >= wait - 0.5 for g in gaps), f"gaps between requests: {gaps}"


# -- upstream TLS -------------------------------------------------------------------------------


def test_untrusted_certificate_refused(untrusted_entra, start_daemon, tmp_path, testca):
    secret = new_secret()
    untrusted_entra.configure(tenant=TENANT, clients={CLIENT_ID: {"secret": secret}})
    path = secret_file(tmp_path, "client-secret", secret)
    # the identity trusts the test CA, which did not sign this server's certificate
    ident = secret_identity(untrusted_entra, path, ca_file=testca.ca.cert)
    d = start_daemon(identity_config(ident, {"api": "api://test-app"}))
    r = token(d)
    assert r.status == 503, r.body
    text = r.body.decode().lower()
    assert "certificate" in text or "ssl" in text or "tls" in text, r.body
    entry = status_of(d)
    low = entry["last_error"].lower()
    assert "certificate" in low or "ssl" in low or "tls" in low, entry
    st = untrusted_entra.stats()
    assert st["requests"] == 0 and st["issued"] == []
    assert st["tls_failures"] >= 1


def test_identity_ca_file_trusts_the_fake(fe, start_daemon, tmp_path, testca):
    """Counterpart of the untrusted test: the same setup with a CA-signed server works,
    with ca_file on the identity rather than in [bearerd]."""
    secret = new_secret()
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"secret": secret}})
    path = secret_file(tmp_path, "client-secret", secret)
    ident = secret_identity(fe, path, ca_file=testca.ca.cert, timeout=5)
    d = start_daemon(identity_config(ident, {"api": "api://test-app"}))
    assert token(d).status == 200


def test_identity_timeout_bounds_a_slow_token_endpoint(fe, start_daemon, tmp_path, testca):
    secret = new_secret()
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"secret": secret}}, delay=8)
    path = secret_file(tmp_path, "client-secret", secret)
    ident = secret_identity(fe, path, timeout=1)
    # wait_timeout above the identity's timeout: the answer is the fetch's failure, not a 504
    d = start_daemon(identity_config(ident, {"api": "api://test-app"}, ca_file=testca.ca.cert,
                                     wait_timeout=6))
    r = token(d)
    assert r.status == 503, r.body
    low = status_of(d)["last_error"].lower()
    assert "timeout" in low or "timed out" in low, low
    assert fe.stats()["issued"] == []


# -- entra-certificate ---------------------------------------------------------------------------


CERT_CASES = [
    # key kind, assertion_alg key, expected alg, thumbprint header
    ("rsa-pkcs8", None, "PS256", "x5t#S256"),
    ("rsa-trad", None, "PS256", "x5t#S256"),
    ("rsa-pkcs8", "RS256", "RS256", "x5t"),
    ("rsa-trad", "PS256", "PS256", "x5t#S256"),
    ("ec", None, "ES256", "x5t#S256"),
    ("ec-trad", None, "ES256", "x5t#S256"),
]


@pytest.mark.parametrize("kind,alg_key,alg,thumb", CERT_CASES,
                         ids=[f"{c[0]}-{c[1] or 'default'}" for c in CERT_CASES])
def test_certificate_assertion_verified(fe, start_daemon, testca, kind, alg_key, alg, thumb):
    cred = testca.clients[kind]
    remember_key(cred.key)
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"certificate": cred.cert_pem, "alg": alg}})
    keys = {"assertion_alg": alg_key} if alg_key else {}
    d = start_daemon(identity_config(cert_identity(fe, cred, **keys),
                                     {"api": "api://test-app"}, ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 200, (r.body, fe.stats()["last_error"])
    st = fe.stats()
    assert st["issued"] == [r.json()["access_token"]]
    assert st["last_auth"] == "private_key_jwt"
    assert st["last_form"] == {"grant_type": "client_credentials", "client_id": CLIENT_ID,
                               "scope": "api://test-app/.default",
                               "client_assertion_type": ASSERTION_TYPE,
                               "client_assertion": "<redacted>"}
    header, claims = st["last_assertion"]["header"], st["last_assertion"]["claims"]
    assert header["alg"] == alg and header["typ"] == "JWT"
    assert thumb in header
    if thumb == "x5t#S256":
        assert "x5t" not in header  # SHA-1 thumbprints only with RS256
    assert "x5c" not in header
    assert claims["aud"] == fe.entra_url(TENANT)
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert 0 < claims["exp"] - claims["nbf"] <= 600
    assert abs(claims["nbf"] - time.time()) < 60


def test_certificate_send_x5c(fe, start_daemon, testca):
    cred = testca.clients["rsa-pkcs8"]
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"certificate": cred.cert_pem,
                                                     "require_x5c": True}})
    d = start_daemon(identity_config(cert_identity(fe, cred, send_x5c="yes"),
                                     {"api": "api://test-app"}, ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 200, (r.body, fe.stats()["last_error"])
    header = fe.stats()["last_assertion"]["header"]
    assert len(header["x5c"]) >= 1  # the fake checked x5c[0] is the registered certificate


def test_certificate_without_x5c_refused_where_required(fe, start_daemon, testca):
    """The fake really demands x5c when told to: the x5c test above is not vacuous."""
    cred = testca.clients["rsa-pkcs8"]
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"certificate": cred.cert_pem,
                                                     "require_x5c": True}})
    d = start_daemon(identity_config(cert_identity(fe, cred), {"api": "api://test-app"},
                                     ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 503 and "700027" in r.body.decode(), r.body


def test_certificate_jti_unique_across_refreshes(fe, start_daemon, testca):
    cred = testca.clients["rsa-pkcs8"]
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"certificate": cred.cert_pem}})
    d = start_daemon(identity_config(cert_identity(fe, cred), {"api": "api://test-app"},
                                     ca_file=testca.ca.cert))
    assert token(d).status == 200
    for n in range(2, 5):
        if n % 2:
            ctl = d.ctl("refresh", "api")
            assert ctl.returncode == 0, ctl.stderr
        else:
            assert d.request("POST", "/v1/refresh/api").status == 202
        # the next refresh only after the daemon holds this one's token: one in flight
        # would be joined, not repeated
        wait_for(lambda: len(fe.stats()["issued"]) >= n and
                 token(d).json()["access_token"] == fe.stats()["issued"][-1],
                 timeout=10, what=f"refresh {n}")
    st = fe.stats()
    # the fake refuses a replayed jti, so four tokens mean four fresh assertions
    assert len(st["issued"]) == 4 and st["by_status"] == {"200": 4}
    assert len(set(st["jtis"])) == 4
    latest = token(d).json()["access_token"]
    assert latest == st["issued"][-1]


def test_encrypted_key_refused_clearly(tmp_path, testca):
    cred = testca.clients["encrypted"]
    conf = tmp_path / "bearerd.conf"
    ident = {"source": "entra-certificate", "authority": "https://127.0.0.1:9", "tenant": TENANT,
             "client_id": CLIENT_ID, "certificate_file": cred.cert,
             "private_key_file": cred.key}
    conf.write_text(identity_config(ident, {"api": "api://test-app"}).replace(
        "@SOCKET@", str(tmp_path / "s.sock")))
    r = subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stderr
    assert "encrypted" in r.stderr.lower(), r.stderr
    assert f"{conf}:" in r.stderr and str(cred.key) in r.stderr, r.stderr


def test_key_not_matching_certificate_refused(tmp_path, testca):
    conf = tmp_path / "bearerd.conf"
    ident = {"source": "entra-certificate", "authority": "https://127.0.0.1:9", "tenant": TENANT,
             "client_id": CLIENT_ID, "certificate_file": testca.clients["rsa-pkcs8"].cert,
             "private_key_file": testca.clients["rsa-trad"].key}
    conf.write_text(identity_config(ident, {"api": "api://test-app"}).replace(
        "@SOCKET@", str(tmp_path / "s.sock")))
    r = subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1, r.stderr
    assert "match" in r.stderr.lower(), r.stderr


def test_world_readable_secret_file_refused(tmp_path):
    path = secret_file(tmp_path, "client-secret", "x")
    os.chmod(path, 0o644)
    conf = tmp_path / "bearerd.conf"
    ident = {"source": "entra-secret", "authority": "https://127.0.0.1:9", "tenant": TENANT,
             "client_id": CLIENT_ID, "client_secret_file": path}
    conf.write_text(identity_config(ident, {"api": "api://test-app"}).replace(
        "@SOCKET@", str(tmp_path / "s.sock")))
    r = subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1, r.stderr
    assert f"{conf}:" in r.stderr and str(path) in r.stderr, r.stderr


# -- entra-federated -----------------------------------------------------------------------------


# the AKS webhook injects the cloud's AAD endpoint with its trailing "/"
@pytest.mark.parametrize("slash", ["", "/"], ids=["host", "host-with-slash"])
def test_federated_from_workload_identity_environment(fe, start_daemon, tmp_path, testca,
                                                      slash):
    assertion = federated_jwt("current")
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"federated": assertion}})
    path = secret_file(tmp_path, "azure-identity-token", assertion)
    env = {"AZURE_CLIENT_ID": CLIENT_ID, "AZURE_TENANT_ID": TENANT,
           "AZURE_FEDERATED_TOKEN_FILE": str(path),
           "AZURE_AUTHORITY_HOST": fe.authority + slash}
    # nothing but the source: everything else comes from what the AKS webhook injects
    d = start_daemon(identity_config({"source": "entra-federated"}, {"api": "api://test-app"},
                                     ca_file=testca.ca.cert), env=env)
    r = token(d)
    assert r.status == 200, (r.body, fe.stats()["last_error"])
    st = fe.stats()
    assert st["last_auth"] == "federated" and st["federated_matches"] == [True]
    assert st["by_path"] == {f"/{TENANT}/oauth2/v2.0/token": 1}
    assert st["last_form"] == {"grant_type": "client_credentials", "client_id": CLIENT_ID,
                               "scope": "api://test-app/.default",
                               "client_assertion_type": ASSERTION_TYPE,
                               "client_assertion": "<redacted>"}


def test_federated_config_overrides_environment(fe, start_daemon, tmp_path, testca):
    assertion = federated_jwt("config")
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"federated": assertion}})
    path = secret_file(tmp_path, "token-from-config", assertion)
    env = {"AZURE_CLIENT_ID": "wrong-client", "AZURE_TENANT_ID": "wrong-tenant",
           "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "missing"),
           "AZURE_AUTHORITY_HOST": "https://127.0.0.1:9"}
    ident = {"source": "entra-federated", "authority": fe.authority, "tenant": TENANT,
             "client_id": CLIENT_ID, "federated_token_file": path}
    d = start_daemon(identity_config(ident, {"api": "api://test-app"}, ca_file=testca.ca.cert),
                     env=env)
    r = token(d)
    assert r.status == 200, (r.body, fe.stats()["last_error"])


def test_federated_expired_then_rotated_file_recovers(fe, start_daemon, tmp_path, testca):
    old, new = federated_jwt("expired"), federated_jwt("rotated")
    # Entra accepts only the new assertion: the old one is "not within its valid time range"
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"federated": new}})
    path = secret_file(tmp_path, "azure-identity-token", old)
    ident = {"source": "entra-federated", "authority": fe.authority, "tenant": TENANT,
             "client_id": CLIENT_ID, "federated_token_file": path}
    d = start_daemon(identity_config(ident, {"api": "api://test-app"}, ca_file=testca.ca.cert))
    r = token(d)
    assert r.status == 503, r.body
    assert "700024" in r.body.decode()
    assert "700024" in status_of(d)["last_error"]
    pid = d.proc.pid

    # the kubelet rotates the projected token (atomically, as its symlink swap is)
    tmp = tmp_path / "azure-identity-token.new"
    secret_file(tmp_path, tmp.name, new)
    os.replace(tmp, path)
    wait_for(lambda: token(d).status == 200, timeout=100, step=0.5,
             what="recovery after the federated token file was rotated")
    st = fe.stats()
    assert st["federated_matches"][0] is False and st["federated_matches"][-1] is True
    assert st["federated_matches"].count(True) == 1
    assert d.proc.pid == pid and d.proc.poll() is None
    assert status_of(d)["state"] == "valid"
