"""The chunk index at scale: RAM per chunk, batched lookups per second, warm open time.

A local store gets a synthetic index of N chunks with random ids, shaped as real writes
shape it: 16 MiB packs of 64 KiB chunks (256 chunks a pack), 100 packs an index object,
written into the store's index/ folder through the store's backend. Then:

- cold open: an Index with an empty local cache reads every object from the store,
  keeps verified copies and saves the merged table (engine/tablefile.py) for next time;
- warm open: the next Index maps the saved table and lists index/ (median of rounds);
- rebuild: an open whose cache holds the copies but no saved table decodes every copy;
- RAM per chunk: heap the rebuilt Index holds (tracemalloc), divided by N, and the peak
  during that open; a mapped table takes its file's size in page cache instead;
- lookups per second: batches of 64 ids (a write group) through `contains_many`
  (the writer's dedup check) and `lookup_many` (locations), hits and misses apart.

    PYTHONPATH=. .venv/bin/python benchmarks/index_scale.py --chunks 1000000 --rounds 3
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import castore
from castore.engine.cache import LocalCache
from castore.engine.index import Index
from castore.format import layout
from castore.format.compression import Codec
from castore.format.index import encode_index_tables
from castore.format.packs import ENTRY, HEADER

CHUNKS_PER_PACK = 256
PACKS_PER_OBJECT = 100
CHUNK = 64 * 1024
BATCH = 64
QUERIES = 200_000


def _table(rng: random.Random) -> tuple[bytes, bytes, list[bytes]]:
    """A pack's id, entry table and chunk ids: compressed 64 KiB chunks, back to back."""
    ids = [rng.randbytes(32) for _ in range(CHUNKS_PER_PACK)]
    stored = [rng.randrange(CHUNK // 2, CHUNK) for _ in ids]
    offsets = [len(HEADER)]
    for size in stored[:-1]:
        offsets.append(offsets[-1] + size)
    table = b"".join(
        ENTRY.pack(chunk_id, offset, size, CHUNK, Codec.ZSTD)
        for chunk_id, offset, size in zip(ids, offsets, stored, strict=True)
    )
    return hashlib.sha256(table).digest(), table, ids


def build(store: castore.Store, chunks: int, seed: int = 1) -> list[bytes]:
    """Write the synthetic index objects into the store; return a sample of chunk ids."""
    rng = random.Random(seed)
    backend = store.repository.backend
    sample: list[bytes] = []
    packs = max(1, chunks // CHUNKS_PER_PACK)
    for first in range(0, packs, PACKS_PER_OBJECT):
        tables = []
        for _ in range(min(PACKS_PER_OBJECT, packs - first)):
            pack_id, table, ids = _table(rng)
            tables.append((pack_id, table))
            sample.append(ids[rng.randrange(len(ids))])
        data = encode_index_tables(tables)
        backend.write(layout.index_path(hashlib.sha256(data).digest()), data)
    return sample


def _open(store: castore.Store, cache: LocalCache, pool: ThreadPoolExecutor) -> Index:
    repo = store.repository
    index = Index(repo.backend, pool, cache.index_objects(repo.config.store_id, repo.url))
    index.refresh()
    return index


def _per_second(run: Callable[[list[bytes]], object], queries: list[bytes]) -> float:
    batches = [queries[at : at + BATCH] for at in range(0, len(queries), BATCH)]
    started = time.perf_counter()
    for batch in batches:
        run(batch)
    return len(queries) / (time.perf_counter() - started)


def measure(chunks: int, rounds: int, work: Path) -> dict[str, float]:
    """Every figure for one index size: medians over `rounds` where timed."""
    store = castore.init(str(work / "store"))
    started = time.perf_counter()
    sample = build(store, chunks)
    built = time.perf_counter() - started
    cache = LocalCache(work / "cache")
    repo = store.repository
    table = cache.index_objects(repo.config.store_id, repo.url).table
    with ThreadPoolExecutor(4) as pool:
        started = time.perf_counter()
        index = _open(store, cache, pool)  # reads the store, keeps copies, saves the table
        cold = time.perf_counter() - started
        count = len(index)
        warm = []
        for _ in range(rounds):
            del index
            gc.collect()
            started = time.perf_counter()
            index = _open(store, cache, pool)
            warm.append(time.perf_counter() - started)
        rng = random.Random(2)
        hits = [rng.choice(sample) for _ in range(QUERIES)]
        misses = [rng.randbytes(32) for _ in range(QUERIES)]
        figures = {
            "chunks": count,
            "build index objects (s)": built,
            "cold open (s)": cold,
            "warm open, saved table (s)": statistics.median(warm),
        }
        for label, run in (
            ("contains_many", index.contains_many),
            ("lookup_many", index.lookup_many),
        ):
            for kind, queries in (("hits", hits), ("misses", misses)):
                rates = [_per_second(run, queries) for _ in range(rounds)]
                figures[f"{label} {kind} (/s)"] = statistics.median(rates)
        figures["saved table per chunk (B)"] = table.stat().st_size / count
        del index
        gc.collect()
        table.unlink()
        started = time.perf_counter()
        index = _open(store, cache, pool)  # decodes every copy, saves the table again
        figures["warm open, no saved table (s)"] = time.perf_counter() - started
        del index
        table.unlink()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        index = _open(store, cache, pool)
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(index) == count
        figures["RAM per chunk, table in heap (B)"] = (held - before) / count
        figures["peak RAM per chunk during that open (B)"] = (peak - before) / count
    store.close()
    return figures


def main() -> None:
    """Parse arguments, measure, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for chunks in args.chunks:
        with tempfile.TemporaryDirectory(prefix="castore-index-scale-") as work:
            rows.append(measure(chunks, args.rounds, Path(work)))
    print("| figure | " + " | ".join(f"{row['chunks']:,} chunks" for row in rows) + " |")
    print("| --- |" + " --- |" * len(rows))
    for key in rows[0]:
        if key != "chunks":
            print(f"| {key} | " + " | ".join(f"{row[key]:,.2f}" for row in rows) + " |")


if __name__ == "__main__":
    main()
