"""Peak memory of castore operations on a large file, each in a fresh Python process.

The child (``python -m benchmarks.memory_probe OPERATION STORE FILE [DIGEST]``) imports
castore, opens the store, records its RSS as the baseline, runs the operation and prints
one JSON line: baseline RSS, peak RSS, seconds, and the digest.

The peak is read two ways. ``ru_maxrss`` is not this process's own peak on Linux: exec
carries over the high-water mark of the memory image it replaces, and a freshly forked
child's image is a copy of its parent's, so the child's ru_maxrss starts at the launching
process's peak RSS. ``VmHWM`` (in /proc/self/status) is the peak of this process's own
memory since exec, so it is the figure the target is judged on; ru_maxrss is reported too.
"""

from __future__ import annotations

import gc
import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import castore
from benchmarks.measure import Measurement, MiB, Series

STREAM_READ_SIZE = 1 * MiB
OPERATIONS = ("put", "get_file", "open_stream")
LABELS = {
    "put": "castore put (Path, fresh store)",
    "get_file": "castore get_file",
    "open_stream": "castore open_stream, read 1 MiB at a time",
}


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _ru_maxrss() -> int:
    """getrusage's peak resident set size, in bytes (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _put(store: castore.Store, path: Path, digest: str) -> str:
    return store.put(path)


def _get_file(store: castore.Store, path: Path, digest: str) -> str:
    store.get_file(digest, path)
    return digest


def _open_stream(store: castore.Store, path: Path, digest: str) -> str:
    with store.open_stream(digest) as stream:
        while stream.read(STREAM_READ_SIZE):
            pass
    return digest


_RUNNERS: dict[str, Callable[[castore.Store, Path, str], str]] = {
    "put": _put,
    "get_file": _get_file,
    "open_stream": _open_stream,
}


def child_main(argv: list[str]) -> int:
    """Run one operation in this (fresh) process and print what it cost as JSON."""
    operation, location, path, digest = (*argv, "")[:4]
    store = castore.init(location) if operation == "put" else castore.open(location)
    with store:
        gc.collect()
        baseline = _status_bytes("VmRSS")
        start = time.perf_counter()
        digest = _RUNNERS[operation](store, Path(path), digest)
        seconds = time.perf_counter() - start
        sample = {
            "baseline": baseline,
            "peak": _status_bytes("VmHWM"),
            "ru_maxrss": _ru_maxrss(),
            "seconds": seconds,
            "digest": digest,
        }
    print(json.dumps(sample))
    return 0


FIGURES = {
    "above_hwm": "Peak RSS above baseline (VmHWM - baseline)",
    "above_maxrss": "ru_maxrss - baseline (includes the launching process's peak, see above)",
    "baseline": "Baseline RSS (VmRSS after import and store open)",
}
"""Memory figures of each probe, in MiB: key -> description."""


@dataclass(frozen=True)
class MemoryResults:
    """Memory figures (MiB, FIGURES) and throughput of each operation on a large stream."""

    stream_bytes: int
    mib: dict[str, dict[str, Series]]
    """figure -> operation -> values over the runs."""
    throughput: dict[str, Measurement]


def _figures(sample: dict[str, float | str]) -> dict[str, float]:
    baseline = float(sample["baseline"])
    return {
        "above_hwm": (float(sample["peak"]) - baseline) / MiB,
        "above_maxrss": (float(sample["ru_maxrss"]) - baseline) / MiB,
        "baseline": baseline / MiB,
    }


def _probe(repo: Path, args: list[str]) -> dict[str, float | str]:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory_probe", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"memory probe {args[0]} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _one_round(repo: Path, work_dir: Path, source: Path) -> dict[str, dict[str, float | str]]:
    """Put `source` into a fresh store, read it back both ways; remove what was written."""
    store = work_dir / "memory-store"
    copy = work_dir / "memory-copy.bin"
    shutil.rmtree(store, ignore_errors=True)
    try:
        put = _probe(repo, ["put", str(store), str(source)])
        digest = str(put["digest"])
        got = _probe(repo, ["get_file", str(store), str(copy), digest])
        if copy.stat().st_size != source.stat().st_size:
            raise RuntimeError("get_file wrote the wrong number of bytes")
        streamed = _probe(repo, ["open_stream", str(store), str(source), digest])
    finally:
        shutil.rmtree(store, ignore_errors=True)
        copy.unlink(missing_ok=True)
    return {"put": put, "get_file": got, "open_stream": streamed}


def run(
    repo: Path, work_dir: Path, source: Path, runs: int, log: Callable[[str], None]
) -> MemoryResults:
    """Probe every operation on `source` in fresh processes, `runs` rounds."""
    size = source.stat().st_size
    values: dict[str, dict[str, list[float]]] = {
        figure: {op: [] for op in OPERATIONS} for figure in FIGURES
    }
    throughput = {op: Measurement(LABELS[op], size) for op in OPERATIONS}
    for round_number in range(1, runs + 1):
        for op, sample in _one_round(repo, work_dir, source).items():
            for figure, value in _figures(sample).items():
                values[figure][op].append(value)
            throughput[op].seconds.append(float(sample["seconds"]))
            log(
                f"  round {round_number}/{runs} {LABELS[op]}: peak "
                f"{values['above_hwm'][op][-1]:.0f} MiB above baseline, "
                f"{throughput[op].rates.values[-1]:.1f} MB/s"
            )
    mib = {
        figure: {op: Series(tuple(v)) for op, v in by_op.items()}
        for figure, by_op in values.items()
    }
    return MemoryResults(size, mib, throughput)


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
