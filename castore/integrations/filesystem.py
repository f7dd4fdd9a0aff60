"""castore as a read-only fsspec filesystem, protocol ``castore``.

``castore://REFERENCE[/PATH IN A SNAPSHOT]::STORE URL``, for example
``pd.read_csv("castore://backups/data:1/sub/train.csv::file:///srv/store")`` or
``castore://churn/model@sha256:<hex>::s3://bucket/store`` for a version's bytes. The
reference carries a version number, a tag or a digest; a tag is resolved at every call,
so nothing is listed from a stale cache. Without a version, a path is a name (or the
start of names): it lists the name's versions, ``NAME:N``. The store can also be given
as ``fsspec.filesystem("castore", store=URL)``. Files open seekable, and every byte
returned is verified. Writes raise ``OSError(EROFS)``: versions are saved with castore.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from fsspec import AbstractFileSystem

import castore
from castore.errors import InvalidInputError, NotFoundError


def _split(path: str) -> tuple[str | None, str]:
    """(the reference, or None for a bare name; the path inside the snapshot) of a path:
    the reference ends at the first "/" after its ":" or "@"."""
    if "::" in path:  # a chained URL's next store: this filesystem reads only its own
        raise InvalidInputError(f"{path!r} names another store after '::': open it by its URL")
    marks = [at for at in (path.find(":"), path.find("@")) if at >= 0]
    if not marks:
        return None, ""
    end = path.find("/", min(marks))
    return (path, "") if end < 0 else (path[:end], path[end + 1 :])


def _read_only(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.EROFS, "castore:// is read-only: save versions with castore")


class CastoreFileSystem(AbstractFileSystem):
    """The versions and snapshots of one castore store, read-only (see the module)."""

    protocol: ClassVar[str | tuple[str, ...]] = "castore"
    root_marker = ""

    def __init__(
        self,
        fo: str = "",
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        store: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        url = store or (f"{target_protocol}://{fo}" if target_protocol else fo)
        if not url:
            raise InvalidInputError(
                "castore:// needs a store: castore://REFERENCE::STORE_URL, or store=URL"
            )
        self.store = castore.open(url, **(target_options or {}))

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = str(path)
        if text.startswith("castore://"):
            text = text[len("castore://") :]
        return text.strip("/")

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """What `path` is: a directory (names, a name, a snapshot, a folder in one) or a
        file (a version's bytes, a file in a snapshot), with its size."""
        path = self._strip_protocol(path)
        ref, inner = _split(path)
        with _as_os_errors(path):
            if ref is None:
                if path == "" or any(n == path or n.startswith(f"{path}/") for n in self._names()):
                    return {"name": path, "type": "directory", "size": 0}
                raise NotFoundError(f"there is no name {path!r} in {self.store.url}")
            version = self.store.version(ref)
            if not inner:
                return self._version_info(ref, version)
            if version.serializer != "tree":
                raise NotFoundError(f"{ref} is not a snapshot: it has no path {inner!r}")
            return self._entry_info(ref, self.store.snapshot_entry(ref, inner))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """The children of a directory, or the file itself."""
        path = self._strip_protocol(path)
        found = self.info(path)
        ref, inner = _split(path)
        if found["type"] != "directory":
            listed = [found]
        elif ref is None:
            listed = self._children_of_names(path)
        else:
            parent = os.fsencode(inner)
            with _as_os_errors(path):
                entries = self.store.snapshot_entries(ref, inner or None)
                listed = [
                    self._entry_info(ref, entry)
                    for entry in entries
                    if entry.path != parent and entry.parent == parent
                ]
        return listed if detail else [item["name"] for item in listed]

    def _names(self) -> list[str]:
        return self.store.names()

    def _children_of_names(self, path: str) -> list[dict[str, Any]]:
        prefix = f"{path}/" if path else ""
        children: dict[str, dict[str, Any]] = {}
        for name in self._names():
            if name == path:
                for number in self.store.versions(name):
                    ref = f"{name}:{number}"
                    children[ref] = self._version_info(ref, self.store.version(ref))
            elif name.startswith(prefix):
                child = prefix + name[len(prefix) :].split("/")[0]
                children.setdefault(child, {"name": child, "type": "directory", "size": 0})
        return [children[key] for key in sorted(children)]

    @staticmethod
    def _version_info(ref: str, version: castore.Version) -> dict[str, Any]:
        tree = version.serializer == "tree"
        return {
            "name": ref,
            "type": "directory" if tree else "file",
            "size": 0 if tree else version.stream_size,
            "reference": version.reference,
            "content_digest": version.content_digest,
            "created": version.created,
        }

    @staticmethod
    def _entry_info(ref: str, entry: Any) -> dict[str, Any]:
        kinds = {"file": "file", "dir": "directory"}
        return {
            "name": f"{ref}/{entry.path_str}",
            "type": kinds.get(entry.type, "other"),
            "size": entry.size if entry.type == "file" else 0,
            "mode": entry.mode,
            "mtime": entry.mtime_ns / 1e9,
            "sha256": entry.sha256.hex() if entry.type == "file" else None,
        }

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if mode != "rb":
            _read_only()
        path = self._strip_protocol(path)
        ref, inner = _split(path)
        if ref is None:
            raise IsADirectoryError(errno.EISDIR, f"{path!r} is a name, not a version", path)
        with _as_os_errors(path):
            if inner:
                return self.store.open_snapshot_file(ref, inner)
            if self.store.version(ref).serializer == "tree":
                raise IsADirectoryError(errno.EISDIR, f"{ref} is a snapshot", path)
            return self.store.open_version(ref)

    mkdir = makedirs = rmdir = rm = rm_file = _rm = cp_file = mv = _read_only
    pipe_file = put_file = touch = _read_only


@contextmanager
def _as_os_errors(path: str) -> Iterator[None]:
    """castore's NotFoundError as FileNotFoundError, which fsspec's callers expect (exists,
    isfile, pandas); every other castore error goes through as it is."""
    try:
        yield
    except NotFoundError as exc:
        raise FileNotFoundError(errno.ENOENT, str(exc), path) from exc
