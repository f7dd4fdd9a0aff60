"""Backing up a directory: snapshot it as the next version of a name, after restic's model.

A snapshot is a version of a name whose manifest has kind ``"tree"``: its stream is a
tree stream (castore.format.tree) listing every file, directory and symlink with its
metadata and, for files, the chunk list of the content. File contents are chunked,
deduplicated and packed by one write session per backup, so a backup adds a handful of
objects to the store (its packs, one index object, the manifest and the version ref)
however many files it holds.

Incremental runs follow restic's parent snapshot: a file whose size, mtime, ctime and
inode are those recorded by the latest snapshot of the name is not read again; its
chunk list is reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from castore.engine.chunking import cut_whole
from castore.engine.progress import Progress, ProgressCallback
from castore.engine.writer import EncodedChunk, StreamWriter, WriteSession, encode_group
from castore.errors import InvalidInputError
from castore.format.config import StoreConfig
from castore.format.digests import format_digest
from castore.format.manifest import Manifest
from castore.format.names import check_name, check_tag
from castore.format.streams import StreamDescriptor
from castore.format.tree import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    MAX_EXTENTS,
    MAX_FILE_CHUNKS,
    SKIPPED,
    SPECIAL_TYPES,
    SYMLINK,
    TREE_KIND,
    TREE_SERIALIZER,
    Entry,
    TreeWriter,
    path_problem,
    sort_key,
    top_metadata,
)
from castore.format.xattrs import Xattrs
from castore.snapshots import scan
from castore.snapshots.ignore import IgnoreRules
from castore.versions import catalog
from castore.versions.catalog import Version
from castore.versions.contents import check_tree_manifest, tree_entries

if TYPE_CHECKING:
    from castore.engine.repository import Repository

SMALL_FILE_BYTES = 4 * 1024 * 1024
"""Files up to this size are read whole by worker threads, many at once; larger ones
stream through a StreamWriter, whose chunks are hashed and compressed in parallel."""
BACKUP_THREADS = (os.cpu_count() or 2) + 2
"""Threads reading, hashing and compressing small files."""
SCAN_THREADS = 2
"""Threads listing directories and lstat-ing their entries ahead of the walk."""
MAX_PENDING_FILES = 512
MAX_PENDING_BYTES = 64 * 1024 * 1024
"""Bounds on files read but not yet recorded: memory stays bounded however big the tree."""


@dataclass
class BackupStats:
    """What one backup found, read, reused and added to the store."""

    files: int = 0
    hardlinks: int = 0
    """File entries that are further names of an inode recorded before (in `files` too)."""
    sparse: int = 0
    """Files recorded with holes."""
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    """FIFOs and device nodes recorded."""
    xattrs: int = 0
    """Entries recorded with extended attributes."""
    skipped: int = 0
    changed: int = 0
    """Files whose size or mtime moved while they were read: recorded as read, which may
    mix old and new bytes, and listed in `changed_paths`; the backup is incomplete."""
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
    changed_paths: list[str] = field(default_factory=list)
    """The files counted in `changed`."""
    xattrs_unread: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of the paths recorded without their extended attributes, which
    could not be read or exceed the bounds of one entry."""
    unchanged: bool = False
    """With skip_if_unchanged: the tree equals the parent's, so no snapshot was added and
    the parent is what the backup returned."""


@dataclass(frozen=True)
class Snapshot(Version):
    """The version a backup created, with the backup's statistics."""

    stats: BackupStats = field(default_factory=BackupStats, compare=False)


@dataclass(frozen=True, slots=True)
class _FileRead:
    """A small file read by a worker: its fstat, its content, its encoded chunks, and
    whether it changed while it was read."""

    stat: os.stat_result
    content: StreamDescriptor
    chunks: list[EncodedChunk]
    changed: bool


def _read_small_file(
    abspath: str,
    listed: os.stat_result,
    config: StoreConfig,
    known: Callable[[list[bytes]], list[bool]],
) -> _FileRead | str:
    """Read, cut, hash and compress one small file in a worker; a str says why not."""
    try:
        with scan.open_regular(abspath, listed) as (file, st):
            data = file.read()
            changed = len(data) != st.st_size or scan.changed_since(file, st)
    except OSError as exc:
        return scan.os_reason(exc)
    encoded = encode_group(cut_whole(data, config.chunker), known, config)
    # A one-chunk file's SHA-256 is its chunk id: no need to hash it twice.
    whole = encoded[0][0] if len(encoded) == 1 else hashlib.sha256(data).digest()
    ids, sizes = b"".join(e[0] for e in encoded), tuple(e[1] for e in encoded)
    return _FileRead(st, StreamDescriptor(whole, len(data), ids, sizes), encoded, changed)


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


@dataclass(frozen=True, slots=True)
class _HardLink:
    """A further name of an inode met before: recorded from that earlier entry."""

    first: bytes
    """The path of the inode's first name in the backup."""


_Item = Entry | Future[_FileRead | str] | _HardLink
_Pending = tuple[bytes, _Item, int, Xattrs]
"""(path, the entry, the future read of a small file or a hard link, bytes in flight,
the path's extended attributes)."""


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
        self.inodes: dict[tuple[int, int], bytes] = {}
        """(st_dev, st_ino) of the files with several links met so far: their first path."""
        self.link_roots: dict[bytes, Entry] = {}
        """The recorded entries of those first paths."""
        self.done_files = 0
        self.done_bytes = 0
        """Files and bytes settled so far (read, reused or linked), for progress."""
        self.count: scan.TreeCount | None = None

    def close(self) -> None:
        """Stop the workers (after an error, work not started is dropped)."""
        if self.count is not None:
            self.count.close()
        self.scan_pool.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)

    def run(
        self, root: str, rules: IgnoreRules, bounds: scan.Boundaries, reading: scan.Reading
    ) -> None:
        """Back up everything below `root` into the tree, not entering what `bounds`
        excludes. With a progress callback, a second walk counts the totals meanwhile."""
        if self.progress is not None:
            self.count = scan.TreeCount(root, rules, bounds)
        for found in scan.walk(root, rules, self.scan_pool, bounds, reading):
            self._add(found)
            self._drain(MAX_PENDING_FILES, MAX_PENDING_BYTES)
        self._drain(0, 0)
        if self.count is not None:
            self.count.wait()
            self._advance(0, 0, b"")  # the last report, with the totals
        self.tree.flush()
        self.stats.elapsed = time.monotonic() - self.started

    def _add(self, found: scan.Found) -> None:
        path = os.fsencode(found.rel)
        problem = path_problem(path)
        if problem:  # cannot even be named in a tree: reported, not recorded
            self._skip(found.rel, problem)
            return
        st = found.stat
        if found.error is not None or st is None:
            self._push(path, Entry.skipped(path, found.error or "unknown error"))
            return
        if found.xattr_error is not None:
            self.stats.xattrs_unread.append((found.rel, found.xattr_error))
        pairs = found.xattrs
        if stat.S_ISDIR(st.st_mode):
            self._push(path, Entry.from_stat(path, DIR, st), xattrs=pairs)
            if found.not_entered:
                self._skip(found.rel, found.not_entered)
        elif stat.S_ISLNK(st.st_mode):
            target = found.target or b""
            link = Entry.from_stat(path, SYMLINK, st, size=len(target), target=target)
            self._push(path, link, xattrs=pairs)
        elif stat.S_ISREG(st.st_mode):
            self._file(path, found.abspath, st, pairs)
        elif stat.S_ISFIFO(st.st_mode):
            self._push(path, Entry.from_stat(path, FIFO, st), xattrs=pairs)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            kind = CHARDEV if stat.S_ISCHR(st.st_mode) else BLOCKDEV
            numbers = {"major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev)}
            self._push(path, Entry.from_stat(path, kind, st, **numbers), xattrs=pairs)
        else:  # a socket: nothing could restore it
            kind = scan.file_kind(st.st_mode)
            self._push(path, Entry.skipped(path, f"unsupported file type: {kind}"))

    def _file(self, path: bytes, abspath: str, st: os.stat_result, pairs: Xattrs) -> None:
        if st.st_nlink > 1:
            first = self.inodes.setdefault((st.st_dev, st.st_ino), path)
            if first != path:
                self._push(path, _HardLink(first), xattrs=pairs)
                return
        reused = self.parent.reusable(path, st) if self.parent else None
        if reused is not None:
            self.stats.files_reused += 1
            self.stats.bytes_reused += reused.size
            entry = Entry.file(path, st, reused.descriptor(), extents=reused.extents)
            self._push(path, entry, xattrs=pairs)
            self._advance(1, reused.size, path)
        elif st.st_size <= SMALL_FILE_BYTES and st.st_blocks * 512 >= st.st_size:
            future = self.pool.submit(
                _read_small_file, abspath, st, self.session.config, self.session.known
            )
            self._push(path, future, st.st_size, pairs)
        else:
            self._push(path, self._read_large_file(path, abspath, st), xattrs=pairs)

    def _read_large_file(self, path: bytes, abspath: str, listed: os.stat_result) -> Entry:
        """Stream a large or sparse file into the session here; its chunks are encoded in
        parallel. Of a file with holes (fewer blocks than its size says) only the data
        extents are read and stored.

        The writer is not registered with the session: it is finished here, and dropping
        it frees its chunking buffer (a registered one lives until the commit).
        """
        writer = StreamWriter(self.session)
        extents = None
        try:
            with scan.open_regular(abspath, listed) as (file, st):
                if st.st_blocks * 512 < st.st_size:
                    extents = scan.data_extents(file.fileno(), st.st_size, MAX_EXTENTS)
                pieces = scan.pieces(file) if extents is None else scan.extent_pieces(file, extents)
                for piece in pieces:
                    writer.write(piece)
                    self._advance(0, len(piece), path)
                descriptor = writer.finish()
                short = extents is None and descriptor.size != st.st_size
                if short or scan.changed_since(file, st):
                    self._changed(path)
        except OSError as exc:
            writer.abandon()
            return Entry.skipped(path, scan.os_reason(exc))
        except BaseException:
            writer.abandon()
            raise
        if len(descriptor.chunk_sizes) > MAX_FILE_CHUNKS:
            return Entry.skipped(path, f"more than {MAX_FILE_CHUNKS} chunks: too large")
        self._count_read(descriptor.size)
        self._advance(1, st.st_size - descriptor.size, path)  # the holes of a sparse file
        self.stats.sparse += extents is not None
        return Entry.file(path, st, descriptor, extents=extents)

    def _push(self, path: bytes, item: _Item, size: int = 0, xattrs: Xattrs = ()) -> None:
        self.pending.append((path, item, size, xattrs))
        self.pending_bytes += size

    def _drain(self, max_files: int, max_bytes: int) -> None:
        """Record finished entries in order; wait while too much is in flight."""
        while self.pending:
            _, item, _, _ = self.pending[0]
            over = len(self.pending) > max_files or self.pending_bytes > max_bytes
            if not over and isinstance(item, Future) and not item.done():
                return
            self._record(*self.pending.popleft())

    def _record(self, path: bytes, item: _Item, size: int, xattrs: Xattrs) -> None:
        self.pending_bytes -= size
        if isinstance(item, Future):
            entry = self._stored(path, item.result())
        elif isinstance(item, _HardLink):
            entry = self._linked(path, item.first)
        else:
            entry = item
        if xattrs and entry.type != SKIPPED:
            entry = dataclasses.replace(entry, xattrs=xattrs)
        self.tree.add(entry)
        if entry.type == FILE and entry.nlink > 1 and not entry.hardlink:
            self.link_roots[path] = entry
        self._count(entry)
        if entry.type == FILE and not isinstance(item, Entry):  # read by a worker, or linked
            self._advance(1, entry.size, path)

    def _linked(self, path: bytes, first: bytes) -> Entry:
        """A further name of the inode recorded at `first`: that entry's metadata and
        content (an inode has one of each), recorded as a hard link of it."""
        root = self.link_roots.get(first)
        if root is None:
            reason = f"a hard link of {os.fsdecode(first)!r}, which was not backed up"
            return Entry.skipped(path, reason)
        self.stats.hardlinks += 1
        return dataclasses.replace(root, path=path, hardlink=first)

    def _stored(self, path: bytes, result: _FileRead | str) -> Entry:
        """Hand a small file's new chunks to the session (one thread packs) and describe it."""
        if isinstance(result, str):
            return Entry.skipped(path, result)
        for encoded in result.chunks:
            self.session.store_chunk(encoded)
        if result.changed:
            self._changed(path)
        self._count_read(result.content.size)
        return Entry.file(path, result.stat, result.content)

    def _count_read(self, size: int) -> None:
        self.stats.files_read += 1
        self.stats.bytes_read += size

    def _count(self, entry: Entry) -> None:
        stats = self.stats
        stats.xattrs += bool(entry.xattrs)
        if entry.type in SPECIAL_TYPES:
            stats.specials += 1
            return
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

    def _advance(self, files: int, size: int, path: bytes) -> None:
        """Count files and bytes settled, and report the progress."""
        self.done_files += files
        self.done_bytes += size
        if self.progress is None:
            return
        totals = self.count.totals() if self.count is not None else None
        self.progress(
            Progress(
                self.done_files,
                self.done_bytes,
                self.stats.skipped,
                time.monotonic() - self.started,
                os.fsdecode(path),
                *(totals or (None, None)),
            )
        )

    def _changed(self, path: bytes) -> None:
        self.stats.changed += 1
        self.stats.changed_paths.append(os.fsdecode(path))

    def _skip(self, path: str, reason: str) -> None:
        self.stats.skipped += 1
        self.stats.skipped_paths.append((path, reason))


def _source_directory(path: str | os.PathLike[str]) -> str:
    root = os.path.abspath(os.fspath(path))
    if not os.path.lexists(root):
        raise InvalidInputError(f"cannot back up {root!r}: it does not exist")
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
    one_file_system: bool = False,
    exclude_caches: bool = False,
    skip_if_unchanged: bool = False,
    xattrs: bool = True,
) -> Snapshot:
    """Snapshot the directory `path` as the next version of `name`.

    With `one_file_system`, directories on another file system than `path` (mount
    points) are recorded but not entered; with `exclude_caches`, neither are directories
    tagged as caches by a CACHEDIR.TAG file. Both are reported as skipped. FIFOs and
    device nodes are recorded (sockets are skipped); so are extended attributes unless
    `xattrs` is False: ``user.*`` always, as root also ``security.*``, ``trusted.*`` and
    the POSIX ACLs.

    `exclude` holds gitignore-style patterns (castore.snapshots.ignore). Files unchanged
    since the latest snapshot of `name` are not read. Unreadable files and special files
    are skipped, reported in the result's stats and recorded in the snapshot. `progress`
    is called after each file and each MiB read; its totals are counted by a second walk
    of the tree in the background, and given once that walk is complete. Every run
    creates a new version, even if nothing changed, unless `skip_if_unchanged`: then a
    tree and metadata equal to the latest snapshot's add nothing, and that snapshot is
    returned with `stats.unchanged` set.
    """
    check_name(name)
    tags = [check_tag(tag) for tag in tags]
    root = _source_directory(path)
    rules = IgnoreRules(exclude)
    device = os.stat(root).st_dev if one_file_system else None
    bounds = scan.Boundaries(device, exclude_caches)
    reading = scan.Reading(xattrs=xattrs, privileged=os.geteuid() == 0)
    top = top_metadata(os.stat(root))  # before the walk: as the folder was when it began
    parent = _parent_snapshot(repo, name)
    with ExitStack() as stack:
        cursor = None
        if parent is not None:
            cursor = _ParentCursor(stack.enter_context(tree_entries(repo, parent[0])), repo)
        session = stack.enter_context(repo.write_session())
        tree_stream = session.stream()
        run = _Backup(repo, session, TreeWriter(tree_stream.write), cursor, progress)
        stack.callback(run.close)
        run.run(root, rules, bounds, reading)
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
        serializer_version=str(run.tree.version),
        metadata={**_snapshot_metadata(root, rules, stats), "root": top},
        tags=tags,
        force=not skip_if_unchanged,
    )
    stats.unchanged = version.reference == stats.parent
    values = {item.name: getattr(version, item.name) for item in fields(Version)}
    return Snapshot(**values, stats=stats)


def _snapshot_metadata(root: str, rules: IgnoreRules, stats: BackupStats) -> dict[str, object]:
    return {
        "source": root,
        "host": socket.gethostname(),
        "files": stats.files,
        "dirs": stats.dirs,
        "symlinks": stats.symlinks,
        **({"specials": stats.specials} if stats.specials else {}),
        "skipped": stats.skipped,
        **({"changed": stats.changed} if stats.changed else {}),
        "bytes": stats.bytes,
        "exclude": list(rules.patterns),
    }
