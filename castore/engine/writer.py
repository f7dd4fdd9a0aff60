"""The write path: stream -> chunks -> hash and compress in parallel -> packs -> index."""

from __future__ import annotations

import hashlib
import io
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

from castore.backend import Backend
from castore.backend.counting import Requests
from castore.engine.chunking import Chunker
from castore.engine.index import Index
from castore.errors import InvalidInputError
from castore.format import layout
from castore.format.compression import ChunkEncoder, Codec
from castore.format.config import StoreConfig
from castore.format.index import PackListing
from castore.format.packs import PackBuilder, PackEntry
from castore.format.streams import StreamDescriptor

MAX_GROUPS_IN_FLIGHT = 4
MAX_PACKS_IN_FLIGHT = 3
COPY_BUFFER = 4 * 1024 * 1024

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
    requests: Requests = field(default_factory=Requests)
    """Backend operations of the whole put, save or backup (lease, refs and manifest
    included); all zero for a write made outside one (Repository.writing)."""


def encode_group(
    group: list[memoryview], known: Callable[[list[bytes]], list[bool]], config: StoreConfig
) -> list[EncodedChunk]:
    """Hash every chunk of a group and encode those the store does not have yet, with the
    codecs the store's format version and compression parameters allow."""
    encoder = ChunkEncoder(config)
    encoded: list[EncodedChunk] = []
    chunk_ids = [hashlib.sha256(data).digest() for data in group]
    # One batched index search for the whole group.
    for data, chunk_id, have in zip(group, chunk_ids, known(chunk_ids), strict=True):
        if have:
            encoded.append((chunk_id, len(data), Codec.RAW, None))
        else:
            codec, payload = encoder.encode(data)
            encoded.append((chunk_id, len(data), codec, payload))
    return encoded


class _PackUploader:
    """Fills packs to the target size and stores them in the background, a few at a time."""

    def __init__(self, backend: Backend, pool: Executor, target_size: int) -> None:
        self._backend = backend
        self._pool = pool
        self._target_size = target_size
        self._builder = PackBuilder()
        self._in_flight: deque[tuple[Future[None], bytes, list[PackEntry]]] = deque()
        self.stored: list[PackListing] = []

    def add(self, chunk_id: bytes, codec: Codec, payload: bytes | memoryview, raw_len: int) -> None:
        self._builder.add(chunk_id, codec, payload, raw_len)
        if self._builder.size >= self._target_size:
            self._seal()

    def _seal(self) -> None:
        pack_id, data, entries = self._builder.finish()
        self._builder = PackBuilder()
        path = layout.pack_path(pack_id)
        self._in_flight.append(
            (self._pool.submit(self._backend.write, path, memoryview(data)), pack_id, entries)
        )
        while len(self._in_flight) > MAX_PACKS_IN_FLIGHT:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        future, pack_id, entries = self._in_flight.popleft()
        future.result()
        self.stored.append((pack_id, entries))

    def finish(self) -> list[PackListing]:
        """Seal the last pack and wait until every pack is stored."""
        if len(self._builder):
            self._seal()
        while self._in_flight:
            self._wait_oldest()
        return self.stored

    def abandon(self) -> None:
        """Wait for uploads already started so that no thread writes after a failed write."""
        for future, _, _ in self._in_flight:
            future.exception()


class WriteSession:
    """One operation's writes: shared packs and dedup, one index object at the end.

    Open streams with `stream()`; `commit()` stores the remaining packs and then the
    index object. Only after that may anything refer to the streams' descriptors.
    """

    def __init__(
        self,
        *,
        backend: Backend,
        config: StoreConfig,
        index: Index,
        cpu_pool: Executor,
        io_pool: Executor,
        hash_pool: Executor,
        rewrite: bool = False,
    ) -> None:
        self.config = config
        self._rewrite = rewrite
        self.index = index
        self.cpu_pool = cpu_pool
        self.hash_pool = hash_pool
        self.uploader = _PackUploader(backend, io_pool, config.pack_size)
        self.added: set[bytes] = set()
        self.stats = WriteStats()
        self.index_object: str | None = None
        """The index object commit() wrote, if any."""
        self._streams: list[StreamWriter] = []

    def __enter__(self) -> WriteSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None:
            self.abort()

    def known(self, chunk_ids: list[bytes]) -> list[bool]:
        """Whether the store or this session already holds each chunk (one batched search).

        A rewriting session (gc's repacking) stores chunks even if the index lists them.
        """
        indexed = [False] * len(chunk_ids) if self._rewrite else self.index.contains_many(chunk_ids)
        return [have or c in self.added for c, have in zip(chunk_ids, indexed, strict=True)]

    def stream(self, observe: Callable[[memoryview], object] | None = None) -> StreamWriter:
        """A new writable stream in this session; `observe` sees its bytes as they come."""
        writer = StreamWriter(self, observe)
        self._streams.append(writer)
        return writer

    def store_chunk(self, encoded: EncodedChunk) -> None:
        """Put a new chunk into the current pack (chunks the store has are skipped)."""
        chunk_id, raw_len, codec, payload = encoded
        if payload is None or self.known([chunk_id])[0]:
            return
        self.added.add(chunk_id)
        self.uploader.add(chunk_id, codec, payload, raw_len)
        self.stats.new_chunks += 1
        self.stats.new_bytes_stored += len(payload)

    def commit(self) -> None:
        """Store the remaining packs, then the index object that makes them visible."""
        try:
            for writer in self._streams:
                writer.finish()
            packs = self.uploader.finish()
        except BaseException:
            self.abort()
            raise
        if packs:
            self.index_object = self.index.commit(packs)
        self.stats.packs = [pack_id for pack_id, _ in packs]

    def abort(self) -> None:
        """Give up: no index object is written, so stored packs stay unreferenced until gc."""
        for writer in self._streams:
            writer.abandon()
        self.uploader.abandon()


class StreamWriter(io.RawIOBase):
    """A writable binary file whose bytes are stored, deduplicated, in its session."""

    def __init__(
        self, session: WriteSession, observe: Callable[[memoryview], object] | None = None
    ) -> None:
        super().__init__()
        self._session = session
        self._observe = observe
        self._chunker = Chunker(session.config.chunker, self._submit)
        self._whole = hashlib.sha256()
        self._hashed: Future[None] | None = None
        self._chunk_ids = bytearray()
        self._chunk_sizes: list[int] = []
        self._pending: deque[Future[list[EncodedChunk]]] = deque()
        self._position = 0
        self._descriptor: StreamDescriptor | None = None

    def writable(self) -> bool:
        """Always True."""
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        """Add bytes to the stream (and show them to the observer, if there is one)."""
        taken = self._chunker.write(data)
        self._position += taken
        if self._observe is not None:
            self._observe(memoryview(data).cast("B"))
        return taken

    def tell(self) -> int:
        """Bytes written so far (lets joblib align arrays for memory-mapping)."""
        return self._position

    def copy_from(self, source: object) -> None:
        """Write everything a binary file object yields until its end."""
        read = getattr(source, "read", None)
        if read is None:
            raise InvalidInputError(
                f"cannot store a {type(source).__name__}: pass bytes, a binary file or a path"
            )
        try:
            while piece := read(COPY_BUFFER):
                if not isinstance(piece, bytes | bytearray | memoryview):
                    raise InvalidInputError("the input stream must yield bytes, not text")
                self.write(piece)
        except OSError as exc:
            raise InvalidInputError(f"cannot read the input stream: {exc}") from exc

    def _hash_group(self, group: list[memoryview]) -> None:
        for data in group:
            self._whole.update(data)

    def _submit(self, group: list[memoryview]) -> None:
        session = self._session
        # The whole-stream hash is sequential: a one-thread pool keeps it in order and off
        # the thread that reads and cuts the stream.
        self._hashed = session.hash_pool.submit(self._hash_group, group)
        session.stats.bytes_in += sum(len(data) for data in group)
        self._pending.append(
            session.cpu_pool.submit(encode_group, group, session.known, session.config)
        )
        while len(self._pending) > MAX_GROUPS_IN_FLIGHT:
            self._collect_oldest()

    def _collect_oldest(self) -> None:
        for encoded in self._pending.popleft().result():
            self._chunk_ids.extend(encoded[0])
            self._chunk_sizes.append(encoded[1])
            self._session.store_chunk(encoded)

    def finish(self) -> StreamDescriptor:
        """End the stream and describe it (valid once the session commits)."""
        if self._descriptor is None:
            self._chunker.finish()
            while self._pending:
                self._collect_oldest()
            if self._hashed is not None:
                self._hashed.result()
            self._session.stats.chunks += len(self._chunk_sizes)
            ids, sizes = bytes(self._chunk_ids), tuple(self._chunk_sizes)
            self._descriptor = StreamDescriptor(self._whole.digest(), self._position, ids, sizes)
            super().close()
        return self._descriptor

    def abandon(self) -> None:
        """Drop work not yet done for this stream."""
        for future in self._pending:
            future.cancel()
        super().close()
