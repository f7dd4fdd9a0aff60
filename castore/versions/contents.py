"""What a version's manifest reaches: its stream and, per kind, what that stream names.

Every kind is listed here explicitly, so that gc, stats, verify and copy agree on what a
version needs, whatever modules a process has imported (docs/FORMAT.md, 14.2 "Kinds of
references", and 20.10).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from castore.errors import IntegrityError, InvalidInputError, UnsupportedFormatError
from castore.format.manifest import Manifest
from castore.format.streams import DIGEST_SIZE
from castore.format.tree import (
    FILE,
    TREE_FORMAT_VERSION,
    TREE_KIND,
    TREE_SERIALIZER,
    Entry,
    read_tree,
)

if TYPE_CHECKING:
    from castore.engine.repository import Repository


@dataclass
class Tally:
    """What chunks_of counted on its way, once it has been read to the end."""

    logical_bytes: int = 0
    """The bytes the version holds: its stream's size, or a snapshot's files' sizes
    (from its tree entries, not the tree stream's size)."""


def chunks_of(
    repo: Repository, manifest: Manifest, tally: Tally | None = None
) -> Iterator[tuple[bytes, int]]:
    """Every (chunk id, raw length) the version needs: what gc must keep and copy carry.

    A tree's files are read from its (verified) tree stream; an unknown kind raises
    UnsupportedFormatError rather than being assumed to need nothing. With `tally`, its
    logical_bytes is increased by the version's logical size as the chunks are listed.
    """
    yield from manifest.stream.chunks()
    if manifest.kind in ("object", "file"):
        if tally is not None:
            tally.logical_bytes += manifest.stream.size
        return
    if manifest.kind != TREE_KIND:
        raise UnsupportedFormatError(
            f"{manifest.name}:{manifest.number} has kind {manifest.kind!r}: "
            "this castore does not know what it references"
        )
    check_tree_manifest(manifest, f"{manifest.name}:{manifest.number}")
    with tree_entries(repo, manifest) as entries:
        for entry in entries:
            if tally is not None and entry.type == FILE:
                tally.logical_bytes += entry.size
            for number, size in enumerate(entry.chunk_sizes):
                yield entry.chunk_ids[number * DIGEST_SIZE : (number + 1) * DIGEST_SIZE], size


_TREE_VERSION = re.compile(r"[1-9][0-9]{0,8}")
"""A tree format version as written: ASCII digits, no leading zero, bounded."""


def check_tree_manifest(manifest: Manifest, ref: str) -> None:
    """Raise unless `manifest` is a snapshot in a tree format this castore reads."""
    where = f"{manifest.name}:{manifest.number}"
    if manifest.kind != TREE_KIND or manifest.serializer != TREE_SERIALIZER:
        raise InvalidInputError(
            f"{ref} ({where}) is a {manifest.kind!r} saved with {manifest.serializer!r}, "
            "not a backup"
        )
    version = manifest.serializer_version
    if not _TREE_VERSION.fullmatch(version):
        raise IntegrityError(f"{where} has an invalid tree format version {version!r}")
    if int(version) > TREE_FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"{where} has tree format version {version}; this castore reads up to "
            f"{TREE_FORMAT_VERSION}: upgrade castore"
        )


@contextmanager
def tree_entries(repo: Repository, manifest: Manifest) -> Iterator[Iterator[Entry]]:
    """The snapshot's entries, validated and verified as they stream in (the manifest
    was checked with check_tree_manifest: its tree format version is one castore reads)."""
    what = f"the tree of {manifest.name}:{manifest.number}"
    # The manifest was checked against its version digest: its chunk list is authentic.
    with repo.open_descriptor(manifest.stream, authenticated=True) as file:
        version = int(manifest.serializer_version)
        yield read_tree(file, manifest.stream.size, what, version)
