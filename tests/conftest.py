"""Test set-up: the Triton interpreter when no GPU is present, a fixture over the backends that can
run here, a ``gpu`` marker that skips cleanly, a seed fixture, and ``--skip-backend`` to leave out a
backend's cases."""
import os

import torch

# Before anything imports triton: without a GPU, Triton kernels run in its CPU interpreter.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# The tests' child processes (torchrun workers, the CLI, scripts run from elsewhere) import this
# checkout's aefast, as the tests do, whether or not it is installed.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])

import dataclasses  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import aefast  # noqa: E402
from aefast import _backends  # noqa: E402
from tests.interpreter_patches import reduce_bitwise_and_with_numpy, round_bfloat16_to_nearest  # noqa: E402

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    # Kernels in the interpreter round as the GPU does, and reduce bits faster (tests/interpreter_patches.py).
    round_bfloat16_to_nearest()
    reduce_bitwise_and_with_numpy()

# Property tests (test_properties.py in each component): the same examples on every run, so that CI
# is repeatable; HYPOTHESIS_PROFILE=explore draws new ones, and more of them, when hunting for bugs.
# The backend fixtures only force a backend, so they may span a test's examples.
settings.register_profile("ci", deadline=None, derandomize=True, max_examples=25, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("explore", parent=settings.get_profile("ci"), derandomize=False, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    device: torch.device


def _backend_params():
    params = []
    for name in _backends.BACKEND_NAMES:
        on_gpu = name == "cuda" or (name == "triton" and HAS_GPU)
        marks = [pytest.mark.gpu] if on_gpu else []
        params.append(pytest.param(Backend(name, torch.device("cuda" if on_gpu else "cpu")), id=name, marks=marks))
    return params


@pytest.fixture(params=_backend_params())
def backend(request):
    """Each backend that can run here, forced for the duration of the test."""
    chosen = request.param
    why = _backends.can_run(chosen.name, chosen.device)
    if why is not True:
        pytest.skip(f"{chosen.name}: {why}")
    with aefast.use_backend(chosen.name):
        yield chosen


def backends_with_kernels(op: str) -> list[str]:
    """The backends that registered a kernel for ``op``, for a component's ``*_backend`` fixture."""
    return [name for name in _backends.BACKEND_NAMES if _backends.has_kernel(op, name)]


def force_cpu_backend(name: str):
    """Force backend ``name`` for a test on the CPU, or skip the test saying why it cannot run here."""
    why = _backends.can_run(name, torch.device("cpu"))
    if why is not True:
        pytest.skip(f"{name}: {why}")
    return aefast.use_backend(name)


@pytest.fixture
def seed():
    """A fixed seed, also applied to torch's generator so that random inputs repeat."""
    torch.manual_seed(20261122)
    return 20261122


def pytest_addoption(parser):
    parser.addoption("--skip-backend", action="append", default=[], choices=_backends.BACKEND_NAMES,
                     help="leave out the cases that a backend fixture runs on this backend (repeatable); "
                          "scripts/sanitize.sh leaves out the reference, whose plain torch reaches no C++ of ours")


def _forced_backend(item) -> str | None:
    """The backend a case's backend fixture forces (backend, mlp_backend, willshaw_backend...), if any."""
    params = item.callspec.params if hasattr(item, "callspec") else {}
    for name, value in params.items():
        if name.endswith("backend"):
            return value.name if isinstance(value, Backend) else value
    return None


def pytest_collection_modifyitems(config, items):
    skipped_backends = set(config.getoption("--skip-backend"))
    if skipped_backends:
        kept, left_out = [], []
        for item in items:
            (left_out if _forced_backend(item) in skipped_backends else kept).append(item)
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept
    if HAS_GPU:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def aefast_ops_run_by(function) -> set[str]:
    """The names of the aefast ops that running ``function()`` runs: those dispatched as
    torch.ops.aefast.*, and the MLP's and the VAE's, which outside torch.compile skip the dispatch
    (their autograd.Functions) but pick their kernel by op name (``ops._kernel``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from aefast.mlp import ops as mlp_ops
    from aefast.vae import ops as vae_ops

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "aefast":
                names.add(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    def recording(module):
        select_kernel = module._kernel

        def kernel(op, where):
            names.add(op)
            return select_kernel(op, where)
        return kernel
    names = set()
    modules = (mlp_ops, vae_ops)
    kernels = [module._kernel for module in modules]
    try:
        for module in modules:
            module._kernel = recording(module)
        with Recorder():
            function()
    finally:
        for module, kernel in zip(modules, kernels):
            module._kernel = kernel
    return names
