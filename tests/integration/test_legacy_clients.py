"""Clients that hard-code IMDS or speak the older managed-identity protocols (issue 15),
for real: the Azure CLI 2.45 (Debian's azure-cli), Go's go-autorest/adal (Debian's
golang-github-azure-go-autorest-dev, built here into tests/clients/legacy/adal-token.go)
and Python's msrestazure (Debian's python3-msrestazure), each through every route it
supports:

  imds        nothing set: the client asks http://169.254.169.254; bearerd holds that
              address itself, as in a pod's own network namespace
  redirect    nothing set, a VM: contrib/imds-redirect's nftables OUTPUT redirect sends
              169.254.169.254:80 to bearerd on 127.0.0.1, except bearerd's own requests
              (its cgroup), which reach the "real" IMDS (tests/fakes/fake_imds.py
              behind a TCP relay on 169.254.169.254:80)
  appservice  MSI_ENDPOINT + MSI_SECRET: App Service 2017-09-01 (msrestazure and so the
              CLI only with APPSETTING_WEBSITE_SITE_NAME, App Service's own variable)
  cloudshell  MSI_ENDPOINT alone: Cloud Shell's POST with a form body

Everything runs in the network namespace of the integration run (only lo): a module-level
fixture skips every test elsewhere, since these add 169.254.169.254/32 to lo (removed after
each test) and the Azure CLI must never reach the Internet.  A client missing here is a
skip with the reason, never a pass.  Tokens are compared by SHA-256: no client prints one.
"""

import datetime
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BEARERD, ROOT, FakeIMDS, remember_token, wait_for

LEGACY = ROOT / "tests" / "clients" / "legacy"
REDIRECT = ROOT / "contrib" / "imds-redirect" / "bearerd-imds-redirect"
FAKE_ARM = ROOT / "tests" / "fakes" / "fake_arm.py"
RELAY = ROOT / "tests" / "container" / "relay.py"  # a plain TCP relay
ADAL_SRC = Path("/usr/share/gocode/src/github.com/Azure/go-autorest/autorest/adal")
IMDS_ADDR = "169.254.169.254"
TENANT = "72f988bf-0000-4000-8000-00000000abcd"
SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-111122223333"
UA_CLIENT_ID = "2b7c1d4e-0f5a-4c3b-9e8d-7a6b5c4d3e2f"
UA_RES_ID = ("/subscriptions/0b1f6471-1bf0-4dda-aec3-111122223333/resourceGroups/rg/providers/"
             "Microsoft.ManagedIdentity/userAssignedIdentities/legacy")
RESOURCE = "https://vault.azure.net"
ARM_RESOURCE = "https://management.core.windows.net/"  # what `az login --identity` asks for


def sha(token):
    return hashlib.sha256(token.encode()).hexdigest()


def links():
    # /proc/net/dev is this process's network namespace (sysfs may be another's)
    with open("/proc/net/dev") as f:
        return sorted(line.split(":")[0].strip() for line in f.readlines()[2:])


@pytest.fixture(autouse=True)
def only_lo():
    if links() != ["lo"]:
        pytest.skip(f"needs a network namespace with only lo (unshare -n), not {links()}: "
                    "these tests take 169.254.169.254 and run the Azure CLI")
    if os.geteuid() != 0:
        pytest.skip("needs root in the namespace: 169.254.169.254 on lo, port 80, nftables")


@pytest.fixture
def linklocal():
    """169.254.169.254/32 on this namespace's lo for one test."""
    subprocess.run(["ip", "addr", "add", f"{IMDS_ADDR}/32", "dev", "lo"], check=True)
    yield IMDS_ADDR
    subprocess.run(["ip", "addr", "del", f"{IMDS_ADDR}/32", "dev", "lo"], check=False)


# -- the clients --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def adal_token(tmp_path_factory):
    """tests/clients/legacy/adal-token.go built against the packaged adal (GOPATH mode, no
    module download): once per session, a couple of seconds."""
    if shutil.which("go") is None:
        pytest.skip("go is not installed (Debian: golang-go)")
    if not (ADAL_SRC / "token.go").exists():
        pytest.skip(f"{ADAL_SRC} is missing (Debian: golang-github-azure-go-autorest-dev)")
    d = tmp_path_factory.mktemp("adal")
    out = d / "adal-token"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(d),
           "GOPATH": f"{d}:/usr/share/gocode", "GO111MODULE": "off", "GOFLAGS": "",
           "GOCACHE": str(d / "cache"), "GOPROXY": "off", "CGO_ENABLED": "0"}
    p = subprocess.run(["go", "build", "-o", str(out), str(LEGACY / "adal-token.go")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture(scope="session")
def msrestazure():
    p = subprocess.run(["/usr/bin/python3", "-c", "import msrestazure"], capture_output=True)
    if p.returncode != 0:
        pytest.skip("msrestazure is not installed for /usr/bin/python3 "
                    "(Debian: python3-msrestazure)")
    return LEGACY / "msrestazure-token.py"


@pytest.fixture(scope="session")
def az():
    if not Path("/usr/bin/az").exists():
        pytest.skip("the Azure CLI is not installed (Debian: azure-cli)")
    return "/usr/bin/az"


def clean_env(tmp, **extra):
    """Nothing that points a client anywhere but what the route sets."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "NO_PROXY": "*", "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def run_json(argv, env, timeout=120):
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    out = json.loads(lines[-1]) if lines else {}
    out["_rc"], out["_stderr"] = p.returncode, p.stderr[-3000:]
    return out


# -- bearerd and its upstream -------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Setup:
    """The upstream (fake_imds issuing JWTs with a tid, as Azure's do) and bearerd with
    [compat] listeners: identity vm (system-assigned), ua (client_id) and uares
    (msi_res_id)."""

    def __init__(self, tmp, testca, start_daemon, imds_listen=None, real_imds=False,
                 prefix=(), extra_compat=""):
        self.tmp = tmp
        self.relay = None
        self.fake = FakeIMDS(tmp, ["--jwt-key", str(testca.clients["rsa-pkcs8"].key),
                                   "--jwt-tenant", TENANT], name="upstream")
        if real_imds:
            # the fake as the VM's real IMDS: 169.254.169.254:80 relayed to its loopback
            # port, where the test still reaches its control API past the redirect
            ready = tmp / "relay.ready"
            self.relay = subprocess.Popen([sys.executable, str(RELAY), IMDS_ADDR, "80",
                                           "127.0.0.1", str(self.fake.port), "--ready-file",
                                           str(ready)])
            wait_for(lambda: self.relay.poll() is not None or ready.exists(),
                     what="the relay at 169.254.169.254:80")
            assert self.relay.poll() is None, "the relay exited"
        self.app_port = free_port()
        if imds_listen is None:
            imds_listen = f"127.0.0.1:{free_port()}"
        self.imds_listen = imds_listen
        self.imds_port = int(imds_listen.rsplit(":", 1)[1])
        endpoint = "http://169.254.169.254/metadata/identity/oauth2/token" if real_imds \
            else self.fake.endpoint
        ids = "\n".join(f"""[identity "{name}"]
source = azure-imds
endpoint = {endpoint}
dynamic_resources = yes
{sel}
""" for name, sel in (("vm", ""), ("ua", f"client_id = {UA_CLIENT_ID}"),
                      ("uares", f"msi_res_id = {UA_RES_ID}")))
        self.daemon = start_daemon(f"""[bearerd]
socket = @SOCKET@
log_level = debug
wait_timeout = 10

{ids}
[compat]
identity = vm
imds_listen = {imds_listen}
allow_non_loopback = {"yes" if imds_listen.startswith(IMDS_ADDR) else "no"}
appservice_listen = 127.0.0.1:{self.app_port}
appservice_secret_file = {tmp}/identity-header
dynamic_resources = yes
{extra_compat}
""", prefix=prefix)
        self.secret = (tmp / "identity-header").read_text().strip()

    def issued(self):
        """SHA-256 of each token the upstream issued, in order (each also remembered, so
        that the daemon's log is scanned for it)."""
        toks = self.fake.stats()["issued"]
        for t in toks:
            remember_token(t)
        return [sha(t) for t in toks]

    def requests(self, listener):
        return self.daemon.logs().count(f'msg="compat request" listener={listener} ')

    def route_env(self, route, msrestazure_app_service=False):
        if route == "appservice":
            env = {"MSI_ENDPOINT": f"http://127.0.0.1:{self.app_port}/msi/token",
                   "MSI_SECRET": self.secret}
            if msrestazure_app_service:
                env["APPSETTING_WEBSITE_SITE_NAME"] = "bearerd-test"
            return env
        if route == "cloudshell":
            return {"MSI_ENDPOINT": f"http://127.0.0.1:{self.imds_port}/oauth2/token"}
        if route == "cloudshell-imds-path":
            return {"MSI_ENDPOINT":
                    f"http://127.0.0.1:{self.imds_port}/metadata/identity/oauth2/token"}
        if route == "cloudshell-with-secret":  # msrestazure without App Service's variable
            return {"MSI_ENDPOINT": f"http://127.0.0.1:{self.imds_port}/oauth2/token",
                    "MSI_SECRET": self.secret}
        return {}

    def stop(self):
        if self.relay is not None:
            self.relay.terminate()
            self.relay.wait(10)
        self.fake.stop()


@pytest.fixture
def setup(tmp_path, testca, start_daemon, linklocal):
    made = []

    def make(**kw):
        s = Setup(tmp_path, testca, start_daemon, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.issued()
        s.stop()


def listener_of(route):
    return "appservice" if route == "appservice" else "imds"


# -- Go's adal -----------------------------------------------------------------------------------

SELECTORS = {None: None, "client_id": f"client_id={UA_CLIENT_ID}", "res_id": f"res_id={UA_RES_ID}"}
# what adal puts on the wire for each selector, per route (token.go)
ADAL_WIRE = {"imds": {"client_id": "client_id", "res_id": "mi_res_id"},
             "appservice": {"client_id": "clientid", "res_id": "mi_res_id"},
             "cloudshell": {"client_id": "client_id", "res_id": "msi_res_id"}}


@pytest.mark.parametrize("selector", [None, "client_id", "res_id"])
@pytest.mark.parametrize("route", ["imds", "appservice", "cloudshell", "cloudshell-imds-path"])
def test_go_adal(adal_token, setup, tmp_path, route, selector):
    """adal's three managed-identity environments, system- and user-assigned, against
    bearerd: IMDS at 169.254.169.254 (GET, Metadata: true), App Service 2017-09-01 (GET,
    Secret:, clientid / mi_res_id), Cloud Shell (a chunked POST: adal sets a body without a
    length).  adal parses expires_on as epoch seconds or a 2017 date: bearerd's epoch
    seconds are what it keeps."""
    s = setup(imds_listen=f"{IMDS_ADDR}:80" if route == "imds" else None)
    argv = [str(adal_token), RESOURCE] + ([SELECTORS[selector]] if selector else [])
    out = run_json(argv, clean_env(tmp_path, **s.route_env(route)))
    assert out["_rc"] == 0, out
    issued = s.issued()
    assert issued == [out["sha256"]], "not the upstream's token"
    assert (out["resource"], out["token_type"]) == (RESOURCE, "Bearer")
    assert abs(int(out["expires_on"]) - (time.time() + 3600)) < 60
    assert s.requests(listener_of(route)) == 1
    q = s.fake.stats()["last_query"]
    assert q["resource"] == RESOURCE
    want = {None: {}, "client_id": {"client_id": UA_CLIENT_ID},
            "res_id": {"msi_res_id": UA_RES_ID}}[selector]
    assert {k: v for k, v in q.items() if k in ("client_id", "msi_res_id")} == want


# -- msrestazure ---------------------------------------------------------------------------------

@pytest.mark.parametrize("selector", [None, "client_id"])
@pytest.mark.parametrize("route", ["imds", "appservice", "cloudshell", "cloudshell-with-secret"])
def test_msrestazure(msrestazure, setup, tmp_path, route, selector):
    """MSIAuthentication: IMDS at 169.254.169.254 (requests.get with Metadata: true), App
    Service 2017-09-01 when APPSETTING_WEBSITE_SITE_NAME says so (resource unencoded in
    the query, "/?" appended to MSI_ENDPOINT, header secret, clientid), otherwise a POST
    of a form with a Content-Length to MSI_ENDPOINT, with or without MSI_SECRET."""
    s = setup(imds_listen=f"{IMDS_ADDR}:80" if route == "imds" else None)
    argv = ["/usr/bin/python3", str(msrestazure), RESOURCE] + \
        ([f"client_id={UA_CLIENT_ID}"] if selector else [])
    out = run_json(argv, clean_env(tmp_path, **s.route_env(route, True)))
    assert out["_rc"] == 0, out
    assert s.issued() == [out["sha256"]], "not the upstream's token"
    assert out["resource"] == RESOURCE and out["token_type"] == "Bearer"
    assert abs(int(out["expires_on"]) - (time.time() + 3600)) < 60
    if selector:
        assert out["client_id"] == UA_CLIENT_ID
        assert s.fake.stats()["last_query"]["client_id"] == UA_CLIENT_ID
    assert s.requests(listener_of(route)) == 1


# -- the Azure CLI -------------------------------------------------------------------------------

class AzureCLI:
    """az with a private HOME, no telemetry, management.azure.com at a loopback stand-in
    (tests/fakes/fake_arm.py on 127.0.0.1:443 with a test-CA certificate for that name,
    trusted through REQUESTS_CA_BUNDLE; the name mapped by a private /etc/hosts, bind-
    mounted in a mount namespace of az's own)."""

    def __init__(self, az, tmp, testca):
        self.az = az
        self.tmp = tmp
        self.home = tmp / "az-home"
        self.home.mkdir()
        cert = testca.server_for("management.azure.com")
        self.hosts = tmp / "hosts"
        self.hosts.write_text("127.0.0.1 localhost\n127.0.0.1 management.azure.com\n")
        self.ca = testca.ca.cert
        self.log = open(tmp / "fake-arm.log", "w")
        port_file = tmp / "arm.port"
        self.proc = subprocess.Popen([sys.executable, str(FAKE_ARM), "--cert", str(cert.cert),
                                      "--key", str(cert.key), "--tenant", TENANT,
                                      "--subscription", SUBSCRIPTION, "--port", "443",
                                      "--port-file", str(port_file)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or port_file.exists(),
                 what="the ARM stand-in")
        assert self.proc.poll() is None, (tmp / "fake-arm.log").read_text()

    def run(self, *args, env=None):
        e = clean_env(self.home, AZURE_CONFIG_DIR=str(self.home / ".azure"),
                      AZURE_CORE_COLLECT_TELEMETRY="0", AZURE_CORE_NO_COLOR="1",
                      AZURE_CORE_SURVEY_MESSAGE="0", REQUESTS_CA_BUNDLE=str(self.ca),
                      **(env or {}))
        argv = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                str(self.hosts), self.az, *args, "-o", "json"]
        p = subprocess.run(argv, env=e, capture_output=True, text=True, timeout=300)
        try:
            doc = json.loads(p.stdout) if p.stdout.strip() else None
        except ValueError:
            doc = None
        return p.returncode, doc, p.stderr[-3000:]

    def arm_requests(self):
        import ssl
        import urllib.request
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.check_hostname = False  # the control API, by address
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
        with opener.open("https://127.0.0.1:443/_fake/stats", timeout=10) as r:
            return json.loads(r.read())["requests"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def azure_cli(az, tmp_path, testca):
    c = AzureCLI(az, tmp_path, testca)
    yield c
    c.stop()


def login_and_token(cli, s, env, login_args=()):
    """az login --identity, then az account get-access-token --resource; the checks that
    hold on every route.  Returns the login's account list."""
    before = s.issued()
    seen = {e["resource"] for e in s.fake.stats()["log"]}
    rc, accounts, err = cli.run("login", "--identity", "--allow-no-subscriptions",
                                *login_args, env=env)
    assert rc == 0, err
    assert [a["id"] for a in accounts] == [SUBSCRIPTION], accounts
    assert accounts[0]["tenantId"] == TENANT
    after_login = s.issued()
    assert len(after_login) == len(before) + 1, "az login asked for one token (ARM's)"
    assert s.fake.stats()["log"][len(before)]["resource"] == ARM_RESOURCE
    arm = cli.arm_requests()
    assert arm and all(r["token_sha256"] == after_login[-1] for r in arm), \
        "ARM did not see the token bearerd handed out"
    assert arm[0]["path"] == "/subscriptions"
    rc, tok, err = cli.run("account", "get-access-token", "--resource", RESOURCE, env=env)
    assert rc == 0, err
    digest = sha(tok["accessToken"])
    remember_token(tok["accessToken"])
    tok["accessToken"] = "<redacted>"
    issued = s.issued()
    assert digest in issued, "get-access-token did not return the upstream's token"
    assert len(issued) == len(after_login) + (RESOURCE not in seen), "bearerd's cache"
    assert tok["subscription"] == SUBSCRIPTION and tok["tenant"] == TENANT, tok
    # 2.45 prints only expiresOn, local time (from the answer's epoch expires_on)
    expires = datetime.datetime.strptime(tok["expiresOn"], "%Y-%m-%d %H:%M:%S.%f").timestamp()
    assert abs(expires - (time.time() + 3600)) < 60, tok
    return accounts


@pytest.mark.parametrize("route", ["imds", "appservice", "cloudshell"])
def test_azure_cli(azure_cli, setup, route):
    """az login --identity --allow-no-subscriptions and az account get-access-token, with
    bearerd at 169.254.169.254 (nothing set), MSI_ENDPOINT + MSI_SECRET (App Service
    2017-09-01; az needs App Service's APPSETTING_WEBSITE_SITE_NAME to pick it), and
    MSI_ENDPOINT alone (Cloud Shell's POST)."""
    s = setup(imds_listen=f"{IMDS_ADDR}:80" if route == "imds" else None)
    login_and_token(azure_cli, s, s.route_env(route, msrestazure_app_service=True))
    # msrestazure caches IMDS tokens per process, and asks MSI_ENDPOINT again for every
    # session (signed_session): bearerd answers those from its cache, and the upstream
    # saw two requests (login_and_token)
    assert s.requests(listener_of(route)) == (2 if route == "imds" else 4)
    assert s.requests("imds" if route == "appservice" else "appservice") == 0


def test_azure_cli_user_assigned(azure_cli, setup):
    """az login --identity --username CLIENT_ID: the CLI sniffs a client id, then asks
    with client_id=."""
    s = setup(imds_listen=f"{IMDS_ADDR}:80")
    accounts = login_and_token(azure_cli, s, {}, ("--username", UA_CLIENT_ID))
    assert accounts[0]["user"]["assignedIdentityInfo"] == f"MSIClient-{UA_CLIENT_ID}"
    assert s.fake.stats()["last_query"]["client_id"] == UA_CLIENT_ID


def test_azure_cli_ignores_identity_endpoint(azure_cli, setup):
    """The CLI 2.45 does not read IDENTITY_ENDPOINT / IDENTITY_HEADER (msrestazure knows only
    MSI_ENDPOINT): with them set it still asks 169.254.169.254."""
    s = setup(imds_listen=f"{IMDS_ADDR}:80")
    env = {"IDENTITY_ENDPOINT": f"http://127.0.0.1:{s.app_port}/msi/token",
           "IDENTITY_HEADER": s.secret}
    login_and_token(azure_cli, s, env)
    assert (s.requests("appservice"), s.requests("imds")) == (0, 2)


# -- the transparent IMDS on a VM: contrib/imds-redirect -----------------------------------------

def cgroup2_root():
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, kind = line.split()[:3]
            if kind == "cgroup2":
                return Path(mnt)
    return None


class Cgroups:
    """Two cgroup v2 groups two levels down, as systemd's system.slice/bearerd.service
    is: TOP/bearerd.service for bearerd and TOP/other.service for nothing.  nft resolves
    a cgroupv2 path under /sys/fs/cgroup; on a hybrid host (cgroup2 at
    /sys/fs/cgroup/unified) the helper runs in a mount namespace where cgroup2 is mounted
    at /sys/fs/cgroup, so the path and its level are those of a unified host."""

    def __init__(self):
        self.root = cgroup2_root()
        self.top = f"bearerd-test-{os.getpid()}-{time.monotonic_ns() % 100000}"
        self.dirs = [self.root / self.top, self.root / self.top / "bearerd.service",
                     self.root / self.top / "other.service"]
        for d in self.dirs:
            d.mkdir()

    def path(self, name):
        return f"{self.top}/{name}"

    def wrapper(self, name):
        """argv prefix that moves the process into TOP/name, then execs the rest."""
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"',
                str(self.root / self.top / name)]

    def redirect(self, *args):
        argv = [str(REDIRECT), *args]
        if self.root != Path("/sys/fs/cgroup"):
            argv = ["unshare", "-m", "sh", "-c",
                    'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$@"', "sh", *argv]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def remove(self):
        for d in reversed(self.dirs):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)  # the last process is still leaving
        assert not (self.root / self.top).exists(), f"{self.top} is left behind"


@pytest.fixture
def cgroups():
    """Ask for it first: it is removed last, after bearerd has left its cgroup."""
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed (Debian: nftables)")
    if cgroup2_root() is None:
        pytest.skip("no cgroup2 hierarchy is mounted: the helper matches bearerd by cgroup "
                    "(use --uid where there is none)")
    c = Cgroups()
    yield c
    subprocess.run([str(REDIRECT), "stop"], capture_output=True, timeout=30)
    c.remove()


def curl_imds(path, headers=("Metadata: true",)):
    argv = ["curl", "-s", "--noproxy", "*", "-w", "\n%{http_code}"]
    for h in headers:
        argv += ["-H", h]
    p = subprocess.run(argv + [f"http://{IMDS_ADDR}{path}"], capture_output=True, text=True,
                       timeout=60)
    body, _, code = p.stdout.rpartition("\n")
    return int(code or 0), body


def test_vm_redirect_with_real_clients(cgroups, adal_token, msrestazure, azure_cli, setup,
                                       tmp_path):
    """bearerd.service's own requests (its cgroup) reach the real IMDS at 169.254.169.254:80;
    everyone else's are redirected to bearerd on 127.0.0.1: Go's adal, msrestazure and the
    Azure CLI, with nothing set, get their tokens from bearerd, and the real IMDS sees only
    bearerd's requests, one per resource.  IMDS's other paths are relayed (imds_relay).
    `stop` undoes it: then the real IMDS answers the clients itself."""
    s = setup(real_imds=True,
              prefix=cgroups.wrapper("bearerd.service"), extra_compat="imds_relay = yes")
    rules = cgroups.redirect("start", "--port", str(s.imds_port), "--cgroup",
                             cgroups.path("bearerd.service"))
    assert rules == ""
    out = run_json([str(adal_token), RESOURCE], clean_env(tmp_path))
    assert out["_rc"] == 0, out
    out2 = run_json(["/usr/bin/python3", str(msrestazure), RESOURCE], clean_env(tmp_path))
    assert out2["_rc"] == 0, out2
    issued = s.issued()
    assert issued == [out["sha256"]] == [out2["sha256"]], "one upstream token, from bearerd"
    login_and_token(azure_cli, s, {})
    st, body = curl_imds("/metadata/instance?api-version=2021-02-01")
    assert st == 200 and json.loads(body)["compute"]["name"] == "fake-vm", body
    assert s.requests("imds") == 5  # adal, msrestazure, az twice, the relayed one
    stats = s.fake.stats()
    assert stats["requests"] == 2 and stats["loop_fields"] == 2, \
        "the real IMDS saw a request that was not bearerd's"
    assert stats["last_headers"]["User-Agent"].startswith("bearerd/")
    assert [o["loop"] for o in stats["other"]] == [True]
    # undone: the clients reach the real IMDS directly, bearerd sees nothing more
    cgroups.redirect("stop")
    assert subprocess.run(["nft", "list", "table", "ip", "bearerd_imds"],
                          capture_output=True).returncode != 0
    out3 = run_json([str(adal_token), RESOURCE], clean_env(tmp_path))
    assert out3["_rc"] == 0, out3
    assert s.issued()[-1] == out3["sha256"] and s.fake.stats()["loop_fields"] == 2
    assert s.requests("imds") == 5


def test_vm_redirect_without_exemption_is_a_clear_error(cgroups, adal_token, setup, tmp_path):
    """A rule that does not exempt bearerd (here: another cgroup than bearerd's, as a stale
    rule after a restart would be) sends bearerd's own request back to bearerd: refused at
    once (508, logged), and the client gets a 503 that says why, instead of a hang."""
    s = setup(real_imds=True,
              prefix=cgroups.wrapper("bearerd.service"))
    cgroups.redirect("start", "--port", str(s.imds_port), "--cgroup",
                     cgroups.path("other.service"))
    t0 = time.monotonic()
    st, body = curl_imds(f"/metadata/identity/oauth2/token?api-version=2018-02-01&resource="
                         f"{RESOURCE}")
    assert st == 503 and "came back to bearerd" in json.loads(body)["error_description"], body
    assert time.monotonic() - t0 < 5  # wait_timeout is 10 s
    assert "bearerd asked itself for a token" in s.daemon.logs()
    assert s.fake.stats()["requests"] == 0
    # adal retries 5xx: with one attempt it reports the same reason
    out = run_json([str(adal_token), RESOURCE], clean_env(tmp_path))
    assert out["_rc"] == 1 and "came back to bearerd" in out["error"], out


# -- the transparent IMDS in a pod: deploy/kubernetes/transparent-imds.yaml ----------------------

def manifest_config():
    """transparent-imds.yaml's bearerd.conf, as the ConfigMap holds it."""
    import yaml
    docs = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" /
                               "transparent-imds.yaml").read_text())
    (text,) = [d["data"]["bearerd.conf"] for d in docs if d and d["kind"] == "ConfigMap"]
    return text


def test_pod_manifest_config_with_real_clients(adal_token, msrestazure, fe, start_daemon,
                                               linklocal, tmp_path, testca):
    """The pod manifest's own config (only its socket path, and the test CA for the fake Entra
    ID, changed) at 169.254.169.254:80 with the AKS webhook's variables: Go's adal and
    msrestazure with nothing set get tokens that bearerd exchanged the federated token for,
    one upstream request per resource; a resource outside its list and uid 1000's audience
    are refused; IMDS's other paths are 403."""
    from test_sources_entra import federated_jwt
    from conftest import secret_file
    client = "5f9b1c2e-0000-4000-8000-00000000c11e"
    assertion = federated_jwt("pod")
    fe.configure(tenant=TENANT, clients={client: {"federated": assertion}})
    path = secret_file(tmp_path, "azure-identity-token", assertion)
    text = manifest_config().replace("socket = /run/bearerd/bearerd.sock",
                                     f"socket = @SOCKET@\nca_file = {testca.ca.cert}")
    d = start_daemon(text, env={"AZURE_CLIENT_ID": client, "AZURE_TENANT_ID": TENANT,
                                "AZURE_FEDERATED_TOKEN_FILE": str(path),
                                "AZURE_AUTHORITY_HOST": fe.authority + "/"})
    outs = [run_json([str(adal_token), "https://vault.azure.net"], clean_env(tmp_path)),
            run_json(["/usr/bin/python3", str(msrestazure), "https://vault.azure.net"],
                     clean_env(tmp_path)),
            run_json([str(adal_token), "https://management.azure.com/"], clean_env(tmp_path))]
    for o in outs:
        assert o["_rc"] == 0, o
    issued = [sha(remember_token(t)) for t in fe.stats()["issued"]]
    # apim (prefetch) first, then one per resource the clients asked for
    assert len(issued) == 3 and [o["sha256"] for o in outs] == [issued[1], issued[1],
                                                                 issued[2]], outs
    for query, want in (("resource=https://example.com/", 400),
                        ("resource=api://apim-managedidentity-nwe-i2jdr", 403)):
        st, body = curl_imds(f"/metadata/identity/oauth2/token?api-version=2018-02-01&{query}")
        assert st == want and "access_token" not in body, (query, st, body)
    assert curl_imds("/metadata/instance?api-version=2021-02-01")[0] == 403
    assert len(fe.stats()["issued"]) == 3
    assert d.ctl("status").returncode == 0
