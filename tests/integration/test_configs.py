"""Every shipped config (the annotated reference and the examples) passes bearerd -n.

The examples name what their platform provides: $CREDENTIALS_DIRECTORY files
(systemd LoadCredential=), the App Service variables IDENTITY_ENDPOINT and
IDENTITY_HEADER, the AKS workload identity variables AZURE_*.  bearerd -n checks
those files (owner, mode, a key that loads and matches its certificate), so each
config is validated in the environment its platform would give it: a private
credentials directory holding, for every $CREDENTIALS_DIRECTORY/NAME the config
names, a 0600 secret, or for NAME.key / NAME.crt a real key and its certificate."""

import os
import re
import subprocess

import pytest

from conftest import BEARERD, ROOT

CONFIGS = sorted([ROOT / "config" / "bearerd.conf"] + list((ROOT / "config" / "examples").glob("*.conf")))
CRED = re.compile(r"^[^;#\n]*\$\{?CREDENTIALS_DIRECTORY\}?/([A-Za-z0-9._-]+)", re.M)


def make_credentials(conf_text, creddir):
    names = set(CRED.findall(conf_text))
    for name in sorted(names):
        stem, ext = os.path.splitext(name)
        path = creddir / name
        if ext in (".key", ".crt"):
            if path.exists():
                continue
            # a key and its certificate, as a real registration would have
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", str(creddir / (stem + ".key")),
                            "-out", str(creddir / (stem + ".crt")), "-days", "1",
                            "-subj", "/CN=" + stem], check=True, capture_output=True)
            os.chmod(creddir / (stem + ".key"), 0o600)
        else:
            path.write_text("not-a-real-secret\n")
            os.chmod(path, 0o600)
    return names


def platform_env(tmp_path):
    creddir = tmp_path / "credentials"
    creddir.mkdir(mode=0o700)
    token = tmp_path / "azure-identity-token"
    token.write_text("header.claims.signature")
    os.chmod(token, 0o644)  # as Kubernetes projects it
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AZURE_") and k not in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER")}
    env.update({
        "CREDENTIALS_DIRECTORY": str(creddir),
        "IDENTITY_ENDPOINT": "http://127.0.0.1:41741/msi/token",
        "IDENTITY_HEADER": "not-a-real-header",
        "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000000",
        "AZURE_TENANT_ID": "00000000-0000-0000-0000-0000000000aa",
        "AZURE_FEDERATED_TOKEN_FILE": str(token),
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
    })
    return env, creddir


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path, tmp_path):
    env, creddir = platform_env(tmp_path)
    make_credentials(path.read_text(), creddir)
    r = subprocess.run([str(BEARERD), "-n", "-c", str(path)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: ok"


def test_credentials_are_really_checked(tmp_path):
    """The environment above is not a blank cheque: without the credentials directory's
    files, or with a key readable by others, the entra examples fail."""
    path = ROOT / "config" / "examples" / "entra-certificate.conf"
    env, creddir = platform_env(tmp_path)
    r = subprocess.run([str(BEARERD), "-n", "-c", str(path)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 1 and "No such file" in r.stderr, r.stderr
    assert make_credentials(path.read_text(), creddir) == {"app.crt", "app.key"}
    os.chmod(creddir / "app.key", 0o644)
    r = subprocess.run([str(BEARERD), "-n", "-c", str(path)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 1 and "readable by other users" in r.stderr, r.stderr
    del env["CREDENTIALS_DIRECTORY"]
    r = subprocess.run([str(BEARERD), "-n", "-c", str(path)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 1 and "CREDENTIALS_DIRECTORY" in r.stderr, r.stderr


def embedded_configs():
    """The bearerd.conf blocks of the Kubernetes manifests (ConfigMap data, literal style)."""
    out = []
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() != "bearerd.conf: |":
                continue
            indent = None
            body = []
            for nxt in lines[i + 1:]:
                if nxt.strip() == "":
                    body.append("")
                    continue
                cur = len(nxt) - len(nxt.lstrip())
                if indent is None:
                    indent = cur
                if cur < indent:
                    break
                body.append(nxt[indent:])
            out.append(pytest.param("\n".join(body) + "\n", id=f"{path.name}:{i + 1}"))
    return out


EMBEDDED = embedded_configs()


def test_manifests_embed_configs():
    assert len(EMBEDDED) >= 2  # pod.yaml and workload-identity.yaml


@pytest.mark.parametrize("text", EMBEDDED)
def test_manifest_config_is_valid(text, tmp_path):
    env, _ = platform_env(tmp_path)
    conf = tmp_path / "bearerd.conf"
    conf.write_text(text)
    r = subprocess.run([str(BEARERD), "-n", "-c", str(conf)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
