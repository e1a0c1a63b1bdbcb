"""The backends with fused-MLP kernels that run here (triton in its CPU interpreter without a GPU)."""
import pytest

from aefast.mlp import ops
from tests.conftest import backends_with_kernels, force_cpu_backend


@pytest.fixture(params=backends_with_kernels(ops.FORWARD))
def mlp_backend(request):
    with force_cpu_backend(request.param):
        yield request.param
