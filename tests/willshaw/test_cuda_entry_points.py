"""The CUDA entry points of aefast._C (csrc/willshaw/willshaw_cuda.cu) as Python can call them, on any
machine whose build has CUDA: bad sizes raise ValueError naming the argument before anything launches,
empty work returns without touching a pointer, and an address that is not device memory is refused
(or, with no GPU, the runtime's error comes back as RuntimeError), never a crash. The kernels' results
are tested on a GPU (test_gpu_backends.py)."""
import pytest
import torch

from aefast import _backends
from aefast.willshaw import packed_retrieval

compiled = _backends.compiled_module()
pytestmark = pytest.mark.skipif(compiled is None or not compiled.build_info()["cuda"],
                                reason="aefast._C was built without CUDA")

STREAM = 0
# A host address: a CPU tensor's, which no kernel may be given.
HOST = torch.zeros(64, dtype=torch.int64)


def calls(pointer):
    """Each entry point with sizes that need work, every pointer ``pointer``."""
    p = pointer
    return {
        "store": lambda: compiled.willshaw_store_cuda(p, 4, 70, p, 2, p, p, 2, p, 1, STREAM),
        "and": lambda: compiled.willshaw_and_cuda(p, 4, 2, p, 2, p, 1, p, p, STREAM),
        "extract": lambda: compiled.willshaw_extract_cuda(p, 1, 2, p, p, p, 3, STREAM),
        "sums": lambda: compiled.willshaw_sums_cuda(p, 4, 70, p, 2, p, 1, p, -1, STREAM),
        "unpack": lambda: compiled.willshaw_unpack_cuda(p, p, 1, 70, p, STREAM),
        "count_ones": lambda: compiled.willshaw_count_ones_cuda(p, 8, p, STREAM),
    }


@pytest.mark.parametrize("name, call, argument", [
    ("store", lambda: compiled.willshaw_store_cuda(0, -1, 70, 0, 0, 0, 0, 0, 0, 0, STREAM), "n_in"),
    ("store", lambda: compiled.willshaw_store_cuda(0, 4, 0, 0, 0, 0, 0, 0, 0, 0, STREAM), "n_out"),
    ("store", lambda: compiled.willshaw_store_cuda(0, 4, 70, 0, -2, 0, 0, 0, 0, 0, STREAM), "x_count"),
    ("store", lambda: compiled.willshaw_store_cuda(0, 4, 70, 0, 0, 0, 0, 0, 0, -1, STREAM), "pairs"),
    ("and", lambda: compiled.willshaw_and_cuda(0, 4, 0, 0, 0, 0, 1, 0, 0, STREAM), "words_per_row"),
    ("and", lambda: compiled.willshaw_and_cuda(0, 4, 2, 0, 0, 0, -1, 0, 0, STREAM), "cues"),
    ("extract", lambda: compiled.willshaw_extract_cuda(0, 1, 2, 0, 0, 0, -3, STREAM), "total"),
    ("sums", lambda: compiled.willshaw_sums_cuda(0, 4, -70, 0, 0, 0, 1, 0, -1, STREAM), "n_out"),
    ("sums", lambda: compiled.willshaw_sums_cuda(0, 4, 70, 0, -1, 0, 1, 0, -1, STREAM), "value_count"),
    ("unpack", lambda: compiled.willshaw_unpack_cuda(0, 0, -1, 70, 0, STREAM), "rows"),
    ("count_ones", lambda: compiled.willshaw_count_ones_cuda(0, -8, 0, STREAM), "count"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_bad_sizes_raise_naming_the_argument(name, call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_the_kernels_count_ones_in_the_groups_the_driver_expects():
    assert compiled.willshaw_answer_group_words == packed_retrieval.ANSWER_GROUP


def test_empty_work_returns_without_touching_a_pointer():
    compiled.willshaw_store_cuda(0, 4, 70, 0, 0, 0, 0, 0, 0, 0, STREAM)  # no pairs
    compiled.willshaw_store_cuda(0, 0, 70, 0, 2, 0, 0, 2, 0, 1, STREAM)  # no rows
    compiled.willshaw_and_cuda(0, 4, 2, 0, 0, 0, 0, 0, 0, STREAM)  # no cues
    compiled.willshaw_extract_cuda(0, 1, 2, 0, 0, 0, 0, STREAM)  # no positions
    compiled.willshaw_sums_cuda(0, 4, 70, 0, 0, 0, 0, 0, -1, STREAM)
    compiled.willshaw_unpack_cuda(0, 0, 0, 70, 0, STREAM)
    compiled.willshaw_count_ones_cuda(0, 0, 0, STREAM)


@pytest.mark.parametrize("entry_point", list(calls(0)))
def test_null_pointers_are_refused(entry_point):
    with pytest.raises(ValueError, match="must be non-null"):
        calls(0)[entry_point]()


@pytest.mark.parametrize("entry_point", list(calls(0)))
def test_a_host_address_is_refused(entry_point):
    """On a GPU: ValueError (not device memory). Without one, the runtime cannot say what the address is:
    its error (no device, or no driver) comes back as RuntimeError."""
    with pytest.raises(ValueError if torch.cuda.is_available() else RuntimeError):
        calls(HOST.data_ptr())[entry_point]()
