"""The merged chunk table saved in the local cache, memory-mapped on the next open.

Local only (docs/DECISIONS.md, "Compact index"), never in a store: the sorted records,
then the directory, then a msgpack header (pack ids, the index objects the table was
built from and the packs of each), then a trailer with the three lengths, the SHA-256
of everything before it and a magic. A file that fails any check is ignored (rebuilt).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import secrets
import struct
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

from castore.errors import CastoreError
from castore.format import wire

MAGIC = b"CASTTBL1"
TRAILER = struct.Struct("<QQQ32s8s")
VERSION = 1


@dataclass(frozen=True)
class TableFile:
    """What a saved table holds: the ChunkTable's sorted part and the Index's bookkeeping."""

    records: bytes | mmap.mmap
    directory: array[int]
    shift: int
    distinct: int
    pack_ids: list[bytes]
    objects: dict[str, list[int]]
    """Each index object the table was built from, with the numbers of its packs."""


def _digest(parts: list[bytes | mmap.mmap | memoryview], lengths: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    digest.update(lengths)
    return digest.digest()


def save(path: Path, table: TableFile) -> None:
    """Write the table whole and rename it into place; failures are ignored (a cache)."""
    header = wire.encode(
        {
            "version": VERSION,
            "shift": table.shift,
            "distinct": table.distinct,
            "packs": b"".join(table.pack_ids),
            "objects": table.objects,
            "byteorder": sys.byteorder,
        }
    )
    directory = table.directory.tobytes()
    lengths = struct.pack("<QQQ", len(table.records), len(directory), len(header))
    digest = _digest([table.records, directory, header], lengths)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(temporary, "wb") as file:
            for part in (table.records, directory, header):
                file.write(part)
            file.write(lengths + digest + MAGIC)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def load(path: Path) -> TableFile | None:
    """The saved table if present and intact; its records are memory-mapped, not read."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size < TRAILER.size:
                return None
            file.seek(size - TRAILER.size)
            records_len, directory_len, header_len, digest, magic = TRAILER.unpack(
                file.read(TRAILER.size)
            )
            if (
                magic != MAGIC
                or not records_len
                or records_len + directory_len + header_len + TRAILER.size != size
            ):
                return None
            records = mmap.mmap(file.fileno(), records_len, access=mmap.ACCESS_READ)
            file.seek(records_len)
            directory, header = file.read(directory_len), file.read(header_len)
    except OSError:
        return None
    lengths = struct.pack("<QQQ", records_len, directory_len, header_len)
    if _digest([records, directory, header], lengths) != digest:
        return None
    try:
        fields = wire.decode_map(header, f"index table {path}")
    except CastoreError:
        return None
    if fields.get("version") != VERSION or fields.get("byteorder") != sys.byteorder:
        return None
    packs = fields["packs"]
    return TableFile(
        records,
        array("I", directory),
        fields["shift"],
        fields["distinct"],
        [packs[at : at + 32] for at in range(0, len(packs), 32)],
        fields["objects"],
    )
