"""The write path: stream -> chunks -> hash and compress in parallel -> packs -> index."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import BinaryIO

from castore import layout
from castore.backend import Backend
from castore.chunking import Chunker
from castore.compression import Codec, encode_chunk
from castore.config import CompressionParams, StoreConfig
from castore.index import Index, PackListing
from castore.packs import PackBuilder, PackEntry
from castore.streams import StreamDescriptor

MAX_GROUPS_IN_FLIGHT = 4
MAX_PACKS_IN_FLIGHT = 3

EncodedChunk = tuple[bytes, int, Codec, bytes | memoryview | None]
"""(chunk id, raw length, codec, stored payload or None when the store already has it)."""


@dataclass
class WriteStats:
    """What one write added to the store."""

    bytes_in: int = 0
    chunks: int = 0
    new_chunks: int = 0
    new_bytes_stored: int = 0
    packs: list[bytes] = field(default_factory=list)


def _encode_group(
    group: list[memoryview], known: Callable[[bytes], bool], params: CompressionParams
) -> list[EncodedChunk]:
    """Hash every chunk of a group and compress those the store does not have yet."""
    encoded: list[EncodedChunk] = []
    for data in group:
        chunk_id = hashlib.sha256(data).digest()
        if known(chunk_id):
            encoded.append((chunk_id, len(data), Codec.RAW, None))
        else:
            codec, payload = encode_chunk(data, params)
            encoded.append((chunk_id, len(data), codec, payload))
    return encoded


def _store_pack(backend: Backend, data: bytearray) -> bytes:
    pack_id = hashlib.sha256(data).digest()
    backend.write(layout.pack_path(pack_id), data)
    return pack_id


class _PackUploader:
    """Fills packs to the target size and stores them in the background, a few at a time."""

    def __init__(self, backend: Backend, pool: Executor, target_size: int) -> None:
        self._backend = backend
        self._pool = pool
        self._target_size = target_size
        self._builder = PackBuilder()
        self._in_flight: deque[tuple[Future[bytes], list[PackEntry]]] = deque()
        self.stored: list[PackListing] = []

    def add(self, chunk_id: bytes, codec: Codec, payload: bytes | memoryview, raw_len: int) -> None:
        self._builder.add(chunk_id, codec, payload, raw_len)
        if self._builder.size >= self._target_size:
            self._seal()

    def _seal(self) -> None:
        data, entries = self._builder.finish()
        self._builder = PackBuilder()
        self._in_flight.append((self._pool.submit(_store_pack, self._backend, data), entries))
        while len(self._in_flight) > MAX_PACKS_IN_FLIGHT:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        future, entries = self._in_flight.popleft()
        self.stored.append((future.result(), entries))

    def finish(self) -> list[PackListing]:
        """Seal the last pack and wait until every pack is stored."""
        if len(self._builder):
            self._seal()
        while self._in_flight:
            self._wait_oldest()
        return self.stored

    def abandon(self) -> None:
        """Wait for uploads already started so that no thread writes after a failed put."""
        for future, _ in self._in_flight:
            future.exception()


def write_stream(
    source: BinaryIO | bytes | bytearray | memoryview,
    *,
    backend: Backend,
    config: StoreConfig,
    index: Index,
    cpu_pool: Executor,
    io_pool: Executor,
) -> tuple[StreamDescriptor, WriteStats]:
    """Store a stream's chunks (packs, then an index object) and describe the stream.

    Chunks the index already lists are not stored again; the caller writes whatever
    object refers to the descriptor, after this returns.
    """
    chunker = Chunker(config.chunker)
    whole = hashlib.sha256()
    chunk_ids = bytearray()
    chunk_sizes: list[int] = []
    stats = WriteStats()
    uploader = _PackUploader(backend, io_pool, config.pack_size)
    added: set[bytes] = set()
    pending: deque[Future[list[EncodedChunk]]] = deque()

    def known(chunk_id: bytes) -> bool:
        return chunk_id in index or chunk_id in added

    def collect_oldest() -> None:
        for chunk_id, raw_len, codec, payload in pending.popleft().result():
            chunk_ids.extend(chunk_id)
            chunk_sizes.append(raw_len)
            if payload is not None and not known(chunk_id):
                added.add(chunk_id)
                uploader.add(chunk_id, codec, payload, raw_len)
                stats.new_chunks += 1
                stats.new_bytes_stored += len(payload)

    try:
        for group in chunker.groups(source):
            for data in group:
                whole.update(data)
                stats.bytes_in += len(data)
            pending.append(cpu_pool.submit(_encode_group, group, known, config.compression))
            while len(pending) > MAX_GROUPS_IN_FLIGHT:
                collect_oldest()
        while pending:
            collect_oldest()
        packs = uploader.finish()
    except BaseException:
        for future in pending:
            future.cancel()
        uploader.abandon()
        raise
    if packs:
        index.commit(packs)
    stats.chunks = len(chunk_sizes)
    stats.packs = [pack_id for pack_id, _ in packs]
    descriptor = StreamDescriptor(
        whole.digest(), stats.bytes_in, bytes(chunk_ids), tuple(chunk_sizes)
    )
    return descriptor, stats
