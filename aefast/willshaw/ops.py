"""torch.library custom ops of the Willshaw memory, their fake (meta) implementations, and the
registration of every backend's kernels.

Every op takes the packed matrix (int64, n_in x ceil(n_out / 64), see reference.py) and patterns as
rows of active positions (int64 ``values`` and ``offsets``). The ops check the patterns (offsets, range,
repeats), since torch.ops.aefast.* is reachable directly; WillshawMemory converts the user's patterns
and leaves the check to the op, naming its arguments with ``pattern_names`` so that the error names
what the user passed. One check, not two: on a GPU each is a wait for the device. WillshawMemory calls
``store``, ``sums``, ``retrieve`` and ``retrieve_indices``: the ops under torch.compile, and the same
checks and kernels without the ops' dispatch elsewhere.
A GPU backend joins by registering its kernels here (``_backends.register_kernel``), not by changing
the class.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import torch
from torch import Tensor

from aefast import _backends
from aefast._buffers import cpu_buffer, empty_on_huge_pages
from aefast._checks import one_device
from aefast.willshaw import reference

STORE, SUMS, RETRIEVE, RETRIEVE_INDICES = "willshaw_store", "willshaw_sums", "willshaw_retrieve", "willshaw_retrieve_indices"
CHECK_PATTERNS, COUNT_ONES, DENSE_TO_ROWS = "willshaw_check_patterns", "willshaw_count_ones", "willshaw_dense_to_rows"


def _store(matrix: Tensor, n_out: int, x_values: Tensor, x_offsets: Tensor, y_values: Tensor,
           y_offsets: Tensor) -> None:
    _check_matrix(matrix, n_out)
    _check_rows(matrix, x_values, x_offsets, "x")
    _check_rows(matrix, y_values, y_offsets, "y")
    if x_offsets.numel() != y_offsets.numel():
        raise ValueError(f"x and y must hold the same number of patterns, got {x_offsets.numel() - 1} and "
                         f"{y_offsets.numel() - 1}")
    _, kernel = _backends.select(STORE, matrix.device)
    kernel(matrix, n_out, x_values, x_offsets, y_values, y_offsets)


@torch.library.custom_op("aefast::willshaw_store", mutates_args=("matrix",))
def willshaw_store_op(matrix: Tensor, n_out: int, x_values: Tensor, x_offsets: Tensor, y_values: Tensor,
                      y_offsets: Tensor) -> None:
    _store(matrix, n_out, x_values, x_offsets, y_values, y_offsets)


@willshaw_store_op.register_fake
@one_device
def _(matrix, n_out, x_values, x_offsets, y_values, y_offsets):
    return None


def _sums(matrix: Tensor, n_out: int, cue_values: Tensor, cue_offsets: Tensor) -> Tensor:
    _check_matrix(matrix, n_out)
    _check_rows(matrix, cue_values, cue_offsets, "cue")
    _, kernel = _backends.select(SUMS, matrix.device)
    return kernel(matrix, n_out, cue_values, cue_offsets)


@torch.library.custom_op("aefast::willshaw_sums", mutates_args=())
def willshaw_sums_op(matrix: Tensor, n_out: int, cue_values: Tensor, cue_offsets: Tensor) -> Tensor:
    return _sums(matrix, n_out, cue_values, cue_offsets)


@willshaw_sums_op.register_fake
@one_device
def _(matrix, n_out, cue_values, cue_offsets):
    return matrix.new_empty((cue_offsets.shape[0] - 1, n_out), dtype=torch.int32)


@torch.library.custom_op("aefast::willshaw_retrieve", mutates_args=())
def willshaw_retrieve_op(matrix: Tensor, n_out: int, cue_values: Tensor, cue_offsets: Tensor, threshold: int,
                         value: int) -> Tensor:
    return _run_retrieval(RETRIEVE, matrix, n_out, cue_values, cue_offsets, threshold, value)


@willshaw_retrieve_op.register_fake
@one_device
def _(matrix, n_out, cue_values, cue_offsets, threshold, value):
    return matrix.new_empty((cue_offsets.shape[0] - 1, n_out), dtype=torch.bool)


@torch.library.custom_op("aefast::willshaw_retrieve_indices", mutates_args=())
def willshaw_retrieve_indices_op(matrix: Tensor, n_out: int, cue_values: Tensor, cue_offsets: Tensor,
                                 threshold: int, value: int) -> tuple[Tensor, Tensor]:
    """The answer as rows of active positions: (values, offsets)."""
    return _run_retrieval(RETRIEVE_INDICES, matrix, n_out, cue_values, cue_offsets, threshold, value)


@willshaw_retrieve_indices_op.register_fake
@one_device
def _(matrix, n_out, cue_values, cue_offsets, threshold, value):
    count = torch.library.get_ctx().new_dynamic_size()
    return matrix.new_empty((count,), dtype=torch.int64), cue_offsets.new_empty(cue_offsets.shape)


def _run_retrieval(op, matrix, n_out, cue_values, cue_offsets, threshold, value):
    _check_matrix(matrix, n_out)
    _check_rows(matrix, cue_values, cue_offsets, "cue")
    _check_threshold(threshold, value, n_out)
    _, kernel = _backends.select(op, matrix.device)
    return kernel(matrix, n_out, cue_values, cue_offsets, threshold, value)


def _op_when_compiling(op, implementation):
    """``op`` under torch.compile, which traces it; elsewhere its ``implementation`` (the same checks
    and kernels) called directly, without the custom op's dispatch: 10 of a one-cue retrieval's 28 us
    on the CI machine, time during which a GPU waits for the call's first launch."""
    def call(*args):
        if torch.compiler.is_compiling():
            return op(*args)
        return implementation(*args)
    return call


# What WillshawMemory calls.
store = _op_when_compiling(willshaw_store_op, _store)
sums = _op_when_compiling(willshaw_sums_op, _sums)
retrieve = _op_when_compiling(willshaw_retrieve_op, functools.partial(_run_retrieval, RETRIEVE))
retrieve_indices = _op_when_compiling(willshaw_retrieve_indices_op, functools.partial(_run_retrieval, RETRIEVE_INDICES))


_PATTERN_NAMES: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("aefast_willshaw_pattern_names",
                                                                                  default={})


@contextlib.contextmanager
def pattern_names(**names: str):
    """Inside, the ops' pattern errors name the caller's arguments: ``pattern_names(cue="x_idx")`` makes
    a bad cue's error start with ``x_idx:``. Per thread (a context variable)."""
    token = _PATTERN_NAMES.set({**_PATTERN_NAMES.get(), **names})
    try:
        yield
    finally:
        _PATTERN_NAMES.reset(token)


def pattern_name(role: str) -> str:
    """What the ops call the patterns of ``role`` ("x", "y" or "cue") in their errors."""
    return _PATTERN_NAMES.get().get(role, role)


def check_patterns(values: Tensor, offsets: Tensor, units: int, name: str) -> None:
    """ValueError naming ``name`` for an index outside [0, units) or listed twice in one row."""
    _, kernel = _backends.select(CHECK_PATTERNS, values.device)
    kernel(values, offsets, units, name)


def dense_to_rows(dense: Tensor) -> tuple[Tensor, Tensor]:
    """The active positions of each row of a (rows, n) bool tensor: (values, offsets)."""
    _, kernel = _backends.select(DENSE_TO_ROWS, dense.device)
    return kernel(dense)


def count_ones(matrix: Tensor) -> int:
    _, kernel = _backends.select(COUNT_ONES, matrix.device)
    return kernel(matrix)


def _check_matrix(matrix: Tensor, n_out: int) -> None:
    if matrix.dtype != torch.int64 or matrix.dim() != 2 or not matrix.is_contiguous():
        raise ValueError(f"matrix must be a contiguous 2-D int64 tensor, got {tuple(matrix.shape)} {matrix.dtype}")
    if not 1 <= n_out <= reference.MAX_UNITS:
        raise ValueError(f"n_out must be in [1, {reference.MAX_UNITS}], got {n_out}")
    # At least one row, as WillshawMemory's n_in: the C++ kernels refuse an empty matrix, so without this
    # check the backends would disagree on it.
    if not 1 <= matrix.shape[0] <= reference.MAX_UNITS:
        raise ValueError(f"matrix must have 1 to {reference.MAX_UNITS} rows (input units), got {matrix.shape[0]}")
    if matrix.shape[1] != reference.words_per_row(n_out):
        raise ValueError(f"matrix must have ceil(n_out / 64) = {reference.words_per_row(n_out)} words per "
                         f"row for n_out={n_out}, got {matrix.shape[1]}")


def _check_rows(matrix: Tensor, values: Tensor, offsets: Tensor, name: str) -> None:
    for what, tensor in ((f"{name}_values", values), (f"{name}_offsets", offsets)):
        if tensor.dtype != torch.int64 or tensor.dim() != 1 or not tensor.is_contiguous():
            raise ValueError(f"{what} must be a contiguous 1-D int64 tensor, got {tuple(tensor.shape)} {tensor.dtype}")
        if tensor.device != matrix.device:
            raise ValueError(f"{what} must be on the matrix's device {matrix.device}, got {tensor.device}")
    if offsets.numel() < 1:
        raise ValueError(f"{name}_offsets must hold rows + 1 entries, got none")


def _check_threshold(threshold: int, value: int, n_out: int) -> None:
    if threshold not in (reference.HARD, reference.SOFT, reference.FIXED, reference.TOPK):
        raise ValueError(f"threshold must be 0 (hard), 1 (soft), 2 (fixed) or 3 (topk), got {threshold}")
    if threshold == reference.FIXED and value < 0:
        raise ValueError(f"a fixed threshold must be >= 0, got {value}")
    if threshold == reference.TOPK and not 1 <= value <= n_out:
        raise ValueError(f"k must be in [1, n_out={n_out}], got {value}")


# --- every backend's kernels run behind the full pattern check (the cpp kernels check range and offsets
# again themselves, a cheap guard for their pointers) ------------------------------------------------------

def _checked_store(kernel, check):
    def run(matrix, n_out, x_values, x_offsets, y_values, y_offsets):
        check(x_values, x_offsets, matrix.shape[0], pattern_name("x"))
        check(y_values, y_offsets, n_out, pattern_name("y"))
        kernel(matrix, n_out, x_values, x_offsets, y_values, y_offsets)
    return run


def _checked_query(kernel, check):
    def run(matrix, n_out, cue_values, cue_offsets, *args):
        check(cue_values, cue_offsets, matrix.shape[0], pattern_name("cue"))
        return kernel(matrix, n_out, cue_values, cue_offsets, *args)
    return run


# --- cpp kernels: numpy views of the CPU tensors, the GIL released inside ---------------------------

def _cpp_store(matrix, n_out, x_values, x_offsets, y_values, y_offsets):
    _backends.compiled_module().willshaw_store_cpu(
        cpu_buffer(matrix), matrix.shape[0], n_out, cpu_buffer(x_values), cpu_buffer(x_offsets),
        cpu_buffer(y_values), cpu_buffer(y_offsets), x_offsets.numel() - 1)


def _cpp_sums(matrix, n_out, cue_values, cue_offsets):
    out = empty_on_huge_pages(cue_offsets.numel() - 1, n_out, dtype=torch.int32, device=matrix.device)
    _backends.compiled_module().willshaw_sums_cpu(
        cpu_buffer(matrix), matrix.shape[0], n_out, cpu_buffer(cue_values), cpu_buffer(cue_offsets),
        cue_offsets.numel() - 1, cpu_buffer(out))
    return out


def _cpp_retrieve(matrix, n_out, cue_values, cue_offsets, threshold, value):
    answer = empty_on_huge_pages(cue_offsets.numel() - 1, n_out, dtype=torch.bool, device=matrix.device)
    _backends.compiled_module().willshaw_retrieve_cpu(
        cpu_buffer(matrix), matrix.shape[0], n_out, cpu_buffer(cue_values), cpu_buffer(cue_offsets),
        cue_offsets.numel() - 1, threshold, value, cpu_buffer(answer))
    return answer


def _cpp_retrieve_indices(matrix, n_out, cue_values, cue_offsets, threshold, value):
    values, offsets = _backends.compiled_module().willshaw_retrieve_indices_cpu(
        cpu_buffer(matrix), matrix.shape[0], n_out, cpu_buffer(cue_values), cpu_buffer(cue_offsets),
        cue_offsets.numel() - 1, threshold, value)
    return torch.from_numpy(values), torch.from_numpy(offsets)


def _cpp_check_patterns(values, offsets, units, name):
    _backends.compiled_module().willshaw_check_patterns(
        cpu_buffer(values), cpu_buffer(offsets), offsets.numel() - 1, units, name)


def _cpp_dense_to_rows(dense):
    values, offsets = _backends.compiled_module().willshaw_dense_to_rows(cpu_buffer(dense.view(torch.uint8)), *dense.shape)
    return torch.from_numpy(values), torch.from_numpy(offsets)


def _cpp_count_ones(matrix):
    return _backends.compiled_module().willshaw_count_ones_cpu(cpu_buffer(matrix), matrix.numel())


def _triton(name):
    return _backends.lazy_kernel("aefast.willshaw.triton_kernels", name)


def _cuda(name):
    return _backends.lazy_kernel("aefast.willshaw.cuda_kernels", name)


_triton_check, _cuda_check = _triton("check_patterns"), _cuda("check_patterns")
for _op, _reference_kernel, _cpp_kernel, _triton_kernel, _cuda_kernel in (
    (STORE, _checked_store(reference.store, reference.check_patterns), _checked_store(_cpp_store, _cpp_check_patterns),
     _checked_store(_triton("store"), _triton_check), _checked_store(_cuda("store"), _cuda_check)),
    (SUMS, _checked_query(reference.sums, reference.check_patterns), _checked_query(_cpp_sums, _cpp_check_patterns),
     _checked_query(_triton("sums"), _triton_check), _checked_query(_cuda("sums"), _cuda_check)),
    (RETRIEVE, _checked_query(reference.retrieve, reference.check_patterns),
     _checked_query(_cpp_retrieve, _cpp_check_patterns), _checked_query(_triton("retrieve"), _triton_check),
     _checked_query(_cuda("retrieve"), _cuda_check)),
    # The GPU backends check the cue themselves (named by pattern_name), in the same wait as the answer's size.
    (RETRIEVE_INDICES, _checked_query(reference.retrieve_indices, reference.check_patterns),
     _checked_query(_cpp_retrieve_indices, _cpp_check_patterns), _triton("retrieve_indices"),
     _cuda("retrieve_indices")),
    (CHECK_PATTERNS, reference.check_patterns, _cpp_check_patterns, _triton_check, _cuda_check),
    (COUNT_ONES, reference.count_ones, _cpp_count_ones, _triton("count_ones"), _cuda("count_ones")),
    # Plain torch on any device: the GPU backends run the reference's.
    (DENSE_TO_ROWS, reference.dense_to_rows, _cpp_dense_to_rows, reference.dense_to_rows, reference.dense_to_rows),
):
    _backends.register_kernel(_op, "reference", _reference_kernel)
    _backends.register_kernel(_op, "cpp", _cpp_kernel)
    _backends.register_kernel(_op, "triton", _triton_kernel)
    _backends.register_kernel(_op, "cuda", _cuda_kernel)
