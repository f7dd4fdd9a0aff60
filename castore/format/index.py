"""Index objects: the pack footers one writer committed (docs/FORMAT.md, "Index objects")."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from castore.errors import IntegrityError
from castore.format import wire
from castore.format.packs import PackEntry, check_entries, encode_entries

INDEX_VERSION = 1


PackListing = tuple[bytes, list[PackEntry]]
"""A pack's id and its footer entries."""


PackTable = tuple[bytes, bytes]
"""A pack's id and its entry table, byte for byte as in its footer."""


def encode_index_object(packs: Iterable[PackListing]) -> bytes:
    """An index object: the footers of the packs one writer committed."""
    return encode_index_tables((pack_id, encode_entries(entries)) for pack_id, entries in packs)


def encode_index_tables(tables: Iterable[PackTable]) -> bytes:
    """An index object from the packs' entry tables."""
    return wire.encode(
        {"version": INDEX_VERSION, "packs": [[pack_id, table] for pack_id, table in tables]}
    )


def decode_index_tables(data: bytes, what: str) -> list[PackTable]:
    """Parse and validate an index object, keeping each pack's entries as their bytes."""
    raw = wire.decode_map(data, what)
    wire.check_version(raw, INDEX_VERSION, what)
    tables = []
    for item in wire.field(raw, "packs", list, what):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], bytes)
            or len(item[0]) != 32
            or not isinstance(item[1], bytes)
        ):
            raise IntegrityError(f"{what} has a malformed pack listing")
        if hashlib.sha256(item[1]).digest() != item[0]:
            raise IntegrityError(f"{what} lists pack {item[0].hex()} with another pack's entries")
        check_entries(item[1], f"{what}, pack {item[0].hex()}")
        tables.append((item[0], item[1]))
    return tables
