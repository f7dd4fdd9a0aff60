"""The progress report of a running backup or restore, handed to its callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """Counters of a running backup or restore, handed to its `progress` callback."""

    files: int
    """Files done so far (read or reused by a backup, written or kept by a restore)."""
    bytes: int
    """Bytes of those files."""
    skipped: int
    """Paths skipped so far."""
    elapsed: float
    """Seconds since the operation started."""
    path: str
    """The path just done."""

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.bytes / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[Progress], None]
"""Called after each file; keep it quick (the CLI throttles its own output)."""
