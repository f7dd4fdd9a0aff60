"""Pack files: the footer describes the records exactly, and damage is always detected."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castore.compression import Codec
from castore.errors import IntegrityError
from castore.packs import (
    ENTRY,
    TRAILER,
    PackBuilder,
    decode_entries,
    footer_location,
    parse_pack,
)

records = st.lists(
    st.tuples(st.binary(min_size=32, max_size=32), st.binary(min_size=1, max_size=300)),
    max_size=20,
)


def _build(items: list[tuple[bytes, bytes]]) -> tuple[bytes, list]:
    builder = PackBuilder()
    for chunk_id, payload in items:
        builder.add(chunk_id, Codec.RAW, payload, len(payload))
    data, entries = builder.finish()
    return bytes(data), entries


@given(items=records)
def test_footer_lists_every_record(items: list[tuple[bytes, bytes]]) -> None:
    data, entries = _build(items)
    parsed = parse_pack(data, hashlib.sha256(data).digest())
    assert parsed == entries
    for (chunk_id, payload), entry in zip(items, parsed, strict=True):
        assert entry.chunk_id == chunk_id
        assert data[entry.offset : entry.offset + entry.stored_len] == payload


@settings(max_examples=200)
@given(items=records.filter(bool), position=st.integers(min_value=0), cut=st.integers(min_value=1))
def test_any_flipped_or_truncated_pack_is_rejected(items, position: int, cut: int) -> None:
    data, _ = _build(items)
    name = hashlib.sha256(data).digest()
    flipped = bytearray(data)
    flipped[position % len(data)] ^= 0x01
    with pytest.raises(IntegrityError):
        parse_pack(bytes(flipped), name)
    with pytest.raises(IntegrityError):
        parse_pack(data[: -(cut % len(data)) or -1], name)


def test_absurd_entry_count_is_rejected_before_reading_the_table() -> None:
    data, _ = _build([(b"i" * 32, b"payload")])
    trailer = bytearray(data[-TRAILER.size :])
    trailer[0:4] = (10**9).to_bytes(4, "little")
    with pytest.raises(IntegrityError, match="more than the pack holds"):
        footer_location(bytes(trailer), len(data), "pack")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((b"i" * 32, 16, 10, 10, 7), "unknown codec"),
        ((b"i" * 32, 16, 0, 10, 0), "absurd lengths"),
        ((b"i" * 32, 16, 10, 2**31, 1), "absurd lengths"),
        ((b"i" * 32, 99, 10, 10, 0), "not at offset"),
    ],
)
def test_bad_entries_are_rejected(fields: tuple, message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        decode_entries(ENTRY.pack(*fields), "pack")


def test_entry_table_of_partial_entries_is_rejected() -> None:
    with pytest.raises(IntegrityError, match="not whole entries"):
        decode_entries(b"x" * (ENTRY.size + 1), "pack")
