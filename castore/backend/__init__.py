"""Storage backends: the only layer that touches the filesystem or fsspec.

Every backend addresses objects by a relative POSIX path below its root and offers the
same small set of operations, so that the layers above never know where bytes live.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from castore.errors import InvalidInputError

if TYPE_CHECKING:
    from castore.backend.counting import CountingBackend


class Backend(Protocol):
    """What castore needs from a place that stores objects."""

    url: str
    """The store's location as the user gave it (used in messages)."""

    is_remote: bool
    """True when reads cross a network, so that a local cache pays off."""

    def read(self, path: str) -> bytes:
        """Return the whole object; raise ObjectNotFound when it is missing."""
        ...

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """Return `length` bytes from `start` (fewer only when the object is shorter)."""
        ...

    def size(self, path: str) -> int:
        """Return the object's size in bytes."""
        ...

    def write(self, path: str, data: bytes | memoryview) -> None:
        """Store `data` atomically under `path`, replacing any previous object."""
        ...

    def create(self, path: str, data: bytes | memoryview) -> None:
        """Store `data` under `path` only if nothing is there; else raise ObjectExistsError."""
        ...

    def exists(self, path: str) -> bool:
        """Whether an object is stored under `path`."""
        ...

    def modified(self, path: str) -> float:
        """When the object was last written, in seconds since the epoch, by the storage's
        own clock (so that times of objects in one store compare without clock skew)."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every object path below the folder `prefix`, recursively, sorted."""
        ...

    def delete(self, path: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    def ensure_container(self) -> None:
        """Create the root directory or bucket if it does not exist yet."""
        ...


def read_bounded(backend: Backend, path: str, limit: int) -> bytes:
    """The whole object if it has at most `limit` bytes, else its first `limit` + 1.

    For objects whose decoder refuses more than `limit` bytes: it still sees that a planted
    object is too large, and no one reads a giant (or an endless stream) to find out.
    """
    return backend.read_range(path, 0, limit + 1)


def open_backend(url: str, storage_options: dict[str, Any] | None = None) -> CountingBackend:
    """Open the backend for a plain local path or any fsspec URL, its requests counted."""
    from castore.backend.counting import CountingBackend

    return CountingBackend(_open_uncounted(url, storage_options))


def _open_uncounted(url: str, storage_options: dict[str, Any] | None) -> Backend:
    if not isinstance(url, str) or not url:
        raise InvalidInputError(f"a store location must be a non-empty string, got {url!r}")
    options = dict(storage_options or {})
    protocol, sep, rest = url.partition("://")
    if not sep or protocol in ("file", "local"):
        if options:
            raise InvalidInputError(
                f"storage options {sorted(options)} make no sense for a local store"
            )
        from castore.backend.local import LocalBackend

        return LocalBackend(rest if sep else url)
    from castore.backend.remote import FsspecBackend

    return FsspecBackend(url, options)
