"""The image deploy/Containerfile builds, run as its header says: read-only root, the
image's own user, the config mounted, the socket shared with an app container of the same
pod through an emptyDir-like volume.  Identity: the dev source, so the pod needs no
upstream at all (--network none: only lo)."""

import base64
import json

import pytest

from conftest import IMAGE, Pod, curl_token, leaked, podman, unique, wait_for

FS_GROUP = 2000  # the manifests' fsGroup

CONFIG = """\
[bearerd]
socket = /run/bearerd/bearerd.sock
socket_mode = 0660
log_level = debug

[identity "dev"]
source = dev

[audience "demo"]
identity = dev
resource = api://bearerd-demo
prefetch = yes
allow_uids = 1000
"""


def test_binaries_load_their_libraries():
    """bearerctl is the pods' probe: it must start in the image (issue 12, part 3: it
    failed with "libbearer.so.0: cannot open shared object file", libbearer having gone to
    /usr/lib64, which Debian's loader does not search)."""
    r = podman("run", "--rm", "--network", "none", "--entrypoint", "ldd", IMAGE,
               "/usr/bin/bearerctl", "/usr/sbin/bearerd")
    missing = [line.strip() for line in r.stdout.splitlines() if "not found" in line]
    assert not missing, f"the loader cannot find: {missing}"
    multiarch = podman("run", "--rm", "--network", "none", "--entrypoint", "sh", IMAGE, "-c",
                       "ls /usr/lib/*/libbearer.so.0").stdout.strip()
    assert multiarch.endswith("-linux-gnu/libbearer.so.0"), multiarch
    for argv in (["/usr/bin/bearerctl", "-V"], ["/usr/sbin/bearerd", "-V"]):
        r = podman("run", "--rm", "--network", "none", "--entrypoint", argv[0], IMAGE,
                   *argv[1:], check=False)
        assert r.returncode == 0 and "0." in r.stdout, (argv, r.stdout, r.stderr)


def test_image_config():
    """What the pods and `podman run` rely on: a numeric non-root user (runAsNonRoot can
    check it), the probe as HEALTHCHECK (kept in the docker format only), the entrypoint."""
    cfg = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", IMAGE).stdout)
    assert cfg["User"] == "65532:65532"
    assert cfg["Entrypoint"] == ["/usr/sbin/bearerd"]
    assert cfg["Cmd"] == ["-c", "/etc/bearerd/bearerd.conf"]
    assert "BEARERD_SOCKET=/run/bearerd/bearerd.sock" in cfg["Env"]
    hc = json.loads(podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}",
                           IMAGE).stdout)
    assert hc and hc["Test"] == ["CMD", "/usr/bin/bearerctl", "health"], hc


@pytest.fixture(scope="module")
def dev_pod(tmp_path_factory):
    """A pod of bearerd (the image's defaults: its user, its CMD; read-only root, no
    capabilities) and the socket volume: tmpfs, setgid to the pod's group as Kubernetes
    makes an emptyDir for fsGroup, that group added to every container."""
    tmp = tmp_path_factory.mktemp("dev-pod")
    conf = tmp / "bearerd.conf"
    conf.write_text(CONFIG)
    conf.chmod(0o644)
    name = unique("bearerd-dev")
    volume = f"{name}-socket"
    podman("volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt",
           f"o=mode=2777,gid={FS_GROUP},nodev,nosuid,noexec", volume)
    pod = Pod(name)
    state = {"pod": pod, "volume": volume, "bearerd": f"{name}-bearerd", "tokens": []}
    try:
        podman("run", "-d", "--pod", name, "--name", state["bearerd"], "--read-only",
               "--read-only-tmpfs=false", "--group-add", str(FS_GROUP), "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", "-v", f"{volume}:/run/bearerd",
               "-v", f"{conf}:/etc/bearerd/bearerd.conf:ro", IMAGE)
        # the startup probe of the manifests: every prefetch audience holds a token
        wait_for(lambda: podman("exec", state["bearerd"], "bearerctl", "health",
                                check=False).returncode == 0,
                 what="bearerctl health in the container")
        yield state
    finally:
        pod.remove()
        podman("volume", "rm", "-f", volume, check=False)


def test_runs_unprivileged_on_a_read_only_root(dev_pod):
    c = dev_pod["bearerd"]
    status = podman("exec", c, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[:2] == ["65532", "65532"], fields["Uid"]
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    assert podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}",
                  c).stdout.strip() == "true"
    r = podman("exec", c, "touch", "/usr/x", check=False)
    assert r.returncode != 0 and "Read-only file system" in r.stderr, r.stderr
    ls = podman("exec", c, "stat", "-c", "%U:%g %a", "/run/bearerd/bearerd.sock").stdout
    assert ls.split() == ["65532:2000", "660"], ls  # the pod's group, no one else


def test_the_image_probe_passes(dev_pod):
    """The image's HEALTHCHECK (bearerctl health), run by podman as declared, and the
    manifests' exec probes."""
    r = podman("healthcheck", "run", dev_pod["bearerd"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    health = json.loads(podman("inspect", "--format", "{{json .State.Health}}",
                               dev_pod["bearerd"]).stdout)
    assert health["Status"] == "healthy", health
    for probe in (["bearerctl", "health"], ["bearerctl", "status"]):
        r = podman("exec", dev_pod["bearerd"], *probe, check=False)
        assert r.returncode == 0, (probe, r.stdout, r.stderr)


def test_allowed_uid_gets_its_token(dev_pod):
    status, body = curl_token(dev_pod["pod"].name, "demo", 1000, FS_GROUP,
                              [f"{dev_pod['volume']}:/run/bearerd:ro"])
    assert status == 200, body
    dev_pod["tokens"].append(body)
    parts = body.split(".")
    claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    assert claims["aud"] == "api://bearerd-demo", "not the audience's token"


def test_other_uid_of_the_pod_gets_403(dev_pod):
    status, body = curl_token(dev_pod["pod"].name, "demo", 1001, FS_GROUP,
                              [f"{dev_pod['volume']}:/run/bearerd:ro"])
    assert status == 403 and "forbidden" in body, (status, body)


def test_uid_outside_the_pod_group_cannot_connect(dev_pod):
    """socket_mode 0660 on a volume setgid to the pod's group: a process without that
    group cannot even connect."""
    status, body = curl_token(dev_pod["pod"].name, "demo", 1002, None,
                              [f"{dev_pod['volume']}:/run/bearerd:ro"])
    assert status == 0, (status, body)


def test_no_token_in_the_container_log(dev_pod):
    """Neither the token handed out here nor those the tests above got."""
    status, body = curl_token(dev_pod["pod"].name, "demo", 1000, FS_GROUP,
                              [f"{dev_pod['volume']}:/run/bearerd:ro"])
    assert status == 200, body
    dev_pod["tokens"].append(body)
    logs = podman("logs", dev_pod["bearerd"])
    text = logs.stdout + logs.stderr
    assert "token fetched" in text, "the container log is empty"
    assert not leaked(dev_pod["tokens"], text), "a token appeared in podman logs"
