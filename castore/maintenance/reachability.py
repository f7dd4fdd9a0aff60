"""What the store's roots reach: every chunk a live version or a put stream needs.

Roots are the stream objects (``put``) and the live version refs. Deleted versions keep
only their digest in a tombstone, so their data is unreachable. Shared by gc, stats,
verify and repair, so that all of them agree on what "in use" means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from castore.errors import CastoreError
from castore.format import layout
from castore.format.digests import format_digest
from castore.format.streams import decode_stream_object
from castore.versions import catalog
from castore.versions.contents import Tally, chunks_of

if TYPE_CHECKING:
    from castore.engine.repository import Repository

T = TypeVar("T")


@dataclass
class Reachable:
    """The result of walking every root."""

    chunks: dict[bytes, int] = field(default_factory=dict)
    """Every reachable chunk id and its raw length."""
    users: dict[bytes, list[str]] = field(default_factory=dict)
    """With tracking on: which versions or digests need each chunk."""
    live_manifests: set[bytes] = field(default_factory=set)
    listed_names: list[str] = field(default_factory=list)
    """Every name the walk found under refs/, live versions or not."""
    logical_bytes: int = 0
    """Bytes the live versions and put streams hold; a snapshot's are its files' sizes."""
    names: int = 0
    versions: int = 0
    deleted_versions: int = 0
    streams: int = 0
    problems: list[str] = field(default_factory=list)

    def _add(self, chunks: Iterable[tuple[bytes, int]], user: str, track: bool) -> None:
        for chunk_id, size in chunks:
            self.chunks[chunk_id] = size
            if track:
                users = self.users.setdefault(chunk_id, [])
                if not users or users[-1] != user:  # a chunk a version repeats: named once
                    users.append(user)


def _listed(reach: Reachable, what: str, listing: Callable[[], list[T]]) -> list[T]:
    """The result of one listing; on failure, a problem naming `what` and nothing listed."""
    try:
        return listing()
    except CastoreError as exc:
        reach.problems.append(f"{what}: cannot be listed: {exc}")
        return []


def walk(repo: Repository, *, track_users: bool = False) -> Reachable:
    """Walk every root; whatever cannot be listed or read becomes a problem, never a skip.

    gc deletes nothing while a walk has problems: a root it could not read might need
    any chunk.
    """
    reach = Reachable()
    for path in _listed(reach, layout.STREAMS, lambda: repo.backend.list(layout.STREAMS)):
        digest = layout.name_of(path)
        label = format_digest(digest) if digest else path
        try:
            if digest is None:
                raise CastoreError(f"{path} is not named by a digest")
            descriptor = decode_stream_object(repo.backend.read(path), digest)
        except CastoreError as exc:
            reach.problems.append(f"{label}: {exc}")
            continue
        reach.streams += 1
        reach.logical_bytes += descriptor.size
        reach._add(descriptor.chunks(), label, track_users)
    for path in _listed(reach, layout.REFS, repo.refs.strays):
        reach.problems.append(f"{path}: not a ref castore writes (a version ref or tag event)")
    reach.listed_names = _listed(reach, layout.REFS, repo.refs.names)
    for name in reach.listed_names:
        reach.names += 1
        folder = layout.versions_folder(name)
        for number in _listed(reach, folder, partial(repo.refs.version_numbers, name)):
            label = f"{name}:{number}"
            try:
                version_ref = repo.refs.read_version(name, number)
                if version_ref is None:
                    raise CastoreError("the version ref vanished while being read")
                if version_ref.deleted:
                    reach.deleted_versions += 1
                    continue
                manifest = catalog.read_version_manifest(repo, name, number, version_ref.manifest)
                tally = Tally()
                reach._add(chunks_of(repo, manifest, tally), label, track_users)
            except CastoreError as exc:
                reach.problems.append(f"{label}: {exc}")
                continue
            reach.versions += 1
            reach.live_manifests.add(version_ref.manifest)
            reach.logical_bytes += tally.logical_bytes
    return reach
