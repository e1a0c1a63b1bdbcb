"""The public reparameterize + KL function: validation, shapes and reductions around the fused op."""
from __future__ import annotations

import math

import torch

from aefast import _backends
from aefast._checks import NO_SEED, check_no_seed_drawn_in_capture, is_int
from aefast.vae import reference
from aefast.vae import ops
from aefast.vae.ops import FLOAT_DTYPES, NO_CLAMP

REDUCTIONS = ("per_sample", "none", "sum", "mean")
_SEED_LIMIT = 2**63


def reparameterize_kl(mu, logvar, *, eps=None, seed=None, reduction="per_sample", logvar_clamp=None):
    """Sample ``z = mu + exp(logvar / 2) * eps`` and compute ``KL(N(mu, exp(logvar)) || N(0, I))``.

    Args:
        mu, logvar: tensors of shape ``(..., D)``, float32, float16, bfloat16 or float64, same device.
        eps: the standard normal noise, same shape, dtype and device; used as is. Without it, the noise
            is Philox4x32-10 normals of ``seed`` (see DESIGN.md), regenerated in backward, never stored.
        seed: int in [0, 2^63) for the noise; drawn from torch's default generator when None, so
            ``torch.manual_seed`` makes a run repeatable. Not allowed together with ``eps``.
        reduction: ``"per_sample"`` sums the KL over the last dim (shape ``(...)``), ``"none"`` keeps
            it per element (shape ``(..., D)``), ``"sum"`` sums everything, ``"mean"`` averages the
            per-sample KL over the leading dims.
        logvar_clamp: optional ``(min, max)``: logvar is clamped before use (as ``torch.clamp``, whose
            gradient is zero outside the range), which keeps ``exp`` finite for wild encoder outputs.

    Returns:
        ``(z, kl)``: ``z`` like ``mu``; ``kl`` in float32 (float64 for float64 inputs), accumulated in
        that precision whatever the input dtype.
    """
    _check_float_tensor("mu", mu)
    if mu.dim() == 0:
        raise ValueError("mu must have at least one dimension (the latent dim D), got a 0-d tensor")
    _check_like("logvar", logvar, mu)
    if eps is not None:
        _check_like("eps", eps, mu)
        if seed is not None:
            raise ValueError("seed: give either eps or seed, not both (eps is used as is)")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    clamp_min, clamp_max = _check_clamp(logvar_clamp)
    if eps is None:
        check_no_seed_drawn_in_capture(seed, mu.device, "eps")
    # With eps given no noise is drawn, nor a seed for it: torch's generator is left as it was.
    seed_tensor = _seed_tensor(seed) if eps is None else NO_SEED

    cols = mu.shape[-1]
    rows = math.prod(mu.shape[:-1])
    tensors = (mu.reshape(rows, cols).contiguous(), logvar.reshape(rows, cols).contiguous(),
               None if eps is None else eps.reshape(rows, cols).contiguous())
    if _backends.func_transform_takes_plain_ops():
        # torch.func's transforms refuse the op's autograd: the same math, the same noise, in plain ops.
        z, kl = reference.forward(*tensors, int(seed_tensor), reduction == "none", clamp_min, clamp_max)
    else:
        z, kl = ops.reparameterize_kl(*tensors, seed_tensor, reduction == "none", clamp_min, clamp_max)
    if mu.dim() != 2:  # the op's outputs are (rows, cols) and (rows[, cols]); a view costs 3 us
        z, kl = z.view(mu.shape), kl.view(mu.shape if reduction == "none" else mu.shape[:-1])
    if reduction == "none":
        return z, kl
    if reduction == "sum":
        return z, kl.sum()
    if reduction == "mean":
        return z, kl.mean()
    return z, kl


def _check_float_tensor(name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {value.dtype}")


def _check_like(name, value, mu):
    _check_float_tensor(name, value)
    if value.dtype != mu.dtype:
        raise TypeError(f"{name} must have mu's dtype {mu.dtype}, got {value.dtype}")
    if value.shape != mu.shape:
        raise ValueError(f"{name} must have mu's shape {tuple(mu.shape)}, got {tuple(value.shape)}")
    if value.device != mu.device:
        raise ValueError(f"{name} must be on mu's device {mu.device}, got {value.device}")


def _check_clamp(logvar_clamp):
    if logvar_clamp is None:
        return NO_CLAMP
    try:
        low, high = (float(bound) for bound in logvar_clamp)
    except (TypeError, ValueError):
        raise TypeError(f"logvar_clamp must be None or a (min, max) pair of numbers, got {logvar_clamp!r}") from None
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"logvar_clamp must be (min, max) with min <= max and no NaN, got {logvar_clamp!r}")
    return low, high


def _seed_tensor(seed):
    if seed is None:
        return torch.randint(0, _SEED_LIMIT - 1, (), dtype=torch.int64, device="cpu")
    if not is_int(seed):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return torch.tensor(int(seed), dtype=torch.int64, device="cpu")
