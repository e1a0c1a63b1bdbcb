"""Fixtures of the Willshaw tests: the backends that have Willshaw kernels, and random sparse patterns."""
import pytest
import torch

from aefast.willshaw import ops
from tests.conftest import backends_with_kernels, force_cpu_backend


@pytest.fixture(params=backends_with_kernels(ops.STORE))
def willshaw_backend(request):
    """Each backend with Willshaw kernels that runs on the CPU here, forced inside the test."""
    with force_cpu_backend(request.param):
        yield request.param


def random_patterns(count: int, n: int, ones: int, generator: torch.Generator) -> torch.Tensor:
    """(count, ones) distinct random positions per row, sorted."""
    return torch.rand(count, n, generator=generator).topk(ones, dim=1).indices.sort(1).values


def dense_from_indices(indices: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(indices.shape[0], n, dtype=torch.bool)
    out[torch.arange(indices.shape[0]).unsqueeze(1), indices] = True
    return out


def hebb_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The seeds' rule written out: w_ij = 1 when some stored pair has y_i x_j = 1, (n_out, n_in) bool."""
    return (y.T.double() @ x.double()) > 0
