"""Bad input to WillshawMemory raises an error that names the argument, and a failed store leaves the
memory unchanged. The ops check their contract too, since torch.ops.aefast.* is reachable directly."""
import math

import numpy as np
import pytest
import torch

import aefast
from aefast import _backends
from aefast.willshaw import MAX_UNITS, WillshawMemory, ops, reference
from aefast.willshaw import memory as memory_module


@pytest.fixture
def memory(willshaw_backend):
    memory = WillshawMemory(100, 80)
    memory.store_indices(torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6]]))
    return memory


@pytest.mark.parametrize("n_in,n_out,error,match", [
    (0, None, ValueError, "n_in must be in"),
    (-5, None, ValueError, "n_in must be in"),
    (2**40, 1, ValueError, "n_in must be in"),
    (10, 0, ValueError, "n_out must be in"),
    (True, None, TypeError, "n_in must be an int"),
    (10.0, None, TypeError, "n_in must be an int"),
    (np.int64(2**40), None, ValueError, "n_in must be in"),
])
def test_sizes_are_checked(n_in, n_out, error, match):
    with pytest.raises(error, match=match):
        WillshawMemory(n_in, n_out)


def test_a_matrix_larger_than_memory_is_refused_before_allocating():
    with pytest.raises(MemoryError, match=r"needs 576460752034988032 bytes \(536870911\.75 GiB\)"):
        WillshawMemory(MAX_UNITS, MAX_UNITS)


def test_the_room_check_takes_exactly_the_matrixs_bytes(monkeypatch):
    """WillshawMemory(100, 130): 100 rows of 3 words, 2400 bytes; one byte less available is refused."""
    monkeypatch.setattr(memory_module, "_available_bytes", lambda device: 2399)
    with pytest.raises(MemoryError, match=r"needs 2400 bytes .* has 2399 bytes"):
        WillshawMemory(100, 130)
    monkeypatch.setattr(memory_module, "_available_bytes", lambda device: 2400)
    assert WillshawMemory(100, 130).nbytes == 2400


def test_a_backend_that_cannot_hold_the_memory_is_refused(monkeypatch):
    with pytest.raises(aefast.BackendUnavailableError, match="backend 'cuda' cannot hold a memory on cpu: "):
        WillshawMemory(10, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        WillshawMemory(10, backend="fortran")
    monkeypatch.delitem(_backends._KERNELS["willshaw_store"], "cpp")  # as a backend that has none
    with pytest.raises(aefast.BackendUnavailableError, match="backend 'cpp' cannot hold a memory on cpu: it has no "
                                                             "Willshaw kernels"):
        WillshawMemory(10, backend="cpp")


DENSE_CASES = [
    (lambda: torch.zeros(2, 100, dtype=torch.complex64), TypeError, "x must be a real tensor of 0/1 values"),
    (lambda: torch.full((2, 100), 0.5), ValueError, "x must hold only 0 and 1, found 0.5"),
    (lambda: torch.full((2, 100), math.nan), ValueError, "x must hold only 0 and 1, found nan"),
    (lambda: torch.full((2, 100), 2), ValueError, "x must hold only 0 and 1, found 2"),
    (lambda: -torch.ones(2, 100, dtype=torch.int8), ValueError, "x must hold only 0 and 1, found -1"),
    (lambda: torch.zeros(2, 99, dtype=torch.bool), ValueError, "x must have 100 columns"),
    (lambda: torch.zeros(2, 2, 100, dtype=torch.bool), ValueError, r"x must have shape \(B, 100\)"),
    (lambda: [[0, 1]], TypeError, "x must be a torch.Tensor"),
    (lambda: torch.zeros(2, 100, dtype=torch.bool, device="meta"), ValueError, r"x must be on the memory's device \S+, got meta"),
]


@pytest.mark.parametrize("make_x,error,match", DENSE_CASES)
def test_bad_dense_patterns(memory, make_x, error, match):
    before = memory.packed_matrix()
    with pytest.raises(error, match=match):
        memory.store(make_x(), torch.zeros(2, 80, dtype=torch.bool))
    with pytest.raises(error, match=match):
        memory.retrieve(make_x())
    with pytest.raises(error, match=match):
        memory.sums(make_x())
    assert torch.equal(memory.packed_matrix(), before) and memory.n_stored == 1


INDEX_CASES = [
    (lambda: torch.tensor([[1, 100]]), ValueError, r"x_idx: row 0: index 100 is outside \[0, 100\)"),
    (lambda: torch.tensor([[1, 2], [3, -1]]), ValueError, r"x_idx: row 1: index -1 is outside \[0, 100\)"),
    (lambda: torch.tensor([[7, 7]]), ValueError, "x_idx: row 0 lists index 7 more than once"),
    (lambda: torch.tensor([[1.0, 2.0]]), TypeError, "x_idx must hold integer indices"),
    (lambda: torch.tensor([[True, False]]), TypeError, "x_idx must hold integer indices, got torch.bool"),
    (lambda: [[1, 2], "ab"], TypeError, r"x_idx\[1\] must be a 1-D integer tensor or a list of ints"),
    (lambda: [torch.tensor([[1]])], ValueError, r"x_idx\[0\] must be 1-D"),
    (lambda: "12", TypeError, "x_idx must be an integer tensor"),
    # A list row is read with the dtype torch infers, so a float is refused rather than cut to an int.
    (lambda: [[1.5, 2]], TypeError, r"x_idx\[0\] must hold integer indices, got torch.float32"),
    (lambda: [[1, 2**70]], ValueError, r"x_idx\[0\] must be a list of ints that fit int64"),
    (lambda: torch.tensor([[1, 2]], device="meta"), ValueError, r"x_idx must be on the memory's device \S+, got meta"),
    (lambda: [torch.tensor([1, 2]), torch.tensor([3], device="meta")], ValueError,
     r"x_idx\[1\] must be on the memory's device \S+, got meta"),
]


@pytest.mark.parametrize("make_x,error,match", INDEX_CASES)
def test_bad_index_patterns(memory, make_x, error, match):
    before = memory.packed_matrix()
    x = make_x()
    # As many y rows as x rows: the counts are compared before the positions are checked.
    y = torch.tensor([[0, 1]]).repeat(x.shape[0] if isinstance(x, torch.Tensor) and x.dim() == 2 else 1, 1)
    with pytest.raises(error, match=match):
        memory.store_indices(x, y)
    with pytest.raises(error, match=match):
        memory.retrieve_indices(make_x())
    with pytest.raises(error, match=match):
        memory.sums_indices(make_x())
    assert torch.equal(memory.packed_matrix(), before) and memory.n_stored == 1


@pytest.mark.parametrize("problem,match", [
    ("outside", r"x_idx: row 3: index 100 is outside \[0, 100\)"),
    ("repeat", r"x_idx: row 3 lists index 7 more than once"),
])
def test_of_several_bad_rows_the_first_is_named(memory, problem, match):
    """The C++ check scans rows in parallel (chunks of 256 a thread): it reports the lowest bad row, as
    the reference does, not the one a thread happened to find last."""
    x = torch.arange(3).repeat(1000, 1) + torch.arange(1000).unsqueeze(1) % 90
    for row in (3, 700, 999):
        x[row] = torch.tensor([7, 100, 8]) if problem == "outside" else torch.tensor([7, 9, 7])
    with pytest.raises(ValueError, match=match):
        memory.retrieve_indices(x)
    with pytest.raises(ValueError, match=match):
        memory.store_indices(x, torch.zeros(1000, 1, dtype=torch.int64))


def test_a_store_that_fails_on_y_changes_nothing(memory):
    before = memory.packed_matrix()
    with pytest.raises(ValueError, match=r"y_idx: row 1: index 80 is outside \[0, 80\)"):
        memory.store_indices(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6], [7, 80]]))
    with pytest.raises(ValueError, match="x_idx and y_idx must hold the same number of patterns, got 2 and 1"):
        memory.store_indices(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6]]))
    with pytest.raises(ValueError, match="y is required: this memory is hetero-associative"):
        memory.store(torch.ones(1, 100, dtype=torch.bool))
    assert torch.equal(memory.packed_matrix(), before) and memory.n_stored == 1


@pytest.mark.parametrize("threshold,k,error,match", [
    ("medium", None, ValueError, "threshold must be 'hard', 'soft', 'topk' or an int"),
    (-1, None, ValueError, "threshold must be >= 0"),
    (True, None, TypeError, "got a bool"),
    ([3], None, TypeError, "threshold must be 'hard', 'soft', 'topk' or an int, got list"),
    (2.0, None, TypeError, "threshold must be 'hard', 'soft', 'topk' or an int, got float"),
    (torch.tensor(3), None, TypeError, "threshold must be 'hard', 'soft', 'topk' or an int, got Tensor"),
    ("topk", None, TypeError, "threshold='topk' needs k"),
    ("topk", 0, ValueError, r"k must be in \[1, n_out=80\]"),
    ("topk", 81, ValueError, r"k must be in \[1, n_out=80\]"),
    ("topk", 2.5, TypeError, "threshold='topk' needs k, an int, got 2.5"),
    ("hard", 3, ValueError, "k goes with threshold='topk' only"),
    (3, 3, ValueError, "k goes with threshold='topk' only"),
])
def test_bad_thresholds(memory, threshold, k, error, match):
    with pytest.raises(error, match=match):
        memory.retrieve_indices(torch.tensor([[1, 2]]), threshold, k=k)


@pytest.mark.parametrize("threshold", [2**31 - 1, 2**31, 2**32 + 3, 2**62, 10**30])
def test_a_fixed_threshold_past_every_sum_fires_nothing(memory, threshold):
    """No sum exceeds MAX_UNITS: a larger T (past int32, past int64) answers nothing on every backend
    (the reference compared int32 sums with a T it wrapped, and answered every unit for T = 2**31)."""
    cue = torch.tensor([[1, 2, 3]])
    assert memory.retrieve_indices(cue, 3)[0].tolist() == [4, 5, 6]
    assert memory.retrieve_indices(cue, threshold)[0].numel() == 0
    assert not memory.retrieve(torch.zeros(1, 100, dtype=torch.bool).index_fill_(1, cue[0], True), threshold).any()


def test_numpy_ints_are_taken_where_an_int_is(memory):
    assert memory.retrieve_indices(torch.tensor([[1, 2, 3]]), np.int64(3))[0].tolist() == [4, 5, 6]
    assert memory.retrieve_indices(torch.tensor([[1, 2, 3]]), "topk", k=np.int32(2))[0].tolist() == [4, 5]
    assert WillshawMemory(np.int64(10), np.uint16(3)).n_out == 3


def test_direct_op_calls_with_broken_rows_raise(willshaw_backend):
    matrix = torch.zeros(100, 2, dtype=torch.int64)
    values, offsets = torch.tensor([1, 2, 3]), torch.tensor([0, 2, 3])
    with pytest.raises(ValueError, match="offsets must run from 0 to the number of values"):
        torch.ops.aefast.willshaw_sums(matrix, 80, values, torch.tensor([0, 2, 5]))
    with pytest.raises(ValueError, match="offsets must"):
        torch.ops.aefast.willshaw_sums(matrix, 80, values, torch.tensor([0, 3, 2, 3]))
    with pytest.raises(ValueError, match="outside"):
        torch.ops.aefast.willshaw_store(matrix, 80, torch.tensor([1, 2, 300]), offsets, values, offsets)
    with pytest.raises(ValueError, match="words per row"):
        torch.ops.aefast.willshaw_sums(matrix, 200, values, offsets)
    with pytest.raises(ValueError, match=r"ceil\(n_out / 64\) = 1 words per row for n_out=60, got 2"):
        torch.ops.aefast.willshaw_sums(matrix, 60, values, offsets)  # too wide, not only too narrow
    with pytest.raises(ValueError, match=r"n_out must be in \[1, 2147483647\], got 0"):
        torch.ops.aefast.willshaw_store(matrix, 0, values, offsets, values, offsets)
    # A matrix without rows (input units) is refused on every backend alike, the C++'s own check aside.
    with pytest.raises(ValueError, match=r"matrix must have 1 to 2147483647 rows \(input units\), got 0"):
        torch.ops.aefast.willshaw_retrieve(matrix[:0], 80, values[:0], torch.tensor([0, 0]), 0, 0)
    # Past 2^31 - 1 units the C++ store's 32-bit answer units would wrap: refused before any kernel
    # (and before the matrix's size is looked at).
    with pytest.raises(ValueError, match=r"n_out must be in \[1, 2147483647\], got 2147483649"):
        torch.ops.aefast.willshaw_store(matrix, 2**31 + 1, torch.tensor([0]), torch.tensor([0, 1]),
                                        torch.tensor([2**31]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="must be a contiguous 1-D int64 tensor"):
        torch.ops.aefast.willshaw_sums(matrix, 80, values.int(), offsets)
    with pytest.raises(ValueError, match=r"cue_values must be a contiguous 1-D int64 tensor, got \(3,\)"):
        torch.ops.aefast.willshaw_sums(matrix, 80, torch.tensor([1, 0, 2, 0, 3, 0])[::2], offsets)
    with pytest.raises(ValueError, match="the same number of patterns"):
        torch.ops.aefast.willshaw_store(matrix, 80, values, offsets, values, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="k must be in"):
        torch.ops.aefast.willshaw_retrieve(matrix, 80, values, offsets, 3, 0)
    with pytest.raises(ValueError, match=r"k must be in \[1, n_out=80\], got 81"):
        torch.ops.aefast.willshaw_retrieve(matrix, 80, values, offsets, 3, 81)
    with pytest.raises(ValueError, match=r"threshold must be 0 \(hard\), 1 \(soft\), 2 \(fixed\) or 3 \(topk\), got 4"):
        torch.ops.aefast.willshaw_retrieve(matrix, 80, values, offsets, 4, 0)
    with pytest.raises(ValueError, match="a fixed threshold must be >= 0, got -1"):
        torch.ops.aefast.willshaw_retrieve_indices(matrix, 80, values, offsets, 2, -1)
    with pytest.raises(ValueError, match="cue_offsets must hold rows \\+ 1 entries, got none"):
        torch.ops.aefast.willshaw_sums(matrix, 80, values, torch.tensor([], dtype=torch.int64))
    # With one meta tensor among CPU ones the dispatcher runs the op's fake implementation, which must
    # refuse the call too rather than answer with uninitialized tensors (or store nothing).
    with pytest.raises(ValueError, match="x_values is on meta but matrix is on cpu"):
        torch.ops.aefast.willshaw_store(matrix, 80, values.to("meta"), offsets, values, offsets)
    with pytest.raises(ValueError, match="cue_offsets is on meta but matrix is on cpu"):
        torch.ops.aefast.willshaw_retrieve(matrix, 80, values, offsets.to("meta"), 0, 0)
    with pytest.raises(ValueError, match="x_values is on cpu but matrix is on meta"):
        torch.ops.aefast.willshaw_store(matrix.to("meta"), 80, values, offsets, values, offsets)
    for bad_matrix in (matrix.int(), matrix.t(), matrix[0]):
        with pytest.raises(ValueError, match="matrix must be a contiguous 2-D int64 tensor"):
            torch.ops.aefast.willshaw_store(bad_matrix, 80, values, offsets, values, offsets)
    assert not matrix.any()


def test_direct_op_calls_refuse_a_matrix_with_more_rows_than_units_allow(willshaw_backend, monkeypatch):
    """The ops refuse more than MAX_UNITS input units (2^31 - 1, a 16 GiB matrix at one word a row),
    read at each call: lowered here so that a small matrix passes it."""
    monkeypatch.setattr(reference, "MAX_UNITS", 50)
    matrix = torch.zeros(51, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"matrix must have 1 to 50 rows \(input units\), got 51"):
        torch.ops.aefast.willshaw_sums(matrix, 40, torch.tensor([1]), torch.tensor([0, 1]))
    torch.ops.aefast.willshaw_sums(matrix[:50], 40, torch.tensor([1]), torch.tensor([0, 1]))


def test_the_ops_entry_points_refuse_patterns_on_another_device(willshaw_backend):
    """What WillshawMemory calls outside torch.compile (ops.sums & co., without the custom ops' dispatch,
    whose fake implementation refuses mixed devices) checks the devices itself."""
    matrix, offsets = torch.zeros(100, 2, dtype=torch.int64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="cue_values must be on the matrix's device cpu, got meta"):
        ops.sums(matrix, 80, torch.tensor([1], device="meta"), offsets)
    with pytest.raises(ValueError, match="y_offsets must be on the matrix's device cpu, got meta"):
        ops.store(matrix, 80, torch.tensor([1]), offsets, torch.tensor([2]), offsets.to("meta"))
    assert not matrix.any()


def test_pattern_names_nest():
    """An inner pattern_names renames its own roles and keeps the outer block's others."""
    with ops.pattern_names(x="x_idx", cue="q"):
        with ops.pattern_names(cue="x_idx"):
            assert (ops.pattern_name("x"), ops.pattern_name("cue"), ops.pattern_name("y")) == ("x_idx", "x_idx", "y")
        assert ops.pattern_name("cue") == "q"
    assert ops.pattern_name("x") == "x"


def test_the_compiled_entry_points_refuse_sizes_past_2_to_the_31():
    """The C++ checks its own sizes too (aefast._C is importable on its own): 32-bit answer units."""
    compiled = _backends.compiled_module()
    if compiled is None:
        pytest.skip("aefast._C is not built")
    wide = np.zeros(2, dtype=np.int64)  # the sizes are checked before the buffer's
    one, pair = np.array([0], dtype=np.int64), np.array([0, 1], dtype=np.int64)
    with pytest.raises(ValueError, match=r"n_in and n_out must be in \[1, 2\^31 - 1\], got 1 and 2147483649"):
        compiled.willshaw_store_cpu(wide, 1, 2**31 + 1, one, pair, np.array([2**31], dtype=np.int64), pair, 1)
    assert not wide.any()


@pytest.mark.parametrize("threshold", [0, 1, 2, 3])
@pytest.mark.parametrize("values,offsets,match", [
    ([1, 2, 3], [0, 2, 5], "offsets must run from 0 to the number of values"),
    ([1, 2, 3], [0, 3, 2, 3], "offsets must"),
    ([1, 2, 3], [-1, 2, 3], "offsets must"),
    ([1, 2, 300], [0, 2, 3], r"cue: row 1: index 300 is outside \[0, 100\)"),
    ([1, -2, 3], [0, 2, 3], r"cue: row 0: index -2 is outside \[0, 100\)"),
    ([4, 9, 9], [0, 1, 3], "cue: row 1 lists index 9 more than once"),
])
def test_direct_retrieve_indices_with_broken_cues_raises(willshaw_backend, threshold, values, offsets, match):
    """The GPU backends' retrieve_indices checks the cue itself, for the hard and soft thresholds after its
    kernels run (the verdict comes with the answer's size): the kernels must read nothing outside the
    tensors, and the error must still come. The fixed and top-k thresholds check it first."""
    matrix = torch.zeros(100, 2, dtype=torch.int64)
    torch.ops.aefast.willshaw_store(matrix, 80, torch.tensor([1, 2, 3, 9]), torch.tensor([0, 3, 4]),
                                    torch.tensor([5, 70, 79]), torch.tensor([0, 2, 3]))
    before = matrix.clone()
    with pytest.raises(ValueError, match=match):
        torch.ops.aefast.willshaw_retrieve_indices(matrix, 80, torch.tensor(values), torch.tensor(offsets),
                                                   threshold, 1 if threshold == 3 else 0)
    assert torch.equal(matrix, before)


def test_direct_retrieve_indices_takes_unsorted_cues(willshaw_backend):
    """Rows that are not increasing fail the one-pass check but are valid: the full check passes them
    and the answer is the sorted cue's."""
    matrix = torch.zeros(100, 2, dtype=torch.int64)
    torch.ops.aefast.willshaw_store(matrix, 80, torch.tensor([1, 2, 3, 9]), torch.tensor([0, 3, 4]),
                                    torch.tensor([5, 70, 79]), torch.tensor([0, 2, 3]))
    for threshold in (0, 1):
        got = torch.ops.aefast.willshaw_retrieve_indices(matrix, 80, torch.tensor([3, 1, 9]), torch.tensor([0, 2, 3]),
                                                         threshold, 0)
        assert [t.tolist() for t in got] == [[5, 70, 79], [0, 2, 3]]  # cue [3, 1] fires 5, 70; cue [9] fires 79


@pytest.mark.parametrize("row_length", [0, 1, 5, 32, 33, 100])
def test_triton_pattern_check_flags_exactly_the_bad_rows(row_length):
    """The Triton check's kernel (the interpreter runs the reference's sort in its place): rows shorter
    and longer than its 32-position tiles, repeats across tiles, positions at and past the bounds."""
    if _backends.can_run("triton", torch.device("cpu")) is not True and not torch.cuda.is_available():
        pytest.skip("triton cannot run here")
    from aefast.willshaw import triton_kernels

    device = "cuda" if torch.cuda.is_available() else "cpu"
    units, generator = 500, torch.Generator().manual_seed(row_length)
    rows = [torch.randperm(units, generator=generator)[:row_length] for _ in range(6)]
    expected = [0] * 6
    if row_length:
        rows[1][-1] = units  # one past the last unit
        rows[2][0] = -1
        rows[4][-1] = rows[4][0]  # a repeat, across tiles when the row is longer than a tile
        expected[1] = expected[2] = 1
        expected[4] = 2 if row_length > 1 else 0
        rows[3][-1] = units - 1 if units - 1 not in rows[3][:-1] else rows[3][-1]  # the last unit is fine
    values = torch.cat(rows).to(device)
    offsets = torch.tensor([0] + [len(r) for r in rows]).cumsum(0).to(device)
    assert triton_kernels.row_flags(values, offsets, units).tolist() == expected


@pytest.mark.parametrize("device, match", [("abacus", "device must name a torch device"), (3.5, "device must name"),
                                           ("cuda", "no CUDA device is available"),
                                           ("meta", "device must be 'cpu' or a CUDA device, got meta")])
def test_bad_devices_are_refused_by_name(device, match):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match=match):
        WillshawMemory(10, device=device)


def test_a_cuda_index_past_the_devices_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device cuda:1 asked for, but this machine has 1 CUDA device"):
        WillshawMemory(10, device="cuda:1")


def test_triton_pattern_check_of_ragged_short_rows_flags_exactly_the_bad_rows():
    """Rows of up to 32 positions go through the kernel that checks several rows per program: ragged
    lengths, empty rows, more rows than one program takes, repeats far apart and side by side."""
    if _backends.can_run("triton", torch.device("cpu")) is not True and not torch.cuda.is_available():
        pytest.skip("triton cannot run here")
    from aefast.willshaw import triton_kernels

    device = "cuda" if torch.cuda.is_available() else "cpu"
    units, generator = 64, torch.Generator().manual_seed(3)
    lengths = [0, 3, 32, 7, 1, 20, 9, 31, 2, 0, 16, 5, 32, 4, 11, 8, 13, 6, 25]
    rows = [torch.randperm(units, generator=generator)[:length] for length in lengths]
    expected = [0] * len(rows)
    for index, length in enumerate(lengths):
        if length >= 2 and index % 3 == 0:
            rows[index][-1] = rows[index][0]
            expected[index] = 2
        elif length >= 2 and index % 6 == 2:  # a repeat at the next position, as in [7, 7]
            rows[index][1] = rows[index][0]
            expected[index] = 2
        elif length and index % 3 == 1:
            rows[index][length // 2] = units if index % 2 else -5
            expected[index] = 1
    values = torch.cat(rows).to(device)
    offsets = torch.tensor([0] + lengths).cumsum(0).to(device)
    assert triton_kernels.row_flags(values, offsets, units).tolist() == expected


VERDICT_CASES = [  # (values, offsets, units): the verdict's edges, then random rows below
    ([], [0], 5), ([], [0, 0, 0], 5), ([1, 2, 3], [0, 3], 5), ([1, 1], [0, 2], 5), ([3, 1], [0, 1, 2], 5),
    ([3, 1], [0, 2], 5), ([0, 4], [0, 2], 5), ([0, 5], [0, 2], 5), ([-1], [0, 1], 5), ([1, 2], [0, 1], 5),
    ([1, 2], [1, 2], 5), ([1, 2], [0, 3], 5), ([1, 2, 3], [0, 2, 1, 3], 5), ([1, 2], [0, 5, 2], 9),
    ([1, 2], [0, -1, 2], 9)]


@pytest.mark.parametrize("case", range(len(VERDICT_CASES) + 60))
def test_triton_pattern_verdict_is_torchs(case):
    """Triton's verdict kernel (one launch) against packed_retrieval.pattern_verdict (torch's ops): the
    offsets' verdict always, the rows' wherever the offsets pass (with bad offsets it means nothing,
    and the caller reports the offsets). Random cases: up to 70 rows of up to 80 positions (more rows
    than a program takes, rows longer than a tile), some with one position or one offset moved."""
    if _backends.can_run("triton", torch.device("cpu")) is not True and not torch.cuda.is_available():
        pytest.skip("triton cannot run here")
    from aefast.willshaw import packed_retrieval, triton_kernels

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if case < len(VERDICT_CASES):
        values, offsets, units = (torch.tensor(v, dtype=torch.int64) if isinstance(v, list) else v
                                  for v in VERDICT_CASES[case])
    else:
        generator, units = torch.Generator().manual_seed(case), 200
        lengths = torch.randint(0, 81, (int(torch.randint(1, 71, (1,), generator=generator)),), generator=generator)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        values = torch.cat([torch.randperm(units, generator=generator)[:length].sort().values for length in lengths])
        if case % 3 == 1 and values.numel():
            values[int(torch.randint(0, values.numel(), (1,), generator=generator))] = int(
                torch.randint(-3, units + 10, (1,), generator=generator))
        if case % 5 == 2:
            offsets[int(torch.randint(0, offsets.numel(), (1,), generator=generator))] += int(
                torch.randint(-3, 4, (1,), generator=generator))
    values, offsets = values.to(device), offsets.to(device)
    got = triton_kernels.pattern_verdict(values, offsets, units).tolist()
    expected = packed_retrieval.pattern_verdict(values, offsets, units).tolist()
    assert got[0] == expected[0]
    if expected[0]:
        assert got[1] == expected[1]


def test_the_gpu_memory_check_counts_the_allocators_unused_cached_blocks(monkeypatch):
    """An allocation that does not fit makes torch's caching allocator free its unused blocks and retry,
    so they are available: free device memory plus reserved minus allocated (real run: test_gpu_backends)."""
    from aefast.willshaw.memory import _available_bytes
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (5 * 2**30, 141 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 40 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 8 * 2**30)
    assert _available_bytes(torch.device("cuda", 0)) == (5 + 40 - 8) * 2**30
