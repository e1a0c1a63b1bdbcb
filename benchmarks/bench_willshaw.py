"""Willshaw memory: storage (pairs/s) and retrieval (queries/s, batch 4096, hard and soft thresholds;
answers as one (values, offsets) pair, ``flat=True``: a tensor per answer would cost ~1.4 us of host
time each, more than the GPU spends on a query).

Two sizes, each memory loaded to its capacity L = ln2 n^2 / M^2 with random pairs:
- n = 2^16, M = 14 on the CPU (L = 15.2M pairs, a 512 MiB bit matrix); n = 2^18, M = 16 on a GPU
  (L = 186M pairs, 8 GiB): aefast's kernels (cpp on the CPU; triton on the GPU, and the cuda backend's
  beside them, marked "(cuda)") against aefast's plain PyTorch reference on the same packed bits
  ("eager"), and retrieval's bytes of rows read per second against a same-run read and copy of a large
  tensor. The dense float code does not fit (16 GiB, 256 GiB).
- n = 2^14, M = 12 (L = 1.3M pairs): aefast against the dense float matmul a user would write
  (W as an n x n float matrix, sums = cues @ W) and torch.compile of it, per query and per pair.

The slow roles run fewer pairs or queries per call; the summary compares time per item.

    pytest benchmarks/bench_willshaw.py --benchmark-only [--benchmark-json out.json]
"""
import pytest
import torch

import aefast
from aefast.willshaw import WillshawMemory, random_patterns, reference, theory
from conftest import bench_device, copy_probe, quick, read_probe, run_benchmark

DEVICE = bench_device()
KERNELS = "cpp" if DEVICE.type == "cpu" else "triton"
N, ONES = (2**10, 6) if quick() else (2**16, 14) if DEVICE.type == "cpu" else (2**18, 16)
DENSE_N, DENSE_ONES = (2**8, 5) if quick() else (2**14, 12)
BATCH = 64 if quick() else 4096  # queries per retrieval call
STORE_PAIRS = 2**10 if quick() else 2**20  # pairs per storage call of the kernels
SLOW_BATCH = 16 if quick() else 256  # queries or pairs per call of the reference and the dense code
# Retrieval calls and the probe take ~30 ms each here: many rounds, so that their medians hold still
# on a shared machine; storage and the slow roles take seconds.
ROUNDS, SLOW_ROUNDS = (2, 1) if quick() else (25, 3)
CHUNK = 2**20  # pairs generated and stored at a time while loading


def loaded_memory(n: int, ones: int, seed: int):
    """A memory at capacity, and the first BATCH stored cues (complete) with their answers."""
    generator = torch.Generator(DEVICE).manual_seed(seed)
    memory = WillshawMemory(n, device=DEVICE)
    pairs = int(theory.capacity(n, ones))
    with aefast.use_backend(KERNELS):
        for start in range(0, pairs, CHUNK):
            count = min(CHUNK, pairs - start)
            x_idx = random_patterns(count, n, ones, generator=generator, device=DEVICE)
            y_idx = random_patterns(count, n, ones, generator=generator, device=DEVICE)
            memory.store_indices(x_idx, y_idx)
            if start == 0:
                cues = x_idx[:BATCH].clone()
    return memory, cues


def extra_info(memory, ones):
    return {"backend": KERNELS, "n": memory.n_in, "ones": ones, "pairs_stored": memory.n_stored,
            "density": memory.density, "dtype": "bits"}


def row_bytes(memory, queries, ones):
    return queries * ones * memory.nbytes // memory.n_in


@pytest.fixture(scope="module")
def large():
    return loaded_memory(N, ONES, seed=1)


@pytest.fixture(scope="module")
def small():
    memory, cues = loaded_memory(DENSE_N, DENSE_ONES, seed=2)
    # The dense weights a user would hold: W[j, i] = w_ij as float32 (n_in x n_out).
    weights = reference.unpack(memory.packed_matrix(), DENSE_N).float()
    return memory, cues, weights


def dense_cues(cues, n):
    out = torch.zeros(cues.shape[0], n, device=cues.device)
    out[torch.arange(cues.shape[0], device=cues.device).unsqueeze(1), cues] = 1.0
    return out


def dense_retrieve_hard(cues, weights):
    """What a user writes with a dense float matrix: the sums by matmul, T = the cue's ones."""
    return (cues @ weights) >= cues.sum(1, keepdim=True)


def dense_store(weights, x, y):
    weights.copy_(torch.maximum(weights, ((x.T @ y) > 0).float()))


# --- n = 2^16: kernels against the packed reference and the read probe ------------------------------

@pytest.mark.parametrize("threshold", ["hard", "soft"])
def test_retrieve_aefast(benchmark, large, threshold):
    memory, cues = large
    with aefast.use_backend(KERNELS):
        run_benchmark(benchmark, lambda: memory.retrieve_indices(cues, threshold, flat=True), DEVICE, component="willshaw",
                      case=f"retrieve {threshold} n={N} M={ONES}", role="aefast", items=BATCH, unit="queries",
                      nbytes=row_bytes(memory, BATCH, ONES), rounds=ROUNDS, extra=extra_info(memory, ONES))


def cuda_kernels_or_skip():
    """The cuda backend's kernels are timed beside Triton's (rows marked "(cuda)"): auto picks by them."""
    why = aefast.available_backends()["cuda"] if DEVICE.type == "cuda" else "the benchmark runs on the CPU"
    if why is not True:
        pytest.skip(f"cuda backend: {why}")


@pytest.mark.parametrize("threshold", ["hard", "soft"])
def test_retrieve_aefast_cuda(benchmark, large, threshold):
    cuda_kernels_or_skip()
    memory, cues = large
    with aefast.use_backend("cuda"):
        run_benchmark(benchmark, lambda: memory.retrieve_indices(cues, threshold, flat=True), DEVICE, component="willshaw",
                      case=f"retrieve {threshold} n={N} M={ONES}", role="aefast cuda", items=BATCH, unit="queries",
                      nbytes=row_bytes(memory, BATCH, ONES), rounds=ROUNDS,
                      extra=dict(extra_info(memory, ONES), backend="cuda"))


@pytest.mark.parametrize("threshold", ["hard", "soft"])
def test_retrieve_reference(benchmark, large, threshold):
    memory, cues = large
    with aefast.use_backend("reference"):
        run_benchmark(benchmark, lambda: memory.retrieve_indices(cues[:SLOW_BATCH], threshold, flat=True), DEVICE,
                      component="willshaw", case=f"retrieve {threshold} n={N} M={ONES}", role="eager",
                      items=SLOW_BATCH, nbytes=row_bytes(memory, SLOW_BATCH, ONES), rounds=SLOW_ROUNDS)


@pytest.mark.parametrize("threshold", ["hard", "soft"])
@pytest.mark.parametrize("probe", [read_probe, copy_probe], ids=["read", "copy"])
def test_retrieve_bandwidth_probe(benchmark, large, threshold, probe):
    memory, _ = large
    probe(benchmark, DEVICE, min(memory.nbytes * 2, 2**32), component="willshaw",
          case=f"retrieve {threshold} n={N} M={ONES}", rounds=ROUNDS)


@pytest.fixture(scope="module")
def store_problem():
    generator = torch.Generator(DEVICE).manual_seed(3)
    pairs = (random_patterns(STORE_PAIRS, N, ONES, generator=generator, device=DEVICE),
             random_patterns(STORE_PAIRS, N, ONES, generator=generator, device=DEVICE))
    return WillshawMemory(N, device=DEVICE), pairs


def test_store_aefast(benchmark, store_problem):
    memory, (x_idx, y_idx) = store_problem
    with aefast.use_backend(KERNELS):
        run_benchmark(benchmark, lambda: memory.store_indices(x_idx, y_idx), DEVICE, component="willshaw",
                      case=f"store n={N} M={ONES}", role="aefast", items=STORE_PAIRS, unit="pairs",
                      nbytes=memory.nbytes, rounds=SLOW_ROUNDS, extra={"backend": KERNELS, "n": N, "ones": ONES})


def store_in_order(benchmark, monkeypatch, memory, x_idx, y_idx, order, case, ones):
    """The Triton store in one order of work (triton_kernels.STORE_ORDER; "aefast" rows take the default,
    which picks by the matrix's size), against the same eager run; its summary row is marked "(rows
    order)" or "(pairs order)"."""
    from aefast.willshaw import triton_kernels

    if DEVICE.type != "cuda":
        pytest.skip("the order of work is a mode of the Triton store")
    monkeypatch.setattr(triton_kernels, "STORE_ORDER", order)
    with aefast.use_backend(KERNELS):
        run_benchmark(benchmark, lambda: memory.store_indices(x_idx, y_idx), DEVICE, component="willshaw",
                      case=case, role=f"aefast {order} order", items=STORE_PAIRS, unit="pairs", nbytes=memory.nbytes,
                      rounds=SLOW_ROUNDS, extra={"backend": KERNELS, "n": memory.n_in, "ones": ones})


@pytest.mark.parametrize("order", ["pairs", "rows"])
def test_store_aefast_in_order(benchmark, store_problem, monkeypatch, order):
    memory, (x_idx, y_idx) = store_problem
    store_in_order(benchmark, monkeypatch, memory, x_idx, y_idx, order, f"store n={N} M={ONES}", ONES)


def test_store_aefast_cuda(benchmark, store_problem):
    cuda_kernels_or_skip()
    memory, (x_idx, y_idx) = store_problem
    with aefast.use_backend("cuda"):
        run_benchmark(benchmark, lambda: memory.store_indices(x_idx, y_idx), DEVICE, component="willshaw",
                      case=f"store n={N} M={ONES}", role="aefast cuda", items=STORE_PAIRS, unit="pairs",
                      nbytes=memory.nbytes, rounds=SLOW_ROUNDS, extra={"backend": "cuda", "n": N, "ones": ONES})


def test_store_reference(benchmark, store_problem):
    memory, (x_idx, y_idx) = store_problem
    with aefast.use_backend("reference"):
        run_benchmark(benchmark, lambda: memory.store_indices(x_idx[:SLOW_BATCH], y_idx[:SLOW_BATCH]), DEVICE,
                      component="willshaw", case=f"store n={N} M={ONES}", role="eager", items=SLOW_BATCH,
                      nbytes=memory.nbytes, rounds=SLOW_ROUNDS)


# --- n = 2^14: kernels against the dense float code a user would write ------------------------------

DENSE_CASE_RETRIEVE = f"retrieve hard n={DENSE_N} M={DENSE_ONES} vs dense"
DENSE_CASE_STORE = f"store n={DENSE_N} M={DENSE_ONES} vs dense"


def test_dense_retrieve_aefast(benchmark, small):
    memory, cues, _ = small
    with aefast.use_backend(KERNELS):
        run_benchmark(benchmark, lambda: memory.retrieve_indices(cues, "hard", flat=True), DEVICE, component="willshaw",
                      case=DENSE_CASE_RETRIEVE, role="aefast", items=BATCH, unit="queries",
                      nbytes=row_bytes(memory, BATCH, DENSE_ONES), rounds=ROUNDS,
                      extra=extra_info(memory, DENSE_ONES))


@pytest.mark.parametrize("role", ["eager", "compile"])
def test_dense_retrieve_user_code(benchmark, small, role):
    memory, cues, weights = small
    queries = dense_cues(cues[:SLOW_BATCH], DENSE_N)
    fn = dense_retrieve_hard if role == "eager" else torch.compile(dense_retrieve_hard)
    expected = torch.zeros(SLOW_BATCH, DENSE_N, dtype=torch.bool, device=DEVICE)
    with aefast.use_backend(KERNELS):
        expected[:] = memory.retrieve(queries.bool(), "hard")
    assert torch.equal(fn(queries, weights), expected)  # the same answers, so the same work
    run_benchmark(benchmark, lambda: fn(queries, weights), DEVICE, component="willshaw", case=DENSE_CASE_RETRIEVE,
                  role=role, items=SLOW_BATCH, nbytes=weights.numel() * 4, rounds=SLOW_ROUNDS)


@pytest.fixture(scope="module")
def small_store_pairs():
    generator = torch.Generator(DEVICE).manual_seed(4)
    return (random_patterns(STORE_PAIRS, DENSE_N, DENSE_ONES, generator=generator, device=DEVICE),
            random_patterns(STORE_PAIRS, DENSE_N, DENSE_ONES, generator=generator, device=DEVICE))


def test_dense_store_aefast(benchmark, small, small_store_pairs):
    memory, _, _ = small
    x_idx, y_idx = small_store_pairs
    with aefast.use_backend(KERNELS):
        run_benchmark(benchmark, lambda: memory.store_indices(x_idx, y_idx), DEVICE, component="willshaw",
                      case=DENSE_CASE_STORE, role="aefast", items=STORE_PAIRS, unit="pairs", nbytes=memory.nbytes,
                      rounds=SLOW_ROUNDS, extra={"backend": KERNELS, "n": DENSE_N, "ones": DENSE_ONES})


@pytest.mark.parametrize("order", ["pairs", "rows"])
def test_dense_store_aefast_in_order(benchmark, small, small_store_pairs, monkeypatch, order):
    store_in_order(benchmark, monkeypatch, small[0], *small_store_pairs, order, DENSE_CASE_STORE, DENSE_ONES)


@pytest.mark.parametrize("role", ["eager", "compile"])
def test_dense_store_user_code(benchmark, small, role):
    _, _, weights = small
    generator = torch.Generator(DEVICE).manual_seed(5)
    x = dense_cues(random_patterns(SLOW_BATCH, DENSE_N, DENSE_ONES, generator=generator, device=DEVICE), DENSE_N)
    y = dense_cues(random_patterns(SLOW_BATCH, DENSE_N, DENSE_ONES, generator=generator, device=DEVICE), DENSE_N)
    scratch = weights.clone()
    fn = dense_store if role == "eager" else torch.compile(dense_store)
    run_benchmark(benchmark, lambda: fn(scratch, x, y), DEVICE, component="willshaw", case=DENSE_CASE_STORE,
                  role=role, items=SLOW_BATCH, nbytes=weights.numel() * 4, rounds=SLOW_ROUNDS)
