"""bearerd --dev and scripts/demo: the embedded development configuration."""

import base64
import json
import os
import signal
import subprocess
from pathlib import Path

from conftest import BEARERD, ROOT, UnixHTTPConnection, remember_token, wait_for


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def test_dev_mode_mints_jwts_with_roles(start_daemon):
    d = start_daemon(None, args=["--dev"])
    r = d.ctl("token", "demo")
    assert r.returncode == 0, r.stderr
    tok = remember_token(r.stdout.strip())
    header, claims, sig = tok.split(".")
    h = json.loads(b64url(header))
    c = json.loads(b64url(claims))
    assert h["alg"] == "RS256" and h["kid"]
    assert c["aud"] == "api://bearerd-demo"
    assert c["roles"] == ["Sample.Read", "Sample.Write"]
    assert c["exp"] - c["iat"] == 3600
    jwks = d.get("/v1/dev/jwks.json").json()
    assert [k["kid"] for k in jwks["keys"]] == [h["kid"]]
    cl = d.ctl("claims", "demo")
    assert cl.returncode == 0 and "Sample.Write" in cl.stdout and tok not in cl.stdout
    assert d.ctl("health").returncode == 0
    assert "development" in d.logs()
    # the readiness probe and status see the prefetched audience
    assert d.get("/readyz").status == 200


def test_signature_verifies_with_openssl(start_daemon, tmp_path):
    d = start_daemon(None, args=["--dev"])
    tok = remember_token(d.ctl("token", "demo").stdout.strip())
    jwk = d.get("/v1/dev/jwks.json").json()["keys"][0]
    n = int.from_bytes(b64url(jwk["n"]), "big")
    e = int.from_bytes(b64url(jwk["e"]), "big")
    # build a PEM public key from n and e with openssl's asn1parse config
    conf = tmp_path / "key.asn1"
    conf.write_text(f"asn1=SEQUENCE:pubkey\n[pubkey]\nn=INTEGER:{n}\ne=INTEGER:{e}\n")
    der = tmp_path / "key.der"
    subprocess.run(["openssl", "asn1parse", "-genconf", str(conf), "-out", str(der), "-noout"],
                   check=True)
    pem = tmp_path / "key.pem"
    subprocess.run(["openssl", "rsa", "-RSAPublicKey_in", "-inform", "DER", "-in", str(der),
                    "-pubout", "-out", str(pem)], check=True, capture_output=True)
    header, claims, sig = tok.split(".")
    (tmp_path / "data").write_bytes(f"{header}.{claims}".encode())
    (tmp_path / "sig").write_bytes(b64url(sig))
    r = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pem), "-signature",
                        str(tmp_path / "sig"), str(tmp_path / "data")], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "Verified OK" in r.stdout


def test_sigterm_finishes_and_removes_socket(start_daemon):
    d = start_daemon(None, args=["--dev"])
    assert d.get("/v1/token/demo").status == 200
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(10) == 0
    assert not Path(d.socket).exists()


def test_stale_socket_replaced_live_one_kept(start_daemon, tmp_path):
    d = start_daemon(None, args=["--dev"])
    # a second daemon on the same socket refuses to steal it
    r = subprocess.run([str(BEARERD), "--dev"], env=d.env, capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1 and "another daemon" in r.stderr
    assert d.get("/healthz").status == 200


def test_scripts_demo_serves_a_token(tmp_path):
    sock = tmp_path / "demo.sock"
    env = dict(os.environ, BEARERD_SOCKET=str(sock))
    p = subprocess.Popen([str(ROOT / "scripts" / "demo")], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: sock.exists(), timeout=120, what="scripts/demo to listen")

        def token():
            c = UnixHTTPConnection(str(sock), timeout=10)
            try:
                c.request("GET", "/v1/token/demo", headers={"Accept": "text/plain"})
                r = c.getresponse()
                return r.read().decode() if r.status == 200 else None
            except OSError:
                return None
            finally:
                c.close()

        tok = wait_for(token, timeout=30, what="a token from the demo")
        remember_token(tok)
        assert tok.count(".") == 2
    finally:
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=15)
    assert p.returncode == 0, out
