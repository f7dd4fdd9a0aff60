"""castore against plain s3fs on a local moto S3 server: put and get throughput."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import s3fs

import castore
from benchmarks.local_disk import checked_get
from benchmarks.measure import Case, Measurement, run_rounds, timed
from tests.servers.moto_server import running_moto
from tests.servers.radosgw import S3Server

BUCKET = "castore-bench"


@dataclass(frozen=True)
class S3Results:
    """Throughputs measured on moto, and the bytes the castore store holds there."""

    stream_bytes: int
    throughput: dict[str, Measurement]
    stored_bytes: int


def _options(server: S3Server) -> dict[str, Any]:
    return {"endpoint_url": server.endpoint_url, "key": server.key, "secret": server.secret}


def _castore_put_case(fs: s3fs.S3FileSystem, options: dict[str, Any], source: Path) -> Case:
    """Put into a fresh store under a new prefix each run; the prefix is removed afterwards."""

    def run_once() -> float:
        prefix = f"{BUCKET}/put-{uuid.uuid4().hex}"
        try:
            with castore.init(f"s3://{prefix}", **options) as store:
                return timed(lambda: store.put(source))
        finally:
            fs.rm(prefix, recursive=True)

    return Case("s3_put", "castore put (Path, fresh S3 store)", source.stat().st_size, run_once)


def _get_cases(store: castore.Store, digest: str, size: int, cache_dir: Path) -> list[Case]:
    """castore get with castore's local chunk cache emptied first, and served from it."""

    def get() -> None:
        checked_get(store, digest, size)

    def from_s3() -> float:
        shutil.rmtree(cache_dir, ignore_errors=True)
        return timed(get)

    def from_cache() -> float:
        get()  # untimed: makes sure the cache holds every chunk
        return timed(get)

    return [
        Case("s3_get", "castore get (bytes, S3, local cache emptied first)", size, from_s3),
        Case("s3_get_cached", "castore get (bytes, S3, from the local cache)", size, from_cache),
    ]


def _s3fs_cases(fs: s3fs.S3FileSystem, data: bytes) -> list[Case]:
    """One object holding the same bytes: upload with pipe_file, download with cat_file."""
    key = f"{BUCKET}/plain/stream.pkl"

    def download() -> None:
        if len(fs.cat_file(key)) != len(data):
            raise RuntimeError("s3fs cat_file returned the wrong number of bytes")

    def upload() -> None:
        fs.pipe_file(key, data)

    return [
        Case("s3fs_pipe", "s3fs pipe_file (one object)", len(data), lambda: timed(upload)),
        Case("s3fs_cat", "s3fs cat_file (one object)", len(data), lambda: timed(download)),
    ]


def run(
    source: Path, work_dir: Path, cache_dir: Path, runs: int, log: Callable[[str], None]
) -> S3Results:
    """Start moto, then measure castore and s3fs on the same bytes, `runs` rounds each.

    `cache_dir` is castore's local cache directory (CASTORE_CACHE_DIR).
    """
    data = source.read_bytes()
    with running_moto(work_dir / "moto.log") as server:
        options = _options(server)
        fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
        fs.mkdir(BUCKET)
        with castore.init(f"s3://{BUCKET}/reference", **options) as store:
            log("put into the reference S3 store")
            digest = store.put(source)
            stored = int(fs.du(f"{BUCKET}/reference"))
            fs.pipe_file(f"{BUCKET}/plain/stream.pkl", data)
            cases = [
                _castore_put_case(fs, options, source),
                *_get_cases(store, digest, len(data), cache_dir),
                *_s3fs_cases(fs, data),
            ]
            throughput = run_rounds(cases, runs, log)
    return S3Results(len(data), throughput, stored)
