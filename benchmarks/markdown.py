"""Pieces of RESULTS.md shared by every part of the report: tables, sizes, targets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from benchmarks.measure import MiB


@dataclass(frozen=True)
class Target:
    """A goal from an issue and whether this run met it (None: not measured)."""

    goal: str
    measured: str
    passed: bool | None
    issue: int = 2


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table, followed by a blank line."""
    lines = [f"| {' | '.join(header)} |", f"| {' | '.join('---' for _ in header)} |"]
    lines.extend(f"| {' | '.join(row)} |" for row in rows)
    return [*lines, ""]


def mib(nbytes: float) -> str:
    """A size in MiB, e.g. '512.0 MiB'."""
    return f"{nbytes / MiB:,.1f} MiB"


def verdict(passed: bool | None) -> str:
    """PASS, FAIL, or NOT MEASURED (a peer it needs is missing), in bold."""
    if passed is None:
        return "**NOT MEASURED**"
    return "**PASS**" if passed else "**FAIL**"
