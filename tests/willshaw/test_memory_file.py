"""save/load: a round trip keeps every bit and count; a damaged, truncated, appended-to or foreign file
raises WillshawFileError and never loads; a save replaces the old file atomically."""
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from aefast.willshaw import WillshawFileError, WillshawMemory
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
