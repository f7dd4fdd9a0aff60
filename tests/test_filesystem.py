"""castore:// through fsspec, as pandas and other tools open it: read-only, every byte
verified, tags resolved at every open."""

from __future__ import annotations

import errno
import importlib.metadata
import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pandas
import pytest

import castore
from castore.integrations.filesystem import CastoreFileSystem
from tests.conftest import Location
from tests.helpers import flip_byte, pack_paths, pattern

TRAIN = b"a,b\n1,2\n3,4\n"


def _archive(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.txt", text)
    return buffer.getvalue()


@pytest.fixture
def filled(new_location: Callable[[], Location], tmp_path: Path) -> Location:
    """A store holding a snapshot backups/data:1 and two versions of churn/model, the
    first tagged production."""
    location = new_location()
    source = tmp_path / "data"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "train.csv").write_bytes(TRAIN)
    (source / "big.bin").write_bytes(pattern(400_000, seed=5))
    (source / "link").symlink_to("big.bin")
    with location.init() as store:
        store.backup(source, "backups/data")
        store.save(_archive("v1"), "churn/model", serializer="raw", tags=["production"])
        store.save(_archive("v2"), "churn/model", serializer="raw")
    return location


def _url(location: Location, path: str) -> str:
    store = location.url if "://" in location.url else f"file://{location.url}"
    return f"castore://{path}::{store}"


def _options(location: Location) -> dict[str, Any]:
    """fsspec's storage options for the store's own layer of the chained URL."""
    protocol = location.url.partition("://")[0] if "://" in location.url else "file"
    return {protocol: location.options} if location.options else {}


def _fs(location: Location) -> CastoreFileSystem:
    fs, _ = fsspec.core.url_to_fs(_url(location, ""), **_options(location))
    assert isinstance(fs, CastoreFileSystem)
    return fs


def test_the_protocol_is_registered_by_its_entry_point() -> None:
    points = importlib.metadata.entry_points(group="fsspec.specs")
    assert [p.value for p in points if p.name == "castore"] == [
        "castore.integrations.filesystem:CastoreFileSystem"
    ]
    assert fsspec.get_filesystem_class("castore") is CastoreFileSystem


@pytest.mark.parametrize("new_location", ["local", "s3-moto", "memory"], indirect=True)
def test_snapshot_files_and_versions_open_by_url(filled: Location) -> None:
    options = _options(filled)
    with fsspec.open(_url(filled, "backups/data:1/sub/train.csv"), **options) as file:
        assert file.read() == TRAIN
    with fsspec.open(_url(filled, "churn/model:production"), **options) as file:
        assert zipfile.ZipFile(file).read("model.txt") == b"v1"  # zip seeks to its end
    digest = filled.open().version("churn/model:2").reference.partition("@")[2]
    with fsspec.open(_url(filled, f"churn/model@{digest}"), **options) as file:
        assert zipfile.ZipFile(file).read("model.txt") == b"v2"
    with fsspec.open(_url(filled, "backups/data:1/sub/train.csv"), "rt", **options) as text:
        assert text.read().splitlines() == ["a,b", "1,2", "3,4"]


@pytest.mark.parametrize("new_location", ["local", "s3-moto"], indirect=True)
def test_pandas_reads_a_backed_up_csv(filled: Location) -> None:
    url = _url(filled, "backups/data:1/sub/train.csv")
    frame = pandas.read_csv(url, storage_options=_options(filled) or None)
    assert frame.to_dict("list") == {"a": [1, 3], "b": [2, 4]}


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_listing_and_info_follow_names_versions_and_trees(filled: Location) -> None:
    fs = _fs(filled)
    assert fs.ls("", detail=False) == ["backups", "churn"]
    assert fs.ls("churn", detail=False) == ["churn/model"]
    versions = fs.ls("churn/model")
    assert [v["name"] for v in versions] == ["churn/model:1", "churn/model:2"]
    assert versions[0]["type"] == "file" and versions[0]["size"] == len(_archive("v1"))
    assert fs.ls("backups/data", detail=False) == ["backups/data:1"]
    assert fs.ls("backups/data:1", detail=False) == [
        "backups/data:1/big.bin",
        "backups/data:1/link",
        "backups/data:1/sub",
    ]
    assert fs.ls("backups/data:1/sub", detail=False) == ["backups/data:1/sub/train.csv"]
    assert fs.find("backups/data:1") == [
        "backups/data:1/big.bin",
        "backups/data:1/link",
        "backups/data:1/sub/train.csv",
    ]
    assert fs.info("backups/data:1/big.bin")["size"] == 400_000
    assert fs.info("backups/data:1/link")["type"] == "other"
    assert fs.isdir("backups/data:1/sub") and fs.isfile("churn/model:1")
    assert (
        fs.cat_file("backups/data:1/big.bin", start=1000, end=1010)
        == pattern(400_000, seed=5)[1000:1010]
    )
    for missing in ("nothing", "churn/model:9", "backups/data:1/nope", "churn/model:1/x"):
        assert not fs.exists(missing)
        with pytest.raises(FileNotFoundError):
            fs.info(missing)
    with pytest.raises(IsADirectoryError):
        fs.open("backups/data:1")
    with pytest.raises(castore.InvalidInputError):
        fs.info("churn/model:not a tag")
    with pytest.raises(castore.InvalidInputError, match="another store"):
        fs.open("backups/data:1/sub/train.csv::file:///etc")  # never read from this store


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_a_tag_is_resolved_at_every_open(filled: Location) -> None:
    fs = _fs(filled)
    with fs.open("churn/model:production") as file:
        assert zipfile.ZipFile(file).read("model.txt") == b"v1"
    with filled.open() as store:
        store.tag("churn/model:2", "production")
    with fsspec.open(_url(filled, "churn/model:production"), **_options(filled)) as file:
        assert zipfile.ZipFile(file).read("model.txt") == b"v2"  # the same cached instance
    assert fs.info("churn/model:production")["reference"].endswith(
        filled.open().version("churn/model:2").digest
    )


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_writes_are_refused_and_nothing_changes(filled: Location) -> None:
    fs = _fs(filled)
    attempts: list[Callable[[], object]] = [
        lambda: fs.open("churn/model:3", "wb"),
        lambda: fs.pipe_file("churn/model:3", b"x"),
        lambda: fs.rm("churn/model:1"),
        lambda: fs.mkdir("new"),
        lambda: fs.mv("churn/model:1", "churn/model:5"),
        lambda: fs.touch("backups/data:1/new"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as raised:
            attempt()
        assert raised.value.errno == errno.EROFS
    with filled.open() as store:
        assert store.names() == ["backups/data", "churn/model"]
        assert store.versions("churn/model") == [1, 2]


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_damaged_data_is_an_error_never_wrong_bytes(filled: Location) -> None:
    with filled.open() as store:
        for pack in pack_paths(store):
            flip_byte(store, pack, 100)
    fs = _fs(filled)
    fs.invalidate_cache()
    with pytest.raises(castore.IntegrityError):
        fs.cat_file("backups/data:1/big.bin")


def test_a_url_without_a_store_is_refused() -> None:
    with pytest.raises(castore.InvalidInputError, match="needs a store"):
        CastoreFileSystem(skip_instance_cache=True)
