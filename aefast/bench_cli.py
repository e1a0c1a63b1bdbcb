"""``aefast bench``: run the benchmarks in benchmarks/ (pytest-benchmark underneath) and print one
table of what aefast buys: per case, aefast's time, eager PyTorch's, torch.compile's, the speedups
over both, and the fraction of the same-run hardware limit (copy or read bandwidth, matmul FLOP/s).
Writes the rows as JSON (each with a ``speedup`` field) with a plot of speedup against problem size
beside it, and a Markdown table, when asked."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COMPONENTS = ("vae", "mlp", "willshaw", "models")


def benchmarks_dir() -> Path:
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    if not (folder / "conftest.py").exists():
        raise FileNotFoundError(f"aefast bench runs the benchmarks of a source checkout; {folder} has none")
    return folder


def run(components: list[str], *, quick: bool, device: str | None) -> dict:
    """pytest-benchmark's JSON of one run of the chosen components' benchmark files."""
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"--only takes {', '.join(COMPONENTS)}, got {', '.join(unknown)}")
    folder = benchmarks_dir()
    # Without pytest-xdist's worker variables: run from an xdist worker (the test suite runs in two),
    # the child would take itself for one and disable pytest-benchmark's timing.
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_XDIST_")}
    # The child imports this aefast, the checkout's, even where it is not installed (run from the
    # checkout's root, which the child, started in benchmarks/, would not have on its path).
    env["PYTHONPATH"] = os.pathsep.join([str(folder.parent), *filter(None, [env.get("PYTHONPATH")])])
    env["AEFAST_BENCH_QUICK"] = "1" if quick else "0"
    if device:
        env["AEFAST_BENCH_DEVICE"] = device
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "run.json"
        command = [sys.executable, "-m", "pytest", *(f"bench_{c}.py" for c in components), "--benchmark-only",
                   f"--benchmark-json={output}", "-q", "-p", "no:cacheprovider"]
        done = subprocess.run(command, cwd=folder, env=env)
        if done.returncode != 0 or not output.exists():
            raise RuntimeError(f"the benchmarks failed (exit {done.returncode}): {' '.join(command)}")
        return json.loads(output.read_text())


def rows(run_json: dict) -> list[dict]:
    """One row per case: the summary conftest.py computed, with shape, dtype and device added."""
    infos = {}
    for bench in run_json["benchmarks"]:
        info = bench["extra_info"]
        infos[(info["component"], info["case"], info["role"])] = info
    table = []
    for summary in run_json.get("aefast_summary", []):
        role = "aefast" + (f" {summary['variant']}" if summary.get("variant") else "")
        info = infos.get((summary["component"], summary["case"], role), {})
        shape = info.get("shape") or info.get("dims") or ({"n": info["n"], "ones": info.get("ones")} if "n" in info else None)
        table.append({**summary, "shape": shape, "dtype": info.get("dtype"), "device": info.get("device"),
                      "bytes": info.get("bytes")})
    return table


def plot(table: list[dict], path: Path) -> None:
    """Speedup over eager against problem size (bytes the aefast case moves), one series per component."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for component in sorted({row["component"] for row in table}):
        points = sorted((row["bytes"], row["speedup"]) for row in table
                        if row["component"] == component and "speedup" in row and row.get("bytes"))
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=component)
    axes.set(xscale="log", yscale="log", xlabel="problem size (bytes the aefast case moves)",
             ylabel="speedup over eager PyTorch", title="aefast bench")
    axes.axhline(1.0, color="gray", linewidth=0.8)
    axes.legend()
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def _limit(row: dict) -> str:
    for key, name in (("fraction_of_matmul_flops", "matmul"), ("fraction_of_copy_bandwidth", "copy"),
                      ("fraction_of_read_bandwidth", "read")):
        if key in row:
            return f"{row[key]:.0%} {name}"
    return "-"


def _ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}" if key in row else "-"


def _ms(row: dict, key: str) -> str:
    return f"{row[key] * 1e3:.2f}" if key in row else "-"


HEADER = ["component", "case", "device", "dtype", "aefast ms", "eager ms", "compile ms", "x eager", "x compile", "of limit"]


def table_cells(row: dict) -> list[str]:
    case = row["case"] + (f" ({row['variant']})" if row.get("variant") else "")
    return [row["component"], case, str(row.get("device") or "-"), str(row.get("dtype") or "-"),
            _ms(row, "aefast_s"), _ms(row, "eager_s"), _ms(row, "compile_s"), _ratio(row, "speedup"),
            _ratio(row, "speedup_vs_compile"), _limit(row)]


def print_table(table: list[dict]) -> None:
    cells = [HEADER] + [table_cells(row) for row in table]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    for line in cells:
        print("  ".join(value.ljust(width) for value, width in zip(line, widths)))


def markdown(table: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in table]
    return "\n".join(lines) + "\n"


def _check_output_path(path: Path) -> None:
    """Creates the folders above ``path``; ValueError if it is a folder or cannot be written there."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the folder of {path}: {error}") from None
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"cannot write into {path.parent}")


def main(components: list[str], *, quick: bool, device: str | None, json_path: str | None,
         markdown_path: str | None) -> int:
    for path in (json_path, markdown_path):  # before the run, which takes minutes: not after it
        if path:
            _check_output_path(Path(path))
    run_json = run(components, quick=quick, device=device)
    table = rows(run_json)
    print()
    print_table(table)
    if json_path:
        Path(json_path).write_text(json.dumps({"rows": table, "machine": run_json.get("machine_info"),
                                               "quick": quick}, indent=2))
        plot(table, Path(json_path).with_name(Path(json_path).stem + "_speedup.png"))
    if markdown_path:
        Path(markdown_path).write_text(markdown(table))
    return 0
