"""Every entry of every indexed pack as sorted fixed-width records: ~55 B of RAM per chunk.

A record is `>32sIQIIB`: chunk id, pack number (into a table of pack ids, numbered in
load order), offset, stored length, raw length, codec. Big-endian, so that the order of
the record bytes is the order of (chunk id, pack number, offset): the first record of a
chunk id is its first-loaded copy, and sorting needs no key function.

The sorted records live in one immutable `bytes` (or a memory-mapped saved table). A
directory maps the top bits of an id to the records that start with them (2 to 4 records
a bucket, 1 to 2 B a chunk), so a lookup is one `bytes.find` over a few records, in C.
New records go to a small recent part (a dict) and are merged into the sorted part when
it has grown by 1/RECENT_SHARE. Readers take no lock: each search reads one `_State`, which `add`
replaces whole (its recent part only ever grows in place).
"""

from __future__ import annotations

import mmap
import struct
import sys
import threading
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, groupby, repeat
from operator import add, eq, mod, mul, or_, rshift

from castore.engine.tablefile import TableFile
from castore.format.index import PackTable
from castore.format.packs import ENTRY, PackEntry

RECORD = struct.Struct(">32sIQIIB")
BUCKET_RECORDS = 4
"""The directory has a bucket per BUCKET_RECORDS / 2 to BUCKET_RECORDS sorted records."""
MIN_RECENT = 1 << 14
"""Recent records are never merged while fewer than this (a small table merges rarely)."""
BATCH_PACKS = 256
"""Packs turned into records at a time (a few MiB of entries)."""
DISTINCT_BLOCK = 1 << 16
"""Records whose ids are compared at a time when distinct ids are counted."""
RECENT_SHARE = 32
"""Recent records are merged once they exceed 1/RECENT_SHARE of the sorted ones."""

_W = RECORD.size


def _byte_sources() -> list[tuple[int, int]]:
    """(record byte, footer entry byte) pairs: the id is copied, integers are reversed."""
    pairs = [(at, at) for at in range(32)]
    record_at = 36  # after the pack number
    for entry_at, size in ((32, 8), (40, 4), (44, 4), (48, 1)):
        pairs += [(record_at + i, entry_at + size - 1 - i) for i in range(size)]
        record_at += size
    return pairs


_BYTE_SOURCES = _byte_sources()


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    """Where a chunk's stored bytes are."""

    pack_id: bytes
    entry: PackEntry


Records = bytes | mmap.mmap
"""The sorted part: in memory, or mapped from the local cache (engine/tablefile.py)."""


@dataclass(frozen=True, slots=True)
class _State:
    """One generation of the table: what a reader searches."""

    records: Records
    directory: array[int]
    """directory[b]: how many sorted records have an id whose top bits are below b."""
    shift: int
    """An id's bucket is its first 4 bytes, big-endian, shifted right by this."""
    first: dict[bytes, bytes]
    """The first-loaded recent record of each chunk id that has recent records."""
    recent: list[bytes]
    """Every recent record, in load order."""
    packs: int
    """How many packs (the first of the pack table) these records are of."""


def _column(records: Records | bytes, at: int, size: int = _W) -> array[int]:
    """The big-endian 4-byte unsigned field at `at` of every `size`-byte record."""
    column = bytearray(4 * (len(records) // size))
    for byte in range(4):
        column[byte::4] = records[at + byte :: size]
    numbers = array("I", bytes(column))
    if sys.byteorder == "little":
        numbers.byteswap()
    return numbers


def _shift_for(count: int) -> int:
    return 32 - min(32, (count // BUCKET_RECORDS).bit_length())


def _directory(records: Records, shift: int) -> array[int]:
    """The directory of sorted records, counted in one pass (at each doubling only)."""
    counts = Counter(map(rshift, _column(records, 0), repeat(shift)))
    directory = array("I", [0])
    directory.extend(accumulate(counts[b] for b in range(1 << (32 - shift))))
    return directory


def _shifted(directory: array[int], buckets: list[int]) -> array[int]:
    """The directory once records of the (sorted) `buckets` are merged in."""
    shifted = array("I")
    taken = added = 0
    for bucket, members in groupby(buckets):
        # Entries up to `bucket` count the merged records of lower buckets only.
        shifted.extend(map(add, directory[taken : bucket + 1], repeat(added)))
        added += sum(1 for _ in members)
        taken = bucket + 1
    shifted.extend(map(add, directory[taken:], repeat(added)))
    return shifted


def _find(records: Records, directory: array[int], shift: int, chunk_id: bytes) -> int:
    """Where the first record of `chunk_id` (32 bytes) starts in `records`, or -1."""
    bucket = int.from_bytes(chunk_id[:4], "big") >> shift
    end = directory[bucket + 1] * _W
    return _aligned(records, chunk_id, records.find(chunk_id, directory[bucket] * _W, end), end)


def _aligned(records: Records, chunk_id: bytes, at: int, end: int) -> int:
    """The first match at a record's start from `at` on (others are bytes of other fields)."""
    while at > 0 and at % _W:
        at = records.find(chunk_id, at + 1, end)
    return at


def _find_all(state: _State, chunk_ids: list[bytes]) -> list[int]:
    """_find for many ids of 32 bytes at once, as pipelines of C calls (no bytecode per id)."""
    records, directory = state.records, state.directory
    tops = _column(b"".join(chunk_ids), 0, 32)
    buckets = list(map(rshift, tops, repeat(state.shift)))
    starts = map(mul, map(directory.__getitem__, buckets), repeat(_W))
    ends = list(map(mul, map(directory.__getitem__, map(add, buckets, repeat(1))), repeat(_W)))
    found = list(map(records.find, chunk_ids, starts, ends))
    if any(map(mod, map(max, found, repeat(0)), repeat(_W))):  # rare: a match off a start
        found = [
            _aligned(records, chunk_id, at, end)
            for chunk_id, at, end in zip(chunk_ids, found, ends, strict=True)
        ]
    return found


def _merge(state: _State) -> tuple[bytes, array[int], int]:
    """The sorted part with every recent record merged in: one copy of each byte."""
    records, directory, shift = state.records, state.directory, state.shift
    recent = sorted(state.recent)
    view = memoryview(records)
    pieces: list[bytes | memoryview] = []
    buckets = []
    taken = 0
    for record in recent:
        bucket = int.from_bytes(record[:4], "big") >> shift
        buckets.append(bucket)
        low, high = directory[bucket], directory[bucket + 1]
        while low < high:  # the first sorted record not below this one
            middle = (low + high) // 2
            if records[middle * _W : (middle + 1) * _W] < record:
                low = middle + 1
            else:
                high = middle
        pieces += (view[taken : low * _W], record)
        taken = low * _W
    pieces.append(view[taken:])
    merged = b"".join(pieces)
    new_shift = _shift_for(len(merged) // _W)
    if new_shift != shift:
        return merged, _directory(merged, new_shift), new_shift
    return merged, _shifted(directory, buckets), shift


def _distinct(records: Records) -> int:
    """How many distinct ids sorted records hold: adjacent equal ids are compared in C."""
    count = len(records) // _W
    repeated = 0
    for start in range(0, count, DISTINCT_BLOCK):
        stop = min(start + DISTINCT_BLOCK + 1, count)  # one past: each adjacent pair once
        ids = list(_slices(records, range(start * _W, stop * _W, _W), 32))
        repeated += sum(map(eq, ids, ids[1:]))
    return count - repeated


def _slices(data: Records | bytes, starts: range, size: int) -> Iterator[bytes]:
    """data[start : start + size] for each start, as one pipeline of C calls."""
    return map(data.__getitem__, map(slice, starts, map(add, starts, repeat(size))))


def _records_of(tables: Sequence[tuple[int, bytes]]) -> list[bytes]:
    """The records of some packs' entry tables, in load order, made by a few C-level copies."""
    entries = b"".join(table for _, table in tables)
    count = len(entries) // ENTRY.size
    numbers = b"".join(struct.pack(">I", number) * (len(t) // ENTRY.size) for number, t in tables)
    out = bytearray(count * _W)
    for byte in range(4):
        out[32 + byte :: _W] = numbers[byte::4]
    for record_at, entry_at in _BYTE_SOURCES:
        out[record_at::_W] = entries[entry_at :: ENTRY.size]
    return list(_slices(bytes(out), range(0, len(out), _W), _W))


class ChunkTable:
    """Chunk id -> location over every entry of every pack added, duplicates included.

    `add` is for one thread at a time (the Index's lock); lookups run in any thread.
    """

    def __init__(self, min_recent: int = MIN_RECENT) -> None:
        self._min_recent = min_recent  # recent records merged at the least (tests: small)
        self._state = _State(b"", array("I", [0, 0]), 32, {}, [], 0)
        self._pack_ids: list[bytes] = []
        self._numbers: dict[bytes, int] = {}
        self._distinct = 0
        self._grouping: tuple[_State, PackEntries] | None = None
        self._grouping_lock = threading.Lock()

    def __len__(self) -> int:
        """How many distinct chunk ids the table holds."""
        return self._distinct

    def __contains__(self, chunk_id: object) -> bool:
        return isinstance(chunk_id, bytes) and self.contains_many([chunk_id])[0]

    def record_count(self) -> int:
        """How many records (entries of packs) the table holds, duplicates included."""
        state = self._state
        return len(state.records) // _W + len(state.recent)

    def has_pack(self, pack_id: bytes) -> bool:
        """Whether the pack was added."""
        return pack_id in self._numbers

    @classmethod
    def build(cls, tables: Iterable[PackTable]) -> ChunkTable:
        """A table of many packs at once (a fresh load): one sort, no merges.

        Its records are sorted as a list of bytes (about 100 B a record until they are
        joined), which is several times faster than merging them in object by object.
        """
        table = cls()
        records = [record for batch in table._numbered(tables) for record in _records_of(batch)]
        records.sort()
        joined = b"".join(records)
        del records
        shift = _shift_for(len(joined) // _W)
        table._distinct = _distinct(joined)
        table._state = _State(
            joined, _directory(joined, shift), shift, {}, [], len(table._pack_ids)
        )
        return table

    def _numbered(self, tables: Iterable[PackTable]) -> Iterator[list[tuple[int, bytes]]]:
        """Number the packs not added before, a batch of tables at a time.

        A pack id is the SHA-256 of its entry table, so a pack listed again by another
        index object brings nothing new.
        """
        batch: list[tuple[int, bytes]] = []
        for pack_id, table in tables:
            if pack_id not in self._numbers:
                self._numbers[pack_id] = len(self._pack_ids)
                self._pack_ids.append(pack_id)
                batch.append((self._numbers[pack_id], table))
                if len(batch) == BATCH_PACKS:
                    yield batch
                    batch = []
        yield batch

    def add(self, tables: Iterable[PackTable]) -> None:
        """Add packs (id and validated entry table); a pack added before is skipped."""
        state = self._state
        new = [record for batch in self._numbered(tables) for record in _records_of(batch)]
        for record in new:
            chunk_id = record[:32]
            if chunk_id not in state.first:
                if _find(state.records, state.directory, state.shift, chunk_id) < 0:
                    self._distinct += 1
                state.first[chunk_id] = record
            state.recent.append(record)
        if len(state.recent) > max(self._min_recent, len(state.records) // _W // RECENT_SHARE):
            records, directory, shift = _merge(state)
            state = _State(records, directory, shift, {}, [], len(self._pack_ids))
        else:
            state = _State(
                state.records,
                state.directory,
                state.shift,
                state.first,
                state.recent,
                len(self._pack_ids),
            )
        self._state = state

    @classmethod
    def restore(cls, saved: TableFile) -> ChunkTable:
        """A table whose sorted part is a saved one (its records may stay memory-mapped)."""
        table = cls()
        table._pack_ids = list(saved.pack_ids)
        table._numbers = {pack_id: number for number, pack_id in enumerate(saved.pack_ids)}
        table._distinct = saved.distinct
        table._state = _State(
            saved.records, saved.directory, saved.shift, {}, [], len(saved.pack_ids)
        )
        return table

    def saved(self, objects: dict[str, list[bytes]]) -> TableFile:
        """The table with its recent records merged in, as tablefile saves it."""
        state = self._state
        if state.recent:
            records, directory, shift = _merge(state)
            state = _State(records, directory, shift, {}, [], state.packs)
            self._state = state
        numbers = self._numbers
        return TableFile(
            state.records,
            state.directory,
            state.shift,
            self._distinct,
            self._pack_ids[: state.packs],
            {path: [numbers[p] for p in pack_ids] for path, pack_ids in objects.items()},
        )

    def lookup_many(self, chunk_ids: Sequence[bytes]) -> list[ChunkLocation | None]:
        """The first-loaded location of each chunk, or None."""
        state = self._state
        records, first, pack_ids = state.records, state.first, self._pack_ids
        return [
            _location(records[at : at + _W], pack_ids)
            if at >= 0
            else (None if (record := first.get(chunk_id)) is None else _location(record, pack_ids))
            for chunk_id, at in zip(chunk_ids, self._find_all(state, chunk_ids), strict=True)
        ]

    def contains_many(self, chunk_ids: Sequence[bytes]) -> list[bool]:
        """Whether each chunk is in the table: a batched lookup that builds no location."""
        state = self._state
        found = self._find_all(state, chunk_ids)
        return list(map(or_, map((-1).__lt__, found), map(state.first.__contains__, chunk_ids)))

    @staticmethod
    def _find_all(state: _State, chunk_ids: Sequence[bytes]) -> list[int]:
        """Where each id's first sorted record starts, or -1 (also for ids not 32 bytes)."""
        if all(len(chunk_id) == 32 for chunk_id in chunk_ids):
            return _find_all(state, list(chunk_ids))
        return [-1 if len(c) != 32 else _find_all(state, [c])[0] for c in chunk_ids]

    def packs(self) -> PackEntries:
        """Every added pack with all its entries (a view built on first use per state)."""
        with self._grouping_lock:
            state = self._state
            if self._grouping is None or self._grouping[0] is not state:
                self._grouping = (state, PackEntries(state, self._pack_ids[: state.packs]))
            return self._grouping[1]


def _location(record: bytes, pack_ids: list[bytes]) -> ChunkLocation:
    chunk_id, number, offset, stored_len, raw_len, codec = RECORD.unpack(record)
    return ChunkLocation(pack_ids[number], PackEntry(chunk_id, offset, stored_len, raw_len, codec))


class PackEntries(Mapping[bytes, list[PackEntry]]):
    """Pack id -> its entries in footer order, derived from the records of one state.

    Each entry of every pack is here, also a chunk that other packs hold too (gc keeps
    every copy of a needed chunk). Entries are built when a pack is asked for.
    """

    def __init__(self, state: _State, pack_ids: list[bytes]) -> None:
        self._records = state.records
        self._recent = state.recent[:]  # the state's recent part grows in place
        self._pack_ids = pack_ids
        self._numbers = {pack_id: number for number, pack_id in enumerate(pack_ids)}
        self._members: list[array[int]] | None = None

    def __len__(self) -> int:
        return len(self._pack_ids)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._pack_ids)

    def __contains__(self, pack_id: object) -> bool:
        return pack_id in self._numbers

    def __getitem__(self, pack_id: bytes) -> list[PackEntry]:
        number = self._numbers[pack_id]
        records, recent = self._records, self._recent
        sorted_count = len(records) // _W
        entries = []
        for position in self._group()[number]:
            if position < sorted_count:
                record = records[position * _W : (position + 1) * _W]
            else:
                record = recent[position - sorted_count]
            chunk_id, _, offset, stored_len, raw_len, codec = RECORD.unpack(record)
            entries.append(PackEntry(chunk_id, offset, stored_len, raw_len, codec))
        entries.sort(key=lambda entry: entry.offset)  # footer order: offsets ascend
        return entries

    def _group(self) -> list[array[int]]:
        """Record positions of each pack: one pass over the pack numbers of every record."""
        if self._members is None:
            members = [array("I") for _ in self._pack_ids]
            for position, number in enumerate(self._pack_numbers()):
                members[number].append(position)
            self._members = members
        return self._members

    def _pack_numbers(self) -> array[int]:
        """The pack number of every record, sorted part then recent ones."""
        numbers = _column(self._records, 32)
        numbers.extend(RECORD.unpack(record)[1] for record in self._recent)
        return numbers
