"""Per-audience caller checks (SO_PEERCRED) on the Unix socket."""

import os

from conftest import remember_token


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
