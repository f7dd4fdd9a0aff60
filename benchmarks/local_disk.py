"""joblib against castore on one local disk: write and read throughput, dedup, storage."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np

import castore
from benchmarks.measure import Case, Measurement, du_bytes, run_rounds, timed
from benchmarks.workload import dump
from castore.engine.writer import WriteStats


@dataclass(frozen=True)
class Workload:
    """The tensors, and their plain ``joblib.dump`` file whose bytes castore stores."""

    work_dir: Path
    tensors: dict[str, np.ndarray]
    source: Path

    @property
    def size(self) -> int:
        """Bytes of the stream (the plain dump file)."""
        return self.source.stat().st_size


@dataclass(frozen=True)
class DiskUsage:
    """``du -s`` of a directory: allocated blocks and apparent sizes, in bytes."""

    allocated: int
    apparent: int

    @classmethod
    def of(cls, path: Path) -> DiskUsage:
        """Measure `path` now."""
        return cls(du_bytes(path), du_bytes(path, apparent=True))

    def __sub__(self, other: DiskUsage) -> DiskUsage:
        return DiskUsage(self.allocated - other.allocated, self.apparent - other.apparent)


@dataclass(frozen=True)
class LocalResults:
    """Everything measured on the local disk."""

    stream_bytes: int
    throughput: dict[str, Measurement]
    first_put: WriteStats
    second_put: WriteStats
    store_usage: DiskUsage
    second_put_growth: DiskUsage


def checked_get(store: castore.Store, digest: str, size: int) -> None:
    """``store.get(digest)``, failing unless it returns `size` bytes."""
    if len(store.get(digest)) != size:
        raise RuntimeError("castore get returned the wrong number of bytes")


def _put(store: castore.Store, source: Path) -> tuple[str, WriteStats]:
    """Put `source` and return its digest and what the put added."""
    digest = store.put(source)
    if store.last_write is None:
        raise RuntimeError("castore put did not record its WriteStats")
    return digest, store.last_write


def _check_tensors(loaded: object, expected: int) -> None:
    if not isinstance(loaded, dict) or len(loaded) != expected:
        raise RuntimeError("joblib.load returned something other than the dumped tensors")


def _dump_case(key: str, label: str, work: Workload, compress: int, durable: bool = False) -> Case:
    target = work.work_dir / f"{key}.pkl"

    def run_once() -> float:
        target.unlink(missing_ok=True)
        return timed(lambda: dump(work.tensors, target, compress, durable))

    return Case(key, label, work.size, run_once)


def _fresh_store_put_case(work: Workload) -> Case:
    location = work.work_dir / "fresh-store"

    def run_once() -> float:
        shutil.rmtree(location, ignore_errors=True)
        with castore.init(location) as store:
            return timed(lambda: store.put(work.source))

    return Case("put", "castore put (Path, fresh store)", work.size, run_once)


def _read_cases(work: Workload, store: castore.Store, digest: str) -> list[Case]:
    """Reads of the same stream: castore get and joblib.load through castore or from the file."""
    count = len(work.tensors)

    def load_from_store() -> None:
        with store.open_stream(digest) as stream:
            _check_tensors(joblib.load(stream), count)

    def load_from_file() -> None:
        _check_tensors(joblib.load(work.source), count)

    def case(key: str, label: str, operation: Callable[[], None]) -> Case:
        return Case(key, label, work.size, lambda: timed(operation))

    return [
        case("get", "castore get (bytes)", lambda: checked_get(store, digest, work.size)),
        case("load_stream", "joblib.load(store.open_stream(digest))", load_from_store),
        case("load_plain", "joblib.load(plain file)", load_from_file),
        case(
            "put_again",
            "castore put again (every chunk already stored)",
            lambda: store.put(work.source),
        ),
    ]


def run(work: Workload, runs: int, log: Callable[[str], None]) -> LocalResults:
    """Measure joblib and castore on the local disk, `runs` interleaved rounds each."""
    location = work.work_dir / "store"
    with castore.init(location) as store:
        log("first put into the reference store, then the same stream again")
        digest, first_put = _put(store, work.source)
        store_usage = DiskUsage.of(location)
        _, second_put = _put(store, work.source)
        growth = DiskUsage.of(location) - store_usage
        cases = [
            _dump_case("dump_z3", "joblib.dump(compress=3)", work, compress=3),
            _dump_case("dump_plain", "joblib.dump (uncompressed)", work, compress=0),
            _dump_case(
                "dump_fsync", "joblib.dump (uncompressed) + fsync", work, compress=0, durable=True
            ),
            _fresh_store_put_case(work),
            *_read_cases(work, store, digest),
        ]
        throughput = run_rounds(cases, runs, log)
    return LocalResults(work.size, throughput, first_put, second_put, store_usage, growth)
