"""Pack files: the footer describes the records exactly, and damage is always detected."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castore.errors import IntegrityError
from castore.format.compression import Codec
from castore.format.packs import (
    ENTRY,
    TRAILER,
    PackBuilder,
    check_pack,
    decode_entries,
    footer_location,
)

records = st.lists(st.binary(min_size=1, max_size=300), max_size=20)


def _build(items: list[bytes]) -> tuple[bytes, bytes, list]:
    builder = PackBuilder()
    for payload in items:
        builder.add(hashlib.sha256(payload).digest(), Codec.RAW, payload, len(payload))
    pack_id, data, entries = builder.finish()
    return pack_id, bytes(data), entries


@given(items=records)
def test_footer_lists_every_record(items: list[bytes]) -> None:
    pack_id, data, entries = _build(items)
    parsed = check_pack(data, pack_id)
    assert parsed == entries
    for payload, entry in zip(items, parsed, strict=True):
        assert entry.chunk_id == hashlib.sha256(payload).digest()
        assert data[entry.offset : entry.offset + entry.stored_len] == payload


@settings(max_examples=200)
@given(items=records.filter(bool), position=st.integers(min_value=0), cut=st.integers(min_value=1))
def test_any_flipped_or_truncated_pack_is_rejected(items, position: int, cut: int) -> None:
    name, data, _ = _build(items)
    flipped = bytearray(data)
    flipped[position % len(data)] ^= 0x01
    with pytest.raises(IntegrityError):
        check_pack(bytes(flipped), name)
    with pytest.raises(IntegrityError):
        check_pack(data[: -(cut % len(data)) or -1], name)


def test_absurd_entry_count_is_rejected_before_reading_the_table() -> None:
    _, data, _ = _build([b"payload"])
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
