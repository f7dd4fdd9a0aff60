"""Repeated timings, their summaries, and the disk usage of a directory."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MB = 1_000_000
"""Throughputs are in MB/s, with 1 MB = 10^6 bytes."""
MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class Series:
    """Repeated values of one figure, summarised by median, minimum and maximum."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        """The median value."""
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        """The smallest value."""
        return min(self.values)

    @property
    def high(self) -> float:
        """The largest value."""
        return max(self.values)


@dataclass
class Measurement:
    """Timed runs of one operation that each moved `nbytes` bytes."""

    label: str
    nbytes: int
    seconds: list[float] = field(default_factory=list)

    @property
    def rates(self) -> Series:
        """Throughput of each run in MB/s."""
        return Series(tuple(self.nbytes / s / MB for s in self.seconds))


@dataclass(frozen=True)
class Case:
    """One benchmarked operation: `run_once` does untimed set-up, then returns timed seconds."""

    key: str
    label: str
    nbytes: int
    run_once: Callable[[], float]


def timed(operation: Callable[[], object]) -> float:
    """Seconds that `operation()` takes (wall clock)."""
    start = time.perf_counter()
    operation()
    return time.perf_counter() - start


def run_rounds(
    cases: Sequence[Case], runs: int, log: Callable[[str], None]
) -> dict[str, Measurement]:
    """Run every case once per round, `runs` rounds, interleaved so that noise spreads evenly.

    Dirty pages are flushed (untimed) before each run, so that no run pays for the
    write-back of the one before.
    """
    results = {case.key: Measurement(case.label, case.nbytes) for case in cases}
    for round_number in range(1, runs + 1):
        for case in cases:
            os.sync()
            seconds = case.run_once()
            results[case.key].seconds.append(seconds)
            log(
                f"  round {round_number}/{runs} {case.label}: "
                f"{seconds:.2f} s, {case.nbytes / seconds / MB:.1f} MB/s"
            )
    return results


def du_bytes(path: Path, *, apparent: bool = False) -> int:
    """What ``du -s`` reports for `path`, in bytes (allocated blocks, or apparent sizes)."""
    command = ["du", "-s", "--block-size=1"]
    if apparent:
        command.append("--apparent-size")
    output = subprocess.run(
        [*command, str(path)], capture_output=True, text=True, check=True
    ).stdout
    return int(output.split()[0])
