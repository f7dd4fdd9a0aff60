"""Stream descriptors (a stream's digest, size and chunk list) and stream objects.

A stream object is stored under its content digest by `put`; version manifests embed the
same descriptor, so one encoding serves both (docs/FORMAT.md, "Stream objects").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from castore.errors import IntegrityError
from castore.format import wire
from castore.format.config import MAX_CHUNK_LIMIT

STREAM_OBJECT_VERSION = 1
DIGEST_SIZE = hashlib.sha256().digest_size


@dataclass(frozen=True)
class StreamDescriptor:
    """What it takes to read a stream back and prove it is the right one."""

    sha256: bytes
    size: int
    chunk_ids: bytes
    """The chunks' SHA-256 digests, concatenated in stream order."""
    chunk_sizes: tuple[int, ...]

    def chunks(self) -> Iterator[tuple[bytes, int]]:
        """(chunk id, raw length) in stream order."""
        for number, size in enumerate(self.chunk_sizes):
            yield self.chunk_ids[number * DIGEST_SIZE : (number + 1) * DIGEST_SIZE], size

    def to_wire(self) -> dict[str, Any]:
        """The descriptor's fields as stored."""
        return {
            "sha256": self.sha256,
            "size": self.size,
            "chunks": self.chunk_ids,
            "sizes": list(self.chunk_sizes),
        }

    @classmethod
    def from_wire(cls, raw: dict[str, Any], what: str) -> StreamDescriptor:
        """Validate stored fields: digest shape, chunk count, sizes that add up."""
        digest = wire.field(raw, "sha256", bytes, what)
        size = wire.field(raw, "size", int, what)
        chunk_ids = wire.field(raw, "chunks", bytes, what)
        sizes = wire.field(raw, "sizes", list, what)
        if len(digest) != DIGEST_SIZE:
            raise IntegrityError(f"{what} has a malformed stream digest")
        if len(chunk_ids) != len(sizes) * DIGEST_SIZE:
            raise IntegrityError(
                f"{what} lists {len(sizes)} sizes for {len(chunk_ids) / 32} chunks"
            )
        for chunk_size in sizes:
            if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
                raise IntegrityError(f"{what} has a chunk size that is not an integer")
            if not 1 <= chunk_size <= MAX_CHUNK_LIMIT:
                raise IntegrityError(f"{what} has an absurd chunk size {chunk_size}")
        if sum(sizes) != size:
            raise IntegrityError(f"{what}: chunk sizes add up to {sum(sizes)}, not {size}")
        return cls(digest, size, chunk_ids, tuple(sizes))


def encode_stream_object(descriptor: StreamDescriptor) -> bytes:
    """The stream object stored at ``streams/<hh>/<content hex>``."""
    return wire.encode({"version": STREAM_OBJECT_VERSION, **descriptor.to_wire()})


def decode_stream_object(data: bytes, content_digest: bytes) -> StreamDescriptor:
    """Parse a stream object and check that it describes the digest it is stored under."""
    what = f"stream object sha256:{content_digest.hex()}"
    raw = wire.decode_map(data, what)
    wire.check_version(raw, STREAM_OBJECT_VERSION, what)
    descriptor = StreamDescriptor.from_wire(raw, what)
    if descriptor.sha256 != content_digest:
        raise IntegrityError(f"{what} describes another stream")
    return descriptor
