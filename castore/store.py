"""The public Store: create or open a store and move verified bytes in and out of it."""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from castore import layout
from castore.backend import Backend, open_backend
from castore.config import StoreConfig
from castore.digests import format_digest, parse_digest
from castore.errors import (
    InvalidInputError,
    NotAStoreError,
    NotFoundError,
    ObjectExistsError,
    ObjectNotFoundError,
    StoreExistsError,
)
from castore.index import Index
from castore.maintenance import VerifyReport, verify
from castore.reader import StreamReader, iter_stream
from castore.streams import StreamDescriptor, decode_stream_object, encode_stream_object
from castore.writer import StreamWriter, WriteStats

Source = bytes | bytearray | memoryview | BinaryIO | os.PathLike[str]
"""What `put` accepts: bytes, a binary file object, or the path of a file."""

IO_THREADS = 16
"""Concurrent backend requests: S3 latency, not CPU, bounds them."""


class Store:
    """A castore store on one backend. Thread-safe; use as a context manager or close()."""

    def __init__(self, backend: Backend, config: StoreConfig) -> None:
        self.backend = backend
        self.config = config
        self._cpu_pool = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="castore-cpu")
        self._io_pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="castore-io")
        self.index = Index(backend, self._io_pool)
        self.index.refresh()
        self.last_write: WriteStats | None = None
        """What the most recent put or save on this Store object added."""

    @property
    def url(self) -> str:
        """Where the store lives."""
        return self.backend.url

    def __repr__(self) -> str:
        return f"<castore.Store {self.url}>"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store's worker threads."""
        self._cpu_pool.shutdown(wait=True, cancel_futures=True)
        self._io_pool.shutdown(wait=True, cancel_futures=True)

    # -- bytes in ---------------------------------------------------------------------------

    def stream_writer(self) -> StreamWriter:
        """A writable file whose bytes are stored deduplicated; call its `commit()` at the end."""
        return StreamWriter(
            backend=self.backend,
            config=self.config,
            index=self.index,
            cpu_pool=self._cpu_pool,
            io_pool=self._io_pool,
        )

    def write_stream(self, source: Source) -> StreamDescriptor:
        """Store a stream's chunks and return its descriptor (no object refers to it yet)."""
        writer = self.stream_writer()
        try:
            if isinstance(source, bytes | bytearray | memoryview):
                writer.write(source)
            elif isinstance(source, os.PathLike):
                try:
                    with open(source, "rb") as file:
                        writer.copy_from(file)
                except OSError as exc:
                    raise InvalidInputError(f"cannot read {os.fspath(source)!r}: {exc}") from exc
            else:
                writer.copy_from(source)
        except BaseException:
            writer.abort()
            raise
        descriptor = writer.commit()
        self.last_write = writer.stats
        return descriptor

    def put(self, source: Source) -> str:
        """Store bytes, a binary file object or a file; return ``sha256:<hex>`` of the bytes.

        The digest equals what ``sha256sum`` prints for the same bytes.
        """
        descriptor = self.write_stream(source)
        self.backend.write(layout.stream_path(descriptor.sha256), encode_stream_object(descriptor))
        return format_digest(descriptor.sha256)

    # -- bytes out --------------------------------------------------------------------------

    def stream_descriptor(self, digest: str) -> StreamDescriptor:
        """The chunk list of a stream stored with `put`."""
        raw = parse_digest(digest)
        try:
            data = self.backend.read(layout.stream_path(raw))
        except ObjectNotFoundError as exc:
            raise NotFoundError(f"no content with digest {digest} in {self.url}") from exc
        return decode_stream_object(data, raw)

    def iter_chunks(self, descriptor: StreamDescriptor) -> Iterator[bytes | memoryview]:
        """A stream's bytes as verified chunks, in order."""
        return iter_stream(descriptor, backend=self.backend, index=self.index, pool=self._io_pool)

    def contains(self, digest: str) -> bool:
        """Whether content with this digest was put into the store."""
        return self.backend.exists(layout.stream_path(parse_digest(digest)))

    def get(self, digest: str) -> bytes:
        """The bytes stored under a content digest, verified."""
        return b"".join(self.iter_chunks(self.stream_descriptor(digest)))

    def open_stream(self, digest: str) -> io.BufferedReader:
        """A readable binary file over the content, verified as it is read."""
        descriptor = self.stream_descriptor(digest)
        return io.BufferedReader(StreamReader(self.iter_chunks(descriptor), descriptor.size))

    def get_file(self, digest: str, path: str | os.PathLike[str]) -> None:
        """Write the content to `path`; the file appears only once every byte is verified."""
        descriptor = self.stream_descriptor(digest)
        target = Path(path)
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.castore-tmp")
        try:
            with open(temporary, "wb") as file:
                for chunk in self.iter_chunks(descriptor):
                    file.write(chunk)
            os.replace(temporary, target)
        except OSError as exc:
            raise InvalidInputError(f"cannot write {os.fspath(path)!r}: {exc}") from exc
        finally:
            temporary.unlink(missing_ok=True)

    # -- health -----------------------------------------------------------------------------

    def verify(self, *, read_data: bool = True) -> VerifyReport:
        """Check that every stored stream resolves, and with `read_data` reads back exactly."""
        return verify(self, read_data=read_data)


def init(
    url: str | os.PathLike[str], *, config: StoreConfig | None = None, **storage_options: Any
) -> Store:
    """Create a store at a local path or fsspec URL and return it opened."""
    backend = open_backend(os.fspath(url), storage_options)
    config = config or StoreConfig()
    backend.ensure_container()
    try:
        backend.create(layout.CONFIG, config.encode())
    except ObjectExistsError as exc:
        raise StoreExistsError(f"a castore store already exists at {backend.url}") from exc
    return Store(backend, config)


def open_store(url: str | os.PathLike[str], **storage_options: Any) -> Store:
    """Open an existing store at a local path or fsspec URL."""
    backend = open_backend(os.fspath(url), storage_options)
    try:
        data = backend.read(layout.CONFIG)
    except ObjectNotFoundError as exc:
        raise NotAStoreError(
            f"{backend.url} is not a castore store (it has no config object); "
            "create one with castore.init() or 'castore init'"
        ) from exc
    return Store(backend, StoreConfig.decode(data))
