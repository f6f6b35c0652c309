"""Refresh, outages, throttling and bad configs, with short token lifetimes."""

import subprocess
import time

from conftest import BEARERD, imds_config, remember_token, wait_for

# 12 s tokens, refreshed at the latest 5 s before expiry, never handed out with < 3 s left
SHORT = dict(min_validity=3, refresh_margin=5)


def poll(d, seconds, step=0.2):
    """Requests the token every step seconds; returns (time, status, body, headers)."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r = d.get("/v1/token/api")
        body = r.json()
        if r.status == 200:
            remember_token(body["access_token"])
        out.append((time.monotonic(), r.status, body, r.headers))
        time.sleep(step)
    return out


def test_refreshed_before_expiry_without_gap(fake, start_daemon):
    fake.configure(lifetime=12)
    d = start_daemon(imds_config(fake, prefetch="yes", **SHORT))
    seen = poll(d, 20)
    assert all(s == 200 for _, s, _, _ in seen), [b for _, s, b, _ in seen if s != 200]
    assert all(b["expires_in"] > 3 for _, _, b, _ in seen)
    tokens = [b["access_token"] for _, _, b, _ in seen]
    # refreshed at ~7 s (half-life of 12 s minus up to 10 % jitter): at least two refreshes
    assert len(set(tokens)) >= 3
    # proactive: the fake was asked a handful of times, not once per request
    assert fake.stats()["requests"] <= 6


def test_outage_serves_last_good_token_then_503_then_recovers(fake, start_daemon):
    fake.configure(lifetime=12)
    d = start_daemon(imds_config(fake, **SHORT))
    good = d.get("/v1/token/api").json()
    remember_token(good["access_token"])
    t0 = time.monotonic()
    fake.configure(status=500, error_body='{"error":"unknown","error_description":"boom"}')
    seen = poll(d, 12)
    for t, status, body, headers in seen:
        if status == 200:
            # the valid token keeps being served, and only while it has > min_validity left
            assert body["access_token"] == good["access_token"]
            assert body["expires_in"] > 3
        else:
            assert status == 503
            assert int(headers["retry-after"]) >= 1
            assert "boom" in body["error_description"]
            assert t - t0 > 12 - 3 - 1.5
    assert seen[0][1] == 200 and seen[-1][1] == 503
    st = d.ctl("status").stdout
    assert "failed" in st and "boom" in st
    # the upstream returns: service recovers within the backoff cap (60 s)
    fake.configure(lifetime=12)
    t1 = time.monotonic()
    r = None
    while time.monotonic() - t1 < 65:
        r = d.get("/v1/token/api")
        if r.status == 200:
            break
        time.sleep(0.5)
    assert r.status == 200
    remember_token(r.json()["access_token"])
    assert r.json()["access_token"] != good["access_token"]


def test_429_retry_after_is_honoured(fake, start_daemon):
    fake.configure(status=429, retry_after=4,
                   error_body='{"error":"too_many_requests","error_description":"slow down"}')
    d = start_daemon(imds_config(fake))
    r = d.get("/v1/token/api")
    assert r.status == 503
    assert 3 <= int(r.headers["retry-after"]) <= 4
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.5:
        assert d.get("/v1/token/api").status == 503
        time.sleep(0.1)
    # nothing reached the upstream before Retry-After elapsed
    assert fake.stats()["requests"] == 1
    fake.configure(lifetime=3600)
    time.sleep(1.0)
    r = d.get("/v1/token/api")
    assert r.status == 200
    remember_token(r.json()["access_token"])
    assert fake.stats()["requests"] == 2


def test_same_token_again_does_not_storm(fake, start_daemon):
    fake.configure(lifetime=12, same_token=True)
    d = start_daemon(imds_config(fake, prefetch="yes", **SHORT))
    seen = poll(d, 15, step=0.1)
    assert any(s == 200 for _, s, _, _ in seen)
    # without a guard the daemon would ask again on every request near expiry
    assert fake.stats()["requests"] <= 15


def test_bad_config_refused_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[bearerd]\nsocket = /tmp/x.sock\nfrobnicate = 1\n"
                   '[identity "vm"]\nsource = azure-imds\nmin_validity = 3\n')
    r = subprocess.run([str(BEARERD), "-n", "-c", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{bad}:3:" in r.stderr
    assert f"{bad}:6:" in r.stderr
    # started for real, it refuses too, and says why
    r = subprocess.run([str(BEARERD), "-c", str(bad)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1 and f"{bad}:3:" in r.stderr
    good = tmp_path / "good.conf"
    good.write_text('[identity "d"]\nsource = dev\n')
    r = subprocess.run([str(BEARERD), "-n", "-c", str(good)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(BEARERD), "-n", "-c", str(tmp_path / "missing.conf")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "missing.conf" in r.stderr


def test_unreachable_upstream_cold_gives_503_not_a_hang(tmp_path, start_daemon):
    # nothing listens on port 9 of loopback
    class Nowhere:
        endpoint = "http://127.0.0.1:9/metadata/identity/oauth2/token"
    d = start_daemon(imds_config(Nowhere))
    t0 = time.monotonic()
    r = d.get("/v1/token/api")
    assert r.status == 503 and time.monotonic() - t0 < 5
    assert "retry-after" in r.headers
    assert r.json()["error"] == "temporarily_unavailable"


# -- Issue 11, finding 4: callers cannot make bearerd hammer the IdP --------------------------

def test_forced_refreshes_are_coalesced(fake, start_daemon):
    """30 POST /v1/refresh in 1.5 s made 30 upstream requests; now one, after 5 s."""
    d = start_daemon(imds_config(fake))
    first = d.get("/v1/token/api")
    t0 = time.monotonic()
    remember_token(first.json()["access_token"])
    assert fake.stats()["requests"] == 1
    answers = []
    for _ in range(30):
        r = d.request("POST", "/v1/refresh/api")
        answers.append((r.status, r.json()))
        time.sleep(0.05)
    assert all(st == 202 and b["status"] == "deferred" and 1 <= b["refresh_in"] <= 5
               for st, b in answers), answers
    assert fake.stats()["requests"] == 1
    # one fetch for all of them, CACHE_FORCED_INTERVAL_S (5 s) after the last one
    wait_for(lambda: fake.stats()["requests"] == 2, timeout=10, what="the refresh")
    assert time.monotonic() - t0 >= 4.5
    time.sleep(1)
    assert fake.stats()["requests"] == 2
    r = d.get("/v1/token/api")
    assert r.json()["access_token"] != first.json()["access_token"]
    remember_token(r.json()["access_token"])


def test_forced_refreshes_wait_for_a_permanent_errors_backoff(fake, start_daemon):
    """After a permanent 400, refreshes do not reach the upstream before its backoff ends."""
    fake.configure(status=400, error_body='{"error":"invalid_request",'
                                          '"error_description":"Identity not found"}')
    d = start_daemon(imds_config(fake))
    assert d.get("/v1/token/api").status == 503
    assert fake.stats()["requests"] == 1
    end = time.monotonic() + 1.5
    answers = []
    while time.monotonic() < end:
        r = d.request("POST", "/v1/refresh/api")
        answers.append((r.status, r.json()))
        time.sleep(0.05)
    assert len(answers) >= 20
    # deferred to the end of the backoff (60 s for a 4xx from IMDS)
    assert all(st == 202 and b["status"] == "deferred" and b["refresh_in"] >= 55
               for st, b in answers), answers[:3]
    assert fake.stats()["requests"] == 1
    assert d.ctl("refresh", "api").returncode == 0  # bearerctl: a 202 is not an error


def proxy_conf(api_port, proxy_port):
    return f"""[bearerd]
socket = @SOCKET@
log_level = debug

[identity "dev"]
source = dev
roles = Sample.Read

[audience "apim"]
identity = dev
resource = api://apim-demo

[proxy]
listen = 127.0.0.1:{proxy_port}

[route "demo"]
match = api.example.com
audience = apim
upstream = http://127.0.0.1:{api_port}
"""


def test_invalid_token_refresh_once_per_token(start_daemon, tmp_path):
    """A proxied API that always answers invalid_token: 50 requests made 50 token fetches in
    2.8 s.  Now the rejected token is refreshed once, and its successor never."""
    import http.client
    import json

    from test_proxy import ProtectedAPI, free_port

    api = ProtectedAPI(tmp_path, str(tmp_path / "bearerd.sock"))
    try:
        pp = free_port()
        d = start_daemon(proxy_conf(api.port, pp))
        remember_token(d.ctl("token", "apim").stdout.strip())
        # every token issued up to a day from now is "revoked"
        api.call("POST", f"/_fake/revoke?iat_le={int(time.time()) + 86400}")
        statuses = []
        for _ in range(50):
            c = http.client.HTTPConnection("127.0.0.1", pp, timeout=30)
            c.request("GET", "http://api.example.com/api/items")
            r = c.getresponse()
            body = r.read()
            c.close()
            statuses.append(r.status)
            assert b"invalid_token" in body or r.status == 200
        assert statuses == [401] * 50
        fetched = [l for l in d.logs().splitlines() if 'msg="token fetched"' in l]
        # the first token, and one refresh of it after its first rejection
        assert len(fetched) == 2, fetched
        assert "reason=forced" in fetched[1]
        remember_token(d.ctl("token", "apim").stdout.strip())
        st = json.loads(d.get("/v1/status").body)[0]
        assert st["fetches"] == 2
    finally:
        api.stop()
