"""save/load: a round trip keeps every bit and count; a damaged, truncated, appended-to or foreign file
raises WillshawFileError and never loads; a save replaces the old file atomically."""
import hashlib
import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aefast.willshaw import WillshawFileError, WillshawMemory, memory_file
from aefast.willshaw.memory import _available_bytes
from tests.willshaw.conftest import random_patterns


@pytest.fixture
def saved(tmp_path):
    generator = torch.Generator().manual_seed(11)
    memory = WillshawMemory(300, 130)
    memory.store_indices(random_patterns(400, 300, 6, generator), random_patterns(400, 130, 5, generator))
    path = tmp_path / "memory.safetensors"
    memory.save(path)
    return memory, path


def test_round_trip_keeps_everything(saved):
    memory, path = saved
    loaded = WillshawMemory.load(path)
    assert (loaded.n_in, loaded.n_out, loaded.n_stored) == (300, 130, 400)
    assert torch.equal(loaded.packed_matrix(), memory.packed_matrix())
    cue = torch.randint(0, 2, (9, 300), generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.sums(cue), memory.sums(cue))


def test_save_replaces_an_existing_file_and_leaves_no_temporary(saved, tmp_path):
    memory, path = saved
    memory.store_indices(torch.tensor([[0, 1]]), torch.tensor([[2, 3]]))
    memory.save(path)
    assert WillshawMemory.load(path).n_stored == 401
    assert [p.name for p in tmp_path.iterdir()] == ["memory.safetensors"]


def test_a_save_to_a_folder_or_into_a_missing_folder_names_the_path_and_writes_nothing(saved, tmp_path):
    memory, _ = saved
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a folder"):
        memory.save(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"the folder {tmp_path / 'missing'} does not exist"):
        memory.save(tmp_path / "missing" / "memory.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["memory.safetensors"]


def test_a_saved_file_gets_the_mode_of_a_plain_open(saved, tmp_path):
    _, path = saved
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_a_save_over_a_file_keeps_its_mode(saved):
    memory, path = saved
    path.chmod(0o640)  # the owner's choice (a shared group's read, say): a new save must not undo it
    memory.save(path)
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_save_that_fails_midway_leaves_the_old_file_and_no_temporary(saved, tmp_path, monkeypatch):
    memory, path = saved
    before = path.read_bytes()

    def disk_full(block):  # after the header is written: the temporary file holds a part
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(memory_file, "_bytes_of", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        memory.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["memory.safetensors"]


def _damage(path, offset_from_end=None, offset=None, xor=0x01):
    data = bytearray(path.read_bytes())
    position = len(data) - offset_from_end if offset_from_end is not None else offset
    data[position] ^= xor
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_matrix_fails_the_checksum(saved):
    _, path = saved
    _damage(path, offset_from_end=100)
    with pytest.raises(WillshawFileError, match="checksum mismatch"):
        WillshawMemory.load(path)


def test_a_flipped_bit_in_the_header_is_refused(saved):
    _, path = saved
    _damage(path, offset=12, xor=0x40)  # inside the JSON header
    with pytest.raises(WillshawFileError):
        WillshawMemory.load(path)


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_a_truncated_file_is_refused(saved, keep):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-8])
    with pytest.raises(WillshawFileError):
        WillshawMemory.load(path)


def test_an_appended_to_file_is_refused(saved):
    _, path = saved
    path.write_bytes(path.read_bytes() + b"\0" * 64)
    with pytest.raises(WillshawFileError):
        WillshawMemory.load(path)


def _rewrite_metadata(path, **changes):
    data = path.read_bytes()
    header_length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_length])
    header["__metadata__"].update(changes)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + header_length:])


@pytest.mark.parametrize("changes,match", [
    ({"version": "2"}, "format version '2'"),
    ({"format": "other"}, "is not a saved WillshawMemory"),
    ({"n_out": "131"}, "checksum mismatch"),  # same number of words: only the checksum tells
    ({"n_stored": "7"}, "checksum mismatch"),
    ({"n_in": "299"}, "the sizes say"),
    ({"n_stored": "-1"}, "must be a non-negative integer"),
])
def test_wrong_metadata_is_refused(saved, changes, match):
    _, path = saved
    _rewrite_metadata(path, **changes)
    with pytest.raises(WillshawFileError, match=match):
        WillshawMemory.load(path)


def test_other_files_are_refused(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"weights": torch.zeros(3)}, other)
    with pytest.raises(WillshawFileError, match="is not a saved WillshawMemory"):
        WillshawMemory.load(other)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(WillshawFileError):
        WillshawMemory.load(text)
    with pytest.raises(FileNotFoundError):
        WillshawMemory.load(tmp_path / "missing.safetensors")


def test_a_file_whose_matrix_sets_bits_past_n_out_is_refused(saved, tmp_path, monkeypatch):
    # A file with a valid checksum, as a program other than aefast could write it: no store sets these
    # bits, and kernels that read whole words would answer with units past n_out.
    memory, _ = saved
    matrix = memory.packed_matrix()
    matrix[250, -1] |= 1 << 2  # unit 130 (n_out = 130 units, 3 words a row)
    path = tmp_path / "padded.safetensors"
    memory_file.write(path, matrix, 300, 130, memory.n_stored)
    with pytest.raises(WillshawFileError, match="rows 0-299 set bits past unit n_out - 1 = 129"):
        WillshawMemory.load(path)
    # Read in blocks of 7 rows, the error names the first block that sets one (a second sets one too).
    matrix[290, -1] |= 1 << 63
    memory_file.write(path, matrix, 300, 130, memory.n_stored)
    monkeypatch.setattr(memory_file, "BLOCK_BYTES", 7 * 3 * 8)
    with pytest.raises(WillshawFileError, match="rows 245-251 set bits past unit n_out - 1 = 129"):
        WillshawMemory.load(path)


def test_a_file_replaced_between_its_sizes_and_its_bits_is_refused(saved):
    """A load reads the sizes, allocates the memory, then opens the file again for the bits: a file saved
    over it in between (other sizes, or only another count of pairs) is refused, not mixed in."""
    memory, path = saved
    sizes = memory_file.read_sizes(path)
    memory.store_indices([[1, 2]], [[3, 4]])
    memory.save(path)
    matrix = torch.zeros(300, 3, dtype=torch.int64)
    with pytest.raises(WillshawFileError, match="changed while it was loaded"):
        memory_file.read_matrix_into(path, sizes, matrix)


def test_a_saved_file_is_a_safetensors_file_that_its_library_reads(saved):
    memory, path = saved
    assert torch.equal(load_file(path)["matrix"], memory.packed_matrix())
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert {key: metadata[key] for key in ("format", "version", "n_in", "n_out", "n_stored")} == \
        {"format": "aefast.willshaw", "version": "1", "n_in": "300", "n_out": "130", "n_stored": "400"}
    # The bits start 8-byte aligned, as safetensors' own writer pads its header (a reader may map them).
    header_length, = struct.unpack("<Q", path.read_bytes()[:8])
    assert header_length % 8 == 0
    for extra in range(8):  # every length the JSON can take, modulo 8
        header = memory_file._header({"note": "x" * extra}, 300, 3)
        assert struct.unpack("<Q", header[:8])[0] == len(header) - 8 and len(header) % 8 == 0
    expected = hashlib.sha256(b"n_in=300 n_out=130 n_stored=400")
    expected.update(memory.packed_matrix().numpy().tobytes())
    assert metadata["sha256"] == expected.hexdigest()


def test_a_file_written_by_safetensors_itself_loads(saved, tmp_path):
    """Files as earlier versions wrote them, with the library's save_file."""
    memory, _ = saved
    matrix = memory.packed_matrix()
    digest = hashlib.sha256(b"n_in=300 n_out=130 n_stored=400")
    digest.update(matrix.numpy().tobytes())
    path = tmp_path / "by-save-file.safetensors"
    save_file({"matrix": matrix}, path, metadata={"format": "aefast.willshaw", "version": "1", "n_in": "300",
                                                  "n_out": "130", "n_stored": "400", "sha256": digest.hexdigest()})
    assert torch.equal(WillshawMemory.load(path).packed_matrix(), matrix)


@pytest.mark.parametrize("change,match", [
    ("float64 matrix", "the matrix is torch.float64, not int64"),
    ("another tensor", r"expected one tensor 'matrix', found \['bias', 'matrix'\]"),
    ("no checksum", "the checksum is missing"),
])
def test_a_safetensors_file_of_another_layout_is_refused(saved, tmp_path, change, match):
    """Files another program wrote with the library's save_file and our metadata, but not our layout."""
    memory, _ = saved
    matrix = memory.packed_matrix()
    digest = hashlib.sha256(b"n_in=300 n_out=130 n_stored=400")
    digest.update(matrix.numpy().tobytes())
    metadata = {"format": "aefast.willshaw", "version": "1", "n_in": "300", "n_out": "130", "n_stored": "400",
                "sha256": digest.hexdigest()}
    tensors = {"matrix": matrix}
    if change == "float64 matrix":  # the same bytes as float64: only the dtype tells
        tensors = {"matrix": matrix.view(torch.float64)}
    elif change == "another tensor":
        tensors["bias"] = torch.zeros(3)
    else:
        del metadata["sha256"]
    path = tmp_path / "other-layout.safetensors"
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(WillshawFileError, match=match):
        WillshawMemory.load(path)


@pytest.mark.parametrize("rows_per_block", [1, 7, 299, 300])
def test_saves_and_loads_in_blocks_of_rows_keep_every_bit_and_check_every_block(saved, tmp_path, monkeypatch,
                                                                                 rows_per_block):
    memory, _ = saved
    monkeypatch.setattr(memory_file, "BLOCK_BYTES", rows_per_block * 3 * 8)  # 130 units: 3 words a row
    path = tmp_path / "in-blocks.safetensors"
    memory.save(path)
    assert torch.equal(WillshawMemory.load(path).packed_matrix(), memory.packed_matrix())
    _damage(path, offset_from_end=8 * 3 * 2)  # in the last row but one: a late block
    with pytest.raises(WillshawFileError, match="checksum mismatch"):
        WillshawMemory.load(path)


LOAD_WITHIN_A_DATA_LIMIT = """
import resource, sys
from aefast.willshaw import WillshawMemory
from aefast.willshaw import memory_file
with open("/proc/self/status") as status:
    data_now = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))
limit = data_now + int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
memory = WillshawMemory.load(sys.argv[1])
assert memory.n_stored == 1 and memory.sums_indices([[5]])[0].sum() == 2
"""


def test_a_load_holds_no_second_copy_of_the_matrix(tmp_path):
    """The private memory (RLIMIT_DATA) a load may take: the memory's matrix, the map of the file that
    safetensors reads from (a private map, which the limit counts, though its pages are the page
    cache's until written) and a few blocks, not also a whole copy of the matrix, as a read into a new
    tensor makes (older safetensors). (1 GiB matrix: 1 GiB of disk, 2 of memory.)"""
    n_in, n_out = 2**17, 2**16  # 2^17 rows of 8 KiB: 1 GiB
    matrix_bytes = n_in * n_out // 8
    available = _available_bytes(torch.device("cpu"))
    if available < 3 * matrix_bytes:
        pytest.skip(f"needs {3 * matrix_bytes} bytes available, the machine has {available}")
    memory = WillshawMemory(n_in, n_out)
    memory.store_indices(torch.tensor([[5, n_in - 1]]), torch.tensor([[0, n_out - 1]]))
    path = tmp_path / "large.safetensors"
    memory.save(path)
    del memory
    room = 2 * matrix_bytes + 4 * memory_file.BLOCK_BYTES + 2**28  # a whole copy would need 3 matrices
    result = subprocess.run([sys.executable, "-c", LOAD_WITHIN_A_DATA_LIMIT, str(path), str(room)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]


SAVE_FROM_THE_GPU_WITHIN_A_DATA_LIMIT = """
import resource, sys
import torch
from aefast.willshaw import WillshawMemory
memory = WillshawMemory(2**17, 2**16, device="cuda")  # 1 GiB
memory.store_indices(torch.tensor([[5, 2**17 - 1]], device="cuda"), torch.tensor([[0, 2**16 - 1]], device="cuda"))
torch.cuda.synchronize()
with open("/proc/self/status") as status:
    data_now = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))
limit = data_now + 2**29  # half the matrix: a whole host copy does not fit
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
memory.save(sys.argv[1])
"""


@pytest.mark.gpu
def test_a_gpu_memory_is_saved_without_a_whole_copy_on_the_host(tmp_path):
    """The save copies the matrix to the host a block at a time (it copied all of it first: the
    seeds' 116 GiB memory at n = 10^6 could not be saved from a GPU whose host has 128 GiB)."""
    path = tmp_path / "from-gpu.safetensors"
    result = subprocess.run([sys.executable, "-c", SAVE_FROM_THE_GPU_WITHIN_A_DATA_LIMIT, str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = WillshawMemory.load(path)
    assert loaded.n_stored == 1 and loaded.sums_indices([[5]])[0].sum() == 2
