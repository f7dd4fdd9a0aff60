"""The public Store: create or open a store and move verified bytes in and out of it."""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from castore.backend import Backend, open_backend
from castore.engine.cache import LocalCache
from castore.engine.index import Index
from castore.engine.leases import WriterLease
from castore.engine.reader import StreamReader, iter_stream
from castore.engine.refs import RefStore, TagEvent
from castore.engine.writer import StreamWriter, WriteSession, WriteStats
from castore.errors import (
    BackendError,
    IntegrityError,
    InvalidInputError,
    NotAStoreError,
    NotFoundError,
    ObjectExistsError,
    ObjectNotFoundError,
    StoreExistsError,
)
from castore.format import layout
from castore.format.config import StoreConfig
from castore.format.digests import format_digest, parse_digest
from castore.format.names import STORE_SEPARATOR, parse_reference
from castore.format.streams import StreamDescriptor, decode_stream_object, encode_stream_object
from castore.format.tree import Entry
from castore.maintenance import copy as transfer
from castore.maintenance import verify as maintenance
from castore.maintenance.gc import DEFAULT_REPACK_THRESHOLD, GcReport, gc
from castore.maintenance.verify import RepairReport, StoreStats, VerifyReport
from castore.snapshots import backup as backups
from castore.trust import signatures as signing
from castore.versions import catalog
from castore.versions.catalog import Diff, LogEntry, Version

Source = bytes | bytearray | memoryview | BinaryIO | os.PathLike[str]
"""What `put` accepts: bytes, a binary file object, or the path of a file."""

REMOTE_IO_THREADS = 16
"""Concurrent requests to a remote backend: latency, not CPU, bounds them."""
LOCAL_IO_THREADS = 4
"""Concurrent local reads and writes: more only adds memory (per-thread malloc arenas)."""


class Store:
    """A castore store on one backend. Thread-safe; use as a context manager or close()."""

    def __init__(
        self, backend: Backend, config: StoreConfig, cache: LocalCache | None = None
    ) -> None:
        self.backend = backend
        self.config = config
        self.cache = cache or LocalCache()
        """Local cache: chunks of remote stores, and whole streams for mmap loads."""
        self.refs = RefStore(backend, before_publish=self._check_lease)
        self.lease = WriterLease(backend)
        """This Store's writer lease, held during every write operation (docs/FORMAT.md)."""
        self._cpu_pool = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="castore-cpu")
        io_threads = REMOTE_IO_THREADS if backend.is_remote else LOCAL_IO_THREADS
        self._io_pool = ThreadPoolExecutor(io_threads, thread_name_prefix="castore-io")
        self._hash_pool = ThreadPoolExecutor(1, thread_name_prefix="castore-hash")
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
        for pool in (self._cpu_pool, self._io_pool, self._hash_pool):
            pool.shutdown(wait=True, cancel_futures=True)

    # -- bytes in ---------------------------------------------------------------------------

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

    def write_stream(self, source: Source | Callable[[StreamWriter], None]) -> StreamDescriptor:
        """Store one stream's chunks and index; return its descriptor (nothing refers to it yet).

        `source` is bytes, a binary file, a path, or a function that writes into the stream.
        """
        with self.write_session() as session:
            writer = session.stream()
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

    def _check_lease(self) -> None:
        self.lease.check()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the writer lease for one write operation, with an index no gc has outdated.

        Deduplicating against an index loaded before a gc could reference chunks that gc
        deleted; once the lease is held no gc can start, so one refresh suffices.
        """
        with self.lease.held():
            self.index.refresh()
            yield

    def put(self, source: Source) -> str:
        """Store bytes, a binary file object or a file; return ``sha256:<hex>`` of the bytes.

        The digest equals what ``sha256sum`` prints for the same bytes.
        """
        with self.writing():
            descriptor = self.write_stream(source)
            self.lease.check()
            path = layout.stream_path(descriptor.sha256)
            self.backend.write(path, encode_stream_object(descriptor))
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

    def iter_chunks(
        self, descriptor: StreamDescriptor, *, authenticated: bool = False
    ) -> Iterator[bytes | memoryview]:
        """A stream's bytes as verified chunks, in order.

        `authenticated` says the chunk list was checked against a version digest, which
        makes re-hashing the whole stream redundant (each chunk is still checked).
        """
        return iter_stream(
            descriptor,
            backend=self.backend,
            index=self.index,
            pool=self._io_pool,
            cache=self.cache if self.backend.is_remote else None,
            authenticated=authenticated,
        )

    def open_descriptor(
        self, descriptor: StreamDescriptor, *, authenticated: bool = False
    ) -> io.BufferedReader:
        """A readable binary file over a described stream, verified as it is read."""
        chunks = self.iter_chunks(descriptor, authenticated=authenticated)
        return io.BufferedReader(StreamReader(chunks, descriptor.size))

    def materialize(self, descriptor: StreamDescriptor) -> Path:
        """A verified local file holding the stream, kept in the cache (for mmap loads)."""

        def fill(file: Any) -> None:
            for chunk in self.iter_chunks(descriptor):
                file.write(chunk)

        try:
            return self.cache.stream_file(descriptor.sha256, descriptor.size, fill)
        except OSError as exc:
            raise BackendError(f"cannot write to the cache {self.cache.root}: {exc}") from exc

    def contains(self, digest: str) -> bool:
        """Whether content with this digest was put into the store."""
        return self.backend.exists(layout.stream_path(parse_digest(digest)))

    def get(self, digest: str) -> bytes:
        """The bytes stored under a content digest, verified."""
        return b"".join(self.iter_chunks(self.stream_descriptor(digest)))

    def open_stream(self, digest: str) -> io.BufferedReader:
        """A readable binary file over the content, verified as it is read."""
        return self.open_descriptor(self.stream_descriptor(digest))

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

    # -- named versions ---------------------------------------------------------------------

    def save(
        self,
        obj: Any,
        name: str,
        *,
        metadata: dict[str, Any] | None = None,
        tags: Iterable[str] = (),
        serializer: str = "joblib",
        force: bool = False,
        sign_with: signing.PrivateKey | None = None,
    ) -> Version:
        """Serialize `obj` straight into the store as the next version of `name`.

        Saving the same content and metadata as the latest version returns that version
        (with `tags` applied) unless `force` is set. Serializers: "joblib" (default),
        "pickle", "cloudpickle" and "raw" (bytes, a binary file or a path, as they are).
        """
        with self.writing():
            version = catalog.save(
                self, obj, name, metadata=metadata, tags=tags, serializer=serializer, force=force
            )
        if sign_with is not None:
            signing.sign(self, version.reference, sign_with)
        return version

    def load(
        self,
        ref: str,
        *,
        mmap_mode: str | None = None,
        trusted: Iterable[Any] = (),
        allow_unsafe: bool = False,
        require_signature: bool = False,
        policy: signing.TrustPolicy | None = None,
    ) -> Any:
        """Load the object a reference designates; ``mmap_mode="r"`` memory-maps arrays.

        Pickle-based streams are unpickled against an allowlist (numpy, scipy,
        scikit-learn, standard containers, plus `trusted` and the user's config): anything
        else is refused before it runs. Versions signed by a key of the trust `policy`
        (default: the user's trusted keys) load unrestricted, as does `allow_unsafe`.
        `require_signature` refuses versions no trusted key signed. See docs/SECURITY.md.
        """
        return catalog.load(
            self,
            ref,
            mmap_mode=mmap_mode,
            trusted=trusted,
            allow_unsafe=allow_unsafe,
            require_signature=require_signature,
            policy=policy,
        )

    def sign(self, ref: str, key: signing.PrivateKey) -> signing.Signature:
        """Sign a version (its version digest) with an Ed25519 key; several may sign."""
        return signing.sign(self, ref, key)

    def signatures(self, ref: str) -> list[signing.SignatureCheck]:
        """Every signature of a version, each checked."""
        return signing.signatures(self, ref)

    def resolve(self, ref: str) -> str:
        """The pinned form ``name@sha256:<hex>`` of any reference."""
        manifest, digest = catalog.resolve(self, ref)
        return f"{manifest.name}@{format_digest(digest)}"

    def qualified(self, ref: str) -> str:
        """``<store url>#name@sha256:<hex>``: store and content pinned in one string."""
        return f"{self.url}{STORE_SEPARATOR}{self.resolve(ref)}"

    def version(self, ref: str) -> Version:
        """The version a reference designates."""
        return catalog.Version.of(*catalog.resolve(self, ref))

    def names(self) -> list[str]:
        """Every name with at least one live version."""
        return [name for name in self.refs.names() if catalog.versions(self, name)]

    def versions(self, name: str) -> list[int]:
        """The live version numbers of a name, ascending."""
        return catalog.versions(self, name)

    def tag(self, ref: str, tag: str) -> Version:
        """Point a tag (``production``, ``candidate``...) at a version; its moves are kept."""
        return catalog.tag(self, ref, tag)

    def untag(self, name: str, tag: str) -> None:
        """Remove a tag from a name (the removal is kept in the tag's history)."""
        catalog.untag(self, name, tag)

    def tags(self, name: str) -> dict[str, int]:
        """A name's current tags and the version each points at."""
        return catalog.tags(self, name)

    def tag_history(self, name: str, tag: str) -> list[TagEvent]:
        """Every move of a tag, oldest first."""
        return catalog.tag_history(self, name, tag)

    def info(self, ref: str) -> dict[str, Any]:
        """Everything known about a version: both digests, size, serializer, metadata..."""
        return catalog.info(self, ref)

    def log(self, name: str, *, verify: bool = False) -> list[LogEntry]:
        """A name's history, newest first; with `verify`, IntegrityError on a broken chain."""
        if verify:
            problems = catalog.verify_history(self, name)
            if problems:
                raise IntegrityError(f"the history of {name} is broken: " + "; ".join(problems))
        return catalog.log(self, name)

    def verify_history(self, name: str) -> list[str]:
        """Problems in a name's hash chain (missing, rewritten or swapped versions)."""
        return catalog.verify_history(self, name)

    def diff(self, a: str, b: str) -> Diff:
        """Metadata changes between two versions and the bytes they share."""
        return catalog.diff(self, a, b)

    def delete(self, ref: str) -> Version:
        """Delete a version (its tags go with it); its data is freed by gc."""
        return catalog.delete(self, ref)

    # -- directory backups ------------------------------------------------------------------

    def backup(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        exclude: Iterable[str] = (),
        tags: Iterable[str] = (),
        progress: backups.ProgressCallback | None = None,
    ) -> backups.Snapshot:
        """Snapshot a directory as the next version of `name`, deduplicated against
        everything in the store; files unchanged since the last snapshot are not read.
        `exclude` takes gitignore-style patterns; unreadable files are skipped and listed."""
        with self.writing():
            return backups.backup(self, path, name, exclude=exclude, tags=tags, progress=progress)

    def restore(
        self,
        ref: str,
        target: str | os.PathLike[str],
        paths: Iterable[str] = (),
        *,
        progress: backups.ProgressCallback | None = None,
    ) -> backups.RestoreStats:
        """Restore a snapshot (or some of its `paths`) under `target`, verified, never
        writing outside it; files already identical are left alone."""
        return backups.restore(self, ref, target, paths, progress=progress)

    def snapshot_entries(self, ref: str, path: str | None = None) -> Iterator[Entry]:
        """The entries of a snapshot, or of one directory of it."""
        return backups.list_snapshot(self, ref, path)

    def snapshot_diff(self, a: str, b: str) -> Iterator[backups.Change]:
        """Files added, removed and changed between two snapshots."""
        return backups.diff_snapshots(self, a, b)

    def forget(self, name: str, **policy: Any) -> backups.ForgetResult:
        """Delete the snapshots (versions) of `name` that a restic-style policy does not keep:
        keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, dry_run."""
        return backups.forget(self, name, **policy)

    # -- health -----------------------------------------------------------------------------

    def verify(self, *, read_data: bool = False, subset: str | None = None) -> VerifyReport:
        """Check refs, manifests, hash chains and chunk locations; with `read_data`, re-read
        and re-hash every pack (or a `subset`: "10%" at random, or "n/t" by name)."""
        return maintenance.verify(self, read_data=read_data or subset is not None, subset=subset)

    def stats(self) -> StoreStats:
        """Logical and stored bytes, dedup and compression ratios, object counts."""
        return maintenance.stats(self)

    def copy(self, ref: str, dest: Store) -> list[Version]:
        """Copy a version, or every version of a name, into another store.

        Only chunks `dest` lacks are transferred, every chunk is verified on the way, and
        version digests stay the same, so pinned references work in both stores.
        """
        if parse_reference(ref).name is not None and ":" not in ref and "@" not in ref:
            return transfer.copy_name(self, ref, dest)
        return [transfer.copy_version(self, ref, dest)]

    def repair(self) -> RepairReport:
        """Rebuild lost or damaged index objects from pack footers; report what is lost."""
        return maintenance.repair(self)

    def gc(
        self, *, dry_run: bool = False, repack_threshold: float = DEFAULT_REPACK_THRESHOLD
    ) -> GcReport:
        """Delete data no version or put stream reaches; repack mostly-garbage packs.

        Safe while other processes and machines read; it waits for no one: while writers
        hold fresh leases it raises StoreBusyError (retry later).
        """
        return gc(self, dry_run=dry_run, repack_threshold=repack_threshold)


def init(
    url: str | os.PathLike[str],
    *,
    config: StoreConfig | None = None,
    cache: LocalCache | None = None,
    **storage_options: Any,
) -> Store:
    """Create a store at a local path or fsspec URL and return it opened.

    Storage options (``endpoint_url``, ``key``, ``secret``...) go to fsspec.
    """
    backend = open_backend(os.fspath(url), storage_options)
    config = config or StoreConfig()
    backend.ensure_container()
    try:
        backend.create(layout.CONFIG, config.encode())
    except ObjectExistsError as exc:
        raise StoreExistsError(f"a castore store already exists at {backend.url}") from exc
    return Store(backend, config, cache)


def open_store(
    url: str | os.PathLike[str], *, cache: LocalCache | None = None, **storage_options: Any
) -> Store:
    """Open an existing store at a local path or fsspec URL (options go to fsspec)."""
    backend = open_backend(os.fspath(url), storage_options)
    try:
        data = backend.read(layout.CONFIG)
    except ObjectNotFoundError as exc:
        raise NotAStoreError(
            f"{backend.url} is not a castore store (it has no config object); "
            "create one with castore.init() or 'castore init'"
        ) from exc
    return Store(backend, StoreConfig.decode(data), cache)


def load(reference: str, *, mmap_mode: str | None = None, **storage_options: Any) -> Any:
    """Load from a store-qualified reference ``<store url>#<reference>`` in one call."""
    parsed = parse_reference(reference)
    if parsed.store_url is None:
        raise InvalidInputError(
            f"{reference!r} names no store: expected '<store url>#<reference>', "
            "or open the store and call its load()"
        )
    with open_store(parsed.store_url, **storage_options) as store:
        return store.load(reference, mmap_mode=mmap_mode)
