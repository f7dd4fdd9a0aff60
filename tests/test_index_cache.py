"""The local index cache: an open lists index/ and reads only the index objects it lacks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

import castore
from castore.backend.counting import Requests
from castore.engine.cache import IndexObjectCache, LocalCache
from castore.format import layout
from tests.conftest import Location
from tests.helpers import pattern

SAVES = 5

OPEN_WARM = Requests(read_range=1, list=1)
"""An open whose cache holds every index object: the config, then one listing."""


def _open(location: Location, cache: Path) -> castore.Store:
    return castore.open(location.url, cache=LocalCache(cache), **location.options)


def _populate(location: Location, saves: int = SAVES) -> None:
    with location.init() as store:
        for number in range(saves):
            store.save(pattern(5_000, number), "model/a", serializer="raw")


def _warmed(new_location: Callable[[], Location], cache: Path) -> tuple[Location, IndexObjectCache]:
    """A populated store opened once through `cache`: what that open left in the cache."""
    location = new_location()
    _populate(location)
    with _open(location, cache) as store:
        return location, store.repository.cache.index_objects(store.config.store_id, store.url)


def _cached_names(store: castore.Store) -> set[str]:
    folder = store.repository.cache.index_objects(store.config.store_id, store.url).folder
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def _listed_names(store: castore.Store) -> set[str]:
    return {path.rsplit("/", 1)[-1] for path in store.repository.backend.list(layout.INDEX)}


@pytest.mark.parametrize("new_location", ["s3-moto"], indirect=True)
def test_a_warm_open_reads_no_index_object(
    new_location: Callable[[], Location], tmp_path: Path
) -> None:
    location = new_location()
    _populate(location)
    with _open(location, tmp_path / "cache") as cold:
        assert cold.requests() == Requests(read_range=1, list=1, read=SAVES)
    with _open(location, tmp_path / "cache") as warm:
        assert warm.requests() == OPEN_WARM
        assert len(warm.repository.index.objects) == SAVES
        assert warm.load("model/a:3") == pattern(5_000, 2)


@pytest.mark.parametrize("new_location", ["s3-moto"], indirect=True)
def test_an_open_reads_only_the_index_objects_written_since(
    new_location: Callable[[], Location], tmp_path: Path
) -> None:
    location = new_location()
    _populate(location)
    with _open(location, tmp_path / "reader"):
        pass
    with _open(location, tmp_path / "writer") as writer:
        writer.save(pattern(5_000, 100), "model/a", serializer="raw")
        writer.save(pattern(5_000, 101), "model/b", serializer="raw")
    with _open(location, tmp_path / "reader") as reader:
        assert reader.requests() == Requests(read_range=1, list=1, read=2)


@pytest.mark.parametrize("new_location", ["s3-moto"], indirect=True)
def test_a_writer_caches_the_index_objects_it_writes(
    new_location: Callable[[], Location], tmp_path: Path
) -> None:
    location = new_location()
    _populate(location)  # through the test's own cache directory
    with location.open() as store:
        assert store.requests() == OPEN_WARM


@pytest.mark.parametrize("new_location", ["s3-moto"], indirect=True)
def test_a_tampered_cached_copy_is_dropped_and_read_again(
    new_location: Callable[[], Location], tmp_path: Path
) -> None:
    location, cache = _warmed(new_location, tmp_path / "cache")
    cache.table.unlink()  # with the saved table, an open reads no copy at all
    copies = sorted(cache.folder.iterdir())
    assert len(copies) == SAVES
    victim = copies[0]
    original = victim.read_bytes()
    victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with _open(location, tmp_path / "cache") as store:
        assert store.requests() == Requests(read_range=1, list=1, read=1)
        assert not store.repository.index.damaged
        assert store.load("model/a:1") == pattern(5_000, 0)
    assert victim.read_bytes() == original
    assert hashlib.sha256(original).hexdigest() == victim.name


@pytest.mark.parametrize("new_location", ["s3-moto"], indirect=True)
def test_copies_of_index_objects_gone_from_the_store_are_dropped(
    new_location: Callable[[], Location], tmp_path: Path
) -> None:
    location = new_location()
    _populate(location)
    with _open(location, tmp_path / "cache") as store:
        before = _cached_names(store)
        assert store.gc().index_objects_replaced == SAVES
        after = _cached_names(store)
        assert after == _listed_names(store)
        assert len(after) == 1 and not after & before
    with _open(location, tmp_path / "cache") as store:
        assert store.requests() == OPEN_WARM
        assert store.load("model/a:5") == pattern(5_000, 4)


@pytest.mark.parametrize("new_location", ["local", "memory"], indirect=True)
def test_stores_on_local_storage_keep_no_copies(
    new_location: Callable[[], Location], tmp_path: Path
) -> None:
    location = new_location()
    _populate(location)
    with _open(location, tmp_path / "cache") as store:
        assert store.requests() == Requests(read_range=1, list=1, read=SAVES)
    assert not (tmp_path / "cache" / "index").exists()


@pytest.mark.parametrize("new_location", ["s3-moto"], indirect=True)
def test_maintenance_judges_the_index_objects_in_the_store_not_their_copies(
    new_location: Callable[[], Location], tmp_path: Path
) -> None:
    location = new_location()
    _populate(location)
    with _open(location, tmp_path / "cache") as store:
        victim = store.repository.backend.list(layout.INDEX)[0]
        store.repository.backend.write(victim, b"garbage")
        packs = store.repository.backend.list(layout.PACKS)
    with _open(location, tmp_path / "cache") as store:
        assert not store.repository.index.damaged  # readers may use the intact copy
        assert any(victim in problem for problem in store.verify().problems)
        report = store.gc()
        assert any("castore repair" in problem for problem in report.problems)
        assert store.repository.backend.list(layout.PACKS) == packs


@pytest.mark.parametrize("new_location", ["s3-moto"], indirect=True)
def test_a_warm_open_takes_the_saved_table_and_reads_no_copy(
    new_location: Callable[[], Location], tmp_path: Path
) -> None:
    location, cache = _warmed(new_location, tmp_path / "cache")
    with _open(location, tmp_path / "cold") as store:
        chunks = len(store.repository.index)
    assert cache.table.is_file()
    for copy in cache.folder.iterdir():
        copy.unlink()
    with _open(location, tmp_path / "cache") as store:
        assert store.requests() == OPEN_WARM
        assert len(store.repository.index) == chunks
        assert len(store.repository.index.objects) == SAVES
        assert store.load("model/a:4") == pattern(5_000, 3)
        store.save(pattern(5_000, 100), "model/b", serializer="raw")
    with _open(location, tmp_path / "cache") as store:
        # The saved table lacks the new object: it comes from the copy the writer kept.
        assert store.requests() == OPEN_WARM
        assert len(store.repository.index) > chunks
        assert store.load("model/b:1") == pattern(5_000, 100)


@pytest.mark.parametrize("new_location", ["s3-moto"], indirect=True)
def test_a_damaged_saved_table_is_ignored_and_saved_again(
    new_location: Callable[[], Location], tmp_path: Path
) -> None:
    location, cache = _warmed(new_location, tmp_path / "cache")
    saved = cache.table.read_bytes()
    cache.table.write_bytes(bytes([saved[0] ^ 1]) + saved[1:])  # a flipped bit in a chunk id
    with _open(location, tmp_path / "cache") as store:
        assert store.requests() == OPEN_WARM  # from the verified copies
        for number in range(SAVES):
            assert store.load(f"model/a:{number + 1}") == pattern(5_000, number)
    assert cache.table.read_bytes() == saved


@pytest.mark.parametrize("new_location", ["s3-moto"], indirect=True)
def test_a_saved_table_of_objects_gc_replaced_is_not_used(
    new_location: Callable[[], Location], tmp_path: Path
) -> None:
    location, cache = _warmed(new_location, tmp_path / "cache")
    assert cache.table.is_file()
    with _open(location, tmp_path / "cache") as store:
        store.delete("model/a:1")
        assert store.gc().index_objects_replaced == SAVES
    with _open(location, tmp_path / "other-cache") as other:
        expected = len(other.repository.index)
    with _open(location, tmp_path / "cache") as store:
        assert len(store.repository.index) == expected
        assert store.load("model/a:5") == pattern(5_000, 4)
        assert store.verify(read_data=True).ok
