"""Copying versions between stores: only missing chunks travel, digests stay the same.

The manifest is copied byte for byte, so ``name@sha256:<hex>`` pins the same version in
both stores. Version numbers are kept; numbers below the copied one that the destination
lacks get tombstones carrying the source's digests, so the hash chain still verifies.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from castore.errors import IntegrityError, ObjectExistsError
from castore.format import layout
from castore.format.compression import encode_chunk
from castore.format.digests import format_digest
from castore.format.streams import StreamDescriptor
from castore.trust.signatures import copy_signatures
from castore.versions import catalog
from castore.versions.contents import chunks_of

if TYPE_CHECKING:
    from castore.engine.repository import Repository


def _copy_chunks(source: Repository, dest: Repository, chunks: Iterable[tuple[bytes, int]]) -> int:
    """Store in `dest` the chunks it lacks, read (verified) from `source`; return bytes sent."""
    missing: dict[bytes, int] = {}
    for chunk_id, size in chunks:
        if chunk_id not in dest.index:
            missing[chunk_id] = size
    if not missing:
        return 0
    ids = b"".join(missing)
    listing = StreamDescriptor(bytes(32), sum(missing.values()), ids, tuple(missing.values()))
    session = dest.write_session()
    with session:
        for (chunk_id, _), data in zip(
            listing.chunks(), source.iter_chunks(listing, authenticated=True), strict=True
        ):
            codec, payload = encode_chunk(memoryview(data), dest.config.compression)
            session.store_chunk((chunk_id, len(data), codec, payload))
        session.commit()
    return listing.size


def copy_version(source: Repository, ref: str, dest: Repository) -> catalog.Version:
    """Copy one version (data, manifest, ref) into `dest`; idempotent."""
    manifest, digest = catalog.resolve(source, ref)
    with dest.writing():
        _copy_chunks(source, dest, chunks_of(source, manifest))
        data = source.backend.read(layout.manifest_path(digest))
        dest.backend.write(layout.manifest_path(digest), data)
        copy_signatures(source, dest, digest)
        _placeholders(source, dest, manifest.name, manifest.number)
        existing = dest.refs.read_version(manifest.name, manifest.number)
        if existing is None:
            try:
                dest.refs.create_version(manifest.name, manifest.number, digest)
            except ObjectExistsError:
                existing = dest.refs.read_version(manifest.name, manifest.number)
        if existing is not None and existing.manifest != digest:
            raise IntegrityError(
                f"{manifest.name}:{manifest.number} is {format_digest(existing.manifest)} in "
                f"{dest.url} but {format_digest(digest)} in {source.url}: the histories diverged"
            )
    return catalog.Version.of(manifest, digest)


def _placeholders(source: Repository, dest: Repository, name: str, below: int) -> None:
    """Tombstones in `dest` for earlier versions it lacks, with the source's digests."""
    taken = set(dest.refs.version_numbers(name))
    for number in range(1, below):
        if number in taken:
            continue
        version_ref = source.refs.read_version(name, number)
        if version_ref is not None:
            dest.refs.mark_deleted(name, number, version_ref.manifest)


def copy_name(source: Repository, name: str, dest: Repository) -> list[catalog.Version]:
    """Copy every live version of a name, then its current tags."""
    copied = [copy_version(source, f"{name}:{n}", dest) for n in catalog.versions(source, name)]
    for tag, number in catalog.tags(source, name).items():
        catalog.tag(dest, f"{name}:{number}", tag)
    return copied
