"""The GPU backends, triton and cuda, against the cpp backend on the CPU: the same stored bits, sums and
answers for every threshold, on sizes that are no multiple of a word or a block; concurrent ORs into
shared words; rows wider than one launch grid; bad cues that raise and leave the memory as it was.
(The Triton kernels also run in the CPU interpreter in the other tests; the CUDA kernels run only here.)"""
import pytest
import torch

from aefast import _backends
from aefast.willshaw import WillshawMemory, random_patterns
from tests.willshaw.conftest import dense_from_indices

pytestmark = pytest.mark.gpu


@pytest.fixture(params=["triton", "cuda"])
def gpu_backend(request):
    why = _backends.can_run(request.param, torch.device("cuda"))
    if why is not True:
        pytest.skip(f"{request.param}: {why}")
    return request.param


def memories(n_in, n_out, gpu_backend, x_idx, y_idx):
    """The same pairs stored on the GPU by ``gpu_backend`` and on the CPU by cpp."""
    on_gpu = WillshawMemory(n_in, n_out, device="cuda", backend=gpu_backend)
    on_cpu = WillshawMemory(n_in, n_out, backend="cpp")
    on_gpu.store_indices([row.cuda() for row in x_idx], [row.cuda() for row in y_idx])
    on_cpu.store_indices(x_idx, y_idx)
    return on_gpu, on_cpu


def ragged_rows(count, n, longest, generator):
    """``count`` rows of 0 to ``longest`` distinct sorted positions in [0, n)."""
    lengths = torch.randint(0, longest + 1, (count,), generator=generator)
    return [torch.randperm(n, generator=generator)[:length].sort().values for length in lengths.tolist()]


def test_every_operation_matches_cpp_on_odd_sizes(gpu_backend):
    generator = torch.Generator().manual_seed(11)
    n_in, n_out = 1001, 333  # 6 words a row, the last one partly past n_out
    x_idx, y_idx = ragged_rows(3000, n_in, 9, generator), ragged_rows(3000, n_out, 7, generator)
    on_gpu, on_cpu = memories(n_in, n_out, gpu_backend, x_idx, y_idx)
    assert torch.equal(on_gpu.packed_matrix().cpu(), on_cpu.packed_matrix())
    assert on_gpu.density == on_cpu.density
    # Cues of 0 to 40 ones: empty ones, and ones longer than the AND's 16 rows at a time.
    cues = ragged_rows(97, n_in, 40, generator) + [x_idx[5][:2], torch.arange(n_in)]
    dense = torch.stack([torch.zeros(n_in, dtype=torch.bool).index_fill(0, cue, True) for cue in cues])
    assert torch.equal(on_gpu.sums(dense.cuda()).cpu(), on_cpu.sums(dense))
    for threshold, k in (("hard", None), ("soft", None), (0, None), (3, None), (5000, None), ("topk", 9),
                         ("topk", n_out)):
        expected = on_cpu.retrieve(dense, threshold, k=k)
        assert torch.equal(on_gpu.retrieve(dense.cuda(), threshold, k=k).cpu(), expected), (threshold, k)
        values, offsets = on_gpu.retrieve_indices([cue.cuda() for cue in cues], threshold, k=k, flat=True)
        expected_values, expected_offsets = on_cpu.retrieve_indices(cues, threshold, k=k, flat=True)
        assert torch.equal(values.cpu(), expected_values) and torch.equal(offsets.cpu(), expected_offsets)


def test_soft_threshold_falls_back_to_the_largest_sums(gpu_backend):
    """Cues whose AND is empty: no unit has all their ones, so the soft threshold takes the units of the
    largest sum, in both answer forms."""
    x_idx = [torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), torch.tensor([0, 2])]
    y_idx = [torch.tensor([5]), torch.tensor([6]), torch.tensor([7, 100]), torch.tensor([8])]
    on_gpu, on_cpu = memories(3, 130, gpu_backend, x_idx, y_idx)  # rows {5, 8}, {6}, {7, 8, 100}
    cues = [torch.tensor([0, 1]), torch.tensor([0, 1, 2]), torch.tensor([0, 2]), torch.tensor([], dtype=torch.int64)]
    expected = [row.tolist() for row in on_cpu.retrieve_indices(cues, "soft")]
    assert expected == [[5, 6, 8], [8], [8], []]
    assert [row.tolist() for row in on_gpu.retrieve_indices([cue.cuda() for cue in cues], "soft")] == expected


def test_concurrent_stores_into_shared_words_lose_no_bit(gpu_backend):
    """2^16 pairs of 12 ones over 2^12 units: thousands of atomic ORs meet in every word."""
    generator = torch.Generator("cuda").manual_seed(8)
    x_idx = random_patterns(2**16, 2**12, 12, generator=generator, device="cuda")
    y_idx = random_patterns(2**16, 2**12, 12, generator=generator, device="cuda")
    on_gpu = WillshawMemory(2**12, device="cuda", backend=gpu_backend)
    on_gpu.store_indices(x_idx, y_idx)
    on_cpu = WillshawMemory(2**12, backend="cpp")
    on_cpu.store_indices(x_idx.cpu(), y_idx.cpu())
    assert torch.equal(on_gpu.packed_matrix().cpu(), on_cpu.packed_matrix())
    assert on_gpu.density == on_cpu.density


def test_rows_wider_than_one_launch_grid(gpu_backend):
    """65537 groups of 128 words a row: past the 65535 blocks of a grid's second axis, so the kernels
    loop over the groups (CUDA) or launch again (Triton); the bits at the far end must come back."""
    n_out = 65537 * 128 * 64 - 5
    y = torch.tensor([0, 64 * 128 * 65535 - 1, 64 * 128 * 65535, n_out - 1])
    memory = WillshawMemory(3, n_out, device="cuda", backend=gpu_backend)
    memory.store_indices([torch.tensor([0, 2]).cuda()], [y.cuda()])
    for threshold in ("hard", "soft"):
        answers = memory.retrieve_indices([torch.tensor([0]).cuda(), torch.tensor([0, 1]).cuda(),
                                           torch.tensor([2]).cuda()], threshold)
        assert answers[0].tolist() == y.tolist() and answers[2].tolist() == y.tolist()
        assert answers[1].tolist() == ([] if threshold == "hard" else y.tolist())


def test_bad_cues_raise_and_leave_the_memory_as_it_was(gpu_backend):
    """Positions outside [0, n_in) and repeated positions: the kernels run before the verdict comes back
    (one wait), so they must read nothing outside the matrix; the GPU then goes on working."""
    generator = torch.Generator().manual_seed(4)
    x_idx, y_idx = ragged_rows(200, 50, 6, generator), ragged_rows(200, 70, 6, generator)
    on_gpu, on_cpu = memories(50, 70, gpu_backend, x_idx, y_idx)
    before = on_gpu.packed_matrix().clone()
    for bad in ([torch.tensor([0, 10**12])], [torch.tensor([-3])], [torch.tensor([4, 4])], [torch.tensor([50])]):
        for threshold in ("hard", "soft", 2, "topk"):
            with pytest.raises(ValueError, match="x_idx"):
                on_gpu.retrieve_indices([row.cuda() for row in bad], threshold, k=3 if threshold == "topk" else None)
        with pytest.raises(ValueError, match="x_idx"):
            on_gpu.store_indices([row.cuda() for row in bad], [torch.tensor([1]).cuda()])
    torch.cuda.synchronize()
    assert torch.equal(on_gpu.packed_matrix(), before)
    cue = dense_from_indices(torch.tensor([[1, 2, 3]]), 50)
    assert torch.equal(on_gpu.retrieve(cue.cuda(), "soft").cpu(), on_cpu.retrieve(cue, "soft"))


def test_a_deleted_memorys_cached_blocks_count_as_available():
    """The memory check counts blocks torch's caching allocator keeps after a memory is deleted: the
    next, larger memory of a scaling run must not be refused for room it can take."""
    from aefast.willshaw.memory import _available_bytes
    device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.empty_cache()
    before = _available_bytes(device)
    memory = WillshawMemory(2**15, device="cuda")
    del memory
    if torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device) < 2**27:
        pytest.skip("this allocator configuration handed the deleted memory's blocks back to the driver")
    assert _available_bytes(device) >= before - 2**21  # within one 2 MiB allocator page of the start
