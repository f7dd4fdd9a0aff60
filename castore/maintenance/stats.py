"""stats: sizes and counts of a store, from one walk of its roots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from castore.format import layout
from castore.format.packs import ENTRY, HEADER, TRAILER
from castore.maintenance.reachability import walk

if TYPE_CHECKING:
    from castore.engine.repository import Repository


@dataclass
class StoreStats:
    """Sizes and counts of a store."""

    names: int
    versions: int
    deleted_versions: int
    put_streams: int
    manifests: int
    packs: int
    chunks: int
    referenced_chunks: int
    logical_bytes: int
    """Sum of the sizes of every live version and put stream; a snapshot counts the sizes
    of its files (not of its tree stream)."""
    unique_bytes: int
    """Raw size of the distinct chunks they reference."""
    referenced_stored_bytes: int
    """What those chunks take in packs (after compression)."""
    stored_bytes: int
    """Size of all packs, garbage included."""
    overhead_bytes: int
    """Pack headers, footers and trailers."""

    @property
    def dedup_ratio(self) -> float:
        """logical / unique: how much deduplication saves."""
        return self.logical_bytes / self.unique_bytes if self.unique_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        """unique / stored: how much compression saves."""
        stored = self.referenced_stored_bytes
        return self.unique_bytes / stored if stored else 1.0

    @property
    def garbage_bytes(self) -> int:
        """Chunk bytes in packs that no root reaches (what gc can free)."""
        return self.stored_bytes - self.referenced_stored_bytes - self.overhead_bytes


def stats(repo: Repository) -> StoreStats:
    """Count and size everything; one walk of the roots plus one listing of the packs."""
    repo.index.reload()
    reach = walk(repo)
    locations = repo.index.lookup_many(list(reach.chunks))
    stored = sum(repo.backend.size(p) for p in repo.backend.list(layout.PACKS))
    return StoreStats(
        names=reach.names,
        versions=reach.versions,
        deleted_versions=reach.deleted_versions,
        put_streams=reach.streams,
        manifests=len(repo.backend.list(layout.MANIFESTS)),
        packs=len(repo.index.packs),
        chunks=len(repo.index),
        referenced_chunks=len(reach.chunks),
        logical_bytes=reach.logical_bytes,
        unique_bytes=sum(reach.chunks.values()),
        referenced_stored_bytes=sum(
            location.entry.stored_len for location in locations if location is not None
        ),
        stored_bytes=stored,
        overhead_bytes=sum(
            len(HEADER) + TRAILER.size + len(entries) * ENTRY.size
            for entries in repo.index.packs.values()
        ),
    )
