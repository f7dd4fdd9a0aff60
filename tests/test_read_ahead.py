"""The read-ahead is bounded by what chunks decode to, not by what they take in a pack."""

from __future__ import annotations

import hashlib
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import castore
from castore.engine import reader
from castore.format.digests import parse_digest
from castore.format.streams import StreamDescriptor

CHUNK = 256 * 1024


@pytest.mark.parametrize("repeated", [True, False])
def test_a_slow_reader_holds_no_more_decoded_bytes_than_the_read_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repeated: bool
) -> None:
    """Zeros store as a few bytes per 256 KiB chunk: counted in stored bytes, a 64 MiB
    read-ahead would hold 3 GiB of decoded chunks for a reader that has taken one."""
    monkeypatch.setattr(reader, "READ_AHEAD", 4 * CHUNK)
    monkeypatch.setattr(reader, "MAX_RANGE", 2 * CHUNK)
    store = castore.init(str(tmp_path / "store"))
    # One chunk repeated (each a range of its own), or distinct chunks that coalesce.
    data = bytes(64 * CHUNK) if repeated else b"".join(bytes([n]) * CHUNK for n in range(64))
    digest = store.put(data)
    repo = store.repository
    descriptor = repo.stream_descriptor(parse_digest(digest))
    assert descriptor.size == len(data)
    tracemalloc.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            chunks = reader.iter_stream(
                descriptor, backend=repo.backend, index=repo.index, pool=pool
            )
            first = next(chunks)
            pool.shutdown(wait=True)  # every read the generator has asked for has ended
            held, _peak = tracemalloc.get_traced_memory()
            chunks.close()
    finally:
        tracemalloc.stop()
    assert len(first) == CHUNK
    # Ranges are submitted while the bytes in flight are under READ_AHEAD, and each
    # decodes to at most MAX_RANGE: the 16 MiB stream is never held whole.
    assert held <= reader.READ_AHEAD + reader.MAX_RANGE + CHUNK


def test_tiny_chunks_cost_requests_and_memory_in_proportion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream of 2**16 one-byte chunks, two alternating (each a range of its own) or
    one repeated (one range holds the run): a reader that has taken one chunk has asked
    for at most READ_AHEAD / MIN_RANGE_COST ranges, and the plan is not built whole."""
    monkeypatch.setattr(reader, "READ_AHEAD", 4 * reader.MIN_RANGE_COST)
    store = castore.init(str(tmp_path / "store"))
    repo = store.repository
    a, b = (repo.write_stream(byte) for byte in (b"A", b"B"))
    count = 1 << 16
    for ids, data in (
        ((a.chunk_ids + b.chunk_ids) * (count // 2), b"AB" * (count // 2)),
        (a.chunk_ids * count, b"A" * count),
    ):
        descriptor = StreamDescriptor(hashlib.sha256(data).digest(), count, ids, (1,) * count)
        before = repo.requests().read_range
        with ThreadPoolExecutor(4) as pool:
            chunks = reader.iter_stream(
                descriptor, backend=repo.backend, index=repo.index, pool=pool
            )
            assert next(chunks) == b"A"
            pool.shutdown(wait=True)
            asked = repo.requests().read_range - before
            chunks.close()
        assert asked <= reader.READ_AHEAD // reader.MIN_RANGE_COST + 1
        with ThreadPoolExecutor(4) as pool:
            whole = reader.iter_stream(
                descriptor, backend=repo.backend, index=repo.index, pool=pool
            )
            assert b"".join(whole) == data
