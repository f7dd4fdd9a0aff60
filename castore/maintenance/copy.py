"""Copying versions between stores: only missing chunks travel, digests stay the same.

The manifest is copied byte for byte, so ``name@sha256:<hex>`` pins the same version in
both stores, under the same number. The destination's history records only what happened
to it: the numbers a copy does not bring stay absent (not deleted), and a version copied
later takes its own number then (docs/FORMAT.md 11.5 and 19). A copy never breaks the
destination's hash chain, and never silently undoes what the destination did on its own:
a name copy leaves its deletions alone, and tags it moved stay where it put them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from castore.engine.progress import Progress, ProgressCallback
from castore.engine.refs import VersionRef
from castore.errors import ConflictError, IntegrityError, NotFoundError, ObjectExistsError
from castore.format import layout
from castore.format.compression import ChunkEncoder
from castore.format.digests import format_digest
from castore.format.manifest import Manifest
from castore.format.streams import StreamDescriptor
from castore.trust.signatures import copy_signatures
from castore.versions import catalog
from castore.versions.contents import chunks_of

if TYPE_CHECKING:
    from castore.engine.repository import Repository


@dataclass(frozen=True)
class VersionCopy:
    """What a copy did with one version."""

    version: catalog.Version
    action: str
    """"copied" (new in the destination), "present" (it was there already), "restored"
    (the destination had deleted it; a copy of this very version made it live again) or
    "skipped" (the destination had deleted it, and a copy of a whole name keeps that)."""
    deleted: str | None = None
    """When the destination had deleted the version ("restored" and "skipped")."""


@dataclass(frozen=True)
class TagCopy:
    """What a copy did with one tag that the source sets on a copied version."""

    name: str
    tag: str
    version: int
    """The version the source's tag points at."""
    action: str
    """"set" (the destination had no such tag), "moved" (its tag held a value the source's
    tag held before), "unchanged" (it already pointed there) or "kept" (the destination
    moved or removed the tag on its own: it is left as it is)."""
    dest_version: int | None = None
    """Where the destination's tag pointed before the copy (None: not set)."""


@dataclass
class CopyReport:
    """Every version and tag a copy handled, in order, and the chunk bytes it sent."""

    versions: list[VersionCopy] = field(default_factory=list)
    tags: list[TagCopy] = field(default_factory=list)
    bytes_sent: int = 0


@dataclass
class _Tracker:
    """The progress of a copy: versions handled, chunk bytes sent. Bytes have a total
    only when one version is copied (a name's versions are listed one at a time)."""

    callback: ProgressCallback | None
    versions: int
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    sent: int = 0
    total_bytes: int | None = None

    def report(self, ref: str) -> None:
        """Hand the counters to the callback, if there is one."""
        if self.callback is not None:
            elapsed = time.monotonic() - self.started
            self.callback(
                Progress(self.done, self.sent, 0, elapsed, ref, self.versions, self.total_bytes)
            )


def _copy_chunks(
    source: Repository,
    dest: Repository,
    chunks: Iterable[tuple[bytes, int]],
    tracker: _Tracker,
    ref: str,
) -> int:
    """Store in `dest` the chunks it lacks, read (verified) from `source`; return bytes sent."""
    missing: dict[bytes, int] = {}
    for chunk_id, size in chunks:
        if chunk_id not in dest.index:
            missing[chunk_id] = size
    if not missing:
        return 0
    ids = b"".join(missing)
    listing = StreamDescriptor(bytes(32), sum(missing.values()), ids, tuple(missing.values()))
    if tracker.versions == 1:
        tracker.total_bytes = listing.size
    # Re-encoding for the destination's config keeps codec 2 out of a version 1 store.
    encoder = ChunkEncoder(dest.config)
    session = dest.write_session()
    with session:
        for (chunk_id, _), data in zip(
            listing.chunks(), source.iter_chunks(listing, authenticated=True), strict=True
        ):
            codec, payload = encoder.encode(memoryview(data))
            session.store_chunk((chunk_id, len(data), codec, payload))
            tracker.sent += len(data)
            tracker.report(ref)
        session.commit()
    return listing.size


def _diverged(what: str, dest: Repository) -> IntegrityError:
    return IntegrityError(f"{what} in {dest.url}: the histories diverged")


def _existing(
    source: Repository, dest: Repository, manifest: Manifest, digest: bytes
) -> VersionRef | None:
    """The destination's ref for the version's number; it must name the same version."""
    existing = dest.refs.read_version(manifest.name, manifest.number)
    if existing is not None and existing.manifest != digest:
        raise _diverged(
            f"{manifest.name}:{manifest.number} is {format_digest(digest)} in {source.url} "
            f"but {format_digest(existing.manifest)}",
            dest,
        )
    return existing


def _check_neighbours(dest: Repository, manifest: Manifest, digest: bytes) -> None:
    """Refuse a version that would break the destination's hash chain (FORMAT.md 11.5):
    its version n-1 must be the copied version's parent, and its live version n+1 must
    have the copied version as parent."""
    name, number = manifest.name, manifest.number
    below = dest.refs.read_version(name, number - 1) if number > 1 else None
    if below is not None and below.manifest != manifest.parent:
        raise _diverged(
            f"{name}:{number} ({format_digest(digest)}) does not follow {name}:{number - 1} "
            f"({format_digest(below.manifest)})",
            dest,
        )
    above = dest.refs.read_version(name, number + 1)
    if above is not None and not above.deleted:
        parent = catalog.read_version_manifest(dest, name, number + 1, above.manifest).parent
        if parent != digest:
            raise _diverged(
                f"{name}:{number + 1} does not follow {name}:{number} ({format_digest(digest)})",
                dest,
            )


def _publish(
    source: Repository, dest: Repository, manifest: Manifest, digest: bytes, tombstone: bool
) -> str:
    """Make the copied version live in `dest`, by its own number; return the action."""
    name, number = manifest.name, manifest.number
    if tombstone:
        dest.refs.restore_version(name, number, digest)
        return "restored"
    _check_neighbours(dest, manifest, digest)
    try:
        dest.refs.create_version(name, number, digest, copied=True)
    except ObjectExistsError:
        raced = _existing(source, dest, manifest, digest)  # another writer took the number
        if raced is None:
            raise ConflictError(
                f"{name}:{number} in {dest.url} changed during the copy: retry"
            ) from None
        return "skipped" if raced.deleted else "present"
    return "copied"


def _copy_tags(
    source: Repository, dest: Repository, manifest: Manifest, digest: bytes, report: CopyReport
) -> None:
    """Set in `dest` the tags the source currently sets on the version, unless the
    destination moved or removed them on its own (tags are event logs, FORMAT.md 12.2)."""
    name = manifest.name
    for tag in source.refs.tag_names(name):
        ours = source.refs.tag_history(name, tag)
        if not ours or ours[-1].manifest != digest:
            continue
        history = dest.refs.tag_history(name, tag)
        theirs = history[-1] if history else None
        if theirs is not None and theirs.manifest == digest:
            action = "unchanged"
        elif theirs is None:
            action = "set"
        elif theirs.manifest is not None and theirs.manifest in {e.manifest for e in ours}:
            action = "moved"  # the destination is behind the source: it held an older value
        else:
            action = "kept"
        if action in ("set", "moved"):
            dest.refs.set_tag(name, tag, manifest.number, digest)
        before = theirs.version if theirs is not None else None
        report.tags.append(TagCopy(name, tag, manifest.number, action, before))


def _copy_one(
    source: Repository,
    ref: str,
    dest: Repository,
    report: CopyReport,
    tracker: _Tracker,
    *,
    restore: bool,
    tags: bool,
) -> None:
    """Copy one version (data, manifest, signatures, ref, tags) into `dest`; idempotent."""
    manifest, digest = catalog.resolve(source, ref)
    with dest.writing():
        existing = _existing(source, dest, manifest, digest)
        if existing is not None and not (existing.deleted and restore):
            action = "skipped" if existing.deleted else "present"
        else:
            chunks = chunks_of(source, manifest)
            report.bytes_sent += _copy_chunks(source, dest, chunks, tracker, ref)
            data = source.backend.read(layout.manifest_path(digest))
            dest.backend.write(layout.manifest_path(digest), data)
            action = _publish(source, dest, manifest, digest, tombstone=existing is not None)
        if action != "skipped":
            copy_signatures(source, dest, digest)
    deleted = existing.deleted if existing is not None else None
    report.versions.append(VersionCopy(catalog.Version.of(manifest, digest), action, deleted))
    if tags and action != "skipped":
        _copy_tags(source, dest, manifest, digest, report)
    tracker.done += 1
    tracker.report(ref)


def copy_version(
    source: Repository,
    ref: str,
    dest: Repository,
    *,
    tags: bool,
    progress: ProgressCallback | None = None,
) -> CopyReport:
    """Copy one version into `dest` under its number, with the tags the source sets on it.

    A version the destination had deleted is restored: the copy asks for this version.
    `progress` is called after each chunk sent, and once the version is done.
    """
    report = CopyReport()
    _copy_one(source, ref, dest, report, _Tracker(progress, 1), restore=True, tags=tags)
    return report


def copy_name(
    source: Repository,
    name: str,
    dest: Repository,
    *,
    tags: bool,
    progress: ProgressCallback | None = None,
) -> CopyReport:
    """Copy every live version of a name in ascending order, each with its tags.

    Versions the destination has deleted stay deleted there ("skipped"). `progress` is
    called after each chunk sent and each version done; its totals count versions.
    """
    numbers = catalog.versions(source, name)
    if not numbers:
        raise NotFoundError(f"nothing to copy: {name} has no live versions in {source.url}")
    report = CopyReport()
    tracker = _Tracker(progress, len(numbers))
    for number in numbers:
        ref = f"{name}:{number}"
        _copy_one(source, ref, dest, report, tracker, restore=False, tags=tags)
    return report
