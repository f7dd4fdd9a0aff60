"""Managing the local cache: its size bound, its tag for backup tools, ls and prune."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import castore
from castore.engine.cache import CACHEDIR_TAG
from tests.conftest import Location
from tests.helpers import pattern
from tests.test_cli import _cli, _ok


def _fill(location: Location, cache: Path, versions: int = 4) -> None:
    """Save `versions` versions of 200 kB to S3 and load each, which caches their chunks."""
    with location.init() as store:
        for number in range(versions):
            store.save(pattern(200_000, seed=number), "m", serializer="raw")
    with castore.open(location.url, cache=castore.LocalCache(cache), **location.options) as s:
        for number in range(versions):
            assert s.load(f"m:{number + 1}") == pattern(200_000, seed=number)


@given(st.integers(0, 10**6), st.sampled_from(["", "B", "K", "KiB", "M", "MiB", "g", "GiB", "T"]))
def test_sizes_read_as_powers_of_1024(number: int, unit: str) -> None:
    power = " KMGT".index(unit[:1].upper() if unit[:1].upper() in "KMGT" else " ")
    assert castore.parse_size(f"{number}{unit}") == number * 1024**power


def test_bad_sizes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for text in ("", "ten", "5 XB", "-1G", "1e9"):
        with pytest.raises(castore.InvalidInputError, match="invalid size"):
            castore.parse_size(text)
    monkeypatch.setenv("CASTORE_CACHE_SIZE", "lots")
    with pytest.raises(castore.InvalidInputError, match="invalid size"):
        castore.LocalCache()
    monkeypatch.setenv("CASTORE_CACHE_SIZE", "512MiB")
    assert castore.LocalCache().max_bytes == 512 * 1024**2


@pytest.mark.parametrize("new_location", ["s3-moto"], indirect=True)
def test_the_bound_evicts_least_recently_used_first(
    new_location: Callable[[], Location], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASTORE_CACHE_SIZE", "500K")
    location, cache = new_location(), tmp_path / "cache"
    _fill(location, cache)
    usage = castore.LocalCache(cache).usage()
    assert 0 < usage.chunk_bytes + usage.stream_bytes <= 500 * 1024
    assert usage.max_bytes == 500 * 1024 and usage.index_stores == 1


@pytest.mark.parametrize("new_location", ["s3-moto"], indirect=True)
def test_the_cache_is_tagged_so_that_backups_skip_it(
    new_location: Callable[[], Location], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    cache = home / ".cache" / "castore"
    location = new_location()
    _fill(location, cache, versions=1)
    assert (cache / "CACHEDIR.TAG").read_bytes() == CACHEDIR_TAG
    (home / "notes.txt").write_text("keep me")
    with castore.init(str(tmp_path / "backups")) as store:
        snapshot = store.backup(home, "home", exclude_caches=True)
        paths = [entry.path_str for entry in store.snapshot_entries(snapshot.reference)]
    assert "notes.txt" in paths and not any(p.startswith(".cache/castore/") for p in paths)


@pytest.mark.parametrize("new_location", ["s3-moto"], indirect=True)
def test_cache_ls_and_prune_from_the_command_line(
    new_location: Callable[[], Location], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CASTORE_CACHE_DIR", str(cache))
    location = new_location()
    _fill(location, cache)
    listed = json.loads(_ok(location, "--json", "cache", "ls"))
    assert listed["root"] == str(cache) and listed["chunk_files"] > 0
    assert listed["bytes"] == listed["chunk_bytes"] + listed["stream_bytes"] + listed["index_bytes"]
    # The oldest files go first: make the chunks of m:1 the least recently used.
    files = sorted((cache / "chunks").glob("*/*"))
    for age, path in enumerate(files):
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    half = listed["chunk_bytes"] // 2
    pruned = json.loads(_ok(location, "--json", "cache", "prune", "--max-size", str(half)))
    left = sorted((cache / "chunks").glob("*/*"))
    assert pruned["chunk_bytes"] <= half and pruned["freed_bytes"] >= listed["chunk_bytes"] - half
    assert left == files[len(files) - len(left) :]  # the newest survived
    emptied = json.loads(_ok(location, "--json", "cache", "prune", "--max-size", "0"))
    assert emptied["bytes"] == 0 and emptied["index_stores"] == 0
    assert _cli(location, "cache", "prune", "--max-size", "lots").returncode == 2
    with castore.open(location.url, cache=castore.LocalCache(cache), **location.options) as s:
        assert s.load("m:1") == pattern(200_000, seed=0)  # an empty cache costs only a fetch
