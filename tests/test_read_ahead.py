"""The read-ahead is bounded by what chunks decode to, not by what they take in a pack."""

from __future__ import annotations

import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import castore
from castore.engine import reader
from castore.format.digests import parse_digest

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
