"""Byte groups (format version 2) against plain zstd-3 (version 1), chunk by chunk.

Run: ``PYTHONPATH=. python benchmarks/bench_codecs.py [--rounds 5] [--mib 16]``. Each
workload is cut into chunks by the default chunker and every chunk is encoded and
decoded by castore's own ChunkEncoder and decode_chunk, on one core, as a writer and a
reader do. Each round times both stores' encoders on the same chunks, alternating which
goes first; the medians are printed, with the stored size as a share of the raw size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from castore.engine.chunking import cut_whole
from castore.format.compression import ChunkEncoder, Codec, decode_chunk
from castore.format.config import ChunkerParams, StoreConfig

WORDS = [
    "the",
    "model",
    "store",
    "keeps",
    "every",
    "version",
    "of",
    "weights",
    "and",
    "tables",
    "verified",
    "by",
    "digest",
    "with",
    "chunks",
    "packs",
    "index",
    "manifests",
    "refs",
    "tags",
    "training",
    "run",
    "epoch",
    "loss",
    "accuracy",
    "learning",
    "rate",
]


def workloads(mib: int) -> dict[str, bytes]:
    """float32 weights as trained ones spread, their float16, bf16 and float64 forms, text."""
    rng = np.random.default_rng(14)
    count = mib * 1024 * 1024 // 4
    f32 = (rng.standard_normal(count) * 0.02).astype(np.float32)
    bf16 = (f32.view(np.uint32) >> 16).astype(np.uint16)  # the upper halves of float32
    lines = []
    size = 0
    while size < mib * 1024 * 1024:
        line = " ".join(rng.choice(WORDS, 12)) + f" {rng.integers(1e6)} {rng.random():.6f}\n"
        lines.append(line)
        size += len(line)
    return {
        "float32": f32.tobytes(),
        "float16": f32.astype(np.float16).tobytes()[: mib * 1024 * 1024],
        "bf16": bf16.tobytes()[: mib * 1024 * 1024],
        "float64": f32[: count // 2].astype(np.float64).tobytes(),
        "text": "".join(lines).encode()[: mib * 1024 * 1024],
    }


@dataclass
class Result:
    """One encoder's medians on one workload."""

    stored: int
    codecs: Counter[str]
    encode: list[float]
    decode: list[float]


def _round(config: StoreConfig, chunks: list[memoryview]) -> tuple[int, Counter[str], float, float]:
    encoder = ChunkEncoder(config)
    started = time.perf_counter()
    encoded = [encoder.encode(chunk) for chunk in chunks]
    encoding = time.perf_counter() - started
    started = time.perf_counter()
    for (codec, payload), chunk in zip(encoded, chunks, strict=True):
        decode_chunk(codec, memoryview(payload), len(chunk), "benchmark")
    decoding = time.perf_counter() - started
    codecs = Counter(Codec(codec).name.lower() for codec, _ in encoded)
    return sum(len(payload) for _, payload in encoded), codecs, encoding, decoding


def main() -> None:
    """Print stored ratio, encode and decode MB/s per core for each workload and store."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=16, help="MiB of each workload")
    args = parser.parse_args()
    stores = {"groups (v2)": StoreConfig(), "zstd-3 (v1)": StoreConfig(version=1)}
    print(f"{args.mib} MiB each, median of {args.rounds} rounds, one core")
    print(f"{'data':8} {'store':12} {'stored':>7} {'encode MB/s':>12} {'decode MB/s':>12}  chunks")
    for name, data in workloads(args.mib).items():
        chunks = cut_whole(data, ChunkerParams())
        results: dict[str, Result] = {}
        for round_number in range(args.rounds):
            order = list(stores.items())
            for label, config in order if round_number % 2 == 0 else order[::-1]:
                stored, codecs, encoding, decoding = _round(config, chunks)
                result = results.setdefault(label, Result(stored, codecs, [], []))
                result.encode.append(encoding)
                result.decode.append(decoding)
        megabytes = len(data) / 1e6
        for label, result in results.items():
            print(
                f"{name:8} {label:12} {result.stored / len(data):7.3f} "
                f"{megabytes / statistics.median(result.encode):12.0f} "
                f"{megabytes / statistics.median(result.decode):12.0f}  "
                + ", ".join(f"{codec} {count}" for codec, count in sorted(result.codecs.items()))
            )


if __name__ == "__main__":
    main()
