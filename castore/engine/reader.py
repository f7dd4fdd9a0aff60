"""The read path: fetch only the byte ranges a stream needs, verify every chunk, stream out."""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

from castore.backend import Backend
from castore.engine.cache import LocalCache
from castore.engine.index import Index
from castore.errors import IntegrityError, ObjectNotFoundError
from castore.format import layout
from castore.format.compression import decode_chunk
from castore.format.packs import PackEntry
from castore.format.streams import StreamDescriptor

MAX_RANGE = 8 * 1024 * 1024
"""Largest single ranged read, in stored and in decoded bytes; adjacent chunks of one pack
are coalesced up to this."""
MAX_GAP = 256 * 1024
"""Unneeded bytes between two chunks of one pack that are cheaper to read than skip."""
READ_AHEAD = 64 * 1024 * 1024
"""Bytes fetched ahead of the consumer, counted as each range's `cost`."""
CHUNK_OVERHEAD = 256
"""Bytes a chunk costs in flight besides its data (its entry, its bytes object, its
place in lists): what keeps a store of one-byte chunks from costing nothing to read."""
MIN_RANGE_COST = 64 * 1024
"""What any range counts for in the read-ahead: at most READ_AHEAD / MIN_RANGE_COST
requests are ever in flight or waiting."""


@dataclass
class _Range:
    pack_id: bytes
    start: int
    end: int
    entries: list[PackEntry] = field(default_factory=list)
    raw: int = 0
    """The decoded bytes of its chunks: what the range costs once read, however well it
    compressed (128 KiB of stored zeros decode to gigabytes)."""

    def add(self, entry: PackEntry) -> None:
        """Extend the range to `entry`, which follows it in the pack or lies in it."""
        self.end = max(self.end, entry.offset + entry.stored_len)
        self.entries.append(entry)
        self.raw += entry.raw_len

    @property
    def weight(self) -> int:
        """What its chunks hold once decoded, with their overhead."""
        return self.raw + CHUNK_OVERHEAD * len(self.entries)

    @property
    def cost(self) -> int:
        """Memory the range holds while it is in flight (at least MIN_RANGE_COST)."""
        return max(self.end - self.start, self.weight, MIN_RANGE_COST)


class PackMissingError(IntegrityError):
    """A pack the index lists is gone: damage, or a gc moved its chunks since we looked."""


def _plan(descriptor: StreamDescriptor, index: Index, start: int = 0) -> Iterator[_Range]:
    """Group the stream's chunks, from chunk number `start` on, into ranged reads, each
    yielded once complete: a plan costs memory for the ranges in flight, not for the
    whole stream. A chunk repeated in a row joins the range already holding it."""
    last: _Range | None = None
    refreshed = False
    for chunk_id, size in itertools.islice(descriptor.chunks(), start, None):
        location = index.lookup(chunk_id)
        if location is None and not refreshed:
            index.refresh()
            refreshed = True
            location = index.lookup(chunk_id)
        if location is None:
            hint = f" (damaged index objects: {', '.join(index.damaged)})" if index.damaged else ""
            raise IntegrityError(
                f"chunk {chunk_id.hex()} of stream sha256:{descriptor.sha256.hex()} is in no "
                f"index object{hint}: the store is damaged; run 'castore repair'"
            )
        entry = location.entry
        if entry.raw_len != size:
            raise IntegrityError(
                f"chunk {chunk_id.hex()} is {size} bytes in the stream but {entry.raw_len} in "
                f"pack {location.pack_id.hex()}"
            )
        if (
            last is not None
            and last.pack_id == location.pack_id
            and last.start <= entry.offset <= last.end + MAX_GAP
            and max(last.end, entry.offset + entry.stored_len) - last.start <= MAX_RANGE
            and last.weight + entry.raw_len + CHUNK_OVERHEAD <= MAX_RANGE
            and (entry.offset >= last.end or entry == last.entries[-1])
        ):
            last.add(entry)
        else:
            if last is not None:
                yield last
            last = _Range(location.pack_id, entry.offset, entry.offset)
            last.add(entry)
    if last is not None:
        yield last


def _fetch(backend: Backend, piece: _Range, cache: LocalCache | None) -> list[bytes | memoryview]:
    """One range's chunks, each checked against its id: from the cache if it has them all."""
    if cache is not None:
        cached = [cache.chunk(entry.chunk_id) for entry in piece.entries]
        if all(chunk is not None for chunk in cached):
            cache.hits += len(cached)
            return cached  # type: ignore[return-value]
    chunks = _read_range(backend, piece)
    if cache is not None:
        for entry, chunk in zip(piece.entries, chunks, strict=True):
            cache.add_chunk(entry.chunk_id, chunk)
    return chunks


def _read_range(backend: Backend, piece: _Range) -> list[bytes | memoryview]:
    """Read one range of a pack and decode and verify its chunks."""
    pack = f"pack {piece.pack_id.hex()}"
    try:
        data = backend.read_range(
            layout.pack_path(piece.pack_id), piece.start, piece.end - piece.start
        )
    except ObjectNotFoundError as exc:
        raise PackMissingError(
            f"{pack} is missing; it holds chunk {piece.entries[0].chunk_id.hex()}"
        ) from exc
    if len(data) != piece.end - piece.start:
        raise IntegrityError(
            f"{pack} is truncated: chunk {piece.entries[-1].chunk_id.hex()} is cut off"
        )
    view = memoryview(data)
    chunks: list[bytes | memoryview] = []
    for number, entry in enumerate(piece.entries):
        if number and entry == piece.entries[number - 1]:
            chunks.append(chunks[-1])  # a chunk repeated in a row is decoded once
            continue
        where = f"chunk {entry.chunk_id.hex()} in {pack}"
        stored = view[entry.offset - piece.start : entry.offset - piece.start + entry.stored_len]
        raw = decode_chunk(entry.codec, stored, entry.raw_len, where)
        if hashlib.sha256(raw).digest() != entry.chunk_id:
            raise IntegrityError(f"{where} is corrupt: its bytes do not match its SHA-256")
        chunks.append(raw)
    return chunks


def iter_stream(
    descriptor: StreamDescriptor,
    *,
    backend: Backend,
    index: Index,
    pool: Executor,
    cache: LocalCache | None = None,
    authenticated: bool = False,
    first: int = 0,
) -> Generator[bytes | memoryview, None, None]:
    """Yield the stream's verified chunks in order, from chunk number `first` on,
    fetching ahead in parallel.

    Each chunk is checked against its id before it is yielded. Unless the chunk list is
    `authenticated` (it comes from a manifest checked against its version digest), the
    whole-stream digest is checked too, after the last chunk, so that a consumer sees an
    IntegrityError instead of a clean end of stream; a stream that is not authenticated
    can therefore only be read from its start.
    """
    if first and not authenticated:
        raise ValueError("only an authenticated chunk list can be read from the middle")
    whole = None if authenticated else hashlib.sha256()
    ranges = _plan(descriptor, index, start=first)
    waiting = next(ranges, None)
    in_flight: deque[tuple[Future[list[bytes | memoryview]], int]] = deque()
    in_flight_bytes = 0
    yielded = 0
    reloaded = False
    try:
        while waiting is not None or in_flight:
            while waiting is not None and (not in_flight or in_flight_bytes < READ_AHEAD):
                in_flight.append((pool.submit(_fetch, backend, waiting, cache), waiting.cost))
                in_flight_bytes += waiting.cost
                waiting = next(ranges, None)
            future, length = in_flight.popleft()
            in_flight_bytes -= length
            try:
                chunks = future.result()
            except PackMissingError:
                if reloaded:
                    raise
                reloaded = True  # a gc may have repacked: look again, once
                for pending, _ in in_flight:
                    pending.cancel()
                in_flight.clear()
                in_flight_bytes = 0
                index.reload()
                ranges = _plan(descriptor, index, start=first + yielded)
                waiting = next(ranges, None)
                continue
            for chunk in chunks:
                if whole is not None:
                    whole.update(chunk)
                yielded += 1
                yield chunk
    finally:
        for future, _ in in_flight:
            future.cancel()
    if whole is not None and whole.digest() != descriptor.sha256:
        raise IntegrityError(
            f"stream sha256:{descriptor.sha256.hex()} read back as sha256:{whole.hexdigest()}: "
            "its chunk list is damaged"
        )


class VerifiedStream(io.BufferedReader):
    """A buffered, verified stream that knows its total size.

    A read returns only bytes of chunks already checked against their ids. The stream as a
    whole is proven only at its end: where the whole-stream check applies, the read that
    reaches the end raises IntegrityError instead of returning b"" if the stream's SHA-256
    is wrong. Until a read has returned b"", what was read is unconfirmed; after any
    failure every further read fails too.
    """

    def __init__(self, raw: io.RawIOBase, size: int) -> None:
        super().__init__(raw)
        self.size = size
        """Total bytes of the stream."""


class StreamReader(io.RawIOBase):
    """A readable file object over a verified stream (wrap in io.BufferedReader to peek)."""

    def __init__(self, chunks: Iterator[bytes | memoryview], size: int) -> None:
        super().__init__()
        self._chunks = chunks
        self._current = memoryview(b"")
        self._failure: BaseException | None = None
        self.size = size
        """Total bytes of the stream."""

    def readable(self) -> bool:
        """Always True."""
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Fill `buffer` from the stream; 0 only at its verified end.

        Once the chunks failed (a check, the storage, an interrupt), every later call
        raises that failure again: the spent chunk iterator would otherwise read as an end.
        """
        while not self._current:
            if self._failure is not None:
                raise self._failure
            try:
                self._current = memoryview(next(self._chunks)).cast("B")
            except StopIteration:
                return 0
            except BaseException as exc:
                self._failure = exc
                raise
        target = memoryview(buffer).cast("B")
        count = min(len(target), len(self._current))
        target[:count] = self._current[:count]
        self._current = self._current[count:]
        return count

    def close(self) -> None:
        """Stop fetching."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()


class _Seekable(io.RawIOBase):
    """A readable file of a known size with a position that reads start from."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        """Total bytes of the stream."""
        self._position = 0

    def readable(self) -> bool:
        """Always True."""
        return True

    def seekable(self) -> bool:
        """Always True."""
        return True

    def tell(self) -> int:
        """The position of the next read."""
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position (SEEK_SET, SEEK_CUR or SEEK_END); nothing is fetched until
        the next read."""
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}
        if whence not in bases:
            raise ValueError(
                f"invalid whence ({whence}): a stream seeks from its start, its position or its end"
            )
        if bases[whence] + offset < 0:
            raise ValueError(f"negative seek position {bases[whence] + offset}")
        self._position = bases[whence] + offset
        return self._position


class SeekableStreamReader(_Seekable):
    """A seekable readable file over a stream whose chunk list is authenticated: a read
    after a seek fetches from the chunk holding the new position, and reading on streams
    ahead as a sequential reader does. Every chunk is verified before any of its bytes
    are returned, so every read is proven, wherever it starts."""

    def __init__(
        self, open_from: Callable[[int], Iterator[bytes | memoryview]], chunk_sizes: tuple[int, ...]
    ) -> None:
        self._starts = list(itertools.accumulate(chunk_sizes, initial=0))
        super().__init__(self._starts[-1])
        self._open_from = open_from
        self._chunks: Iterator[bytes | memoryview] | None = None
        self._number = -1
        """The number of the chunk held in `_current` (-1: none)."""
        self._current = memoryview(b"")
        self._failure: BaseException | None = None

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Fill `buffer` from the position on, from verified chunks; 0 at the end."""
        if self._failure is not None:
            raise self._failure
        if self._position >= self.size:
            return 0
        number = bisect.bisect_right(self._starts, self._position) - 1
        if number != self._number:
            try:
                self._current = memoryview(self._chunk(number)).cast("B")
            except BaseException as exc:
                self._failure = exc
                raise
            self._number = number
        offset = self._position - self._starts[number]
        target = memoryview(buffer).cast("B")
        count = min(len(target), len(self._current) - offset)
        target[:count] = self._current[offset : offset + count]
        self._position += count
        return count

    def _chunk(self, number: int) -> bytes | memoryview:
        """Chunk `number`: the next one of the open iterator, or the first of a new one."""
        if self._chunks is None or number != self._number + 1:
            self._stop()
            self._chunks = self._open_from(number)
        return next(self._chunks)

    def _stop(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        self._chunks = None

    def close(self) -> None:
        """Stop fetching."""
        self._stop()
        super().close()


class SparseFileReader(_Seekable):
    """A sparse file of a snapshot, seekable: its data extents read from the stored bytes
    (the extents one after the other), zeros in the holes between them."""

    def __init__(
        self, stored: SeekableStreamReader, extents: tuple[tuple[int, int], ...], size: int
    ) -> None:
        super().__init__(size)
        self._stored = stored
        self._extents = extents
        self._offsets = [offset for offset, _ in extents]
        self._stored_starts = list(itertools.accumulate((n for _, n in extents), initial=0))

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Fill `buffer` from the position on: extent bytes, or zeros in a hole."""
        position = self._position
        if position >= self.size:
            return 0
        target = memoryview(buffer).cast("B")
        number = bisect.bisect_right(self._offsets, position) - 1
        if number >= 0 and position < sum(self._extents[number]):
            offset, length = self._extents[number]
            self._stored.seek(self._stored_starts[number] + position - offset)
            count = self._stored.readinto(target[: offset + length - position])
        else:
            following = number + 1
            end = self._offsets[following] if following < len(self._offsets) else self.size
            count = min(len(target), end - position)
            target[:count] = bytes(count)
        self._position += count
        return count

    def close(self) -> None:
        """Stop fetching."""
        self._stored.close()
        super().close()
