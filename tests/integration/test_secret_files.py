"""Which secret files and configuration files bearerd accepts (daemon/secret.c), seen the
way an operator sees it: bearerd -n's FILE:LINE messages, a reload, and a token served
through a Kubernetes secret volume's symbolic links.  Runs as root: other owners and
groups come from chown."""

import os
import signal
import subprocess

import pytest

from conftest import BEARERD, identity_config, remember_secret, remember_token, wait_for

TENANT = "0a1b2c3d-tenant"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
OTHER = 4242  # a uid and gid nobody on the machine has


def check(conf):
    """bearerd -n: (exit status, stderr)."""
    r = subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30)
    return r.returncode, r.stderr


def secret_config(tmp_path, secret_path, authority="https://127.0.0.1:9", ca=None):
    ident = {"source": "entra-secret", "authority": authority, "tenant": TENANT,
             "client_id": CLIENT_ID, "client_secret_file": secret_path}
    conf = tmp_path / "bearerd.conf"
    conf.write_text(identity_config(ident, {"api": "api://test-app", "later": "api://later"},
                                    ca_file=ca).replace("@SOCKET@", str(tmp_path / "bearerd.sock")))
    return conf


def private(path, text="s3cret", mode=0o600, gid=None):
    path.write_text(text)
    os.chmod(path, mode)
    if gid is not None:
        os.chown(path, -1, gid)
    return path


def key_line(conf):
    return next(i for i, l in enumerate(conf.read_text().splitlines(), 1)
                if l.startswith("client_secret_file"))


def test_group_readable_secret_is_refused_unless_the_group_is_bearerds(tmp_path):
    """ssh's rule: other members of the file's group could read it."""
    s = private(tmp_path / "client-secret", mode=0o640, gid=OTHER)
    conf = secret_config(tmp_path, s)
    rc, err = check(conf)
    assert rc == 1
    assert err == (f"{conf}:{key_line(conf)}: client_secret_file: '{s}' is readable by its "
                   f"group (gid {OTHER}, mode 0640), which is not bearerd's own "
                   f"(gid {os.getegid()}): chmod g-r it, or give it bearerd's group\n"), err
    # bearerd's own group (what a secret made for it with chgrp has), or no group access
    os.chown(s, -1, os.getegid())
    assert check(conf) == (0, "")
    os.chown(s, -1, OTHER)
    os.chmod(s, 0o600)
    assert check(conf) == (0, "")


def test_symlink_to_shadow_is_refused(tmp_path):
    """The review's case: client_secret_file a symbolic link to /etc/shadow (root:shadow
    0640 on Debian).  And a link another user made is refused whatever it points to."""
    st = os.stat("/etc/shadow")
    assert st.st_mode & 0o040 and st.st_gid != os.getegid(), \
        "expected /etc/shadow to be readable by a group of its own (Debian)"
    link = tmp_path / "client-secret"
    link.symlink_to("/etc/shadow")
    conf = secret_config(tmp_path, link)
    rc, err = check(conf)
    assert rc == 1 and f"'{link}' is readable by its group (gid {st.st_gid}, mode 0640)" in err, err
    # a link by another user to a file that would pass on its own
    good = private(tmp_path / "good")
    link.unlink()
    link.symlink_to(good)
    assert check(conf) == (0, "")
    os.lchown(link, OTHER, OTHER)
    rc, err = check(conf)
    assert rc == 1 and (f"'{link}' goes through a symbolic link ('client-secret') owned by "
                        f"uid {OTHER}, not by bearerd's user (uid {os.geteuid()}) or root") \
        in err, err


def kubernetes_volume(root, files, stamp="..2026_12_02_10_00_00.123456789"):
    """A secret volume as the kubelet writes it: files in a timestamped directory, ..data
    pointing at it, and one link per key; fsGroup (here bearerd's gid) adds g+r.  Called
    again on the same root, it rotates: a new directory, and ..data replaced atomically."""
    ts = root / stamp
    ts.mkdir(parents=True)
    for name, (text, mode) in files.items():
        private(ts / name, text, mode, gid=os.getegid())
    tmp = root / "..data_tmp"
    tmp.symlink_to(ts.name)
    os.rename(tmp, root / "..data")
    for name in files:
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")
    return {name: root / name for name in files}


def test_kubernetes_secret_volume_serves_tokens(fe, start_daemon, tmp_path, testca):
    """Through the volume's links (root's, as the kubelet's are), from bearerd -n to a token;
    a rotation (..data pointing at a new directory) is picked up without a reload."""
    secret = remember_secret("k8s~" + os.urandom(12).hex())
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"secret": secret}})
    vol = kubernetes_volume(tmp_path / "secrets", {"client-secret": (secret + "\n", 0o440)})
    conf = secret_config(tmp_path, vol["client-secret"], fe.authority, testca.ca.cert)
    assert check(conf) == (0, "")
    d = start_daemon(conf.read_text())
    r = d.get("/v1/token/api")
    assert r.status == 200, r.body
    remember_token(r.json()["access_token"])
    # the secret rotates; the next fetch (another audience) reads the new one
    rotated = remember_secret("k8s~" + os.urandom(12).hex())
    kubernetes_volume(tmp_path / "secrets", {"client-secret": (rotated + "\n", 0o440)},
                      stamp="..2026_12_03_10_00_00.987654321")
    fe.configure(tenant=TENANT, clients={CLIENT_ID: {"secret": rotated}})
    r = d.get("/v1/token/later")
    assert r.status == 200, r.body
    remember_token(r.json()["access_token"])
    assert fe.stats()["requests"] == 2


def test_config_writable_by_others_or_owned_by_another_user_is_refused(tmp_path):
    conf = tmp_path / "bearerd.conf"
    conf.write_text(f'[bearerd]\nsocket = {tmp_path}/s.sock\n[identity "dev"]\nsource = dev\n')
    os.chmod(conf, 0o644)
    assert check(conf) == (0, "")
    for mode, who in ((0o666, "other users"), (0o620, "its group")):
        os.chmod(conf, mode)
        assert check(conf) == (1, f"{conf}: the configuration is writable by {who} "
                                  f"(mode {mode:04o}): chmod go-w it\n")
    os.chmod(conf, 0o644)
    os.chown(conf, OTHER, -1)
    assert check(conf) == (1, f"{conf}: the configuration is owned by uid {OTHER}, not by "
                              f"bearerd's user (uid {os.geteuid()}) or root: chown it\n")
    # the daemon does not start on it either
    p = subprocess.run([str(BEARERD), "-c", str(conf)], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode != 0 and f"{conf}: the configuration is owned by uid {OTHER}" in p.stderr


def test_reload_refuses_a_config_made_world_writable(start_daemon, tmp_path):
    """SIGHUP re-reads the file: one that others can now write is rejected and the running
    configuration keeps serving."""
    d = start_daemon('[bearerd]\nsocket = @SOCKET@\n[identity "dev"]\nsource = dev\n'
                     '[audience "demo"]\nidentity = dev\nresource = api://demo\n')
    os.chmod(d.config, 0o666)
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration rejected" in d.logs(), what="the reload to be refused")
    assert "the configuration is writable by other users (mode 0666)" in d.logs()
    r = d.get("/v1/token/demo")
    assert r.status == 200
    remember_token(r.json()["access_token"])
    os.chmod(d.config, 0o644)
