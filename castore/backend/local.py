"""Local directory backend: temp file + fsync + rename, O_EXCL-safe exclusive creates.

Whoever can write to the store may plant symbolic links, named pipes or devices in it.
So every operation walks the path one folder at a time through directory descriptors
opened with O_NOFOLLOW, opens files with O_NOFOLLOW | O_NONBLOCK, and accepts regular
files only: nothing inside the store root leads outside it, and no read blocks or
streams forever. Anything that is neither a folder nor a regular file raises
BackendError, never "not found", so that gc cannot mistake it for an absent object.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from castore.backend.paths import check_object_path, is_temporary
from castore.errors import BackendError, ObjectExistsError, ObjectNotFoundError

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TEMPORARY_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _kind(mode: int) -> str:
    """What a non-regular, non-folder file is, for messages."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


class LocalBackend:
    """Objects as files below a root directory."""

    is_remote = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)

    # -- walking the store's folders -------------------------------------------------------

    def _foreign(self, shown: str, mode: int) -> BackendError:
        return BackendError(
            f"{shown} in {self.url} is {_kind(mode)}: a castore store holds only folders and"
            " regular files; remove it"
        )

    @contextlib.contextmanager
    def _folder(self, folders: list[str], shown: str, *, create: bool) -> Iterator[int]:
        """A descriptor of the folder `folders` below the root, never through a link.

        A missing folder raises ObjectNotFoundError, or is made when `create` is set.
        """
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError) as exc:
            if not create:
                raise ObjectNotFoundError(f"{shown} not found in {self.url}") from exc
            self.ensure_container()
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in folders:
                child = self._open_child_folder(fd, name, shown, create=create)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _open_child_folder(self, parent: int, name: str, shown: str, *, create: bool) -> int:
        for _ in range(2):
            try:
                return os.open(name, _FOLDER_FLAGS, dir_fd=parent)
            except FileNotFoundError as exc:
                if not create:
                    raise ObjectNotFoundError(f"{shown} not found in {self.url}") from exc
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=parent)
                    os.fsync(parent)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
                if stat.S_ISREG(mode) and not create:
                    raise ObjectNotFoundError(f"{shown} not found in {self.url}") from exc
                raise self._foreign(shown, mode) from exc
        raise BackendError(f"cannot create the folders of {shown} in {self.url}")

    def _split(self, path: str) -> tuple[list[str], str]:
        *folders, leaf = check_object_path(path).split("/")
        return folders, leaf

    @contextlib.contextmanager
    def _opened(self, path: str, operation: str) -> Iterator[int]:
        """A read-only descriptor of the regular file at `path`."""
        folders, leaf = self._split(path)
        try:
            with self._folder(folders, path, create=False) as parent:
                try:
                    fd = os.open(leaf, _READ_FLAGS, dir_fd=parent)
                except OSError as exc:
                    if exc.errno != errno.ELOOP:
                        raise
                    raise self._foreign(path, stat.S_IFLNK) from exc
                try:
                    mode = os.fstat(fd).st_mode
                    if stat.S_ISDIR(mode):
                        raise ObjectNotFoundError(f"{path} in {self.url} is a directory")
                    if not stat.S_ISREG(mode):
                        raise self._foreign(path, mode)
                    yield fd
                finally:
                    os.close(fd)
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"{path} not found in {self.url}") from exc
        except OSError as exc:
            raise BackendError(f"cannot {operation} {path} in {self.url}: {exc}") from exc

    # -- reading ---------------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        """Return the whole object."""
        with self._opened(path, "read") as fd:
            return _read_all(fd, os.fstat(fd).st_size)

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """Return `length` bytes from `start`, fewer only at the end of the object."""
        with self._opened(path, "read") as fd:
            parts = []
            while length > 0:
                piece = os.pread(fd, length, start)
                if not piece:
                    break
                parts.append(piece)
                start += len(piece)
                length -= len(piece)
            return parts[0] if len(parts) == 1 else b"".join(parts)

    def _stat(self, path: str) -> os.stat_result:
        """The object's status; ObjectNotFoundError when nothing or a folder is there."""
        folders, leaf = self._split(path)
        try:
            with self._folder(folders, path, create=False) as parent:
                status = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"{path} not found in {self.url}") from exc
        except OSError as exc:
            raise BackendError(f"cannot stat {path} in {self.url}: {exc}") from exc
        if stat.S_ISDIR(status.st_mode):
            raise ObjectNotFoundError(f"{path} in {self.url} is a directory")
        if not stat.S_ISREG(status.st_mode):
            raise self._foreign(path, status.st_mode)
        return status

    def size(self, path: str) -> int:
        """Return the object's size in bytes."""
        return self._stat(path).st_size

    def modified(self, path: str) -> float:
        """The file's modification time."""
        return self._stat(path).st_mtime

    def exists(self, path: str) -> bool:
        """Whether a file is stored under `path`."""
        try:
            self._stat(path)
        except ObjectNotFoundError:
            return False
        return True

    # -- writing ---------------------------------------------------------------------------

    def _write_temporary(self, parent: int, leaf: str, data: bytes | memoryview) -> str:
        """Write `data` to a synced temporary file beside `leaf` and return its name."""
        temporary = f".{leaf}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temporary, _TEMPORARY_FLAGS, 0o644, dir_fd=parent)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=parent)
            raise
        os.close(fd)
        return temporary

    def write(self, path: str, data: bytes | memoryview) -> None:
        """Atomically replace the object: temp file, fsync, rename, fsync of the directory."""
        folders, leaf = self._split(path)
        try:
            with self._folder(folders, path, create=True) as parent:
                temporary = self._write_temporary(parent, leaf, data)
                os.replace(temporary, leaf, src_dir_fd=parent, dst_dir_fd=parent)
                os.fsync(parent)
        except OSError as exc:
            raise BackendError(f"cannot write {path} in {self.url}: {exc}") from exc

    def create(self, path: str, data: bytes | memoryview) -> None:
        """Create the object only if absent: link() of a synced temp file fails on EEXIST."""
        folders, leaf = self._split(path)
        try:
            with self._folder(folders, path, create=True) as parent:
                temporary = self._write_temporary(parent, leaf, data)
                try:
                    os.link(
                        temporary,
                        leaf,
                        src_dir_fd=parent,
                        dst_dir_fd=parent,
                        follow_symlinks=False,
                    )
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temporary, dir_fd=parent)
                os.fsync(parent)
        except FileExistsError as exc:
            raise ObjectExistsError(f"{path} already exists in {self.url}") from exc
        except OSError as exc:
            raise BackendError(f"cannot create {path} in {self.url}: {exc}") from exc

    def delete(self, path: str) -> None:
        """Remove the file if present (a link planted in its place goes, not its target)."""
        folders, leaf = self._split(path)
        try:
            with (
                self._folder(folders, path, create=False) as parent,
                contextlib.suppress(FileNotFoundError, IsADirectoryError),
            ):
                # A folder is no object: nothing to remove.
                if stat.S_ISDIR(os.stat(leaf, dir_fd=parent, follow_symlinks=False).st_mode):
                    return
                os.unlink(leaf, dir_fd=parent)
        except ObjectNotFoundError:
            return
        except OSError as exc:
            raise BackendError(f"cannot delete {path} in {self.url}: {exc}") from exc

    def ensure_container(self) -> None:
        """Create the root directory."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create {self.url}: {exc}") from exc

    # -- listing ---------------------------------------------------------------------------

    def list(self, prefix: str) -> list[str]:
        """Every regular file below the folder `prefix`, as sorted relative paths.

        A missing `prefix` folder holds nothing. A folder below it that cannot be read, or
        an entry that is neither a folder nor a regular file (a link, a pipe, a device),
        raises BackendError: a listing that silently left it out would tell gc that what
        it stands for is absent, and reads never follow it.
        """
        folders = check_object_path(prefix).split("/")
        found: list[str] = []
        try:
            with self._folder(folders, prefix, create=False) as fd:
                self._list_below(os.dup(fd), prefix, found, prefix)
        except ObjectNotFoundError:
            return []
        except OSError as exc:
            raise self._unlistable(prefix, prefix, exc) from exc
        return sorted(found)

    def _unlistable(self, prefix: str, folder: str, exc: OSError) -> BackendError:
        return BackendError(
            f"cannot list {prefix} in {self.url}: cannot read folder {folder}:"
            f" {exc.strerror or exc}"
        )

    def _list_below(self, fd: int, folder: str, found: builtins.list[str], prefix: str) -> None:
        """Add the regular files below the open folder `fd` (closed here) to `found`."""
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    relative = f"{folder}/{entry.name}"
                    if entry.is_dir(follow_symlinks=False):
                        try:
                            child = self._open_child_folder(fd, entry.name, relative, create=False)
                        except ObjectNotFoundError as exc:
                            raise BackendError(
                                f"cannot list {prefix} in {self.url}: folder {relative}"
                                " vanished during the listing"
                            ) from exc
                        except OSError as exc:
                            raise self._unlistable(prefix, relative, exc) from exc
                        self._list_below(child, relative, found, prefix)
                    elif entry.is_file(follow_symlinks=False):
                        if not is_temporary(relative):
                            found.append(relative)
                    else:
                        raise self._foreign(relative, entry.stat(follow_symlinks=False).st_mode)
        except OSError as exc:
            raise self._unlistable(prefix, folder, exc) from exc
        finally:
            os.close(fd)


def _read_all(fd: int, expected: int) -> bytes:
    """Every byte of an open regular file, however its size changes while reading."""
    parts: builtins.list[bytes] = []
    while True:
        piece = os.read(fd, max(expected, 1 << 16))
        if not piece:
            return b"".join(parts)
        parts.append(piece)
