"""Chunking: cuts depend only on content, never on how the stream arrives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from castore.engine.chunking import Chunker
from castore.format.config import ChunkerParams
from tests.helpers import pattern

PARAMS = ChunkerParams(min_size=256, avg_size=1024, max_size=4096)


def _cuts(data: bytes, block_size: int = 1 << 20, step: int | None = None) -> list[bytes]:
    """The chunks of `data` written in pieces of `step` bytes into a chunker."""
    cuts: list[bytes] = []
    chunker = Chunker(PARAMS, lambda group: cuts.extend(bytes(c) for c in group), block_size)
    step = step or max(len(data), 1)
    for start in range(0, len(data), step):
        chunker.write(data[start : start + step])
    chunker.finish()
    return cuts


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=30_000) | st.integers(0, 60_000).map(pattern),
    block_size=st.integers(1, 20_000),
    step=st.integers(1, 9_000),
)
def test_cuts_do_not_depend_on_blocks_or_read_sizes(
    data: bytes, block_size: int, step: int
) -> None:
    whole = _cuts(data)
    assert b"".join(whole) == data
    assert all(PARAMS.min_size <= len(c) <= PARAMS.max_size for c in whole[:-1])
    assert _cuts(data, block_size, step) == whole


def test_an_insertion_changes_only_nearby_chunks() -> None:
    data = pattern(200_000)
    before = set(_cuts(data))
    after = _cuts(data[:100_000] + b"inserted" + data[100_000:])
    changed = [c for c in after if c not in before]
    assert len(changed) <= 3
    assert len(after) > 50


def test_empty_stream_has_no_chunks() -> None:
    assert _cuts(b"") == []
