"""The backends with fused-MLP kernels that run here (triton in its CPU interpreter without a GPU)."""
import pytest
import torch

import aefast
from aefast import _backends
from aefast.mlp import ops

MLP_BACKENDS = [name for name in _backends.BACKEND_NAMES if _backends.has_kernel(ops.FORWARD, name)]


@pytest.fixture(params=MLP_BACKENDS)
def mlp_backend(request):
    why = _backends.can_run(request.param, torch.device("cpu"))
    if why is not True:
        pytest.skip(f"{request.param}: {why}")
    with aefast.use_backend(request.param):
        yield request.param
