"""The azure-imds and azure-appservice sources against the fake: 410 retried inside one
fetch, 429/5xx backoff with Retry-After, no retry on other 4xx, the 5-concurrent /
20-per-second limits under a burst, and App Service's protocol with each selector."""

import json
import secrets
import subprocess
import threading
import time
import urllib.parse

import pytest

from conftest import (APPSERVICE_SECRET, BEARERD, ROOT, appservice_config,
                      appservice_secret_file, imds_config, remember_token)


def token_log(fake):
    """The fake's token requests in arrival order: dicts with t, end, status, resource."""
    return sorted(fake.stats()["log"], key=lambda e: e["t"])


def get_until_200(d, path, timeout=30.0):
    """Asks until a 200 (a 504 only means the fetch goes on); returns every answer."""
    seen = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = d.get(path)
        seen.append(r)
        if r.status == 200:
            remember_token(r.json()["access_token"])
            return seen
        time.sleep(0.1)
    raise AssertionError(f"no 200 for {path}: {[(r.status, r.body) for r in seen[-3:]]}")


def status_of(d, resource="api://test-app"):
    r = d.get("/v1/status")
    assert r.status == 200
    return next(e for e in r.json() if e["resource"] == resource)


# -- azure-imds -----------------------------------------------------------------------


def test_imds_410_retried_inside_one_fetch(fake, start_daemon):
    fake.configure(sequence=[410, 410, 410, 200])
    d = start_daemon(imds_config(fake))
    seen = get_until_200(d, "/v1/token/api")
    # callers waited (504 after wait_timeout while the fetch went on), never saw the 410s
    assert all(r.status in (200, 504) for r in seen), [(r.status, r.body) for r in seen]
    log = token_log(fake)
    assert [e["status"] for e in log] == [410, 410, 410, 200]
    # 1 s doubling between tries, measured at the fake
    gaps = [b["t"] - a["t"] for a, b in zip(log, log[1:])]
    for gap, want in zip(gaps, (1.0, 2.0, 4.0)):
        assert gap >= want - 0.05, gaps
    # the cache saw one fetch and no failure
    st = status_of(d)
    assert st["state"] == "valid" and st["fetches"] == 1 and st["failures"] == 0, st
    assert "IMDS is updating" in d.logs()


def test_imds_429_retry_after_pauses_the_identity(fake, start_daemon):
    fake.configure(sequence=[{"status": 429, "retry_after": 3,
                              "error_body": '{"error":"too_many_requests",'
                                            '"error_description":"slow down"}'}])
    d = start_daemon(imds_config(fake))
    r = d.get("/v1/token/api")
    assert r.status == 503
    assert "slow down" in r.json()["error_description"]
    assert 2 <= int(r.headers["retry-after"]) <= 3
    # another resource of the same identity waits for Retry-After too, queued, not failed
    other = "api://other-" + str(time.monotonic())
    seen = get_until_200(d, "/v1/token?identity=vm&resource=" + urllib.parse.quote(other, ""))
    log = token_log(fake)
    assert log[0]["status"] == 429
    after = log[1:]
    assert after and all(e["t"] >= log[0]["end"] + 3 - 0.1 for e in after), log
    assert seen[-1].status == 200
    # and the throttled audience recovers once Retry-After has passed
    get_until_200(d, "/v1/token/api", timeout=15)
    assert all(e["t"] >= log[0]["end"] + 3 - 0.1 for e in token_log(fake)[1:])


def test_imds_500_retried_with_backoff(fake, start_daemon):
    fake.configure(status=500, error_body='{"error":"unknown","error_description":"boom"}')
    d = start_daemon(imds_config(fake))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 7:
        r = d.get("/v1/token/api")
        assert r.status == 503 and "boom" in r.json()["error_description"]
        time.sleep(0.2)
    log = token_log(fake)
    # retried by itself, but with at least 1 s between tries: not once per caller request
    assert 3 <= len(log) <= 7, [e["t"] - t0 for e in log]
    gaps = [b["t"] - a["end"] for a, b in zip(log, log[1:])]
    assert min(gaps) >= 0.95, gaps
    st = status_of(d)
    assert st["last_status"] == 500 and "boom" in st["last_error"]
    fake.configure()
    get_until_200(d, "/v1/token/api", timeout=70)


def test_imds_400_not_retried(fake, start_daemon):
    fake.configure(status=400, error_body='{"error":"invalid_request",'
                                          '"error_description":"Identity not found"}')
    d = start_daemon(imds_config(fake))
    r = d.get("/v1/token/api")
    assert r.status == 503
    assert "Identity not found" in r.json()["error_description"]
    assert int(r.headers["retry-after"]) >= 50
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3:
        r = d.get("/v1/token/api")
        assert r.status == 503 and "Identity not found" in r.json()["error_description"]
        time.sleep(0.25)
    assert fake.stats()["requests"] == 1
    st = d.ctl("status")
    assert st.returncode == 0 and "Identity not found" in st.stdout


@pytest.mark.parametrize("selector", [("client_id", "11111111-2222-3333-4444-555555555555"),
                                      ("object_id", "66666666-7777-8888-9999-000000000000"),
                                      ("msi_res_id", "/subscriptions/s/resourcegroups/g/providers/"
                                       "Microsoft.ManagedIdentity/userAssignedIdentities/u")])
def test_imds_selector_sent(fake, start_daemon, selector):
    conf = imds_config(fake).replace("source = azure-imds\n",
                                     f"source = azure-imds\n{selector[0]} = {selector[1]}\n")
    d = start_daemon(conf)
    get_until_200(d, "/v1/token/api")
    q = fake.stats()["last_query"]
    assert q[selector[0]] == selector[1] and q["api-version"] == "2018-02-01"
    assert not {"client_id", "object_id", "msi_res_id"} - {selector[0]} & set(q)


def window_max(times, width=1.0):
    """Most events in any half-open window [t, t + width)."""
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u < t + width) for i, t in enumerate(times)),
               default=0)


def test_imds_limits_under_a_burst(fake, start_daemon):
    n = 60
    fake.configure(delay=0.25)
    d = start_daemon(imds_config(fake))
    resources = [f"api://burst-{i}" for i in range(n)]
    results = {}

    def ask(res):
        path = "/v1/token?identity=vm&resource=" + urllib.parse.quote(res, "")
        results[res] = get_until_200(d, path, timeout=60)[-1].status

    threads = [threading.Thread(target=ask, args=(r,)) for r in resources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    # never dropped: every resource got its token, each from exactly one upstream request
    assert all(results.get(r) == 200 for r in resources), results
    st = fake.stats()
    assert sorted(st["by_resource"]) == sorted(resources)
    assert all(v == 1 for v in st["by_resource"].values())
    # at most 5 at a time (and the burst did use them), at most 20 in any second
    assert st["max_in_flight"] <= 5, st["max_in_flight"]
    assert st["max_in_flight"] >= 3
    starts = [e["t"] for e in st["log"]]
    assert window_max(starts) <= 20
    # queued, not refused: the burst was spread over about n / 20 seconds
    assert max(starts) - min(starts) >= (n - 20) / 20 * 0.9


# -- azure-appservice ------------------------------------------------------------------

SELECTORS = [None, ("client_id", "11111111-2222-3333-4444-555555555555"),
             ("principal_id", "66666666-7777-8888-9999-000000000000"),
             ("mi_res_id", "/subscriptions/s/resourcegroups/g/providers/"
              "Microsoft.ManagedIdentity/userAssignedIdentities/u")]


@pytest.mark.parametrize("selector", SELECTORS, ids=lambda s: s[0] if s else "system")
def test_appservice_happy_path(fake, start_daemon, tmp_path, selector):
    secret = appservice_secret_file(tmp_path)
    d = start_daemon(appservice_config(fake, secret_file=secret, selector=selector))
    r = get_until_200(d, "/v1/token/api")[-1]
    body = r.json()
    assert body["access_token"] in fake.stats()["issued"]
    assert 3500 < body["expires_in"] <= 3600  # from expires_on: App Service has no expires_in
    st = fake.stats()
    assert st["log"][-1]["path"] == "appservice"
    q = st["last_query"]
    assert q["api-version"] == "2019-08-01" and q["resource"] == "api://test-app"
    names = {"client_id", "principal_id", "mi_res_id", "object_id"}
    if selector is None:
        assert not names & set(q)
    else:
        assert q[selector[0]] == selector[1] and not (names - {selector[0]}) & set(q)
    headers = {k.lower() for k in st["last_headers"]}
    assert "x-identity-header" in headers and "metadata" not in headers


def test_appservice_from_environment(fake, start_daemon):
    env = {"IDENTITY_ENDPOINT": fake.base + "/msi/token", "IDENTITY_HEADER": APPSERVICE_SECRET}
    d = start_daemon(appservice_config(fake), env=env)
    get_until_200(d, "/v1/token/api")
    assert fake.stats()["by_status"] == {"200": 1}


def test_appservice_rotated_header_file_is_read_again(fake, start_daemon, tmp_path):
    secret = appservice_secret_file(tmp_path)
    d = start_daemon(appservice_config(fake, secret_file=secret))
    get_until_200(d, "/v1/token/api")
    # the platform rotates the secret: the next fetch uses the file's new content
    fake.configure(identity_header="rotated-secret")
    appservice_secret_file(tmp_path, "rotated-secret")
    r = d.request("POST", "/v1/refresh/api")
    assert r.status == 202
    wait_ok = time.monotonic() + 10
    while time.monotonic() < wait_ok and fake.stats()["by_status"].get("200", 0) < 2:
        time.sleep(0.05)
    assert fake.stats()["by_status"].get("200", 0) == 2, fake.stats()["by_status"]


def test_appservice_header_file_made_readable_is_refused(fake, start_daemon, tmp_path):
    secret = appservice_secret_file(tmp_path)
    d = start_daemon(appservice_config(fake, secret_file=secret))
    get_until_200(d, "/v1/token/api")
    secret.chmod(0o644)
    assert d.request("POST", "/v1/refresh/api").status == 202
    st = wait_for_status(d, lambda e: e["failures"] >= 1)
    assert "identity_header_file" in st["last_error"] and "other users" in st["last_error"]
    # nothing was sent with a secret others could have read
    assert fake.stats()["requests"] == 1
    assert APPSERVICE_SECRET not in d.logs() and APPSERVICE_SECRET not in st["last_error"]


def wait_for_status(d, pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = status_of(d)
        if pred(st):
            return st
        time.sleep(0.05)
    raise AssertionError(f"status never matched: {status_of(d)}")


def test_appservice_wrong_identity_header(fake, start_daemon, tmp_path):
    secret = appservice_secret_file(tmp_path, "not-the-platform-secret")
    d = start_daemon(appservice_config(fake, secret_file=secret))
    r = d.get("/v1/token/api")
    assert r.status == 503
    desc = r.json()["error_description"]
    assert "X-IDENTITY-HEADER" in desc and "not-the-platform-secret" not in desc
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3:
        assert d.get("/v1/token/api").status == 503
        time.sleep(0.25)
    # a permanent error: not hammered
    assert fake.stats()["requests"] == 1
    st = d.ctl("status")
    assert st.returncode == 0 and "X-IDENTITY-HEADER" in st.stdout
    assert "not-the-platform-secret" not in st.stdout
    assert status_of(d)["last_status"] == 401
    assert "not-the-platform-secret" not in d.logs()


def windows(secret, n=8):
    """Every n-byte piece of secret: none may appear anywhere a message goes."""
    return {secret[i:i + n] for i in range(len(secret) - n + 1)}


def leaks(text, secret):
    return any(w in text for w in windows(secret))


def test_appservice_echoed_identity_header_is_withheld(fake, start_daemon, tmp_path):
    """An upstream that echoes X-IDENTITY-HEADER in its error message: no piece of the
    value may reach the 503 body, the status or the log, even where bearerd cuts the
    message to length (the value straddles the cut at 400 bytes).  Nothing that may
    hold the value is ever handed to assert (pytest prints it)."""
    header = remember_token("echoed-" + secrets.token_hex(16))
    secret = appservice_secret_file(tmp_path, header)  # not the platform's: a 401
    prefix = "Unauthorized: X-IDENTITY-HEADER "
    fake.configure(error_message=prefix + "x" * (385 - len(prefix)) + "{header} is wrong")
    d = start_daemon(appservice_config(fake, secret_file=secret))
    r = d.get("/v1/token/api")
    assert r.status == 503
    assert fake.stats()["by_status"] == {"401": 1}  # the fake did echo it
    leaked = leaks(r.body.decode(), header)
    assert not leaked, "the identity header leaked into the 503 body"
    withheld = "withheld" in r.json()["error_description"]
    assert withheld, "the echoing message was not withheld"
    entry = status_of(d)
    assert entry["last_status"] == 401
    withheld = "withheld" in entry["last_error"]
    assert withheld, "last_error does not say the message was withheld"
    leaked = leaks(json.dumps(d.get("/v1/status").json()), header)
    assert not leaked, "the identity header leaked into /v1/status"
    ctl = d.ctl("status")
    leaked = leaks(ctl.stdout, header)
    assert ctl.returncode == 0
    assert not leaked, "the identity header leaked into bearerctl status"
    leaked = leaks(d.logs(), header)
    assert not leaked, "the identity header leaked into the log"


def test_appservice_example_config_validates(tmp_path):
    path = ROOT / "config" / "examples" / "appservice.conf"
    env = {"PATH": "/usr/bin:/bin", "IDENTITY_ENDPOINT": "http://127.0.0.1:41564/msi/token",
           "IDENTITY_HEADER": "x"}
    r = subprocess.run([str(BEARERD), "-n", "-c", str(path)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: ok"
    # outside App Service (no IDENTITY_* in the environment) it says what is missing, where
    r = subprocess.run([str(BEARERD), "-n", "-c", str(path)], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 1
    assert f"{path}:" in r.stderr and "IDENTITY_HEADER" in r.stderr
