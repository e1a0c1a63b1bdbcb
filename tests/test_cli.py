"""`aefast info` (versions, devices, backends with reasons, build features) and `aefast bench`."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

import aefast

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "aefast.cli", *args], capture_output=True, text=True, check=True)


def test_info_lists_versions_backends_and_features():
    out = run_cli("info").stdout
    assert f"aefast {aefast.__version__}" in out
    for word in ("torch", "triton", "compiler", "reference", "cpp", "triton", "cuda", "avx512", "kernel ISA"):
        assert word in out, word


def test_python_dash_m_aefast_is_the_aefast_command():
    out = subprocess.run([sys.executable, "-m", "aefast", "info"], capture_output=True, text=True, check=True).stdout
    assert out == run_cli("info").stdout


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
    assert json.loads(json_path.read_text())["quick"] is True
    assert "x eager" in capsys.readouterr().out


def test_bench_refuses_unknown_components(capsys):
    from aefast.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--only", "gpu-magic"])
    assert "--only takes" in capsys.readouterr().err


def test_bench_checks_its_output_paths_before_running(tmp_path, capsys, monkeypatch):
    # A full run takes minutes: a path it cannot write must fail first, not lose the results after.
    from aefast import bench_cli
    from aefast.cli import main

    monkeypatch.setattr(bench_cli, "run", lambda *args, **kwargs: pytest.fail("the benchmarks ran"))
    with pytest.raises(SystemExit):
        main(["bench", "--quick", "--markdown", str(tmp_path)])
    assert "is a folder: give a file name" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit):
        main(["bench", "--quick", "--json", str(tmp_path / "a-file" / "bench.json")])
    assert "cannot create the folder of" in capsys.readouterr().err
    bench_cli._check_output_path(tmp_path / "new" / "folders" / "bench.json")
    assert (tmp_path / "new" / "folders").is_dir()


def test_bench_cannot_write_into_a_folder(tmp_path, capsys, monkeypatch):
    # As root (CI) every folder is writable: the refusal is seen through os.access.
    from aefast import bench_cli
    from aefast.cli import main

    monkeypatch.setattr(bench_cli, "run", lambda *args, **kwargs: pytest.fail("the benchmarks ran"))
    monkeypatch.setattr(bench_cli.os, "access", lambda path, mode: pathlib.Path(path) != tmp_path)
    with pytest.raises(SystemExit):
        main(["bench", "--quick", "--json", str(tmp_path / "bench.json")])
    assert f"cannot write into {tmp_path}" in capsys.readouterr().err


def fake_benchmark_run(seen: dict, returncode: int = 0):
    """A stand-in for subprocess.run of the benchmarks: records the child's command, folder and
    environment, writes an empty pytest-benchmark JSON and exits with ``returncode``."""
    def fake_run(command, cwd, env):
        seen.update(command=command, cwd=cwd, env=env)
        pathlib.Path(command[command.index("--benchmark-only") + 1].split("=", 1)[1]).write_text('{"benchmarks": []}')
        return subprocess.CompletedProcess(command, returncode)
    return fake_run


def test_bench_passes_its_device_and_not_xdists_worker_to_the_benchmarks(monkeypatch, capsys):
    # Run from an xdist worker (the suite runs in two), the child must not take itself for one.
    from aefast import bench_cli
    from aefast.cli import main

    seen = {}
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setattr(bench_cli.subprocess, "run", fake_benchmark_run(seen))
    assert main(["bench", "--quick", "--only", "vae, mlp", "--device", "cpu"]) == 0
    assert seen["env"]["AEFAST_BENCH_DEVICE"] == "cpu" and seen["env"]["AEFAST_BENCH_QUICK"] == "1"
    assert not [name for name in seen["env"] if name.startswith("PYTEST_XDIST_")]
    assert [arg for arg in seen["command"] if arg.startswith("bench_")] == ["bench_vae.py", "bench_mlp.py"]
    assert main(["bench"]) == 0  # no --device: the benchmarks choose (a GPU when there is one)
    assert "AEFAST_BENCH_DEVICE" not in seen["env"] and seen["env"]["AEFAST_BENCH_QUICK"] == "0"
    capsys.readouterr()


def test_bench_fails_when_the_benchmarks_fail_even_with_their_json_written(monkeypatch, capsys):
    from aefast import bench_cli
    from aefast.cli import main

    monkeypatch.setattr(bench_cli.subprocess, "run", fake_benchmark_run({}, returncode=1))
    with pytest.raises(SystemExit):
        main(["bench", "--quick", "--only", "vae"])
    assert "the benchmarks failed (exit 1)" in capsys.readouterr().err


def test_the_table_cells_and_markdown():
    from aefast.bench_cli import HEADER, markdown, table_cells

    row = {"component": "vae", "case": "forward 4096x64", "device": "cpu", "dtype": "float32", "aefast_s": 0.002,
           "eager_s": 0.004, "compile_s": 0.003, "speedup": 2.0, "speedup_vs_compile": 1.5,
           "fraction_of_copy_bandwidth": 0.5}
    assert table_cells(row) == ["vae", "forward 4096x64", "cpu", "float32", "2.00", "4.00", "3.00", "2.00", "1.50",
                                "50% copy"]
    # Each row's limit is the one its case measures against; a row without timings shows dashes.
    matmul_row = {key: value for key, value in row.items() if key != "fraction_of_copy_bandwidth"}
    assert table_cells({**matmul_row, "fraction_of_matmul_flops": 0.25})[-1] == "25% matmul"
    bare = {"component": "willshaw", "case": "store", "fraction_of_read_bandwidth": 0.75}
    assert table_cells(bare)[2:] == ["-"] * 7 + ["75% read"]
    lines = markdown([row, bare]).splitlines()
    assert lines[0] == "| " + " | ".join(HEADER) + " |"
    assert all(line.count("|") == len(HEADER) + 1 for line in lines)


def test_bench_runs_the_benchmarks_with_this_checkouts_aefast(monkeypatch):
    # The child starts in benchmarks/: without the checkout on its path, an aefast that is not installed
    # (imported from the checkout's root) would not import there, and an installed one might be another.
    from aefast import bench_cli

    seen = {}
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setattr(bench_cli.subprocess, "run", fake_benchmark_run(seen))
    assert bench_cli.run(["vae"], quick=True, device=None) == {"benchmarks": []}
    checkout = pathlib.Path(aefast.__file__).resolve().parent.parent
    assert seen["cwd"] == checkout / "benchmarks"
    assert seen["env"]["PYTHONPATH"].split(os.pathsep) == [str(checkout), "/elsewhere"]
    assert seen["env"]["AEFAST_BENCH_QUICK"] == "1"


def test_bench_rows_keep_variants_of_aefast_apart():
    """A case timed twice by aefast (bench_mlp's "aefast tf32x3" role): one summary row per timing,
    each with its own benchmark's details and ratios against the case's shared eager run."""
    spec = importlib.util.spec_from_file_location("aefast_benchmarks_conftest", BENCHMARKS / "conftest.py")
    benchmarks_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmarks_conftest)
    from aefast.bench_cli import rows, table_cells

    def bench(role, seconds, dtype):
        return {"stats": {"median": seconds}, "extra_info": {
            "component": "mlp", "case": "train 8-4 batch 2", "role": role, "device_name": "cpu", "bytes": 64,
            "dtype": dtype, "dims": [8, 4], "backend": "triton" if role.startswith("aefast") else None}}

    run = {"benchmarks": [bench("aefast", 2.0, "ieee"), bench("aefast tf32x3", 0.5, "3xtf32"),
                          bench("eager", 1.0, "eager")]}
    run["aefast_summary"] = benchmarks_conftest._summary_rows(run["benchmarks"])
    by_variant = {row["variant"]: row for row in rows(run)}
    assert set(by_variant) == {None, "tf32x3"}
    assert by_variant[None]["speedup"] == 0.5 and by_variant["tf32x3"]["speedup"] == 2.0
    assert by_variant[None]["dtype"] == "ieee" and by_variant["tf32x3"]["dtype"] == "3xtf32"
    assert table_cells(by_variant["tf32x3"])[1] == "train 8-4 batch 2 (tf32x3)"


def test_bench_rows_give_each_roles_share_of_host_time():
    """On a GPU each benchmark records its host time per call (host_s): the summary gives aefast's,
    eager's and torch.compile's as a fraction of their own median; runs without it (a CPU) give none."""
    spec = importlib.util.spec_from_file_location("aefast_benchmarks_conftest", BENCHMARKS / "conftest.py")
    benchmarks_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmarks_conftest)

    def bench(role, seconds, host_s):
        info = {"component": "mlp", "case": "train", "role": role, "device_name": "gpu", "bytes": 64}
        return {"stats": {"median": seconds}, "extra_info": {**info, **({} if host_s is None else {"host_s": host_s})}}

    row, = benchmarks_conftest._summary_rows([bench("aefast", 2.0, 1.5), bench("eager", 1.0, 0.25),
                                              bench("compile", 4.0, None)])
    assert row["host_fraction"] == 0.75 and row["eager_host_fraction"] == 0.25
    assert "compile_host_fraction" not in row and row["speedup"] == 0.5
    row, = benchmarks_conftest._summary_rows([bench("aefast", 2.0, None), bench("eager", 1.0, None)])
    assert "host_fraction" not in row and "eager_host_fraction" not in row
