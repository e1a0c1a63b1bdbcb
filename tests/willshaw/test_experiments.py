"""The storage experiments: their measurements against the theory, CSV + PNG output, runs that repeat
from their seed, resuming after an interruption, and the CLI."""
import csv
import json
import math
import subprocess
import sys
import time
import weakref

import pytest
import torch

from aefast import WillshawMemory
from aefast.cli import main
from aefast.willshaw import experiments, random_patterns, theory

N, ONES = 1000, 7
TIMING = ("store_pairs_per_second", "recalls_per_second")


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_capacity_follows_the_theory_and_writes_csv_and_png(tmp_path):
    rows = experiments.capacity(N, ONES, seed=3, out=tmp_path, queries=400, progress=False)
    assert (tmp_path / "capacity.png").stat().st_size > 10_000
    assert len(read_csv(tmp_path / "capacity.csv")) == len(rows) == 12
    full = theory.capacity(N, ONES)
    for row in rows:
        assert row["misses"] == 0  # a complete cue under the hard threshold never misses
        assert row["density"] == pytest.approx(row["density_theory"], abs=0.01)
        if row["pairs"] >= full / 2:  # enough false ones to measure: within 15% of the exact form
            assert row["false_ones"] == pytest.approx(row["false_ones_exact"], rel=0.15)
    assert rows[0]["false_ones"] == 0 and rows[-1]["false_ones"] > 50


def test_a_run_repeats_from_its_seed_and_another_seed_differs(tmp_path):
    first = experiments.capacity(N, ONES, seed=5, out=tmp_path / "a", pairs=[20000, 40000], queries=200, progress=False)
    again = experiments.capacity(N, ONES, seed=5, out=tmp_path / "b", pairs=[20000, 40000], queries=200, progress=False)
    other = experiments.capacity(N, ONES, seed=6, out=tmp_path / "c", pairs=[20000, 40000], queries=200, progress=False)
    assert (tmp_path / "a" / "capacity.csv").read_text() == (tmp_path / "b" / "capacity.csv").read_text()
    assert first == again and first != other


def test_an_interrupted_run_resumes_from_its_csv(tmp_path, monkeypatch):
    points = [5000, 20000, 40000, 60000]
    experiments.capacity(N, ONES, seed=2, out=tmp_path / "whole", pairs=points, queries=200, progress=False)
    whole = (tmp_path / "whole" / "capacity.csv").read_text()
    # The interrupted run measured two points and was killed while writing the third row.
    experiments.capacity(N, ONES, seed=2, out=tmp_path / "cut", pairs=points, queries=200, progress=False)
    lines = (tmp_path / "cut" / "capacity.csv").read_text().splitlines(keepends=True)
    (tmp_path / "cut" / "capacity.csv").write_text("".join(lines[:3]) + lines[3][:17])
    measured = []
    original = experiments.recall_errors
    monkeypatch.setattr(experiments, "recall_errors", lambda memory, *args: measured.append(memory.n_stored)
                        or original(memory, *args))
    experiments.capacity(N, ONES, seed=2, out=tmp_path / "cut", pairs=points, queries=200, progress=False)
    assert measured == [40000, 60000]  # only the points not in the CSV were measured again
    assert (tmp_path / "cut" / "capacity.csv").read_text() == whole


@pytest.mark.parametrize("damage,match", [
    (lambda lines: lines[:2] + ["abc,def,ghi\n"] + lines[3:], "line 3: 3 fields where the header has 8"),
    (lambda lines: lines[:2] + ["nan" + lines[2][lines[2].index(","):]] + lines[3:], "line 3: pairs is nan, not a finite number"),
    (lambda lines: lines[:2] + [lines[2].rsplit(",", 1)[0] + ",oops\n"] + lines[3:], "line 3: false_ones_exact is 'oops', not a number"),
])
def test_a_csv_with_a_changed_row_is_refused_and_left_as_it_is(tmp_path, damage, match):
    # The rows were read as found: a row without its fields failed later in int(None), and a key of
    # "nan" was kept beside the point measured again for it.
    experiments.capacity(N, ONES, seed=2, out=tmp_path, pairs=[5000, 20000], queries=50, progress=False)
    path = tmp_path / "capacity.csv"
    path.write_text("".join(damage(path.read_text().splitlines(keepends=True))))
    damaged = path.read_text()
    with pytest.raises(ValueError, match=f"capacity.csv, {match}; delete it to start again"):
        experiments.capacity(N, ONES, seed=2, out=tmp_path, pairs=[5000, 20000], queries=50, progress=False)
    assert path.read_text() == damaged


def test_a_csv_of_another_experiment_is_refused_and_left_as_it_is(tmp_path):
    experiments.capacity(N, ONES, seed=2, out=tmp_path, pairs=[5000], queries=50, progress=False)
    path = tmp_path / "capacity.csv"
    other = path.read_text().replace("pairs,density,", "pairs,dens,", 1)
    path.write_text(other)
    with pytest.raises(ValueError, match=r"capacity.csv is not a CSV of this experiment \(header \['pairs,dens,"):
        experiments.capacity(N, ONES, seed=2, out=tmp_path, pairs=[5000], queries=50, progress=False)
    assert path.read_text() == other


def test_a_noise_run_resumes_from_its_csv_with_its_text_columns(tmp_path, monkeypatch):
    """The noise CSV's cue and threshold columns hold words: a rerun reads them back and measures nothing."""
    first = experiments.noise(200, 3, seed=4, out=tmp_path, pairs=300, queries=20, progress=False)
    measured = []
    monkeypatch.setattr(experiments, "recall_errors", lambda *args: measured.append(args) or {})
    again = experiments.noise(200, 3, seed=4, out=tmp_path, pairs=300, queries=20, progress=False)
    assert measured == [] and again == first
    assert {row["threshold"] for row in first} == {"hard", "soft", "fixed T=1", "top-3"}


@pytest.mark.parametrize("run", [experiments.capacity, experiments.noise, experiments.scaling])
@pytest.mark.parametrize("argument", ["n", "ones", "seed", "queries"])
def test_counts_given_as_bools_or_floats_are_refused_by_name(tmp_path, run, argument):
    arguments = {"n": 100, "ones": 3, "seed": 0, "queries": 10}
    for bad in (True, 3.0):
        with pytest.raises(TypeError, match=f"{argument} must be an int, got {type(bad).__name__}"):
            run(**{**arguments, argument: bad}, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_noise_run_cut_inside_a_cue_condition_measures_only_the_rest(tmp_path, monkeypatch):
    whole = experiments.noise(200, 3, seed=4, out=tmp_path / "whole", pairs=300, queries=20, progress=False)
    experiments.noise(200, 3, seed=4, out=tmp_path / "cut", pairs=300, queries=20, progress=False)
    path = tmp_path / "cut" / "noise.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:7]))  # the header, the first condition's 4 rows, 2 of the second's
    measured, drawn = [], []
    recall_errors, noisy_cues = experiments.recall_errors, experiments._noisy_cues
    monkeypatch.setattr(experiments, "recall_errors", lambda *args: measured.append(args[3]) or recall_errors(*args))
    monkeypatch.setattr(experiments, "_noisy_cues", lambda *args: drawn.append(args[2:4]) or noisy_cues(*args))
    again = experiments.noise(200, 3, seed=4, out=tmp_path / "cut", pairs=300, queries=20, progress=False)
    assert measured[:2] == [1, "topk"] and len(measured) == len(whole) - 6  # (T = 1; top-k)
    assert drawn[0] == ("incomplete", 2) and ("incomplete", 1) not in drawn  # a whole condition: no cues drawn
    assert path.read_text() == (tmp_path / "whole" / "noise.csv").read_text() and again == whole


def test_a_scaling_run_resumes_from_its_csv(tmp_path, monkeypatch):
    first = experiments.scaling(2048, seed=0, sizes=[256, 512], out=tmp_path, queries=20, progress=False)
    measured = []
    monkeypatch.setattr(experiments, "_scaling_point", lambda size, *args: measured.append(size))
    again = experiments.scaling(2048, seed=0, sizes=[256, 512], out=tmp_path, queries=20, progress=False)
    assert measured == [] and again == first


def test_noisy_cues_add_other_units_and_incomplete_cues_keep_a_random_part():
    generator = torch.Generator().manual_seed(0)
    x = experiments.random_patterns(200, 60, 5, generator=generator)
    noisy = experiments._noisy_cues(x, 60, "noisy", 4, torch.Generator().manual_seed(1))
    for row, cue in zip(x, noisy):
        assert cue.unique().numel() == 9 and torch.isin(row, cue).all()
    incomplete = experiments._noisy_cues(x, 60, "incomplete", 1, torch.Generator().manual_seed(1))
    kept_position = [int((row == cue).nonzero()) for row, cue in zip(x, incomplete)]  # rows are sorted
    assert sorted(set(kept_position)) == [0, 1, 2, 3, 4]  # any of the five ones, not the first


def test_noise_points_fit_the_memory_and_its_stored_pairs(tmp_path):
    """A noisy cue adds at most the n - M units outside its pattern; queries are stored pairs only
    (at most ``pairs``); the default fixed threshold is at least 1."""
    rows = experiments.noise(8, 3, seed=0, out=tmp_path / "small", pairs=4, queries=50, progress=False)
    assert sorted({row["amount"] for row in rows if row["cue"] == "noisy"}) == [0, 1, 2, 3]  # not 6 > 8 - 3
    assert json.loads((tmp_path / "small" / "noise.json").read_text())["queries"] == 4
    assert all(row["misses"] == 0 for row in rows if (row["cue"], row["amount"], row["threshold"]) == ("incomplete", 3, "hard"))
    rows = experiments.noise(40, 1, seed=0, out=tmp_path / "one", pairs=10, queries=5, progress=False)
    assert "fixed T=1" in {row["threshold"] for row in rows}


def test_capacity_queries_are_stored_pairs_and_points_are_sorted(tmp_path):
    rows = experiments.capacity(N, ONES, seed=1, out=tmp_path / "a", pairs=[3000, 30, 3000], queries=200,
                                progress=False)
    assert [row["pairs"] for row in rows] == [30, 3000]
    assert rows[0]["misses"] == 0 and rows[0]["exact_recalls"] == 1  # the 30 stored pairs, not 200
    assert json.loads((tmp_path / "a" / "capacity.json").read_text()) == \
        {"n": N, "ones": ONES, "seed": 1, "queries": 30, "device": "cpu"}
    assert rows == experiments.capacity(N, ONES, seed=1, out=tmp_path / "b", pairs=[30, 3000], queries=200,
                                        progress=False)


@pytest.mark.parametrize("pairs", [[True], [0], [5, 2.0], []])
def test_bad_pairs_are_refused(tmp_path, pairs):
    with pytest.raises(ValueError, match="pairs must be a non-empty list of ints >= 1"):
        experiments.capacity(N, ONES, out=tmp_path, pairs=pairs, progress=False)


def test_the_storing_bar_counts_every_pair(monkeypatch):
    bars = []

    class RecordingBar(experiments.tqdm):
        def close(self):
            bars.append((self.n, self.total))
            super().close()

    monkeypatch.setattr(experiments, "CHUNK_PAIRS", 100)
    monkeypatch.setattr(experiments, "STORE_CALL_PAIRS", 250)
    monkeypatch.setattr(experiments, "tqdm", RecordingBar)
    experiments.store_pairs(WillshawMemory(300), seed=5, ones=4, start=30, stop=1234, progress=True)
    assert set(bars) == {(1204, 1204)}  # (closed by the with block, and again as it is collected)


def test_other_arguments_in_the_same_folder_are_refused(tmp_path):
    experiments.capacity(N, ONES, seed=2, out=tmp_path, pairs=[5000], queries=50, progress=False)
    with pytest.raises(ValueError, match="other arguments"):
        experiments.capacity(N, ONES, seed=3, out=tmp_path, pairs=[5000], queries=50, progress=False)


def test_recall_errors_count_false_ones_misses_and_exact_recalls():
    """Per recall: the units recalled that the answer lacks, the answer's units not recalled, and
    whether the recall is the answer itself. Three disjoint pairs of three ones: each recalls its own
    answer exactly; top-2 recalls two of its three units (a miss, no false one, not exact); checked
    against another pair's answer, each recall has three false ones and three misses."""
    memory = WillshawMemory(64)
    x = torch.tensor([[0, 1, 2], [10, 11, 12], [20, 21, 22]])
    y = torch.tensor([[3, 4, 5], [13, 14, 15], [23, 24, 25]])
    memory.store_indices(x, y)
    assert experiments.recall_errors(memory, x, y) == {"false_ones": 0, "misses": 0, "exact_recalls": 1}
    assert experiments.recall_errors(memory, x, y, "topk", k=2) == {"false_ones": 0, "misses": 1, "exact_recalls": 0}
    assert experiments.recall_errors(memory, x, y.roll(1, 0)) == {"false_ones": 3, "misses": 3, "exact_recalls": 0}


@pytest.mark.parametrize("threshold,k", [("hard", None), ("soft", None), (2, None), ("topk", 7)])
def test_recall_errors_equal_the_dense_masks_count(threshold, k, monkeypatch):
    """The counts from the recalls' indices equal those of the dense recall and answer masks, on a memory
    loaded past capacity (many false ones), over several query batches, with ragged cues (some units
    dropped from each, as the noise experiment makes them)."""
    monkeypatch.setattr(experiments, "_QUERY_BATCH", 16)
    generator = torch.Generator().manual_seed(4)
    memory = WillshawMemory(300, 200)
    x = random_patterns(1500, 300, 6, generator=generator)
    y = random_patterns(1500, 200, 5, generator=generator)
    memory.store_indices(x, y)
    cues = [row[torch.randperm(6, generator=generator)[:3 + index % 4]].sort().values for index, row in enumerate(x[:50])]
    recalled = torch.stack([torch.zeros(200, dtype=torch.bool).index_fill_(0, answer, True)
                            for answer in memory.retrieve_indices(cues, threshold, k=k)])
    wanted = torch.zeros(50, 200, dtype=torch.bool).scatter_(1, y[:50], True)
    wrong_on, wrong_off = (recalled & ~wanted).sum(1), (wanted & ~recalled).sum(1)
    assert wrong_on.sum() > 50  # past capacity: the check covers recalls with false ones
    shuffled = y[:50, torch.randperm(5, generator=generator)]  # the answers' order does not count
    assert experiments.recall_errors(memory, cues, shuffled, threshold, k) == {
        "false_ones": int(wrong_on.sum()) / 50, "misses": int(wrong_off.sum()) / 50,
        "exact_recalls": int(((wrong_on == 0) & (wrong_off == 0)).sum()) / 50}


def test_noise_thresholds_behave_as_the_notes_say(tmp_path):
    rows = experiments.noise(N, ONES, seed=1, out=tmp_path, queries=200, progress=False)
    assert (tmp_path / "noise.png").exists()
    table = {(row["cue"], row["amount"], row["threshold"]): row for row in rows}
    for k in range(1, ONES + 1):  # hard and soft never miss with an incomplete cue of a stored pattern
        assert table["incomplete", k, "hard"]["misses"] == 0 and table["incomplete", k, "soft"]["misses"] == 0
    # fewer cue ones, more false ones under the hard threshold
    false_ones = [table["incomplete", k, "hard"]["false_ones"] for k in range(1, ONES + 1)]
    assert false_ones == sorted(false_ones, reverse=True)
    # top-k recalls exactly M units, so each false one displaces an answer unit
    assert all(row["false_ones"] == row["misses"] for key, row in table.items() if key[2] == f"top-{ONES}")
    # extra cue ones raise the hard threshold above what the answer units reach: it starts to miss
    assert table["noisy", 0, "hard"]["misses"] == 0 < table["noisy", 1, "hard"]["misses"] < table["noisy", 2, "hard"]["misses"]


def test_scaling_approaches_ln2_bits_per_synapse(tmp_path):
    rows = experiments.scaling(4096, seed=0, out=tmp_path, queries=200, progress=False)
    assert [row["n"] for row in rows] == [1024, 2048, 4096]
    for row in rows:
        assert row["ones"] == round(theory.optimal_ones(row["n"]))
        assert row["density"] == pytest.approx(0.5, abs=0.01)  # capacity is where half the synapses are on
        assert 0.55 < row["bits_per_synapse"] < 0.69
        assert row["recalls_per_second"] > 0 and row["store_pairs_per_second"] > 0
    assert (tmp_path / "scaling.png").exists()


def test_scaling_below_the_default_sizes_runs_n_itself(tmp_path):
    # The default sizes start at 2^10: below it they were empty, and the plot failed on no data.
    rows = experiments.scaling(300, seed=1, out=tmp_path, queries=20, progress=False)
    assert [row["n"] for row in rows] == [256] and (tmp_path / "scaling.png").exists()


@pytest.mark.parametrize("n", [2, 4, 7])
def test_scaling_of_a_few_units_stores_one_one_per_pattern(tmp_path, n):
    # log2(n / 4), the notes' optimal ones, is zero or less up to 4 units, which optimal_ones refuses.
    rows = experiments.scaling(n, seed=1, out=tmp_path, queries=5, progress=False)
    assert [(row["n"], row["ones"]) for row in rows] == [(2 ** int(math.log2(n)), 1)]


def test_scaling_frees_each_sizes_memory_before_it_makes_the_next(tmp_path, monkeypatch):
    """The loop held the last size's memory while it made the next: on a GPU, 2^19 units (32 GiB) and
    2^20 (128 GiB) do not fit together."""
    alive, alive_at_creation = weakref.WeakSet(), []

    class TrackedMemory(WillshawMemory):
        def __init__(self, *args, **kwargs):
            alive_at_creation.append(len(alive))
            super().__init__(*args, **kwargs)
            alive.add(self)

    monkeypatch.setattr(experiments, "WillshawMemory", TrackedMemory)
    experiments.scaling(2048, seed=0, sizes=[256, 512, 1024], out=tmp_path, queries=20, progress=False)
    assert alive_at_creation == [0, 0, 0]


@pytest.mark.gpu
def test_scaling_times_the_gpus_work_not_its_queueing(tmp_path):
    """Each timed region ends with no work left on the stream (a store returns before its kernels run)."""
    stream_idle = []

    def clock():
        stream_idle.append(torch.cuda.current_stream().query())
        return time.perf_counter()

    experiments.scaling(4096, seed=0, sizes=[1024, 4096], out=tmp_path, queries=50, device="cuda",
                        progress=False, clock=clock)
    assert len(stream_idle) >= 4 and all(stream_idle)


@pytest.mark.parametrize("arguments, message", [
    (["capacity", "--n", "1", "--ones", "1"], "n must be >= 2"),
    (["capacity", "--n", "100", "--ones", "100"], r"ones must be in \[1, n\)"),
    (["capacity", "--n", "100", "--ones", "3", "--pairs", "0"], "pairs must be"),
    (["capacity", "--n", "100", "--ones", "3", "--pairs", "5,a"], "argument --pairs: expected comma-separated ints, got '5,a'"),
    (["scaling", "--n", "100", "--sizes", "64,"], "argument --sizes: expected comma-separated ints"),
    (["noise", "--n", "100", "--ones", "3", "--queries", "0"], "queries must be"),
    (["noise", "--n", "100", "--ones", "3", "--queries", "65537"], "queries must be in [1, 65536], got 65537"),
    (["scaling", "--n", "2048", "--device", "abacus"], "device must name a torch device"),
    (["capacity", "--n", "100", "--ones", "3", "--seed", "-1"], "seed must be >= 0, got -1"),
    (["noise", "--n", "100", "--ones", "3", "--fixed-threshold", "-1"], "fixed_threshold must be an int >= 0, got -1"),
    (["scaling", "--n", "100", "--ones", "70", "--sizes", "100,64"],
     "ones=70 does not fit a memory of 64 units: sizes must exceed the ones per pattern"),
    (["scaling", "--n", "100", "--sizes", "1,64"], "ones=1 does not fit a memory of 1 units"),
])
def test_cli_errors(tmp_path, capsys, arguments, message):
    # In this process (a subprocess each took 4 s to import torch); the exit code is argparse's 2.
    with pytest.raises(SystemExit) as exit_info:
        main(["willshaw", *arguments, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and message.replace("\\", "") in capsys.readouterr().err.replace("\\", "")
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_cli_writes_the_csv_and_plot(tmp_path):
    result = subprocess.run([sys.executable, "-m", "aefast.cli", "willshaw", "capacity", "--n", "500", "--ones", "5",
                             "--seed", "4", "--pairs", "1000,4000", "--queries", "100", "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(read_csv(tmp_path / "capacity.csv")) == 2 and (tmp_path / "capacity.png").exists()


def test_an_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(ValueError, match="out must be a folder"):
        experiments.noise(N, ONES, out=tmp_path / "taken", progress=False)


def test_an_out_that_cannot_be_created_is_refused_by_name(tmp_path, capsys):
    """A folder under a file (as a read-only disk would) gets the CLI's error, not an OSError traceback."""
    (tmp_path / "taken").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["willshaw", "capacity", "--n", "100", "--ones", "3", "--out", str(tmp_path / "taken" / "run")])
    assert exit_info.value.code == 2
    assert f"out: cannot create the folder {tmp_path / 'taken' / 'run'}: Not a directory" in capsys.readouterr().err


def test_storing_in_calls_of_several_chunks_stores_the_seeds_stream(monkeypatch):
    """Pairs start ... stop - 1 joined into calls across chunk edges: the same matrix as storing the
    stream's chunks one by one (small chunks here, and a start and stop inside chunks)."""
    monkeypatch.setattr(experiments, "CHUNK_PAIRS", 100)
    monkeypatch.setattr(experiments, "STORE_CALL_PAIRS", 250)
    joined, expected = WillshawMemory(300), WillshawMemory(300)
    experiments.store_pairs(joined, seed=5, ones=4, start=30, stop=1234, progress=False)
    for chunk in range(13):
        x, y = experiments.pair_chunk(5, chunk, 300, 300, 4, "cpu")
        first, last = max(30 - 100 * chunk, 0), min(1234 - 100 * chunk, 100)
        expected.store_indices(x[first:last], y[first:last])
    assert joined.n_stored == expected.n_stored == 1204
    assert torch.equal(joined.packed_matrix(), expected.packed_matrix())


def test_store_pairs_times_the_store_calls_not_the_drawing_of_the_pairs(monkeypatch):
    """The scaling experiment's stored pairs per second: drawing a chunk (made to take 1000 s here) is
    outside the timed calls, so only the clock's own ticks, 1 s a read, are counted."""
    monkeypatch.setattr(experiments, "CHUNK_PAIRS", 100)
    monkeypatch.setattr(experiments, "STORE_CALL_PAIRS", 300)
    now = [0.0]
    draw = experiments.pair_chunk

    def slow_draw(*args):
        now[0] += 1000.0
        return draw(*args)

    def clock():
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(experiments, "pair_chunk", slow_draw)
    seconds = experiments.store_pairs(WillshawMemory(300), seed=5, ones=4, start=0, stop=1000, progress=False,
                                      clock=clock)
    assert seconds == 4.0  # 4 calls (300 + 300 + 300 + 100 pairs), each timed from one read to the next


def test_scaling_times_neither_the_first_store_nor_the_first_recall(monkeypatch, tmp_path):
    """On a GPU the first store and retrieval at a size autotune their kernels (made to take 1000 s
    here): the rates count the later calls only, each 1 s of the clock's ticks."""
    now = [0.0]
    first_calls = set()

    def slow_the_first(name):
        method = getattr(WillshawMemory, name)

        def run(self, *args, **kwargs):
            if name not in first_calls:
                first_calls.add(name)
                now[0] += 1000.0
            return method(self, *args, **kwargs)
        monkeypatch.setattr(WillshawMemory, name, run)

    def clock():
        now[0] += 1.0
        return now[0]

    slow_the_first("store_indices")
    slow_the_first("retrieve_indices")
    rows = experiments.scaling(1024, seed=0, out=tmp_path, queries=50, progress=False, clock=clock)
    ones = round(theory.optimal_ones(1024))
    pairs = round(theory.capacity(1024, ones))
    assert first_calls == {"store_indices", "retrieve_indices"}
    assert rows[0]["pairs"] == pairs
    assert rows[0]["store_pairs_per_second"] == (pairs - experiments.SCALING_WARMUP_PAIRS) / 1.0  # one timed call
    assert rows[0]["recalls_per_second"] == 50 / 1.0
