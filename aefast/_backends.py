"""The backend registry: which kernels each op has, which can run on a device, and which one runs.

Backends (DESIGN.md): ``reference`` (plain PyTorch, any device), ``cpp`` (CPU tensors, needs the
compiled ``aefast._C``), ``triton`` (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``),
``cuda`` (CUDA tensors, needs ``aefast._C`` built with CUDA).

``auto`` picks per op and device the first backend of ``AUTO_ORDER`` that can run; a fallback past
the first choice warns once. A backend forced by name (``AEFAST_BACKEND`` or ``use_backend``) that
cannot run raises :class:`BackendUnavailableError` saying why; it never falls back silently.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
import threading
import warnings
from typing import Callable, Iterator, Optional

import torch

BACKEND_NAMES = ("reference", "cpp", "triton", "cuda")

# The fastest backend first, per (op, device type), as measured by benchmarks/.
AUTO_ORDER: dict[tuple[str, str], tuple[str, ...]] = {
    # bench_vae.py, fwd+bwd at 2^20 x 32 fp32, 2-core AVX-512 AMD EPYC (2026-12-07): cpp 9.18x eager, 7.57x
    # torch.compile.
    ("reparameterize_kl", "cpu"): ("cpp", "reference"),
    # H200, 2026-12-05 (bench_vae.py, same shape): Triton 2.6x eager, 0.83x torch.compile; the CUDA
    # kernel was not timed. Triton first.
    ("reparameterize_kl", "cuda"): ("triton", "cuda", "reference"),
    # The fused MLP has no compiled CPU kernel; the reference runs a narrow stretch, and a large model's
    # loss with its gradients, in row blocks that stay in cache (bench_mlp.py, same CPU, two runs on
    # 2026-12-07: the 64-wide stack at 2^18 rows 1.4-3.2x eager for inference, 1.9-2.0x for the training
    # step; the autoencoder's training step at 2^14 rows 1.3-1.7x). On the GPU too the reference (plain autograd) first: the H200 run of
    # 2026-12-05 (bench_mlp.py) timed the Triton kernels at 0.4x eager for the autoencoder's training
    # step in float32 and bfloat16 (0.2-0.6x for its inference), and the 64-wide stack's training step at
    # 0.7x (float32) and 1.0x (bfloat16); only the stack's bfloat16 inference was faster (1.4x). The
    # autoencoder's step spends 3.3 ms where its kernels take 0.55 ms of GPU time: launch and op
    # overhead on the host (benchmarks/profile_kernels.py mlp). use_backend("triton") runs the kernels,
    # whose fused loss halves the step's peak memory (59 MiB against eager's 172 in bfloat16).
    **{(op, device): order for op in ("fused_linear", "fused_linear_backward", "fused_linear_loss",
                                      "fused_narrow_mlp", "fused_narrow_mlp_backward", "fused_narrow_mlp_loss",
                                      "fused_narrow_mlp_loss_backward")
       for device, order in (("cpu", ("reference",)), ("cuda", ("reference", "triton")))},
    # bench_willshaw.py at n = 2^16, M = 14 loaded to capacity, same CPU: cpp retrieves 1506x and stores
    # 31400x faster per item than the reference. H200, 2026-12-05, n = 2^18, M = 16 at capacity: Triton
    # retrieves 364x and stores 21000x (in row order) faster per item than the reference, which unpacks
    # each row it reads.
    **{(op, "cpu"): ("cpp", "reference") for op in (
        "willshaw_store", "willshaw_sums", "willshaw_retrieve", "willshaw_retrieve_indices",
        "willshaw_check_patterns", "willshaw_count_ones", "willshaw_dense_to_rows")},
    # Same H200 run: the CUDA kernels answer 4096 cues in 0.86 ms (hard) and 0.88 (soft) against Triton's
    # 0.92 and 0.95 (59% and 55% of the copy probe's bandwidth), and store 60M pairs/s against Triton's
    # 130M in row order. The others were not timed apart: Triton first, CUDA for a GPU without triton.
    ("willshaw_retrieve_indices", "cuda"): ("cuda", "triton", "reference"),
    **{(op, "cuda"): ("triton", "cuda", "reference") for op in (
        "willshaw_store", "willshaw_sums", "willshaw_retrieve", "willshaw_check_patterns", "willshaw_count_ones")},
}


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot run the op on the given device."""


_KERNELS: dict[str, dict[str, Callable]] = {}
_forced_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("aefast_backend", default=None)
_warned_fallbacks: set[tuple[str, str]] = set()
_warn_lock = threading.Lock()


def register_kernel(op: str, backend: str, kernel: Callable) -> None:
    """Register ``kernel`` as ``backend``'s implementation of ``op``."""
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    _KERNELS.setdefault(op, {})[backend] = kernel


# Options every Triton launch of aefast passes. enable_fp_fusion: multiplies and adds contract into FMAs,
# as every kernel was tested, compiled without spills and timed; left unset, Triton 3.9 warns at each
# process's first compile and 3.10 turns fusion off (other roundings, slower float32 dots on FMA units).
TRITON_LAUNCH = {"enable_fp_fusion": True}


def lazy_kernel(module: str, name: str) -> Callable:
    """``module.name``, imported on the first call: triton reads TRITON_INTERPRET when a module defines
    its kernels, and importing triton costs seconds that a CPU-only user should not pay. It runs with its
    CUDA tensors' device as the current one: Triton launches on the current device (and its stream),
    not on its arguments' as torch's ops do, so tensors on cuda:1 under cuda:0 would reach another GPU."""
    resolved = []  # the function, once imported (importlib's lookup took 3 us a call)

    def run(*args):
        if not resolved:
            resolved.append(getattr(importlib.import_module(module), name))
        device = _cuda_device_of(args)
        if not _elsewhere(device):
            return resolved[0](*args)
        with torch.cuda.device(device):
            return resolved[0](*args)
    return run


def on_device_of(tensor: torch.Tensor):
    """A context in which ``tensor``'s CUDA device is the current one, for a Triton launch outside
    ``lazy_kernel`` (nothing to do for a CPU tensor, or one on the current device)."""
    return torch.cuda.device(tensor.device) if _elsewhere(tensor.device) else contextlib.nullcontext()


def _elsewhere(device: torch.device | None) -> bool:
    """Whether ``device`` is a CUDA device other than the current one (a launch must switch to it)."""
    return device is not None and device.type == "cuda" and device.index != torch.cuda.current_device()


def _cuda_device_of(args) -> torch.device | None:
    """The device of the first CUDA tensor among ``args``, or None."""
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.device.type == "cuda":
            return arg.device
    return None


def has_kernel(op: str, backend: str) -> bool:
    return backend in _KERNELS.get(op, {})


def registered_kernel(op: str, backend: str) -> Callable:
    """``backend``'s kernel for ``op`` as registered, whatever the device (``select`` picks by device)."""
    return _KERNELS[op][backend]


def compiled_module():
    """``aefast._C``, or None when the extension was not built."""
    return _import_compiled()[0]


@functools.lru_cache(maxsize=None)
def _import_compiled():
    try:
        return importlib.import_module("aefast._C"), None
    except ImportError as error:
        return None, f"aefast._C is not built ({error}); reinstall with `pip install -e .`"


@functools.lru_cache(maxsize=None)
def _backend_status(name: str) -> bool | str:
    if name == "reference":
        return True
    if name == "cpp":
        return _import_compiled()[1] or True
    if name == "cuda":
        module, why = _import_compiled()
        if module is None:
            return why
        if not module.build_info()["cuda"]:
            return "aefast._C was built without CUDA (no CUDA toolkit at build time, or AEFAST_CUDA=0)"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return True
    if name == "triton":
        try:
            importlib.import_module("triton")
        except ImportError as error:
            return f"triton does not import ({error})"
        if not torch.cuda.is_available() and not triton_interpreted():
            return "no CUDA device, and TRITON_INTERPRET=1 is not set for the CPU interpreter"
        return True
    raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")


# The values Triton (its getenv_bool) reads as true, in any case: TRITON_INTERPRET=true runs its
# interpreter as =1 does, and the backends must agree with it.
_TRITON_TRUE = ("1", "true", "on", "yes", "y")


def triton_interpreted() -> bool:
    """Whether Triton runs its kernels in its CPU interpreter (TRITON_INTERPRET read as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in _TRITON_TRUE


def available_backends() -> dict[str, bool | str]:
    """Each backend's name mapped to True, or to a string that says why it is not available."""
    return {name: _backend_status(name) for name in BACKEND_NAMES}


def can_run(backend: str, device: torch.device) -> bool | str:
    """True when ``backend`` can run on ``device``, else the reason it cannot."""
    status = _backend_status(backend)
    if status is not True:
        return status
    if backend == "cpp" and device.type != "cpu":
        return f"cpp runs CPU tensors only, got a tensor on {device}"
    if backend == "cuda" and device.type != "cuda":
        return f"cuda runs CUDA tensors only, got a tensor on {device}"
    if backend == "triton":
        if device.type == "cpu" and not triton_interpreted():
            return "triton runs CPU tensors only under TRITON_INTERPRET=1"
        if device.type not in ("cpu", "cuda"):
            return f"triton runs CUDA tensors, got a tensor on {device}"
    return True


def _check_name(name: str, what: str) -> str:
    if name not in BACKEND_NAMES + ("auto",):
        raise ValueError(f"{what} must be one of {BACKEND_NAMES + ('auto',)}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``name`` (or ``"auto"``) for every op inside the ``with`` block."""
    token = _forced_backend.set(_check_name(name, "backend"))
    try:
        yield
    finally:
        _forced_backend.reset(token)


def requested_backend() -> str:
    """The backend asked for: ``use_backend`` first, then ``AEFAST_BACKEND``, else ``"auto"``."""
    forced = _forced_backend.get()
    if forced is not None:
        return forced
    return _check_name(os.environ.get("AEFAST_BACKEND", "auto"), "AEFAST_BACKEND")


def func_transform_takes_plain_ops() -> bool:
    """Whether an op's caller runs the reference's math in plain ops instead of the op: inside
    torch.func's transforms (grad, vmap, jacrev, ...) with ``auto``. torch refuses the custom ops'
    autograd there (it takes only autograd.Functions of its own form); a backend forced by name still
    runs its op, never silently another. torch.compile traces the ops (this check would break its
    graph), so it says False there."""
    return (not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()
            and requested_backend() == "auto")


def select(op: str, device: torch.device, requested: Optional[str] = None) -> tuple[str, Callable]:
    """The backend that runs ``op`` on ``device`` now, and its kernel. ``requested``: the caller's
    ``requested_backend()``, where it has read it already (the environment's read costs a microsecond)."""
    kernels = _KERNELS[op]
    requested = requested or requested_backend()
    if requested != "auto":
        why = can_run(requested, device) if requested in kernels else f"it has no kernel for {op}"
        if why is not True:
            raise BackendUnavailableError(f"backend {requested!r} cannot run {op} on {device}: {why}")
        return requested, kernels[requested]
    order = AUTO_ORDER.get((op, device.type), ("reference",))
    reasons = []
    for name in order:
        why = can_run(name, device) if name in kernels else f"it has no kernel for {op}"
        if why is True:
            if reasons:
                _warn_fallback_once(op, device, name, reasons)
            return name, kernels[name]
        reasons.append(f"{name}: {why}")
    raise BackendUnavailableError(f"no backend can run {op} on {device}: " + "; ".join(reasons))


def _warn_fallback_once(op: str, device: torch.device, chosen: str, reasons: list[str]) -> None:
    key = (op, device.type)
    with _warn_lock:
        if key in _warned_fallbacks:
            return
        _warned_fallbacks.add(key)
    warnings.warn(
        f"aefast: {op} on {device.type} falls back to the {chosen} backend ({'; '.join(reasons)})",
        RuntimeWarning,
        stacklevel=4,
    )
