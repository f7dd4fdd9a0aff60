"""Open a store with a long history and save once more: time and backend requests, on moto.

A store gets N small saves, each of which writes one index object; automatic
consolidation is held off while it is built, so that it has N index objects, as stores
written before consolidation have. Then "open + one save" is measured cold (an empty
cache directory) and warm (the cache of an earlier open), first with the N objects, then
after `consolidate_index()` merged them into one. Each figure is the median of REPEATS
runs; the requests are castore's backend operations (`Store.requests()`) of the last run.

    .venv/bin/python -m benchmarks.open_history [N ...]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import s3fs

import castore
from castore.engine import repository
from castore.engine.cache import LocalCache
from tests.servers.moto_server import running_moto

BUCKET = "castore-open-history"
REPEATS = 3
DEFAULT_HISTORY = (100, 1000)


@contextmanager
def no_automatic_consolidation() -> Iterator[None]:
    """Let index objects pile up, as they did before writes consolidated them."""
    saved = repository.CONSOLIDATE_AT
    repository.CONSOLIDATE_AT = sys.maxsize
    try:
        yield
    finally:
        repository.CONSOLIDATE_AT = saved


def _payload(number: int) -> bytes:
    return f"version {number}\n".encode() * 64


def _open_and_save(
    url: str, options: dict[str, Any], cache: Path, number: int
) -> tuple[float, int]:
    started = time.perf_counter()
    with castore.open(url, cache=LocalCache(cache), **options) as store:
        store.save(_payload(number), "history/model", serializer="raw")
        seconds = time.perf_counter() - started
        return seconds, store.requests().total


def _measure(
    url: str, options: dict[str, Any], work: Path, counter: list[int]
) -> dict[str, tuple[float, int]]:
    figures = {}
    warm_cache = work / f"warm-{uuid.uuid4().hex}"
    _open_and_save(url, options, warm_cache, counter[0])  # fills the warm cache
    counter[0] += 1
    for label in ("cold", "warm"):
        runs = []
        for _ in range(REPEATS):
            cache = warm_cache if label == "warm" else work / f"cold-{uuid.uuid4().hex}"
            runs.append(_open_and_save(url, options, cache, counter[0]))
            counter[0] += 1
        figures[label] = (statistics.median(s for s, _ in runs), runs[-1][1])
    return figures


def run(history: tuple[int, ...], work: Path) -> list[tuple[int, str, str, float, int]]:
    """Rows (N, index state, cold or warm, median seconds, requests)."""
    rows = []
    with running_moto(work / "moto.log") as server:
        options = {"endpoint_url": server.endpoint_url, "key": server.key, "secret": server.secret}
        s3fs.S3FileSystem(**options, skip_instance_cache=True).mkdir(BUCKET)
        for saves in history:
            url = f"s3://{BUCKET}/{uuid.uuid4().hex}"
            with no_automatic_consolidation():
                with castore.init(url, cache=LocalCache(work / "builder"), **options) as store:
                    for number in range(saves):
                        store.save(_payload(number), "history/model", serializer="raw")
                counter = [saves]
                state = f"{saves} index objects"
                for label, (seconds, requests) in _measure(url, options, work, counter).items():
                    rows.append((saves, state, label, seconds, requests))
            with castore.open(url, cache=LocalCache(work / "builder"), **options) as store:
                merged = store.consolidate_index()
            state = f"consolidated ({merged} merged)"
            for label, (seconds, requests) in _measure(url, options, work, counter).items():
                rows.append((saves, state, label, seconds, requests))
    return rows


def main() -> None:
    """Print the table for the history lengths given (default 100 and 1000)."""
    history = tuple(int(a) for a in sys.argv[1:]) or DEFAULT_HISTORY
    with tempfile.TemporaryDirectory(prefix="castore-open-history-") as work:
        rows = run(history, Path(work))
    print("| earlier saves | index | cache | open + save, s (median) | requests |")
    print("| ---: | --- | --- | ---: | ---: |")
    for saves, state, label, seconds, requests in rows:
        print(f"| {saves} | {state} | {label} | {seconds:.2f} | {requests} |")


if __name__ == "__main__":
    main()
