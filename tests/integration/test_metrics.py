"""GET /metrics: the Prometheus text exposition, parsed strictly and checked against traffic
whose counts the test knows (requests made, upstream answers scripted in the fake IMDS)."""

import math
import re

from conftest import imds_config, remember_token, wait_for

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"'
SAMPLE = re.compile(r"^(%s)(\{(?:%s)(?:,%s)*\})? (\S+)$" % (NAME, LABEL, LABEL))
BUCKETS = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"]


def unescape(v):
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def parse(text):
    """Strict parser for format 0.0.4: every sample belongs to a family announced by
    exactly one HELP and one TYPE line before it; families are contiguous; no duplicate
    series; values are floats.  Returns {family: {"type", "samples": {(name, labels): v}}}."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    families, current, done = {}, None, set()
    for line in text.split("\n")[:-1]:
        assert line, "no empty lines"
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(NAME, name), line
            assert name not in families, f"family {name} announced twice"
            if current is not None:
                done.add(current)
            families[name] = {"help": line.split(" ", 3)[3], "type": None, "samples": {}}
            current = name
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current and families[name]["type"] is None, line
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            families[name]["type"] = kind
            continue
        assert not line.startswith("#"), line
        m = SAMPLE.match(line)
        assert m, f"malformed sample line: {line!r}"
        name, labels_text, value = m.group(1), m.group(2) or "", m.group(m.lastindex)
        assert current is not None and families[current]["type"] is not None, line
        kind = families[current]["type"]
        allowed = {current}
        if kind == "histogram":
            allowed = {current + "_bucket", current + "_sum", current + "_count"}
        assert name in allowed, f"{name} outside its family block ({current})"
        labels = tuple((k, unescape(v)) for k, v in re.findall(LABEL, labels_text))
        assert len({k for k, _ in labels}) == len(labels), f"repeated label: {line}"
        v = float(value)
        if kind == "counter":
            assert v >= 0 and v == int(v), line
        key = (name, labels)
        assert key not in families[current]["samples"], f"duplicate series: {line}"
        families[current]["samples"][key] = v
    return families


def get_metrics(d):
    r = d.get("/metrics")
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.body.decode())


def value(fams, family, name=None, **labels):
    """The sample of family with exactly these labels, or None."""
    want = tuple(sorted(labels.items()))
    for (n, ls), v in fams.get(family, {"samples": {}})["samples"].items():
        if n == (name or family) and tuple(sorted(ls)) == want:
            return v
    return None


def histogram(fams, family, **labels):
    """Buckets (cumulative, in order), sum and count of one histogram series."""
    buckets = []
    for le in BUCKETS:
        v = value(fams, family, family + "_bucket", le=le, **labels)
        assert v is not None, f"missing bucket le={le}"
        buckets.append(v)
    assert buckets == sorted(buckets), "buckets must be cumulative"
    count = value(fams, family, family + "_count", **labels)
    total = value(fams, family, family + "_sum", **labels)
    assert buckets[-1] == count
    return buckets, total, count


def test_parser_is_strict():
    """The parser used below rejects what Prometheus would (so passing means something)."""
    ok = "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"v\\\"q\"} 3\n"
    assert value(parse(ok), "a_total", l='v"q') == 3
    for bad in ["a_total 1\n",  # no HELP/TYPE
                "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"v\"} 1\na_total{l=\"v\"} 2\n",
                "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"v\"\"} 1\n",
                "# HELP a_total x\n# TYPE a_total counter\nb_total 1\n",
                "# HELP a_total x\n# TYPE a_total counter\na_total -1\n"]:
        try:
            parse(bad)
        except (AssertionError, ValueError):
            continue
        raise AssertionError(f"accepted: {bad!r}")


def test_token_requests_counted(fake, start_daemon):
    d = start_daemon(imds_config(fake))
    n = 7
    for _ in range(n):
        r = d.get("/v1/token/api")
        assert r.status == 200
        remember_token(r.json()["access_token"])
    assert d.get("/v1/token/nope").status == 404
    assert d.get("/v1/token/api?min_validity=x").status == 400
    fams = get_metrics(d)
    assert fams["bearerd_token_requests_total"]["type"] == "counter"
    assert value(fams, "bearerd_token_requests_total", audience="api", result="ok") == n
    assert value(fams, "bearerd_token_requests_total", audience="", result="not_found") == 1
    assert value(fams, "bearerd_token_requests_total", audience="api",
                 result="bad_request") == 1
    # one upstream fetch for all of them, timed
    assert value(fams, "bearerd_upstream_requests_total", identity="vm", status="200") == 1
    _, total, count = histogram(fams, "bearerd_upstream_request_duration_seconds", identity="vm")
    assert count == 1 and 0 < total < 10
    assert value(fams, "bearerd_refreshes_total", identity="vm", reason="initial") == 1
    left = value(fams, "bearerd_token_expiry_seconds", audience="api")
    assert 3500 < left <= 3600
    assert value(fams, "bearerd_cache_entries") == 1
    assert value(fams, "bearerd_build_info", version=_version(d)) == 1
    # the connection this scrape came on
    assert value(fams, "bearerd_connections_open", listener="api") >= 1


def _version(d):
    import subprocess
    from conftest import BEARERD
    return subprocess.run([str(BEARERD), "-V"], capture_output=True, text=True).stdout.split()[1]


def test_upstream_failure_counted_with_status(fake, start_daemon):
    fake.configure(status=500, error_body='{"error":"unknown","error_description":"boom"}')
    d = start_daemon(imds_config(fake, prefetch="no"))
    r = d.get("/v1/token/api")
    assert r.status == 503
    fams = get_metrics(d)
    assert value(fams, "bearerd_upstream_requests_total", identity="vm", status="500") == 1
    assert value(fams, "bearerd_refresh_failures_total", identity="vm",
                 reason="upstream_error") == 1
    assert value(fams, "bearerd_token_requests_total", audience="api", result="error") == 1
    assert value(fams, "bearerd_token_expiry_seconds", audience="api") == -1
    # while backing off, requests fail fast without new upstream calls; then it recovers
    fake.configure(lifetime=3600)
    assert d.ctl("refresh", "api").returncode == 0
    wait_for(lambda: d.get("/v1/token/api").status == 200, what="recovery")
    fams = get_metrics(d)
    ups = fams["bearerd_upstream_requests_total"]["samples"]
    total_upstream = sum(v for (_, ls), v in ups.items() if ("identity", "vm") in ls)
    assert value(fams, "bearerd_upstream_requests_total", identity="vm", status="200") == 1
    assert fake.stats()["requests"] == total_upstream
    _, _, count = histogram(fams, "bearerd_upstream_request_duration_seconds", identity="vm")
    assert count == total_upstream
    assert value(fams, "bearerd_refreshes_total", identity="vm", reason="forced") == 1


def test_transport_failure_is_error(start_daemon, tmp_path):
    """Nothing listens on the endpoint: status "error", reason transport."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # a port nobody listens on

    class Dead:
        endpoint = f"http://127.0.0.1:{port}/metadata/identity/oauth2/token"

    d = start_daemon(imds_config(Dead()))
    assert d.get("/v1/token/api").status in (503, 504)
    fams = wait_for(lambda: (lambda f: f if value(f, "bearerd_upstream_requests_total",
                                                   identity="vm", status="error") else None)(
        get_metrics(d)), what="the failed upstream request to be counted")
    assert value(fams, "bearerd_refresh_failures_total", identity="vm", reason="transport") >= 1


def test_compat_requests_counted(fake, start_daemon, tmp_path):
    cfg = imds_config(fake) + "\n[compat]\nidentity = vm\nimds_listen = 127.0.0.1:0\n" \
        "dynamic_resources = yes\n"
    d = start_daemon(cfg)
    port = int(re.search(r'listener=imds address=\S+ port=(\d+)', d.logs()).group(1))
    import http.client
    for res in ["api://test-app", "api://test-app", "api://other"]:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", f"/metadata/identity/oauth2/token?api-version=2018-02-01&resource={res}",
                  headers={"Metadata": "true"})
        r = c.getresponse()
        body = r.read()
        assert r.status == 200, body
        c.close()
    fams = get_metrics(d)
    # a configured audience is labelled with its name, a dynamic resource with itself
    assert value(fams, "bearerd_token_requests_total", audience="api", result="ok") == 2
    assert value(fams, "bearerd_token_requests_total", audience="api://other", result="ok") == 1
    assert value(fams, "bearerd_connections_open", listener="imds") is not None
    assert value(fams, "bearerd_cache_entries") == 2


def test_metrics_method_and_no_token(fake, start_daemon):
    d = start_daemon(imds_config(fake))
    tok = d.get("/v1/token/api").json()["access_token"]
    remember_token(tok)
    r = d.request("POST", "/metrics")
    assert r.status == 405
    text = d.get("/metrics").body.decode()
    assert tok not in text
    assert not math.isnan(value(parse(text), "bearerd_token_expiry_seconds", audience="api"))


def test_fetch_events_logged_once(fake, start_daemon):
    """However many requests wait on a fetch, its outcome is one log line: fetched (info),
    failed (warning), recovered (info)."""
    import threading
    fake.configure(delay=1)
    d = start_daemon(imds_config(fake, wait_timeout=10))

    def burst(path="/v1/token/api", n=20):
        statuses = []
        ts = [threading.Thread(target=lambda: statuses.append(d.get(path).status))
              for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        return statuses

    assert burst() == [200] * 20
    lines = d.logs().splitlines()
    fetched = [l for l in lines if 'msg="token fetched"' in l]
    assert len(fetched) == 1 and fetched[0].startswith("level=info "), fetched
    assert "reason=initial" in fetched[0]
    # a failing forced refresh: one warning
    fake.configure(delay=1, status=500, error_body='{"error":"unknown"}')
    assert d.ctl("refresh", "api").returncode == 0
    wait_for(lambda: 'msg="token fetch failed"' in d.logs(), what="the failure")
    # recovery after the backoff (at most 1 s for a first failure)
    fake.configure(lifetime=3600)
    assert d.ctl("refresh", "api").returncode == 0
    wait_for(lambda: 'msg="token fetch recovered"' in d.logs(), what="the recovery")
    lines = d.logs().splitlines()
    failed = [l for l in lines if 'msg="token fetch failed"' in l]
    recovered = [l for l in lines if 'msg="token fetch recovered"' in l]
    assert len(failed) == 1 and failed[0].startswith("level=warning "), failed
    assert len(recovered) == 1 and recovered[0].startswith("level=info "), recovered
    # and a burst of cold requests that fail: one line for all of them
    d2_lines = len([l for l in lines if 'msg="token fetch failed"' in l])
    fake.configure(delay=1, status=500, error_body='{"error":"unknown"}')
    assert burst("/v1/token?resource=api://cold&identity=vm") == [503] * 20
    failed = [l for l in d.logs().splitlines() if 'msg="token fetch failed"' in l]
    assert len(failed) == d2_lines + 1


def test_metrics_listen_serves_metrics_only(fake, start_daemon):
    """[bearerd] metrics_listen: a TCP listener for scrapers with /metrics and nothing else;
    the API's token routes are not reachable there."""
    import http.client
    cfg = imds_config(fake).replace("[bearerd]\n", "[bearerd]\nmetrics_listen = 127.0.0.1:0\n")
    d = start_daemon(cfg)
    port = int(re.search(r'msg="metrics listening" address=\S+ port=(\d+)', d.logs()).group(1))
    tok = d.get("/v1/token/api").json()["access_token"]
    remember_token(tok)

    def get(method, path):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request(method, path)
        r = c.getresponse()
        out = r.status, r.read().decode()
        c.close()
        return out

    status, text = get("GET", "/metrics")
    assert status == 200 and tok not in text
    fams = parse(text)
    assert value(fams, "bearerd_token_requests_total", audience="api", result="ok") == 1
    assert value(fams, "bearerd_connections_open", listener="metrics") == 1
    for path in ("/v1/token/api", "/v1/token?resource=api%3A%2F%2Ftest-app", "/v1/status",
                 "/v1/dev/jwks.json", "/healthz"):
        status, body = get("GET", path)
        assert status == 404 and tok not in body, (path, status)
    assert get("POST", "/metrics")[0] == 405
    assert fake.stats()["requests"] == 1  # nothing on the TCP listener fetched a token


def test_metrics_listen_loopback_unless_allowed(fake, start_daemon, tmp_path):
    import subprocess
    from conftest import BEARERD
    conf = tmp_path / "m.conf"
    text = imds_config(fake).replace("@SOCKET@", str(tmp_path / "s.sock"))
    conf.write_text(text.replace("[bearerd]\n", "[bearerd]\nmetrics_listen = 0.0.0.0:9464\n"))
    r = subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 1 and f"{conf}:2: metrics_listen: 0.0.0.0:9464 is not a loopback" \
        in r.stderr, r.stderr
    conf.write_text(text.replace("[bearerd]\n", "[bearerd]\nmetrics_listen = 0.0.0.0:9464\n"
                                 "metrics_allow_non_loopback = yes\n"))
    r = subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
