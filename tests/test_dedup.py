"""Deduplication: bytes already stored are never stored again."""

from __future__ import annotations

import io
import os

import pytest

import castore
from tests.helpers import pack_paths, pattern


@pytest.mark.slow
def test_second_put_of_100_mib_writes_no_new_pack(store: castore.Store) -> None:
    data = os.urandom(100 * 1024 * 1024)
    first = store.put(data)
    packs = pack_paths(store)
    assert store.last_write.new_bytes_stored >= len(data) * 0.99
    assert store.put(io.BytesIO(data)) == first
    assert pack_paths(store) == packs
    assert store.last_write.new_chunks == 0
    assert store.last_write.chunks > 1000


def test_shared_content_across_streams_is_stored_once(small_store: castore.Store) -> None:
    head, middle, tail = pattern(200_000, 1), pattern(300_000, 2), pattern(200_000, 3)
    small_store.put(head + middle + tail)
    stored_before = small_store.last_write.new_bytes_stored
    small_store.put(pattern(5_000, 9) + middle + pattern(5_000, 8))
    # Only the chunks around the edits are new: far less than the shared middle.
    assert small_store.last_write.new_bytes_stored < 0.2 * len(middle)
    assert stored_before > len(head + middle + tail) * 0.9


def test_repeated_content_within_one_put_is_stored_once(small_store: castore.Store) -> None:
    block = pattern(100_000, 4)
    digest = small_store.put(block * 8)
    assert small_store.last_write.new_bytes_stored < 2 * len(block)
    assert small_store.get(digest) == block * 8


def test_dedup_sees_chunks_written_by_another_store_object(location) -> None:
    data = pattern(400_000, 6)
    with location.init() as first:
        first.put(data)
    with location.open() as second:
        second.put(data)
        assert second.last_write.new_chunks == 0
