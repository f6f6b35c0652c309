"""Every shipped config (the annotated reference and the examples) passes bearerd -n."""

import subprocess

import pytest

from conftest import BEARERD, ROOT

CONFIGS = sorted([ROOT / "config" / "bearerd.conf"] + list((ROOT / "config" / "examples").glob("*.conf")))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    r = subprocess.run([str(BEARERD), "-n", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: ok"
