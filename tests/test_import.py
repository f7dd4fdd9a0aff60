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
from tests.test_cli import _cli, _ok


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


def test_a_file_that_would_not_load_records_nothing(store: castore.Store, tmp_path: Path) -> None:
    compressed = tmp_path / "model-v7.pkl"
    joblib.dump({"w": np.zeros(10)}, compressed, compress=3)
    with pytest.raises(castore.DeserializationError, match="was not saved"):
        store.import_file(compressed, "m")
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
    refused = _cli(location, "import", str(compressed), "--name", "m")
    assert refused.returncode == 5 and b"was not saved" in refused.stderr
