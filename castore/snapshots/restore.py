"""Restoring a snapshot into a directory, verified, and never writing outside it.

Restores verify every chunk and each file's SHA-256, write files through a temporary
name and a rename, never follow a symlink inside the target, and leave alone files
whose size, mtime and content already match. Before writing anything, a first pass over
the tree makes a plan: how many files and bytes the restore will write (a dry run stops
there). Owners and modes are restored as tar and restic do: as root, the recorded uid and
gid (by number). Setuid and setgid bits are kept only with the owners and only when
asked for (`setid`), so that no store writer can plant a set-id program owned by root.

Nothing is ever changed in place but what the restore may own: a file, directory or
symlink it created, a directory of the target (directories cannot be hard links), or
a file or symlink of the target with a single link. A hard link, whose other names may
lie outside the target, is replaced, never chmodded, chowned or touched.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from castore.engine.progress import Progress, ProgressCallback
from castore.errors import CastoreError, IntegrityError, InvalidInputError, NotFoundError
from castore.format.manifest import Manifest
from castore.format.streams import StreamDescriptor
from castore.format.tree import (
    DEVICES,
    DIR,
    FIFO,
    FILE,
    SPECIAL_TYPES,
    SYMLINK,
    Entry,
    is_within,
    normalize_path,
    top_entry,
)
from castore.snapshots.browse import snapshot_manifest
from castore.snapshots.scan import os_reason
from castore.snapshots.xattr_restore import XattrWriter, proc_path
from castore.versions.contents import tree_entries

if TYPE_CHECKING:
    from castore.engine.repository import Repository

RESTORE_THREADS_LOCAL = 4
RESTORE_THREADS_REMOTE = 8
"""Files restored at once (each reads ahead up to castore.engine.reader.READ_AHEAD bytes)."""
MAX_PENDING_RESTORES = 256
MAX_PENDING_CHUNKS = 1 << 20
"""Chunk references held by queued work (~40 bytes each in its entries), whatever the
files' sizes: a snapshot of files made of many tiny chunks cannot fill memory."""
RESTORE_BATCH_BYTES = 8 * 1024 * 1024
RESTORE_BATCH_FILES = 128
RESTORE_BATCH_CHUNKS = 1 << 16
"""Files restored by one task, whose chunks are fetched as one stream (few ranged reads):
up to so many bytes, files or chunks."""
TEMPORARY_PREFIX = b".castore-"
SETID_BITS = stat.S_ISUID | stat.S_ISGID
OVERWRITE = ("always", "if-changed", "never")
"""What a restore does with a file, symlink or link already in its place (restic's
--overwrite): rewrite it; rewrite it unless it is the same (size, mtime and SHA-256 for
a file); or leave whatever is there."""
WRITTEN, UNCHANGED, KEPT = "written", "unchanged", "kept"
"""What became of one entry: written, found identical, or left as it was (never)."""
"""Mode bits restored only with the owners: setuid and setgid (the sticky bit is kept)."""


@dataclass(frozen=True, slots=True)
class Ownership:
    """What a restore gives back besides content, permission bits and times."""

    owners: bool
    """Recorded uid and gid, by number: only as root, and unless turned off."""
    setid: bool
    """Setuid and setgid bits: only with the owners, and only when asked for, since an
    unsigned snapshot could otherwise plant a set-id program owned by root. The same
    opt-in restores the security.* and trusted.* extended attributes (a file capability
    is worth a setuid bit)."""
    xattrs: XattrWriter = field(compare=False, repr=False)
    """Whether and which extended attributes are restored; counts those refused."""
    devices: bool = False
    """Device nodes: created only as root, and only when asked for (a planted block
    device node gives whoever can open it the raw disk)."""


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """What a restore will write, known from the tree before anything is written."""

    manifest: Manifest = field(repr=False)
    """The snapshot's manifest: every pass of the restore reads this very tree."""
    selection: tuple[bytes, ...]
    """The entry paths chosen (each with everything below it); empty for all."""
    ownership: Ownership
    """Whether recorded owners, and setuid and setgid bits, are restored."""
    files: int = 0
    bytes: int = 0
    """Bytes of the files: at most this much is written (files already in place are kept)."""
    dirs: int = 0
    symlinks: int = 0
    skipped: int = 0
    specials: int = 0
    """FIFOs and device nodes (those not created included: `devices_refused`)."""
    setid_stripped: int = 0
    """Files and directories restored without the setuid or setgid bits they record."""
    devices_refused: int = 0
    """Device nodes not created: not root, or not asked for (`devices`)."""
    xattrs_stripped: int = 0
    """security.* and trusted.* extended attributes not restored (no `setid` opt-in)."""
    top: Entry | None = None
    """The backed-up folder's own mode, mtime and owner, given to the target after
    everything in it: only in a full restore (no paths chosen) of a snapshot that records
    them (metadata `root`)."""
    overwrite: str = "if-changed"
    """What is done with what is in the way (OVERWRITE)."""
    delete: bool = False
    """Whether what the target holds and the snapshot does not is removed (inside the
    chosen paths only)."""

    def mode(self, entry: Entry) -> int:
        """The permission bits `entry` gets: its own, less setuid and setgid unless those
        are restored."""
        return _mode(entry, self.ownership)


@dataclass
class RestoreStats:
    """What one restore wrote and what it found already in place."""

    plan: RestorePlan
    """What the restore set out to do: totals, owners, set-id bits stripped."""
    dry_run: bool = False
    """True if nothing was written: the plan is all there is."""
    files_written: int = 0
    files_unchanged: int = 0
    """Files left alone: same size, mtime and SHA-256 as in the snapshot."""
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    """FIFOs and device nodes created or found in place."""
    skipped: int = 0
    """Entries the snapshot records as skipped at backup time (nothing to restore)."""
    bytes_written: int = 0
    hardlinks: int = 0
    """Hard links made to files restored in the same run (not in `files_written`)."""
    existing_kept: int = 0
    """Files, symlinks and links left as they were, whatever they hold, because something
    was in their place and the plan's overwrite is "never"."""
    removed: int = 0
    """Paths of the target the snapshot does not have, removed (a folder with all in it
    counts once): with the plan's `delete`; a dry run counts what it would remove."""
    removed_paths: list[str] = field(default_factory=list)
    """Those paths, relative to the target."""
    xattrs_unsupported: int = 0
    """Extended attributes the target file system would not take (none there, or none
    of that namespace on that kind of file): left out, not an error."""
    elapsed: float = 0.0


def _lstat(dir_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _mode(entry: Entry, ownership: Ownership) -> int:
    return entry.mode if ownership.setid else entry.mode & ~SETID_BITS


def _set_owner_and_mode(fd: int, entry: Entry, owners: Ownership) -> None:
    """Give the open file or directory the entry's owner (when restored), its mode, then
    its extended attributes (those restored).

    The owner comes first: on Linux, chown clears setuid and setgid.
    """
    current = os.fstat(fd)
    if owners.owners and (current.st_uid, current.st_gid) != (entry.uid, entry.gid):
        os.fchown(fd, entry.uid, entry.gid)
        current = os.fstat(fd)
    mode = _mode(entry, owners)
    if stat.S_IMODE(current.st_mode) != mode:
        os.fchmod(fd, mode)
    owners.xattrs.apply(fd, entry.xattrs)  # after chown, which clears security.capability


def _remove(dir_fd: int, name: bytes, st: os.stat_result) -> None:
    """Remove what is at `name` (a whole directory tree, without following symlinks)."""
    if stat.S_ISDIR(st.st_mode):
        _remove_tree(dir_fd, name)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _remove_tree(dir_fd: int, name: bytes) -> None:
    """Remove directory `name` and all in it through descriptors, never following a
    symlink, one level at a time: a tree deeper than Python's recursion limit (which
    shutil.rmtree recurses by) is removed like any other."""
    # Each level: its parent's descriptor, its name, its own descriptor, what is left in it.
    levels: list[tuple[int, bytes, int, list[bytes]]] = []
    try:
        fd = _open_dir(dir_fd, name)
        levels.append((dir_fd, name, fd, sorted(map(os.fsencode, os.listdir(fd)))))
        while levels:
            parent, here, fd, names = levels[-1]
            if not names:
                levels.pop()
                os.close(fd)
                os.rmdir(here, dir_fd=parent)
                continue
            child = names.pop()
            found = _lstat(fd, child)
            if found is not None and stat.S_ISDIR(found.st_mode):
                inner = _open_dir(fd, child)
                levels.append((fd, child, inner, sorted(map(os.fsencode, os.listdir(inner)))))
            elif found is not None:
                os.unlink(child, dir_fd=fd)
    finally:
        for _, _, fd, _ in levels:
            os.close(fd)


def _replace(
    dir_fd: int, name: bytes, current: os.stat_result | None, create: Callable[[bytes], None]
) -> None:
    """Create the new object under a temporary name, then rename it over `name`."""
    temporary = TEMPORARY_PREFIX + secrets.token_hex(8).encode() + b".tmp"
    try:
        create(temporary)
        if current is not None and stat.S_ISDIR(current.st_mode):
            _remove_tree(dir_fd, name)
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


def _stale_names(dir_fd: int, names: set[bytes]) -> list[tuple[bytes, os.stat_result]]:
    """What the open directory holds besides `names` (those the snapshot has there)."""
    stale = []
    for name in sorted(map(os.fsencode, os.listdir(dir_fd))):
        if name not in names and (found := _lstat(dir_fd, name)) is not None:
            stale.append((name, found))
    return stale


def _deletes_in(plan: RestorePlan, path: bytes) -> bool:
    """Whether the restore removes from directory `path` what the snapshot lacks: with
    `delete`, inside the chosen paths (never beside them, in a folder above one)."""
    return plan.delete and (
        not plan.selection or any(is_within(path, chosen) for chosen in plan.selection)
    )


def _prepare_dir(dir_fd: int, entry: Entry, overwrite: str) -> int:
    """Make `name` a real directory we can write into; return it opened."""
    name = entry.name
    current = _lstat(dir_fd, name)
    if current is not None and not stat.S_ISDIR(current.st_mode):
        if overwrite == "never":
            raise InvalidInputError(
                f"cannot restore directory {entry.path_str!r}: something else is in its "
                "place, and overwrite 'never' leaves it"
            )
        _remove(dir_fd, name, current)
        current = None
    if current is None:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    fd = _open_dir(dir_fd, name)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & stat.S_IRWXU != stat.S_IRWXU:
        os.fchmod(fd, mode | stat.S_IRWXU)  # until its own mode is set, after its contents
    return fd


def _set_link_attributes(dir_fd: int, name: bytes, entry: Entry, owners: Ownership) -> None:
    """The owner (when restored) and mtime of the symlink `name` itself, never followed."""
    if owners.owners:
        os.chown(name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)
    owners.xattrs.apply(proc_path(dir_fd, name), entry.xattrs, follow_symlinks=False)
    times = (entry.mtime_ns, entry.mtime_ns)
    os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)


def _new_symlink(dir_fd: int, entry: Entry, owners: Ownership, name: bytes) -> None:
    os.symlink(entry.target, name, dir_fd=dir_fd)
    _set_link_attributes(dir_fd, name, entry, owners)


def _restore_symlink(
    dir_fd: int, name: bytes, entry: Entry, owners: Ownership, overwrite: str
) -> str:
    """Create or fix a symlink (never followed); say what became of it.

    A symlink in place with the same target is kept only if it has no other name (a hard
    link to a symlink elsewhere is replaced, so that nothing outside changes).
    """
    current = _lstat(dir_fd, name)
    if current is not None and overwrite == "never":
        return KEPT
    same = (
        overwrite == "if-changed"
        and current is not None
        and stat.S_ISLNK(current.st_mode)
        and current.st_nlink == 1
        and os.readlink(name, dir_fd=dir_fd) == entry.target
    )
    if same:
        _set_link_attributes(dir_fd, name, entry, owners)
        return UNCHANGED
    _replace(dir_fd, name, current, partial(_new_symlink, dir_fd, entry, owners))
    return WRITTEN


_NODE_TYPES = {FIFO: stat.S_IFIFO, DEVICES[0]: stat.S_IFCHR, DEVICES[1]: stat.S_IFBLK}
"""The file type bits each special entry type is created with."""


def _same_node(st: os.stat_result, entry: Entry) -> bool:
    """Whether `st` is the entry's FIFO or device node, with a single name."""
    rdev = os.makedev(entry.major, entry.minor) if entry.type in DEVICES else st.st_rdev
    kind = _NODE_TYPES[entry.type]
    return stat.S_IFMT(st.st_mode) == kind and st.st_rdev == rdev and st.st_nlink == 1


def _set_node_attributes(dir_fd: int, name: bytes, entry: Entry, owners: Ownership) -> None:
    """Owner, mode, attributes and mtime of the FIFO or device node `name`.

    It is opened with O_PATH, which opens no device and blocks on no FIFO, without
    following a symlink, and checked to be the entry's node; every change goes through
    that descriptor.
    """
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if not _same_node(os.fstat(fd), entry):
            raise IntegrityError(f"{entry.path_str!r} is not the node this restore made")
        node = proc_path(fd)
        if owners.owners:
            os.chown(node, entry.uid, entry.gid)
        os.chmod(node, _mode(entry, owners))
        owners.xattrs.apply(node, entry.xattrs)
        os.utime(node, ns=(entry.mtime_ns, entry.mtime_ns))
    finally:
        os.close(fd)


def _new_node(dir_fd: int, entry: Entry, owners: Ownership, name: bytes) -> None:
    rdev = os.makedev(entry.major, entry.minor) if entry.type in DEVICES else 0
    os.mknod(name, _NODE_TYPES[entry.type] | 0o600, rdev, dir_fd=dir_fd)
    _set_node_attributes(dir_fd, name, entry, owners)


def _restore_node(dir_fd: int, name: bytes, entry: Entry, owners: Ownership, overwrite: str) -> str:
    """Create or fix a FIFO or device node (the caller checked that devices may be made);
    say what became of it. One in place is kept only if it is the same node with a
    single name."""
    current = _lstat(dir_fd, name)
    if current is not None and overwrite == "never":
        return KEPT
    if overwrite == "if-changed" and current is not None and _same_node(current, entry):
        _set_node_attributes(dir_fd, name, entry, owners)
        return UNCHANGED
    _replace(dir_fd, name, current, partial(_new_node, dir_fd, entry, owners))
    return WRITTEN


def _may_keep(st: os.stat_result, entry: Entry) -> bool:
    """Whether `st` is a regular file with one link (a hard link's other names may lie
    outside the target) and the entry's size and mtime."""
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_nlink == 1
        and (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns)
    )


def _keep_existing_file(
    dir_fd: int, name: bytes, current: os.stat_result, entry: Entry, owners: Ownership
) -> bool:
    """Whether the file in place may stay: a regular file with one link and the entry's
    size, mtime and SHA-256.

    If so its owner and mode are corrected and it is kept; otherwise it is left to be
    replaced (a new file renamed over it), so that a hard link is never changed.
    """
    if not _may_keep(current, entry) or entry.extents is not None:
        return False  # a sparse file is rewritten: its holes are not compared
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with open(os.open(name, flags, dir_fd=dir_fd), "rb", buffering=0) as file:
        if not _may_keep(os.fstat(file.fileno()), entry):
            return False  # replaced since the lstat
        if hashlib.file_digest(file, "sha256").digest() != entry.sha256:
            return False
        _set_owner_and_mode(file.fileno(), entry, owners)
    return True


def _write_content(
    chunks: Iterator[bytes | memoryview],
    entry: Entry,
    owners: Ownership,
    wrote: Callable[[int], None],
    dir_fd: int,
    name: bytes,
) -> None:
    """Write a file's content (its chunks, the next ones of `chunks`), owner, mode and
    mtime to a new file `name`; IntegrityError unless the content hashes to the entry's
    SHA-256 (the caller then removes `name`: nothing unverified stays)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    whole = hashlib.sha256()
    with open(os.open(name, flags, 0o600, dir_fd=dir_fd), "wb") as out:
        sparse = _SparseWriter(out.fileno(), entry.extents) if entry.extents is not None else None
        for _ in entry.chunk_sizes:
            chunk = next(chunks)
            whole.update(chunk)
            if sparse is None:
                out.write(chunk)
            else:
                sparse.write(chunk)
            wrote(len(chunk))
        if sparse is not None:
            out.truncate(entry.size)  # the file's length, with the holes after the last extent
        if whole.digest() != entry.sha256:
            raise IntegrityError(
                f"{entry.path_str!r} restores as sha256:{whole.hexdigest()}, not as the "
                f"sha256:{entry.sha256.hex()} its snapshot records"
            )
        out.flush()
        _set_owner_and_mode(out.fileno(), entry, owners)
        os.utime(out.fileno(), ns=(entry.mtime_ns, entry.mtime_ns))


class _SparseWriter:
    """Writes a sparse file's stored bytes where its extents say, leaving holes between
    them (nothing is written to a hole: it takes no blocks)."""

    def __init__(self, fd: int, extents: tuple[tuple[int, int], ...]) -> None:
        self._fd = fd
        self._extents = extents
        self._number = 0
        self._done = 0
        """Bytes of the current extent written so far."""

    def write(self, data: bytes | memoryview) -> None:
        """Write the next stored bytes (they never exceed the extents: the chunk sizes
        add up to the extents' lengths, 20.5)."""
        view = memoryview(data)
        while view:
            offset, length = self._extents[self._number]
            piece = view[: length - self._done]
            written = os.pwrite(self._fd, piece, offset + self._done)
            self._done += written
            if self._done == length:
                self._number, self._done = self._number + 1, 0
            view = view[written:]


class _EntryFailed(Exception):
    """An OSError while restoring one entry of a task that restores several."""

    def __init__(self, entry: Entry, cause: OSError) -> None:
        super().__init__(entry.path_str, cause)
        self.entry = entry
        self.cause = cause


def _restore_files(
    repo: Repository,
    files: list[tuple[_OpenDir, Entry]],
    plan: RestorePlan,
    wrote: Callable[[int], None],
) -> list[str]:
    """Restore a batch of files, in order; say what became of each.

    The chunks of all the files to write are read as one stream, so that files stored
    next to each other cost one ranged read, not one each. Every chunk is verified
    against its id as it is read, every file against its SHA-256 before it is renamed
    into place.
    """
    owners = plan.ownership
    outcomes = []
    to_write = []
    for parent, entry in files:
        try:
            dir_fd = parent.fd()
            current = _lstat(dir_fd, entry.name)
            if current is None or plan.overwrite == "always":
                outcome = WRITTEN
            elif plan.overwrite == "never":
                outcome = KEPT
            else:
                same = _keep_existing_file(dir_fd, entry.name, current, entry, owners)
                outcome = UNCHANGED if same else WRITTEN
        except OSError as exc:
            raise _EntryFailed(entry, exc) from exc
        outcomes.append(outcome)
        if outcome == WRITTEN:
            to_write.append((dir_fd, entry, current))
    # The tree is authenticated by its version digest, so are the chunk lists in it.
    content = _concatenation([entry for _, entry, _ in to_write])
    with closing(repo.iter_chunks(content, authenticated=True)) as chunks:
        for dir_fd, entry, current in to_write:
            write = partial(_write_content, chunks, entry, owners, wrote, dir_fd)
            try:
                _replace(dir_fd, entry.name, current, write)
            except OSError as exc:
                raise _EntryFailed(entry, exc) from exc
    return outcomes


def _concatenation(entries: list[Entry]) -> StreamDescriptor:
    """One descriptor for the files' contents one after the other (its digest unused)."""
    return StreamDescriptor(
        sha256=bytes(32),
        size=sum(entry.stored_size for entry in entries),
        chunk_ids=b"".join(entry.chunk_ids for entry in entries),
        chunk_sizes=tuple(size for entry in entries for size in entry.chunk_sizes),
    )


def _open_parent(root_fd: int, path: bytes) -> int:
    """Open the directory holding `path` (relative to the target), one component at a
    time from the target, never following a symlink."""
    fd = os.dup(root_fd)
    try:
        for part in path.split(b"/")[:-1]:
            inner = _open_dir(fd, part)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _restore_hardlink(
    root_fd: int, entry: Entry, first_written: Future[Any], dir_fd: int, overwrite: str
) -> list[str]:
    """Make `entry` a hard link of its inode's first name, restored in this run (once
    that is written); say what became of it.

    The first name is opened from the target without following symlinks and must be a
    regular file; the link is made under a temporary name (linkat never follows a
    symlink) and renamed over whatever is in the way.
    """
    first_written.result()
    try:
        first_dir = _open_parent(root_fd, entry.hardlink)
        try:
            first_name = entry.hardlink.rpartition(b"/")[2]
            first = _lstat(first_dir, first_name)
            if first is None or not stat.S_ISREG(first.st_mode):
                raise IntegrityError(
                    f"{entry.path_str!r} links to {os.fsdecode(entry.hardlink)!r}, which is "
                    "not the regular file this restore wrote"
                )
            current = _lstat(dir_fd, entry.name)
            if current is not None and (current.st_dev, current.st_ino) == (
                first.st_dev,
                first.st_ino,
            ):
                return [UNCHANGED]
            if current is not None and overwrite == "never":
                return [KEPT]

            def link(temporary: bytes) -> None:
                os.link(
                    first_name,
                    temporary,
                    src_dir_fd=first_dir,
                    dst_dir_fd=dir_fd,
                    follow_symlinks=False,
                )

            _replace(dir_fd, entry.name, current, link)
        finally:
            os.close(first_dir)
    except OSError as exc:
        raise _EntryFailed(entry, exc) from exc
    return [WRITTEN]


class _OpenDir:
    """A directory being restored: its path, its entry, and its descriptor once prepared.

    Preparing it (creating, opening) is a task of the restore's pool like any other;
    finishing it (mode, mtime, close) waits until every task inside it is done.
    """

    def __init__(self, path: bytes, entry: Entry | None, opened: Future[int]) -> None:
        self.path = path
        self.entry = entry
        self.opened = opened
        self.names: set[bytes] = set()
        """The names the snapshot has in it."""
        self._closed = False

    def fd(self) -> int:
        """The open directory (waits until it is prepared; raises if that failed)."""
        return self.opened.result()

    def finish(self, owners: Ownership) -> None:
        """Set the owner (if `owners`), mode and mtime, once everything inside is written,
        and close it."""
        try:
            if self.entry is not None:
                _set_owner_and_mode(self.fd(), self.entry, owners)
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
    link: bool = False
    """Whether the task makes a hard link rather than writing a file."""

    @property
    def chunks(self) -> int:
        """Chunk references its entries hold."""
        return sum(len(entry.chunk_sizes) for entry in self.entries)


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
        self,
        repo: Repository,
        plan: RestorePlan,
        root_fd: int,
        target: str,
        progress: ProgressCallback | None,
    ) -> None:
        self.repo = repo
        self.plan = plan
        self.owners = plan.ownership
        self.target = target
        self.progress = progress
        self.stats = RestoreStats(plan)
        self.started = time.monotonic()
        self.done_files = 0
        self.done_bytes = 0
        """Files in place so far (written, kept or linked) and their bytes, counted as
        each chunk is written, for progress."""
        self.progress_lock = threading.Lock()
        """Workers count bytes as they write: reports are made one at a time."""
        self.last_path = ""
        self.dirs = [_OpenDir(b"", None, _done(root_fd))]
        self.batch: list[tuple[_OpenDir, Entry]] = []
        self.batch_bytes = 0
        self.batch_chunks = 0
        self.link_roots: dict[bytes, Future[Any] | None] = {}
        """Files restored in this run that later entries may link to: their tasks (None
        while in the batch not yet submitted)."""
        self.pending: deque[_Job] = deque()
        self.pending_chunks = 0
        threads = RESTORE_THREADS_REMOTE if repo.backend.is_remote else RESTORE_THREADS_LOCAL
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="castore-restore")

    def add(self, entry: Entry) -> None:
        """Restore one entry (its parent directory was added before it)."""
        self._leave_dirs(entry.parent)
        parent = self.dirs[-1]
        if parent.path != entry.parent:
            raise IntegrityError(f"{entry.path_str!r} has no directory entry above it")
        name, pool, owners, overwrite = entry.name, self.pool, self.owners, self.plan.overwrite
        parent.names.add(name)
        if entry.type == DIR:
            opened = pool.submit(lambda: _prepare_dir(parent.fd(), entry, overwrite))
            self.dirs.append(_OpenDir(entry.path, entry, opened))
            self._queue(_Job([entry], opened))
        elif entry.type == SYMLINK:
            linked = pool.submit(
                lambda: _restore_symlink(parent.fd(), name, entry, owners, overwrite)
            )
            self._queue(_Job([entry], linked))
        elif entry.type == FIFO or (entry.type in DEVICES and owners.devices):
            made = pool.submit(lambda: _restore_node(parent.fd(), name, entry, owners, overwrite))
            self._queue(_Job([entry], made))
        elif entry.type in DEVICES:
            pass  # not created: counted in the plan's devices_refused
        elif entry.type == FILE and entry.hardlink in self.link_roots:
            self._flush_batch()  # the first name may be in the batch: its task must exist
            first = self.link_roots[entry.hardlink]
            assert first is not None
            root_fd = self.dirs[0].fd()
            job = pool.submit(
                lambda: _restore_hardlink(root_fd, entry, first, parent.fd(), overwrite)
            )
            self._queue(_Job([entry], job, link=True))
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
        self._delete_stale(self.dirs[0])
        top = self.plan.top
        if top is not None and _may_set_target(self.dirs[0].fd(), self.target):
            try:
                _set_owner_and_mode(self.dirs[0].fd(), top, self.owners)
                os.utime(self.dirs[0].fd(), ns=(top.mtime_ns, top.mtime_ns))
            except OSError as exc:
                raise InvalidInputError(
                    f"cannot give {self.target!r} the backed-up folder's mode and time: "
                    f"{os_reason(exc)}"
                ) from exc
        self.stats.xattrs_unsupported = self.owners.xattrs.refused
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
        """Add a file to the batch (a hard link whose first name is not restored in this
        run is restored as a file of its own)."""
        self.batch.append((parent, entry))
        self.batch_bytes += entry.size
        self.batch_chunks += len(entry.chunk_sizes)
        if entry.nlink > 1 and not entry.hardlink:
            self.link_roots[entry.path] = None
        if (
            self.batch_bytes >= RESTORE_BATCH_BYTES
            or len(self.batch) >= RESTORE_BATCH_FILES
            or self.batch_chunks >= RESTORE_BATCH_CHUNKS
        ):
            self._flush_batch()

    def _flush_batch(self) -> None:
        if self.batch:
            files, self.batch, self.batch_bytes, self.batch_chunks = self.batch, [], 0, 0
            job = self.pool.submit(_restore_files, self.repo, files, self.plan, self._wrote)
            self._queue(_Job([entry for _, entry in files], job))
            for _, entry in files:
                if entry.path in self.link_roots:
                    self.link_roots[entry.path] = job

    def _leave_dirs(self, parent: bytes) -> None:
        """Queue the completion of directories the walk has left, after their files."""
        if len(self.dirs) > 1 and self.dirs[-1].path != parent:
            self._flush_batch()
        while len(self.dirs) > 1 and self.dirs[-1].path != parent:
            directory = self.dirs.pop()
            assert directory.entry is not None
            self._queue(_Job([directory.entry], None, directory))

    def _queue(self, job: _Job) -> None:
        self.pending.append(job)
        self.pending_chunks += job.chunks

    def _drain(self, limit: int) -> None:
        """Account for finished tasks in order; wait while too many are in flight, or
        while they hold more than MAX_PENDING_CHUNKS chunk references."""
        while self.pending:
            job = self.pending[0]
            few = len(self.pending) <= limit and self.pending_chunks <= MAX_PENDING_CHUNKS
            if few and job.future is not None and not job.future.done():
                return
            self.pending.popleft()
            self.pending_chunks -= job.chunks
            try:
                if job.directory is not None:
                    # Every task before it, so everything inside it, is done.
                    self._delete_stale(job.directory)
                    job.directory.finish(self.owners)
                else:
                    assert job.future is not None
                    self._count(job.entries, job.future.result(), job.link)
            except _EntryFailed as failed:
                raise self._error(failed.entry, failed.cause) from failed.cause
            except OSError as exc:
                raise self._error(job.entries[0], exc) from exc

    def _delete_stale(self, directory: _OpenDir) -> None:
        """Remove what `directory` holds and the snapshot does not, if the plan says so."""
        if not _deletes_in(self.plan, directory.path):
            return
        fd = directory.fd()
        for name, found in _stale_names(fd, directory.names):
            try:
                _remove(fd, name, found)
            except OSError as exc:
                path = os.fsdecode(os.path.join(directory.path, name))
                raise InvalidInputError(
                    f"cannot delete {path!r} from {self.target!r}: {os_reason(exc)}"
                ) from exc
            self.stats.removed += 1
            self.stats.removed_paths.append(os.fsdecode(os.path.join(directory.path, name)))

    def _count(self, entries: list[Entry], result: object, link: bool) -> None:
        stats = self.stats
        kind = entries[0].type
        if kind == DIR:
            stats.dirs += 1
        elif kind == SYMLINK or kind in SPECIAL_TYPES:
            stats.symlinks += kind == SYMLINK
            stats.specials += kind in SPECIAL_TYPES
            stats.existing_kept += result == KEPT
        else:
            assert isinstance(result, list)
            counted = 0  # written files' stored bytes, counted chunk by chunk as written
            for entry, outcome in zip(entries, result, strict=True):
                written = outcome == WRITTEN
                if link:
                    stats.hardlinks += written
                else:
                    stats.files_written += written
                    stats.bytes_written += entry.size if written else 0
                    counted += entry.stored_size if written else 0
                stats.files_unchanged += outcome == UNCHANGED
                stats.existing_kept += outcome == KEPT
            self._advance(entries, sum(entry.size for entry in entries) - counted)

    def _wrote(self, size: int) -> None:
        """Count bytes a worker wrote, and report (called from the workers)."""
        with self.progress_lock:
            self.done_bytes += size
            self._report()

    def _advance(self, files: list[Entry], size: int) -> None:
        """Count files in place and `size` more of their bytes, and report."""
        with self.progress_lock:
            self.done_files += len(files)
            self.done_bytes += size
            self.last_path = files[-1].path_str
            self._report()

    def _report(self) -> None:
        if self.progress is not None:
            plan = self.stats.plan
            elapsed = time.monotonic() - self.started
            self.progress(
                Progress(
                    self.done_files,
                    self.done_bytes,
                    0,
                    elapsed,
                    self.last_path,
                    plan.files,
                    plan.bytes,
                )
            )

    def _error(self, entry: Entry, exc: OSError) -> CastoreError:
        return InvalidInputError(
            f"cannot restore {entry.path_str!r} into {self.target!r}: {os_reason(exc)}"
        )


def _may_set_target(root_fd: int, target: str) -> bool:
    """Whether a full restore gives the target folder the snapshot's own mode, time and
    owner: only a folder named without symlinks (a link an earlier restore left could
    point anywhere) that the user owns (or as root)."""
    if os.path.realpath(target) != os.path.abspath(target):
        return False
    return os.geteuid() == 0 or os.fstat(root_fd).st_uid == os.geteuid()


def _open_target(target: str | os.PathLike[str]) -> int:
    try:
        os.makedirs(target, exist_ok=True)
        return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot restore into {os.fspath(target)!r}: {os_reason(exc)}"
        ) from exc


def _selected(path: bytes, selection: Sequence[bytes]) -> bool:
    """Whether an entry is selected, inside a selected path, or a directory above one."""
    return not selection or any(
        is_within(path, chosen) or is_within(chosen, path) for chosen in selection
    )


def _selection(paths: Iterable[str | bytes]) -> tuple[bytes, ...]:
    """The entry paths `paths` name; empty (everything) if one of them is the root."""
    selection = tuple(normalize_path(path) for path in paths)
    return () if b"" in selection else selection


_TOTALS = (
    "files",
    "bytes",
    "dirs",
    "symlinks",
    "specials",
    "skipped",
    "setid_stripped",
    "devices_refused",
    "xattrs_stripped",
)
"""The counts a plan makes of the entries it restores."""


def _tally(entries: Iterable[Entry], ownership: Ownership) -> dict[str, int]:
    """The totals of a plan: entries by type, bytes of files, set-id bits, device nodes
    and privileged extended attributes left out."""
    counts = dict.fromkeys(_TOTALS, 0)
    kinds = {
        FILE: "files",
        DIR: "dirs",
        SYMLINK: "symlinks",
        **dict.fromkeys(SPECIAL_TYPES, "specials"),
    }
    for entry in entries:
        counts[kinds.get(entry.type, "skipped")] += 1
        counts["bytes"] += entry.size if entry.type == FILE else 0
        stripped = entry.type in (FILE, DIR) and _mode(entry, ownership) != entry.mode
        counts["setid_stripped"] += stripped
        counts["devices_refused"] += entry.type in DEVICES and not ownership.devices
        counts["xattrs_stripped"] += ownership.xattrs.stripped(entry.xattrs)
    return counts


def _selected_entries(
    entries: Iterable[Entry], selection: Sequence[bytes], found: set[bytes]
) -> Iterator[Entry]:
    """The entries `selection` chooses; adds to `found` the selected paths met."""
    for entry in entries:
        if entry.path in selection:
            found.add(entry.path)
        if _selected(entry.path, selection):
            yield entry


def plan_restore(
    repo: Repository,
    ref: str,
    paths: Iterable[str | bytes] = (),
    *,
    owners: bool = True,
    setid: bool = False,
    overwrite: str = "if-changed",
    delete: bool = False,
    xattrs: bool = True,
    devices: bool = False,
) -> RestorePlan:
    """What restoring snapshot `ref` (or only `paths` in it) will write, from one pass
    over its tree; NotFoundError if a path is not in the snapshot.

    Owners are restored if `owners` and the process runs as root (euid 0); setuid and
    setgid bits, and security.* and trusted.* extended attributes, only with the owners,
    and only if `setid`. Extended attributes are restored unless `xattrs` is False;
    device nodes are created only as root and only if `devices`.
    """
    if overwrite not in OVERWRITE:
        raise InvalidInputError(f"overwrite must be one of {OVERWRITE}, not {overwrite!r}")
    manifest = snapshot_manifest(repo, ref)
    selection = _selection(paths)
    restored = owners and os.geteuid() == 0
    privileged = restored and setid
    ownership = Ownership(
        owners=restored,
        setid=privileged,
        xattrs=XattrWriter(xattrs, privileged),
        devices=devices and os.geteuid() == 0,
    )
    found: set[bytes] = set()
    top = None if selection else top_entry(manifest.metadata, f"{manifest.name}:{manifest.number}")
    with tree_entries(repo, manifest) as entries:
        counts = _tally(_selected_entries(entries, selection, found), ownership)
    counts["setid_stripped"] += top is not None and _mode(top, ownership) != top.mode
    if missing := set(selection) - found:
        listed = ", ".join(sorted(repr(os.fsdecode(path)) for path in missing))
        raise NotFoundError(f"{ref} has no {listed}")
    return RestorePlan(
        manifest, selection, ownership, **counts, top=top, overwrite=overwrite, delete=delete
    )


@contextmanager
def planned_entries(repo: Repository, plan: RestorePlan) -> Iterator[Iterator[Entry]]:
    """The entries the plan restores, in tree order, streamed from the snapshot."""
    with tree_entries(repo, plan.manifest) as entries:
        yield _selected_entries(entries, plan.selection, set())


def _would_delete(repo: Repository, plan: RestorePlan, target: str | os.PathLike[str]) -> list[str]:
    """The paths of `target` a restore with `delete` would remove: one walk of the plan's
    entries beside the target's directories, opened without following symlinks."""
    try:
        root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return []  # no target yet, or not a directory: nothing in it to remove
    stale: list[str] = []
    stack: list[tuple[bytes, int | None, set[bytes]]] = [(b"", root, set())]

    def leave() -> None:
        path, fd, names = stack.pop()
        if fd is None:
            return
        try:
            if _deletes_in(plan, path):
                stale.extend(os.fsdecode(os.path.join(path, n)) for n, _ in _stale_names(fd, names))
        finally:
            os.close(fd)

    try:
        with planned_entries(repo, plan) as entries:
            for entry in entries:
                while len(stack) > 1 and stack[-1][0] != entry.parent:
                    leave()
                if stack[-1][0] != entry.parent:
                    raise IntegrityError(f"{entry.path_str!r} has no directory entry above it")
                _, parent_fd, names = stack[-1]
                names.add(entry.name)
                if entry.type == DIR:
                    child = None
                    with suppress(OSError, InvalidInputError):
                        child = _open_dir(parent_fd, entry.name) if parent_fd is not None else None
                    stack.append((entry.path, child, set()))
        while stack:
            leave()
    finally:
        for _, fd, _ in stack:
            if fd is not None:
                os.close(fd)
    return stale


def restore(
    repo: Repository,
    ref: str,
    target: str | os.PathLike[str],
    paths: Iterable[str | bytes] = (),
    *,
    owners: bool = True,
    setid: bool = False,
    overwrite: str = "if-changed",
    delete: bool = False,
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
    on_plan: Callable[[RestorePlan], None] | None = None,
    xattrs: bool = True,
    devices: bool = False,
) -> RestoreStats:
    """Restore snapshot `ref` (or only `paths` in it) into the directory `target`.

    Every chunk and every file's SHA-256 is verified before the file appears (written to a
    temporary name, then renamed). Modes, mtimes and symlinks are restored; owners too, by
    number, when running as root unless `owners` is False. Setuid and setgid bits are kept
    only with the owners and with `setid` (off by default: a store writer could plant a
    set-id program owned by root); so are security.* and trusted.* extended attributes (a
    file capability is as good as a setuid bit). Other extended attributes (user.*, POSIX
    ACLs) are restored unless `xattrs` is False; those the target file system refuses are
    counted. FIFOs are made; device nodes only as root with `devices` (a planted block
    device would give raw disk access). Files already in place with the same size, mtime and
    SHA-256 are kept (unless they are hard links); `overwrite` "always" rewrites them too,
    "never" leaves whatever is in an entry's place. What `target` holds and the snapshot
    lacks is left alone, or with `delete` removed (inside the chosen `paths` only). Nothing
    is ever created or changed outside `target`, whatever the snapshot holds.

    The plan (plan_restore) is made first and given to `on_plan` before anything is written;
    with `dry_run`, nothing is: not even `target` is created, and `removed` counts what
    `delete` would remove.
    """
    if delete and os.path.realpath(target) != os.path.abspath(target):
        raise InvalidInputError(
            f"restore with delete removes what {os.fspath(target)!r} holds, and that path "
            f"leads through a symlink to {os.path.realpath(target)!r} (a symlink an earlier "
            "restore left could point anywhere): name the real folder itself"
        )
    plan = plan_restore(
        repo,
        ref,
        paths,
        owners=owners,
        setid=setid,
        overwrite=overwrite,
        delete=delete,
        xattrs=xattrs,
        devices=devices,
    )
    if on_plan is not None:
        on_plan(plan)
    if dry_run:
        stale = _would_delete(repo, plan, target) if delete else []
        return RestoreStats(plan, dry_run=True, removed=len(stale), removed_paths=stale)
    restorer = _Restorer(repo, plan, _open_target(target), os.fspath(target), progress)
    try:
        with planned_entries(repo, plan) as entries:
            for entry in entries:
                restorer.add(entry)
        restorer.finish()
    finally:
        restorer.close()
    return restorer.stats
