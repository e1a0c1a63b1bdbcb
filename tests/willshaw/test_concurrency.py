"""Threads and one WillshawMemory (the class docstring's promise): stores from several threads are
serialized by the memory's lock and lose nothing (without the lock the reference loses thousands of
bits here, the cpp kernels a few now and then); retrievals from several threads, with no store running,
give the answers of one thread. Both backends release the GIL inside, so the threads overlap. Copies,
saves and clears take the store lock too."""
import copy
import pickle
import threading

import pytest
import torch

from aefast import _backends

from aefast.willshaw import WillshawMemory
from tests.willshaw.conftest import random_patterns

N, ONES, THREADS, PAIRS_PER_THREAD = 2000, 12, 4, 3000


def run_in_threads(work) -> list:
    """work(i) in THREADS threads released together; the results in thread order, errors re-raised."""
    start, results, errors = threading.Barrier(THREADS), [None] * THREADS, []

    def thread(i):
        start.wait()
        try:
            results[i] = work(i)
        except BaseException as error:  # re-raised in the test's thread below
            errors.append(error)

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def threaded_backend(willshaw_backend):
    if willshaw_backend == "triton" and _backends.triton_interpreted():
        pytest.skip("Triton's CPU interpreter keeps the launch grid in global state: one thread at a time")
    return willshaw_backend


def test_stores_from_several_threads_lose_nothing(threaded_backend):
    generator = torch.Generator().manual_seed(0)
    x = random_patterns(THREADS * PAIRS_PER_THREAD, N, ONES, generator)
    y = random_patterns(THREADS * PAIRS_PER_THREAD, N, ONES, generator)
    # The memory names its backend: use_backend is a context variable, which new threads do not inherit.
    shared, sequential = WillshawMemory(N, backend=threaded_backend), WillshawMemory(N, backend=threaded_backend)
    for _ in range(3):  # three rounds: overlapping stores into a matrix that already holds pairs
        chunks = torch.arange(THREADS * PAIRS_PER_THREAD).chunk(THREADS)
        # Many small stores per thread, so that they interleave with the other threads' stores.
        run_in_threads(lambda i: [shared.store_indices(x[part], y[part]) for part in chunks[i].chunk(30)])
        sequential.store_indices(x, y)
        assert torch.equal(shared.packed_matrix(), sequential.packed_matrix())
    assert shared.n_stored == sequential.n_stored == 3 * THREADS * PAIRS_PER_THREAD


def test_retrievals_from_several_threads_agree_with_one_thread(threaded_backend):
    generator = torch.Generator().manual_seed(1)
    x = random_patterns(20000, N, ONES, generator)
    y = random_patterns(20000, N, ONES, generator)
    memory = WillshawMemory(N, backend=threaded_backend)
    memory.store_indices(x, y)
    cues = x[:600, :9]  # incomplete cues: the soft threshold and top-k do real work
    single = {threshold: memory.retrieve_indices(cues, threshold, k=k)
              for threshold, k in (("hard", None), ("soft", None), ("topk", 15))}
    single_sums = memory.sums_indices(cues)

    def work(i):
        threshold, k = (("hard", None), ("soft", None), ("topk", 15), ("hard", None))[i]
        answers = [memory.retrieve_indices(cues, threshold, k=k) for _ in range(3)]
        return threshold, answers, memory.sums_indices(cues)

    for threshold, answers, sums in run_in_threads(work):
        assert torch.equal(sums, single_sums)
        for answer in answers:
            assert all(torch.equal(a, b) for a, b in zip(answer, single[threshold]))


@pytest.mark.parametrize("action", ["copy", "deepcopy", "pickle", "to", "save", "clear"])
def test_copies_saves_and_clears_take_the_store_lock(action, tmp_path):
    """What must not interleave with a store runs under the memory's store lock (a snapshot holds whole
    calls' pairs): recorded here by a stand-in lock, since a race would show only now and then."""
    class RecordingLock:
        def __init__(self):
            self.held = 0
        def __enter__(self):
            self.held += 1
        def __exit__(self, *exc):
            return False

    memory = WillshawMemory(70, 90)
    memory.store_indices([[1, 2]], [[3, 4]])
    memory._store_lock = lock = RecordingLock()
    {"copy": lambda: copy.copy(memory), "deepcopy": lambda: copy.deepcopy(memory),
     "pickle": lambda: pickle.dumps(memory), "to": lambda: memory._copy_to(memory.device),
     "save": lambda: memory.save(tmp_path / "memory.safetensors"), "clear": memory.clear}[action]()
    assert lock.held == 1
