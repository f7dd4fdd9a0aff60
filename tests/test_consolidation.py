"""Consolidation: many small index objects merged into one, with no chunk ever unlisted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import castore
from castore.backend.counting import Requests
from castore.engine.cache import LocalCache
from castore.engine.repository import CONSOLIDATE_AT
from castore.format import layout
from tests.conftest import Location
from tests.helpers import pattern

SAVES = 6


def _save_all(store: castore.Store, saves: int = SAVES, name: str = "model/a") -> None:
    for number in range(saves):
        store.save(pattern(5_000, number), name, serializer="raw")


def _index_objects(store: castore.Store) -> list[str]:
    return store.repository.backend.list(layout.INDEX)


def _loads_every_version(store: castore.Store, saves: int = SAVES) -> None:
    for number in range(saves):
        assert store.load(f"model/a:{number + 1}") == pattern(5_000, number)


def test_consolidation_merges_the_index_into_one_object(location: Location, tmp_path: Path) -> None:
    with location.init() as store:
        _save_all(store)
        assert len(_index_objects(store)) == SAVES
        assert store.consolidate_index() == SAVES
        assert len(_index_objects(store)) == 1
        assert store.consolidate_index() == 0  # one object: nothing to merge
        _loads_every_version(store)
        assert store.verify(read_data=True).ok
    with castore.open(location.url, cache=LocalCache(tmp_path / "cold"), **location.options) as s:
        assert s.requests() == Requests(read_range=1, list=1, read=1)
        _loads_every_version(s)


@pytest.mark.parametrize("new_location", ["memory", "s3-moto"], indirect=True)
def test_a_reader_that_finds_its_objects_gone_reloads(
    new_location: Callable[[], Location],
) -> None:
    location = new_location()
    with location.init() as writer:
        _save_all(writer, SAVES - 1)
        with location.open() as reader:
            writer.save(pattern(5_000, SAVES - 1), "model/a", serializer="raw")
            writer.consolidate_index()
            # The reader has loaded the objects just deleted, and not the last save's:
            # its miss re-lists index/, sees its objects gone and reloads the merged one.
            _loads_every_version(reader)


def test_objects_written_during_a_consolidation_stay(location: Location) -> None:
    with location.init() as store, location.open() as other:
        _save_all(store)
        repo = store.repository
        committed: set[str] = set()

        def another_writer_commits() -> None:
            # Called (as the lease check) after the objects to merge were read.
            if not committed:
                before = set(_index_objects(other))
                other.save(pattern(5_000, 99), "model/b", serializer="raw")
                committed.update(set(_index_objects(other)) - before)

        with repo.lease.held():
            replaced = repo.index.consolidate(another_writer_commits)
        assert len(replaced) == SAVES and len(committed) == 1
        remaining = set(_index_objects(store))
        assert len(remaining) == 2 and committed <= remaining  # merged + the other's
        with location.open() as reader:
            _loads_every_version(reader)
            assert reader.load("model/b") == pattern(5_000, 99)
            assert reader.verify(read_data=True).ok


@pytest.mark.parametrize("new_location", ["memory", "local"], indirect=True)
def test_damaged_index_objects_are_left_for_repair(new_location: Callable[[], Location]) -> None:
    location = new_location()
    with location.init() as store:
        _save_all(store)
        damaged = _index_objects(store)[0]
        store.repository.backend.write(damaged, b"garbage")
        assert store.consolidate_index() == SAVES - 1
        assert damaged in _index_objects(store)
        assert len(_index_objects(store)) == 2
        report = store.verify()
        assert any(damaged in problem for problem in report.problems)


@pytest.mark.parametrize("new_location", ["memory"], indirect=True)
def test_writes_consolidate_once_the_store_has_many_index_objects(
    new_location: Callable[[], Location],
) -> None:
    location = new_location()
    with location.init() as store:
        _save_all(store, CONSOLIDATE_AT)
        assert len(_index_objects(store)) == CONSOLIDATE_AT
        store.save(pattern(5_000, CONSOLIDATE_AT), "model/a", serializer="raw")
        assert len(_index_objects(store)) == 1
        assert store.last_write is not None
        # Every index object, the new one included, then the lease.
        assert store.last_write.requests.delete == (CONSOLIDATE_AT + 1) + 1
        _loads_every_version(store, CONSOLIDATE_AT + 1)
