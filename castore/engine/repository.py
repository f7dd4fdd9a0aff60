"""The Repository: one store's backend, config, index, refs, leases, cache and threads.

Every service (catalog, snapshots, maintenance, trust) works on a Repository; the public
`castore.Store` is a thin facade over one. It offers the read and write plumbing: write
sessions and streams, verified chunk iteration, and the writer lease.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from castore.backend import open_backend, read_bounded
from castore.backend.counting import CountingBackend, Requests
from castore.engine.cache import LocalCache
from castore.engine.index import Index
from castore.engine.leases import WriterLease
from castore.engine.reader import (
    SeekableStreamReader,
    SparseFileReader,
    StreamReader,
    VerifiedStream,
    iter_stream,
)
from castore.engine.refs import RefStore
from castore.engine.writer import StreamWriter, WriteSession, WriteStats
from castore.errors import (
    BackendError,
    CastoreError,
    InvalidInputError,
    NotAStoreError,
    NotFoundError,
    ObjectExistsError,
    ObjectNotFoundError,
    StoreExistsError,
)
from castore.format import layout
from castore.format.config import MAX_CONFIG_SIZE, StoreConfig
from castore.format.digests import format_digest
from castore.format.streams import StreamDescriptor, decode_stream_object


class Readable(Protocol):
    """A binary file object, or anything with a file's read()."""

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes; b"" at the end."""
        ...


Source = bytes | bytearray | memoryview | Readable | os.PathLike[str]
"""What `put` accepts: bytes, a binary file object, or the path of a file."""

REMOTE_IO_THREADS = 16
"""Concurrent requests to a remote backend: latency, not CPU, bounds them."""
LOCAL_IO_THREADS = 4
"""Concurrent local reads and writes: more only adds memory (per-thread malloc arenas)."""
CONSOLIDATE_AT = 32
"""A write that leaves more index objects than this merges them into one (Index.consolidate)."""


class Repository:
    """The internals of one opened store. Thread-safe; close() releases its threads."""

    def __init__(
        self, backend: CountingBackend, config: StoreConfig, cache: LocalCache | None = None
    ) -> None:
        self.backend = backend
        self.config = config
        self.cache = cache or LocalCache()
        """Local cache: chunks of remote stores, and whole streams for mmap loads."""
        self.lease = WriterLease(backend)
        """The writer lease, held during every write operation (docs/FORMAT.md)."""
        self.refs = RefStore(backend, before_publish=self.lease.check)
        self._cpu_pool = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="castore-cpu")
        io_threads = REMOTE_IO_THREADS if backend.is_remote else LOCAL_IO_THREADS
        self._io_pool = ThreadPoolExecutor(io_threads, thread_name_prefix="castore-io")
        self._hash_pool = ThreadPoolExecutor(1, thread_name_prefix="castore-hash")
        # The local backend reads its own disk: copies of its index objects would only
        # double the bytes on disk (docs/DECISIONS.md, "Index cache").
        index_cache = (
            self.cache.index_objects(config.store_id, backend.url) if backend.is_remote else None
        )
        self.index = Index(backend, self._io_pool, index_cache)
        self.index.refresh()
        self.last_write: WriteStats | None = None
        """What the most recent stream written through this repository added."""

    @classmethod
    def create(
        cls,
        url: str,
        storage_options: dict[str, Any],
        config: StoreConfig,
        cache: LocalCache | None = None,
    ) -> Repository:
        """Create a store at `url` (a local path or fsspec URL) and open it."""
        backend = open_backend(url, storage_options)
        backend.ensure_container()
        try:
            backend.create(layout.CONFIG, config.encode())
        except ObjectExistsError as exc:
            raise StoreExistsError(f"a castore store already exists at {backend.url}") from exc
        return cls(backend, config, cache)

    @classmethod
    def open(
        cls, url: str, storage_options: dict[str, Any], cache: LocalCache | None = None
    ) -> Repository:
        """Open the existing store at `url`."""
        backend = open_backend(url, storage_options)
        try:
            data = read_bounded(backend, layout.CONFIG, MAX_CONFIG_SIZE)
        except ObjectNotFoundError as exc:
            raise NotAStoreError(
                f"{backend.url} is not a castore store (it has no config object); "
                "create one with castore.init() or 'castore init'"
            ) from exc
        return cls(backend, StoreConfig.decode(data), cache)

    @property
    def url(self) -> str:
        """Where the store lives."""
        return self.backend.url

    def requests(self) -> Requests:
        """The backend operations this repository has made since it was opened."""
        return self.backend.requests()

    def consolidate_index(self) -> list[str]:
        """Merge the index objects into one under the writer lease; return those replaced."""
        with self.lease.held():
            return self.index.consolidate(self.lease.check)

    def close(self) -> None:
        """Release the worker threads."""
        for pool in (self._cpu_pool, self._io_pool, self._hash_pool):
            pool.shutdown(wait=True, cancel_futures=True)

    # -- writing ----------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the writer lease for one write operation, with an index no gc has outdated.

        Deduplicating against an index loaded before a gc could reference chunks that gc
        deleted; once the lease is held no gc can start, so one refresh suffices.

        A write that leaves more than CONSOLIDATE_AT index objects merges them into one
        before it releases the lease, so that cold opens stay short.

        The write statistics of the operation (`last_write`) count every backend operation
        made while it ran, the lease's included (and those of other threads, if any use
        this repository at the same time).
        """
        before = self.requests()
        self.last_write = None
        try:
            with self.lease.held():
                self.index.refresh()
                yield
                if len(self.index.objects) > CONSOLIDATE_AT:
                    with contextlib.suppress(CastoreError):
                        # The write is published: a failed merge leaves a readable index
                        # (merged first, deleted after), and the next write tries again.
                        self.index.consolidate(self.lease.check)
        finally:
            if self.last_write is not None:
                self.last_write.requests = self.requests() - before

    def write_session(self, *, rewrite: bool = False) -> WriteSession:
        """A session for writing streams; commit() it before referring to them."""
        return WriteSession(
            rewrite=rewrite,
            backend=self.backend,
            config=self.config,
            index=self.index,
            cpu_pool=self._cpu_pool,
            io_pool=self._io_pool,
            hash_pool=self._hash_pool,
        )

    def write_stream(
        self,
        source: Source | Callable[[StreamWriter], None],
        *,
        observe: Callable[[memoryview], object] | None = None,
    ) -> StreamDescriptor:
        """Store one stream's chunks and index; return its descriptor (nothing refers to it yet).

        `source` is bytes, a binary file, a path, or a function that writes into the stream;
        `observe`, if given, is called with the stream's bytes, in order, as they are written.
        """
        with self.write_session() as session:
            writer = session.stream(observe)
            if isinstance(source, bytes | bytearray | memoryview):
                writer.write(source)
            elif isinstance(source, os.PathLike):
                try:
                    with open(source, "rb") as file:
                        writer.copy_from(file)
                except OSError as exc:
                    raise InvalidInputError(f"cannot read {os.fspath(source)!r}: {exc}") from exc
            elif callable(source) and not hasattr(source, "read"):
                source(writer)
            else:
                writer.copy_from(source)
            descriptor = writer.finish()
            session.commit()
        self.last_write = session.stats
        return descriptor

    # -- reading ----------------------------------------------------------------------------

    def stream_descriptor(self, content_digest: bytes) -> StreamDescriptor:
        """The chunk list of a stream stored with `put`."""
        try:
            data = self.backend.read(layout.stream_path(content_digest))
        except ObjectNotFoundError as exc:
            raise NotFoundError(
                f"no content with digest {format_digest(content_digest)} in {self.url}"
            ) from exc
        return decode_stream_object(data, content_digest)

    def iter_chunks(
        self, descriptor: StreamDescriptor, *, authenticated: bool = False, first: int = 0
    ) -> Generator[bytes | memoryview, None, None]:
        """A stream's bytes as verified chunks, in order (from chunk number `first` on).

        `authenticated` says the chunk list was checked against a version digest, which
        makes re-hashing the whole stream redundant (each chunk is still checked), and
        lets a read start at any chunk.
        """
        return iter_stream(
            descriptor,
            backend=self.backend,
            index=self.index,
            pool=self._io_pool,
            cache=self.cache if self.backend.is_remote else None,
            authenticated=authenticated,
            first=first,
        )

    def open_descriptor(
        self, descriptor: StreamDescriptor, *, authenticated: bool = False
    ) -> VerifiedStream:
        """A readable binary file over a described stream, verified as it is read; seekable
        when the chunk list is `authenticated` (each read is then proven on its own)."""
        if authenticated:

            def open_from(first: int) -> Iterator[bytes | memoryview]:
                return self.iter_chunks(descriptor, authenticated=True, first=first)

            raw = SeekableStreamReader(open_from, descriptor.chunk_sizes)
            return VerifiedStream(raw, descriptor.size)
        chunks = self.iter_chunks(descriptor)
        return VerifiedStream(StreamReader(chunks, descriptor.size), descriptor.size)

    def open_sparse(
        self, descriptor: StreamDescriptor, extents: tuple[tuple[int, int], ...], size: int
    ) -> VerifiedStream:
        """A seekable file of `size` bytes whose data `extents` are the authenticated
        stream `descriptor` describes (a sparse file of a snapshot); zeros elsewhere."""

        def open_from(first: int) -> Iterator[bytes | memoryview]:
            return self.iter_chunks(descriptor, authenticated=True, first=first)

        stored = SeekableStreamReader(open_from, descriptor.chunk_sizes)
        return VerifiedStream(SparseFileReader(stored, extents, size), size)

    def materialize(self, descriptor: StreamDescriptor) -> Path:
        """A verified local file holding the stream, kept in the cache (for mmap loads)."""

        def fill(file: Any) -> None:
            for chunk in self.iter_chunks(descriptor):
                file.write(chunk)

        try:
            return self.cache.stream_file(descriptor.sha256, descriptor.size, fill)
        except OSError as exc:
            raise BackendError(f"cannot write to the cache {self.cache.root}: {exc}") from exc
