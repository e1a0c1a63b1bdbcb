"""Shared benchmark machinery: the device and sizes, same-run hardware probes, timing that waits for
the GPU, and a summary of ratios (speedup over eager and torch.compile, fraction of the copy probe's
bandwidth) printed at the end and written into pytest-benchmark's JSON.

Each benchmark records ``extra_info``: ``component``, ``case``, ``role`` (aefast / eager / compile /
copy probe / read probe / matmul probe; "aefast <variant>" for another setting of aefast in the same
case), ``bytes`` it moves, ``items`` of work it does (pairs, queries; 1 when the
roles of a case do the same work), ``host_s`` where the benchmark asks (the host's time per call on a
GPU, below) and the environment. Ratios are taken between medians of one run, per item.
"""
import os
import platform
import statistics
import time

import pytest
import torch

import aefast


def bench_device() -> torch.device:
    name = os.environ.get("AEFAST_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def quick() -> bool:
    """AEFAST_BENCH_QUICK=1: tiny sizes, for the smoke test that every benchmark file still runs."""
    return os.environ.get("AEFAST_BENCH_QUICK", "0") == "1"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "device": device.type,
        "device_name": device_name,
        "torch": torch.__version__,
        "triton": triton_version,
        "aefast": aefast.__version__,
        "cpu_threads": torch.get_num_threads(),
    }


def synchronized(fn, device: torch.device):
    """fn, then wait for the device: wall-clock timing must include the GPU's work."""
    if device.type != "cuda":
        return fn

    def run():
        result = fn()
        torch.cuda.synchronize(device)
        return result

    return run


# Calls per round, and rounds, of host_seconds: few calls, so that the GPU's queue of launches never
# fills (a full queue makes the host wait for the GPU, and a GPU-bound call would look host-bound).
HOST_CALLS, HOST_ROUNDS = 4, 5
HOST_TIMING_BUDGET_S = 2.0  # calls whose median would take longer over HOST_CALLS * HOST_ROUNDS are not host-timed


def host_seconds(fn, device: torch.device) -> float:
    """The host's time per call of ``fn`` on a GPU when nothing waits for the GPU between calls (median
    of HOST_ROUNDS rounds of HOST_CALLS calls, each round from an idle GPU). Beside the call's median
    time it says what bounds it: about equal, the host (Python, launches), or a wait inside the call;
    well below, the GPU's work."""
    times = []
    for _ in range(HOST_ROUNDS):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(HOST_CALLS):
            fn()
        times.append((time.perf_counter() - start) / HOST_CALLS)
    torch.cuda.synchronize(device)
    return statistics.median(times)


def run_benchmark(benchmark, fn, device, *, component, case, role, nbytes, rounds, items=1, unit=None,
                  flops=None, extra=None, host_time=False):
    """Time fn with pytest-benchmark's pedantic mode (fixed rounds: the CPU cases take seconds).
    ``items``: units of work per call (``unit`` names them), for roles that run different amounts.
    ``host_time``: on a GPU, also time the host's part (``host_seconds``): for a ``fn`` that changes no
    state (its extra calls would otherwise store or train more) and does not wait for the GPU inside
    (its host time would then be its whole time)."""
    benchmark.group = f"{component}: {case}"
    benchmark.extra_info.update(
        component=component, case=case, role=role, bytes=nbytes, items=items, unit=unit, flops=flops,
        **environment(device),
        **(extra or {})
    )
    timed = synchronized(fn, device)
    timed()  # warm-up: compilation, autotuning, first-touch allocation
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    if (host_time and device.type == "cuda" and median is not None
            and median * HOST_CALLS * HOST_ROUNDS < HOST_TIMING_BUDGET_S):
        benchmark.extra_info["host_s"] = host_seconds(fn, device)


def copy_probe(benchmark, device, nbytes, *, component, case, rounds):
    """The bandwidth limit measured in the same run: one large tensor copy (reads and writes nbytes/2)."""
    numel = max(1, nbytes // 8)
    src = torch.empty(numel, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    run_benchmark(benchmark, lambda: dst.copy_(src), device, component=component, case=case,
                  role="copy probe", nbytes=2 * numel * 4, rounds=rounds)


def read_probe(benchmark, device, nbytes, *, component, case, rounds):
    """The read bandwidth measured in the same run: the sum of one large tensor (reads nbytes)."""
    probe = torch.empty(max(1, nbytes // 4), dtype=torch.float32, device=device).uniform_()
    run_benchmark(benchmark, probe.sum, device, component=component, case=case, role="read probe",
                  nbytes=probe.numel() * 4, rounds=rounds)


def matmul_probe(benchmark, device, dtype, *, component, case, rounds, size=None):
    """The FLOP/s limit measured in the same run: one large square matmul in ``dtype``."""
    size = size or (256 if quick() else (8192 if device.type == "cuda" else 2048))
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    run_benchmark(benchmark, lambda: a @ b, device, component=component, case=case, role="matmul probe",
                  nbytes=3 * size * size * a.element_size(), flops=2 * size**3, rounds=rounds)


def _summary_rows(benchmarks):
    """Per (component, case): aefast against eager, compile and the bandwidth probe of the same group,
    per item of work. ``benchmarks`` are pytest-benchmark's JSON records (``extra_info``, ``stats``)."""
    by_case = {}
    for bench in benchmarks:
        info = bench["extra_info"]
        by_case.setdefault((info["component"], info["case"]), {})[info["role"]] = (bench["stats"]["median"], info)
    rows = []
    for (component, case), roles in sorted(by_case.items()):
        for fused_role in sorted(role for role in roles if role == "aefast" or role.startswith("aefast ")):
            rows.append(_summary_row(component, case, roles, fused_role))
    return rows


def _summary_row(component, case, roles, fused_role):
    """``fused_role`` ("aefast", or "aefast <variant>" for a variant of aefast in the same case, such as
    another float32 precision) against the case's other roles."""
    t_fused, info = roles[fused_role]
    per_item = lambda role: roles[role][0] / roles[role][1].get("items", 1)  # noqa: E731
    row = {"component": component, "case": case, "variant": fused_role[len("aefast "):] or None,
           "backend": info.get("backend"), "device_name": info["device_name"], "aefast_s": t_fused}
    if info.get("unit"):
        row[f"{info['unit']}_per_s"] = info["items"] / t_fused
    for role, time_key, ratio_key in (("eager", "eager_s", "speedup"), ("compile", "compile_s", "speedup_vs_compile")):
        if role in roles:
            row[time_key] = roles[role][0]
            row[ratio_key] = per_item(role) / per_item(fused_role)
    # The host's share of each call (GPU runs): near 1, the call's time is its host's, not its kernels'.
    for role, key in ((fused_role, "host_fraction"), ("eager", "eager_host_fraction"),
                      ("compile", "compile_host_fraction")):
        if role in roles and roles[role][1].get("host_s") is not None:
            row[key] = roles[role][1]["host_s"] / roles[role][0]
    for role, key in (("copy probe", "fraction_of_copy_bandwidth"), ("read probe", "fraction_of_read_bandwidth")):
        if role in roles:
            probe_time, probe_info = roles[role]
            row[key] = (info["bytes"] / t_fused) / (probe_info["bytes"] / probe_time)
    if "matmul probe" in roles and info.get("flops"):
        probe_time, probe_info = roles["matmul probe"]
        row["fraction_of_matmul_flops"] = (info["flops"] / t_fused) / (probe_info["flops"] / probe_time)
    return row


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["aefast_summary"] = _summary_rows(output_json["benchmarks"])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    rows = _summary_rows([b.as_dict(include_data=False) for b in session.benchmarks if b.stats is not None])
    if not rows:
        return
    write = terminalreporter.write_line
    write("")
    write("aefast summary (medians of one run)")
    write(f"{'component':<10} {'case':<53} {'backend':<8} {'aefast ms':>10} {'x eager':>9} {'x compile':>9} "
          f"{'of limit':>12} {'host':>5}  rate")
    for row in rows:
        fmt = lambda key, spec: format(row[key], spec) if key in row else "-"  # noqa: E731
        if "fraction_of_matmul_flops" in row:
            bandwidth = f"{row['fraction_of_matmul_flops']:.0%} matmul"
        elif "fraction_of_copy_bandwidth" in row:
            bandwidth = f"{row['fraction_of_copy_bandwidth']:.0%} copy"
        elif "fraction_of_read_bandwidth" in row:
            bandwidth = f"{row['fraction_of_read_bandwidth']:.0%} read"
        else:
            bandwidth = "-"
        rate = " ".join(f"{value:.3g} {key[:-6]}/s" for key, value in row.items() if key.endswith("_per_s"))
        case = row["case"] + (f" ({row['variant']})" if row.get("variant") else "")
        write(f"{row['component']:<10} {case:<53} {row['backend'] or '-':<8} {row['aefast_s'] * 1e3:>10.2f} "
              f"{fmt('speedup', '>9.1f')} {fmt('speedup_vs_compile', '>9.1f')} {bandwidth:>12} "
              f"{fmt('host_fraction', '>5.0%')}  {rate}")
