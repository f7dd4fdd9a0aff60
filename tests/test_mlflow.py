"""castore as MLflow's artifact repository: real mlflow-skinny, a sqlite tracking store,
and castore stores on a local folder and on S3 (moto's server on loopback)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import (
    get_artifact_repository,
    get_registered_artifact_repositories,
)

import castore
from castore.integrations.mlflow import CastoreArtifactRepository, decode_component, encode_path
from tests.conftest import BUCKET
from tests.helpers import pattern
from tests.servers.radosgw import S3Server

FILES = {
    "MLmodel": b"flavors: {}\n",
    "model/weights.bin": pattern(300_000, seed=1),
    "model/Sub Dir/notes_v2.txt": "é and _ survive\n".encode(),
    "model/.hidden": b"dot file\n",
}


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One sqlite tracking store for the module: creating its tables takes seconds."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('tracking')}/mlflow.db")
    yield
    mlflow.set_tracking_uri(previous)


def _experiment(artifact_location: str) -> str:
    return mlflow.create_experiment(uuid.uuid4().hex, artifact_location=artifact_location)


@pytest.fixture
def local_store(tmp_path: Path, tracking: None) -> tuple[Path, str]:
    """A local store, and an experiment whose artifacts go into it."""
    root = tmp_path / "store"
    castore.init(root).close()
    return root, _experiment(f"castore+file://{root}")


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)


def _read_tree(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }


def _size_on_disk(folder: Path) -> int:
    return sum(path.lstat().st_blocks * 512 for path in folder.rglob("*"))


def _round_trip(experiment: str, tmp_path: Path) -> str:
    """Log FILES (one file alone, the rest as a directory), check that listing and download
    give them back byte for byte, and return the run's id."""
    source = tmp_path / "source"
    _write(source, FILES)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifact(str(source / "MLmodel"))
        mlflow.log_artifacts(str(source / "model"), artifact_path="model")
    run_id = run.info.run_id
    listed = mlflow.artifacts.list_artifacts(run_id=run_id)
    assert [(i.path, i.is_dir, i.file_size) for i in listed] == [
        ("MLmodel", False, len(FILES["MLmodel"])),
        ("model", True, None),
    ]
    nested = mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="model/Sub Dir")
    notes = "model/Sub Dir/notes_v2.txt"
    assert [(i.path, i.file_size) for i in nested] == [(notes, len(FILES[notes]))]
    assert mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="MLmodel") == []
    target = tmp_path / "downloaded"
    target.mkdir()
    mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(target))
    assert _read_tree(target) == FILES
    one = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="model/weights.bin", dst_path=str(tmp_path)
    )
    assert Path(one).read_bytes() == FILES["model/weights.bin"]
    return run_id


def test_both_schemes_reach_the_repository_through_the_entry_points() -> None:
    registered = get_registered_artifact_repositories()
    assert registered["castore+file"] is CastoreArtifactRepository
    assert registered["castore+s3"] is CastoreArtifactRepository


def test_paths_map_to_names_and_back() -> None:
    name = encode_path("model/MLmodel/Sub Dir/_x.-y/é")
    assert name == "model/_4d_4cmodel/_53ub_20_44ir/_5fx.-y/_c3_a9"
    assert [decode_component(part) for part in name.split("/")] == [
        "model",
        "MLmodel",
        "Sub Dir",
        "_x.-y",
        "é",
    ]
    assert encode_path(".env/-x") == "_2eenv/_2dx"
    for bad in ("a/../b", "a/./b", "a//b"):
        with pytest.raises(castore.InvalidInputError, match="names no file"):
            encode_path(bad)


def test_artifacts_round_trip_through_a_local_store(
    local_store: tuple[Path, str], tmp_path: Path
) -> None:
    root, experiment = local_store
    run_id = _round_trip(experiment, tmp_path)
    with castore.open(root) as store:
        assert sorted(store.names()) == [
            f"mlflow/{run_id}/artifacts/_4d_4cmodel",
            f"mlflow/{run_id}/artifacts/model/_2ehidden",
            f"mlflow/{run_id}/artifacts/model/_53ub_20_44ir/notes_5fv2.txt",
            f"mlflow/{run_id}/artifacts/model/weights.bin",
        ]


def test_a_second_run_logging_the_same_artifact_adds_under_64_kib(
    local_store: tuple[Path, str], tmp_path: Path
) -> None:
    root, experiment = local_store
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(pattern(2 * 1024 * 1024, seed=7))
    added = []
    for _ in range(2):
        before = _size_on_disk(root)
        with mlflow.start_run(experiment_id=experiment):
            mlflow.log_artifact(str(artifact))
        added.append(_size_on_disk(root) - before)
    assert added[0] > 2 * 1024 * 1024  # the measure sees the first run's data
    assert added[1] < 64 * 1024, added


class AddOne(mlflow.pyfunc.PythonModel):
    """A model MLflow logs with its MLmodel, environment files and pickle."""

    def predict(self, context: object, model_input: list[int]) -> list[int]:
        return [x + 1 for x in model_input]


def test_a_logged_model_loads_back_from_a_location_inside_the_store(
    tmp_path: Path, tracking: None
) -> None:
    root = tmp_path / "store"
    castore.init(root).close()
    experiment = _experiment(f"castore+file://{root}/team/churn")
    with mlflow.start_run(experiment_id=experiment):
        model = mlflow.pyfunc.log_model(name="model", python_model=AddOne(), pip_requirements=[])
    assert mlflow.pyfunc.load_model(model.model_uri).predict([1, 2]) == [2, 3]
    with castore.open(root) as store:
        names = store.names()
    where = f"mlflow/team/churn/models/{model.model_id}/artifacts"
    assert f"{where}/_4d_4cmodel" in names and f"{where}/python_5fmodel.pkl" in names
    assert all(name.startswith(f"{where}/") for name in names)


def test_logging_a_path_again_overwrites_and_castore_keeps_the_history(
    local_store: tuple[Path, str], tmp_path: Path
) -> None:
    root, experiment = local_store
    artifact = tmp_path / "metrics.json"
    with mlflow.start_run(experiment_id=experiment) as run:
        for content in (b'{"auc": 0.8}', b'{"auc": 0.9}', b'{"auc": 0.9}'):
            artifact.write_bytes(content)
            mlflow.log_artifact(str(artifact), artifact_path="eval")
    got = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="eval/metrics.json", dst_path=str(tmp_path / "out")
    )
    assert Path(got).read_bytes() == b'{"auc": 0.9}'
    with castore.open(root) as store:
        assert store.versions(f"mlflow/{run.info.run_id}/artifacts/eval/metrics.json") == [1, 2]


def test_deleting_artifacts_deletes_their_versions(
    local_store: tuple[Path, str], tmp_path: Path
) -> None:
    root, experiment = local_store
    run_id = _round_trip(experiment, tmp_path)
    repository = get_artifact_repository(mlflow.get_run(run_id).info.artifact_uri)
    repository.delete_artifacts("model/Sub Dir")
    listed = mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="model")
    assert [i.path for i in listed] == ["model/.hidden", "model/weights.bin"]
    repository.delete_artifacts()
    assert mlflow.artifacts.list_artifacts(run_id=run_id) == []
    with castore.open(root) as store:
        assert store.names() == []


def test_errors_are_castore_errors_or_mlflows(
    local_store: tuple[Path, str], tmp_path: Path
) -> None:
    _, experiment = local_store
    artifact = tmp_path / "a.txt"
    artifact.write_bytes(b"a")
    with (
        mlflow.start_run(experiment_id=experiment) as run,
        pytest.raises(castore.InvalidInputError, match="names no file"),
    ):
        mlflow.log_artifact(str(artifact), artifact_path="../escape")
    repository = get_artifact_repository(run.info.artifact_uri)
    with pytest.raises(MlflowException, match=r"missing\.txt") as missing:
        repository.download_artifacts("missing.txt", dst_path=str(tmp_path))
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST", missing.value.message
    nowhere = _experiment(f"castore+file://{tmp_path / 'no-store'}")
    with (
        mlflow.start_run(experiment_id=nowhere),
        pytest.raises(castore.NotAStoreError, match="castore init"),
    ):
        mlflow.log_artifact(str(artifact))
    assert not (tmp_path / "no-store").exists()


def test_artifacts_round_trip_through_a_store_on_s3(
    moto_s3: S3Server, tracking: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.secret)
    url = f"s3://{BUCKET}/mlflow-{uuid.uuid4().hex}"
    castore.init(url).close()
    run_id = _round_trip(_experiment(f"castore+{url}"), tmp_path)
    with castore.open(url) as store:
        assert len(store.names()) == len(FILES)
        assert all(name.startswith(f"mlflow/{run_id}/artifacts/") for name in store.names())
