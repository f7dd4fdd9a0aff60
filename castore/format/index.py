"""Index objects: the pack footers one writer committed (docs/FORMAT.md, "Index objects")."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from castore.errors import IntegrityError
from castore.format import wire
from castore.format.packs import PackEntry, decode_entries, encode_entries

INDEX_VERSION = 1


PackListing = tuple[bytes, list[PackEntry]]
"""A pack's id and its footer entries."""


def encode_index_object(packs: Iterable[PackListing]) -> bytes:
    """An index object: the footers of the packs one writer committed."""
    return wire.encode(
        {
            "version": INDEX_VERSION,
            "packs": [[pack_id, encode_entries(entries)] for pack_id, entries in packs],
        }
    )


def decode_index_object(data: bytes, what: str) -> list[PackListing]:
    """Parse and validate an index object."""
    raw = wire.decode_map(data, what)
    wire.check_version(raw, INDEX_VERSION, what)
    packs = []
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
        packs.append((item[0], decode_entries(item[1], f"{what}, pack {item[0].hex()}")))
    return packs
