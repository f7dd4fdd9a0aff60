"""repair: rebuild lost or damaged index objects from pack footers, and say what stays lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from castore.errors import CastoreError
from castore.format import layout
from castore.format.packs import TRAILER, PackEntry, footer_location, parse_footer
from castore.maintenance.reachability import walk

if TYPE_CHECKING:
    from castore.engine.repository import Repository


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
    repo.index.reload(from_store=True)
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
