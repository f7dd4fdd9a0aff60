"""Seekable reads: a version's bytes and a snapshot's files read from any position, every
chunk verified, the holes of sparse files as zeros."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import castore
from tests.conftest import SMALL_PACKS
from tests.helpers import flip_byte, pack_paths, pattern

DATA = pattern(300_000, seed=11)
SPARSE_SIZE = 1 << 20
SPARSE_DATA = {100_000: pattern(5000, seed=1), 700_000: pattern(70_000, seed=2)}


def _sparse_bytes() -> bytes:
    content = bytearray(SPARSE_SIZE)
    for offset, data in SPARSE_DATA.items():
        content[offset : offset + len(data)] = data
    return bytes(content)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[castore.Store]:
    """A local store holding DATA as m:1 and a snapshot with a plain and a sparse file."""
    root = tmp_path_factory.mktemp("seekable")
    src = root / "src"
    src.mkdir()
    (src / "plain.bin").write_bytes(DATA)
    with open(src / "sparse.img", "wb") as file:
        file.truncate(SPARSE_SIZE)
        for offset, data in SPARSE_DATA.items():
            file.seek(offset)
            file.write(data)
    with castore.init(str(root / "store"), config=SMALL_PACKS) as opened:
        opened.save(DATA, "m", serializer="raw")
        opened.backup(src, "b")
        yield opened


reads = st.lists(
    st.tuples(st.integers(0, 2**21), st.integers(0, 2**21), st.sampled_from([0, 1, 2])),
    max_size=12,
)


def _replay(file: io.BufferedIOBase, expected: bytes, steps: list[tuple[int, int, int]]) -> None:
    """Seek and read as `steps` say, against the same on the bytes in memory."""
    model = io.BytesIO(expected)
    for offset, count, whence in steps:
        if whence == io.SEEK_CUR:  # backwards or forwards, never before the start
            offset = max(offset - 2**20, -model.tell())
        elif whence == io.SEEK_END:
            offset = -min(offset, len(expected))
        assert file.seek(offset, whence) == model.seek(offset, whence)
        assert file.read(count) == model.read(count)
        assert file.tell() == model.tell()


@settings(max_examples=60, deadline=None)
@given(steps=reads, which=st.sampled_from(["version", "plain", "sparse"]))
def test_reads_from_any_position_return_the_stored_bytes(
    store: castore.Store, steps: list[tuple[int, int, int]], which: str
) -> None:
    if which == "version":
        file, expected = store.open_version("m:1"), DATA
    elif which == "plain":
        file, expected = store.open_snapshot_file("b:1", "plain.bin"), DATA
    else:
        file, expected = store.open_snapshot_file("b:1", "sparse.img"), _sparse_bytes()
    with file:
        assert file.seekable() and file.size == len(expected)
        _replay(file, expected, steps)


def test_seeks_the_stream_cannot_serve_are_value_errors(store: castore.Store) -> None:
    for file in (store.open_version("m:1"), store.open_snapshot_file("b:1", "sparse.img")):
        with file:
            for whence in (3, 4):  # SEEK_DATA, SEEK_HOLE: passed through by BufferedReader
                with pytest.raises(ValueError, match="invalid whence"):
                    file.seek(0, whence)
            with pytest.raises(ValueError):
                file.seek(-1)
            assert file.read(5) == (DATA if file.size == len(DATA) else _sparse_bytes())[:5]


def test_a_sparse_file_is_read_as_its_holes_and_extents(store: castore.Store) -> None:
    if store.snapshot_entry("b:1", "sparse.img").extents is None:
        pytest.skip("this file system does not report holes (SEEK_HOLE)")
    with store.open_snapshot_file("b:1", "sparse.img") as file:
        assert file.read() == _sparse_bytes()


def test_seekable_formats_open_straight_from_the_store(tmp_path: Path) -> None:
    """zipfile reads its directory from the end: it needs seek, as parquet readers do."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("weights.bin", pattern(50_000, seed=3))
    with castore.init(str(tmp_path / "s")) as opened:
        version = opened.save(buffer.getvalue(), "archive", serializer="raw")
        with opened.open_version(version.reference) as file:
            assert zipfile.ZipFile(file).read("weights.bin") == pattern(50_000, seed=3)


def test_a_read_after_a_seek_is_verified(tmp_path: Path) -> None:
    with castore.init(str(tmp_path / "s"), config=SMALL_PACKS) as opened:
        opened.save(DATA, "m", serializer="raw")
        flip_byte(opened, sorted(pack_paths(opened))[-1], 200)  # one chunk of the stream
        with opened.open_version("m:1") as file, pytest.raises(castore.IntegrityError):
            for offset in range(0, len(DATA), 1000):  # chunks are at least 1024 bytes
                file.seek(offset)
                file.read(1)
