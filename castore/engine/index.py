"""The chunk index: chunk id -> (pack, offset, lengths, codec), built from index objects."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

from castore.backend import Backend
from castore.errors import CastoreError, IntegrityError, ObjectNotFoundError
from castore.format import layout
from castore.format.index import PackListing, decode_index_object, encode_index_object
from castore.format.packs import PackEntry


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    """Where a chunk's stored bytes are."""

    pack_id: bytes
    entry: PackEntry


class Index:
    """The merged view of every index object in a store, loaded lazily and refreshed on miss."""

    def __init__(self, backend: Backend, pool: Executor) -> None:
        self._backend = backend
        self._pool = pool
        self._locations: dict[bytes, ChunkLocation] = {}
        self._loaded: set[str] = set()
        self.damaged: dict[str, str] = {}
        """Index objects that could not be used, with the reason."""
        self.objects: dict[str, list[bytes]] = {}
        """Every usable index object loaded, with the packs it lists."""
        self.packs: dict[bytes, list[PackEntry]] = {}
        """Every indexed pack with all its entries."""
        self._lock = threading.Lock()

    def __contains__(self, chunk_id: bytes) -> bool:
        return chunk_id in self._locations

    def __len__(self) -> int:
        return len(self._locations)

    def unindexed_packs(self) -> list[bytes]:
        """Packs in storage that no loaded index object lists (crashed writes, lost index)."""
        found = []
        for path in self._backend.list(layout.PACKS):
            pack_id = layout.name_of(path)
            if pack_id is not None and pack_id not in self.packs:
                found.append(pack_id)
        return found

    def locations(self) -> dict[bytes, ChunkLocation]:
        """A snapshot of every known chunk and where it is."""
        with self._lock:
            return dict(self._locations)

    def lookup(self, chunk_id: bytes) -> ChunkLocation | None:
        """The chunk's location, or None if no loaded index object lists it."""
        return self._locations.get(chunk_id)

    def reload(self) -> None:
        """Forget everything and load the index objects that exist now (after a gc)."""
        with self._lock:
            self._locations, self._loaded, self.damaged = {}, set(), {}
            self.objects, self.packs = {}, {}
        self.refresh()

    def refresh(self) -> None:
        """Load index objects written since the last refresh (by anyone).

        If an index object we loaded is gone, a gc has rewritten the index and may have
        deleted packs: everything is reloaded, so that no stale location survives.
        """
        with self._lock:
            listed = self._backend.list(layout.INDEX)
            if not self._loaded.issubset(listed):
                self._locations, self._loaded, self.damaged = {}, set(), {}
                self.objects, self.packs = {}, {}
            paths = [p for p in listed if p not in self._loaded]
            for path, outcome in zip(paths, self._pool.map(self._load_object, paths), strict=True):
                self._loaded.add(path)
                if isinstance(outcome, CastoreError):
                    self.damaged[path] = str(outcome)
                else:
                    self.objects[path] = [pack_id for pack_id, _ in outcome]
                    self._merge(outcome)

    def _load_object(self, path: str) -> list[PackListing] | CastoreError:
        try:
            data = self._backend.read(path)
            name = layout.name_of(path)
            if name is None or hashlib.sha256(data).digest() != name:
                raise IntegrityError(f"index object {path} does not match its name")
            return decode_index_object(data, f"index object {path}")
        except ObjectNotFoundError:
            return []  # removed since the listing (by gc): nothing to merge
        except CastoreError as exc:  # damaged, or written by a newer castore: reported on use
            return exc

    def _merge(self, packs: Iterable[PackListing]) -> None:
        for pack_id, entries in packs:
            self.packs[pack_id] = entries
            for entry in entries:
                self._locations.setdefault(entry.chunk_id, ChunkLocation(pack_id, entry))

    def commit(self, packs: list[PackListing]) -> str:
        """Write an index object for packs already stored, then make them visible here."""
        data = encode_index_object(packs)
        path = layout.index_path(hashlib.sha256(data).digest())
        self._backend.write(path, data)
        with self._lock:
            self._loaded.add(path)
            self.objects[path] = [pack_id for pack_id, _ in packs]
            self._merge(packs)
        return path
