"""Damage of every kind gives a clear castore error, never wrong bytes, on every backend."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import castore
from castore.engine.cache import LocalCache
from castore.format import layout, wire
from castore.format.config import StoreConfig
from castore.format.digests import parse_digest
from castore.format.packs import ENTRY, HEADER, TRAILER
from castore.format.streams import StreamDescriptor, encode_stream_object
from tests.conftest import Location
from tests.helpers import flip_byte, pack_paths, pattern, stream_object_path


def _only_pack(store: castore.Store) -> str:
    (path,) = pack_paths(store)
    return path


def _expect_damage(store: castore.Store, digest: str, tmp_path: Path, *words: str) -> None:
    """Every way of reading the digest fails with an IntegrityError naming `words`."""
    with pytest.raises(castore.IntegrityError) as raised:
        store.get(digest)
    for word in words:
        assert word in str(raised.value)
    with pytest.raises(castore.IntegrityError), store.open_stream(digest) as stream:
        stream.read()
    target = tmp_path / "restored.bin"
    with pytest.raises(castore.IntegrityError):
        store.get_file(digest, target)
    assert not target.exists()
    assert not store.verify(read_data=True).ok


def test_flipped_bit_in_compressed_chunk_names_chunk_and_pack(
    store: castore.Store, tmp_path: Path
) -> None:
    digest = store.put(b"compressible " * 1000)
    pack = _only_pack(store)
    flip_byte(store, pack, len(HEADER) + 5)
    _expect_damage(store, digest, tmp_path, "chunk", layout.name_of(pack).hex())


def test_flipped_bit_in_raw_chunk_is_caught(store: castore.Store, tmp_path: Path) -> None:
    digest = store.put(pattern(5000))
    ((chunk_id, _),) = store.repository.stream_descriptor(parse_digest(digest)).chunks()
    pack = _only_pack(store)
    flip_byte(store, pack, len(HEADER) + 100)
    _expect_damage(store, digest, tmp_path, chunk_id.hex(), "corrupt")


def test_truncated_pack_is_reported(store: castore.Store, tmp_path: Path) -> None:
    digest = store.put(pattern(5000))
    pack = _only_pack(store)
    store.repository.backend.write(pack, store.repository.backend.read(pack)[: len(HEADER) + 2000])
    _expect_damage(store, digest, tmp_path, "truncated")


def test_deleted_pack_is_reported(store: castore.Store, tmp_path: Path) -> None:
    digest = store.put(pattern(5000))
    pack = _only_pack(store)
    store.repository.backend.delete(pack)
    _expect_damage(store, digest, tmp_path, "missing", layout.name_of(pack).hex())


def test_absurd_footer_count_is_rejected_by_verify(store: castore.Store) -> None:
    digest = store.put(pattern(5000))
    pack = _only_pack(store)
    data = bytearray(store.repository.backend.read(pack))
    count_at = len(data) - TRAILER.size
    data[count_at : count_at + 4] = (2**32 - 1).to_bytes(4, "little")
    store.repository.backend.write(pack, bytes(data))
    report = store.verify(read_data=True)
    assert "more than the pack holds" in report.problems[0]
    assert report.affected == [digest]


def test_damaged_index_object_is_skipped_and_reported(location: Location, tmp_path: Path) -> None:
    with location.init() as store:
        digest = store.put(pattern(5000))
        (index_path,) = store.repository.backend.list(layout.INDEX)
        flip_byte(store, index_path, -3)
    # A reader without a copy of the object (the writer's cache holds an intact one, which
    # readers may use: tests/test_index_cache.py).
    cold = LocalCache(tmp_path / "cold")
    with castore.open(location.url, cache=cold, **location.options) as reopened:
        assert index_path in reopened.repository.index.damaged
        _expect_damage(reopened, digest, tmp_path, "castore repair", index_path)


def test_malformed_stream_object_is_rejected(store: castore.Store) -> None:
    digest = store.put(pattern(3000))
    store.repository.backend.write(stream_object_path(digest), b"\xc1 not msgpack")
    with pytest.raises(castore.IntegrityError, match="not valid msgpack"):
        store.get(digest)


@pytest.mark.parametrize(
    "change",
    [
        {"size": 2**62},
        {"sizes": [2**40]},
        {"chunks": b"x" * 31},
        {"sha256": b"short"},
        {"size": "many"},
        {"version": 0},
    ],
)
def test_absurd_stream_object_fields_are_rejected(store: castore.Store, change: dict) -> None:
    digest = store.put(pattern(3000))
    descriptor = store.repository.stream_descriptor(parse_digest(digest))
    raw = {"version": 1, **descriptor.to_wire(), **change}
    store.repository.backend.write(stream_object_path(digest), wire.encode(raw))
    with pytest.raises(castore.IntegrityError):
        store.get(digest)


def test_stream_object_of_a_newer_format_asks_for_an_upgrade(store: castore.Store) -> None:
    digest = store.put(pattern(3000))
    raw = {**store.repository.stream_descriptor(parse_digest(digest)).to_wire(), "version": 2}
    store.repository.backend.write(stream_object_path(digest), wire.encode(raw))
    with pytest.raises(castore.UnsupportedFormatError, match="upgrade castore"):
        store.get(digest)


def test_stream_object_swapped_for_another_is_rejected(store: castore.Store) -> None:
    first = store.put(pattern(3000, seed=1))
    second = store.put(pattern(3000, seed=2))
    store.repository.backend.write(
        stream_object_path(first), store.repository.backend.read(stream_object_path(second))
    )
    with pytest.raises(castore.IntegrityError, match="describes another stream"):
        store.get(first)


def test_tampered_chunk_list_fails_the_whole_stream_check(
    store: castore.Store, tmp_path: Path
) -> None:
    original = pattern(3000, seed=1)
    other = store.repository.stream_descriptor(parse_digest(store.put(pattern(3000, seed=2))))
    digest = store.put(original)
    forged = StreamDescriptor(
        hashlib.sha256(original).digest(), other.size, other.chunk_ids, other.chunk_sizes
    )
    store.repository.backend.write(stream_object_path(digest), encode_stream_object(forged))
    _expect_damage(store, digest, tmp_path, "read back as")


def test_missing_digest_is_not_found(store: castore.Store) -> None:
    with pytest.raises(castore.NotFoundError, match="no stream or version with digest"):
        store.get("sha256:" + "ab" * 32)


@pytest.mark.parametrize(
    "text", ["", "sha256:", "sha256:xyz", "md5:" + "0" * 32, "sha256:" + "A" * 64, "0" * 64, None]
)
def test_malformed_digests_are_invalid_input(store: castore.Store, text: object) -> None:
    with pytest.raises(castore.InvalidInputError):
        store.get(text)  # type: ignore[arg-type]


def test_opening_a_location_without_store_says_so(location: Location) -> None:
    with pytest.raises(castore.NotAStoreError, match="not a castore store"):
        location.open()


def test_init_refuses_an_existing_store(location: Location) -> None:
    with location.init() as store:
        digest = store.put(b"keep me")
    with pytest.raises(castore.StoreExistsError):
        location.init()
    with location.open() as store:
        assert store.get(digest) == b"keep me"


@pytest.mark.parametrize(
    "config_bytes",
    [
        b"garbage",
        b"",
        wire.encode([1, 2, 3]),
        wire.encode({"format": "something-else"}),
        wire.encode({"format": "castore", "version": "one"}),
        StoreConfig().encode().replace(b"fastcdc2020", b"rabinkarp02"),
        b"\xdf\xff\xff\xff\xff",  # a map header claiming 4 billion entries
    ],
)
def test_corrupt_config_is_an_integrity_error(location: Location, config_bytes: bytes) -> None:
    location.init().close()
    with location.open() as store:
        store.repository.backend.write(layout.CONFIG, config_bytes)
    with pytest.raises(castore.IntegrityError):
        location.open()


def test_newer_format_is_refused_with_upgrade_hint(location: Location) -> None:
    with location.init(config=StoreConfig(version=3)):
        pass
    with pytest.raises(castore.UnsupportedFormatError, match="upgrade castore"):
        location.open()


def test_put_of_unsupported_type_is_invalid_input(store: castore.Store) -> None:
    with pytest.raises(castore.InvalidInputError, match="cannot store a int"):
        store.put(42)  # type: ignore[arg-type]


def test_put_of_missing_file_is_invalid_input(store: castore.Store, tmp_path: Path) -> None:
    with pytest.raises(castore.InvalidInputError, match="cannot read"):
        store.put(tmp_path / "missing.bin")


def test_footer_entry_size_is_stable() -> None:
    # The entry layout is part of the format: changing it breaks every existing store.
    assert (len(HEADER), ENTRY.size, TRAILER.size) == (16, 49, 48)


def test_a_failed_stream_never_reads_as_a_clean_end(small_store: castore.Store) -> None:
    """After a chunk failed its check, reading on once returned b"": a clean end of a
    truncated stream. Every read after a failure fails again."""
    data = pattern(200_000)
    digest = small_store.put(data)
    *_, (last_chunk, _) = small_store.repository.stream_descriptor(parse_digest(digest)).chunks()
    location = small_store.repository.index.lookup(last_chunk)
    assert location is not None
    flip_byte(small_store, layout.pack_path(location.pack_id), location.entry.offset + 10)
    with small_store.open_stream(digest) as stream:
        read = b""
        with pytest.raises(castore.IntegrityError, match="corrupt"):
            while block := stream.read(4096):
                read += block
        assert data.startswith(read) and len(read) < len(data)
        for _ in range(2):
            with pytest.raises(castore.IntegrityError, match="corrupt"):
                stream.read()
