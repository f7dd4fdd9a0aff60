"""What a load needs, told before loading: inspect, check_loadable and the save-time warning."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from datetime import date
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer

import castore
from castore import safety
from tests.helpers import ROOT, plant_version

HERE = __name__


@pytest.fixture(autouse=True)
def private_config(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test gets its own (empty) user configuration, never the user's."""
    folder = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("CASTORE_CONFIG_DIR", str(folder))
    return folder


RAN: list[str] = []
"""What code from loaded streams ran (the audit hook would refuse a marker file)."""


@pytest.fixture
def ran() -> list[str]:
    """`RAN`, empty at the start of the test."""
    RAN.clear()
    return RAN


# -- a DataFrame-like object: classes, a rebuilding function, arrays in between --------------


def _new_index(labels: Any) -> Index:
    """Rebuilds an Index, as pandas' ``_new_Index`` does; says that it ran."""
    RAN.append("_new_index")
    return Index(labels)


class Index:
    """Labels, pickled through a module-level function (like pandas' Index)."""

    def __init__(self, labels: Any) -> None:
        self.labels = np.asarray(labels, dtype=object)

    def __reduce__(self) -> tuple[Any, ...]:
        return _new_index, (self.labels,)


class Block:
    """One typed block of values (like pandas' blocks)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values


class Frame:
    """Shaped like a pandas DataFrame: blocks of arrays, an index, object columns."""

    def __init__(self) -> None:
        self.blocks = [
            Block(np.arange(6.0).reshape(2, 3)),
            Block(np.array([["a", None, date(2024, 1, 1)]], dtype=object)),
        ]
        self.index = Index(["r1", "r2", "r3"])
        self.columns = np.array(["x", "y"], dtype=object)


FRAME_REFUSED = (f"{HERE}.Frame", f"{HERE}.Block", f"{HERE}._new_index")


def _double(values: Any) -> Any:
    return values * 2


def _commit(store: castore.Store, name: str, data: bytes, serializer: str) -> str:
    """A version holding exactly `data`, as a store writer could plant it."""
    return plant_version(store, name, data, serializer).reference


def _saved(store: castore.Store, obj: Any, name: str, **options: Any) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", castore.UnloadableVersionWarning)
        return store.save(obj, name, **options).reference


# -- inspect ------------------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["joblib", "pickle"])
def test_one_inspection_names_every_refused_global_and_the_edit_that_admits_them(
    store: castore.Store, ran: list[str], serializer: str
) -> None:
    ref = _saved(store, Frame(), f"frame/{serializer}", serializer=serializer)
    report = store.inspect(ref)
    assert report.refused == FRAME_REFUSED
    assert not report.admitted and not report.loads and report.problem is None
    assert report.trusted_argument == f"trusted={list(FRAME_REFUSED)!r}"
    uses = {g.name: (g.use, g.reason) for g in report.globals}
    assert uses[f"{HERE}._new_index"] == ("refused", "it is not on the allowlist")
    assert uses["datetime.date"] == ("called", "a class whose instances are data")
    assert report.version.reference == ref and not ran
    with pytest.raises(castore.UnsafeObjectError) as refusal:
        store.load(ref)
    assert refusal.value.refused == FRAME_REFUSED  # the load, too, names them all at once

    # Trusting them lists them as trusted, and still runs nothing.
    trusted = store.inspect(ref, trusted=report.refused)
    assert trusted.admitted and trusted.trusted_argument is None and not ran
    assert {g.name for g in trusted.globals if g.trusted} == set(FRAME_REFUSED)
    loaded = store.load(ref, trusted=report.refused)
    assert ran  # the load ran the rebuilding function the scan only named
    assert list(loaded.index.labels) == ["r1", "r2", "r3"]
    np.testing.assert_array_equal(loaded.blocks[0].values, np.arange(6.0).reshape(2, 3))


def test_the_users_trusted_globals_file_counts(store: castore.Store, private_config: Path) -> None:
    ref = _saved(store, {"f": FunctionTransformer(_double)}, "ft")
    assert store.inspect(ref).refused == (f"{HERE}._double",)
    (private_config / safety.TRUSTED_GLOBALS_FILE).write_text(f"{HERE}._double\n")
    (use,) = [g for g in store.inspect(ref).globals if g.name == f"{HERE}._double"]
    assert use.trusted and use.use == "called" and store.inspect(ref).admitted


def test_code_pickled_by_value_is_told_no_trusted_entry_admits_it(store: castore.Store) -> None:
    ref = _commit(store, "lambda", cloudpickle.dumps(lambda x: x + 1, protocol=5), "cloudpickle")
    report = store.inspect(ref)
    assert report.refused and all(name.startswith("cloudpickle.") for name in report.refused)
    assert report.trusted_argument is None
    assert report.advice is not None and "signed by a key you trust" in report.advice


def test_planted_streams_are_inspected_without_running_them(
    store: castore.Store, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return os.system, (f"touch {pwned}",)

    ref = _commit(store, "evil", pickle.dumps([Payload(), np.arange(2)], protocol=5), "pickle")
    system = f"{os.system.__module__}.system"
    assert store.inspect(ref, trusted=[system]).admitted
    assert store.inspect(ref).refused == (system,) and not pwned.exists()
    truncated = _commit(store, "cut", pickle.dumps(Frame(), protocol=5)[:-40], "pickle")
    report = store.inspect(truncated)
    assert report.problem is not None and not report.admitted
    assert report.refused[:2] == FRAME_REFUSED[:2]  # what came before the cut is listed
    raw = store.save(b"bytes", "raw", serializer="raw").reference
    assert store.inspect(raw).globals == () and store.inspect(raw).admitted


# -- save: check_loadable and the warning -------------------------------------------------------


def _model() -> LogisticRegression:
    features, labels = make_classification(n_samples=60, n_features=4, random_state=0)
    return LogisticRegression().fit(features, labels)


@pytest.mark.parametrize(
    ("obj", "refused"),
    [
        (FunctionTransformer(_double), (f"{HERE}._double",)),
        ({"block": Block(np.zeros(3)), "f": np.log1p}, (f"{HERE}.Block", "numpy.log1p")),
    ],
    ids=["function-transformer", "custom-class"],
)
def test_check_loadable_refuses_what_the_default_policy_would_not_load(
    store: castore.Store, obj: Any, refused: tuple[str, ...]
) -> None:
    with pytest.raises(castore.UnsafeObjectError) as error:
        store.save(obj, "model", check_loadable=True)
    assert error.value.refused == refused
    assert "model was not saved" in str(error.value)
    assert f"trusted={list(refused)!r}" in str(error.value)
    assert store.names() == []  # no version was recorded


def test_check_loadable_passes_plain_models_and_arrays(store: castore.Store) -> None:
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UnloadableVersionWarning either
        for serializer in ("joblib", "pickle"):
            for check in (True, False):
                ref = store.save(
                    {"model": model, "weights": np.ones((3, 2))},
                    f"{serializer}/{str(check).lower()}",
                    serializer=serializer,
                    check_loadable=check,
                ).reference
                loaded = store.load(ref)
                np.testing.assert_array_equal(loaded["model"].coef_, model.coef_)


def test_a_version_that_will_not_load_is_saved_with_a_warning(store: castore.Store) -> None:
    with pytest.warns(castore.UnloadableVersionWarning) as warned:
        version = store.save(Frame(), "frame")
    (warning,) = warned
    assert issubclass(warning.category, castore.CastoreWarning)
    assert warning.filename == __file__  # it points at the caller's save
    message = str(warning.message)
    assert "version 1 of frame will not load under the default policy" in message
    assert f"trusted={list(FRAME_REFUSED)!r}" in message and "check_loadable=True" in message
    assert store.version("frame") == version  # saved all the same


# -- the command line ----------------------------------------------------------------------------


def _cli(store: castore.Store, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "castore", "--store", store.url, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CASTORE_STORE": ""},
        timeout=120,
    )


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_the_inspect_command_prints_the_one_edit_that_makes_it_load(
    store: castore.Store, private_config: Path, ran: list[str]
) -> None:
    ref = _saved(store, Frame(), "frame")
    human = _cli(store, "inspect", "frame")
    assert human.returncode == 1, human.stderr
    assert "3 refused" in human.stdout and f"refused  {HERE}.Frame" in human.stdout
    assert f"trusted={list(FRAME_REFUSED)!r}" in human.stdout
    config = private_config / safety.TRUSTED_GLOBALS_FILE
    assert f"or add these lines to {config}:" in human.stdout
    lines = human.stdout.split(f"{config}:\n", 1)[1].split()
    assert tuple(lines) == FRAME_REFUSED
    report = json.loads(_cli(store, "--json", "inspect", "frame").stdout)
    assert report["refused"] == list(FRAME_REFUSED) and report["loads"] is False
    assert {"name": "datetime.date", "use": "called", "trusted": False}.items() <= next(
        g for g in report["globals"] if g["name"] == "datetime.date"
    ).items()
    assert not ran

    config.write_text("\n".join(lines) + "\n")  # the one edit
    assert _cli(store, "inspect", "frame").returncode == 0
    assert list(store.load(ref).index.labels) == ["r1", "r2", "r3"]
    listed = json.loads(_cli(store, "--json", "info", "frame", "--globals").stdout)
    assert listed["admitted"] and listed["name"] == "frame"
    assert {g["name"] for g in listed["globals"] if g["trusted"]} == set(FRAME_REFUSED)
    assert "globals, 0 refused" in _cli(store, "info", "frame", "--globals").stdout


def test_the_help_names_the_new_commands() -> None:
    def help_of(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "castore", *args, "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout

    assert "castore inspect" in help_of() and "castore key trust" in help_of()
    assert "--globals" in help_of("info") and "trusted=[...]" in help_of("inspect")
    assert {"generate", "trust", "ls"} <= set(help_of("key").split())
