"""Sizes whose byte counts pass 2^32: the C++ kernels index the matrix and the answers with 64-bit
offsets (a 32-bit offset would wrap around to the first rows). Each test needs about 4.3 GB and skips
when the machine has less than twice that available. Refusals before allocation: test_errors.py."""
import pytest
import torch

from aefast.willshaw import WillshawMemory
from aefast.willshaw.memory import _available_bytes
from tests.conftest import force_cpu_backend

# 65543 rows of ceil(524289 / 64) = 8193 words: 4,295,950,392 bytes, just past 2^32.
N_IN, N_OUT = 2**16 + 7, 2**19 + 1


def need_bytes(count: int) -> None:
    available = _available_bytes(torch.device("cpu"))
    if available < 2 * count:
        pytest.skip(f"needs {2 * count} bytes available, the machine has {available}")


def test_a_matrix_past_4_gib_stores_and_retrieves_its_last_rows():
    assert N_IN * ((N_OUT + 63) // 64) * 8 > 2**32
    need_bytes(N_IN * ((N_OUT + 63) // 64) * 8)
    with force_cpu_backend("cpp"):
        memory = WillshawMemory(N_IN, N_OUT)
        x = torch.tensor([[0, 12345, N_IN - 2, N_IN - 1]])  # the last rows start past byte 2^32
        y = torch.tensor([[3, 2**18, N_OUT - 64, N_OUT - 1]])  # the last word of a row
        memory.store_indices(x, y)
        assert memory.nbytes > 2**32
        assert memory.density == 16 / (N_IN * N_OUT)
        assert torch.equal(memory.retrieve_indices(x)[0], y[0])
        assert torch.equal(memory.retrieve_indices(x[:, 2:], "soft")[0], y[0])
        sums = memory.sums_indices(torch.tensor([[N_IN - 1]]))[0]
        assert sums.sum() == 4 and sums[N_OUT - 1] == 1
        # A wrap-around would have set bits in row 0's neighbourhood: the first row holds y only.
        assert torch.equal(memory.retrieve_indices(torch.tensor([[1]]), 1)[0], torch.empty(0, dtype=torch.int64))


def test_answers_past_4_gib_are_written_at_their_own_offsets():
    """8193 dense answers of 524289 units: the last ones start past byte 2^32 of the bool output."""
    cues, n_in = 8193, 64
    need_bytes(cues * N_OUT)
    with force_cpu_backend("cpp"):
        memory = WillshawMemory(n_in, N_OUT)
        memory.store_indices(torch.tensor([[5], [6]]), torch.tensor([[N_OUT - 1], [7]]))
        cue_idx = torch.full((cues, 1), 6)
        cue_idx[-1, 0] = 5  # the last cue alone answers the last unit
        answer = memory.retrieve(torch.zeros(cues, n_in, dtype=torch.bool).scatter_(1, cue_idx, True))
        assert answer.numel() > 2**32
        assert answer[-1].nonzero().flatten().tolist() == [N_OUT - 1]
        assert answer[0].nonzero().flatten().tolist() == [7]
        assert int(answer[:, N_OUT - 1].sum()) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_a_gpu_matrix_past_2_to_the_31_words_stores_and_retrieves_its_last_rows(backend):
    """300000 rows of 8193 words: 2.46e9 words (19.7 GB), so word offsets pass 2^31 in the GPU kernels."""
    n_in = 300_000
    memory = WillshawMemory(n_in, N_OUT, device="cuda", backend=backend)
    x = torch.tensor([[0, 7, n_in - 2, n_in - 1]], device="cuda")
    y = torch.tensor([[3, 2**18, N_OUT - 64, N_OUT - 1]], device="cuda")
    memory.store_indices(x, y)
    assert memory.density == 16 / (n_in * N_OUT)
    assert torch.equal(memory.retrieve_indices(x)[0], y[0])
    assert torch.equal(memory.retrieve_indices(x[:, 2:], "soft")[0], y[0])
    assert torch.equal(memory.retrieve_indices(x[:, 3:], 1)[0], y[0])
    assert memory.sums_indices(x[:, 3:])[0].sum() == 4
