"""`aefast info`: versions, devices, backends with reasons, build features."""
import json
import subprocess
import sys

import aefast


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "aefast.cli", *args], capture_output=True, text=True, check=True)


def test_info_lists_versions_backends_and_features():
    out = run_cli("info").stdout
    assert f"aefast {aefast.__version__}" in out
    for word in ("torch", "triton", "compiler", "reference", "cpp", "triton", "cuda", "avx512", "kernel ISA"):
        assert word in out, word


def test_info_json_matches_available_backends():
    info = json.loads(run_cli("info", "--json").stdout)
    assert info["versions"]["aefast"] == aefast.__version__
    assert set(info["backends"]) == set(aefast.available_backends())
    assert info["backends"]["reference"] is True
    assert isinstance(info["build"]["cuda"], bool)
    assert "avx512vpopcntdq" in info["cpu"]
