"""fsspec backend: memory://, s3:// and any other filesystem fsspec can open."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import fsspec

from castore.backend.paths import check_object_path, is_temporary
from castore.errors import BackendError, InvalidInputError, ObjectExistsError, ObjectNotFoundError

T = TypeVar("T")

# S3 answers a failed `If-None-Match: *` with 412, or 409 while a competing conditional
# write is still in flight; s3fs turns only some variants into FileExistsError.
_CONDITIONAL_CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}

# S3 refuses a range that starts at or after the end of the object (416) instead of
# returning no bytes.
_RANGE_PAST_END_CODES = {"InvalidRange", "416"}

_LOCAL_PROTOCOLS = {"memory"}

# fsspec's memory filesystem checks and then stores, so that two threads creating the same
# object can both succeed; its objects live in one dict per process, so one lock serialises
# every change made through castore.
_MEMORY_LOCK = threading.Lock()


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code carried by an exception or its cause, if any."""
    current: BaseException | None = exc
    while current is not None:
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            error = response.get("Error", {})
            code = error.get("Code") or str(
                response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
            )
            return str(code)
        current = current.__cause__ or current.__context__
    return None


class FsspecBackend:
    """Objects below a root prefix of an fsspec filesystem."""

    def __init__(self, url: str, storage_options: dict[str, Any]) -> None:
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except (ValueError, TypeError, ImportError) as exc:
            raise InvalidInputError(f"cannot open store location {url!r}: {exc}") from exc
        self.url = url
        self.root = root.rstrip("/")
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.is_remote = protocol not in _LOCAL_PROTOCOLS
        self._changes: contextlib.AbstractContextManager[Any] = (
            _MEMORY_LOCK if protocol == "memory" else contextlib.nullcontext()
        )

    def _full(self, path: str) -> str:
        return f"{self.root}/{check_object_path(path)}"

    def _call(self, action: str, path: str, operation: Callable[[], T]) -> T:
        """Run one filesystem call, translating its errors into castore's."""
        try:
            return operation()
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"{path} not found in {self.url}") from exc
        except Exception as exc:  # the boundary: nothing raw escapes from a library below
            raise BackendError(f"cannot {action} {path} in {self.url}: {exc}") from exc

    def read(self, path: str) -> bytes:
        """Return the whole object."""
        full = self._full(path)
        data: bytes = self._call("read", path, lambda: self.fs.cat_file(full))
        return data

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """Return `length` bytes from `start`, fewer only at the end of the object."""
        full = self._full(path)
        if length <= 0:
            return b""
        try:
            data: bytes = self.fs.cat_file(full, start=start, end=start + length)
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"{path} not found in {self.url}") from exc
        except Exception as exc:
            if _error_code(exc) in _RANGE_PAST_END_CODES:
                return b""
            raise BackendError(f"cannot read {path} in {self.url}: {exc}") from exc
        return data

    def _file_info(self, path: str) -> dict[str, Any]:
        """fsspec's fresh description of the object; ObjectNotFoundError for a folder."""
        full = self._full(path)
        self.fs.invalidate_cache(full)
        info: dict[str, Any] = self._call("stat", path, lambda: self.fs.info(full))
        if info.get("type") != "file":
            raise ObjectNotFoundError(f"{path} in {self.url} is a folder, not an object")
        return info

    def size(self, path: str) -> int:
        """Return the object's size in bytes."""
        return int(self._file_info(path)["size"])

    def write(self, path: str, data: bytes | memoryview) -> None:
        """Store the object with one PUT, which S3 makes visible atomically."""
        full = self._full(path)
        with self._changes:
            self._call("write", path, lambda: self.fs.pipe_file(full, bytes(data)))

    def create(self, path: str, data: bytes | memoryview) -> None:
        """Store the object only if absent (`If-None-Match: *` on S3)."""
        full = self._full(path)
        try:
            with self._changes:
                self.fs.pipe_file(full, bytes(data), mode="create")
        except FileExistsError as exc:
            raise ObjectExistsError(f"{path} already exists in {self.url}") from exc
        except Exception as exc:
            if _error_code(exc) in _CONDITIONAL_CONFLICT_CODES:
                raise ObjectExistsError(f"{path} already exists in {self.url}") from exc
            raise BackendError(f"cannot create {path} in {self.url}: {exc}") from exc

    def modified(self, path: str) -> float:
        """LastModified (S3) or the creation time fsspec reports, as epoch seconds."""
        info = self._file_info(path)
        stamp = info.get("LastModified") or info.get("mtime") or info.get("created")
        if isinstance(stamp, datetime):
            return stamp.timestamp()
        if isinstance(stamp, int | float):
            return float(stamp)
        raise BackendError(f"{self.url} reports no modification time for {path}")

    def exists(self, path: str) -> bool:
        """Whether an object is stored under `path`."""
        try:
            self._file_info(path)
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        """Every object below the folder `prefix`, as sorted relative paths.

        A missing folder holds nothing; any failure of the listing raises BackendError.
        """
        base = self._full(prefix)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base)
        except Exception as exc:
            # find() answers [] for a missing folder, so even FileNotFoundError (a missing
            # bucket) is a failure to list, never an empty listing or a missing object.
            raise BackendError(f"cannot list {prefix} in {self.url}: {exc}") from exc
        below = f"{base}/"
        start = len(self.root) + 1
        # find() names an object at `base` itself, which is not below the folder `base`.
        return sorted(p[start:] for p in found if p.startswith(below) and not is_temporary(p))

    def delete(self, path: str) -> None:
        """Remove the object if present."""
        full = self._full(path)
        with self._changes, contextlib.suppress(ObjectNotFoundError):
            self._call("delete", path, lambda: self.fs.rm_file(full))

    def ensure_container(self) -> None:
        """Create the root's bucket or directory when the filesystem needs one."""
        self._call("create", self.root, lambda: self.fs.makedirs(self.root, exist_ok=True))
