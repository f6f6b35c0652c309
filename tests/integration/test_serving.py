"""A token from the fake IMDS reaches every client byte for byte, once."""

import asyncio
import json
import subprocess
import time

from conftest import BEARER_GET, BEARERCTL, imds_config, remember_token


def test_token_reaches_every_client_byte_for_byte(fake, start_daemon):
    d = start_daemon(imds_config(fake))
    ctl = d.ctl("token", "api")
    assert ctl.returncode == 0, ctl.stderr
    tok = remember_token(ctl.stdout.rstrip("\n"))
    issued = fake.stats()["issued"]
    assert issued == [tok]

    curl = subprocess.run(["curl", "-sS", "--unix-socket", d.socket,
                           "http://localhost/v1/token/api"], capture_output=True, text=True)
    assert curl.returncode == 0, curl.stderr
    body = json.loads(curl.stdout)
    assert body["access_token"] == tok
    assert body["token_type"] == "Bearer"
    assert body["resource"] == "api://test-app"
    assert body["audience"] == "api"
    assert 3590 <= body["expires_in"] <= 3600
    assert isinstance(body["expires_on"], int)

    plain = d.get("/v1/token/api", {"Accept": "text/plain"})
    assert plain.status == 200 and plain.body.decode() == tok
    assert plain.headers["content-type"].startswith("text/plain")

    lib = subprocess.run([str(BEARER_GET), "api"], capture_output=True, text=True,
                         env=d.env, timeout=30)
    assert lib.returncode == 0, lib.stderr
    assert lib.stdout.splitlines()[0] == tok
    assert int(lib.stdout.splitlines()[1]) == body["expires_on"]

    hdr = d.ctl("header", "api")
    assert hdr.stdout == f"Authorization: Bearer {tok}\n"
    # one upstream request served all of them
    assert fake.stats()["requests"] == 1
    q = fake.stats()["last_query"]
    assert q["resource"] == "api://test-app" and q["api-version"] == "2018-02-01"


def test_upstream_request_shape(fake, start_daemon):
    d = start_daemon(imds_config(fake, resource="https://vault.azure.net"))
    assert d.get("/v1/token/api").status == 200
    st = fake.stats()
    headers = {k.lower(): v for k, v in st["last_headers"].items()}
    assert headers["metadata"] == "true"
    assert st["last_query"] == {"api-version": "2018-02-01", "resource": "https://vault.azure.net"}


def test_thousand_cold_requests_one_upstream_request(fake, start_daemon):
    fake.configure(delay=1.0)
    # one uid, 1000 connections at once: over max_connections_per_uid's default (256)
    d = start_daemon(imds_config(fake).replace("[bearerd]\n",
                                               "[bearerd]\nmax_connections_per_uid = 0\n"))

    async def one():
        r, w = await asyncio.open_unix_connection(d.socket)
        w.write(b"GET /v1/token/api HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n"
                b"Connection: close\r\n\r\n")
        await w.drain()
        data = await r.read()
        w.close()
        return data

    async def many():
        return await asyncio.gather(*(one() for _ in range(1000)))

    answers = asyncio.run(many())
    bodies = set()
    for a in answers:
        head, _, body = a.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        bodies.add(body)
    assert len(bodies) == 1
    remember_token(bodies.pop().decode())
    assert fake.stats()["requests"] == 1


def test_dynamic_resource_and_status(fake, start_daemon):
    d = start_daemon(imds_config(fake))
    r = d.get("/v1/token?resource=https%3A%2F%2Fstorage.azure.com%2F")
    assert r.status == 200, r.body
    body = r.json()
    remember_token(body["access_token"])
    assert body["resource"] == "https://storage.azure.com/"
    assert body["audience"] is None
    st = d.get("/v1/status")
    assert st.status == 200
    entries = st.json()
    assert body["access_token"].encode() not in st.body
    dyn = [e for e in entries if e["resource"] == "https://storage.azure.com/"]
    assert dyn and dyn[0]["state"] == "valid" and dyn[0]["identity"] == "vm"
    assert dyn[0]["source"] == "azure-imds"
    out = d.ctl("status")
    assert out.returncode == 0
    assert "storage.azure.com" in out.stdout and body["access_token"] not in out.stdout


def test_api_errors(fake, start_daemon):
    d = start_daemon(imds_config(fake))
    r = d.get("/v1/token/nope")
    assert r.status == 404 and r.json()["error"] == "not_found"
    r = d.get("/v1/token/api?min_validity=abc")
    assert r.status == 400 and r.json()["error"] == "invalid_request"
    r = d.get("/v1/token?resource=a&resource=b")
    assert r.status == 400
    r = d.get("/v1/token")
    assert r.status == 400
    r = d.request("DELETE", "/v1/token/api")
    assert r.status == 405
    r = d.get("/nothing/here")
    assert r.status == 404
    r = d.request("POST", "/v1/refresh/api")
    assert r.status == 202
    # the daemon still serves after all of that
    assert d.get("/v1/token/api").status == 200
    remember_token(d.get("/v1/token/api", {"Accept": "text/plain"}).body.decode())
    # bearerctl's exit codes: 1 for an error answer, 2 for usage, 3 for no daemon
    assert d.ctl("token", "nope").returncode == 1
    assert d.ctl("frobnicate").returncode == 2
    gone = subprocess.run([str(BEARERCTL), "-s", str(d.tmp / "absent.sock"), "token", "api"],
                          capture_output=True)
    assert gone.returncode == 3


def test_min_validity_parameter(fake, start_daemon):
    fake.configure(lifetime=1000)
    d = start_daemon(imds_config(fake, min_validity=60, refresh_margin=100))
    first = d.get("/v1/token/api").json()
    t_first = time.monotonic()
    remember_token(first["access_token"])
    assert fake.stats()["requests"] == 1
    time.sleep(2)
    # the cached token has about 998 s left: asking for 999 may fetch a fresh one, but at most
    # once every 5 s (CACHE_FORCED_INTERVAL_S): a caller cannot make bearerd hammer the IdP
    for _ in range(20):
        r = d.get("/v1/token/api?min_validity=999")
        assert r.status == 503 and 1 <= int(r.headers["retry-after"]) <= 5, r.body
        assert r.json()["error"] == "temporarily_unavailable"
    assert fake.stats()["requests"] == 1
    time.sleep(max(0, t_first + 5.5 - time.monotonic()))
    r = d.get("/v1/token/api?min_validity=999")
    assert r.status == 200, r.body
    second = r.json()
    remember_token(second["access_token"])
    assert second["access_token"] != first["access_token"]
    assert fake.stats()["requests"] == 2
    # more than any token of this audience has lived (issue 11, finding 4: 40 requests made
    # 40 fetches): a clear 400 at once, never a fetch and never a short token
    for minv in [2000, 31000000] * 20:
        r = d.get(f"/v1/token/api?min_validity={minv}")
        assert r.status == 400, r.body
        assert r.json()["error"] == "invalid_request"
        assert "access_token" not in r.json()
    assert fake.stats()["requests"] == 2
    # the token itself keeps serving
    assert d.get("/v1/token/api").json()["access_token"] == second["access_token"]
