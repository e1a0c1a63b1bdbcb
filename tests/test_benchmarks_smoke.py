"""Every benchmark file still imports and runs one tiny case (the real runs are `aefast`'s main job)."""
import os
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("path", sorted(BENCHMARKS.glob("bench_*.py")), ids=lambda p: p.name)
def test_benchmark_file_runs_tiny(path):
    env = {**os.environ, "AEFAST_BENCH_QUICK": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(path), "-q", "-p", "no:cacheprovider", "--benchmark-disable"],
        cwd=BENCHMARKS.parent, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
