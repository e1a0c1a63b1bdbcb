"""`aefast info` (versions, devices, backends with reasons, build features) and `aefast bench`."""
import json
import subprocess
import sys

import pytest

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


def test_bench_quick_writes_rows_with_speedups_a_plot_and_markdown(tmp_path, capsys):
    from aefast.cli import main

    json_path, markdown_path = tmp_path / "bench.json", tmp_path / "bench.md"
    assert main(["bench", "--quick", "--only", "vae,willshaw", "--json", str(json_path),
                 "--markdown", str(markdown_path)]) == 0
    rows = json.loads(json_path.read_text())["rows"]
    assert {row["component"] for row in rows} == {"vae", "willshaw"}
    assert all(row["speedup"] > 0 for row in rows)
    assert (tmp_path / "bench_speedup.png").read_bytes()[:4] == b"\x89PNG"
    assert markdown_path.read_text().startswith("| component | case |")
    assert "x eager" in capsys.readouterr().out


def test_bench_refuses_unknown_components(capsys):
    from aefast.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--only", "gpu-magic"])
    assert "--only takes" in capsys.readouterr().err
