"""The chunk index: chunk id -> (pack, offset, lengths, codec), built from index objects."""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor

from castore.backend import Backend
from castore.engine import tablefile
from castore.engine.cache import IndexObjectCache
from castore.engine.chunktable import ChunkLocation, ChunkTable, PackEntries
from castore.errors import CastoreError, IntegrityError, ObjectNotFoundError
from castore.format import layout
from castore.format.index import PackListing, PackTable, decode_index_tables, encode_index_tables
from castore.format.packs import encode_entries

__all__ = ["ChunkLocation", "Index"]

SAVE_SHARE = 16
"""A load that adds more than 1/SAVE_SHARE of the records saves the table (local cache)."""


class Index:
    """The merged view of every index object in a store, loaded lazily and refreshed on miss.

    With a `cache`, each index object is read from the backend once: later loads take the
    verified local copy, so that an open lists index/ and reads only what is new. Chunks
    are held in a ChunkTable (about 55 B a chunk); lookups take no lock.
    """

    def __init__(
        self, backend: Backend, pool: Executor, cache: IndexObjectCache | None = None
    ) -> None:
        self._backend = backend
        self._pool = pool
        self._cache = cache
        self._table = ChunkTable()
        self._loaded: set[str] = set()
        self.damaged: dict[str, str] = {}
        """Index objects that could not be used, with the reason."""
        self.objects: dict[str, list[bytes]] = {}
        """Every usable index object loaded, with the packs it lists."""
        self._lock = threading.Lock()

    def __contains__(self, chunk_id: bytes) -> bool:
        return chunk_id in self._table

    def __len__(self) -> int:
        return len(self._table)

    @property
    def packs(self) -> PackEntries:
        """Every indexed pack with all its entries (each copy of a chunk in several packs)."""
        return self._table.packs()

    def unindexed_packs(self) -> list[bytes]:
        """Packs in storage that no loaded index object lists (crashed writes, lost index)."""
        found = []
        for path in self._backend.list(layout.PACKS):
            pack_id = layout.name_of(path)
            if pack_id is not None and not self._table.has_pack(pack_id):
                found.append(pack_id)
        return found

    def lookup(self, chunk_id: bytes) -> ChunkLocation | None:
        """The chunk's location, or None if no loaded index object lists it."""
        return self._table.lookup_many([chunk_id])[0]

    def lookup_many(self, chunk_ids: Sequence[bytes]) -> list[ChunkLocation | None]:
        """The location of each chunk, or None: one batched search."""
        return self._table.lookup_many(chunk_ids)

    def contains_many(self, chunk_ids: Sequence[bytes]) -> list[bool]:
        """Whether each chunk is indexed: one batched search (a write group's dedup check)."""
        return self._table.contains_many(chunk_ids)

    def reload(self, *, from_store: bool = False) -> None:
        """Forget everything and load the index objects that exist now (after a gc).

        With `from_store`, every index object is read from the store, none from a cached
        copy: verify, gc and repair judge the objects in the store, which may be damaged
        where an earlier copy is intact.
        """
        self._load(from_store, start_over=True)

    def refresh(self, *, from_store: bool = False) -> None:
        """Load index objects written since the last refresh (by anyone).

        If an index object we loaded is gone, a gc has rewritten the index and may have
        deleted packs: everything is reloaded, so that no stale location survives. New
        objects are taken from the cache where it has them, unless `from_store`.
        """
        self._load(from_store, start_over=False)

    def _load(self, from_store: bool, start_over: bool) -> None:
        with self._lock:
            listed = self._backend.list(layout.INDEX)
            fresh = start_over or not self._loaded or not self._loaded.issubset(listed)
            if fresh:
                # Built aside and swapped in whole: readers search the old table meanwhile
                # (a stale location there fails its pack read, and the reader refreshes).
                table, objects = self._saved_table(set(listed), from_store)
                loaded, damaged = set(objects), {}
            else:
                table, loaded, damaged, objects = (
                    self._table,
                    self._loaded,
                    self.damaged,
                    self.objects,
                )
            if self._cache is not None:
                self._cache.keep_only({n for p in listed if (n := layout.name_of(p)) is not None})
            paths = [p for p in listed if p not in loaded]
            before = table.record_count()
            outcomes = self._pool.map(lambda path: self._load_object(path, from_store), paths)

            def usable() -> Iterator[list[PackTable]]:
                """The tables of each usable object in load order; the others are noted."""
                for path, outcome in zip(paths, outcomes, strict=True):
                    loaded.add(path)
                    if isinstance(outcome, CastoreError):
                        damaged[path] = str(outcome)
                    else:
                        objects[path] = [pack_id for pack_id, _ in outcome]
                        yield outcome

            if fresh and not before:
                # A new empty table is seen by no reader yet: it is built in one go, each
                # object's tables dropped once they are records.
                table = ChunkTable.build(itertools.chain.from_iterable(usable()))
            else:
                for tables in usable():
                    table.add(tables)
            self._table, self._loaded, self.damaged, self.objects = table, loaded, damaged, objects
            if table.record_count() - before > table.record_count() // SAVE_SHARE:
                self._save_table()

    def _saved_table(
        self, listed: set[str], from_store: bool
    ) -> tuple[ChunkTable, dict[str, list[bytes]]]:
        """The table saved in the local cache, if it was built from objects still listed.

        Index objects never change (they are named by their digest), so such a table is
        what loading those objects again would give: only newer objects remain to load.
        """
        saved = None if self._cache is None or from_store else tablefile.load(self._cache.table)
        if saved is None or not listed.issuperset(saved.objects):
            return ChunkTable(), {}
        packs = saved.pack_ids
        objects = {path: [packs[n] for n in numbers] for path, numbers in saved.objects.items()}
        return ChunkTable.restore(saved), objects

    def _save_table(self) -> None:
        """Save the merged table for the next open (under the lock), if it can be trusted.

        With damaged objects it is not saved: a newer castore may read them differently.
        """
        if self._cache is not None and not self.damaged and self._table.record_count():
            tablefile.save(self._cache.table, self._table.saved(self.objects))

    def _load_object(self, path: str, from_store: bool) -> list[PackTable] | CastoreError:
        try:
            return decode_index_tables(self._fetch(path, from_store), f"index object {path}")
        except ObjectNotFoundError:
            return []  # removed since the listing (by gc): nothing to merge
        except CastoreError as exc:  # damaged, or written by a newer castore: reported on use
            return exc

    def _fetch(self, path: str, from_store: bool) -> bytes:
        """The index object's bytes, checked against its name: cached, else read and cached."""
        name = layout.name_of(path)
        if name is None:
            raise IntegrityError(f"index object {path} does not match its name")
        if (
            self._cache is not None
            and not from_store
            and (cached := self._cache.get(name)) is not None
        ):
            return cached
        data = self._backend.read(path)
        if hashlib.sha256(data).digest() != name:
            raise IntegrityError(f"index object {path} does not match its name")
        if self._cache is not None:
            self._cache.add(name, data)
        return data

    def commit(self, packs: list[PackListing]) -> str:
        """Write an index object for packs already stored, then make them visible here."""
        tables = [(pack_id, encode_entries(entries)) for pack_id, entries in packs]
        data = encode_index_tables(tables)
        name = hashlib.sha256(data).digest()
        path = layout.index_path(name)
        self._backend.write(path, data)
        if self._cache is not None:
            self._cache.add(name, data)
        with self._lock:
            self._loaded.add(path)
            self.objects[path] = [pack_id for pack_id, _ in packs]
            self._table.add(tables)
        return path

    def consolidate(self, before_publish: Callable[[], None]) -> list[str]:
        """Merge every usable index object into one, then delete those merged; return them.

        Run under the writer lease, so that no gc runs meanwhile. The objects are read from
        the store (not from cached copies) into a view of their own; damaged ones are left
        for repair. The merged object lists every pack of every object it replaces and is
        written before any of them is deleted, so a reader never misses a chunk: one that
        finds a listed object gone re-lists and reloads (refresh). Objects other writers
        commit meanwhile are in no listing read here, so they stay. `before_publish` (the
        lease check) runs before the merged object is written and before the deletions.
        """
        view = Index(self._backend, self._pool)  # no cache: its objects are about to go
        view.refresh(from_store=True)
        replaced = sorted(view.objects)
        if len(replaced) < 2:
            return []
        pack_ids = dict.fromkeys(pack_id for path in replaced for pack_id in view.objects[path])
        before_publish()
        # Objects that list no pack (or vanished since the listing) need no merged object.
        merged = self.commit([(p, view.packs[p]) for p in pack_ids]) if pack_ids else None
        before_publish()
        deleted = [path for path in replaced if path != merged]
        for path in deleted:
            self._backend.delete(path)
        with self._lock:
            self._loaded.difference_update(deleted)
            for path in deleted:
                self.objects.pop(path, None)
            # The same packs, listed by fewer objects: a saved table would not match them.
            self._save_table()
        return deleted
