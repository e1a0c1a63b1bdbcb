"""The seeds' storage analysis run as experiments: ``capacity``, ``noise`` and ``scaling``.

Each writes one CSV row per measured point into its output folder (flushed as it goes) and draws PNG
plots from the CSV. A rerun with the same arguments resumes: the points already in the CSV are not
measured again. Runs repeat exactly from their seed: stored pair number i is a function of (seed, i)
only (pairs come in fixed chunks, each from its own generator), and the cues of a point are drawn from
(seed, point). Timing columns (``*_per_second``) are the only ones that differ between runs.

Storage streams the pairs in calls of ``STORE_CALL_PAIRS``, so memory stays bounded at any load.
The memory's matrix does not depend on the order of the stores, so the recalls query the first pairs
stored: they are as typical as any others.
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from aefast._checks import check_device
from aefast._files import make_output_folder, output_folder
from aefast.willshaw import theory
from aefast.willshaw.memory import WillshawMemory
from aefast.willshaw.patterns import random_patterns

CHUNK_PAIRS = 1 << 16  # pairs drawn from one generator: changing it changes every seed's pairs
# Pairs stored per call (16 chunks; their index tensors and the joined copy take 32 * ones MiB). The CPU store sorts a
# call's entries by row and updates each row once per call, so more pairs per call mean fewer passes
# over the matrix: at n = 10^5, M = 15 on the CI machine, 0.61M pairs/s in calls of one chunk, 1.21M
# in calls of 16.
STORE_CALL_PAIRS = 1 << 20
DEFAULT_QUERIES = 1000
_QUERY_BATCH = 256


# --- random pairs, a function of (seed, pair number) ------------------------------------------------

def _generator(seed: int, *stream: int, device: torch.device) -> torch.Generator:
    key = int(np.random.SeedSequence([seed, *stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))
    return torch.Generator(device=device).manual_seed(key)


def pair_chunk(seed: int, chunk: int, n_in: int, n_out: int, ones: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs chunk * CHUNK_PAIRS ... (chunk + 1) * CHUNK_PAIRS - 1: (x, y) index tensors with ``ones`` ones."""
    generator = _generator(seed, 0, chunk, device=torch.device(device))
    return (random_patterns(CHUNK_PAIRS, n_in, ones, generator=generator, device=device),
            random_patterns(CHUNK_PAIRS, n_out, ones, generator=generator, device=device))


def store_pairs(memory: WillshawMemory, seed: int, ones: int, start: int, stop: int, progress: bool,
                clock: Callable[[], float] = time.perf_counter) -> float:
    """Store pairs start ... stop - 1 of the seed's stream, up to STORE_CALL_PAIRS in each call; returns
    the seconds the store calls took (drawing the pairs is not counted: on the CPU it takes about 40%
    as long as storing them, at n = 2^16, M = 14)."""
    storing = 0.0
    with tqdm(total=stop - start, unit="pair", unit_scale=True, desc="storing", disable=not progress,
              leave=False) as bar:
        position = start
        while position < stop:
            xs, ys, first = [], [], position
            while position < stop and position - first < STORE_CALL_PAIRS:
                chunk = position // CHUNK_PAIRS
                x, y = pair_chunk(seed, chunk, memory.n_in, memory.n_out, ones, memory.device)
                part = slice(position - chunk * CHUNK_PAIRS, min(stop - chunk * CHUNK_PAIRS, CHUNK_PAIRS))
                xs.append(x[part])
                ys.append(y[part])
                position = chunk * CHUNK_PAIRS + part.stop
            x, y = torch.cat(xs), torch.cat(ys)
            storing += _timed(lambda: memory.store_indices(x, y), memory.device, clock)
            bar.update(position - first)
    return storing


def stored_pairs(memory: WillshawMemory, seed: int, ones: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` pairs of the seed's stream (count <= CHUNK_PAIRS)."""
    x, y = pair_chunk(seed, 0, memory.n_in, memory.n_out, ones, memory.device)
    return x[:count], y[:count]


# --- recall errors ------------------------------------------------------------------------------------

def recall_errors(memory: WillshawMemory, cues: torch.Tensor | list, answers: torch.Tensor, threshold="hard",
                  k: Optional[int] = None) -> dict[str, float]:
    """Mean false ones (units recalled that the answer lacks) and misses (answer units not recalled)
    per recall, and the fraction of recalls that are exactly the answer. ``answers`` holds each
    recall's distinct answer units.

    Counted on the recalls' indices: the units of a recall found among its answer's are its hits. The
    dense (queries, n_out) masks and their sums took 0.8-3.7 s of a 25 s capacity run at n = 2^16."""
    false_ones = misses = exact = 0
    n_out, total = memory.n_out, answers.shape[0]
    for start in range(0, total, _QUERY_BATCH):
        wanted = answers[start:start + _QUERY_BATCH].to(memory.device).sort(1).values
        rows = torch.arange(wanted.shape[0], device=memory.device)
        batch = cues[start:start + _QUERY_BATCH]
        batch = batch.to(memory.device) if isinstance(batch, torch.Tensor) else [row.to(memory.device) for row in batch]
        values, offsets = memory.retrieve_indices(batch, threshold, k=k, flat=True)
        recalled_per_row = offsets.diff()
        recall_rows = rows.repeat_interleave(recalled_per_row)
        # (row, unit) as one key per unit; the answers' keys sorted, to be searched.
        wanted_keys = (rows[:, None] * n_out + wanted).flatten()
        recalled_keys = recall_rows * n_out + values
        hits = torch.zeros_like(rows)
        if wanted_keys.numel():
            found = torch.searchsorted(wanted_keys, recalled_keys).clamp(max=wanted_keys.numel() - 1)
            hits.index_add_(0, recall_rows, (wanted_keys[found] == recalled_keys).long())
        wrong_on, wrong_off = recalled_per_row - hits, wanted.shape[1] - hits
        false_ones += int(wrong_on.sum())
        misses += int(wrong_off.sum())
        exact += int(((wrong_on == 0) & (wrong_off == 0)).sum())
    return {"false_ones": false_ones / total, "misses": misses / total, "exact_recalls": exact / total}


# --- the CSV: one row per point, resumable -------------------------------------------------------------

class _Results:
    """The experiment's CSV and its arguments (``<name>.json``): rows already measured, and appending."""

    def __init__(self, out: Path, name: str, columns: Sequence[str], key: Sequence[str], arguments: dict,
                 text_columns: Sequence[str] = ()):
        make_output_folder(out)
        self.path, self.columns, self.key = out / f"{name}.csv", list(columns), list(key)
        self.text_columns = set(text_columns)  # the others hold numbers
        arguments_path = out / f"{name}.json"
        if arguments_path.exists() and self.path.exists():
            before = json.loads(arguments_path.read_text())
            if before != arguments:
                raise ValueError(f"{out} holds a {name} run with other arguments ({before}); give another --out "
                                 f"or delete {self.path} to start again")
        arguments_path.write_text(json.dumps(arguments, indent=2) + "\n")
        self.rows = self._read()

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        text = self.path.read_text()
        if not text.endswith("\n"):  # interrupted in the middle of a row: that row is measured again
            text = text[:text.rfind("\n") + 1]
        lines = text.splitlines()
        if not lines or lines[0].split(",") != self.columns:
            raise ValueError(f"{self.path} is not a CSV of this experiment (header {lines[:1]}); delete it to start again")
        rows = [self._parsed(row, line) for line, row in enumerate(csv.reader(lines[1:]), start=2)]
        self.path.write_text(text)
        return rows

    def _parsed(self, fields: list[str], line: int) -> dict:
        """A row of the CSV, checked: a row another program changed is refused, not measured around."""
        def refuse(what: str):
            raise ValueError(f"{self.path}, line {line}: {what}; delete it to start again")
        if len(fields) != len(self.columns):
            refuse(f"{len(fields)} fields where the header has {len(self.columns)}")
        row = {column: _number(text) for column, text in zip(self.columns, fields)}
        for column, value in row.items():
            if column in self.text_columns:
                continue
            if isinstance(value, str) or (column in self.key and not math.isfinite(value)):
                refuse(f"{column} is {value!r}, not a{' finite' if column in self.key else ''} number")
        return row

    def done(self, **key) -> bool:
        return any(all(row[k] == v for k, v in key.items()) for row in self.rows)

    def add(self, row: dict) -> None:
        new_file = not self.path.exists()
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns, lineterminator="\n")
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        self.rows.append(row)


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _check(n: int, ones: int, seed: int, queries: int) -> None:
    for value, name in ((n, "n"), (ones, "ones"), (seed, "seed"), (queries, "queries")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if not 1 <= ones < n:
        raise ValueError(f"ones must be in [1, n), got {ones}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 1 <= queries <= CHUNK_PAIRS:
        raise ValueError(f"queries must be in [1, {CHUNK_PAIRS}], got {queries}")


def _check_pairs(pairs: Iterable[int], name: str = "pairs") -> list[int]:
    pairs = list(pairs)
    if not pairs or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in pairs):
        raise ValueError(f"{name} must be a non-empty list of ints >= 1, got {pairs}")
    return sorted(set(pairs))


# --- capacity ------------------------------------------------------------------------------------------

CAPACITY_COLUMNS = ("pairs", "density", "density_theory", "false_ones", "misses", "exact_recalls",
                    "false_ones_textbook", "false_ones_exact")


def capacity(n: int, ones: int, *, seed: int = 0, out: str | Path = "willshaw-capacity",
             pairs: Optional[Sequence[int]] = None, queries: int = DEFAULT_QUERIES, device: str = "cpu",
             progress: bool = True) -> list[dict]:
    """False ones and misses per complete-cue recall (hard threshold) and the density, against the
    number of stored pairs, beside both forms of the theory. Default points: 12 from capacity/16 to
    2 x capacity. Writes capacity.csv and capacity.png into ``out``; returns the rows."""
    _check(n, ones, seed, queries)
    device = check_device(device)
    full = theory.capacity(n, ones)
    points = _check_pairs(pairs) if pairs is not None else \
        sorted({max(1, round(full * 2 ** e)) for e in np.linspace(-4, 1, 12)})
    queries = min(queries, points[0])
    out = output_folder(out)
    results = _Results(out, "capacity", CAPACITY_COLUMNS, ["pairs"],
                       {"n": n, "ones": ones, "seed": seed, "queries": queries, "device": str(device)})
    memory = WillshawMemory(n, device=device)
    cues, answers = stored_pairs(memory, seed, ones, queries)
    stored = 0
    for L in tqdm(points, desc="capacity", unit="point", disable=not progress):
        store_pairs(memory, seed, ones, stored, L, progress)
        stored = L
        if results.done(pairs=L):
            continue
        errors = recall_errors(memory, cues, answers)
        results.add({"pairs": L, "density": memory.density, "density_theory": theory.memory_load(n, n, ones, ones, L),
                     **errors, "false_ones_textbook": theory.false_ones(n, ones, L),
                     "false_ones_exact": theory.false_ones(n, ones, L, form="exact")})
    _plot_capacity(results.rows, n, ones, full, out / "capacity.png")
    return results.rows


def _plot_capacity(rows: list[dict], n: int, ones: int, full: float, path: Path) -> None:
    plt = _pyplot()
    rows = sorted(rows, key=lambda row: row["pairs"])
    L = [row["pairs"] for row in rows]
    figure, (errors, density) = plt.subplots(1, 2, figsize=(11, 4.2))
    errors.plot(L, [row["false_ones"] for row in rows], "o", label="false ones, measured")
    errors.plot(L, [row["misses"] for row in rows], "x", label="misses, measured")
    errors.plot(L, [row["false_ones_textbook"] for row in rows], "-", label="textbook: (n - M) p1^M")
    errors.plot(L, [row["false_ones_exact"] for row in rows], "--", label="exact (per-unit load)")
    errors.set_yscale("symlog", linthresh=1e-2)  # linear near 0, where most points of a capacity run lie
    errors.set(xscale="log", ylim=(0, None), xlabel="stored pairs L", ylabel="per recall",
               title=f"complete cues, hard threshold (n={n}, M={ones})")
    density.plot(L, [row["density"] for row in rows], "o", label="measured")
    density.plot(L, [row["density_theory"] for row in rows], "-", label="1 - (1 - M²/n²)^L")
    density.set(xscale="log", xlabel="stored pairs L", ylabel="fraction of synapses at 1", title="density p1")
    for axes in (errors, density):
        axes.axvline(full, color="grey", linestyle=":", label="ln2 n²/M²")
    _save(figure, (errors, density), path)


# --- noise ---------------------------------------------------------------------------------------------

NOISE_COLUMNS = ("cue", "amount", "threshold", "false_ones", "misses", "exact_recalls")


def noise(n: int, ones: int, *, seed: int = 0, out: str | Path = "willshaw-noise", pairs: Optional[int] = None,
          queries: int = DEFAULT_QUERIES, fixed_threshold: Optional[int] = None, device: str = "cpu",
          progress: bool = True) -> list[dict]:
    """Recall errors for incomplete cues (k of the M ones, k = 1 ... M) and noisy cues (the M ones plus
    f others, f = 0 ... 2M) under the hard, soft, fixed-T (T = ``fixed_threshold``, default M // 2) and
    top-k (k = M) thresholds, at ``pairs`` stored pairs (default: capacity). Writes noise.csv and
    noise.png into ``out``; returns the rows."""
    _check(n, ones, seed, queries)
    device = check_device(device)
    L = _check_pairs([pairs if pairs is not None else max(1, round(theory.capacity(n, ones)))], "pairs")[0]
    T = max(1, ones // 2) if fixed_threshold is None else fixed_threshold
    if isinstance(T, bool) or not isinstance(T, int) or T < 0:
        raise ValueError(f"fixed_threshold must be an int >= 0, got {fixed_threshold!r}")
    queries = min(queries, L)
    out = output_folder(out)
    results = _Results(out, "noise", NOISE_COLUMNS, ["cue", "amount", "threshold"],
                       {"n": n, "ones": ones, "seed": seed, "pairs": L, "queries": queries, "fixed_threshold": T,
                        "device": str(device)}, text_columns=("cue", "threshold"))
    thresholds = {"hard": ("hard", None), "soft": ("soft", None), f"fixed T={T}": (T, None), f"top-{ones}": ("topk", ones)}
    conditions = [("incomplete", k) for k in range(1, ones + 1)] + \
                 [("noisy", f) for f in sorted({0, 1, 2, max(1, ones // 2), ones, 2 * ones}) if f <= n - ones]
    memory = WillshawMemory(n, device=device)
    store_pairs(memory, seed, ones, 0, L, progress)
    x, y = stored_pairs(memory, seed, ones, queries)
    for point, (cue_kind, amount) in enumerate(tqdm(conditions, desc="noise", unit="cue", disable=not progress)):
        if all(results.done(cue=cue_kind, amount=amount, threshold=name) for name in thresholds):
            continue
        cues = _noisy_cues(x, n, cue_kind, amount, _generator(seed, 1, point, device=torch.device("cpu")))
        for name, (threshold, k) in thresholds.items():
            if not results.done(cue=cue_kind, amount=amount, threshold=name):
                results.add({"cue": cue_kind, "amount": amount, "threshold": name,
                             **recall_errors(memory, cues, y, threshold, k)})
    _plot_noise(results.rows, n, ones, L, out / "noise.png")
    return results.rows


def _noisy_cues(x: torch.Tensor, n: int, kind: str, amount: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``amount`` of each row's ones kept at random (incomplete), or ``amount`` other units added (noisy)."""
    def shuffled(count):  # on the generator's device, whatever torch's default one
        return torch.randperm(count, generator=generator, device="cpu")

    cues = []
    for row in x.cpu():
        if kind == "incomplete":
            cues.append(row[shuffled(row.numel())[:amount]])
        else:
            free = torch.ones(n, dtype=torch.bool, device="cpu")
            free[row] = False
            others = free.nonzero().flatten()
            cues.append(torch.cat([row, others[shuffled(others.numel())[:amount]]]))
    return cues


def _plot_noise(rows: list[dict], n: int, ones: int, L: int, path: Path) -> None:
    plt = _pyplot()
    figure, panels = plt.subplots(1, 2, figsize=(11, 4.2))
    for axes, kind, xlabel in ((panels[0], "incomplete", "ones of the pattern in the cue (k of M)"),
                               (panels[1], "noisy", "extra ones in the cue (f)")):
        for threshold in dict.fromkeys(row["threshold"] for row in rows):
            chosen = sorted((row for row in rows if row["cue"] == kind and row["threshold"] == threshold),
                            key=lambda row: row["amount"])
            axes.plot([row["amount"] for row in chosen], [row["false_ones"] + row["misses"] for row in chosen],
                      "o-", label=threshold)
        axes.set_yscale("symlog", linthresh=1e-2)
        axes.set(ylim=(0, None), xlabel=xlabel, ylabel="false ones + misses per recall",
                 title=f"{kind} cues (n={n}, M={ones}, L={L})")
    _save(figure, panels, path)


# --- scaling -------------------------------------------------------------------------------------------

SCALING_COLUMNS = ("n", "ones", "pairs", "density", "false_ones", "bits_per_synapse", "bits_per_synapse_theory",
                   "store_pairs_per_second", "recalls_per_second")


def _default_ones(size: int) -> int:
    """The notes' optimal ones, log2(size / 4), rounded; one where that is under one (below 8 units)."""
    return max(1, round(theory.optimal_ones(size))) if size > 4 else 1


def scaling(n: int, ones: Optional[int] = None, *, seed: int = 0, out: str | Path = "willshaw-scaling",
            sizes: Optional[Sequence[int]] = None, queries: int = DEFAULT_QUERIES, device: str = "cpu",
            progress: bool = True, clock: Callable[[], float] = time.perf_counter) -> list[dict]:
    """Bits per synapse at capacity and recalls per second against the size: for each size (default the
    powers of 2 from 2^10 to ``n``, or n's own below 2^10), M = ``ones`` or log2(size / 4) rounded, L = ln2 size²/M² pairs.
    Writes scaling.csv and scaling.png into ``out``; returns the rows."""
    _check(n, ones if ones is not None else 1, seed, queries)
    device = check_device(device)
    if sizes is None:  # below 2^10 only n's own power of two: an empty list had nothing to plot
        top = int(math.log2(n))
        sizes = [2**e for e in range(min(10, top), top + 1)]
    sizes = _check_pairs(sizes, "sizes")
    ones_per_size = {size: ones if ones is not None else _default_ones(size) for size in sizes}
    for size, M in ones_per_size.items():  # before any folder or file is made
        if not 1 <= M < size:
            raise ValueError(f"ones={M} does not fit a memory of {size} units: sizes must exceed the ones per pattern")
    out = output_folder(out)
    results = _Results(out, "scaling", SCALING_COLUMNS, ["n"],
                       {"n": n, "ones": ones, "seed": seed, "sizes": sizes, "queries": queries, "device": str(device)})
    for size, M in tqdm(ones_per_size.items(), desc="scaling", unit="size", disable=not progress):
        if results.done(n=size):
            continue
        results.add(_scaling_point(size, M, max(1, round(theory.capacity(size, M))), seed, queries, device,
                                   progress, clock))
    _plot_scaling(results.rows, out / "scaling.png")
    return results.rows


# The scaling experiment's first store and recall at each size are not timed: on a GPU they autotune
# their kernels for the size's row width. The 2026-12-05 H200 run timed that instead: about 0.7 s a
# size, so 1400 recalls/s at every n (the retrieval benchmark: 4.4M/s at n = 2^18).
SCALING_WARMUP_PAIRS = 1024


def _scaling_point(size: int, M: int, L: int, seed: int, queries: int, device: torch.device, progress: bool,
                   clock: Callable[[], float]) -> dict:
    """One size's row. Its memory is freed on return, before the next (larger) one is made: on a GPU the
    two would not fit together at the top sizes."""
    memory = WillshawMemory(size, device=device)
    warmup = min(SCALING_WARMUP_PAIRS, L // 2)
    store_pairs(memory, seed, M, 0, warmup, progress=False)  # untimed; the same stream, cut in two
    store_seconds = store_pairs(memory, seed, M, warmup, L, progress, clock)
    cues, answers = stored_pairs(memory, seed, M, min(queries, L))
    memory.retrieve_indices(cues)
    recall_seconds = _timed(lambda: memory.retrieve_indices(cues), device, clock)
    errors = recall_errors(memory, cues, answers)
    return {"n": size, "ones": M, "pairs": L, "density": memory.density, "false_ones": errors["false_ones"],
            "bits_per_synapse": theory.bits_per_synapse(size, M, L, false_ones=errors["false_ones"]),
            "bits_per_synapse_theory": theory.bits_per_synapse(size, M, L, false_ones=theory.false_ones(size, M, L)),
            "store_pairs_per_second": (L - warmup) / store_seconds, "recalls_per_second": len(cues) / recall_seconds}


def _timed(run: Callable[[], object], device: torch.device, clock: Callable[[], float]) -> float:
    """Seconds ``run()`` takes, with the work it queues on ``device``: a GPU call returns before its
    last kernel has run, so the GPU is waited for before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = clock()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - started


def _plot_scaling(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    rows = sorted(rows, key=lambda row: row["n"])
    sizes = [row["n"] for row in rows]
    figure, (bits, speed) = plt.subplots(1, 2, figsize=(11, 4.2))
    bits.plot(sizes, [row["bits_per_synapse"] for row in rows], "o-", label="measured")
    bits.plot(sizes, [row["bits_per_synapse_theory"] for row in rows], "--", label="textbook false ones")
    bits.axhline(math.log(2), color="grey", linestyle=":", label="ln 2 (n → ∞)")
    bits.set(xscale="log", xlabel="units n", ylabel="bits per synapse", title="information at capacity")
    speed.plot(sizes, [row["recalls_per_second"] for row in rows], "o-", label="recalls / s")
    speed.plot(sizes, [row["store_pairs_per_second"] for row in rows], "s-", label="stored pairs / s")
    speed.set(xscale="log", yscale="log", xlabel="units n", ylabel="per second", title="speed")
    _save(figure, (bits, speed), path)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def _save(figure, panels, path: Path) -> None:
    for axes in panels:
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
