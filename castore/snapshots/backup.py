"""Directory snapshots: backup, restore, ls, diff and forget, after restic's model.

A snapshot is a version of a name whose manifest has kind ``"tree"``: its stream is a
tree stream (castore.tree) listing every file, directory and symlink with its metadata
and, for files, the chunk list of the content. File contents are chunked, deduplicated
and packed by one write session per backup, so a backup adds a handful of objects to the
store (its packs, one index object, the manifest and the version ref) however many files
it holds.

Incremental runs follow restic's parent snapshot: a file whose size, mtime, ctime and
inode are those recorded by the latest snapshot of the name is not read again; its
chunk list is reused. Restores verify every chunk and each file's SHA-256, write files
through a temporary name and a rename, never follow a symlink inside the target, and
leave alone files whose size, mtime and content already match.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import socket
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass, field, fields
from functools import partial
from typing import TYPE_CHECKING, Any, BinaryIO

from castore.engine.chunking import cut_whole
from castore.engine.writer import EncodedChunk, StreamWriter, WriteSession, encode_group
from castore.errors import (
    CastoreError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
)
from castore.format.config import ChunkerParams, CompressionParams
from castore.format.digests import format_digest
from castore.format.manifest import Manifest
from castore.format.names import check_name, check_tag
from castore.format.streams import StreamDescriptor
from castore.format.tree import (
    DIR,
    FILE,
    MAX_FILE_CHUNKS,
    SKIPPED,
    SYMLINK,
    TREE_FORMAT_VERSION,
    TREE_KIND,
    TREE_SERIALIZER,
    Entry,
    TreeWriter,
    is_within,
    normalize_path,
    path_problem,
    sort_key,
)
from castore.snapshots.ignore import IgnoreRules
from castore.versions import catalog
from castore.versions.catalog import Version
from castore.versions.contents import check_tree_manifest, tree_entries

if TYPE_CHECKING:
    from castore.engine.repository import Repository

SMALL_FILE_BYTES = 4 * 1024 * 1024
"""Files up to this size are read whole by worker threads, many at once; larger ones
stream through a StreamWriter, whose chunks are hashed and compressed in parallel."""
READ_BYTES = 1024 * 1024
"""Bytes per read() of a file being backed up."""
BACKUP_THREADS = (os.cpu_count() or 2) + 2
"""Threads reading, hashing and compressing small files."""
SCAN_THREADS = 2
"""Threads listing directories and lstat-ing their entries ahead of the walk."""
MAX_PENDING_FILES = 512
MAX_PENDING_BYTES = 64 * 1024 * 1024
"""Bounds on files read but not yet recorded: memory stays bounded however big the tree."""
RESTORE_THREADS_LOCAL = 4
RESTORE_THREADS_REMOTE = 8
"""Files restored at once (each reads ahead up to castore.reader.READ_AHEAD bytes)."""
MAX_PENDING_RESTORES = 256
RESTORE_BATCH_BYTES = 8 * 1024 * 1024
RESTORE_BATCH_FILES = 128
"""Files restored by one task, whose chunks are fetched as one stream (few ranged reads)."""
TEMPORARY_PREFIX = b".castore-"


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Counters of a running backup or restore, handed to its `progress` callback."""

    files: int
    """Files done so far (read or reused by a backup, written or kept by a restore)."""
    bytes: int
    """Bytes of those files."""
    skipped: int
    """Paths skipped so far."""
    elapsed: float
    """Seconds since the operation started."""
    path: str
    """The path just done."""

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.bytes / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[Progress], None]
"""Called after each file; keep it quick (the CLI throttles its own output)."""


@dataclass
class BackupStats:
    """What one backup found, read, reused and added to the store."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    skipped: int = 0
    bytes: int = 0
    """Total size of the files in the snapshot."""
    files_read: int = 0
    """Files read from disk (new or changed since the parent snapshot)."""
    files_reused: int = 0
    """Files whose chunk list came from the parent snapshot without reading them."""
    bytes_read: int = 0
    bytes_reused: int = 0
    new_chunks: int = 0
    new_bytes_stored: int = 0
    """Compressed bytes of the chunks this backup added to the store."""
    packs: int = 0
    """Pack objects this backup wrote."""
    elapsed: float = 0.0
    parent: str | None = None
    """Pinned reference of the parent snapshot, if there was one."""
    skipped_paths: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of everything skipped, also recorded in the tree stream."""


@dataclass(frozen=True)
class Snapshot(Version):
    """The version a backup created, with the backup's statistics."""

    stats: BackupStats = field(default_factory=BackupStats, compare=False)


@dataclass
class RestoreStats:
    """What one restore wrote and what it found already in place."""

    files_written: int = 0
    files_unchanged: int = 0
    """Files left alone: same size, mtime and SHA-256 as in the snapshot."""
    dirs: int = 0
    symlinks: int = 0
    skipped: int = 0
    """Entries the snapshot records as skipped at backup time (nothing to restore)."""
    bytes_written: int = 0
    elapsed: float = 0.0


@dataclass(frozen=True)
class Change:
    """One difference between two snapshots."""

    kind: str
    """"added", "removed" or "changed"."""
    path: bytes
    before: Entry | None
    after: Entry | None
    what: tuple[str, ...] = ()
    """For "changed": which of "type", "content", "target", "reason", "mode", "mtime"."""

    @property
    def path_str(self) -> str:
        """The path as a str."""
        return os.fsdecode(self.path)


# -- reading snapshots -----------------------------------------------------------------------


def snapshot_manifest(repo: Repository, ref: str) -> Manifest:
    """The manifest of the snapshot `ref` designates; InvalidInputError if not a backup."""
    manifest, _ = catalog.resolve(repo, ref)
    check_tree_manifest(manifest, ref)
    return manifest


def list_snapshot(repo: Repository, ref: str, path: str | bytes | None = None) -> Iterator[Entry]:
    """The entries of a snapshot in path order; with `path`, that entry and all below it.

    NotFoundError (raised when the listing ends) if the snapshot has no such path.
    """
    manifest = snapshot_manifest(repo, ref)
    top = normalize_path(path) if path is not None else b""
    return _list_entries(repo, manifest, top, f"{ref} has no path {path!r}")


def _list_entries(
    repo: Repository, manifest: Manifest, top: bytes, missing: str
) -> Iterator[Entry]:
    found = False
    with tree_entries(repo, manifest) as entries:
        for entry in entries:
            if is_within(entry.path, top):
                found = True
                yield entry
            elif found:
                break  # a subtree is contiguous in path order: nothing more below `top`
    if top and not found:
        raise NotFoundError(missing)


def diff_snapshots(repo: Repository, a: str, b: str) -> Iterator[Change]:
    """What changed from snapshot `a` to snapshot `b`, in path order, streamed.

    Files differ in "content" when their SHA-256 differ; "mode", "mtime", "type" and
    "target" (of symlinks) are reported too. Directories differ only by type or mode.
    """
    before, after = snapshot_manifest(repo, a), snapshot_manifest(repo, b)
    return _diff_entries(repo, before, after)


def _diff_entries(repo: Repository, a: Manifest, b: Manifest) -> Iterator[Change]:
    with tree_entries(repo, a) as old, tree_entries(repo, b) as new:
        for before, after in _merge(old, new):
            if before is None:
                assert after is not None
                yield Change("added", after.path, None, after)
            elif after is None:
                yield Change("removed", before.path, before, None)
            elif what := _differences(before, after):
                yield Change("changed", after.path, before, after, what)


def _merge(
    old: Iterator[Entry], new: Iterator[Entry]
) -> Iterator[tuple[Entry | None, Entry | None]]:
    """Pair the entries of two sorted trees by path (None where one tree lacks it)."""
    left, right = next(old, None), next(new, None)
    while left is not None or right is not None:
        left_key = sort_key(left.path) if left is not None else None
        right_key = sort_key(right.path) if right is not None else None
        if right_key is None or (left_key is not None and left_key < right_key):
            yield left, None
            left = next(old, None)
        elif left_key is None or right_key < left_key:
            yield None, right
            right = next(new, None)
        else:
            yield left, right
            left, right = next(old, None), next(new, None)


def _differences(before: Entry, after: Entry) -> tuple[str, ...]:
    if before.type != after.type:
        return ("type",)
    checks = {
        "content": before.type == FILE and before.sha256 != after.sha256,
        "target": before.type == SYMLINK and before.target != after.target,
        "reason": before.type == SKIPPED and before.reason != after.reason,
        "mode": before.mode != after.mode,
        "mtime": before.type == FILE and before.mtime_ns != after.mtime_ns,
    }
    return tuple(name for name, differs in checks.items() if differs)


# -- backup ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Found:
    """One path met by the walk: its lstat (and link target), or why it could not be read."""

    rel: str
    abspath: str
    stat: os.stat_result | None
    error: str | None = None
    target: bytes | None = None
    """A symlink's target, read along with the listing."""


@dataclass(frozen=True, slots=True)
class _FileRead:
    """A small file read by a worker: its fstat, its content, and its encoded chunks."""

    stat: os.stat_result
    content: StreamDescriptor
    chunks: list[EncodedChunk]


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _inspect(item: os.DirEntry[str], rel: str) -> _Found:
    """lstat one directory entry (and read it if it is a symlink)."""
    try:
        st = item.stat(follow_symlinks=False)
        target = os.readlink(os.fsencode(item.path)) if stat.S_ISLNK(st.st_mode) else None
    except OSError as exc:
        return _Found(rel, item.path, None, _reason(exc))
    return _Found(rel, item.path, st, target=target)


def _scan(path: str, rel: str) -> list[_Found]:
    """A directory's entries in the order of their names' bytes, each lstat-ed.

    Scans run in worker threads: the thread that records entries then makes no system
    call per file, each of which would have it wait for the GIL behind busy workers.
    """
    with os.scandir(path) as scan:
        items = sorted(scan, key=lambda item: os.fsencode(item.name))
    return [_inspect(item, f"{rel}/{item.name}" if rel else item.name) for item in items]


def _is_dir(found: _Found) -> bool:
    return found.stat is not None and stat.S_ISDIR(found.stat.st_mode)


class _Listing:
    """The entries of one directory being walked, with scans of its subdirectories
    started a few ahead of the walk."""

    PREFETCH = 8

    def __init__(self, entries: list[_Found], rules: IgnoreRules, pool: Executor) -> None:
        self.entries = [e for e in entries if not rules.excluded(e.rel, _is_dir(e))]
        self.position = 0
        self._pool = pool
        self._cursor = 0
        self._scans: dict[int, Future[list[_Found]]] = {}

    def next(self) -> _Found | None:
        """The next entry, or None at the end."""
        if self.position >= len(self.entries):
            return None
        self.position += 1
        return self.entries[self.position - 1]

    def scan_current(self) -> list[_Found]:
        """The listing of the directory `next` returned last (OSError if unreadable)."""
        self._prefetch()
        return self._scans.pop(self.position - 1).result()

    def _prefetch(self) -> None:
        while len(self._scans) < self.PREFETCH and self._cursor < len(self.entries):
            entry = self.entries[self._cursor]
            if self._cursor >= self.position - 1 and _is_dir(entry):
                self._scans[self._cursor] = self._pool.submit(_scan, entry.abspath, entry.rel)
            self._cursor += 1

    def cancel(self) -> None:
        """Drop scans not needed any more."""
        for future in self._scans.values():
            future.cancel()


def _walk(root: str, rules: IgnoreRules, pool: Executor) -> Iterator[_Found]:
    """Every path below `root` not excluded by `rules`, in tree order (depth first).

    A directory that cannot be listed is reported with its error instead of descended.
    """
    try:
        top = _scan(root, "")
    except OSError as exc:
        raise InvalidInputError(f"cannot read the directory {root!r}: {_reason(exc)}") from exc
    stack = [_Listing(top, rules, pool)]
    try:
        while stack:
            found = stack[-1].next()
            if found is None:
                stack.pop()
            elif not _is_dir(found):
                yield found
            else:
                try:
                    entries = stack[-1].scan_current()
                except OSError as exc:
                    reason = f"cannot list the directory: {_reason(exc)}"
                    yield _Found(found.rel, found.abspath, found.stat, reason)
                    continue
                yield found
                stack.append(_Listing(entries, rules, pool))
    finally:
        for listing in stack:
            listing.cancel()


class _Replaced(OSError):
    """The path no longer holds the regular file that was listed."""


@contextmanager
def _open_regular(
    abspath: str, listed: os.stat_result
) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """Open the regular file the walk listed, never a FIFO or a symlink swapped in since.

    O_NONBLOCK keeps a FIFO from blocking the open; fstat then proves it is the same
    regular file (device and inode) that was listed.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with open(os.open(abspath, flags), "rb", buffering=0) as file:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (
            listed.st_dev,
            listed.st_ino,
        ):
            raise _Replaced("it was replaced while being backed up")
        yield file, st


def _pieces(file: BinaryIO) -> Iterator[bytes]:
    while piece := file.read(READ_BYTES):
        yield piece


def _read_small_file(
    abspath: str,
    listed: os.stat_result,
    chunking: ChunkerParams,
    compression: CompressionParams,
    known: Callable[[bytes], bool],
) -> _FileRead | str:
    """Read, cut, hash and compress one small file in a worker; a str says why not."""
    try:
        with _open_regular(abspath, listed) as (file, st):
            data = file.read()
    except OSError as exc:
        return _reason(exc)
    encoded = encode_group(cut_whole(data, chunking), known, compression)
    # A one-chunk file's SHA-256 is its chunk id: no need to hash it twice.
    whole = encoded[0][0] if len(encoded) == 1 else hashlib.sha256(data).digest()
    ids, sizes = b"".join(e[0] for e in encoded), tuple(e[1] for e in encoded)
    return _FileRead(st, StreamDescriptor(whole, len(data), ids, sizes), encoded)


class _ParentCursor:
    """Walks the parent snapshot's entries alongside the backup, both in path order."""

    def __init__(self, entries: Iterator[Entry], repo: Repository) -> None:
        self._entries = entries
        self._current = next(entries, None)
        self._store = repo

    def reusable(self, path: bytes, st: os.stat_result) -> Entry | None:
        """The parent's entry for a file that has not changed since, if there is one."""
        key = sort_key(path)
        while self._current is not None and sort_key(self._current.path) < key:
            self._current = next(self._entries, None)
        entry = self._current
        if entry is None or entry.path != path or entry.type != FILE:
            return None
        unchanged = (entry.size, entry.mtime_ns, entry.ctime_ns, entry.ino) == (
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
        )
        index = self._store.index
        if unchanged and all(chunk_id in index for chunk_id, _ in entry.descriptor().chunks()):
            return entry
        return None


_Pending = tuple[bytes, "Entry | Future[_FileRead | str]", int]
"""(path, the entry or the future read of a small file, bytes in flight)."""


class _Backup:
    """One backup run: walks, reads in parallel, and records entries in order."""

    def __init__(
        self,
        repo: Repository,
        session: WriteSession,
        tree: TreeWriter,
        parent: _ParentCursor | None,
        progress: ProgressCallback | None,
    ) -> None:
        self.repo = repo
        self.session = session
        self.tree = tree
        self.parent = parent
        self.progress = progress
        self.stats = BackupStats()
        self.started = time.monotonic()
        self.pool = ThreadPoolExecutor(BACKUP_THREADS, thread_name_prefix="castore-backup")
        self.scan_pool = ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="castore-scan")
        self.pending: deque[_Pending] = deque()
        self.pending_bytes = 0

    def close(self) -> None:
        """Stop the workers (after an error, work not started is dropped)."""
        self.scan_pool.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, root: str, rules: IgnoreRules) -> None:
        """Back up everything below `root` into the tree."""
        for found in _walk(root, rules, self.scan_pool):
            self._add(found)
            self._drain(MAX_PENDING_FILES, MAX_PENDING_BYTES)
        self._drain(0, 0)
        self.tree.flush()
        self.stats.elapsed = time.monotonic() - self.started

    def _add(self, found: _Found) -> None:
        path = os.fsencode(found.rel)
        problem = path_problem(path)
        if problem:  # cannot even be named in a tree: reported, not recorded
            self._skip(found.rel, problem)
            return
        st = found.stat
        if found.error is not None or st is None:
            self._push(path, Entry.skipped(path, found.error or "unknown error"))
        elif stat.S_ISDIR(st.st_mode):
            self._push(path, Entry.from_stat(path, DIR, st))
        elif stat.S_ISLNK(st.st_mode):
            target = found.target or b""
            self._push(path, Entry.from_stat(path, SYMLINK, st, size=len(target), target=target))
        elif stat.S_ISREG(st.st_mode):
            self._file(path, found.abspath, st)
        else:
            kind = _file_kind(st.st_mode)
            self._push(path, Entry.skipped(path, f"unsupported file type: {kind}"))

    def _file(self, path: bytes, abspath: str, st: os.stat_result) -> None:
        reused = self.parent.reusable(path, st) if self.parent else None
        if reused is not None:
            self.stats.files_reused += 1
            self.stats.bytes_reused += reused.size
            self._push(path, Entry.file(path, st, reused.descriptor()))
        elif st.st_size <= SMALL_FILE_BYTES:
            config = self.session.config
            future = self.pool.submit(
                _read_small_file,
                abspath,
                st,
                config.chunker,
                config.compression,
                self.session.known,
            )
            self._push(path, future, st.st_size)
        else:
            self._push(path, self._read_large_file(path, abspath, st))

    def _read_large_file(self, path: bytes, abspath: str, listed: os.stat_result) -> Entry:
        """Stream a large file into the session here; its chunks are encoded in parallel.

        The writer is not registered with the session: it is finished here, and dropping
        it frees its chunking buffer (a registered one lives until the commit).
        """
        writer = StreamWriter(self.session)
        try:
            with _open_regular(abspath, listed) as (file, st):
                for piece in _pieces(file):
                    writer.write(piece)
                descriptor = writer.finish()
        except OSError as exc:
            writer.abandon()
            return Entry.skipped(path, _reason(exc))
        except BaseException:
            writer.abandon()
            raise
        if len(descriptor.chunk_sizes) > MAX_FILE_CHUNKS:
            return Entry.skipped(path, f"more than {MAX_FILE_CHUNKS} chunks: too large")
        self._count_read(descriptor.size)
        return Entry.file(path, st, descriptor)

    def _push(self, path: bytes, item: Entry | Future[_FileRead | str], size: int = 0) -> None:
        self.pending.append((path, item, size))
        self.pending_bytes += size

    def _drain(self, max_files: int, max_bytes: int) -> None:
        """Record finished entries in order; wait while too much is in flight."""
        while self.pending:
            _, item, _ = self.pending[0]
            over = len(self.pending) > max_files or self.pending_bytes > max_bytes
            if not over and isinstance(item, Future) and not item.done():
                return
            self._record(*self.pending.popleft())

    def _record(self, path: bytes, item: Entry | Future[_FileRead | str], size: int) -> None:
        self.pending_bytes -= size
        entry = self._stored(path, item.result()) if isinstance(item, Future) else item
        self.tree.add(entry)
        self._count(entry)

    def _stored(self, path: bytes, result: _FileRead | str) -> Entry:
        """Hand a small file's new chunks to the session (one thread packs) and describe it."""
        if isinstance(result, str):
            return Entry.skipped(path, result)
        for encoded in result.chunks:
            self.session.store_chunk(encoded)
        self._count_read(result.content.size)
        return Entry.file(path, result.stat, result.content)

    def _count_read(self, size: int) -> None:
        self.stats.files_read += 1
        self.stats.bytes_read += size

    def _count(self, entry: Entry) -> None:
        stats = self.stats
        if entry.type == DIR:
            stats.dirs += 1
            return
        if entry.type == SYMLINK:
            stats.symlinks += 1
            return
        if entry.type == SKIPPED:
            self._skip(entry.path_str, entry.reason)
        else:
            stats.files += 1
            stats.bytes += entry.size
        if self.progress is not None:
            elapsed = time.monotonic() - self.started
            done = stats.files_read + stats.files_reused
            self.progress(Progress(done, stats.bytes, stats.skipped, elapsed, entry.path_str))

    def _skip(self, path: str, reason: str) -> None:
        self.stats.skipped += 1
        self.stats.skipped_paths.append((path, reason))


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "fifo",
        stat.S_ISSOCK: "socket",
        stat.S_ISCHR: "character device",
        stat.S_ISBLK: "block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), f"mode {mode:o}")


def _source_directory(path: str | os.PathLike[str]) -> str:
    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        raise InvalidInputError(f"cannot back up {root!r}: it is not a directory")
    return root


def _parent_snapshot(repo: Repository, name: str) -> tuple[Manifest, bytes] | None:
    """The latest live version of `name`, which must be a snapshot; None if there is none."""
    if not catalog.versions(repo, name):
        return None
    manifest, digest = catalog.resolve(repo, name)
    if manifest.kind != TREE_KIND:
        raise InvalidInputError(
            f"{name} holds {manifest.kind!r} versions, not backups: back up under another name"
        )
    check_tree_manifest(manifest, name)
    return manifest, digest


def backup(
    repo: Repository,
    path: str | os.PathLike[str],
    name: str,
    *,
    exclude: Iterable[str] = (),
    tags: Iterable[str] = (),
    progress: ProgressCallback | None = None,
) -> Snapshot:
    """Snapshot the directory `path` as the next version of `name`.

    `exclude` holds gitignore-style patterns (castore.ignore). Files unchanged since the
    latest snapshot of `name` are not read. Unreadable files and special files are
    skipped, reported in the result's stats and recorded in the snapshot. `progress` is
    called after each file. Every run creates a new version, even if nothing changed.
    """
    check_name(name)
    tags = [check_tag(tag) for tag in tags]
    root = _source_directory(path)
    rules = IgnoreRules(exclude)
    parent = _parent_snapshot(repo, name)
    with ExitStack() as stack:
        cursor = None
        if parent is not None:
            cursor = _ParentCursor(stack.enter_context(tree_entries(repo, parent[0])), repo)
        session = stack.enter_context(repo.write_session())
        tree_stream = session.stream()
        run = _Backup(repo, session, TreeWriter(tree_stream.write), cursor, progress)
        stack.callback(run.close)
        run.run(root, rules)
        descriptor = tree_stream.finish()
        session.commit()
    stats = run.stats
    stats.new_chunks = session.stats.new_chunks
    stats.new_bytes_stored = session.stats.new_bytes_stored
    stats.packs = len(session.stats.packs)
    if parent is not None:
        stats.parent = f"{parent[0].name}@{format_digest(parent[1])}"
    version = catalog.commit_version(
        repo,
        name,
        descriptor,
        kind=TREE_KIND,
        serializer=TREE_SERIALIZER,
        serializer_version=str(TREE_FORMAT_VERSION),
        metadata=_snapshot_metadata(root, rules, stats),
        tags=tags,
        force=True,
    )
    values = {item.name: getattr(version, item.name) for item in fields(Version)}
    return Snapshot(**values, stats=stats)


def _snapshot_metadata(root: str, rules: IgnoreRules, stats: BackupStats) -> dict[str, object]:
    return {
        "source": root,
        "host": socket.gethostname(),
        "files": stats.files,
        "dirs": stats.dirs,
        "symlinks": stats.symlinks,
        "skipped": stats.skipped,
        "bytes": stats.bytes,
        "exclude": list(rules.patterns),
    }


# -- restore ---------------------------------------------------------------------------------


def _lstat(dir_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(dir_fd: int, name: bytes, st: os.stat_result) -> None:
    """Remove what is at `name` (a whole directory tree, without following symlinks)."""
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _replace(
    dir_fd: int, name: bytes, current: os.stat_result | None, create: Callable[[bytes], None]
) -> None:
    """Create the new object under a temporary name, then rename it over `name`."""
    temporary = TEMPORARY_PREFIX + secrets.token_hex(8).encode() + b".tmp"
    try:
        create(temporary)
        if current is not None and stat.S_ISDIR(current.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def _open_dir(dir_fd: int, name: bytes) -> int:
    """Open a directory without following a symlink in its place."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise InvalidInputError(
                f"refusing to restore into {os.fsdecode(name)!r}: it is not a directory but "
                "a symlink or file, and restore never follows symlinks"
            ) from exc
        raise


def _prepare_dir(dir_fd: int, name: bytes) -> int:
    """Make `name` a real directory we can write into; return it opened."""
    current = _lstat(dir_fd, name)
    if current is not None and not stat.S_ISDIR(current.st_mode):
        _remove(dir_fd, name, current)
        current = None
    if current is None:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    fd = _open_dir(dir_fd, name)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & stat.S_IRWXU != stat.S_IRWXU:
        os.fchmod(fd, mode | stat.S_IRWXU)  # until its own mode is set, after its contents
    return fd


def _restore_symlink(dir_fd: int, name: bytes, entry: Entry) -> bool:
    """Create or fix a symlink (never followed); True if it had to be written."""
    current = _lstat(dir_fd, name)
    same = (
        current is not None
        and stat.S_ISLNK(current.st_mode)
        and os.readlink(name, dir_fd=dir_fd) == entry.target
    )
    if not same:
        _replace(dir_fd, name, current, lambda tmp: os.symlink(entry.target, tmp, dir_fd=dir_fd))
    times = (entry.mtime_ns, entry.mtime_ns)
    os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)
    return not same


def _keep_existing_file(dir_fd: int, name: bytes, current: os.stat_result, entry: Entry) -> bool:
    """Whether the file in place already has the entry's size, mtime and SHA-256.

    If so its mode is corrected and it is kept; otherwise it is left for rewriting.
    """
    if not stat.S_ISREG(current.st_mode) or (current.st_size, current.st_mtime_ns) != (
        entry.size,
        entry.mtime_ns,
    ):
        return False
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with open(os.open(name, flags, dir_fd=dir_fd), "rb", buffering=0) as file:
        if hashlib.file_digest(file, "sha256").digest() != entry.sha256:
            return False
        if stat.S_IMODE(os.fstat(file.fileno()).st_mode) != entry.mode:
            os.fchmod(file.fileno(), entry.mode)
    return True


def _write_content(
    chunks: Iterator[bytes | memoryview], entry: Entry, dir_fd: int, name: bytes
) -> None:
    """Write a file's content (its chunks, the next ones of `chunks`), mode and mtime to a
    new file `name`; IntegrityError unless the content hashes to the entry's SHA-256."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    whole = hashlib.sha256()
    with open(os.open(name, flags, 0o600, dir_fd=dir_fd), "wb") as out:
        for _ in entry.chunk_sizes:
            chunk = next(chunks)
            whole.update(chunk)
            out.write(chunk)
        if whole.digest() != entry.sha256:
            raise IntegrityError(
                f"{entry.path_str!r} restores as sha256:{whole.hexdigest()}, not as the "
                f"sha256:{entry.sha256.hex()} its snapshot records"
            )
        out.flush()
        os.fchmod(out.fileno(), entry.mode)
        os.utime(out.fileno(), ns=(entry.mtime_ns, entry.mtime_ns))


class _EntryFailed(Exception):
    """An OSError while restoring one entry of a task that restores several."""

    def __init__(self, entry: Entry, cause: OSError) -> None:
        super().__init__(entry.path_str, cause)
        self.entry = entry
        self.cause = cause


def _restore_files(repo: Repository, files: list[tuple[_OpenDir, Entry]]) -> list[bool]:
    """Restore a batch of files, in order; for each, True if written, False if kept.

    The chunks of all the files to write are read as one stream, so that files stored
    next to each other cost one ranged read, not one each. Every chunk is verified
    against its id as it is read, every file against its SHA-256 before it is renamed
    into place.
    """
    written = []
    to_write = []
    for parent, entry in files:
        try:
            dir_fd = parent.fd()
            current = _lstat(dir_fd, entry.name)
            keep = current is not None and _keep_existing_file(dir_fd, entry.name, current, entry)
        except OSError as exc:
            raise _EntryFailed(entry, exc) from exc
        written.append(not keep)
        if not keep:
            to_write.append((dir_fd, entry, current))
    # The tree is authenticated by its version digest, so are the chunk lists in it.
    content = _concatenation([entry for _, entry, _ in to_write])
    with closing(repo.iter_chunks(content, authenticated=True)) as chunks:
        for dir_fd, entry, current in to_write:
            write = partial(_write_content, chunks, entry, dir_fd)
            try:
                _replace(dir_fd, entry.name, current, write)
            except OSError as exc:
                raise _EntryFailed(entry, exc) from exc
    return written


def _concatenation(entries: list[Entry]) -> StreamDescriptor:
    """One descriptor for the files' contents one after the other (its digest unused)."""
    return StreamDescriptor(
        sha256=bytes(32),
        size=sum(entry.size for entry in entries),
        chunk_ids=b"".join(entry.chunk_ids for entry in entries),
        chunk_sizes=tuple(size for entry in entries for size in entry.chunk_sizes),
    )


class _OpenDir:
    """A directory being restored: its path, its entry, and its descriptor once prepared.

    Preparing it (creating, opening) is a task of the restore's pool like any other;
    finishing it (mode, mtime, close) waits until every task inside it is done.
    """

    def __init__(self, path: bytes, entry: Entry | None, opened: Future[int]) -> None:
        self.path = path
        self.entry = entry
        self.opened = opened
        self._closed = False

    def fd(self) -> int:
        """The open directory (waits until it is prepared; raises if that failed)."""
        return self.opened.result()

    def finish(self) -> None:
        """Set the mode and mtime (once everything inside is written), and close it."""
        try:
            if self.entry is not None:
                os.fchmod(self.fd(), self.entry.mode)
                os.utime(self.fd(), ns=(self.entry.mtime_ns, self.entry.mtime_ns))
        finally:
            self.close()

    def close(self) -> None:
        """Close the descriptor, if it was opened and is not closed yet."""
        opened = self.opened
        if self._closed or not opened.done() or opened.cancelled() or opened.exception():
            return
        self._closed = True
        os.close(opened.result())


def _done(value: int) -> Future[int]:
    future: Future[int] = Future()
    future.set_result(value)
    return future


@dataclass(frozen=True, slots=True)
class _Job:
    """Restore work, in tree order: what it restores and how to account for it."""

    entries: list[Entry]
    future: Future[Any] | None
    """The task; None for the completion of a directory, done when its turn comes."""
    directory: _OpenDir | None = None


class _Restorer:
    """Restores entries in tree order: worker threads create directories and symlinks and
    write files (in batches); the thread that decodes the tree only finishes directories
    (mode, mtime), when every task before them in tree order, hence everything inside
    them, is done.

    Every call is relative to an open directory descriptor obtained with O_NOFOLLOW,
    starting at the target, so nothing is ever created through a symlink. Tasks leave
    the pool's queue in the order they were submitted, so a task waiting for its
    directory's descriptor waits for a task already started: no deadlock. Keeping
    system calls off the decoding thread matters: after each one it would wait for the
    GIL behind busy workers.
    """

    def __init__(
        self, repo: Repository, root_fd: int, target: str, progress: ProgressCallback | None
    ) -> None:
        self.repo = repo
        self.target = target
        self.progress = progress
        self.stats = RestoreStats()
        self.started = time.monotonic()
        self.dirs = [_OpenDir(b"", None, _done(root_fd))]
        self.batch: list[tuple[_OpenDir, Entry]] = []
        self.batch_bytes = 0
        self.pending: deque[_Job] = deque()
        threads = RESTORE_THREADS_REMOTE if repo.backend.is_remote else RESTORE_THREADS_LOCAL
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="castore-restore")

    def add(self, entry: Entry) -> None:
        """Restore one entry (its parent directory was added before it)."""
        self._leave_dirs(entry.parent)
        parent = self.dirs[-1]
        if parent.path != entry.parent:
            raise IntegrityError(f"{entry.path_str!r} has no directory entry above it")
        name, pool = entry.name, self.pool
        if entry.type == DIR:
            opened = pool.submit(lambda: _prepare_dir(parent.fd(), name))
            self.dirs.append(_OpenDir(entry.path, entry, opened))
            self.pending.append(_Job([entry], opened))
        elif entry.type == SYMLINK:
            linked = pool.submit(lambda: _restore_symlink(parent.fd(), name, entry))
            self.pending.append(_Job([entry], linked))
        elif entry.type == FILE:
            self._batch_file(parent, entry)
        else:
            self.stats.skipped += 1
        self._drain(MAX_PENDING_RESTORES)

    def finish(self) -> None:
        """Complete every file and directory."""
        self._leave_dirs(b"")
        self._flush_batch()
        self._drain(0)
        self.stats.elapsed = time.monotonic() - self.started

    def close(self) -> None:
        """Stop the workers and close every descriptor (after success or failure)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        for job in self.pending:
            if job.directory is not None:
                job.directory.close()
        for directory in self.dirs:
            directory.close()

    def _batch_file(self, parent: _OpenDir, entry: Entry) -> None:
        self.batch.append((parent, entry))
        self.batch_bytes += entry.size
        if self.batch_bytes >= RESTORE_BATCH_BYTES or len(self.batch) >= RESTORE_BATCH_FILES:
            self._flush_batch()

    def _flush_batch(self) -> None:
        if self.batch:
            files, self.batch, self.batch_bytes = self.batch, [], 0
            job = self.pool.submit(_restore_files, self.repo, files)
            self.pending.append(_Job([entry for _, entry in files], job))

    def _leave_dirs(self, parent: bytes) -> None:
        """Queue the completion of directories the walk has left, after their files."""
        if len(self.dirs) > 1 and self.dirs[-1].path != parent:
            self._flush_batch()
        while len(self.dirs) > 1 and self.dirs[-1].path != parent:
            directory = self.dirs.pop()
            assert directory.entry is not None
            self.pending.append(_Job([directory.entry], None, directory))

    def _drain(self, limit: int) -> None:
        """Account for finished tasks in order; wait while too many are in flight."""
        while self.pending:
            job = self.pending[0]
            if len(self.pending) <= limit and job.future is not None and not job.future.done():
                return
            self.pending.popleft()
            try:
                if job.directory is not None:
                    job.directory.finish()  # every task before it, so inside it, is done
                else:
                    assert job.future is not None
                    self._count(job.entries, job.future.result())
            except _EntryFailed as failed:
                raise self._error(failed.entry, failed.cause) from failed.cause
            except OSError as exc:
                raise self._error(job.entries[0], exc) from exc

    def _count(self, entries: list[Entry], result: object) -> None:
        stats = self.stats
        kind = entries[0].type
        if kind == DIR:
            stats.dirs += 1
        elif kind == SYMLINK:
            stats.symlinks += 1
        else:
            assert isinstance(result, list)
            for entry, written in zip(entries, result, strict=True):
                stats.files_written += written
                stats.bytes_written += entry.size if written else 0
                stats.files_unchanged += not written
            if self.progress is not None:
                done = stats.files_written + stats.files_unchanged
                elapsed = time.monotonic() - self.started
                path = entries[-1].path_str
                self.progress(Progress(done, stats.bytes_written, 0, elapsed, path))

    def _error(self, entry: Entry, exc: OSError) -> CastoreError:
        return InvalidInputError(
            f"cannot restore {entry.path_str!r} into {self.target!r}: {_reason(exc)}"
        )


def _open_target(target: str | os.PathLike[str]) -> int:
    try:
        os.makedirs(target, exist_ok=True)
        return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot restore into {os.fspath(target)!r}: {_reason(exc)}"
        ) from exc


def _selected(path: bytes, selection: Sequence[bytes]) -> bool:
    """Whether an entry is selected, inside a selected path, or a directory above one."""
    return not selection or any(
        is_within(path, chosen) or is_within(chosen, path) for chosen in selection
    )


def _check_selection(
    repo: Repository, manifest: Manifest, selection: list[bytes], ref: str
) -> None:
    """NotFoundError, before anything is written, if a selected path is not in the snapshot."""
    missing = set(selection)
    with tree_entries(repo, manifest) as entries:
        for entry in entries:
            missing.discard(entry.path)
    if missing:
        listed = ", ".join(sorted(repr(os.fsdecode(path)) for path in missing))
        raise NotFoundError(f"{ref} has no {listed}")


def restore(
    repo: Repository,
    ref: str,
    target: str | os.PathLike[str],
    paths: Iterable[str | bytes] = (),
    *,
    progress: ProgressCallback | None = None,
) -> RestoreStats:
    """Restore snapshot `ref` (or only `paths` in it) into the directory `target`.

    Every chunk and every file's SHA-256 is verified before the file appears (written to
    a temporary name, then renamed). Modes, mtimes and symlinks are restored; owners are
    not. Files already in place with the same size, mtime and SHA-256 are kept, and
    files in `target` that the snapshot lacks are left alone. Nothing is ever created
    outside `target`, whatever the snapshot holds.
    """
    manifest = snapshot_manifest(repo, ref)
    selection = [normalize_path(path) for path in paths]
    if b"" in selection:
        selection = []
    if selection:
        _check_selection(repo, manifest, selection, ref)
    restorer = _Restorer(repo, _open_target(target), os.fspath(target), progress)
    try:
        with tree_entries(repo, manifest) as entries:
            for entry in entries:
                if _selected(entry.path, selection):
                    restorer.add(entry)
        restorer.finish()
    finally:
        restorer.close()
    return restorer.stats
