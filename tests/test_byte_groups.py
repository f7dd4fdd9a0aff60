"""Byte-grouped chunks (codec 2, docs/FORMAT.md 6.2) and store format version 2.

tests/data/store-v1 is a version 1 store written by castore before byte groups (commit
bfbd0c6: `put(b"hello")`, 24576 float32 weights saved raw as `weights/f32`, a text saved
as `docs/readme` and tagged `production`, pack size 64 KiB).
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import castore
from castore.format import layout
from castore.format.compression import (
    ChunkEncoder,
    Codec,
    decode_chunk,
    encode_grouped,
    encode_zstd,
)
from castore.format.config import FORMAT_VERSION, StoreConfig
from castore.format.packs import check_pack
from tests.helpers import ROOT, pack_paths, pattern

V1_FIXTURE = ROOT / "tests" / "data" / "store-v1"
MIN_SAVING = 1 / 32


def weights(count: int, seed: int = 0) -> np.ndarray:
    """float32 values spread as trained weights are."""
    return (np.random.default_rng(seed).standard_normal(count) * 0.02).astype(np.float32)


def codecs_in(store: castore.Store, paths: set[str] | None = None) -> list[int]:
    """The codec of every chunk record in the store's packs (or those at `paths`), each
    pack checked whole."""
    backend = store.repository.backend
    found = []
    for path in pack_paths(store) if paths is None else paths:
        pack_id = layout.name_of(path)
        assert pack_id is not None
        found += [entry.codec for entry in check_pack(backend.read(path), pack_id)]
    return found


def stored_bytes(store: castore.Store) -> int:
    backend = store.repository.backend
    return sum(len(backend.read(path)) for path in pack_paths(store))


# -- the codec ----------------------------------------------------------------------------------

chunk_data = st.one_of(
    st.binary(min_size=1, max_size=3000),
    st.builds(
        lambda n, seed, tail: weights(n, seed).tobytes() + bytes(range(tail)),
        st.integers(0, 700),
        st.integers(0, 2**32 - 1),
        st.integers(0, 3),
    ).filter(len),
    st.builds(lambda n: bytes(n), st.integers(1, 5000)),
)


@settings(max_examples=300, deadline=None)
@given(chunk_data, st.sampled_from([2, 4]), st.sampled_from([0.0, MIN_SAVING, 0.5]))
def test_grouped_payloads_round_trip(data: bytes, width: int, min_saving: float) -> None:
    payload = encode_grouped(memoryview(data), width, min_saving)
    assert payload[0] == width
    assert bytes(decode_chunk(Codec.GROUPED, memoryview(payload), len(data), "t")) == data


@settings(max_examples=200, deadline=None)
@given(st.lists(chunk_data, min_size=1, max_size=40), st.sampled_from([1, 2]))
def test_the_encoder_round_trips_every_chunk_of_a_stream(chunks: list[bytes], version: int) -> None:
    encoder = ChunkEncoder(StoreConfig(version=version))
    for data in chunks:
        codec, payload = encoder.encode(memoryview(data))
        assert version == 2 or codec != Codec.GROUPED
        assert len(payload) <= len(data)
        assert bytes(decode_chunk(codec, memoryview(payload), len(data), "t")) == data


def test_group_i_holds_byte_i_of_every_word_and_the_tail_follows_raw() -> None:
    data = struct.pack("<ff", 1.0, 2.0) + b"\x2a"
    payload = encode_grouped(memoryview(data), 4, MIN_SAVING)
    header = bytes([4]) + struct.pack("<BI", 0, 2) * 4
    assert payload == header + b"\x00\x00" + b"\x00\x00" + b"\x80\x00" + b"\x3f\x40" + b"\x2a"


def test_a_group_is_zstd_only_when_it_saves_min_saving() -> None:
    data = weights(16384).tobytes()
    payload = encode_grouped(memoryview(data), 4, MIN_SAVING)
    group_codecs = [payload[1 + 5 * i] for i in range(4)]
    # The low mantissa bytes are noise; the byte holding sign and exponent compresses.
    assert group_codecs[0] == Codec.RAW and group_codecs[3] == Codec.ZSTD
    assert encode_grouped(memoryview(data), 4, 0.99)[1::5][:4] == bytes(4)


def test_float_chunks_are_grouped_and_text_is_not() -> None:
    encoder = ChunkEncoder(StoreConfig())
    f32, bf16 = weights(16384), (weights(32768).view(np.uint32) >> 16).astype(np.uint16)
    text = b"castore keeps every version of a model.\n" * 1600
    codec, payload = encoder.encode(memoryview(f32.tobytes()))
    assert (codec, payload[0]) == (Codec.GROUPED, 4)
    assert len(payload) < len(encode_zstd(memoryview(f32.tobytes()), StoreConfig().compression)[1])
    # Under the float32 plan, bf16 stores at another ratio: the next chunk is resampled.
    assert encoder.encode(memoryview(bf16.tobytes()))[1][0] == 4
    codec, payload = encoder.encode(memoryview(bf16.tobytes()))
    assert (codec, payload[0]) == (Codec.GROUPED, 2)
    assert encoder.encode(memoryview(text))[0] == Codec.ZSTD  # text resamples at once
    assert ChunkEncoder(StoreConfig()).encode(memoryview(pattern(65536)))[0] == Codec.RAW


def test_a_version_1_config_never_groups() -> None:
    encoder = ChunkEncoder(StoreConfig(version=1))
    for _ in range(20):
        assert encoder.encode(memoryview(weights(16384).tobytes()))[0] == Codec.ZSTD


# -- malformed payloads -------------------------------------------------------------------------

RAW_LEN = 4001  # 1000 words of 4 bytes and a 1-byte tail
VALID = encode_grouped(memoryview(weights(1000).tobytes() + b"!"), 4, MIN_SAVING)


def _header(width: int, groups: list[tuple[int, int]]) -> bytes:
    return bytes([width]) + b"".join(struct.pack("<BI", codec, length) for codec, length in groups)


def _zstd(data: bytes, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=content_size).compress(data)


def _lying_frame() -> bytes:
    """A 2000-byte frame in the second group's place, where 1000 bytes belong."""
    frame = _zstd(bytes(2000))
    groups = [(0, 1000), (1, len(frame)), (0, 1000), (0, 1000)]
    return _header(4, groups) + bytes(1000) + frame + bytes(2001)


MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "width 0"),
    "width 3": (b"\x03" + VALID[1:], "width 3"),
    "width 8": (b"\x08" + VALID[1:], "width 8"),
    "truncated header": (VALID[:14], "header is truncated"),
    "unknown group codec": (VALID[:6] + b"\x02" + VALID[7:], "group 1 has unknown codec 2"),
    "group codec 255": (VALID[:16] + b"\xff" + VALID[17:], "group 3 has unknown codec"),
    "lengths too short": (VALID[:-1], "do not fill"),
    "lengths too long": (VALID + b"\x00", "do not fill"),
    "a length beyond the payload": (
        _header(4, [(0, 2**32 - 1), (0, 1000), (0, 1000), (0, 1000)]) + bytes(4001),
        "do not fill",
    ),
    "raw group of the wrong size": (
        _header(4, [(0, 999), (0, 1001), (0, 1000), (0, 1000)]) + bytes(4001),
        "raw byte group 0 holds 999 bytes",
    ),
    "zstd frame size lies": (_lying_frame(), "declares 2000 bytes, not 1000"),
    "zstd frame without a size": (
        _header(4, [(1, len(_zstd(bytes(1000), False)))] + [(0, 1000)] * 3)
        + _zstd(bytes(1000), False)
        + bytes(3001),
        "declares -1 bytes",
    ),
    "garbage zstd": (
        _header(4, [(1, 20), (0, 1000), (0, 1000), (0, 1000)])
        + b"\x28\xb5\x2f\xfd" * 5
        + bytes(3001),
        "byte group 0",
    ),
    "truncated zstd": (
        _header(4, [(1, 12)] + [(0, 1000)] * 3) + _zstd(pattern(1000))[:12] + bytes(3001),
        "byte group 0",
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_every_malformed_grouped_payload_is_an_integrity_error(name: str) -> None:
    payload, message = MALFORMED[name]
    with pytest.raises(castore.IntegrityError, match=message) as caught:
        decode_chunk(Codec.GROUPED, memoryview(payload), RAW_LEN, "chunk c0ffee")
    assert "chunk c0ffee" in str(caught.value)


def test_the_valid_payload_the_malformed_ones_come_from_decodes() -> None:
    assert len(decode_chunk(Codec.GROUPED, memoryview(VALID), RAW_LEN, "t")) == RAW_LEN


def _peak(decode: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(castore.IntegrityError):
            decode()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_decoding_allocates_no_more_than_the_raw_length() -> None:
    # A frame of 16 MiB of zeros is 500 bytes: a reader that trusted it would allocate it.
    bomb = _zstd(bytes(16 * 1024 * 1024))
    payload = _header(2, [(1, len(bomb)), (1, len(bomb))]) + bomb + bomb
    assert _peak(lambda: decode_chunk(Codec.GROUPED, memoryview(payload), 2000, "t")) < 64_000
    huge_raw = 16 * 1024 * 1024
    payload = _header(4, [(0, 10)] * 4) + bytes(40)  # claims 16 MiB, holds 40 bytes
    assert _peak(lambda: decode_chunk(Codec.GROUPED, memoryview(payload), huge_raw, "t")) < 64_000


# -- stores -------------------------------------------------------------------------------------


def test_new_stores_are_version_2(tmp_path: Path) -> None:
    assert FORMAT_VERSION == 2
    with castore.init(tmp_path / "s") as store:
        assert store.config.version == 2 and store.config.byte_groups
    with castore.open(tmp_path / "s") as store:
        assert store.config.version == 2


def test_float_weights_store_smaller_with_byte_groups(tmp_path: Path) -> None:
    data = weights(1024 * 1024).tobytes()
    sizes = {}
    for version in (1, 2):
        with castore.init(tmp_path / f"v{version}", config=StoreConfig(version=version)) as store:
            digest = store.put(data)
            assert store.get(digest) == data
            codecs = set(codecs_in(store))
            assert (Codec.GROUPED in codecs) == (version == 2), codecs
            sizes[version] = stored_bytes(store)
    assert sizes[2] < 0.93 * sizes[1], sizes


def test_a_version_1_store_never_gets_grouped_chunks(tmp_path: Path) -> None:
    source = castore.init(tmp_path / "v2")
    dest = castore.init(tmp_path / "v1", config=StoreConfig(version=1))
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "small.bin").write_bytes(weights(4096).tobytes())
    (tmp_path / "tree" / "large.bin").write_bytes(weights(400_000, seed=1).tobytes())
    with source, dest:
        source.save(weights(300_000, seed=2).tobytes(), "w", serializer="raw")
        source.backup(tmp_path / "tree", "backups/tree")
        assert Codec.GROUPED in codecs_in(source)
        dest.put(weights(300_000, seed=3).tobytes())
        dest.backup(tmp_path / "tree", "backups/mine")
        source.copy("w", dest)
        source.copy("backups/tree", dest)
        assert Codec.GROUPED not in codecs_in(dest)
        assert dest.load("w:1") == source.load("w:1")
        assert not dest.verify(read_data=True).problems


def test_repacking_re_encodes_grouped_chunks_found_in_a_version_1_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    floats = weights(200_000).tobytes()
    with castore.init(tmp_path / "s", config=StoreConfig(pack_size=16 * 1024 * 1024)) as store:
        store.save(floats + pattern(600_000), "w", serializer="raw")
        store.save(floats, "w", serializer="raw")
        store.delete("w:1")
        config = store.config
        # Another writer put codec 2 into what is now declared a version 1 store.
        store.repository.backend.write(
            layout.CONFIG, StoreConfig(**{**config.__dict__, "version": 1}).encode()
        )
    monkeypatch.setenv("CASTORE_LEASE_TTL", "-1")  # no lease to wait out: garbage goes now
    with castore.open(tmp_path / "s") as store:
        grouped_before = codecs_in(store).count(Codec.GROUPED)
        assert store.config.version == 1 and grouped_before
        packs_before = set(pack_paths(store))
        assert store.gc().packs_repacked == 1
        new_packs = set(pack_paths(store)) - packs_before
        assert new_packs and codecs_in(store).count(Codec.GROUPED) < grouped_before
        assert Codec.GROUPED not in codecs_in(store, new_packs)
        assert store.load("w:2") == floats
        assert not store.verify(read_data=True).problems


@pytest.fixture
def v1_store(tmp_path: Path) -> castore.Store:
    shutil.copytree(V1_FIXTURE, tmp_path / "v1")
    return castore.open(tmp_path / "v1")


def test_a_version_1_store_written_by_an_older_castore_reads(v1_store: castore.Store) -> None:
    with v1_store as store:
        assert store.config.version == 1 and not store.config.byte_groups
        assert store.get("sha256:" + hashlib.sha256(b"hello").hexdigest()) == b"hello"
        assert store.load("weights/f32:1") == weights(24576, seed=14).tobytes()
        text = b"castore keeps every version.\n" * 600
        assert store.load("docs/readme:production") == text
        assert set(codecs_in(store)) <= {Codec.RAW, Codec.ZSTD}
        assert not store.verify(read_data=True).problems


def test_writing_into_an_old_version_1_store_keeps_it_version_1(
    v1_store: castore.Store, tmp_path: Path
) -> None:
    with v1_store as store:
        store.save(weights(300_000, seed=4).tobytes(), "weights/f32", serializer="raw")
        assert Codec.GROUPED not in codecs_in(store)
    assert b"\xa7version\x01" in (tmp_path / "v1" / "config").read_bytes()
    with castore.open(tmp_path / "v1") as store:
        assert store.load("weights/f32:2") == weights(300_000, seed=4).tobytes()
        assert not store.verify(read_data=True).problems
