"""Property tests of WillshawMemory: any sizes (1, and ones that are not multiples of 64), ragged
patterns with 0 to many ones, every threshold; every backend equals the reference backend (matrix,
sums, answers), and bad patterns get the same error from every backend and change nothing."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import aefast
from aefast import _backends
from aefast.willshaw import WillshawMemory, ops
from tests.conftest import backends_with_kernels

sizes = st.integers(1, 200)


@st.composite
def ragged_rows(draw, n: int, max_rows: int = 30) -> list[list[int]]:
    """Rows of distinct positions in [0, n), 0 to min(n, 20) of them each."""
    count = draw(st.integers(0, max_rows))
    return [sorted(draw(st.sets(st.integers(0, n - 1), max_size=min(n, 20)))) for _ in range(count)]


def as_tensors(rows: list[list[int]]) -> list[torch.Tensor]:
    return [torch.tensor(row, dtype=torch.int64) for row in rows]


@st.composite
def memory_cases(draw):
    n_in, n_out = draw(sizes), draw(st.one_of(st.none(), sizes))
    width_out = n_in if n_out is None else n_out
    x = draw(ragged_rows(n_in))
    y = None if n_out is None else [sorted(draw(st.sets(st.integers(0, n_out - 1), max_size=min(n_out, 20))))
                                    for _ in x]
    cues = draw(ragged_rows(n_in, max_rows=12))
    threshold = draw(st.one_of(st.sampled_from(["hard", "soft"]), st.integers(0, 6), st.just("topk")))
    k = draw(st.integers(1, width_out)) if threshold == "topk" else None
    return n_in, n_out, x, y, cues, threshold, k


def build(backend: str, n_in, n_out, x, y) -> WillshawMemory:
    memory = WillshawMemory(n_in, n_out, backend=backend)
    if x:
        memory.store_indices(as_tensors(x), None if y is None else as_tensors(y))
    return memory


@given(case=memory_cases())
def test_every_backend_equals_the_reference(willshaw_backend, case):
    if willshaw_backend == "reference":
        pytest.skip("the reference is the oracle")
    n_in, n_out, x, y, cues, threshold, k = case
    memory, oracle = build(willshaw_backend, n_in, n_out, x, y), build("reference", n_in, n_out, x, y)
    assert torch.equal(memory.packed_matrix(), oracle.packed_matrix())
    assert memory.density == oracle.density and memory.n_stored == oracle.n_stored == len(x)
    if not cues:
        return
    cue_rows = as_tensors(cues)
    assert torch.equal(memory.sums_indices(cue_rows), oracle.sums_indices(cue_rows))
    answers = memory.retrieve_indices(cue_rows, threshold, k=k)
    for got, want in zip(answers, oracle.retrieve_indices(cue_rows, threshold, k=k)):
        assert torch.equal(got, want)
    dense_cues = torch.zeros(len(cues), n_in, dtype=torch.bool)
    for row, positions in enumerate(cues):
        dense_cues[row, positions] = True
    assert torch.equal(memory.retrieve(dense_cues, threshold, k=k), oracle.retrieve(dense_cues, threshold, k=k))


@given(n=sizes, good=ragged_rows(200, max_rows=5), bad_row=st.integers(0, 5),
       bad=st.one_of(st.integers(-2**40, -1), st.integers(200, 2**40), st.just("repeat")))
def test_bad_patterns_get_the_same_error_from_every_backend_and_change_nothing(n, good, bad_row, bad):
    rows = [[value % n for value in row] for row in good] + [[0]]
    rows = [sorted(set(row)) for row in rows]
    row = rows[bad_row % len(rows)]
    row.append(row[0] if bad == "repeat" and row else (n + 5 if bad == "repeat" else bad))
    messages = set()
    for backend in backends_with_kernels(ops.STORE):
        if _backends.can_run(backend, torch.device("cpu")) is not True:
            continue
        with aefast.use_backend(backend):
            memory = WillshawMemory(n)
            memory.store_indices([torch.tensor([0])])
            before = memory.packed_matrix()
            with pytest.raises(ValueError, match="x_idx") as error:
                memory.store_indices(as_tensors(rows))
            messages.add(str(error.value))
            assert torch.equal(memory.packed_matrix(), before) and memory.n_stored == 1
            with pytest.raises(ValueError, match="x_idx"):
                memory.retrieve_indices(as_tensors(rows))
    assert len(messages) == 1, messages


@given(n=sizes, threshold=st.one_of(st.text(max_size=6), st.integers(-5, -1), st.floats()))
def test_bad_thresholds_are_refused(n, threshold):
    if threshold in ("hard", "soft", "topk"):
        return
    memory = WillshawMemory(n)
    with pytest.raises((ValueError, TypeError), match="threshold"):
        memory.retrieve_indices([torch.tensor([0])], threshold)


@given(n=st.integers(20, 10**6), M=st.integers(1, 19), budget=st.floats(1e-3, 10.0))
def test_theory_capacity_meets_its_false_ones_budget(n, M, budget):
    """The budgeted capacity is where the textbook false ones reach the budget: at it they equal the
    budget, below it they stay under (false ones grow with the load)."""
    from aefast.willshaw import theory
    if M >= n / 2:
        return
    L = theory.capacity(n, M, false_ones_budget=budget)
    if theory.memory_load(n, n, M, M, L) >= 1 - 1e-12:  # the budget is beyond a saturated memory
        return
    assert theory.false_ones(n, M, L) == pytest.approx(budget, rel=1e-6)
    assert theory.false_ones(n, M, L * 0.9) < budget
    exact = theory.false_ones(n, M, max(round(L), 1), form="exact")
    assert 0 <= exact <= n - M
