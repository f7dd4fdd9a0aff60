"""The write path: stream -> chunks -> hash and compress in parallel -> packs -> index."""

from __future__ import annotations

import hashlib
import io
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

from castore import layout
from castore.backend import Backend
from castore.chunking import Chunker
from castore.compression import Codec, encode_chunk
from castore.config import CompressionParams, StoreConfig
from castore.errors import InvalidInputError
from castore.index import Index, PackListing
from castore.packs import PackBuilder, PackEntry
from castore.streams import StreamDescriptor

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
            (self._pool.submit(self._backend.write, path, data), pack_id, entries)
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


class StreamWriter(io.RawIOBase):
    """A writable binary file that stores what is written into it, deduplicated.

    `commit` stores the packs and their index object and returns the stream's
    descriptor; whatever refers to the stream is written by the caller afterwards.
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
    ) -> None:
        super().__init__()
        self._index = index
        self._compression = config.compression
        self._cpu_pool = cpu_pool
        self._hash_pool = hash_pool
        self._hashed: Future[None] | None = None
        self._chunker = Chunker(config.chunker, self._submit)
        self._whole = hashlib.sha256()
        self._chunk_ids = bytearray()
        self._chunk_sizes: list[int] = []
        self._uploader = _PackUploader(backend, io_pool, config.pack_size)
        self._added: set[bytes] = set()
        self._pending: deque[Future[list[EncodedChunk]]] = deque()
        self._position = 0
        self.stats = WriteStats()

    def writable(self) -> bool:
        """Always True."""
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        """Add bytes to the stream."""
        taken = self._chunker.write(data)
        self._position += taken
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

    def _known(self, chunk_id: bytes) -> bool:
        return chunk_id in self._index or chunk_id in self._added

    def _hash_group(self, group: list[memoryview]) -> None:
        for data in group:
            self._whole.update(data)

    def _submit(self, group: list[memoryview]) -> None:
        # The whole-stream hash is sequential: a one-thread pool keeps it in order and off
        # the thread that reads and cuts the stream.
        self._hashed = self._hash_pool.submit(self._hash_group, group)
        self.stats.bytes_in += sum(len(data) for data in group)
        self._pending.append(
            self._cpu_pool.submit(_encode_group, group, self._known, self._compression)
        )
        while len(self._pending) > MAX_GROUPS_IN_FLIGHT:
            self._collect_oldest()

    def _collect_oldest(self) -> None:
        for chunk_id, raw_len, codec, payload in self._pending.popleft().result():
            self._chunk_ids.extend(chunk_id)
            self._chunk_sizes.append(raw_len)
            if payload is not None and not self._known(chunk_id):
                self._added.add(chunk_id)
                self._uploader.add(chunk_id, codec, payload, raw_len)
                self.stats.new_chunks += 1
                self.stats.new_bytes_stored += len(payload)

    def commit(self) -> StreamDescriptor:
        """Store the remaining chunks, then the index object; describe the stream."""
        try:
            self._chunker.finish()
            while self._pending:
                self._collect_oldest()
            packs = self._uploader.finish()
            if self._hashed is not None:
                self._hashed.result()
        except BaseException:
            self.abort()
            raise
        if packs:
            self._index.commit(packs)
        self.stats.chunks = len(self._chunk_sizes)
        self.stats.packs = [pack_id for pack_id, _ in packs]
        super().close()
        return StreamDescriptor(
            self._whole.digest(),
            self.stats.bytes_in,
            bytes(self._chunk_ids),
            tuple(self._chunk_sizes),
        )

    def abort(self) -> None:
        """Give up: no index object is written, so stored packs stay unreferenced until gc."""
        for future in self._pending:
            future.cancel()
        self._uploader.abandon()
        super().close()
