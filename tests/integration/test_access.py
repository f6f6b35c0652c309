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
dynamic_resources = yes

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
    r = d.get("/v1/token?resource=api%3A%2F%2Ftheirs")
    assert r.status == 403
    assert d.request("POST", "/v1/refresh/theirs").status == 403
    # nothing was fetched for the refused audience
    assert fake.stats()["by_resource"].get("api://theirs", 0) == 0
    assert d.ctl("token", "theirs").returncode == 1


def test_socket_mode(fake, start_daemon):
    d = start_daemon(config(fake))
    assert os.stat(d.socket).st_mode & 0o777 == 0o600
