"""The compact chunk index against a plain dict model, and the Index on it under threads."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import castore
from castore.engine.chunktable import ChunkLocation, ChunkTable
from castore.engine.index import Index
from castore.format.compression import Codec
from castore.format.packs import HEADER, PackEntry, encode_entries

PackListing = tuple[bytes, list[PackEntry]]

# Ids from a tiny alphabet share long prefixes and fill buckets, and their bytes also
# occur inside other fields and across records: misaligned matches that must be skipped.
ids = st.binary(min_size=32, max_size=32) | st.lists(
    st.sampled_from([0, 1]), min_size=32, max_size=32
).map(bytes)
packs = st.lists(
    st.tuples(ids, st.integers(1, 3), st.integers(1, 70_000), st.sampled_from(list(Codec))),
    max_size=12,
)


def _pack(fields: list[tuple[bytes, int, int, Codec]]) -> PackListing:
    entries, offset = [], len(HEADER)
    for chunk_id, stored_len, raw_len, codec in fields:
        entries.append(PackEntry(chunk_id, offset, stored_len, raw_len, int(codec)))
        offset += stored_len
    return hashlib.sha256(encode_entries(entries)).digest(), entries


class _Model:
    """What the dict-based index held: the first-loaded location, every pack's entries."""

    def __init__(self) -> None:
        self.first: dict[bytes, ChunkLocation] = {}
        self.packs: dict[bytes, list[PackEntry]] = {}

    def add(self, listings: list[PackListing]) -> None:
        for pack_id, entries in listings:
            if pack_id in self.packs:
                continue
            self.packs[pack_id] = entries
            for entry in entries:
                self.first.setdefault(entry.chunk_id, ChunkLocation(pack_id, entry))


def _check(table: ChunkTable, model: _Model, absent: list[bytes]) -> None:
    present = list(model.first)
    queries = present + [a for a in absent if a not in model.first] + [b"short", b""]
    expected = [model.first.get(q) for q in queries]
    assert table.lookup_many(queries) == expected
    assert table.contains_many(queries) == [e is not None for e in expected]
    assert [q in table for q in queries] == [e is not None for e in expected]
    assert [table.lookup_many([q])[0] for q in queries] == expected
    assert len(table) == len(model.first)
    assert dict(table.packs()) == model.packs
    assert list(table.packs()) == list(model.packs)


@settings(max_examples=150, deadline=None)
@given(
    objects=st.lists(st.lists(packs, max_size=4), max_size=8),
    again=st.lists(st.integers(0, 40), max_size=4),
    absent=st.lists(ids, max_size=10),
    min_recent=st.integers(0, 20),
)
def test_the_table_answers_as_a_dict_of_first_loaded_locations(
    objects: list[list[list[tuple[bytes, int, int, Codec]]]],
    again: list[int],
    absent: list[bytes],
    min_recent: int,
) -> None:
    table, model = ChunkTable(min_recent=min_recent), _Model()
    seen: list[PackListing] = []
    for listing in objects:
        built = [_pack(fields) for fields in listing]
        # Some objects list a pack that an earlier object listed (consolidation, gc).
        built += [seen[n % len(seen)] for n in again if seen]
        seen += built
        table.add((pack_id, encode_entries(entries)) for pack_id, entries in built)
        model.add(built)
        _check(table, model, absent)
    # A fresh load builds the same table from every object at once.
    _check(ChunkTable.build((p, encode_entries(e)) for p, e in seen), model, absent)


def test_a_chunk_in_several_packs_keeps_every_copy() -> None:
    chunk = bytes(range(32))
    first, second = _pack([(chunk, 5, 9, Codec.ZSTD)]), _pack([(chunk, 7, 9, Codec.RAW)])
    table = ChunkTable(min_recent=0)
    table.add((p, encode_entries(e)) for p, e in [first, second])
    assert table.lookup_many([chunk]) == [ChunkLocation(first[0], first[1][0])]
    assert dict(table.packs()) == dict([first, second])
    assert len(table) == 1 and table.record_count() == 2


def _commit(index: Index, seed: int, count: int) -> str:
    chunk_ids = [hashlib.sha256(b"%d %d" % (seed, n)).digest() for n in range(count)]
    return index.commit([_pack([(chunk_id, 10, 20, Codec.RAW) for chunk_id in chunk_ids])])


def test_an_index_reloads_when_a_listed_object_is_gone(tmp_path: Path) -> None:
    with castore.init(str(tmp_path / "s")) as store:
        index = store.repository.index
        kept, gone = _commit(index, 1, 50), _commit(index, 2, 50)
        kept_ids = [e.chunk_id for p in index.objects[kept] for e in index.packs[p]]
        gone_ids = [e.chunk_id for p in index.objects[gone] for e in index.packs[p]]
        store.repository.backend.delete(gone)
        index.refresh()
        assert all(index.contains_many(kept_ids)) and not any(index.contains_many(gone_ids))
        assert list(index.objects) == [kept]


def test_lookups_during_refreshes_always_find_what_was_loaded(tmp_path: Path) -> None:
    with castore.init(str(tmp_path / "s")) as store:
        index = store.repository.index
        old = _commit(index, 0, 3_000)
        wanted = [e.chunk_id for p in index.objects[old] for e in index.packs[p]]
        started, stop = threading.Barrier(3), threading.Event()
        failures: list[int] = []

        def read() -> None:
            started.wait()
            while not stop.is_set():
                found = index.contains_many(wanted)
                if not all(found):
                    failures.append(found.count(False))
                if index.lookup(wanted[-1]) is None:
                    failures.append(1)

        readers = [threading.Thread(target=read) for _ in range(2)]
        for reader in readers:
            reader.start()
        started.wait()
        for round_ in range(1, 6):
            # A writer elsewhere adds objects (merged into the sorted part), then one
            # listed object disappears: a refresh reloads everything from scratch.
            other = castore.open(str(tmp_path / "s"))
            gone = _commit(other.repository.index, round_, 20_000)
            other.close()
            index.refresh()
            store.repository.backend.delete(gone)
            index.refresh()
        stop.set()
        for reader in readers:
            reader.join()
        assert failures == []
        assert len(index) == len(wanted)
