"""Reading the source tree of a backup: walk it in tree order and open its files safely.

The walk lists each directory in the order of its names' bytes (tree order), lstat-s
every entry in worker threads a few directories ahead, and reports what it cannot read
instead of failing. Files are opened without following symlinks or blocking on FIFOs,
and only if they are still the regular file the walk listed.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from castore.errors import CastoreError, InvalidInputError
from castore.format.xattrs import Xattrs
from castore.snapshots.attributes import read_xattrs
from castore.snapshots.ignore import IgnoreRules

READ_BYTES = 1024 * 1024
"""Bytes per read() of a file being backed up."""


@dataclass(frozen=True, slots=True)
class Found:
    """One path met by the walk: its lstat (and link target), or why it could not be read."""

    rel: str
    abspath: str
    stat: os.stat_result | None
    error: str | None = None
    target: bytes | None = None
    """A symlink's target, read along with the listing."""
    not_entered: str | None = None
    """A directory recorded but not descended: why (another file system, a cache)."""
    xattrs: Xattrs = ()
    """Its extended attributes, when the walk reads them."""
    xattr_error: str | None = None
    """Why its extended attributes could not be read."""


def os_reason(exc: OSError) -> str:
    """Why a system call failed, in words (for skip reasons and error messages)."""
    return exc.strerror or str(exc)


@dataclass(frozen=True, slots=True)
class Reading:
    """What the walk reads of each path besides its lstat."""

    xattrs: bool = False
    """Whether extended attributes are read."""
    privileged: bool = False
    """Whether those of the security and trusted namespaces and the ACLs are too (root)."""


def _inspect(item: os.DirEntry[str], rel: str, reading: Reading) -> Found:
    """lstat one directory entry (and read it if it is a symlink, and its attributes)."""
    try:
        st = item.stat(follow_symlinks=False)
        target = os.readlink(os.fsencode(item.path)) if stat.S_ISLNK(st.st_mode) else None
    except OSError as exc:
        return Found(rel, item.path, None, os_reason(exc))
    if not reading.xattrs:
        return Found(rel, item.path, st, target=target)
    try:
        pairs = read_xattrs(item.path, reading.privileged)
    except OSError as exc:
        return Found(rel, item.path, st, target=target, xattr_error=os_reason(exc))
    return Found(rel, item.path, st, target=target, xattrs=pairs)


def _scan(path: str, rel: str, reading: Reading) -> list[Found]:
    """A directory's entries in the order of their names' bytes, each lstat-ed.

    Scans run in worker threads: the thread that records entries then makes no system
    call per file, each of which would have it wait for the GIL behind busy workers.
    """
    with os.scandir(path) as scan:
        items = sorted(scan, key=lambda item: os.fsencode(item.name))
    return [_inspect(item, f"{rel}/{item.name}" if rel else item.name, reading) for item in items]


def _is_dir(found: Found) -> bool:
    return found.stat is not None and stat.S_ISDIR(found.stat.st_mode)


CACHEDIR_TAG = "CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
"""What a cache directory's CACHEDIR.TAG starts with (https://bford.info/cachedir/)."""


def is_cache_dir(abspath: str) -> bool:
    """Whether the directory holds a CACHEDIR.TAG file (not a symlink) with the signature."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(os.path.join(abspath, CACHEDIR_TAG), flags)
    except OSError:
        return False
    try:
        return (
            stat.S_ISREG(os.fstat(fd).st_mode)
            and os.read(fd, len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
        )
    except OSError:
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Boundaries:
    """Directories the walk records but does not enter."""

    device: int | None = None
    """With --one-file-system: the root's st_dev; directories on others are not entered."""
    exclude_caches: bool = False
    """Whether directories tagged with CACHEDIR.TAG are not entered."""

    def reason(self, found: Found) -> str | None:
        """Why the directory `found` is not to be entered, or None to enter it."""
        assert found.stat is not None
        if self.device is not None and found.stat.st_dev != self.device:
            return "another file system (--one-file-system): its contents are not backed up"
        if self.exclude_caches and is_cache_dir(found.abspath):
            return "a cache directory (CACHEDIR.TAG): its contents are not backed up"
        return None


class _Listing:
    """The entries of one directory being walked, with scans of its subdirectories
    started a few ahead of the walk (not of those the walk will not enter)."""

    PREFETCH = 8

    def __init__(
        self,
        entries: list[Found],
        rules: IgnoreRules,
        pool: Executor,
        bounds: Boundaries,
        reading: Reading,
    ) -> None:
        kept = [e for e in entries if not rules.excluded(e.rel, _is_dir(e))]
        self.entries = [_bounded(e, bounds) for e in kept]
        self.position = 0
        self._pool = pool
        self._reading = reading
        self._cursor = 0
        self._scans: dict[int, Future[list[Found]]] = {}

    def next(self) -> Found | None:
        """The next entry, or None at the end."""
        if self.position >= len(self.entries):
            return None
        self.position += 1
        return self.entries[self.position - 1]

    def scan_current(self) -> list[Found]:
        """The listing of the directory `next` returned last (OSError if unreadable)."""
        self._prefetch()
        return self._scans.pop(self.position - 1).result()

    def _prefetch(self) -> None:
        while len(self._scans) < self.PREFETCH and self._cursor < len(self.entries):
            entry = self.entries[self._cursor]
            if self._cursor >= self.position - 1 and _is_dir(entry) and not entry.not_entered:
                self._scans[self._cursor] = self._pool.submit(
                    _scan, entry.abspath, entry.rel, self._reading
                )
            self._cursor += 1

    def cancel(self) -> None:
        """Drop scans not needed any more."""
        for future in self._scans.values():
            future.cancel()


def _bounded(found: Found, bounds: Boundaries) -> Found:
    """`found`, marked as not to be entered if it is a directory beyond `bounds`."""
    if not _is_dir(found):
        return found
    reason = bounds.reason(found)
    return found if reason is None else dataclasses.replace(found, not_entered=reason)


def walk(
    root: str,
    rules: IgnoreRules,
    pool: Executor,
    bounds: Boundaries | None = None,
    reading: Reading | None = None,
) -> Iterator[Found]:
    """Every path below `root` not excluded by `rules`, in tree order (depth first),
    with what `reading` asks for besides its lstat.

    A directory that cannot be listed is reported with its error instead of descended;
    one beyond `bounds` is yielded with `not_entered` set, and not descended.
    """
    bounds = bounds or Boundaries()
    reading = reading or Reading()
    try:
        top = _scan(root, "", reading)
    except OSError as exc:
        raise InvalidInputError(f"cannot read the directory {root!r}: {os_reason(exc)}") from exc
    stack = [_Listing(top, rules, pool, bounds, reading)]
    try:
        while stack:
            found = stack[-1].next()
            if found is None:
                stack.pop()
            elif not _is_dir(found) or found.not_entered:
                yield found
            else:
                try:
                    entries = stack[-1].scan_current()
                except OSError as exc:
                    reason = f"cannot list the directory: {os_reason(exc)}"
                    yield Found(found.rel, found.abspath, found.stat, reason)
                    continue
                yield found
                stack.append(_Listing(entries, rules, pool, bounds, reading))
    finally:
        for listing in stack:
            listing.cancel()


class TreeCount:
    """The regular files below a root and their bytes, counted by a walk in a background
    thread: the totals of a backup's progress."""

    def __init__(self, root: str, rules: IgnoreRules, bounds: Boundaries) -> None:
        self._files = 0
        self._bytes = 0
        self._complete = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(root, rules, bounds), name="castore-count", daemon=True
        )
        self._thread.start()

    def _run(self, root: str, rules: IgnoreRules, bounds: Boundaries) -> None:
        with ThreadPoolExecutor(1, thread_name_prefix="castore-count") as pool:
            try:
                for found in walk(root, rules, pool, bounds):
                    if self._stop.is_set():
                        return
                    if found.stat is not None and stat.S_ISREG(found.stat.st_mode):
                        self._files += 1
                        self._bytes += found.stat.st_size
            except CastoreError:
                return  # the backup's own walk reports it; the totals stay unknown
            self._complete = True

    def totals(self) -> tuple[int, int] | None:
        """(files, bytes) once the count is complete, else None."""
        return (self._files, self._bytes) if self._complete else None

    def wait(self) -> None:
        """Wait for the count to end."""
        self._thread.join()

    def close(self) -> None:
        """Stop counting and wait for the thread."""
        self._stop.set()
        self._thread.join()


class _Replaced(OSError):
    """The path no longer holds the regular file that was listed."""


@contextmanager
def open_regular(abspath: str, listed: os.stat_result) -> Iterator[tuple[BinaryIO, os.stat_result]]:
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


def changed_since(file: BinaryIO, opened: os.stat_result) -> bool:
    """Whether the open file's size or mtime moved since `opened` was taken: it was
    written to while it was read, so what was read may mix old and new bytes."""
    now = os.fstat(file.fileno())
    return (now.st_size, now.st_mtime_ns) != (opened.st_size, opened.st_mtime_ns)


def pieces(file: BinaryIO) -> Iterator[bytes]:
    """The content of an opened file, READ_BYTES at a time."""
    while piece := file.read(READ_BYTES):
        yield piece


def data_extents(fd: int, size: int, limit: int) -> tuple[tuple[int, int], ...] | None:
    """The (offset, length) ranges of an open file that hold data, found with SEEK_DATA
    and SEEK_HOLE; None if the file has no hole (or the file system cannot tell), or
    more than `limit` ranges."""
    extents: list[tuple[int, int]] = []
    position = 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after `position`: a hole to the end
                break
            return None
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if start >= size:
            break
        extents.append((start, end - start))
        if len(extents) > limit:
            return None
        position = end
    os.lseek(fd, 0, os.SEEK_SET)
    if extents == [(0, size)]:
        return None
    return tuple(extents)


def extent_pieces(file: BinaryIO, extents: tuple[tuple[int, int], ...]) -> Iterator[bytes]:
    """The data of an opened file's extents, in order, up to READ_BYTES at a time.

    A file that shrank while being read raises OSError (it then has changed)."""
    fd = file.fileno()
    for offset, length in extents:
        done = 0
        while done < length:
            piece = os.pread(fd, min(READ_BYTES, length - done), offset + done)
            if not piece:
                raise OSError(errno.EIO, "it shrank while being backed up")
            done += len(piece)
            yield piece


def file_kind(mode: int) -> str:
    """What kind of file the backup cannot record `mode` is, for the reason it is skipped."""
    return "socket" if stat.S_ISSOCK(mode) else f"mode {mode:o}"
