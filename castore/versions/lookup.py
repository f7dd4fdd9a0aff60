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

from castore.errors import NotFoundError, ObjectNotFoundError
from castore.format import layout
from castore.format.digests import format_digest
from castore.format.manifest import Manifest
from castore.format.streams import StreamDescriptor

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
    stream stored with put under that content digest (read unauthenticated: a stream
    object's chunk list is proven only by the whole-stream check)."""
    try:
        data = repo.backend.read(layout.manifest_path(digest))
    except ObjectNotFoundError:
        pass
    else:
        return FoundStream(Manifest.decode(data, digest).stream, authenticated=True)
    try:
        return FoundStream(repo.stream_descriptor(digest), authenticated=False)
    except NotFoundError as exc:
        raise NotFoundError(
            f"no stream or version with digest {format_digest(digest)} in {repo.url}"
        ) from exc
