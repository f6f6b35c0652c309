"""Readiness is a start-up gate that latches: /readyz and `bearerctl health` become ready once
every prefetch audience has held a valid token, and stay ready through an identity-provider
outage longer than a token's lifetime, so that such an outage does not take every pod out of
service at once.  /readyz?strict=1 and `bearerctl health --strict` keep the old meaning (every
prefetch audience holds a valid token now).  The loss of the token stays visible: in the log,
in /metrics and in `bearerctl status`."""

import re
import signal
import time

from conftest import imds_config, wait_for

# 16 s tokens, never handed out with 3 s or less left
SHORT = dict(min_validity=3, refresh_margin=5)
OUTAGE = dict(status=500, error_body='{"error":"unknown","error_description":"idp is down"}')


def ready(d, strict=False):
    r = d.get("/readyz?strict=1" if strict else "/readyz")
    return r.status, r.json()


def health(d, strict=False):
    r = d.ctl("health", *(["--strict"] if strict else []))
    return r.returncode, r.stdout + r.stderr


def gauge(d, name, **labels):
    text = d.get("/metrics").body.decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(r"^%s\{%s\} (\S+)$" % (re.escape(name), re.escape(want)), text, re.M)
    return float(m.group(1)) if m else None


def assert_not_ready(d, strict, reason):
    status, body = ready(d, strict)
    assert status == 503, body
    assert body["error"] == "not_ready" and reason in body["error_description"], body
    rc, out = health(d, strict)
    assert rc == 1 and "not_ready" in out and reason in out, out


def test_ready_latches_through_an_outage_strict_does_not(fake, start_daemon):
    fake.configure(**OUTAGE)
    d = start_daemon(imds_config(fake, prefetch="yes", **SHORT))

    # before the first token: neither is ready, and both say why
    wait_for(lambda: "idp is down" in d.ctl("status").stdout, what="the first failure")
    for strict in (False, True):
        assert_not_ready(d, strict, "audience api: ")
        assert_not_ready(d, strict, "idp is down")
    assert gauge(d, "bearerd_ready", mode="latched") == 0
    assert gauge(d, "bearerd_ready", mode="strict") == 0

    fake.configure(lifetime=16)
    assert d.ctl("refresh", "api").returncode == 0
    wait_for(lambda: ready(d)[0] == 200, what="readiness")
    assert health(d) == (0, "ready\n")
    assert health(d, strict=True) == (0, "ready\n")

    # a 20 s outage, longer than the token lives
    fake.configure(**OUTAGE)
    start, lost_at = time.monotonic(), None
    while time.monotonic() - start < 20:
        status, body = ready(d)
        assert status == 200, body
        if lost_at is None and ready(d, strict=True)[0] == 503:
            lost_at = time.monotonic() - start
        time.sleep(0.25)
    assert lost_at is not None and lost_at < 16, "strict readiness never saw the token go"
    assert health(d)[0] == 0
    assert_not_ready(d, True, "audience api: ")
    assert_not_ready(d, True, "idp is down")

    # the loss is visible: status, metrics, one log line
    st = d.ctl("status").stdout
    assert "failed" in st and "idp is down" in st
    assert gauge(d, "bearerd_ready", mode="latched") == 1
    assert gauge(d, "bearerd_ready", mode="strict") == 0
    assert gauge(d, "bearerd_token_expiry_seconds", audience="api") == -1
    assert d.logs().count('msg="no valid token left for a prefetch audience"') == 1
    assert d.get("/v1/token/api").status == 503

    # the upstream returns: strict readiness follows (the refresh waits for the end of the
    # backoff the outage built, at most 60 s)
    fake.configure(lifetime=16)
    assert d.ctl("refresh", "api").returncode == 0
    wait_for(lambda: ready(d, strict=True)[0] == 200, timeout=70, what="strict readiness again")
    assert health(d, strict=True)[0] == 0
    assert gauge(d, "bearerd_ready", mode="strict") == 1


def test_reload_adding_a_prefetch_audience_keeps_the_latch(fake, start_daemon):
    fake.configure(lifetime=3600)
    d = start_daemon(imds_config(fake, prefetch="yes"))
    wait_for(lambda: ready(d)[0] == 200, what="readiness")
    fake.configure(**OUTAGE)
    d.config.write_text(d.config.read_text() +
                        '\n[audience "new"]\nidentity = vm\nresource = api://new\nprefetch = yes\n')
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.logs(), what="the reload")
    wait_for(lambda: "idp is down" in d.ctl("status").stdout, what="the new audience to fail")
    # already serving: the new audience does not take the daemon out of service...
    assert ready(d)[0] == 200 and health(d)[0] == 0
    # ...but strict readiness names it
    assert_not_ready(d, True, "audience new: ")
    status, body = ready(d, strict=True)
    assert "audience api" not in body["error_description"]


def test_readyz_strict_parameter_is_checked(fake, start_daemon):
    d = start_daemon(imds_config(fake))
    assert ready(d)[0] == 200 and ready(d, strict=True)[0] == 200  # nothing to prefetch
    assert d.get("/readyz?strict=0").status == 200
    for bad in ("strict=yes", "strict=", "strict=1&strict=1", "strict=%00"):
        r = d.get("/readyz?" + bad)
        assert r.status == 400, bad
        assert r.json()["error"] == "invalid_request"
    assert d.get("/healthz").status == 200  # and the daemon goes on
    r = d.ctl("token", "api", "--strict")
    assert r.returncode == 2 and "takes no option --strict" in r.stderr


def test_latch_survives_a_reload_that_replaces_the_identity(fake, start_daemon):
    """The first token came only after start-up had stopped waiting for it (30 s) and
    nobody asked /readyz since: a reload that replaces the identity drops that token, and
    readiness still counts it as held (it latched before the entry was dropped)."""
    fake.configure(**OUTAGE)
    d = start_daemon(imds_config(fake, prefetch="yes"))
    wait_for(lambda: "reporting ready before every prefetch audience" in d.logs(), timeout=40,
             what="start-up to stop waiting")
    fake.configure(lifetime=3600)
    # the refresh waits for the end of the backoff that 30 s of failures built (at most 60 s)
    assert d.ctl("refresh", "api").returncode == 0
    wait_for(lambda: "token fetch recovered" in d.logs(), timeout=70, what="the first token")
    fake.configure(**OUTAGE)
    other = "client_id = 00000000-0000-0000-0000-0000000000aa\n"  # another identity
    d.config.write_text(d.config.read_text().replace("source = azure-imds\n",
                                                     "source = azure-imds\n" + other))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.logs(), what="the reload")
    assert "kept_identities=0" in d.logs()
    assert ready(d)[0] == 200 and health(d)[0] == 0
    assert_not_ready(d, True, "audience api: ")
