"""Bare digests to streams: ``sha256:<hex>`` as a version digest first, then as content.

Two namespaces share one spelling (docs/FORMAT.md, 1.2): a version digest names a manifest
by the SHA-256 of its own bytes, a content digest names a stream by the SHA-256 of the
stream's bytes. Commands that print bytes accept either, so a digest is tried as a version
digest first (10.4, "Either kind of digest"): a stream object's name is a claim that only
the whole-stream check at the end of a read tests, so any store writer can plant one under
a version's digest, whereas a manifest can sit under a content digest only if that content
is the manifest's own bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from castore.errors import CastoreError, IntegrityError, NotFoundError
from castore.format import layout
from castore.format.digests import format_digest
from castore.format.streams import StreamDescriptor
from castore.versions.catalog import deletion_of, manifest_by_digest, read_version_manifest

if TYPE_CHECKING:
    from castore.engine.repository import Repository


@dataclass(frozen=True)
class FoundStream:
    """The stream a bare digest designates, and how far its chunk list is proven."""

    descriptor: StreamDescriptor
    authenticated: bool
    """True when the chunk list comes from the manifest named by the digest asked for, so
    that checking each chunk suffices; False when only the whole-stream SHA-256, checked at
    the end of the read, proves it."""


def find_stream(repo: Repository, digest: bytes) -> FoundStream:
    """The stream `digest` designates: a version's if it is a version digest, else the
    stream with that content digest.

    Content digests find a stream stored with put (its stream object), else the stream of a
    live version whose manifest records that content digest. That second step is a linear
    scan, for now: one ref and one manifest read per live version, names in order, newest
    version first, until one matches; a map from content digests to versions would make it
    constant. Such a version is read unauthenticated: its manifest proves its chunk list to
    whoever asked for its version digest, not for this content digest, which only the
    whole-stream check proves.
    """
    if repo.backend.exists(layout.manifest_path(digest)):
        return FoundStream(manifest_by_digest(repo, digest).stream, authenticated=True)
    try:
        return FoundStream(repo.stream_descriptor(digest), authenticated=False)
    except NotFoundError:
        pass
    unreadable: list[str] = []
    for name, numbers in repo.refs.version_numbers_by_name().items():
        for number in reversed(numbers):
            try:
                version_ref = repo.refs.read_version(name, number)
                if version_ref is None or version_ref.deleted:
                    continue
                manifest = read_version_manifest(repo, name, number, version_ref.manifest)
            except CastoreError as exc:
                unreadable.append(f"{name}:{number}: {exc}")
                continue
            if manifest.stream.sha256 == digest:
                return FoundStream(manifest.stream, authenticated=False)
    if deleted := deletion_of(repo, digest):
        raise NotFoundError(deleted)
    missing = f"no stream or version with digest {format_digest(digest)} in {repo.url}"
    if unreadable:
        raise IntegrityError(
            f"{missing} that could be read, and {len(unreadable)} of its versions could not "
            f"be searched (first: {unreadable[0]}); run 'castore verify'"
        )
    raise NotFoundError(missing)
