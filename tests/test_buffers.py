"""How tensors are handed to and made for the compiled kernels (aefast._buffers)."""
import torch

from aefast import _backends, _buffers


def test_large_new_cpu_buffers_are_advised_onto_huge_pages(monkeypatch):
    """empty_on_huge_pages: the tensor torch.empty gives; from HUGE_PAGES_MIN_BYTES on (and only then) its
    memory is advised onto huge pages before anything is written to it."""
    advised = []
    compiled = _backends.compiled_module()
    monkeypatch.setattr(compiled, "advise_huge_pages", lambda buffer: advised.append(buffer.nbytes) or True)
    where = {"dtype": torch.bfloat16, "device": torch.device("cpu")}
    small = _buffers.empty_on_huge_pages(3, 5, **where)
    large = _buffers.empty_on_huge_pages(_buffers.HUGE_PAGES_MIN_BYTES // 2, **where)
    assert (small.shape, small.dtype, large.shape, large.dtype) == ((3, 5), torch.bfloat16,
                                                                   (_buffers.HUGE_PAGES_MIN_BYTES // 2,), torch.bfloat16)
    assert advised == [_buffers.HUGE_PAGES_MIN_BYTES]
    large.fill_(1.5)
    assert bool((large == 1.5).all())
