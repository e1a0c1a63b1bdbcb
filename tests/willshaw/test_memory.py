"""WillshawMemory on every backend against the rule and the threshold definitions written out densely,
and the cpp backend against the reference: identical matrices, sums and answers."""
import copy
import io
import pickle
import subprocess
import sys

import pytest
import torch

from aefast import _backends
from aefast.willshaw import WillshawMemory
from tests.willshaw.conftest import dense_from_indices, hebb_matrix, random_patterns

N_IN, N_OUT, ONES, PAIRS = 1000, 777, 9, 700


@pytest.fixture
def hetero_pairs():
    generator = torch.Generator().manual_seed(3)
    return random_patterns(PAIRS, N_IN, ONES, generator), random_patterns(PAIRS, N_OUT, ONES, generator)


def cues(x_idx: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Complete, incomplete (the first 5 of the ones) and noisy (3 extra ones) dense cues."""
    complete = dense_from_indices(x_idx, N_IN)
    incomplete = dense_from_indices(x_idx[:, :5], N_IN)
    noisy = complete.clone()
    noisy[torch.arange(len(x_idx)).unsqueeze(1), torch.randint(0, N_IN, (len(x_idx), 3), generator=generator)] = True
    return {"complete": complete, "incomplete": incomplete, "noisy": noisy}


def expected_answer(sums: torch.Tensor, cue: torch.Tensor, threshold, k=None) -> torch.Tensor:
    """The threshold definitions of WillshawMemory.retrieve, one row at a time."""
    rows = []
    for row_sums, row_cue in zip(sums.tolist(), cue.sum(1).tolist()):
        if threshold == "hard":
            row = [row_cue > 0 and s >= row_cue for s in row_sums]
        elif threshold == "soft":
            best = max(row_sums)
            row = [best > 0 and s == best for s in row_sums]
        elif threshold == "topk":
            chosen = set(sorted(range(len(row_sums)), key=lambda i: (-row_sums[i], i))[:k])
            row = [i in chosen for i in range(len(row_sums))]
        else:
            row = [s >= threshold for s in row_sums]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool)


def test_store_and_sums_follow_the_hebb_rule(willshaw_backend, hetero_pairs):
    x_idx, y_idx = hetero_pairs
    memory = WillshawMemory(N_IN, N_OUT)
    memory.store_indices(x_idx, y_idx)
    weights = hebb_matrix(dense_from_indices(x_idx, N_IN), dense_from_indices(y_idx, N_OUT))
    cue = cues(x_idx[:60], torch.Generator().manual_seed(4))["noisy"]
    assert torch.equal(memory.sums(cue), (cue.double() @ weights.T.double()).int())
    assert memory.n_stored == PAIRS
    assert memory.density == pytest.approx(weights.double().mean().item(), abs=0)
    assert memory.nbytes == N_IN * ((N_OUT + 63) // 64) * 8


def test_store_in_row_order_gives_the_matrix_of_pair_order(willshaw_backend, monkeypatch, hetero_pairs):
    """The Triton store's row order (x ones sorted by row, 16 per program) against the reference: equal
    rows and pairs spread over programs, rows of no ones, and y rows longer than a tile (40 > 32)."""
    if willshaw_backend != "triton":
        pytest.skip("row order is the Triton store's")
    from aefast.willshaw import triton_kernels

    monkeypatch.setattr(triton_kernels, "STORE_ORDER", "rows")
    calls = []
    in_row_order = triton_kernels._store_in_row_order
    monkeypatch.setattr(triton_kernels, "_store_in_row_order", lambda *args: calls.append(in_row_order(*args)))
    generator = torch.Generator().manual_seed(6)
    x_idx, y_idx = hetero_pairs
    lengths = [(0, 3), (5, 0), (1, 40), (40, 1), (17, 33), (3, 3)]
    x_ragged = [torch.randperm(N_IN, generator=generator)[:a].sort().values for a, _ in lengths]
    y_ragged = [torch.randperm(N_OUT, generator=generator)[:b].sort().values for _, b in lengths]
    memories = {}
    for order in ("rows", "reference"):
        memory = WillshawMemory(N_IN, N_OUT, backend="reference" if order == "reference" else "triton")
        memory.store_indices(x_idx, y_idx)
        memory.store_indices(x_ragged, y_ragged)
        memories[order] = memory.packed_matrix()
    assert len(calls) == 2 and memories["rows"].count_nonzero() > 0
    assert torch.equal(memories["rows"], memories["reference"])


def test_the_store_takes_row_order_from_a_matrix_size_on(willshaw_backend, monkeypatch):
    """STORE_ORDER "auto" (the default): pair order below ROW_ORDER_MIN_BYTES, row order from it on
    (made 4 KiB here), and either order by name; every matrix equal to the reference's."""
    if willshaw_backend != "triton":
        pytest.skip("row order is the Triton store's")
    from aefast.willshaw import triton_kernels

    assert triton_kernels.STORE_ORDER == "auto"
    monkeypatch.setattr(triton_kernels, "ROW_ORDER_MIN_BYTES", 4096)
    orders = []
    in_row_order = triton_kernels._store_in_row_order
    monkeypatch.setattr(triton_kernels, "_store_in_row_order",
                        lambda *args: (orders.append("rows"), in_row_order(*args))[1])
    generator = torch.Generator().manual_seed(9)
    for n_in, forced, expected in [(63, "auto", []), (64, "auto", ["rows"]), (64, "pairs", []), (63, "rows", ["rows"])]:
        monkeypatch.setattr(triton_kernels, "STORE_ORDER", forced)
        orders.clear()
        x_idx, y_idx = random_patterns(50, n_in, 5, generator), random_patterns(50, 512, 5, generator)
        memory = WillshawMemory(n_in, 512, backend="triton")  # 8 words of 8 bytes per row: 64 rows are 4 KiB
        plain = WillshawMemory(n_in, 512, backend="reference")
        for target in (memory, plain):
            target.store_indices(x_idx, y_idx)
        assert orders == expected, (n_in, forced)
        assert torch.equal(memory.packed_matrix(), plain.packed_matrix())


@pytest.mark.parametrize("kind", ["complete", "incomplete", "noisy"])
@pytest.mark.parametrize("threshold,k", [("hard", None), ("soft", None), (0, None), (4, None), (ONES, None),
                                         ("topk", 1), ("topk", 12), ("topk", N_OUT)])
def test_retrieve_follows_the_threshold_definitions(willshaw_backend, hetero_pairs, kind, threshold, k):
    x_idx, y_idx = hetero_pairs
    memory = WillshawMemory(N_IN, N_OUT)
    memory.store(dense_from_indices(x_idx, N_IN), dense_from_indices(y_idx, N_OUT))
    cue = cues(x_idx[:40], torch.Generator().manual_seed(5))[kind]
    answer = memory.retrieve(cue, threshold, k=k)
    assert torch.equal(answer, expected_answer(memory.sums(cue), cue, threshold, k))
    by_index = memory.retrieve_indices([row.nonzero().flatten() for row in cue], threshold, k=k)
    assert [row.tolist() for row in by_index] == [row.nonzero().flatten().tolist() for row in answer]
    values, offsets = memory.retrieve_indices([row.nonzero().flatten() for row in cue], threshold, k=k, flat=True)
    assert offsets.tolist() == [0] + answer.sum(1).cumsum(0).tolist()
    assert torch.equal(values, torch.cat(by_index))


def test_flat_must_be_a_bool(hetero_pairs):
    memory = WillshawMemory(N_IN, N_OUT)
    with pytest.raises(TypeError, match="flat must be True or False"):
        memory.retrieve_indices([[1, 2]], flat="yes")


def test_complete_cues_below_capacity_recall_their_answers(willshaw_backend, hetero_pairs):
    x_idx, y_idx = hetero_pairs
    memory = WillshawMemory(N_IN, N_OUT)
    memory.store_indices(x_idx, y_idx)
    # 700 pairs of 9 ones load only 1 - (1 - 81 / 777000)^700 = 7% of the synapses: recall is exact.
    answers = memory.retrieve_indices(x_idx[:100], "soft")
    assert [a.tolist() for a in answers] == y_idx[:100].tolist()


def test_cpp_and_reference_agree_everywhere(hetero_pairs):
    x_idx, y_idx = hetero_pairs
    memories = {name: WillshawMemory(N_IN, N_OUT, backend=name) for name in ("cpp", "reference")}
    for memory in memories.values():
        memory.store_indices(x_idx, y_idx)
    assert torch.equal(memories["cpp"].packed_matrix(), memories["reference"].packed_matrix())
    for cue in cues(x_idx[:50], torch.Generator().manual_seed(6)).values():
        assert torch.equal(memories["cpp"].sums(cue), memories["reference"].sums(cue))
        for threshold, k in (("hard", None), ("soft", None), (2, None), ("topk", 7)):
            assert torch.equal(memories["cpp"].retrieve(cue, threshold, k=k),
                               memories["reference"].retrieve(cue, threshold, k=k))


def test_auto_association_and_ragged_rows(willshaw_backend):
    generator = torch.Generator().manual_seed(7)
    rows = [random_patterns(1, 301, count, generator)[0] for count in (1, 5, 0, 17, 3)]
    memory = WillshawMemory(301)
    memory.store_indices(rows)
    weights = torch.zeros(301, 301, dtype=torch.bool)
    for row in rows:
        dense_row = dense_from_indices(row.unsqueeze(0), 301)
        weights |= hebb_matrix(dense_row, dense_row)
    cue = torch.zeros(4, 301, dtype=torch.int64)
    cue[0, rows[3][:6]] = 1
    cue[1, rows[1]] = 1
    cue[3, 300] = 1
    assert torch.equal(memory.sums(cue), (cue.double() @ weights.T.double()).int())
    answers = memory.retrieve_indices([rows[3][:6], rows[1].tolist(), [], [300]])
    assert answers[0].tolist() == rows[3].tolist()
    assert answers[1].tolist() == rows[1].tolist()
    assert answers[2].tolist() == []  # an empty cue retrieves nothing under the hard threshold
    assert answers[3].tolist() == []
    assert memory.n_stored == 5
    # An empty list of rows (a batch that happens to be empty) stores nothing and answers nothing.
    before = memory.packed_matrix()
    memory.store_indices([], [])
    assert memory.n_stored == 5 and torch.equal(memory.packed_matrix(), before)
    assert memory.retrieve_indices([]) == []
    assert memory.sums_indices([]).shape == (0, 301)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.uint8, torch.int32])
def test_dense_patterns_of_any_real_dtype_act_as_their_bool_twins(willshaw_backend, hetero_pairs, dtype):
    """A 0/1 float tensor (torch.zeros then ones set: the usual way to write a pattern) stores, sums
    and retrieves exactly as the same pattern in bool."""
    x, y = dense_from_indices(hetero_pairs[0], N_IN), dense_from_indices(hetero_pairs[1], N_OUT)
    as_bool, as_dtype = WillshawMemory(N_IN, N_OUT), WillshawMemory(N_IN, N_OUT)
    as_bool.store(x.bool(), y.bool())
    as_dtype.store(x.to(dtype), y.to(dtype))
    assert torch.equal(as_dtype.packed_matrix(), as_bool.packed_matrix())
    cue = x[:5].to(dtype)
    assert torch.equal(as_dtype.sums(cue), as_bool.sums(x[:5].bool()))
    assert torch.equal(as_dtype.retrieve(cue, "soft"), as_bool.retrieve(x[:5].bool(), "soft"))


def test_single_patterns_drop_the_batch_dimension(willshaw_backend):
    memory = WillshawMemory(130, 70)
    memory.store_indices(torch.tensor([0, 64, 129]), torch.tensor([1, 69]))
    x = torch.zeros(130, dtype=torch.bool)
    x[[0, 64, 129]] = True
    assert memory.retrieve(x).nonzero().flatten().tolist() == [1, 69]
    assert memory.sums(x).shape == (70,)
    assert memory.retrieve_indices(torch.tensor([0, 64]), "soft").tolist() == [1, 69]


def test_topk_breaks_ties_toward_the_lower_index(willshaw_backend):
    memory = WillshawMemory(10, 200)
    memory.store_indices([[0, 1]], [[5, 150, 199]])
    memory.store_indices([[0]], [[3, 7, 140]])
    # Sums of the cue {0, 1}: 2 at 5, 150, 199; 1 at 3, 7, 140; 0 elsewhere.
    assert memory.retrieve_indices([[0, 1]], "topk", k=4)[0].tolist() == [3, 5, 150, 199]
    assert memory.retrieve_indices([[0, 1]], "topk", k=8)[0].tolist() == [0, 1, 3, 5, 7, 140, 150, 199]


def test_clear_forgets_everything(willshaw_backend, hetero_pairs):
    memory = WillshawMemory(N_IN, N_OUT)
    memory.store_indices(*hetero_pairs)
    memory.clear()
    assert memory.density == 0 and memory.n_stored == 0
    assert not memory.retrieve_indices(hetero_pairs[0][:3], threshold=1)[0].numel()


def test_a_memory_made_in_inference_mode_stores_and_clears_after_it(willshaw_backend, hetero_pairs, tmp_path):
    # Its matrix was an inference tensor, which torch refuses to update in place outside the mode.
    x_idx, y_idx = hetero_pairs
    with torch.inference_mode():
        made = WillshawMemory(N_IN, N_OUT)
        made.store_indices(x_idx[:10], y_idx[:10])
        made.save(tmp_path / "memory.safetensors")
        loaded = WillshawMemory.load(tmp_path / "memory.safetensors")
    every_pair = WillshawMemory(N_IN, N_OUT)
    every_pair.store_indices(x_idx, y_idx)
    for memory in (made, loaded):
        memory.store_indices(x_idx[10:], y_idx[10:])
        assert torch.equal(memory.packed_matrix(), every_pair.packed_matrix())
        memory.clear()
        assert memory.density == 0


def _pickled(memory):
    return pickle.loads(pickle.dumps(memory))


def _saved_by_torch(memory):
    buffer = io.BytesIO()
    torch.save(memory, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("make_copy", [copy.copy, copy.deepcopy, _pickled, _saved_by_torch],
                         ids=["copy", "deepcopy", "pickle", "torch.save"])
def test_a_copy_holds_its_own_bits(willshaw_backend, hetero_pairs, make_copy):
    x_idx, y_idx = hetero_pairs
    memory = WillshawMemory(N_IN, N_OUT, backend=willshaw_backend)
    memory.store_indices(x_idx[:50], y_idx[:50])
    bits = memory.packed_matrix()
    copied = make_copy(memory)
    assert (copied.n_in, copied.n_out, copied.device, copied.backend, copied.n_stored) == \
        (N_IN, N_OUT, memory.device, willshaw_backend, 50)
    assert torch.equal(copied.packed_matrix(), bits)
    assert torch.equal(copied.sums_indices(x_idx[:9]), memory.sums_indices(x_idx[:9]))
    copied.store_indices(x_idx[50:], y_idx[50:])  # the copy learns; the original does not
    assert torch.equal(memory.packed_matrix(), bits) and memory.n_stored == 50
    memory.clear()  # and the other way round
    every_pair = WillshawMemory(N_IN, N_OUT)
    every_pair.store_indices(x_idx, y_idx)
    assert torch.equal(copied.packed_matrix(), every_pair.packed_matrix()) and copied.n_stored == len(x_idx)


def test_to_the_memorys_own_device_is_the_memory_and_other_devices_are_checked():
    memory = WillshawMemory(N_IN, N_OUT)
    assert memory.to("cpu") is memory and memory.to(torch.device("cpu")) is memory
    with pytest.raises(ValueError, match="device must be 'cpu' or a CUDA device, got meta"):
        memory.to("meta")
    with pytest.raises(ValueError, match="device must name a torch device"):
        memory.to("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            memory.to("cuda")


def test_an_unpickled_memory_with_a_bad_state_is_refused(hetero_pairs):
    memory = WillshawMemory(N_IN, N_OUT)
    memory.store_indices(hetero_pairs[0][:20], hetero_pairs[1][:20])
    good = memory.__getstate__()
    padding = good["matrix"].clone()
    padding[7, -1] |= 1 << 9  # unit 777, past the last (776 = 12 * 64 + 8)
    for changes, match in [({"matrix": good["matrix"][:1]}, "matrix must be int64 of shape"),
                           ({"matrix": good["matrix"].int()}, "matrix must be int64 of shape"),
                           ({"matrix": None}, "matrix must be a tensor, got NoneType"),
                           ({"matrix": good["matrix"].to("meta")}, "device must be 'cpu' or a CUDA device"),
                           ({"matrix": padding}, "sets bits past unit n_out - 1 = 776"),
                           ({"n_stored": -1}, "n_stored must be an int >= 0"),
                           ({"n_stored": 2.5}, r"n_stored must be an int >= 0, got 2.5"),
                           ({"n_in": 0}, "n_in must be in")]:
        restored = WillshawMemory.__new__(WillshawMemory)
        with pytest.raises(ValueError, match=match):
            restored.__setstate__({**good, **changes})


def assert_cpp_stores_like_the_reference(n_in, n_out, store):
    """``store(memory)`` leaves the same bits in a cpp memory as in a reference one."""
    memories = [WillshawMemory(n_in, n_out, backend=name) for name in ("cpp", "reference")]
    for memory in memories:
        store(memory)
    assert torch.equal(memories[0].packed_matrix(), memories[1].packed_matrix())


def test_storage_in_several_chunks_matches_the_reference():
    # 2^18 pairs x 5 ones = 1.3M cue entries: more than one of the C++ store's chunks (2^20 entries).
    generator = torch.Generator().manual_seed(8)
    x_idx, y_idx = random_patterns(1 << 18, 70, 5, generator), random_patterns(1 << 18, 130, 3, generator)
    assert_cpp_stores_like_the_reference(70, 130, lambda memory: memory.store_indices(x_idx, y_idx))


def test_ragged_storage_in_several_chunks_matches_the_reference():
    # Rows of every length, empty ones included, on both sides: the store copies each chunk's answers
    # into a buffer of its own, indexed by the answers' offsets, which here differ from the cues'.
    # About 7 ones per cue x 2^18 pairs = 1.8M entries: two chunks.
    generator = torch.Generator().manual_seed(10)
    x = torch.rand(1 << 18, 70, generator=generator) < 0.1
    y = torch.rand(1 << 18, 130, generator=generator) < 0.04
    assert (x.sum(1) == 0).any() and (y.sum(1) == 0).any() and x.sum() > 1 << 20
    assert_cpp_stores_like_the_reference(70, 130, lambda memory: memory.store(x, y))


def assert_cpp_answers_like_the_reference(n_in, n_out, x_idx, y_idx, cue, fixed, k):
    """After storing (x_idx, y_idx), the cpp and reference memories hold the same bits, density, sums
    and answers under every threshold (``fixed`` for a fixed T, ``k`` for top-k); returns cpp's bool
    answer under the hard threshold."""
    results = []
    for name in ("cpp", "reference"):
        memory = WillshawMemory(n_in, n_out, backend=name)
        memory.store_indices(x_idx, y_idx)
        results.append([memory.packed_matrix(), memory.sums(cue), memory.density] +
                       [memory.retrieve(cue, t, k=top) for t, top in
                        (("hard", None), ("soft", None), (fixed, None), ("topk", k))])
    for got, want in zip(*results):
        assert (got == want) if isinstance(got, float) else torch.equal(got, want)
    return results[0][3]


def test_dense_answers_on_huge_pages_match_the_reference():
    # 80 cues x 70001 units: the C++ backend's bool answer (5.6 MB) and int32 sums (22 MB) are
    # allocated on 2 MiB pages (aefast._buffers.empty_on_huge_pages).
    generator = torch.Generator().manual_seed(11)
    x_idx, y_idx = random_patterns(300, 90, 6, generator), random_patterns(300, 70001, 40, generator)
    hard = assert_cpp_answers_like_the_reference(90, 70001, x_idx, y_idx, dense_from_indices(x_idx[:80, :5], 90),
                                                 fixed=2, k=50)
    assert hard.numel() >= 4 << 20


SCRIPT = """
import torch
from tests.willshaw.conftest import random_patterns, dense_from_indices
from tests.willshaw.test_memory import assert_cpp_answers_like_the_reference
generator = torch.Generator().manual_seed(9)
x_idx, y_idx = random_patterns(500, 900, 8, generator), random_patterns(500, 333, 8, generator)
assert_cpp_answers_like_the_reference(900, 333, x_idx, y_idx, dense_from_indices(x_idx[:64, :6], 900), fixed=3, k=9)
import aefast._C
print(aefast._C.cpu_features()["kernel_isa"])
"""


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_portable_kernel_copies_agree_with_the_reference(isa):
    import os
    env = dict(os.environ, AEFAST_CPU_ISA=isa)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == isa


TEAM_SCRIPT = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from tests.willshaw.conftest import random_patterns
from tests.willshaw.test_memory import assert_cpp_stores_like_the_reference
generator = torch.Generator().manual_seed(12)
x_idx, y_idx = random_patterns(5000, 3001, 7, generator), random_patterns(5000, 901, 7, generator)
assert_cpp_stores_like_the_reference(3001, 901, lambda memory: memory.store_indices(x_idx, y_idx))
"""


@pytest.mark.parametrize("threads,env", [(1, {}), (5, {}), (2, {"OMP_THREAD_LIMIT": "1"}),
                                         (3, {"OMP_DYNAMIC": "true"})], ids=str)
def test_storage_is_whole_for_any_team_of_threads(threads, env):
    """The C++ store splits the rows among its threads: with OMP_THREAD_LIMIT=1 it once got a team of
    one where it had planned for two, and silently left out the other thread's rows."""
    import os
    done = subprocess.run([sys.executable, "-c", TEAM_SCRIPT, str(threads)], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.gpu
def test_a_memory_on_the_gpu_matches_the_cpu(hetero_pairs):
    x_idx, y_idx = hetero_pairs
    on_cpu, on_gpu = WillshawMemory(N_IN, N_OUT), WillshawMemory(N_IN, N_OUT, device="cuda")
    on_cpu.store_indices(x_idx, y_idx)
    on_gpu.store_indices(x_idx.cuda(), y_idx.cuda())
    assert torch.equal(on_gpu.packed_matrix().cpu(), on_cpu.packed_matrix())
    cue = dense_from_indices(x_idx[:30, :6], N_IN)
    for threshold in ("hard", "soft", 3):
        assert torch.equal(on_gpu.retrieve(cue.cuda(), threshold).cpu(), on_cpu.retrieve(cue, threshold))


@pytest.mark.gpu
def test_to_moves_a_memory_between_devices_as_a_copy(hetero_pairs):
    x_idx, y_idx = hetero_pairs
    on_cpu = WillshawMemory(N_IN, N_OUT)
    on_cpu.store_indices(x_idx[:300], y_idx[:300])
    bits = on_cpu.packed_matrix()
    on_gpu = on_cpu.to("cuda")
    assert on_gpu.device.type == "cuda" and on_gpu.n_stored == 300 and on_gpu.to("cuda") is on_gpu
    assert torch.equal(on_gpu.packed_matrix().cpu(), bits)
    on_gpu.store_indices(x_idx[300:].cuda(), y_idx[300:].cuda())
    assert torch.equal(on_cpu.packed_matrix(), bits) and on_cpu.n_stored == 300
    back = on_gpu.to("cpu")
    on_cpu.store_indices(x_idx[300:], y_idx[300:])
    assert torch.equal(back.packed_matrix(), on_cpu.packed_matrix()) and back.n_stored == on_cpu.n_stored
    buffer = io.BytesIO()
    torch.save(on_gpu, buffer)
    buffer.seek(0)
    mapped = torch.load(buffer, map_location="cpu", weights_only=False)  # a GPU memory loaded on the CPU
    assert mapped.device == torch.device("cpu") and torch.equal(mapped.packed_matrix(), back.packed_matrix())
    with pytest.raises(_backends.BackendUnavailableError, match="backend 'cpp' cannot hold a memory on cuda"):
        WillshawMemory(N_IN, N_OUT, backend="cpp").to("cuda")


@pytest.mark.gpu
def test_the_gpu_store_in_row_order_matches_pair_order(monkeypatch):
    """Many pairs per row (n = 2^12, 2^16 pairs of 12 ones), so that concurrent programs OR into the
    same words: the compiled kernels' atomics must lose no bit in either order."""
    from aefast.willshaw import random_patterns as draw, triton_kernels

    generator = torch.Generator("cuda").manual_seed(8)
    x_idx = draw(2**16, 2**12, 12, generator=generator, device="cuda")
    y_idx = draw(2**16, 2**12, 12, generator=generator, device="cuda")
    matrices = {}
    for order in ("pairs", "rows"):
        monkeypatch.setattr(triton_kernels, "STORE_ORDER", order)
        memory = WillshawMemory(2**12, device="cuda")
        memory.store_indices(x_idx, y_idx)
        matrices[order] = memory.packed_matrix().cpu()
    on_cpu = WillshawMemory(2**12)
    on_cpu.store_indices(x_idx.cpu(), y_idx.cpu())
    assert torch.equal(matrices["rows"], on_cpu.packed_matrix())
    assert torch.equal(matrices["pairs"], on_cpu.packed_matrix())


def test_retrieve_indices_of_full_and_sparse_words_across_answer_groups(willshaw_backend):
    """Answers long enough to span several of the Triton extraction's groups (128 words = 8192 units):
    full words (bit 63 included), lone bits at group and word edges, and empty answers."""
    n_out = 20000
    edges = [0, 63, 64, 8191, 8192, 8255, 16383, 16384, n_out - 1]
    memory = WillshawMemory(6, n_out)
    memory.store_indices([torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), torch.tensor([0, 2])],
                         [torch.arange(n_out), torch.tensor(edges), torch.arange(5, n_out, 3), torch.tensor([7])])
    cue_rows = [torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), torch.tensor([0, 2]),
                torch.tensor([0, 1]), torch.tensor([3]), torch.tensor([], dtype=torch.int64), torch.tensor([0, 4])]
    for threshold in ("hard", "soft"):
        dense = memory.retrieve(torch.stack([torch.zeros(6, dtype=torch.bool).index_fill(0, row, True)
                                             for row in cue_rows]), threshold)
        expected = [row.nonzero().flatten().tolist() for row in dense]
        assert [row.tolist() for row in memory.retrieve_indices(cue_rows, threshold)] == expected
    hard = [row.tolist() for row in memory.retrieve_indices(cue_rows, "hard")]
    row_2 = sorted({7} | set(range(5, n_out, 3)))  # the pair ([0, 2], [7]) set bit 7 of rows 0 and 2
    assert hard[:6] == [list(range(n_out)), edges, row_2, row_2, edges, []]
    assert hard[6:] == [[], []]
    soft = [row.tolist() for row in memory.retrieve_indices(cue_rows, "soft")]
    assert soft[5:] == [[], [], list(range(n_out))]  # [0, 4]: no unit has both; the largest sum is 1


def test_triton_launches_over_rows_wider_than_one_grid(monkeypatch):
    """A row of more than 2^16 - 1 blocks of words goes to the GPU in several launches. With the limit
    at 4 blocks, a 70000-unit row takes several launches of every kernel: the answers must not change."""
    if _backends.can_run("triton", torch.device("cpu")) is not True:
        pytest.skip("Triton's interpreter is not available")
    from aefast.willshaw import triton_kernels

    monkeypatch.setattr(triton_kernels, "GRID_Y_LIMIT", 4)
    grids, grid = [], triton_kernels._grid

    def checked_grid(rows, words, block):
        grids.append(grid(rows, words, block))
        assert grids[-1][1] <= 4, grids[-1]
        return grids[-1]
    monkeypatch.setattr(triton_kernels, "_grid", checked_grid)
    n_out = 70000  # 1094 words: 3 launches of the AND (512 words), 18 of the sums (64 words)
    x = [torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([3])]
    y = [torch.arange(0, n_out, 7), torch.tensor([5, 33000, 65535, n_out - 1]), torch.arange(n_out - 70, n_out)]
    memories = {name: WillshawMemory(5, n_out, backend=name) for name in ("triton", "reference")}
    for memory in memories.values():
        memory.store_indices(x, y)
    cue_rows = [torch.tensor([1]), torch.tensor([0, 1]), torch.tensor([1, 3]), torch.tensor([3]), torch.tensor([4])]
    dense = torch.zeros(len(cue_rows), 5, dtype=torch.bool)
    for row, cue in enumerate(cue_rows):
        dense[row, cue] = True
    triton_memory, oracle = memories["triton"], memories["reference"]
    assert torch.equal(triton_memory.packed_matrix(), oracle.packed_matrix())
    assert torch.equal(triton_memory.sums(dense), oracle.sums(dense))
    for threshold, k in (("hard", None), ("soft", None), (1, None), ("topk", 9)):
        assert torch.equal(triton_memory.retrieve(dense, threshold, k=k), oracle.retrieve(dense, threshold, k=k))
        got = triton_memory.retrieve_indices(cue_rows, threshold, k=k, flat=True)
        expected = oracle.retrieve_indices(cue_rows, threshold, k=k, flat=True)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), threshold
    assert len(grids) > 100  # every kernel went through the limit, in several launches per call


def test_the_triton_and_writes_only_the_groups_with_ones(willshaw_backend, monkeypatch):
    """The AND leaves the answer words of a group without ones unwritten (at capacity nearly all of them:
    writing them would add a row to the M rows each cue reads), and the readers take the counts first:
    words made with garbage in those groups still unpack and extract to the reference's answers."""
    if willshaw_backend != "triton":
        pytest.skip("the Triton kernels' contract")
    from aefast.willshaw import packed_retrieval, triton_kernels

    garbage = []
    empty = torch.empty

    def filled_with_ones(*shape, **kwargs):  # what torch.empty may hand back: any bits
        tensor = empty(*shape, **kwargs)
        if kwargs.get("dtype") == torch.int64:
            tensor.fill_(-1)
            garbage.append(tensor)
        return tensor
    monkeypatch.setattr(torch, "empty", filled_with_ones)  # for the whole test: every int64 buffer starts as garbage
    group = packed_retrieval.ANSWER_GROUP  # words
    n = 64 * group * 3  # 3 groups of words per row
    generator = torch.Generator().manual_seed(12)
    memory, plain = WillshawMemory(50, n, backend="triton"), WillshawMemory(50, n, backend="reference")
    x_idx, y_idx = random_patterns(20, 50, 4, generator), random_patterns(20, 200, 3, generator) + 64 * group
    for target in (memory, plain):  # every answer in the middle group
        target.store_indices(x_idx, y_idx)
    words, counts = triton_kernels._and(memory.packed_matrix(), x_idx.flatten(), torch.arange(0, 81, 4))
    assert garbage and words is garbage[-1]
    assert (counts[:, [0, 2]] == 0).all() and (counts[:, 1] > 0).all()
    assert (words[:, :group] == -1).all() and (words[:, 2 * group:] == -1).all()  # left as they were
    dense_cue = dense_from_indices(x_idx, 50)
    assert torch.equal(memory.retrieve(dense_cue), plain.retrieve(dense_cue))
    for got, expected in zip(memory.retrieve_indices(x_idx), plain.retrieve_indices(x_idx), strict=True):
        assert torch.equal(got, expected)
