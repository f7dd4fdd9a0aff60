"""Chunking: cuts depend only on content, never on how the stream arrives."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from castore.chunking import Chunker
from castore.config import ChunkerParams
from tests.helpers import pattern

PARAMS = ChunkerParams(min_size=256, avg_size=1024, max_size=4096)


class Trickle(io.RawIOBase):
    """A stream that returns at most `step` bytes per read, like a pipe or a socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._step, len(self._data))
        buffer[:count] = self._data[:count]
        self._data = self._data[count:]
        return count


def _cuts(chunker: Chunker, source) -> list[bytes]:
    return [bytes(chunk) for group in chunker.groups(source) for chunk in group]


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=30_000) | st.integers(0, 60_000).map(pattern),
    block_size=st.integers(1, 20_000),
    step=st.integers(1, 9_000),
)
def test_cuts_do_not_depend_on_blocks_or_read_sizes(
    data: bytes, block_size: int, step: int
) -> None:
    whole = _cuts(Chunker(PARAMS), data)
    assert b"".join(whole) == data
    assert all(PARAMS.min_size <= len(c) <= PARAMS.max_size for c in whole[:-1])
    assert _cuts(Chunker(PARAMS, block_size=block_size), Trickle(data, step)) == whole


def test_an_insertion_changes_only_nearby_chunks() -> None:
    data = pattern(200_000)
    chunker = Chunker(PARAMS)
    before = set(_cuts(chunker, data))
    after = _cuts(chunker, data[:100_000] + b"inserted" + data[100_000:])
    changed = [c for c in after if c not in before]
    assert len(changed) <= 3
    assert len(after) > 50


def test_empty_stream_has_no_chunks() -> None:
    assert _cuts(Chunker(PARAMS), b"") == []
    assert _cuts(Chunker(PARAMS), io.BytesIO(b"")) == []
