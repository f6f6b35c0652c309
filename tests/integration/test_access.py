"""Per-audience caller checks (SO_PEERCRED) on the Unix socket, the rules for dynamic
resources and aliased audiences (issue 11, findings 2, 10 and 16), as another uid."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

import pytest

from conftest import BEARERD, Daemon, SEEN_TOKENS, remember_token


def config(fake):
    return f"""[bearerd]
socket = @SOCKET@
socket_mode = 0600

[identity "vm"]
source = azure-imds
endpoint = {fake.endpoint}
dynamic_resources = no

[audience "mine"]
identity = vm
resource = api://mine
allow_uids = {os.getuid()}

[audience "theirs"]
identity = vm
resource = api://theirs
allow_uids = 65534
allow_gids = 65534
"""


def test_allow_uids(fake, start_daemon):
    d = start_daemon(config(fake))
    r = d.get("/v1/token/mine")
    assert r.status == 200
    remember_token(r.json()["access_token"])
    r = d.get("/v1/token/theirs")
    assert r.status == 403 and r.json()["error"] == "forbidden"
    # asking by resource does not get around the audience's rule
    r = d.get("/v1/token?resource=api%3A%2F%2Ftheirs&identity=vm")
    assert r.status == 403
    assert d.request("POST", "/v1/refresh/theirs").status == 403
    # nothing was fetched for the refused audience
    assert fake.stats()["by_resource"].get("api://theirs", 0) == 0
    assert d.ctl("token", "theirs").returncode == 1


def test_socket_mode(fake, start_daemon):
    d = start_daemon(config(fake))
    assert os.stat(d.socket).st_mode & 0o777 == 0o600


def proc_owner(pid):
    return os.stat(f"/proc/{pid}/environ").st_uid


def test_not_dumpable():
    """PR_SET_DUMPABLE 0: no core dumps, and /proc/PID (memory, environ) belongs to root
    even though bearerd runs as another user; a plain process of that user owns its own."""
    import pathlib
    import shutil
    import subprocess
    import tempfile
    import time

    from conftest import BEARERD, wait_for

    nobody = 65534
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="bearerd-dumpable-"))
    os.chmod(tmp_path, 0o755)  # pytest's own tmp dirs are private to root
    rundir = tmp_path / "run"
    rundir.mkdir()
    os.chown(rundir, nobody, nobody)
    conf = tmp_path / "bearerd.conf"
    conf.write_text(f"""[bearerd]
socket = {rundir}/bearerd.sock

[identity "dev"]
source = dev
""")
    drop = ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups"]
    control = subprocess.Popen(drop + ["sleep", "30"])
    proc = subprocess.Popen(drop + [str(BEARERD), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (rundir / "bearerd.sock").exists() or proc.poll() is not None,
                 what="bearerd to listen")
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
        assert proc_owner(control.pid) == nobody  # the check can tell
        assert proc_owner(proc.pid) == 0
    finally:
        control.kill()
        proc.terminate()
        proc.wait(10)
        control.wait(10)
        shutil.rmtree(tmp_path)


# -- Issue 11, finding 2: the per-user ACL bypassed by respelling the resource ----------------
#
# Every request below is made as nobody (setpriv), over the socket or the IMDS-compatible
# listener, the way the review did it.

NOBODY = 65534

# payroll.admin%20 and the Entra spellings of api://secret the review got tokens for
RESPELLINGS = ["payroll.admin ", "payroll.admin/", "PAYROLL.admin", "api://secret/",
               "API://secret", "api://SECRET", "api://secret/.default"]

AS_UID = r"""
import json, socket, sys
kind, where, method, path = sys.argv[1:5]
if kind == "unix":
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(where)
    host = "localhost"
else:
    host, port = where.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=20)
extra = "".join(h + "\r\n" for h in sys.argv[5:])
s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n"
          f"Content-Length: 0\r\n\r\n".encode())
d = b""
while True:
    c = s.recv(65536)
    if not c:
        break
    d += c
head, _, body = d.partition(b"\r\n\r\n")
print(json.dumps({"status": int(head.split(b" ", 2)[1]), "body": body.decode()}))
"""


def as_uid(uid, kind, where, path, method="GET", headers=()):
    """One request as another uid: (status, body)."""
    r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                        sys.executable, "-c", AS_UID, kind, where, method, path, *headers],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    if '"access_token"' in out["body"]:
        remember_token(json.loads(out["body"])["access_token"])
    return out["status"], out["body"]


@pytest.fixture
def open_tmp():
    """A directory other users can traverse, so nobody reaches the socket."""
    d = Path(tempfile.mkdtemp(prefix="bd-acc."))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def open_daemon(open_tmp):
    started = []

    def start(text):
        d = Daemon(open_tmp, text)
        started.append(d)
        return d

    yield start
    for d in started:
        rc = d.stop()
        log = d.log_path.read_text()
        assert not any(t in log for t in SEEN_TOKENS), "a token appeared in bearerd's log"
        assert rc == 0, log


def check(tmp, text):
    """bearerd -n on text: (exit code, stderr), with the file's name for FILE:LINE."""
    conf = tmp / "check.conf"
    conf.write_text(text.replace("@SOCKET@", str(tmp / "check.sock")))
    r = subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30)
    return r.returncode, r.stderr.replace(str(conf), "FILE")


def q(resource):
    return urllib.parse.quote(resource, safe="")


def imds_payroll(fake, dynamic_allow="", compat="", dynamic="yes"):
    return f"""[bearerd]
socket = @SOCKET@
socket_mode = 0666
log_level = debug

[identity "vm"]
source = azure-imds
endpoint = {fake.endpoint}
dynamic_resources = {dynamic}
{dynamic_allow}
[audience "payroll"]
identity = vm
resource = payroll.admin
allow_uids = root
{compat}"""


def dev_secret(dynamic_allow=""):
    return f"""[bearerd]
socket = @SOCKET@
socket_mode = 0666
log_level = debug

[identity "dev"]
source = dev
roles = Sample.Read
dynamic_resources = yes
{dynamic_allow}
[audience "secret"]
identity = dev
resource = api://secret
allow_uids = root
"""


def test_respelled_resource_needs_a_rule(fake, open_tmp):
    """The review's configs (dynamic resources beside a restricted audience) are refused."""
    for text in (imds_payroll(fake), dev_secret()):
        rc, err = check(open_tmp, text)
        assert rc == 1, err
        assert re.search(r"^FILE:9: dynamic_resources: identity '(vm|dev)' has the restricted "
                         r"audience '(payroll|secret)' \(line 11\);.*set dynamic_allow_uids or "
                         r"dynamic_allow_gids", err, re.M), err
    # a rule wider than the audience's is refused too, on its line
    rc, err = check(open_tmp, imds_payroll(fake, "dynamic_allow_uids = root nobody\n"))
    assert rc == 1
    assert "FILE:10: dynamic_allow_uids: uid 65534 is not in allow_uids of audience " \
           "'payroll' (line 12)" in err, err
    rc, err = check(open_tmp, imds_payroll(fake, "dynamic_allow_uids = root\n"))
    assert rc == 0, err


@pytest.mark.parametrize("source", ["imds", "dev"])
def test_respelled_resource_refused_on_the_socket(fake, open_daemon, source):
    """As nobody, no spelling of the restricted resource yields a token on the socket."""
    text = (imds_payroll(fake, "dynamic_allow_uids = root\n") if source == "imds"
            else dev_secret("dynamic_allow_uids = root\n"))
    d = open_daemon(text)
    aud, exact = ("payroll", "payroll.admin") if source == "imds" else ("secret", "api://secret")
    assert as_uid(NOBODY, "unix", d.socket, f"/v1/token/{aud}")[0] == 403
    assert as_uid(NOBODY, "unix", d.socket, f"/v1/token?resource={q(exact)}")[0] == 403
    for res in RESPELLINGS:
        st, body = as_uid(NOBODY, "unix", d.socket, f"/v1/token?resource={q(res)}")
        assert st == 403, (res, body)
        assert "access_token" not in body
        assert json.loads(body)["error"] == "forbidden"
    assert as_uid(NOBODY, "unix", d.socket, f"/v1/refresh/{aud}", "POST")[0] == 403
    # nothing was fetched on nobody's behalf
    if source == "imds":
        assert fake.stats()["requests"] == 0
    assert '"resource":' not in as_uid(NOBODY, "unix", d.socket, "/v1/status")[1]
    # root, whom every restricted audience allows, still may
    r = d.get(f"/v1/token?resource={q(RESPELLINGS[0] if source == 'imds' else 'API://secret')}")
    assert r.status == 200, r.body
    remember_token(r.json()["access_token"])


IMDS_Q = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource="


def compat_section(port, dynamic="no", resources=None):
    text = f"\n[compat]\nidentity = vm\nimds_listen = 127.0.0.1:{port}\n" \
           f"dynamic_resources = {dynamic}\n"
    return text + (f"resources = {resources}\n" if resources else "")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_respelled_resource_refused_on_the_imds_listener(fake, open_tmp, open_daemon):
    port = free_port()
    allow = "dynamic_allow_uids = root\n"
    # compat dynamic resources beside a restricted audience: refused, TCP callers are alike
    rc, err = check(open_tmp, imds_payroll(fake, allow, compat_section(port, "yes")))
    assert rc == 1
    assert "FILE:20: dynamic_resources: the compat listeners may answer for identity 'vm', " \
           "which has the restricted audience 'payroll' (line 12)" in err, err
    # so is an allow-listed resource that names its API
    rc, err = check(open_tmp, imds_payroll(fake, allow, compat_section(port, "no",
                                                                       "payroll.admin/")))
    assert rc == 1 and "FILE:21: resources: 'payroll.admin/' names the API of the restricted " \
                       "audience 'payroll'" in err, err
    # what is accepted: no spelling gets a token, whoever asks
    d = open_daemon(imds_payroll(fake, allow, compat_section(port)))
    where = f"127.0.0.1:{port}"
    st, body = as_uid(NOBODY, "tcp", where, IMDS_Q + "payroll.admin", headers=["Metadata: true"])
    assert st == 403 and "access_token" not in body
    for res in RESPELLINGS:
        st, body = as_uid(NOBODY, "tcp", where, IMDS_Q + q(res), headers=["Metadata: true"])
        assert st == 400 and "invalid_resource" in body, (res, st, body)
    assert fake.stats()["requests"] == 0
    assert d.get("/healthz").status == 200


# -- Issue 11, finding 10: two audiences, one token --------------------------------------------

def test_aliased_audiences_with_other_rules_refused(fake, open_tmp):
    base = imds_payroll(fake, "; no dynamic resources\n", dynamic="no")
    for alias in ("payroll.admin", "Payroll.Admin/"):
        rc, err = check(open_tmp, base + f"\n[audience \"open\"]\nidentity = vm\n"
                                         f"resource = {alias}\n")
        assert rc == 1
        assert "FILE:17: audience 'open': gets the same token as audience 'payroll' (line 12)" \
               in err, err
    # the same rules: one entry, two names, no leak
    rc, err = check(open_tmp, base + "\n[audience \"also\"]\nidentity = vm\n"
                                     "resource = payroll.admin\nallow_uids = 0\n")
    assert rc == 0, err


# -- Issue 11, finding 16: what /v1/status and /v1/compat/env tell other users -----------------

def test_status_shows_a_caller_only_what_it_may_use(fake, open_daemon):
    text = f"""[bearerd]
socket = @SOCKET@
socket_mode = 0666
log_level = debug

[identity "vm"]
source = azure-imds
endpoint = {fake.endpoint}
dynamic_resources = yes
dynamic_allow_uids = root

[identity "open"]
source = dev
dynamic_resources = yes

[audience "payroll"]
identity = vm
resource = payroll.admin
allow_uids = root

[audience "public"]
identity = open
resource = api://public
"""
    d = open_daemon(text)
    for path in ("/v1/token/payroll", "/v1/token/public",
                 "/v1/token?resource=api%3A%2F%2Froots-own&identity=vm"):
        r = d.get(path)
        assert r.status == 200, (path, r.body)
        remember_token(r.json()["access_token"])
    st, body = as_uid(NOBODY, "unix", d.socket, "/v1/token?resource=api%3A%2F%2Fmine&identity=open")
    assert st == 200
    seen = {e["resource"] for e in d.get("/v1/status").json()}
    assert seen == {"payroll.admin", "api://public", "api://roots-own", "api://mine"}
    st, body = as_uid(NOBODY, "unix", d.socket, "/v1/status")
    assert st == 200
    assert {e["resource"] for e in json.loads(body)} == {"api://public", "api://mine"}


def test_compat_env_restricted_by_env_allow(fake, open_daemon, open_tmp):
    port = free_port()
    text = f"""[bearerd]
socket = @SOCKET@
socket_mode = 0666

[identity "vm"]
source = azure-imds
endpoint = {fake.endpoint}

[compat]
appservice_listen = 127.0.0.1:{port}
appservice_secret_file = {open_tmp}/identity-header
"""
    d = open_daemon(text)
    secret = (open_tmp / "identity-header").read_text().strip()
    SEEN_TOKENS.add(secret)  # from now on no log line may hold it either
    # without env_allow_*: any socket user (see README, "Security model")
    st, body = as_uid(NOBODY, "unix", d.socket, "/v1/compat/env")
    assert st == 200 and json.loads(body)["IDENTITY_HEADER"] == secret
    d.stop()
    (open_tmp / "bearerd.conf").unlink()
    d = open_daemon(text + "env_allow_uids = root\n")
    st, body = as_uid(NOBODY, "unix", d.socket, "/v1/compat/env")
    assert st == 403 and secret not in body
    assert json.loads(body)["error"] == "forbidden"
    r = d.get("/v1/compat/env")
    assert r.status == 200 and r.json()["IDENTITY_HEADER"] == secret
