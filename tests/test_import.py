"""Importing existing joblib and pickle files as versions, byte for byte."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest

import castore
from tests.conftest import Location
from tests.test_cli import _ok


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, ("true",)


def test_an_existing_joblib_file_becomes_a_loadable_version(
    store: castore.Store, tmp_path: Path
) -> None:
    model = {"weights": np.arange(1000, dtype=np.float32), "depth": 8}
    file = tmp_path / "model-v1.joblib"
    joblib.dump(model, file)
    version = store.import_file(file, "m", metadata={"auc": 0.9}, tags=["production"])
    sha256sum = hashlib.sha256(file.read_bytes()).hexdigest()
    assert version.content_digest == f"sha256:{sha256sum}" and version.serializer == "joblib"
    loaded = store.load("m:production")
    assert np.array_equal(loaded["weights"], model["weights"]) and loaded["depth"] == 8
    assert store.import_file(file, "m", metadata={"auc": 0.9}) == version  # unchanged
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps([1, 2.5, "three"]))
    assert store.load(store.import_file(pickled, "p", serializer="pickle").reference) == [
        1,
        2.5,
        "three",
    ]


@pytest.mark.parametrize("compress", [3, ("gzip", 3), ("xz", 9)])
def test_a_compressed_joblib_file_is_imported_as_it_is(
    store: castore.Store, tmp_path: Path, compress: object
) -> None:
    """The brief's own example, joblib.dump(model, "model-v7.pkl", compress=3)."""
    model = {"weights": np.arange(5000, dtype=np.float64).reshape(50, 100), "name": "v7"}
    file = tmp_path / "model-v7.pkl"
    joblib.dump(model, file, compress=compress)
    version = store.import_file(file, "m")
    assert version.content_digest == f"sha256:{hashlib.sha256(file.read_bytes()).hexdigest()}"
    with store.open_stream(version.content_digest) as stream:
        assert stream.read() == file.read_bytes()
    loaded = store.load(version.reference)
    assert np.array_equal(loaded["weights"], model["weights"]) and loaded["name"] == "v7"
    with pytest.warns(castore.CastoreWarning, match="mmap_mode is ignored"):
        mapped = store.load(version.reference, mmap_mode="r")
    assert np.array_equal(mapped["weights"], model["weights"])
    hostile = tmp_path / "hostile.pkl"
    joblib.dump({"run": _Boom()}, hostile, compress=compress)
    with pytest.raises(castore.UnsafeObjectError, match=r"(os|posix)\.system"):
        store.import_file(hostile, "h")
    assert store.names() == ["m"]


def test_a_file_that_would_not_load_records_nothing(store: castore.Store, tmp_path: Path) -> None:
    truncated = tmp_path / "model-v7.pkl"
    joblib.dump({"w": np.zeros(10)}, truncated, compress=3)
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(castore.DeserializationError, match="was not saved"):
        store.import_file(truncated, "m")
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(castore.UnsafeObjectError, match=r"(os|posix)\.system"):
        store.import_file(hostile, "m", serializer="pickle")
    assert store.names() == []
    unchecked = store.import_file(hostile, "m", serializer="pickle", check=False)
    with pytest.raises(castore.UnsafeObjectError):
        store.load(unchecked.reference)
    with pytest.raises(castore.InvalidInputError, match="pickle-based files"):
        store.import_file(hostile, "m", serializer="raw")
    with pytest.raises(castore.InvalidInputError, match="cannot read"):
        store.import_file(tmp_path / "absent.pkl", "m")


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_import_numbers_several_files_in_order(location: Location, tmp_path: Path) -> None:
    _ok(location, "init")
    files = []
    for number in (1, 2):
        files.append(str(tmp_path / f"model-v{number}.joblib"))
        joblib.dump({"version": number}, files[-1])
    rows = json.loads(_ok(location, "--json", "import", *files, "--name", "m"))
    assert [r["version"] for r in rows] == [1, 2]
    compressed = tmp_path / "model-v3.joblib"
    joblib.dump({"version": 3}, compressed, compress=3)
    rows = json.loads(_ok(location, "--json", "import", str(compressed), "--name", "m"))
    assert rows[0]["version"] == 3  # checked by loading it, as every import is
