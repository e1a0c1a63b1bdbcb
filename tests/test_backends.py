"""The backend registry: what is reported, what is forced, and how a fallback behaves."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

import aefast
from aefast import _backends


def test_available_backends_reports_every_backend_with_a_reason():
    status = aefast.available_backends()
    assert set(status) == set(_backends.BACKEND_NAMES)
    assert status["reference"] is True
    for name, value in status.items():
        assert value is True or (isinstance(value, str) and value), name


def test_cpp_backend_is_built_for_the_test_suite():
    # CI installs the extension; a missing build must fail here, not skip every cpp test.
    assert aefast.available_backends()["cpp"] is True


def test_use_backend_forces_and_restores():
    assert _backends.requested_backend() in _backends.BACKEND_NAMES + ("auto",)
    before = _backends.requested_backend()
    with aefast.use_backend("reference"):
        assert _backends.requested_backend() == "reference"
        assert _backends.select("reparameterize_kl", torch.device("cpu"))[0] == "reference"
    assert _backends.requested_backend() == before


def test_use_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        with aefast.use_backend("fortran"):
            pass


def test_forced_backend_that_cannot_run_raises_with_reason():
    with aefast.use_backend("cuda"):
        if torch.cuda.is_available() and aefast.available_backends()["cuda"] is True:
            pytest.skip("cuda can run here")
        with pytest.raises(aefast.BackendUnavailableError, match="backend 'cuda' cannot run reparameterize_kl"):
            aefast.reparameterize_kl(torch.zeros(2, 3), torch.zeros(2, 3), seed=1)


def test_cpp_refuses_cuda_tensors_by_reason():
    assert "CPU tensors only" in _backends.can_run("cpp", torch.device("cuda"))


def test_env_var_selects_backend(monkeypatch):
    monkeypatch.setenv("AEFAST_BACKEND", "reference")
    assert _backends.select("reparameterize_kl", torch.device("cpu"))[0] == "reference"
    monkeypatch.setenv("AEFAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="AEFAST_BACKEND must be one of"):
        _backends.select("reparameterize_kl", torch.device("cpu"))


def test_auto_picks_cpp_on_cpu(monkeypatch):
    monkeypatch.delenv("AEFAST_BACKEND", raising=False)
    assert _backends.select("reparameterize_kl", torch.device("cpu"))[0] == "cpp"


def test_auto_fallback_warns_once(monkeypatch):
    monkeypatch.delenv("AEFAST_BACKEND", raising=False)
    monkeypatch.setitem(_backends.AUTO_ORDER, ("reparameterize_kl", "cpu"), ("cuda", "reference"))
    monkeypatch.setattr(_backends, "_warned_fallbacks", set())
    with pytest.warns(RuntimeWarning, match="falls back to the reference backend"):
        assert _backends.select("reparameterize_kl", torch.device("cpu"))[0] == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backends.select("reparameterize_kl", torch.device("cpu"))[0] == "reference"


def test_triton_needs_interpreter_for_cpu_tensors():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import torch, aefast._backends as b; print(b.can_run('triton', torch.device('cpu')))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "TRITON_INTERPRET=1" in out.stdout


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_kernels_run_on_their_tensors_device_not_the_current_one(backend):
    """With cuda:0 current and every tensor on cuda:1, the kernels give what the reference gives on the
    CPU: Triton launches on the current device unless _backends.lazy_kernel sets it."""
    from aefast import WillshawMemory
    from aefast.nn import FusedLinear

    torch.manual_seed(3)
    layer, x = FusedLinear(33, 17, activation="tanh"), torch.randn(9, 33)
    mu, logvar = torch.randn(7, 5), torch.randn(7, 5)
    cues = (torch.rand(12, 300) < 0.02).to(torch.uint8)
    memory = WillshawMemory(300)
    memory.store(cues, cues)
    expected = (layer(x), aefast.reparameterize_kl(mu, logvar, seed=4), memory.retrieve(cues))
    with torch.cuda.device(0), aefast.use_backend(backend):
        other = WillshawMemory(300, device="cuda:1")
        other.store(cues.to("cuda:1"), cues.to("cuda:1"))
        got = ((layer.to("cuda:1")(x.to("cuda:1")) if backend == "triton" else None),  # (no CUDA MLP kernels)
               aefast.reparameterize_kl(mu.to("cuda:1"), logvar.to("cuda:1"), seed=4),
               other.retrieve(cues.to("cuda:1")))
    if got[0] is not None:
        torch.testing.assert_close(got[0].cpu(), expected[0], atol=1e-4, rtol=1e-4)  # TF32 dots on the GPU
    for got_part, expected_part in zip(got[1], expected[1]):
        torch.testing.assert_close(got_part.cpu(), expected_part, atol=2e-6, rtol=2e-6)
    assert torch.equal(got[2].cpu(), expected[2])


def test_a_launch_switches_to_its_tensors_gpu_only_where_it_is_not_the_current_one(monkeypatch):
    """lazy_kernel and on_device_of enter torch.cuda.device(d) exactly where the tensors' CUDA device d
    is not the current one, on the CPU with the devices faked (the test above needs two GPUs)."""
    entered = []

    class Device:  # stands for torch.cuda.device: records which device each launch switched to
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", Device)
    for device, switched in ((None, False), (torch.device("cpu"), False), (torch.device("cuda", 0), False),
                             (torch.device("cuda", 1), True)):
        entered.clear()
        monkeypatch.setattr(_backends, "_cuda_device_of", lambda args: device)
        monkeypatch.setitem(sys.modules, "_launch_target", type(sys)("_launch_target"))
        sys.modules["_launch_target"].launch = lambda *args: ("launched", args)
        assert _backends.lazy_kernel("_launch_target", "launch")(1, 2) == ("launched", (1, 2))
        assert entered == ([device] if switched else [])
        if device is not None:
            tensor = type("Placed", (), {"device": device})()  # a tensor's device alone
            entered.clear()
            with _backends.on_device_of(tensor):
                pass
            assert entered == ([device] if switched else [])


def test_register_kernel_refuses_an_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of .*, got 'fortran'"):
        _backends.register_kernel("reparameterize_kl", "fortran", lambda *args: None)
    assert not _backends.has_kernel("reparameterize_kl", "fortran")


class _Compiled:
    """A stand-in for aefast._C, built with or without CUDA."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def build_info(self):
        return {"cuda": self.cuda}


@pytest.fixture
def world(monkeypatch):
    """Sets what the backends' status depends on: whether aefast._C imports (and was built with CUDA),
    whether a CUDA device is available, and TRITON_INTERPRET; the statuses are cached, so the cache is
    cleared before and after."""
    def set_world(compiled, gpu: bool, interpret: str | None):
        monkeypatch.setattr(_backends, "_import_compiled", lambda: compiled)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
        if interpret is None:
            monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        else:
            monkeypatch.setenv("TRITON_INTERPRET", interpret)
        _backends._backend_status.cache_clear()
    yield set_world
    _backends._backend_status.cache_clear()


NOT_BUILT = (None, "aefast._C is not built (no module); reinstall with `pip install -e .`")


@pytest.mark.parametrize("compiled,gpu,interpret,expected", [
    (NOT_BUILT, False, None, {"cpp": NOT_BUILT[1], "cuda": NOT_BUILT[1],
                              "triton": "no CUDA device, and TRITON_INTERPRET=1 is not set for the CPU interpreter"}),
    ((_Compiled(cuda=False), None), True, "0", {"cpp": True, "triton": True, "cuda": (
        "aefast._C was built without CUDA (no CUDA toolkit at build time, or AEFAST_CUDA=0)")}),
    ((_Compiled(cuda=True), None), False, "1", {"cpp": True, "triton": True, "cuda": "no CUDA device is available"}),
    ((_Compiled(cuda=True), None), True, None, {"cpp": True, "triton": True, "cuda": True}),
])
def test_each_backend_says_why_it_is_unavailable(world, compiled, gpu, interpret, expected):
    world(compiled, gpu, interpret)
    assert aefast.available_backends() == {"reference": True, **expected}


def test_can_run_names_the_device_a_backend_cannot_take(world):
    world((_Compiled(cuda=True), None), gpu=True, interpret=None)
    cpu, cuda, meta = torch.device("cpu"), torch.device("cuda", 0), torch.device("meta")
    assert _backends.can_run("cuda", cpu) == "cuda runs CUDA tensors only, got a tensor on cpu"
    assert _backends.can_run("cuda", cuda) is True and _backends.can_run("triton", cuda) is True
    # With a GPU but no interpreter, Triton compiles for the GPU: CPU tensors are not for it.
    assert _backends.can_run("triton", cpu) == "triton runs CPU tensors only under TRITON_INTERPRET=1"
    assert _backends.can_run("triton", meta) == "triton runs CUDA tensors, got a tensor on meta"
    assert _backends.can_run("reference", meta) is True


@pytest.mark.parametrize("value,interpreted", [
    ("1", True), ("true", True), ("On", True), ("YES", True), ("y", True),
    ("0", False), ("", False), ("false", False), ("off", False), ("2", False), (" 1", False),
])
def test_triton_interpret_is_read_as_triton_reads_it(monkeypatch, value, interpreted):
    # TRITON_INTERPRET=true runs Triton's interpreter as =1 does: the triton backend must then take CPU
    # tensors. The expectations are Triton's own reading (its getenv_bool), checked where triton imports.
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert _backends.triton_interpreted() is interpreted
    try:
        from triton._C.libtriton import getenv_bool
    except ImportError:
        return
    assert getenv_bool("TRITON_INTERPRET", False) is interpreted


def test_use_backend_takes_precedence_over_the_environment(monkeypatch):
    monkeypatch.setenv("AEFAST_BACKEND", "reference")
    with aefast.use_backend("cpp"):
        assert _backends.requested_backend() == "cpp"
        assert _backends.select("reparameterize_kl", torch.device("cpu"))[0] == "cpp"


def test_a_forced_backend_without_a_kernel_for_the_op_says_so(monkeypatch):
    # The MLP has no cpp kernel: forcing cpp must not run another backend, nor fail inside a lookup.
    with aefast.use_backend("cpp"):
        with pytest.raises(aefast.BackendUnavailableError,
                           match="backend 'cpp' cannot run fused_linear on cpu: it has no kernel for fused_linear"):
            _backends.select("fused_linear", torch.device("cpu"))


def test_an_op_without_an_auto_order_for_a_device_runs_the_reference(monkeypatch):
    monkeypatch.delenv("AEFAST_BACKEND", raising=False)
    monkeypatch.delitem(_backends.AUTO_ORDER, ("reparameterize_kl", "cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference is the first choice then, not a fallback
        assert _backends.select("reparameterize_kl", torch.device("cpu"))[0] == "reference"
