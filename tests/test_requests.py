"""Request accounting: what a save, an unchanged re-save and a load ask of the backend.

Each expected count is derived from what the operation must do, step by step, and is the
same on every backend (castore counts its own backend operations, not HTTP calls).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

import castore
from castore.backend import open_backend
from castore.backend.counting import Requests
from castore.engine.cache import LocalCache
from castore.errors import ObjectNotFoundError
from tests.conftest import Location
from tests.helpers import pattern

DATA = pattern(100_000, 7)
"""Small enough for one chunk of the default chunker: one pack, one index object."""

LEASE = Requests(write=1, stat=2, delete=1)
"""The writer lease: write it, read its time and the gc marker's, delete it at the end."""


def test_every_backend_operation_is_counted_by_its_kind() -> None:
    backend = open_backend(f"memory://castore-requests-{uuid.uuid4().hex}")
    backend.ensure_container()
    backend.write("a/x", b"abc")
    backend.create("a/y", b"abc")
    backend.read("a/x")
    backend.read_range("a/x", 1, 1)
    backend.size("a/x")
    backend.exists("a/z")
    backend.modified("a/x")
    backend.list("a")
    backend.delete("a/x")
    with pytest.raises(ObjectNotFoundError):
        backend.read("a/x")  # failed operations count too: they were requests
    expected = Requests(read=2, read_range=1, write=1, create=1, list=1, delete=1, stat=3)
    assert backend.requests() == expected
    assert expected.total == 10
    assert backend.requests() - expected == Requests()


def test_a_save_makes_the_requests_it_needs(store: castore.Store) -> None:
    store.save(DATA, "model/a", serializer="raw")
    assert store.last_write is not None
    # lease; list index/ (refresh under the lease); the pack; its index object; list the
    # name's versions; the manifest; create the version ref.
    assert store.last_write.requests == Requests(write=4, create=1, list=2, stat=2, delete=1)


def test_an_unchanged_resave_writes_nothing_but_its_lease(store: castore.Store) -> None:
    store.save(DATA, "model/a", serializer="raw")
    store.save(DATA, "model/a", serializer="raw")
    assert store.last_write is not None
    # lease; list index/; list the versions; the latest version's ref and its manifest
    # (to see that nothing changed). No pack, no index object, no manifest, no ref.
    assert store.last_write.requests == Requests(
        write=LEASE.write, stat=LEASE.stat, delete=LEASE.delete, list=2, read_range=1, read=1
    )
    assert store.last_write.new_chunks == 0


def test_a_cold_open_reads_the_config_and_the_index(location: Location, tmp_path: Path) -> None:
    with location.init() as store:
        store.save(DATA, "model/a", serializer="raw")
    with castore.open(location.url, cache=LocalCache(tmp_path / "cold"), **location.options) as s:
        # The config (a bounded ranged read), the index listing, the one index object.
        assert s.requests() == Requests(read_range=1, list=1, read=1)


def test_a_load_makes_the_requests_it_needs(location: Location) -> None:
    with location.init() as store:
        store.save(DATA, "model/a", serializer="raw")
    with location.open() as store:
        before = store.requests()
        assert store.load("model/a") == DATA
        # List the versions, read the latest ref, its manifest, one range of the pack.
        assert store.requests() - before == Requests(list=1, read_range=2, read=1)


def test_latest_reads_one_ref_however_long_the_history(location: Location) -> None:
    """name:latest once read every version ref of the name; it reads the newest live one."""
    with location.init() as store:
        for number in range(6):
            store.save(DATA + bytes([number]), "model/a", serializer="raw")
        store.delete("model/a:6")
    with location.open() as store:
        before = store.requests()
        assert store.load("model/a") == DATA + bytes([4])
        # The tombstone of 6 and the ref of 5, as before: its manifest, one pack range.
        assert store.requests() - before == Requests(list=1, read_range=3, read=1)


@pytest.mark.parametrize("new_location", ["local", "s3-moto"], indirect=True)
def test_names_cost_one_listing_however_many_names(location: Location) -> None:
    """names() once listed refs/ and then each name's versions again, and read every ref."""
    with location.init() as store:
        for number in range(20):
            store.save(DATA + bytes([number]), f"team/m{number:02}", serializer="raw")
        store.save(DATA, "team/m07", serializer="raw")
        store.delete("team/m07:2")  # live below a tombstone: two refs read
        store.delete("team/m05:1")  # no live version left: not a name any more
    with location.open() as store:
        before = store.requests()
        names = store.names()
        assert store.requests() - before == Requests(list=1, read_range=21)
    assert names == [f"team/m{number:02}" for number in range(20) if number != 5]


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_names_fail_rather_than_skip_what_cannot_be_listed(location: Location) -> None:
    with location.init() as store:
        for name in ("a", "b"):
            store.save(DATA, name, serializer="raw")
    os.mkfifo(Path(location.url, "refs", "b", "@versions", "2"))  # not an object: unlistable
    with location.open() as store, pytest.raises(castore.BackendError, match="is a named pipe"):
        store.names()


def test_a_digest_the_store_lacks_costs_two_listings_however_many_names(
    location: Location,
) -> None:
    """Not a version, not a put stream: every name's versions are searched for a live one
    with that content, then for a tombstone; each search once listed every name again."""
    with location.init() as store:
        for number in range(10):
            store.save(DATA + bytes([number]), f"team/m{number}", serializer="raw")
    with location.open() as store:
        before = store.requests()
        with pytest.raises(castore.NotFoundError):
            store.get("sha256:" + "ab" * 32)
        assert (store.requests() - before).list == 2
