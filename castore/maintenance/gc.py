"""Garbage collection: delete what no root reaches, repack packs that are mostly garbage.

Runs under the gc marker (castore.leases), so no writer is active. Order, so that a gc
killed at any point leaves a readable store: new packs (repacked chunks) -> their index
object -> one index object for every surviving pack -> delete the old index objects ->
delete dead and repacked packs -> delete unreferenced manifests -> delete the signatures
of versions whose manifests are gone. Until the old index
objects are gone every chunk is still listed where it was; afterwards every live chunk is
listed in the new objects. Readers that still see an old location reload the index.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from castore.engine.leases import GcMarker, lease_ttl, storage_now
from castore.engine.writer import EncodedChunk
from castore.errors import CastoreError, ObjectNotFoundError
from castore.format import layout
from castore.format.compression import ChunkEncoder, Codec, decode_chunk
from castore.format.index import PackListing
from castore.format.packs import ENTRY, HEADER, TRAILER, PackEntry, check_pack
from castore.maintenance.reachability import walk
from castore.trust.signatures import delete_orphan_signatures

if TYPE_CHECKING:
    from castore.engine.repository import Repository

DEFAULT_REPACK_THRESHOLD = 0.2
"""Repack a pack once more than this share of its bytes is garbage."""


@dataclass
class GcReport:
    """What a gc did (or, with dry_run, would do)."""

    dry_run: bool
    packs: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    orphan_packs: int = 0
    bytes_freed: int = 0
    bytes_rewritten: int = 0
    manifests_deleted: int = 0
    signatures_deleted: int = 0
    index_objects_replaced: int = 0
    problems: list[str] = field(default_factory=list)


def _pack_size(entries: list[PackEntry]) -> int:
    records = sum(e.stored_len for e in entries)
    return len(HEADER) + records + len(entries) * ENTRY.size + TRAILER.size


def gc(
    repo: Repository, *, dry_run: bool = False, repack_threshold: float = DEFAULT_REPACK_THRESHOLD
) -> GcReport:
    """Collect garbage; raise StoreBusyError while writers hold fresh leases."""
    report = GcReport(dry_run=dry_run)
    # A dry run deletes nothing, so it needs no exclusion: it neither waits for writers
    # nor keeps them out. Its figures are those of the moment it ran.
    with contextlib.nullcontext() if dry_run else GcMarker(repo.backend):
        marker_time = (
            storage_now(repo.backend) if dry_run else repo.backend.modified(layout.GC_MARKER)
        )
        repo.index.reload(from_store=True)
        reach = walk(repo)
        report.problems.extend(reach.problems)
        report.problems.extend(f"{p}: {why}" for p, why in repo.index.damaged.items())
        if report.problems:
            # An unreadable root might need anything, and the packs of a damaged index
            # object look unreferenced: deleting now could destroy the only copy.
            report.problems.append(
                "gc deleted nothing: fix the problems above first ('castore repair')"
            )
            return report
        stored = _stored_packs(repo)
        report.problems.extend(_unlocated_chunks(repo, reach.chunks, stored))
        if report.problems:
            report.problems.append(
                "gc deleted nothing: a needed chunk is in no stored pack the index lists"
                " ('castore repair' re-indexes packs)"
            )
            return report
        dead: list[bytes] = []
        repack: dict[bytes, list[PackEntry]] = {}
        survivors: list[PackListing] = []
        for pack_id, entries in repo.index.packs.items():
            if pack_id not in stored:
                continue  # listed, never stored: the new index leaves the listing out
            report.packs += 1
            # Every copy of a needed chunk is kept: whichever copy the index would pick
            # may be one that an untrusted writer listed in a pack that does not hold it.
            live = [e for e in entries if e.chunk_id in reach.chunks]
            size = _pack_size(entries)
            garbage = sum(e.stored_len for e in entries) - sum(e.stored_len for e in live)
            if not live:
                dead.append(pack_id)
                report.bytes_freed += size
            elif garbage > repack_threshold * size:
                repack[pack_id] = live
                report.bytes_freed += garbage
                report.bytes_rewritten += size - garbage
            else:
                survivors.append((pack_id, entries))
        orphans = _orphan_packs(repo, stored, marker_time)
        report.orphan_packs = len(orphans)
        report.packs_deleted = len(dead)
        report.packs_repacked = len(repack)
        if dry_run:
            return report
        new_index, new_packs = _repack(repo, repack) if repack else (None, set())
        written = {new_index, repo.index.commit(survivors) if survivors else None}
        # Index objects are content-addressed: an unchanged store rewrites the very same
        # object, which must of course survive the deletion of the old ones.
        old_objects = [p for p in repo.index.objects if p not in written]
        for path in old_objects:
            repo.backend.delete(path)
        report.index_objects_replaced = len(old_objects)
        for pack_id in {*dead, *repack, *orphans} - new_packs:  # a repack can recreate a pack
            repo.backend.delete(layout.pack_path(pack_id))
        report.manifests_deleted = _delete_unreferenced_manifests(
            repo, reach.live_manifests, marker_time
        )
        report.signatures_deleted = delete_orphan_signatures(repo)
        repo.index.reload()
    return report


def _repack(
    repo: Repository, repack: dict[bytes, list[PackEntry]]
) -> tuple[str | None, set[bytes]]:
    """Copy the live chunks of `repack` into new packs; return the new index object and packs."""
    session = repo.write_session(rewrite=True)
    encoder = ChunkEncoder(repo.config)
    for pack_id, live in repack.items():
        data = repo.backend.read(layout.pack_path(pack_id))
        check_pack(data, pack_id)  # never copy damage forward
        for entry in live:
            payload = memoryview(data)[entry.offset : entry.offset + entry.stored_len]
            session.store_chunk(_repacked(entry, payload, encoder, repo))
    session.commit()
    return session.index_object, set(session.stats.packs)


def _repacked(
    entry: PackEntry, payload: bytes | memoryview, encoder: ChunkEncoder, repo: Repository
) -> EncodedChunk:
    """A live chunk as it goes into a new pack: its stored bytes, unless it is byte-grouped
    in a store whose readers need not know codec 2 (another writer put it there)."""
    codec = Codec(entry.codec)
    if codec == Codec.GROUPED and not repo.config.byte_groups:
        raw = decode_chunk(
            codec, memoryview(payload), entry.raw_len, f"chunk {entry.chunk_id.hex()}"
        )
        codec, payload = encoder.encode(memoryview(raw))
    return entry.chunk_id, entry.raw_len, codec, payload


def _stored_packs(repo: Repository) -> set[bytes]:
    """The ids of the packs in storage now (objects not named by a digest are no packs)."""
    return {
        pack_id
        for path in repo.backend.list(layout.PACKS)
        if (pack_id := layout.name_of(path)) is not None
    }


def _unlocated_chunks(repo: Repository, needed: dict[bytes, int], stored: set[bytes]) -> list[str]:
    """Problems for needed chunks that no index object places in a stored pack.

    Such a chunk may live in a pack no index lists (an orphan to gc), so nothing may go.
    """
    problems = []
    displaced = {}
    for chunk_id in needed:
        location = repo.index.lookup(chunk_id)
        if location is None:
            problems.append(f"chunk {chunk_id.hex()} is needed but in no index object")
        elif location.pack_id not in stored:
            displaced[chunk_id] = location.pack_id
    if displaced:
        elsewhere = {
            entry.chunk_id
            for pack_id, entries in repo.index.packs.items()
            if pack_id in stored
            for entry in entries
        }
        problems.extend(
            f"chunk {chunk_id.hex()} is needed but its pack {pack_id.hex()} is missing"
            for chunk_id, pack_id in displaced.items()
            if chunk_id not in elsewhere
        )
    return problems


def _orphan_packs(repo: Repository, stored: set[bytes], marker_time: float) -> list[bytes]:
    """Packs no index object lists, old enough that no writer can still be committing them."""
    orphans = []
    for pack_id in sorted(stored - repo.index.packs.keys()):
        try:
            if marker_time - repo.backend.modified(layout.pack_path(pack_id)) > lease_ttl():
                orphans.append(pack_id)
        except ObjectNotFoundError:
            continue
    return orphans


def _delete_unreferenced_manifests(repo: Repository, live: set[bytes], marker_time: float) -> int:
    deleted = 0
    for path in repo.backend.list(layout.MANIFESTS):
        digest = layout.name_of(path)
        if digest is None or digest in live:
            continue
        try:
            if marker_time - repo.backend.modified(path) > lease_ttl():
                repo.backend.delete(path)
                deleted += 1
        except (ObjectNotFoundError, CastoreError):
            continue
    return deleted
