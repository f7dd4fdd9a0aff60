"""The progress report of a running backup, restore or copy, handed to its callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """Counters of a running backup, restore or copy, handed to its `progress` callback.

    A total is None while it is not known: a backup counts its tree in the background,
    and reports totals once that count is complete.
    """

    files: int
    """Items done so far: files read or reused by a backup, written or kept by a
    restore, versions handled by a copy."""
    bytes: int
    """Bytes done so far: of those files, or of the chunks a copy sent."""
    skipped: int
    """Paths skipped so far."""
    elapsed: float
    """Seconds since the operation started."""
    path: str
    """The item just done: a path, or a copy's reference."""
    total_files: int | None = None
    """Items the operation will handle, when known."""
    total_bytes: int | None = None
    """Bytes the operation will handle, when known."""

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.bytes / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def fraction(self) -> float | None:
        """How much is done, from 0 to 1, by bytes (by items when there are no bytes to
        handle); None while the totals are unknown."""
        if self.total_bytes:
            return min(1.0, self.bytes / self.total_bytes)
        if self.total_files:
            return min(1.0, self.files / self.total_files)
        if self.total_bytes == 0 or self.total_files == 0:
            return 1.0
        return None

    @property
    def remaining(self) -> float | None:
        """Seconds left at the rate so far; None while that cannot be told."""
        fraction = self.fraction
        if fraction is None or fraction == 0:
            return None
        return self.elapsed * (1 - fraction) / fraction


ProgressCallback = Callable[[Progress], None]
"""Called after each item and as bytes move inside large ones (a backup's reads, a
restore's writes, from its worker threads one call at a time, a copy's chunks); keep it
quick (the CLI throttles its own output)."""
