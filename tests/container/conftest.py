"""Fixtures for the container suite: the image deploy/Containerfile builds, run
with podman the way a pod runs it.

tests/container/images.sh makes the images (scripts/check runs it, outside any
network namespace, since the build stages install Debian packages) and names
them in BEARERD_IMAGE and BEARERD_APP_IMAGE.  When podman cannot run here, or
the images are missing, every test is skipped with the reason (scripts/check
passes images.sh's reason in BEARERD_CONTAINER_SKIP): never passed silently.

Pods get `--network none`: a network namespace of their own with only lo.
A fake identity provider runs inside that namespace (nsenter) on the host's
python, and the suite talks to it from a thread that joined the namespace
(setns), so nothing the pod does can reach past its lo, and the suite's own
namespace (scripts/check runs it in `unshare -n`) is never needed for them.
"""

import base64
import ctypes
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # testca.py

PODMAN = shlex.split(os.environ.get("PODMAN", "podman --runtime runc"))
IMAGE = os.environ.get("BEARERD_IMAGE", "")
APP_IMAGE = os.environ.get("BEARERD_APP_IMAGE", "")
FAKE_IMDS = ROOT / "tests" / "fakes" / "fake_imds.py"
FAKE_ENTRA = ROOT / "tests" / "fakes" / "fake_entra.py"
RELAY = Path(__file__).resolve().parent / "relay.py"
IMDS_ADDR = "169.254.169.254"


def unavailable():
    """Why the suite cannot run here, or None."""
    if os.environ.get("BEARERD_CONTAINER_SKIP"):
        return os.environ["BEARERD_CONTAINER_SKIP"]
    if os.geteuid() != 0:
        return "not root: the suite runs rootful podman"
    if shutil.which(PODMAN[0]) is None:
        return f"{PODMAN[0]} is not installed"
    if not IMAGE or not APP_IMAGE:
        return ("BEARERD_IMAGE and BEARERD_APP_IMAGE are not set: run "
                "eval \"$(tests/container/images.sh)\" first (scripts/check does)")
    for image in (IMAGE, APP_IMAGE):
        if subprocess.run([*PODMAN, "image", "exists", image]).returncode != 0:
            return f"image {image} does not exist: run tests/container/images.sh"
    return None


def pytest_collection_modifyitems(config, items):
    reason = unavailable()
    if reason:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=reason))


def wait_for(pred, timeout=30.0, step=0.2, what="condition"):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def podman(*args, check=True, timeout=120, input=None):
    """podman with the runtime this machine needs; output as text.  Arguments never
    carry a token or a secret (those travel in mounted files), so they may be shown."""
    r = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout,
                       input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {r.returncode}:\n{r.stderr}")
    return r


def podman_version():
    return podman("version", "--format", "{{.Client.Version}}").stdout.strip()


# -- network namespaces ------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(pid, fn, *args, **kw):
    """fn(*args) on a thread that joined the network namespace of process pid: the sockets
    it opens are that namespace's (setns(2) moves only the calling thread)."""
    box = {}

    def run():
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn(*args, **kw)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Pod:
    """A podman pod with --network none: its infra container holds a network namespace
    with only lo, which every container of the pod shares."""

    def __init__(self, name):
        self.name = name
        podman("pod", "create", "--name", name, "--network", "none")
        podman("pod", "start", name)  # the infra container only: the pod has no other yet
        infra = podman("pod", "inspect", "--format", "{{.InfraContainerID}}", name).stdout
        self.pid = int(podman("inspect", "--format", "{{.State.Pid}}", infra.strip()).stdout)
        self.netns = f"/proc/{self.pid}/ns/net"

    def nsenter(self, *argv):
        return ["nsenter", f"--net={self.netns}", "--", *argv]

    def remove(self):
        podman("pod", "rm", "-f", "-t", "2", self.name, check=False)


def unique(prefix):
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"


# -- fakes inside a pod's network namespace ----------------------------------------------------


class PodFake:
    """A tests/fakes server started in a pod's network namespace; its control API is called
    from a thread in that namespace."""

    scheme = "http"

    def __init__(self, netns_pid, tmp, name, argv, port=0):
        self.pid_ns = netns_pid
        port_file = tmp / f"{name}.port"
        self.log_path = tmp / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/proc/{netns_pid}/ns/net", "--", sys.executable, *argv,
             "--port", str(port), "--port-file", str(port_file)],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or
                 (port_file.exists() and port_file.read_text().strip()),
                 what=f"{name} to listen")
        if self.proc.poll() is not None:
            raise AssertionError(f"{name} exited:\n{self.log_path.read_text()}")
        self.port = int(port_file.read_text())
        self.base = f"{self.scheme}://127.0.0.1:{self.port}"

    def _opener(self):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method, path, body=None):
        def call():
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
            with self._opener().open(req, timeout=10) as r:
                return json.loads(r.read() or b"null")
        return in_netns(self.pid_ns, call)

    def configure(self, **behaviour):
        return self._call("POST", "/_fake/config", behaviour)

    def stats(self):
        return self._call("GET", "/_fake/stats")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class PodIMDS(PodFake):
    """fake_imds.py behind a relay on 169.254.169.254:80, IMDS's own address, added to the
    pod's lo (a namespace with only lo, so the address reaches nothing else)."""

    def __init__(self, netns_pid, tmp):
        super().__init__(netns_pid, tmp, "fake-imds", [str(FAKE_IMDS)])
        ns = f"--net=/proc/{netns_pid}/ns/net"
        subprocess.run(["nsenter", ns, "--", "ip", "addr", "add", f"{IMDS_ADDR}/32", "dev",
                        "lo"], check=True, capture_output=True, timeout=10)
        ready = tmp / "relay.ready"
        self.relay = subprocess.Popen(["nsenter", ns, "--", sys.executable, str(RELAY),
                                       IMDS_ADDR, "80", "127.0.0.1", str(self.port),
                                       "--ready-file", str(ready)])
        wait_for(lambda: self.relay.poll() is not None or ready.exists(), what="the relay")
        assert self.relay.poll() is None, "the relay exited"

    def stop(self):
        if self.relay.poll() is None:
            self.relay.terminate()
            self.relay.wait(10)
        super().stop()


class PodEntra(PodFake):
    """fake_entra.py over TLS with the test CA's certificate for 127.0.0.1."""

    scheme = "https"

    def __init__(self, netns_pid, tmp, testca, port=0):
        super().__init__(netns_pid, tmp, "fake-entra",
                         [str(FAKE_ENTRA), "--cert", str(testca.server.cert), "--key",
                          str(testca.server.key)], port)

    def _opener(self):
        import ssl
        ctx = ssl.create_default_context()  # test plumbing on the pod's lo
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                           urllib.request.HTTPSHandler(context=ctx))


@pytest.fixture(scope="session")
def testca(tmp_path_factory):
    from testca import TestCA
    return TestCA(tmp_path_factory.mktemp("pki"))


def federated_token():
    """Something shaped like a projected Kubernetes service-account token."""
    def part(doc):
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    now = int(time.time())
    return ".".join([part({"alg": "RS256", "kid": "sa-key"}),
                     part({"aud": ["api://AzureADTokenExchange"], "iss": "https://oidc.test",
                           "sub": "system:serviceaccount:default:app-bearerd", "iat": now,
                           "exp": now + 3600}),
                     secrets.token_urlsafe(64)])


def leaked(secrets_, text):
    """Indexes of the secrets found in text: safe to show, unlike the secrets."""
    return [i for i, s in enumerate(secrets_) if s and s in text]


def curl_token(pod, audience, user, group_add=None, mounts=()):
    """One request for AUDIENCE's token from an app container of the pod as uid USER:
    (status, body).  Status 0: no HTTP answer (curl's exit status is in the body)."""
    args = ["run", "--rm", "--pod", pod, "--user", f"{user}:{user}", "--read-only",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    if group_add is not None:
        args += ["--group-add", str(group_add)]
    for m in mounts:
        args += ["-v", m]
    args += [APP_IMAGE, "curl", "-s", "--unix-socket", "/run/bearerd/bearerd.sock",
             "-H", "Accept: text/plain", "-w", "\n%{http_code}",
             f"http://localhost/v1/token/{audience}"]
    r = podman(*args, check=False)
    body, _, code = r.stdout.rpartition("\n")
    if r.returncode != 0:
        return 0, f"curl exited {r.returncode}"
    return int(code), body
