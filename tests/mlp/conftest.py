"""The backends with fused-MLP kernels that run here (triton in its CPU interpreter without a GPU)."""
import pytest

from aefast.mlp import ops
from tests.conftest import backends_with_kernels, force_cpu_backend


@pytest.fixture(params=backends_with_kernels(ops.FORWARD))
def mlp_backend(request):
    with force_cpu_backend(request.param):
        yield request.param


@pytest.fixture
def triton_kernels():
    """The Triton backend forced (in the interpreter here), and its module."""
    with force_cpu_backend("triton"):
        from aefast.mlp import triton_kernels
        yield triton_kernels


class CountedLaunches:
    """A Triton kernel that counts its launches and runs them."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def count_launches(monkeypatch, module, *names: str) -> dict:
    """{name: CountedLaunches} standing in for each of ``module``'s kernels ``names`` for the test."""
    counted = {name: CountedLaunches(getattr(module, name)) for name in names}
    for name, kernel in counted.items():
        monkeypatch.setattr(module, name, kernel)
    return counted
