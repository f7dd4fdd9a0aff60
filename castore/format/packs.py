"""Pack files: chunk records followed by a footer that lists them (docs/FORMAT.md, "Packs")."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from castore.errors import IntegrityError
from castore.format.compression import Codec, decode_chunk
from castore.format.config import MAX_CHUNK_LIMIT

PACK_MAGIC = b"CASTPACK"
FOOTER_MAGIC = b"CASTFOOT"
PACK_VERSION = 1
HEADER = PACK_MAGIC + bytes([PACK_VERSION]) + bytes(7)
ENTRY = struct.Struct("<32sQIIB")
TRAILER = struct.Struct("<II32s8s")


@dataclass(frozen=True, slots=True)
class PackEntry:
    """One chunk record of a pack: where its stored bytes are and how to decode them."""

    chunk_id: bytes
    offset: int
    stored_len: int
    raw_len: int
    codec: int


def encode_entries(entries: list[PackEntry]) -> bytes:
    """The fixed-size binary form of a footer's entries, shared with index objects."""
    return b"".join(
        ENTRY.pack(e.chunk_id, e.offset, e.stored_len, e.raw_len, e.codec) for e in entries
    )


def check_entries(data: bytes | memoryview, what: str, records_end: int | None = None) -> None:
    """Validate entries: known codecs, sane lengths, contiguous records.

    `records_end`, when the whole pack is known, is where the last record must end. No
    PackEntry is made, so the index can load millions of entries cheaply.
    """
    if len(data) % ENTRY.size:
        raise IntegrityError(f"{what}: entry table of {len(data)} bytes is not whole entries")
    codecs = Codec._value2member_map_
    expected_offset = len(HEADER)
    for chunk_id, offset, stored_len, raw_len, codec in ENTRY.iter_unpack(data):
        if codec not in codecs:
            raise IntegrityError(f"{what}: chunk {chunk_id.hex()} has unknown codec {codec}")
        if not 1 <= raw_len <= MAX_CHUNK_LIMIT or not 1 <= stored_len <= MAX_CHUNK_LIMIT + 1024:
            raise IntegrityError(f"{what}: chunk {chunk_id.hex()} has absurd lengths")
        if offset != expected_offset:
            raise IntegrityError(
                f"{what}: chunk {chunk_id.hex()} is not at offset {expected_offset}"
            )
        expected_offset += stored_len
    if records_end is not None and expected_offset != records_end:
        raise IntegrityError(
            f"{what}: records end at {expected_offset}, footer starts at {records_end}"
        )


def decode_entries(
    data: bytes | memoryview, what: str, records_end: int | None = None
) -> list[PackEntry]:
    """Parse and validate entries (check_entries)."""
    check_entries(data, what, records_end)
    return [PackEntry(*fields) for fields in ENTRY.iter_unpack(data)]


class PackBuilder:
    """Accumulates chunk records; `finish` appends the footer and returns the pack bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray(HEADER)
        self._entries: list[PackEntry] = []

    @property
    def size(self) -> int:
        """Bytes of header and records so far."""
        return len(self._buffer)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, chunk_id: bytes, codec: Codec, payload: bytes | memoryview, raw_len: int) -> None:
        """Append one chunk record."""
        self._entries.append(PackEntry(chunk_id, len(self._buffer), len(payload), raw_len, codec))
        self._buffer += payload

    def finish(self) -> tuple[bytes, bytearray, list[PackEntry]]:
        """The pack's id, its complete bytes (records, footer, trailer) and its entries.

        A pack is named by the SHA-256 of its entry table: the table lists every chunk's
        id, so the name commits to the content without hashing the records again.
        """
        table = encode_entries(self._entries)
        pack_id = hashlib.sha256(table).digest()
        self._buffer += table
        self._buffer += TRAILER.pack(len(self._entries), 0, pack_id, FOOTER_MAGIC)
        return pack_id, self._buffer, self._entries


def _parse_trailer(trailer: bytes, pack_size: int, what: str) -> tuple[int, bytes]:
    """Entry count and table digest from a trailer, checked against the pack's size."""
    if len(trailer) != TRAILER.size:
        raise IntegrityError(f"{what} is truncated ({pack_size} bytes)")
    count, reserved, table_digest, magic = TRAILER.unpack(trailer)
    if magic != FOOTER_MAGIC or reserved:
        raise IntegrityError(f"{what} has no footer: it is truncated or not a pack")
    if len(HEADER) + count * ENTRY.size + TRAILER.size > pack_size:
        raise IntegrityError(f"{what} footer claims {count} entries, more than the pack holds")
    return count, table_digest


def parse_footer(table: bytes, table_digest: bytes, table_start: int, what: str) -> list[PackEntry]:
    """Validate a footer's entry table against its digest and the records before it."""
    if hashlib.sha256(table).digest() != table_digest:
        raise IntegrityError(f"{what} footer does not match its checksum")
    return decode_entries(table, what, records_end=table_start)


def footer_location(trailer: bytes, pack_size: int, what: str) -> tuple[int, int, bytes]:
    """(table start, table length, table digest) of a pack, from its last TRAILER.size bytes."""
    count, table_digest = _parse_trailer(trailer, pack_size, what)
    table_length = count * ENTRY.size
    return pack_size - TRAILER.size - table_length, table_length, table_digest


def check_pack(data: bytes | memoryview, pack_id: bytes) -> list[PackEntry]:
    """Check a whole pack (header, footer against its name, every record) and list it."""
    what = f"pack {pack_id.hex()}"
    if len(data) < len(HEADER) + TRAILER.size or bytes(data[: len(PACK_MAGIC)]) != PACK_MAGIC:
        raise IntegrityError(f"{what} does not start with the pack magic")
    if not 1 <= data[len(PACK_MAGIC)] <= PACK_VERSION or any(data[len(PACK_MAGIC) + 1 : 16]):
        raise IntegrityError(f"{what} has an unknown pack version or damaged header")
    start, length, digest = footer_location(bytes(data[-TRAILER.size :]), len(data), what)
    if digest != pack_id:
        raise IntegrityError(f"{what} does not match its name: its footer is damaged")
    entries = parse_footer(bytes(data[start : start + length]), digest, start, what)
    view = memoryview(data)
    for entry in entries:
        where = f"chunk {entry.chunk_id.hex()} in {what}"
        stored = view[entry.offset : entry.offset + entry.stored_len]
        raw = decode_chunk(entry.codec, stored, entry.raw_len, where)
        if hashlib.sha256(raw).digest() != entry.chunk_id:
            raise IntegrityError(f"{where} is corrupt: its bytes do not match its SHA-256")
    return entries
