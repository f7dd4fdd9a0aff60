"""verify and gc on a store of model versions: time, and S3 requests per GB stored.

Builds the same store on the local disk and on a moto S3 server: versions of a model of
float32 tensors where each version changes a few tensors, then deletes half of them, and
times `verify` (structural), `verify --read-data` and `gc`. On S3 it counts the API calls
castore makes (botocore's before-call events on s3fs's client), per GB stored.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import s3fs

import castore
from benchmarks.measure import MiB
from tests.servers.moto_server import running_moto

BUCKET = "castore-maintenance-bench"
VERSIONS = 6
CHANGED_PER_VERSION = 3
TENSORS = 32


@dataclass(frozen=True)
class MaintenanceFigures:
    """One backend's figures."""

    backend: str
    stored_bytes: int
    seconds: dict[str, float]
    requests: dict[str, int] | None

    def per_gb(self, operation: str) -> float | None:
        """S3 requests of `operation` per GB (1e9 bytes) stored."""
        if self.requests is None:
            return None
        return self.requests[operation] / (self.stored_bytes / 1e9)


class RequestCounter:
    """Counts the S3 API calls made through an s3fs filesystem's botocore client."""

    def __init__(self, fs: s3fs.S3FileSystem) -> None:
        fs.ls(BUCKET)  # make sure the client exists before hooking it
        self.count = 0
        fs.s3.meta.events.register("before-call.s3", self._seen)

    def _seen(self, **_: Any) -> None:
        self.count += 1


def _populate(store: castore.Store, model_bytes: int) -> None:
    """VERSIONS versions, each changing CHANGED_PER_VERSION tensors; then delete half."""
    rng = np.random.default_rng(1)
    count = TENSORS
    model = {
        f"layer{i:02d}": rng.standard_normal(model_bytes // count // 4, dtype=np.float32)
        for i in range(count)
    }
    keys = sorted(model)
    for number in range(VERSIONS):
        for key in keys[number * CHANGED_PER_VERSION : (number + 1) * CHANGED_PER_VERSION]:
            model[key] = rng.standard_normal(model[key].shape, dtype=np.float32)
        store.save(model, "bench/model")
    for number in range(1, VERSIONS + 1, 2):
        store.delete(f"bench/model:{number}")


def _measure(
    store: castore.Store, backend: str, counter: RequestCounter | None
) -> MaintenanceFigures:
    operations: dict[str, Callable[[], object]] = {
        "verify": lambda: store.verify(),
        "verify --read-data": lambda: store.verify(read_data=True),
        "gc": lambda: store.gc(),
    }
    stored = store.stats().stored_bytes
    seconds, requests = {}, {}
    for label, operation in operations.items():
        before = counter.count if counter else 0
        started = time.perf_counter()
        operation()
        seconds[label] = time.perf_counter() - started
        requests[label] = (counter.count - before) if counter else 0
    return MaintenanceFigures(backend, stored, seconds, requests if counter else None)


def run_maintenance(work_dir: Path, model_bytes: int = 256 * MiB) -> list[MaintenanceFigures]:
    """Build the store locally and on moto; measure verify and gc on each."""
    figures = []
    with castore.init(work_dir / "maintenance-store") as local:
        _populate(local, model_bytes)
        figures.append(_measure(local, "local disk", None))
    with running_moto(work_dir / "moto-maintenance.log") as server:
        options = {"endpoint_url": server.endpoint_url, "key": server.key, "secret": server.secret}
        fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
        fs.mkdir(BUCKET)
        with castore.init(f"s3://{BUCKET}/{uuid.uuid4().hex}", **options) as remote:
            _populate(remote, model_bytes)
            counter = RequestCounter(remote.repository.backend.inner.fs)  # type: ignore[attr-defined]
            figures.append(_measure(remote, "S3 (moto)", counter))
    return figures


def markdown(figures: list[MaintenanceFigures], model_bytes: int) -> str:
    """The RESULTS.md section."""
    lines = [
        "## Maintenance: verify and gc (issue 5)",
        "",
        f"A store holding {VERSIONS} versions of a {model_bytes // MiB} MiB model of float32 "
        f"tensors, each version changing {CHANGED_PER_VERSION} tensors, after deleting every "
        "other version; `verify` is structural, `verify --read-data` re-reads and re-hashes "
        "every pack, then `gc` deletes what the deleted versions alone used. S3 requests are "
        "the API calls castore's s3fs client made, per GB (1e9 bytes) stored before gc.",
        "",
        "| backend | stored MB | operation | seconds | S3 requests | requests per GB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for figure in figures:
        for operation, seconds in figure.seconds.items():
            requests = figure.requests[operation] if figure.requests else None
            per_gb = figure.per_gb(operation)
            lines.append(
                f"| {figure.backend} | {figure.stored_bytes / 1e6:,.0f} | {operation} | "
                f"{seconds:.2f} | {'-' if requests is None else requests} | "
                f"{'-' if per_gb is None else f'{per_gb:,.0f}'} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys
    import tempfile

    size = int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 64 * MiB
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as scratch:
        print(markdown(run_maintenance(Path(scratch), size), size))
