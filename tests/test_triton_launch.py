"""aefast._triton_launch.launch on the fake GPU (tests/fake_gpu.py), whose launcher holds every launch's
arguments to the compiled kernel's signature (a GPU's would read them as it says, unchecked): a kernel
launched again with arguments that Triton would specialize otherwise (alignment, an integer's type,
1, divisibility by 16, a constexpr) must not take the variant its key met first, and arguments it
would not must take it without Triton's path. The interpreter runs no compiled kernel, so this runs as
a child without TRITON_INTERPRET (tests/sm90.py)."""
import collections
import json

import pytest

from tests.sm90 import compiled_in_child

try:
    import triton
    import triton.language as tl
except ImportError:  # (the test's child needs triton; collecting this module must not)
    triton = None

if triton is not None:
    @triton.jit(do_not_specialize=["seed"])
    def _probe_kernel(x_ptr, y_ptr, count, step, seed, scale, flag, BLOCK: tl.constexpr, TWICE: tl.constexpr = False):
        """Writes y = x * scale (twice that where TWICE) for the first ``count`` elements: every kind of
        parameter Triton specializes (pointers, integers, one not specialized, a float, a bool, constexprs,
        one left to its default)."""
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets * step < count
        value = tl.load(x_ptr + offsets * step, mask=mask) * scale + (seed % 2) * 0.0
        if flag:
            value = value * 1.0
        if TWICE:
            value = value * 2.0
        tl.store(y_ptr + offsets, value, mask=mask)


# Launches in an order that would reuse a wrong variant if the key left anything out: each differs from
# one before it in one thing Triton specializes on. (x's offset in elements, its dtype, count, step, seed,
# the keyword arguments besides BLOCK=64.)
LAUNCHES = [(0, "float32", 64, 1, 3, {}), (1, "float32", 64, 1, 3, {}),  # 16-byte alignment
            (0, "float32", 63, 1, 3, {}), (0, "float32", 1, 1, 3, {}),  # count not divisible by 16; count 1
            (0, "float32", 17, 1, 3, {}),  # count 63's key again, after 1's (a constant in Triton's variant)
            (0, "float32", 64, 16, 3, {}), (0, "float32", 64, 2**31 + 16, 3, {}),  # i32, then i64
            (0, "float32", 64, 2**63 + 16, 3, {}),  # u64
            (0, "float32", 64, 1, 2**40, {}), (0, "float32", 64, 1, 1, {}),  # seed: i64; 1 not a constant
            (0, "bfloat16", 64, 1, 3, {}), (0, "float32", 64, 1, 3, {"TWICE": True}),
            (0, "float32", 64, 1, 3, {"TWICE": False}),  # a constexpr given, then its default given by name
            (0, "float32", 64, 1, 3, {"num_warps": 2}), (0, "float32", 64, 1, 3, {"num_stages": 2})]  # options
# Each launch runs twice. Triton compiles one variant for the first, seed 1 (not specialized: its
# parameter is do_not_specialize) and TWICE=False (the default, given); one for counts 63 and 17; one
# for each of the rest. So by launches:
VARIANT_LAUNCHES = [2] * (len(LAUNCHES) - 5) + [4, 6]

OPTIONS = {"enable_fp_fusion": True}  # as aefast's launches pass (_backends.TRITON_LAUNCH)


@pytest.fixture(scope="module")
def launched():
    return compiled_in_child(__file__)


def test_each_launch_takes_a_variant_compiled_for_its_arguments(launched):
    """The fake GPU's launcher refused no launch (it raises on arguments that do not fit the variant)."""
    assert launched["refused"] == []


def test_a_key_met_before_launches_without_tritons_path(launched):
    """Each launch twice: Triton's path the first time its key is met (each but count 17's, which is 63's),
    never the second; and each time the variant Triton compiled for its arguments and options."""
    assert launched["triton_path"] == len(LAUNCHES) - 1
    assert launched["variant_launches"] == VARIANT_LAUNCHES


def test_tritons_path_is_taken_every_time_under_a_launch_hook_or_for_a_runtime_argument_by_keyword(launched):
    """A profiler's launch hook gets its metadata from Triton's path alone; a runtime argument given by
    keyword is not fixed by the key."""
    assert launched["hooked"] == 2
    assert launched["by_keyword"] == 2


def _run() -> dict:
    import torch
    from triton import knobs
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from aefast._triton_launch import launch
    from tests import fake_gpu

    fake_gpu.install()
    launches_by_variant = collections.Counter()  # by compiled kernel (the hash of its binary)
    make_launcher = driver.active.launcher_cls

    def counting_launcher(src, metadata):
        launcher = make_launcher(src, metadata)

        def counted(*args):
            launcher(*args)
            launches_by_variant[metadata.hash] += 1
        return counted
    driver.active.launcher_cls = counting_launcher
    through_triton = [0]
    run = JITFunction.run

    def counted_run(self, *args, **kwargs):
        through_triton[0] += 1
        return run(self, *args, **kwargs)
    JITFunction.run = counted_run

    refused = []
    x, y = torch.zeros(256), torch.zeros(256)
    for offset, dtype, count, step, seed, kwargs in LAUNCHES:
        source = x.to(getattr(torch, dtype))[offset:]
        for _ in range(2):
            try:
                launch(_probe_kernel, (4,), source, y, count, step, seed, 0.5, True, BLOCK=64, **kwargs, **OPTIONS)
            except RuntimeError as error:
                refused.append(str(error))
    out = {"refused": refused, "triton_path": through_triton[0],
           "variant_launches": sorted(launches_by_variant.values())}

    through_triton[0] = 0

    def hook(metadata):
        pass
    knobs.runtime.launch_enter_hook.add(hook)
    for _ in range(2):  # (a key met above)
        launch(_probe_kernel, (4,), x, y, 64, 1, 3, 0.5, True, BLOCK=64, **OPTIONS)
    knobs.runtime.launch_enter_hook.remove(hook)
    out["hooked"] = through_triton[0]

    through_triton[0] = 0
    for _ in range(2):
        launch(_probe_kernel, (4,), x, y, 64, 1, 3, 0.5, flag=True, BLOCK=64, **OPTIONS)
    out["by_keyword"] = through_triton[0]
    return out


if __name__ == "__main__":
    print(json.dumps(_run()))
