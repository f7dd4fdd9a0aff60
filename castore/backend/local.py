"""Local directory backend: temp file + fsync + rename, O_EXCL-safe exclusive creates."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from castore.backend.paths import check_object_path, is_temporary
from castore.errors import BackendError, ObjectExistsError, ObjectNotFoundError


class LocalBackend:
    """Objects as files below a root directory."""

    is_remote = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)

    def _full(self, path: str) -> Path:
        return self.root / check_object_path(path)

    def read(self, path: str) -> bytes:
        """Return the whole object."""
        try:
            return self._full(path).read_bytes()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"{path} not found in {self.url}") from exc
        except IsADirectoryError as exc:
            raise ObjectNotFoundError(f"{path} in {self.url} is a directory") from exc
        except OSError as exc:
            raise BackendError(f"cannot read {path} in {self.url}: {exc}") from exc

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """Return `length` bytes from `start`, fewer only at the end of the object."""
        try:
            fd = os.open(self._full(path), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"{path} not found in {self.url}") from exc
        except OSError as exc:
            raise BackendError(f"cannot read {path} in {self.url}: {exc}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ObjectNotFoundError(f"{path} in {self.url} is not a file")
            parts = []
            while length > 0:
                piece = os.pread(fd, length, start)
                if not piece:
                    break
                parts.append(piece)
                start += len(piece)
                length -= len(piece)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        except OSError as exc:
            raise BackendError(f"cannot read {path} in {self.url}: {exc}") from exc
        finally:
            os.close(fd)

    def _stat(self, path: str) -> os.stat_result:
        """The object's status; ObjectNotFoundError when nothing or a folder is there."""
        try:
            status = self._full(path).stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"{path} not found in {self.url}") from exc
        except OSError as exc:
            raise BackendError(f"cannot stat {path} in {self.url}: {exc}") from exc
        if not stat.S_ISREG(status.st_mode):
            raise ObjectNotFoundError(f"{path} in {self.url} is not a file")
        return status

    def size(self, path: str) -> int:
        """Return the object's size in bytes."""
        return self._stat(path).st_size

    def _write_temporary(self, target: Path, data: bytes | memoryview) -> Path:
        """Write `data` to a synced temporary file beside `target` and return its path."""
        self._make_directories(target.parent)
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        os.close(fd)
        return temporary

    def _make_directories(self, directory: Path) -> None:
        """Create missing directories, syncing each parent so that the new entry survives."""
        if directory.is_dir():
            return
        self._make_directories(directory.parent)
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
            self._sync_directory(directory.parent)

    def _sync_directory(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, path: str, data: bytes | memoryview) -> None:
        """Atomically replace the object: temp file, fsync, rename, fsync of the directory."""
        target = self._full(path)
        try:
            temporary = self._write_temporary(target, data)
            os.replace(temporary, target)
            self._sync_directory(target.parent)
        except OSError as exc:
            raise BackendError(f"cannot write {path} in {self.url}: {exc}") from exc

    def create(self, path: str, data: bytes | memoryview) -> None:
        """Create the object only if absent: link() of a synced temp file fails on EEXIST."""
        target = self._full(path)
        try:
            temporary = self._write_temporary(target, data)
            try:
                os.link(temporary, target)
            finally:
                temporary.unlink(missing_ok=True)
            self._sync_directory(target.parent)
        except FileExistsError as exc:
            raise ObjectExistsError(f"{path} already exists in {self.url}") from exc
        except OSError as exc:
            raise BackendError(f"cannot create {path} in {self.url}: {exc}") from exc

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

    def list(self, prefix: str) -> list[str]:
        """Every regular file below the folder `prefix`, as sorted relative paths.

        A missing `prefix` folder holds nothing. Any folder below it that cannot be read
        raises BackendError: a listing that silently left it out would tell gc that the
        objects in it are absent. Symbolic links are neither followed nor listed.
        """
        relative_prefix = check_object_path(prefix)
        found: list[str] = []
        pending = [relative_prefix]
        while pending:
            folder = pending.pop()
            try:
                with os.scandir(self.root / folder) as entries:
                    for entry in entries:
                        relative = f"{folder}/{entry.name}"
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(relative)
                        elif entry.is_file(follow_symlinks=False) and not is_temporary(relative):
                            found.append(relative)
            except (FileNotFoundError, NotADirectoryError) as exc:
                if folder == relative_prefix:
                    continue  # no such folder: nothing is stored below it
                raise BackendError(
                    f"cannot list {prefix} in {self.url}: folder {folder} vanished during"
                    f" the listing: {exc.strerror}"
                ) from exc
            except OSError as exc:
                raise BackendError(
                    f"cannot list {prefix} in {self.url}: cannot read folder {folder}:"
                    f" {exc.strerror or exc}"
                ) from exc
        return sorted(found)

    def delete(self, path: str) -> None:
        """Remove the file if present."""
        try:
            # Nothing there, or a folder (which is no object): nothing to remove.
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                self._full(path).unlink()
        except OSError as exc:
            raise BackendError(f"cannot delete {path} in {self.url}: {exc}") from exc

    def ensure_container(self) -> None:
        """Create the root directory."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create {self.url}: {exc}") from exc
