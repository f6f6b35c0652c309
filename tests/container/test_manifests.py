"""deploy/kubernetes/*.yaml, run from the image with podman.

`podman kube play` (podman 4.3, Debian 12) cannot run these manifests as written; what it
refuses or ignores, measured here:
  1. native sidecars: an init container with probes is refused ("cannot create an init
     container that has either of lifecycle, livenessProbe, readinessProbe, or
     startupProbe set"), and restartPolicy: Always on an init container means nothing to it;
  2. fsGroup is ignored: the emptyDir is not made setgid to group 2000 and the containers
     do not get that group, so the app cannot connect to bearerd's 0660 socket; the
     emptyDir is owned by whichever container mounts it first;
  3. only the livenessProbe is used (as the container's healthcheck): startupProbe and
     readinessProbe are ignored, so nothing holds the app back until bearerd is ready;
  4. an emptyDir with medium: Memory is a directory on disk, not a tmpfs;
  5. the pod's securityContext.sysctls are ignored (transparent-imds.yaml's
     net.ipv4.ip_unprivileged_port_start, without which bearerd cannot bind port 80),
     and a run-to-completion init container of the default type "once" fails the pod's
     start ("cannot remove container ... as it is running").
So test_kube_play_as_written tries the manifests as written and is skipped with
podman's own error when it refuses them, and test_kube_play_runs_the_sidecar runs what
kube play can run: the bearerd container as written (securityContext, resources, env,
ConfigMap volume, liveness probe), moved from initContainers to containers, alone
(after the manifest's run-to-completion init containers, as type "always", and with its
sysctls set in the pod's network namespace).

The rest of this file (the `kubelet` fixture) does what a kubelet does with each manifest,
with plain podman commands: a pod with --network none; every emptyDir a tmpfs, setgid to
the pod's fsGroup, which every container gets as a supplementary group; ConfigMaps as
read-only directories; each container's securityContext, env, resources and volume
mounts as written; the pod's net.* sysctls in its network namespace; the init
containers in order (a run-to-completion one must exit 0, a native sidecar must pass its
startupProbe), then the app.  For workload-identity.yaml it also does what the AKS webhook does
for a pod labelled azure.workload.identity/use: the AZURE_* variables and the projected
service-account token in every container but those in skip-containers.  The identity
provider runs in the pod's network namespace: a fake IMDS at 169.254.169.254:80 for
pod.yaml's azure-imds identity, a fake Entra ID over TLS (its CA mounted as the image's
CA bundle) for workload-identity.yaml's and transparent-imds.yaml's entra-federated one.  The manifests' embedded
configs are used unchanged.
"""

import configparser
import json
import secrets
import subprocess

import pytest
import yaml

from conftest import (APP_IMAGE, IMAGE, ROOT, Pod, PodEntra, PodIMDS, curl_token,
                      federated_token, leaked, podman, podman_version, unique, wait_for)

MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
TENANT = "72f988bf-0000-4000-8000-000000000000"
WI_LABEL = "azure.workload.identity/use"
WI_SKIP = "azure.workload.identity/skip-containers"
WI_CLIENT_ID = "azure.workload.identity/client-id"
WI_TOKEN_DIR = "/var/run/secrets/azure/tokens"  # where the webhook projects the token
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # libcurl's default trust on Debian


def load(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    pod = next(d for d in docs if d["kind"] == "Pod")
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    return docs, pod, configmaps, accounts


def config_sources(text):
    ini = configparser.ConfigParser(inline_comment_prefixes=(";",), comment_prefixes=(";",),
                                    strict=False, interpolation=None)
    ini.read_string(text)
    return {ini[s]["source"] for s in ini.sections() if s.startswith("identity")}


def bearerd_config(configmaps):
    texts = [data["bearerd.conf"] for data in configmaps.values() if "bearerd.conf" in data]
    assert len(texts) == 1, "one ConfigMap with bearerd.conf"
    return texts[0]


def sidecars(spec):
    return [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]


def image_for(container):
    """The images the manifests name, as this machine has them: the one deploy/Containerfile
    builds, and curl on the local Debian base for docker.io/curlimages/curl."""
    return IMAGE if "bearerd" in container["image"] else APP_IMAGE


def quantity(q):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for unit, factor in units.items():
        if str(q).endswith(unit):
            return int(str(q)[:-2]) * factor
    return int(q)


class Upstream:
    """The identity provider the manifest's config names, and what the AKS webhook would
    add to the containers for it; start() runs it in a pod's network namespace."""

    ENTRA_PORT = 8443  # fixed, since the webhook's variables name it before the pod runs:
    # each pod has a network namespace of its own, so nothing else can hold it

    def __init__(self, tmp, testca, pod_doc, accounts, config_text):
        self.tmp = tmp
        self.testca = testca
        self.fake = None
        self.env = {}
        self.mounts = []  # podman -v arguments for the containers the webhook mutates
        self.skip = []
        self.secrets = []
        self.kind = config_sources(config_text)
        if self.kind == {"azure-imds"}:
            return
        assert self.kind == {"entra-federated"}, f"no fake for the sources {self.kind}"
        meta = pod_doc["metadata"]
        assert meta.get("labels", {}).get(WI_LABEL) == "true", "no webhook for this pod"
        self.skip = meta.get("annotations", {}).get(WI_SKIP, "").split(";")
        account = accounts[pod_doc["spec"]["serviceAccountName"]]
        self.client_id = account["metadata"]["annotations"][WI_CLIENT_ID]
        token = federated_token()
        self.secrets.append(token)
        tokens = tmp / "azure-tokens"
        tokens.mkdir()
        (tokens / "azure-identity-token").write_text(token)
        (tokens / "azure-identity-token").chmod(0o644)  # a projected volume's default
        self.env = {"AZURE_CLIENT_ID": self.client_id, "AZURE_TENANT_ID": TENANT,
                    "AZURE_FEDERATED_TOKEN_FILE": f"{WI_TOKEN_DIR}/azure-identity-token",
                    # the webhook's value ends with "/", as Azure's authority hosts do
                    "AZURE_AUTHORITY_HOST": f"https://127.0.0.1:{self.ENTRA_PORT}/"}
        self.mounts = [f"{tokens}:{WI_TOKEN_DIR}:ro", f"{testca.ca.cert}:{CA_BUNDLE}:ro"]

    def start(self, pod_pid):
        if self.kind == {"azure-imds"}:
            self.fake = PodIMDS(pod_pid, self.tmp)
        else:
            self.fake = PodEntra(pod_pid, self.tmp, self.testca, self.ENTRA_PORT)
            self.fake.configure(tenant=TENANT,
                                clients={self.client_id: {"federated": self.secrets[0]}})

    def mutates(self, container):
        return bool(self.env) and container["name"] not in self.skip

    def issued(self):
        return self.fake.stats()["issued"]

    def stop(self):
        if self.fake is not None:
            self.fake.stop()


class Kubelet:
    """One manifest's pod, started with podman the way a kubelet starts it."""

    def __init__(self, path, tmp, testca):
        self.path = path
        self.tmp = tmp
        self.docs, self.pod_doc, self.configmaps, accounts = load(path)
        self.spec = self.pod_doc["spec"]
        self.pod_sc = self.spec.get("securityContext", {})
        self.config_text = bearerd_config(self.configmaps)
        self.name = unique(self.pod_doc["metadata"]["name"])
        self.volumes = {}
        self.names = {}
        self.pod = Pod(self.name)
        self.upstream = None
        try:
            self.upstream = Upstream(tmp, testca, self.pod_doc, accounts, self.config_text)
            self.upstream.start(self.pod.pid)
            self._volumes()
            self._sysctls()
            # in order: a run-to-completion one must exit 0 before the next starts, a
            # native sidecar must pass its startup probe
            for c in self.spec.get("initContainers", []):
                if c in sidecars(self.spec):
                    self.run(c)
                    self.wait_probe(c, "startupProbe")  # the app starts only then
                else:
                    self.run_to_completion(c)
            for c in self.spec["containers"]:
                self.run(c)
        except BaseException:
            self.remove()
            raise

    def _volumes(self):
        group = self.pod_sc.get("fsGroup")
        for v in self.spec.get("volumes", []):
            if "emptyDir" in v:
                name = f"{self.name}-{v['name']}"
                opts = "mode=2777,nodev,nosuid" + (f",gid={group}" if group is not None else "")
                # no size=sizeLimit: podman 4.3 takes it for an XFS project quota
                podman("volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs",
                       "--opt", f"o={opts}", name)
                self.volumes[v["name"]] = name
            elif "configMap" in v:
                d = self.tmp / f"configmap-{v['name']}"
                d.mkdir()
                for key, text in self.configmaps[v["configMap"]["name"]].items():
                    (d / key).write_text(text)
                    (d / key).chmod(0o644)
                self.volumes[v["name"]] = str(d)
            else:
                raise AssertionError(f"volume {v['name']}: kind not emulated")

    def _sysctls(self):
        """The pod's sysctls, set in the pod's network namespace as the runtime sets them
        in the sandbox (only net.*, the namespaced ones a pod may set)."""
        for sc in self.pod_sc.get("sysctls", []):
            assert sc["name"].startswith("net."), f"sysctl {sc['name']}: not emulated"
            subprocess.run(self.pod.nsenter("sysctl", "-q", "-w",
                                            f"{sc['name']}={sc['value']}"),
                           check=True, capture_output=True, timeout=10)

    def run_args(self, c):
        """podman run's arguments for container c, as a kubelet would start it."""
        sc = dict(self.pod_sc)
        sc.update(c.get("securityContext", {}))
        name = f"{self.name}-{c['name']}"
        args = ["--pod", self.name, "--name", name]
        uid = sc.get("runAsUser")
        gid = sc.get("runAsGroup", uid)
        if sc.get("runAsNonRoot"):
            assert uid not in (None, 0), f"{c['name']}: runAsNonRoot needs a numeric user"
        if uid is not None:
            args += ["--user", f"{uid}:{gid}"]
        groups = list(sc.get("supplementalGroups", []))
        if sc.get("fsGroup") is not None:
            groups.append(sc["fsGroup"])
        for g in groups:
            args += ["--group-add", str(g)]
        if sc.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for cap in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        for cap in sc.get("capabilities", {}).get("add", []):
            args += ["--cap-add", cap]
        assert sc.get("seccompProfile", {}).get("type", "RuntimeDefault") == "RuntimeDefault"
        limits = c.get("resources", {}).get("limits", {})
        if "memory" in limits:
            args += ["--memory", str(quantity(limits["memory"]))]
        env = {e["name"]: e["value"] for e in c.get("env", [])}
        mounts = []
        for m in c.get("volumeMounts", []):
            mounts.append(f"{self.volumes[m['name']]}:{m['mountPath']}" +
                          (":ro" if m.get("readOnly") else ""))
        if self.upstream.mutates(c):
            env.update(self.upstream.env)
            mounts += self.upstream.mounts
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        for m in mounts:
            args += ["-v", m]
        if "command" in c:
            args += ["--entrypoint", json.dumps(c["command"])]
        return name, args + [image_for(c), *c.get("args", [])]

    def run(self, c):
        name, args = self.run_args(c)
        podman("run", "-d", *args)
        self.names[c["name"]] = name
        return name

    def run_to_completion(self, c):
        name, args = self.run_args(c)
        r = podman("run", *args, check=False, timeout=120)
        assert r.returncode == 0, f"init container {c['name']} exited {r.returncode}:\n{r.stderr}"
        self.names[c["name"]] = name

    def container(self, name):
        return next(c for c in sidecars(self.spec) + self.spec["containers"]
                    if c["name"] == name)

    def probe(self, c, kind):
        p = c[kind]
        return podman("exec", self.names[c["name"]], *p["exec"]["command"], check=False,
                      timeout=max(10, p.get("timeoutSeconds", 1)))

    def wait_probe(self, c, kind):
        p = c[kind]
        budget = p.get("periodSeconds", 10) * p.get("failureThreshold", 3)
        wait_for(lambda: self.probe(c, kind).returncode == 0, timeout=min(budget, 60),
                 step=min(p.get("periodSeconds", 10), 1),
                 what=f"{c['name']}'s {kind} ({' '.join(p['exec']['command'])})")

    def logs(self, container_name):
        r = podman("logs", self.names[container_name])
        return r.stdout + r.stderr

    def remove(self):
        if self.upstream is not None:
            self.upstream.stop()
        self.pod.remove()
        for v in self.volumes.values():
            if not v.startswith("/"):
                podman("volume", "rm", "-f", v, check=False)


@pytest.fixture(scope="module", params=MANIFESTS, ids=lambda p: p.name)
def kubelet(request, tmp_path_factory, testca):
    k = Kubelet(request.param, tmp_path_factory.mktemp(request.param.stem), testca)
    k.tokens = []
    yield k
    k.remove()


def the_sidecar(k):
    (c,) = sidecars(k.spec)
    return c


def the_app(k):
    (c,) = k.spec["containers"]
    return c


def audience_of(config_text):
    ini = configparser.ConfigParser(inline_comment_prefixes=(";",), comment_prefixes=(";",),
                                    strict=False, interpolation=None)
    ini.read_string(config_text)
    (name,) = [s.split('"')[1] for s in ini.sections() if s.startswith("audience")]
    return name, ini[f'audience "{name}"']


def test_sidecar_runs_as_its_security_context_says(kubelet):
    c = the_sidecar(kubelet)
    sc = c["securityContext"]
    name = kubelet.names[c["name"]]
    status = podman("exec", name, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[0] == str(sc["runAsUser"])
    assert fields["Gid"].split()[0] == str(sc["runAsGroup"])
    assert str(kubelet.pod_sc["fsGroup"]) in fields["Groups"].split()
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    r = podman("exec", name, "touch", "/usr/x", check=False)
    assert r.returncode != 0 and "Read-only file system" in r.stderr, r.stderr
    limit = podman("inspect", "--format", "{{.HostConfig.Memory}}", name).stdout.strip()
    assert int(limit) == quantity(c["resources"]["limits"]["memory"])


def test_probes_pass(kubelet):
    """The startup probe has passed (the app was started after it); readiness and
    liveness, as written, pass too.  Readiness is the latched `bearerctl health`, not
    --strict: an identity provider's outage must not make every pod NotReady."""
    c = the_sidecar(kubelet)
    commands = {k: c[k]["exec"]["command"] for k in ("startupProbe", "readinessProbe",
                                                     "livenessProbe")}
    assert commands == {"startupProbe": ["bearerctl", "health"],
                        "readinessProbe": ["bearerctl", "health"],
                        "livenessProbe": ["bearerctl", "status"]}, commands
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        r = kubelet.probe(c, kind)
        assert r.returncode == 0, (kind, r.stdout, r.stderr)


def test_app_gets_its_token(kubelet):
    """The app container's own loop (curl on the socket, as written) gets a token, and so
    does a request as the app's uid."""
    wait_for(lambda: "got a token" in kubelet.logs("app"), what="the app's \"got a token\"")
    app = the_app(kubelet)
    audience, _ = audience_of(kubelet.config_text)
    status, body = curl_token(kubelet.name, audience, app["securityContext"]["runAsUser"],
                              kubelet.pod_sc["fsGroup"],
                              [f"{kubelet.volumes['bearerd-socket']}:/run/bearerd:ro"])
    assert status == 200, body
    kubelet.tokens.append(body)
    assert body in kubelet.upstream.issued(), "not the token the identity provider issued"


def test_another_uid_of_the_pod_gets_403(kubelet):
    """allow_uids = 1000: uid 1001, in the same pod and group, is refused."""
    _, section = audience_of(kubelet.config_text)
    assert section["allow_uids"].split() == ["1000"]
    audience, _ = audience_of(kubelet.config_text)
    status, body = curl_token(kubelet.name, audience, 1001, kubelet.pod_sc["fsGroup"],
                              [f"{kubelet.volumes['bearerd-socket']}:/run/bearerd:ro"])
    assert status == 403 and "forbidden" in body, (status, body)


def test_app_sees_no_credential(kubelet):
    """Only bearerd gets the identity: the app has no AZURE_* variable and no token file."""
    env = podman("exec", kubelet.names["app"], "env").stdout
    assert "AZURE_" not in env
    r = podman("exec", kubelet.names["app"], "ls", WI_TOKEN_DIR, check=False)
    assert r.returncode != 0
    if kubelet.upstream.env:  # workload identity: the sidecar has them
        env = podman("exec", kubelet.names["bearerd"], "env").stdout
        assert "AZURE_FEDERATED_TOKEN_FILE=" in env


def test_no_token_in_the_container_logs(kubelet):
    """Neither the tokens handed out nor the federated credential, in any container's log;
    last for each manifest, after the requests above."""
    issued = kubelet.upstream.issued()
    assert issued, "the identity provider issued nothing"
    secrets_ = issued + kubelet.tokens + kubelet.upstream.secrets
    for name in kubelet.names:
        text = kubelet.logs(name)
        if name == "bearerd":
            assert "token fetched" in text, "the container log is empty"
        assert not leaked(secrets_, text), f"a token or credential appeared in {name}'s log"


TRANSPARENT = [p for p in MANIFESTS if "imds_listen = 169.254.169.254:80" in p.read_text()]


@pytest.mark.parametrize("kubelet", TRANSPARENT, indirect=True, ids=lambda p: p.name)
def test_transparent_imds_in_the_pod(kubelet):
    """transparent-imds.yaml: a container of the pod with nothing set asks
    http://169.254.169.254 and gets the token the identity provider issued, from bearerd;
    the address is on the pod's lo (the init container), bearerd holds port 80 with no
    capability (the pod's sysctl), and IMDS's other paths are 403 in a pod."""
    addrs = subprocess.run(kubelet.pod.nsenter("ip", "-o", "addr", "show", "dev", "lo"),
                           capture_output=True, text=True, check=True).stdout
    assert "169.254.169.254/32" in addrs, addrs

    def imds(path):
        r = podman("run", "--rm", "--pod", kubelet.name, "--user", "1000:1000", "--read-only",
                   "--cap-drop", "ALL", "--security-opt", "no-new-privileges", APP_IMAGE,
                   "curl", "-s", "-H", "Metadata: true", "-w", "\n%{http_code}",
                   f"http://169.254.169.254{path}", check=False)
        body, _, code = r.stdout.rpartition("\n")
        return (int(code) if r.returncode == 0 else 0), body

    st, body = imds("/metadata/identity/oauth2/token?api-version=2018-02-01"
                    "&resource=https://vault.azure.net")
    assert st == 200, body
    doc = json.loads(body)
    kubelet.tokens.append(doc["access_token"])
    assert doc["access_token"] in kubelet.upstream.issued(), "not the upstream's token"
    assert doc["resource"] == "https://vault.azure.net" and doc["expires_on"].isdigit()
    assert imds("/metadata/instance?api-version=2021-02-01")[0] == 403
    st, body = imds("/metadata/identity/oauth2/token?api-version=2018-02-01"
                    "&resource=https://example.com/")
    assert st == 400 and "access_token" not in body  # not in [compat] resources


# -- podman kube play ---------------------------------------------------------------------------


def kube_yaml(path, tmp, suffix, upstream=None, sidecar_only=False):
    """The manifest for kube play: the images this machine has, names with a suffix (so
    runs cannot collide), the webhook's mutation for workload identity; sidecar_only moves
    the native sidecar to containers and leaves the app out."""
    docs, pod, configmaps, _ = load(path)
    renamed = {}
    for d in docs:
        if d["kind"] in ("Pod", "ConfigMap"):
            renamed[d["metadata"]["name"]] = d["metadata"]["name"] = \
                f"{d['metadata']['name']}-{suffix}"
    spec = pod["spec"]
    for v in spec.get("volumes", []):
        if "configMap" in v:
            v["configMap"]["name"] = renamed[v["configMap"]["name"]]
    for c in spec.get("initContainers", []) + spec["containers"]:
        c["image"] = image_for(c)
        if upstream is not None and upstream.mutates(c):
            c.setdefault("env", []).extend({"name": k, "value": v}
                                           for k, v in upstream.env.items())
            for i, m in enumerate(upstream.mounts):
                src, dst, _ = m.split(":")
                vol = f"webhook-{i}"
                c.setdefault("volumeMounts", []).append({"name": vol, "mountPath": dst,
                                                         "readOnly": True})
                if not any(v["name"] == vol for v in spec["volumes"]):
                    spec["volumes"].append({"name": vol, "hostPath": {"path": src}})
    if sidecar_only:
        side = sidecars(spec)
        others = [c for c in spec["initContainers"] if c not in side]
        for c in side:
            del c["restartPolicy"]
        spec["containers"] = side
        if others:  # transparent-imds.yaml's address on lo: bearerd needs it to bind
            spec["initContainers"] = others
            # podman 4.3 removes a "once" init container while it still runs and fails the
            # pod's start ("cannot remove container ... as it is running"); "always" runs it
            # at every start of the pod, which an idempotent init container allows
            pod["metadata"].setdefault("annotations", {})[
                "io.podman.annotations.init.container.type"] = "always"
        else:
            del spec["initContainers"]
    out = tmp / f"kube-{path.name}"
    out.write_text(yaml.safe_dump_all(docs))
    return out, pod["metadata"]["name"], [renamed[n] for n in configmaps]


class KubePlay:
    """A manifest given to podman kube play --network none, created but not started: the
    identity provider goes into the pod's network namespace (the infra container's) first."""

    def __init__(self, path, tmp, testca, sidecar_only):
        _, pod_doc, configmaps, accounts = load(path)
        self.sysctls = pod_doc["spec"].get("securityContext", {}).get("sysctls", [])
        self.upstream = Upstream(tmp, testca, pod_doc, accounts, bearerd_config(configmaps))
        yml, self.pod, self.configmaps = kube_yaml(path, tmp, secrets.token_hex(3),
                                                   self.upstream, sidecar_only)
        self.result = podman("kube", "play", "--start=false", "--network", "none", str(yml),
                             check=False)
        self.error = self.result.stderr.strip().splitlines()[-1:] or [""]

    def start(self):
        infra = podman("pod", "inspect", "--format", "{{.InfraContainerID}}",
                       self.pod).stdout.strip()
        podman("start", infra)
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", infra).stdout)
        self.upstream.start(pid)
        # kube play ignores the pod's sysctls (5. in this file's docstring): set them in
        # the pod's network namespace, as the runtime sets them in the sandbox
        for sc in self.sysctls:
            assert sc["name"].startswith("net."), f"sysctl {sc['name']}: not emulated"
            subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", "sysctl", "-q", "-w",
                            f"{sc['name']}={sc['value']}"], check=True, capture_output=True,
                           timeout=10)
        podman("pod", "start", self.pod)

    def logs(self, container):
        r = podman("logs", f"{self.pod}-{container}")
        return r.stdout + r.stderr

    def remove(self):
        podman("pod", "rm", "-f", "-t", "2", self.pod, check=False)
        for v in self.configmaps:
            podman("volume", "rm", "-f", v, check=False)
        self.upstream.stop()


@pytest.fixture
def kube_play(tmp_path, testca):
    made = []

    def play(path, sidecar_only=False):
        k = KubePlay(path, tmp_path, testca, sidecar_only)
        made.append(k)
        return k

    yield play
    for k in made:
        k.remove()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kube_play_as_written(path, kube_play):
    """Only the images (and, for workload identity, the webhook's mutation) changed.  On a
    podman that refuses native sidecars this is skipped, with podman's error."""
    k = kube_play(path)
    if k.result.returncode != 0:
        pytest.skip(f"podman {podman_version()} kube play cannot run {path.name} as "
                    f"written: {k.error[0]} (native sidecars; see this file's docstring)")
    k.start()
    wait_for(lambda: "got a token" in k.logs("app"), timeout=120,
             what="the app's \"got a token\"")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kube_play_runs_the_sidecar(path, kube_play):
    """What podman kube play can run of the manifest: the bearerd container as written,
    as the pod's only container (no native sidecars, and without fsGroup no app could
    reach the socket), after the manifest's run-to-completion init containers (type
    "always") and with its sysctls set in the pod's network namespace (5. above).  Its securityContext, memory limit, env and ConfigMap apply; the
    startup probe's command passes; the liveness probe, podman's healthcheck, passes."""
    k = kube_play(path, sidecar_only=True)
    assert k.result.returncode == 0, k.result.stderr
    k.start()
    _, pod_doc, configmaps, _ = load(path)
    (c,) = sidecars(pod_doc["spec"])
    name = f"{k.pod}-{c['name']}"
    startup = c["startupProbe"]["exec"]["command"]
    wait_for(lambda: podman("exec", name, *startup, check=False).returncode == 0,
             timeout=60, what=" ".join(startup))
    r = podman("healthcheck", "run", name, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    hc = json.loads(podman("inspect", "--format", "{{json .Config.Healthcheck}}",
                           name).stdout)
    liveness = c["livenessProbe"]["exec"]["command"]
    assert all(w in hc["Test"] for w in liveness), hc  # the liveness probe, nothing else
    status = podman("exec", name, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[0] == str(c["securityContext"]["runAsUser"])
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    assert podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}",
                  name).stdout.strip() == "true"
    limit = podman("inspect", "--format", "{{.HostConfig.Memory}}", name).stdout.strip()
    assert int(limit) == quantity(c["resources"]["limits"]["memory"])
    conf = podman("exec", name, "cat", "/etc/bearerd/bearerd.conf").stdout
    assert conf == bearerd_config(configmaps)
    text = k.logs(c["name"])
    assert "token fetched" in text, text
    assert not leaked(k.upstream.issued() + k.upstream.secrets, text), "a token in the log"
