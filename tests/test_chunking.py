"""Chunking: cuts depend only on content, never on how the stream arrives."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castore.engine.chunking import Chunker, cut_whole
from castore.errors import IntegrityError, InvalidInputError
from castore.format import wire
from castore.format.config import ChunkerParams, StoreConfig
from tests.conftest import Location
from tests.helpers import pattern, pyfastcdc_accepts, stream_of

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


EDGES = [64, 256, 1024, 1024**2, 4 * 1024**2, 16 * 1024**2]
"""The bounds of FORMAT.md 4 (and pyfastcdc): each is allowed somewhere, its neighbours not."""
SIZES = st.integers(-2, 17 * 1024**2) | st.sampled_from(EDGES).flatmap(
    lambda edge: st.sampled_from([edge - 1, edge, edge + 1])
)


@settings(max_examples=300, deadline=None)
@given(min_size=SIZES, avg_size=SIZES, max_size=SIZES, normalization=st.integers(-1, 4))
def test_chunker_params_admit_exactly_what_pyfastcdc_cuts_with(
    min_size: int, avg_size: int, max_size: int, normalization: int
) -> None:
    """FORMAT.md 4's bounds are pyfastcdc's: valid params always cut, the rest never pass."""
    if pyfastcdc_accepts(min_size, avg_size, max_size, normalization):
        params = ChunkerParams(min_size, avg_size, max_size, normalization)
        assert b"".join(cut_whole(pattern(5000), params)) == pattern(5000)
    else:
        with pytest.raises(InvalidInputError, match=r"chunker .* must"):
            ChunkerParams(min_size, avg_size, max_size, normalization)


@given(value=st.floats() | st.text() | st.booleans() | st.none() | st.just(b"4096"))
def test_chunker_params_are_integers(value: object) -> None:
    for key in ("min_size", "avg_size", "max_size", "normalization"):
        with pytest.raises(InvalidInputError, match=f"chunker {key} must be an integer"):
            ChunkerParams(**{key: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("new_location", ["local", "s3-moto"], indirect=True)
def test_a_store_cuts_with_the_chunker_params_it_was_created_with(location: Location) -> None:
    # max_size 8192 is below the default min_size: the default chunker could not cut so.
    params = ChunkerParams(1024, 4096, 8192)
    data = pattern(300_000)
    with location.init(config=StoreConfig(chunker=params)) as store:
        digest = store.put(data)
    with location.open() as store:
        assert store.config.chunker == params
        sizes = stream_of(store, digest).chunk_sizes
        assert store.get(digest) == data
    assert all(params.min_size <= size <= params.max_size for size in sizes[:-1])
    assert 0 < sizes[-1] <= params.max_size
    assert len(sizes) > len(data) // params.max_size


@settings(max_examples=40, deadline=None)
@given(
    key=st.sampled_from(["min_size", "avg_size", "max_size", "normalization"]),
    value=st.integers(-(2**63), 2**64 - 1),
)
def test_a_stored_config_with_unusable_chunker_params_is_damage(key: str, value: int) -> None:
    raw = msgpack.unpackb(StoreConfig().encode())
    raw["chunker"][key] = value
    stored = {**raw["chunker"]}
    del stored["algorithm"]
    if pyfastcdc_accepts(**stored):
        assert StoreConfig.decode(wire.encode(raw)).chunker == ChunkerParams(**stored)
    else:
        with pytest.raises(IntegrityError, match=r"store config chunker is damaged: .* must"):
            StoreConfig.decode(wire.encode(raw))
