"""The Willshaw custom ops pass torch.library.opcheck (schema, fake implementation, mutation) on
every backend with Willshaw kernels."""
import pytest
import torch

from aefast.willshaw import reference
from tests.willshaw.conftest import random_patterns


@pytest.fixture
def loaded_matrix():
    generator = torch.Generator().manual_seed(13)
    x_idx, y_idx = random_patterns(50, 90, 4, generator), random_patterns(50, 70, 3, generator)
    matrix = torch.zeros(90, 2, dtype=torch.int64)
    offsets = torch.arange(0, 201, 4)
    reference.store(matrix, 70, x_idx.flatten(), offsets, y_idx.flatten(), torch.arange(0, 151, 3))
    return matrix, x_idx[:7, :3].flatten().contiguous(), torch.arange(0, 22, 3)


def test_opcheck_store(willshaw_backend):
    x = torch.tensor([1, 5, 89, 0])
    y = torch.tensor([69, 2, 3])
    args = (torch.zeros(90, 2, dtype=torch.int64), 70, x, torch.tensor([0, 3, 4]), y, torch.tensor([0, 1, 3]))
    torch.library.opcheck(torch.ops.aefast.willshaw_store.default, args)


@pytest.mark.parametrize("threshold,value", [(0, 0), (1, 0), (2, 2), (3, 5)])
def test_opcheck_retrieve(willshaw_backend, loaded_matrix, threshold, value):
    matrix, values, offsets = loaded_matrix
    torch.library.opcheck(torch.ops.aefast.willshaw_retrieve.default, (matrix, 70, values, offsets, threshold, value))


def test_opcheck_sums(willshaw_backend, loaded_matrix):
    matrix, values, offsets = loaded_matrix
    torch.library.opcheck(torch.ops.aefast.willshaw_sums.default, (matrix, 70, values, offsets))


def test_sums_compile_fullgraph(willshaw_backend, loaded_matrix):
    matrix, values, offsets = loaded_matrix

    def fired(matrix, values, offsets):
        return (torch.ops.aefast.willshaw_sums(matrix, 70, values, offsets) >= 2).sum(1)

    compiled = torch.compile(fired, fullgraph=True, backend="eager")
    assert torch.equal(compiled(matrix, values, offsets), fired(matrix, values, offsets))


def test_opcheck_retrieve_indices(willshaw_backend, loaded_matrix):
    matrix, values, offsets = loaded_matrix
    torch.library.opcheck(torch.ops.aefast.willshaw_retrieve_indices.default, (matrix, 70, values, offsets, 1, 0))


def test_the_memorys_calls_skip_the_ops_dispatch_outside_torch_compile(willshaw_backend, loaded_matrix):
    """ops.store, sums, retrieve and retrieve_indices (what WillshawMemory calls) run the ops' checks and
    kernels without the custom op's dispatch in eager mode (a dispatch mode sees no aefast op), and the
    op under torch.compile: fullgraph traces it (it could not trace the compiled module's kernels)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from aefast.willshaw import ops

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    matrix, values, offsets = loaded_matrix
    calls = [(ops.store, (matrix.clone(), 70, values, offsets, values % 70, offsets)),
             (ops.sums, (matrix, 70, values, offsets)), (ops.retrieve, (matrix, 70, values, offsets, 1, 0)),
             (ops.retrieve_indices, (matrix, 70, values, offsets, 0, 0))]
    for call, args in calls:
        with Calls() as seen:
            call(*args)
        assert not [name for name in seen.names if name.startswith("aefast.")], call
    with Calls() as seen:  # the mode does see the op where it is called
        torch.ops.aefast.willshaw_sums(matrix, 70, values, offsets)
    assert "aefast.willshaw_sums.default" in seen.names
    compiled = torch.compile(lambda *args: ops.sums(*args) >= 2, fullgraph=True, backend="eager")
    assert torch.equal(compiled(matrix, 70, values, offsets), ops.sums(matrix, 70, values, offsets) >= 2)
