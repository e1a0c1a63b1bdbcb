"""The storage analysis of the Willshaw memory (the seeds' "Sparse Codes: Storage Analysis").

Patterns have n units with M ones placed at random; L pairs are stored. Names follow the notes:
p1 is the fraction of synapses at 1 (the memory load), a "false one" is an output unit that fires
although the stored answer has a 0 there, under the hard threshold (T = the cue's ones).
"""
from __future__ import annotations

import decimal
import math
from typing import Optional

from aefast._checks import is_int, is_real, non_negative


def optimal_ones(n: float) -> float:
    """The number of ones per pattern that maximizes capacity: M = log2(n / 4), for n > 4 (the notes'
    asymptotic optimum; below n = 8 it is under one)."""
    _positive(n, "n")
    if not n > 4:
        raise ValueError(f"n must be > 4 for the optimal ones log2(n / 4) to be positive, got {n!r}")
    return math.log2(n / 4)


def memory_load(n_in: float, n_out: float, M_in: float, M_out: float, L: float) -> float:
    """p1 = 1 - (1 - M_in M_out / (n_in n_out))^L: the expected fraction of synapses at 1 after L pairs."""
    _positive(n_in, "n_in"), _positive(n_out, "n_out")
    non_negative(M_in, "M_in"), non_negative(M_out, "M_out"), non_negative(L, "L")
    if not M_in * M_out <= n_in * n_out:
        raise ValueError(f"M_in * M_out must be in [0, n_in * n_out], got {M_in} * {M_out}")
    if M_in * M_out == n_in * n_out:  # every pair sets every synapse (log1p(-1) is -inf)
        return 1.0 if L > 0 else 0.0
    return 0.0 - math.expm1(L * math.log1p(-M_in * M_out / (n_in * n_out)))  # 0.0, not -0.0, at L = 0


def false_ones(n: int, M: int, L: int, *, cue_ones: Optional[int] = None, n_out: Optional[int] = None,
               M_out: Optional[int] = None, form: str = "textbook") -> float:
    """Expected false ones per recall with the hard threshold, for a cue made of ``cue_ones`` of the M
    ones of a stored pattern (default: all M, a complete cue; fewer is an incomplete cue).

    ``form="textbook"``: (n_out - M_out) p1^c, every synapse at 1 independently with probability p1.
    ``form="exact"``: accounts for the spread of each output unit's load. A unit off in the stored
    answer was on in K ~ Binomial(L - 1, M_out / n_out) other answers; it fires when those K inputs
    cover all c cue units. With r_s = C(n - s, M) / C(n, M) (a random input misses s given units),
    inclusion-exclusion and E[r^K] = (1 - pi (1 - r))^(L - 1) give
        (n_out - M_out) * sum_s (-1)^s C(c, s) (1 - pi (1 - r_s))^(L - 1).
    At n = 2000, M = 10, L = 20000 the textbook form gives 0.177 and the exact form 0.222, which is
    what a simulation measures (tests/willshaw/test_theory.py).
    """
    n_out = n if n_out is None else n_out
    M_out = M if M_out is None else M_out
    c = M if cue_ones is None else cue_ones
    _positive(n, "n"), _positive(n_out, "n_out"), non_negative(L, "L")
    non_negative(M, "M"), non_negative(c, "cue_ones"), non_negative(M_out, "M_out")
    if form == "exact":  # it counts units: C(c, s), products over the M ones
        for value, name in ((n, "n"), (M, "M"), (L, "L"), (c, "cue_ones"), (n_out, "n_out"), (M_out, "M_out")):
            if not is_int(value):
                raise TypeError(f"form='exact' takes whole numbers: {name} must be an int, got {value!r}")
    if not 0 <= c <= M <= n or not 0 <= M_out <= n_out:
        raise ValueError(f"need 0 <= cue_ones <= M <= n and 0 <= M_out <= n_out, got cue_ones={c}, M={M}, n={n}, "
                         f"M_out={M_out}, n_out={n_out}")
    if form == "textbook":
        return (n_out - M_out) * memory_load(n, n_out, M, M_out, L) ** c
    if form != "exact":
        raise ValueError(f"form must be 'textbook' or 'exact', got {form!r}")
    # The alternating sum cancels: its terms reach C(c, c/2) while the sum can be 1e-27 (n = 10^6,
    # M = 18, L = 10^8), so float64 left 0.014 false ones of rounding there. Decimal arithmetic with
    # enough digits to survive the cancellation (terms up to 2^c, results down to 1e-40) is exact
    # enough, and costs c + 1 logarithms and exponentials.
    with decimal.localcontext() as context:
        context.prec = 60 + c
        pi = decimal.Decimal(M_out) / decimal.Decimal(n_out)
        total = decimal.Decimal(0)
        for s in range(c + 1):
            # r_s = C(n - s, M) / C(n, M) = prod_t (n - s - t) / (n - t)
            r = math.prod((decimal.Decimal(n - s - t) / decimal.Decimal(n - t) for t in range(M)), start=decimal.Decimal(1))
            term = ((1 - pi * (1 - r)).ln() * (L - 1)).exp() if pi * (1 - r) < 1 else decimal.Decimal(0)
            total += (-1) ** s * math.comb(c, s) * term
        return float((n_out - M_out) * max(total, decimal.Decimal(0)))


def capacity(n: float, M: float, *, false_ones_budget: Optional[float] = None) -> float:
    """Pairs storable in an n x n memory with M ones per pattern.

    Without a budget: the asymptotic L = ln2 n^2 / M^2 (p1 = 1/2). With ``false_ones_budget`` = the
    expected false ones per complete-cue recall allowed: the L at which the textbook form reaches it,
    p1 = (budget / (n - M))^(1/M) and L = ln(1 - p1) / ln(1 - M^2 / n^2). A budget of n - M or more
    (every unit may fire) is never reached: p1 stops just below 1, which gives a finite L.
    """
    _positive(n, "n"), _positive(M, "M")
    if not M <= n:
        raise ValueError(f"M must be <= n, got M={M}, n={n}")
    if false_ones_budget is None:
        return math.log(2) * n * n / (M * M)
    if not is_real(false_ones_budget) or not false_ones_budget > 0:
        raise ValueError(f"false_ones_budget must be > 0, got {false_ones_budget!r}")
    p1 = min((false_ones_budget / (n - M)) ** (1 / M), 1 - 1e-16)
    return math.log1p(-p1) / math.log1p(-M * M / (n * n))


def bits_per_synapse(n: int, M: int, L: float, *, n_out: Optional[int] = None, M_out: Optional[int] = None,
                     false_ones: float = 0.0) -> float:
    """Information stored per synapse: L answers of log2 C(n_out, M_out) bits each, less what the
    expected ``false_ones`` per recall leave unknown (which M_out of the M_out + f recalled ones are
    right: log2 C(M_out + f, M_out)), over the n * n_out synapses. Near capacity with M = log2(n/4)
    this approaches ln 2 = 0.69 as n grows."""
    n_out = n if n_out is None else n_out
    M_out = M if M_out is None else M_out
    _positive(n, "n"), _positive(n_out, "n_out"), non_negative(L, "L"), non_negative(M_out, "M_out")
    if not M_out <= n_out:
        raise ValueError(f"M_out must be <= n_out, got M_out={M_out}, n_out={n_out}")
    if not is_real(false_ones) or not false_ones >= 0:
        raise ValueError(f"false_ones must be >= 0, got {false_ones!r}")
    bits_per_answer = (_log2_choose(n_out, M_out) - _log2_choose(M_out + false_ones, M_out))
    return L * max(bits_per_answer, 0.0) / (n * n_out)


def _log2_choose(n: float, k: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def _positive(value: float, name: str) -> None:
    if not is_real(value) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

