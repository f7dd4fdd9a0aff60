"""Conformance: bytes put into any backend come back exactly, by digest, in every form."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import castore
from castore.format import layout
from tests.conftest import SMALL_PACKS, Location
from tests.helpers import pattern


def _check_roundtrip(store: castore.Store, data: bytes) -> str:
    digest = store.put(data)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.get(digest) == data
    with store.open_stream(digest) as stream:
        assert stream.read() == data
    return digest


@pytest.mark.parametrize("size", [0, 1, 100, 4096])
def test_tiny_streams_round_trip(store: castore.Store, size: int) -> None:
    _check_roundtrip(store, pattern(size))


def test_chunk_boundary_sizes_round_trip(small_store: castore.Store) -> None:
    params = small_store.config.chunker
    for size in sorted(
        {
            params.min_size - 1,
            params.min_size,
            params.min_size + 1,
            params.avg_size,
            params.max_size - 1,
            params.max_size,
            params.max_size + 1,
            2 * params.max_size,
        }
    ):
        _check_roundtrip(small_store, pattern(size, seed=size))


def test_multi_pack_stream_round_trips_and_fills_several_packs(
    location: Location, small_store: castore.Store
) -> None:
    data = pattern(600_000)
    digest = _check_roundtrip(small_store, data)
    assert len(small_store.repository.backend.list(layout.PACKS)) >= 5
    with location.open() as reopened:
        assert reopened.get(digest) == data


def test_put_accepts_file_objects_paths_and_read_only_streams(
    store: castore.Store, tmp_path: Path
) -> None:
    data = pattern(300_000, seed=7)
    path = tmp_path / "input.bin"
    path.write_bytes(data)

    class ReadOnly:
        def __init__(self) -> None:
            self._inner = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self._inner.read(min(size, 1000))  # short reads, as pipes give

    expected = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(path, "rb") as file:
        assert store.put(file) == expected
    assert store.put(path) == expected
    assert store.put(ReadOnly()) == expected
    assert store.put(bytearray(data)) == expected
    assert store.get(expected) == data


def test_digest_equals_sha256sum(store: castore.Store, tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(pattern(123_457, seed=3))
    printed = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True)
    assert store.put(path) == "sha256:" + printed.stdout.split()[0]


def test_get_file_writes_verified_copy(store: castore.Store, tmp_path: Path) -> None:
    data = pattern(200_000, seed=5)
    digest = store.put(data)
    target = tmp_path / "out" / "out.bin"
    target.parent.mkdir()
    store.get_file(digest, target)
    assert target.read_bytes() == data
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_open_stream_reads_in_small_pieces(small_store: castore.Store) -> None:
    data = pattern(100_000, seed=11)
    digest = small_store.put(data)
    pieces = []
    with small_store.open_stream(digest) as stream:
        while piece := stream.read(777):
            pieces.append(piece)
    assert b"".join(pieces) == data


def test_stream_object_is_named_by_content_digest(store: castore.Store) -> None:
    digest = store.put(b"named by content")
    raw = bytes.fromhex(digest.removeprefix("sha256:"))
    assert store.repository.backend.exists(layout.stream_path(raw))
    assert store.contains(digest)
    assert not store.contains("sha256:" + "0" * 64)


@pytest.mark.parametrize("new_location", ["memory", "local"], indirect=True)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=60_000)
    | st.builds(lambda n, s: pattern(n, s), st.integers(0, 200_000), st.integers())
)
def test_random_streams_round_trip(new_location, data: bytes) -> None:
    with new_location().init(config=SMALL_PACKS) as store:
        _check_roundtrip(store, data)


@pytest.mark.parametrize("new_location", ["s3-moto", "s3-radosgw"], indirect=True)
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=50_000))
def test_random_streams_round_trip_on_s3(new_location, data: bytes) -> None:
    with new_location().init(config=SMALL_PACKS) as store:
        _check_roundtrip(store, data)


def test_many_threads_put_and_get_at_once(small_store: castore.Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    blobs = [pattern(50_000 + n, seed=n) for n in range(8)]
    with ThreadPoolExecutor(4) as pool:
        digests = list(pool.map(small_store.put, blobs))
        assert list(pool.map(small_store.get, digests)) == blobs


def test_store_reports_its_location(store: castore.Store) -> None:
    assert store.url in repr(store)
    assert os.fspath(store.url)
