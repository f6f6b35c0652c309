#!/usr/bin/python3
"""bearerd answering at 169.254.169.254:80, for .NET clients with nothing set.

DefaultAzureCredential's IMDS probe takes a 400 as "IMDS is here" only from
the host 169.254.169.254, so this route can only be tested where bearerd holds
that address.  tests/integration/test_dotnet.py runs this script in a network
namespace of its own (unshare -n, or -rn when not root); it refuses to run
where the namespace has any interface but lo, so it never touches a real host's
network.  In that namespace it:

  - brings lo up and adds 169.254.169.254/32 to it;
  - starts bearerd (a dev identity: it mints RS256 JWTs) with
    [compat] imds_listen = 169.254.169.254:80 and allow_non_loopback = yes;
  - starts tests/fakes/protected_api.py (JWKS from bearerd's socket);
  - runs MiClient with DefaultAzureCredential, ManagedIdentityCredential and
    MSAL.NET, and ArticleApp (GET, POST, DELETE), each with no Azure variable;
  - stops bearerd and prints one JSON document with what each client got.

Usage: linklocal.py --bearerd BIN --dir DIR --miclient DLL --article DLL --protected-api PY
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def wait_for(pred, what, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"linklocal: timed out waiting for {what}")


def clean_env(home):
    """Nothing that points a client anywhere: the route under test is the default one."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home,
            "DOTNET_CLI_TELEMETRY_OPTOUT": "1", "DOTNET_NOLOGO": "1",
            "DOTNET_SKIP_FIRST_TIME_EXPERIENCE": "1"}


def events(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def connects(host, port):
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    for a in ("--bearerd", "--dir", "--miclient", "--article", "--protected-api"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()

    # /proc/net/dev is this process's network namespace (sysfs may be another's)
    with open("/proc/net/dev") as f:
        links = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
    if links != ["lo"]:
        raise SystemExit(f"linklocal: refusing to run outside a namespace with only lo: {links}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"], check=True)

    d = args.dir
    sock = os.path.join(d, "bearerd.sock")
    conf = os.path.join(d, "bearerd.conf")
    with open(conf, "w") as f:
        f.write(f"""[bearerd]
socket = {sock}
log_level = debug

[identity "dev"]
source = dev
roles = Sample.Read Sample.Write
dynamic_resources = yes

[audience "apim"]
identity = dev
resource = api://apim-demo

[compat]
identity = dev
imds_listen = 169.254.169.254:80
allow_non_loopback = yes
""")
    blog = open(os.path.join(d, "bearerd.log"), "w")
    bearerd = subprocess.Popen([args.bearerd, "-c", conf], stdout=blog, stderr=subprocess.STDOUT)
    wait_for(lambda: bearerd.poll() is not None or connects("169.254.169.254", 80),
             "bearerd on 169.254.169.254:80")
    if bearerd.poll() is not None:
        raise SystemExit(f"linklocal: bearerd exited {bearerd.returncode}")

    port_file = os.path.join(d, "api.port")
    alog = open(os.path.join(d, "api.log"), "w")
    api = subprocess.Popen([sys.executable, args.protected_api, "--port", "0", "--port-file",
                            port_file, "--jwks-socket", sock], stdout=alog,
                           stderr=subprocess.STDOUT)
    wait_for(lambda: os.path.exists(port_file), "the protected API")
    api_port = int(open(port_file).read())

    out = {"clients": {}, "article": {}}
    env = clean_env(d)
    for kind in ("dac", "mic", "msal"):
        p = subprocess.run(["dotnet", args.miclient, "--credential", kind, "--observe",
                            "--scope", "api://apim-demo"], env=env, capture_output=True,
                           text=True, timeout=120)
        out["clients"][kind] = {"rc": p.returncode, "events": events(p.stdout),
                                "stderr": p.stderr[-2000:]}

    app_env = dict(env, ApiManagement__GatewayUrl=f"http://127.0.0.1:{api_port}",
                   ApiManagement__OAuthTargetResource="api://apim-demo",
                   Logging__LogLevel__Default="Warning",
                   **{"Logging__LogLevel__Microsoft.Hosting.Lifetime": "Information"})
    app = subprocess.Popen(["dotnet", args.article, "--urls", "http://127.0.0.1:0"],
                           env=app_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    url = None
    for line in app.stdout:
        if "Now listening on: " in line:
            url = line.split("Now listening on: ")[1].strip()
            break
    if url is None:
        raise SystemExit("linklocal: ArticleApp did not start")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for method in ("GET", "POST", "DELETE"):
        req = urllib.request.Request(url + "/api/CallProtectedApiFunction", method=method)
        try:
            with opener.open(req, timeout=120) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {"raw": body.decode(errors="replace")[:500]}
        out["article"][method] = {"status": status, "body": doc}
    app.send_signal(signal.SIGTERM)
    app.wait(30)
    api.terminate()
    api.wait(10)

    bearerd.send_signal(signal.SIGTERM)
    out["bearerd_rc"] = bearerd.wait(15)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
