"""Store health: verify, stats and repair, all built on one walk of the store's roots."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from castore.errors import CastoreError, InvalidInputError, ObjectNotFoundError
from castore.format import layout
from castore.format.digests import format_digest
from castore.format.packs import (
    ENTRY,
    HEADER,
    TRAILER,
    PackEntry,
    check_pack,
    footer_location,
    parse_footer,
)
from castore.format.streams import decode_stream_object
from castore.maintenance.reachability import walk
from castore.trust import signatures as signing
from castore.versions import catalog

if TYPE_CHECKING:
    from castore.engine.repository import Repository


@dataclass
class VerifyReport:
    """What `verify` checked and every problem it found, with the versions it affects."""

    packs_checked: int = 0
    streams_checked: int = 0
    versions_checked: int = 0
    bytes_read: int = 0
    orphan_signatures: int = 0
    """Signatures of versions gc has collected: garbage the next gc deletes, not damage."""
    problems: list[str] = field(default_factory=list)
    affected: list[str] = field(default_factory=list)
    """Versions (name:n) and put digests that cannot be read back intact."""

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def select_packs(pack_ids: list[bytes], subset: str | None) -> list[bytes]:
    """Packs to re-read: all, a random percentage ("10%"), or slice n of t ("2/5").

    Slices are by pack name, so running 1/t ... t/t covers every pack exactly once.
    """
    if subset is None:
        return pack_ids
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)%", subset):
        share = float(match.group(1)) / 100
        if not 0 < share <= 1:
            raise InvalidInputError(f"subset {subset!r} must be a percentage in (0, 100]")
        return [p for p in pack_ids if random.random() < share]
    if match := re.fullmatch(r"(\d+)/(\d+)", subset):
        part, total = int(match.group(1)), int(match.group(2))
        if not 1 <= part <= total:
            raise InvalidInputError(f"subset {subset!r} needs 1 <= n <= t")
        return [p for p in pack_ids if int.from_bytes(p[:8], "big") % total == part - 1]
    raise InvalidInputError(f"subset {subset!r}: expected a percentage like 10% or n/t like 2/5")


def verify(repo: Repository, *, read_data: bool = True, subset: str | None = None) -> VerifyReport:
    """Check every ref, manifest, hash chain, chunk location and (with read_data) byte."""
    report = VerifyReport()
    repo.index.reload()
    report.problems.extend(f"{path}: {why}" for path, why in repo.index.damaged.items())
    reach = walk(repo, track_users=True)
    report.problems.extend(reach.problems)
    report.affected.extend(problem.split(": ", 1)[0] for problem in reach.problems)
    report.streams_checked = reach.streams
    report.versions_checked = reach.versions
    for name in repo.refs.names():
        for problem in catalog.verify_history(repo, name):
            report.problems.append(problem)
            report.affected.append(problem.split(": ", 1)[0])
    present = {layout.name_of(p) for p in repo.backend.list(layout.PACKS)}
    bad_chunks: dict[bytes, str] = {}
    for chunk_id in reach.chunks:
        location = repo.index.lookup(chunk_id)
        if location is None:
            bad_chunks[chunk_id] = "is in no index object"
        elif location.pack_id not in present:
            bad_chunks[chunk_id] = f"is in pack {location.pack_id.hex()}, which is missing"
    if read_data:
        for pack_id in select_packs(sorted(repo.index.packs), subset):
            report.packs_checked += 1
            try:
                data = repo.backend.read(layout.pack_path(pack_id))
                report.bytes_read += len(data)
                check_pack(data, pack_id)
            except ObjectNotFoundError:
                continue  # reported per chunk above
            except CastoreError as exc:
                report.problems.append(f"pack {pack_id.hex()}: {exc}")
                for entry in repo.index.packs[pack_id]:
                    bad_chunks.setdefault(entry.chunk_id, f"is in damaged pack {pack_id.hex()}")
    if read_data and subset is None:
        _check_put_streams(repo, report)
    audit = signing.verify_signatures(repo)
    report.problems.extend(audit.problems)
    report.orphan_signatures = audit.orphans
    affected = set(report.affected)
    for chunk_id, why in bad_chunks.items():
        users = reach.users.get(chunk_id, [])
        if users:
            report.problems.append(f"chunk {chunk_id.hex()} {why}; needed by {', '.join(users)}")
            affected.update(users)
    report.affected = sorted(affected)
    return report


def _check_put_streams(repo: Repository, report: VerifyReport) -> None:
    """Re-read each put stream whole: only its full SHA-256 proves its chunk list right
    (a version's chunk list is proven by its manifest's digest instead)."""
    for path in repo.backend.list(layout.STREAMS):
        digest = layout.name_of(path)
        if digest is None:
            continue
        label = format_digest(digest)
        try:
            descriptor = decode_stream_object(repo.backend.read(path), digest)
            for _ in repo.iter_chunks(descriptor):
                pass
        except CastoreError as exc:
            if label not in report.affected:
                report.problems.append(f"{label}: {exc}")
                report.affected.append(label)


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
    """Sum of the sizes of every live version and put stream."""
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
    locations = repo.index.locations()
    stored = sum(repo.backend.size(p) for p in repo.backend.list(layout.PACKS))
    return StoreStats(
        names=reach.names,
        versions=reach.versions,
        deleted_versions=reach.deleted_versions,
        put_streams=reach.streams,
        manifests=len(repo.backend.list(layout.MANIFESTS)),
        packs=len(repo.index.packs),
        chunks=len(locations),
        referenced_chunks=len(reach.chunks),
        logical_bytes=reach.logical_bytes,
        unique_bytes=sum(reach.chunks.values()),
        referenced_stored_bytes=sum(
            locations[c].entry.stored_len for c in reach.chunks if c in locations
        ),
        stored_bytes=stored,
        overhead_bytes=sum(
            len(HEADER) + TRAILER.size + len(entries) * ENTRY.size
            for entries in repo.index.packs.values()
        ),
    )


@dataclass
class RepairReport:
    """What `repair` recovered and what it could not."""

    packs_reindexed: int = 0
    index_objects_removed: int = 0
    unreadable_packs: list[str] = field(default_factory=list)
    lost_chunks: int = 0
    affected: list[str] = field(default_factory=list)
    """Versions and put digests that need chunks no pack holds any more."""


def read_footer(repo: Repository, pack_id: bytes) -> list[PackEntry]:
    """A pack's entries from its footer alone (two ranged reads), checked against its name."""
    path = layout.pack_path(pack_id)
    what = f"pack {pack_id.hex()}"
    size = repo.backend.size(path)
    trailer = repo.backend.read_range(path, max(size - TRAILER.size, 0), TRAILER.size)
    start, length, digest = footer_location(trailer, size, what)
    if digest != pack_id:
        raise CastoreError(f"{what} does not match its name: its footer is damaged")
    return parse_footer(repo.backend.read_range(path, start, length), digest, start, what)


def repair(repo: Repository) -> RepairReport:
    """Rebuild lost or damaged index objects from pack footers; report what stays lost."""
    report = RepairReport()
    repo.index.reload()
    recovered = []
    for pack_id in repo.index.unindexed_packs():
        try:
            recovered.append((pack_id, read_footer(repo, pack_id)))
        except CastoreError as exc:
            report.unreadable_packs.append(f"{layout.pack_path(pack_id)}: {exc}")
    with repo.lease.held():
        if recovered:
            repo.index.commit(recovered)
            report.packs_reindexed = len(recovered)
        for path in list(repo.index.damaged):
            repo.backend.delete(path)
            report.index_objects_removed += 1
    repo.index.reload()
    reach = walk(repo, track_users=True)
    present = {layout.name_of(p) for p in repo.backend.list(layout.PACKS)}
    lost = [
        c
        for c in reach.chunks
        if (location := repo.index.lookup(c)) is None or location.pack_id not in present
    ]
    report.lost_chunks = len(lost)
    report.affected = sorted({user for c in lost for user in reach.users.get(c, [])})
    return report
