"""verify: check every root, manifest, hash chain, chunk location and (optionally) byte."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from castore.errors import CastoreError, InvalidInputError, ObjectNotFoundError
from castore.format import layout
from castore.format.digests import format_digest
from castore.format.packs import check_pack
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
    repo.index.reload(from_store=True)
    report.problems.extend(f"{path}: {why}" for path, why in repo.index.damaged.items())
    reach = walk(repo, track_users=True)
    report.problems.extend(reach.problems)
    report.affected.extend(problem.split(": ", 1)[0] for problem in reach.problems)
    report.streams_checked = reach.streams
    report.versions_checked = reach.versions
    _check_shadowed_streams(repo, report)
    for name in reach.listed_names:
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


def _check_shadowed_streams(repo: Repository, report: VerifyReport) -> None:
    """Report stream objects named by a manifest's digest. ``sha256:<hex>`` reads the
    version first, so such a stream object can never be read by its name: it was planted
    (a stream object's name is checked only at the end of a read) or is a put of the
    manifest's own bytes."""
    try:
        paths = repo.backend.list(layout.STREAMS)
    except CastoreError:
        return  # the walk has reported the listing as a problem
    for path in paths:
        digest = layout.name_of(path)
        if digest is None:
            continue  # the walk has reported it
        label = format_digest(digest)
        try:
            shadowed = repo.backend.exists(layout.manifest_path(digest))
        except CastoreError as exc:
            report.problems.append(f"{label}: cannot check for a manifest of that name: {exc}")
            report.affected.append(label)
            continue
        if shadowed:
            report.problems.append(
                f"{label}: stream object {path} is named by the digest of manifest "
                f"{layout.manifest_path(digest)}; {label} reads that version, never this "
                "stream (planted, or a put of the manifest's own bytes)"
            )
            report.affected.append(label)
