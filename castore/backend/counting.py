"""Request accounting: every backend operation counted by kind, in one wrapper.

`open_backend` wraps every backend in a `CountingBackend`, so that no backend counts for
itself and none can forget to. A count is one backend operation: one GET, PUT, HEAD or
DELETE on S3, except a listing, which S3 answers in pages of up to 1000 keys (a `list` of
n objects is ceil(n / 1000) S3 requests).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields

from castore.backend import Backend


@dataclass(frozen=True)
class Requests:
    """Backend operations by kind (exists, size and modified are all `stat`)."""

    read: int = 0
    read_range: int = 0
    write: int = 0
    create: int = 0
    list: int = 0
    delete: int = 0
    stat: int = 0

    @property
    def total(self) -> int:
        """Every operation of every kind."""
        return sum(self.as_dict().values())

    def as_dict(self) -> dict[str, int]:
        """The counts by kind, in a fixed order."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def __sub__(self, earlier: Requests) -> Requests:
        """The operations made since `earlier` was taken."""
        return Requests(**{k: v - getattr(earlier, k) for k, v in self.as_dict().items()})


class CountingBackend:
    """A backend that counts each operation by kind, then forwards it to `inner`.

    Thread-safe. An operation is counted when it is made, whether or not it succeeds.
    `ensure_container` (once, when a store is created) is not counted.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        """The backend that does the work."""
        self.url = inner.url
        self.is_remote = inner.is_remote
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(Requests().as_dict(), 0)

    def _count(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def requests(self) -> Requests:
        """The operations made through this backend so far."""
        with self._lock:
            return Requests(**self._counts)

    def read(self, path: str) -> bytes:
        """Return the whole object; raise ObjectNotFound when it is missing."""
        self._count("read")
        return self.inner.read(path)

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """Return `length` bytes from `start` (fewer only when the object is shorter)."""
        self._count("read_range")
        return self.inner.read_range(path, start, length)

    def size(self, path: str) -> int:
        """Return the object's size in bytes."""
        self._count("stat")
        return self.inner.size(path)

    def write(self, path: str, data: bytes | memoryview) -> None:
        """Store `data` atomically under `path`, replacing any previous object."""
        self._count("write")
        self.inner.write(path, data)

    def create(self, path: str, data: bytes | memoryview) -> None:
        """Store `data` under `path` only if nothing is there; else raise ObjectExistsError."""
        self._count("create")
        self.inner.create(path, data)

    def exists(self, path: str) -> bool:
        """Whether an object is stored under `path`."""
        self._count("stat")
        return self.inner.exists(path)

    def modified(self, path: str) -> float:
        """When the object was last written, by the storage's own clock."""
        self._count("stat")
        return self.inner.modified(path)

    def list(self, prefix: str) -> list[str]:
        """Every object path below the folder `prefix`, recursively, sorted."""
        self._count("list")
        return self.inner.list(prefix)

    def delete(self, path: str) -> None:
        """Remove the object; a missing object is not an error."""
        self._count("delete")
        self.inner.delete(path)

    def ensure_container(self) -> None:
        """Create the root directory or bucket if it does not exist yet."""
        self.inner.ensure_container()
