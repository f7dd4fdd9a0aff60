"""The local cache: verified copies of chunks and index objects of remote stores, and of
whole streams for mmap.

Everything in it is named by its SHA-256 and re-checked on every hit, so a damaged or
tampered cache costs a re-fetch, never wrong bytes. Chunks and streams are bounded: the
least recently used files are evicted once they grow past the cache's size. Index objects
are kept per store and pruned to the store's own listing whenever it is read, so they take
what the store's index takes (docs/DECISIONS.md, "Index cache").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from castore.errors import InvalidInputError

DEFAULT_CACHE_SIZE = 10 * 1024**3
EVICT_TO = 0.9
"""Eviction frees space down to this fraction of the size limit."""
CACHEDIR_TAG = (
    b"Signature: 8a477f597d28d172789f06886806bc55\n"
    b"# This file is a cache directory tag created by castore.\n"
    b"# For information about cache directory tags, see https://bford.info/cachedir/\n"
)
"""Written at the cache's root, so that backup tools (restic, borg, tar, castore's own
--exclude-caches) skip the cache."""
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)(i?b?)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in a size such as ``10GiB``, ``500M``, ``1.5 TB`` or ``4096`` (K, M, G, T and
    P count powers of 1024, with or without "iB"); InvalidInputError otherwise."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise InvalidInputError(f"invalid size {text!r}: expected a number and a unit, e.g. 10GiB")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** " KMGTP".index(unit or " "))


def default_cache_dir() -> Path:
    """$CASTORE_CACHE_DIR, else the user's cache folder (platformdirs: ~/.cache/castore or
    $XDG_CACHE_HOME/castore on Linux, ~/Library/Caches/castore on macOS)."""
    explicit = os.environ.get("CASTORE_CACHE_DIR")
    return Path(explicit) if explicit else Path(platformdirs.user_cache_dir("castore"))


def default_cache_size() -> int:
    """$CASTORE_CACHE_SIZE (e.g. ``20GiB``), else DEFAULT_CACHE_SIZE."""
    explicit = os.environ.get("CASTORE_CACHE_SIZE")
    return parse_size(explicit) if explicit else DEFAULT_CACHE_SIZE


@dataclass(frozen=True)
class CacheUsage:
    """What the local cache holds, by kind."""

    root: str
    max_bytes: int
    """The bound on chunks and streams together (index copies follow their stores)."""
    chunk_files: int
    chunk_bytes: int
    stream_files: int
    stream_bytes: int
    index_stores: int
    """Stores whose index objects have copies here."""
    index_bytes: int

    @property
    def bytes(self) -> int:
        """Every byte held."""
        return self.chunk_bytes + self.stream_bytes + self.index_bytes


def _tally(paths: Iterable[Path]) -> tuple[int, int]:
    """(files, bytes) of the files that still exist."""
    files = size = 0
    for path in paths:
        with contextlib.suppress(OSError):
            size += path.stat().st_size
            files += 1
    return files, size


class LocalCache:
    """A bounded, verified, content-addressed cache directory shared by all stores."""

    def __init__(
        self, root: str | os.PathLike[str] | None = None, max_bytes: int | None = None
    ) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = max_bytes if max_bytes is not None else default_cache_size()
        self._tagged = False
        self._lock = threading.Lock()
        self._size: int | None = None
        self.hits = 0
        """Chunks served from the cache (without any pack read) since this object was made."""

    def _path(self, kind: str, name: bytes) -> Path:
        hex_name = name.hex()
        return self.root / kind / hex_name[:2] / hex_name

    def _files(self, kinds: tuple[str, ...] = ("chunks", "streams")) -> Iterable[Path]:
        for kind in kinds:
            yield from (p for p in (self.root / kind).glob("*/*") if not p.name.startswith("."))

    def _folder(self, path: Path) -> None:
        """Make a folder of the cache, tagging the cache's root once."""
        path.mkdir(parents=True, exist_ok=True)
        if not self._tagged:
            tag = self.root / "CACHEDIR.TAG"
            if not tag.exists():
                with contextlib.suppress(OSError):
                    tag.write_bytes(CACHEDIR_TAG)
            self._tagged = True

    def usage(self) -> CacheUsage:
        """What the cache holds now."""
        chunks, streams = _tally(self._files(("chunks",))), _tally(self._files(("streams",)))
        index = self.root / "index"
        stores = [p for p in index.iterdir() if p.is_dir()] if index.is_dir() else []
        tables = [p for p in index.iterdir() if p.suffix == ".table"] if index.is_dir() else []
        _, index_bytes = _tally([*tables, *(f for store in stores for f in store.iterdir())])
        return CacheUsage(
            str(self.root), self.max_bytes, *chunks, *streams, len(stores), index_bytes
        )

    def prune(self, max_bytes: int | None = None) -> int:
        """Delete the least recently used chunks and streams until they take at most
        `max_bytes` (default: the cache's bound); with 0, the index copies too (stores
        fetch them again on their next open). Returns the bytes freed."""
        target = self.max_bytes if max_bytes is None else max_bytes
        before = self.usage().bytes
        with self._lock:
            self._evict_to(target)
        if target == 0:
            shutil.rmtree(self.root / "index", ignore_errors=True)
        return before - self.usage().bytes

    def _current_size(self) -> int:
        if self._size is None:
            self._size = sum(p.stat().st_size for p in self._files() if p.exists())
        return self._size

    # -- chunks -----------------------------------------------------------------------------

    def chunk(self, chunk_id: bytes) -> bytes | None:
        """The cached chunk if present and intact (a damaged copy is dropped)."""
        path = self._path("chunks", chunk_id)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).digest() != chunk_id:
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return data

    def add_chunk(self, chunk_id: bytes, data: bytes | memoryview) -> None:
        """Keep a verified chunk; cache failures never fail a read.

        Written in place, without a temporary file and rename: a torn file fails its
        digest on the next hit and is dropped, so atomicity would buy nothing here.
        """
        path = self._path("chunks", chunk_id)
        try:
            self._folder(path.parent)
            with open(path, "xb") as file:
                file.write(data)
        except OSError:
            return
        self._account(len(data))

    # -- index objects ----------------------------------------------------------------------

    def index_objects(self, store_id: str, url: str) -> IndexObjectCache:
        """The copies of one store's index objects, in a folder of their own per store.

        The folder is named by the store's id and location together, so that a store made
        again at the same location, or a copy of a bucket elsewhere, has its own: the copies
        are verified by name anyway, but each store prunes its folder to its own listing.
        """
        key = hashlib.sha256(f"{store_id}\n{url}".encode()).hexdigest()[:32]
        return IndexObjectCache(self.root / "index" / key, self._folder)

    # -- whole streams ----------------------------------------------------------------------

    def stream_file(self, digest: bytes, size: int, fill: Callable[[object], None]) -> Path:
        """A local file holding a stream, verified; `fill` writes it when not cached yet."""
        path = self._path("streams", digest)
        if path.exists() and path.stat().st_size == size and _file_digest(path) == digest:
            os.utime(path)
            return path
        self._write(path, fill)
        if _file_digest(path) != digest:
            path.unlink(missing_ok=True)
            raise OSError(f"cached stream sha256:{digest.hex()} did not verify")
        return path

    # -- storage ----------------------------------------------------------------------------

    def _write(self, path: Path, fill: Callable[[object], object]) -> None:
        self._folder(path.parent)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            with open(temporary, "wb") as file:
                fill(file)
            size = temporary.stat().st_size
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        self._account(size)

    def _account(self, added: int) -> None:
        with self._lock:
            self._size = self._current_size() + added
            if self._size > self.max_bytes:
                self._evict_to(int(self.max_bytes * EVICT_TO))

    def _evict_to(self, target: int) -> None:
        """Delete least recently used files until chunks and streams take `target` bytes."""
        entries = []
        for path in self._files():
            with contextlib.suppress(OSError):
                stat = path.stat()
                entries.append((stat.st_mtime, stat.st_size, path))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= target:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
        self._size = total


class IndexObjectCache:
    """Verified local copies of one store's index objects, named by their SHA-256.

    Thread-safe (every file is written whole and renamed into place) and shared by every
    process that opens the store; failures of the cache never fail an open.
    """

    def __init__(self, folder: Path, make_folder: Callable[[Path], None]) -> None:
        self.folder = folder
        """Where the copies are: one file per index object, named by its hex digest."""
        self.table = folder.with_name(folder.name + ".table")
        """The merged chunk table built from them, saved by the Index (engine/tablefile.py)."""
        self._make_folder = make_folder

    def get(self, name: bytes) -> bytes | None:
        """The cached index object `name` if present and intact (a damaged copy is dropped)."""
        path = self.folder / name.hex()
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).digest() != name:
            path.unlink(missing_ok=True)
            return None
        return data

    def add(self, name: bytes, data: bytes) -> None:
        """Keep a copy of an index object already verified against its name."""
        path = self.folder / name.hex()
        temporary = self.folder / f".{name.hex()}.{secrets.token_hex(6)}.tmp"
        try:
            self._make_folder(self.folder)
            temporary.write_bytes(data)
            os.replace(temporary, path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)

    def keep_only(self, names: set[bytes]) -> None:
        """Drop the copies of index objects the store no longer lists."""
        wanted = {name.hex() for name in names}
        try:
            present = [p for p in self.folder.iterdir() if not p.name.startswith(".")]
        except OSError:
            return
        for path in present:
            if path.name not in wanted:
                with contextlib.suppress(OSError):
                    path.unlink()


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(8 * 1024 * 1024):
            digest.update(block)
    return digest.digest()
