"""How a command shows its progress on stderr: a bar on a terminal, JSON lines under --json.

A JSON line is a restic-style status message; the command's result stays one JSON
document on stdout (docs/CLI.md, "Progress").
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from tqdm import tqdm

import castore
from castore.errors import InvalidInputError

BAR_DELAY = 1.0
"""Seconds before a bar appears: quick commands stay quiet."""
DEFAULT_FPS = 1.0
"""JSON status lines per second, unless CASTORE_PROGRESS_FPS says otherwise."""


def _lines_per_second() -> float:
    value = os.environ.get("CASTORE_PROGRESS_FPS", "")
    if not value:
        return DEFAULT_FPS
    try:
        fps = float(value)
    except ValueError:
        fps = 0.0
    if not fps > 0 or fps == float("inf"):
        raise InvalidInputError(f"CASTORE_PROGRESS_FPS must be a positive number, got {value!r}")
    return fps


def status_message(command: str, progress: castore.Progress, counts_files: bool) -> dict[str, Any]:
    """The JSON status line of `progress` (every key always present; null if unknown)."""
    fraction = progress.fraction
    remaining = progress.remaining
    return {
        "message_type": "status",
        "command": command,
        "seconds_elapsed": round(progress.elapsed, 3),
        "seconds_remaining": None if remaining is None else round(remaining, 3),
        "percent_done": None if fraction is None else round(fraction, 6),
        "files_done": progress.files if counts_files else None,
        "total_files": progress.total_files,
        "bytes_done": progress.bytes,
        "total_bytes": progress.total_bytes,
        "current_file": progress.path or None,
    }


class ProgressDisplay:
    """The progress of one command: a tqdm bar on a terminal (none under --json or off a
    terminal), or JSON status lines under --json, throttled, plus a last one at the end."""

    def __init__(self, command: str, *, as_json: bool, counts_files: bool = True) -> None:
        self.command = command
        self.as_json = as_json
        self.counts_files = counts_files
        self.started = time.monotonic()
        self.interval = 1 / _lines_per_second() if as_json else 0.0
        self.last: castore.Progress | None = None
        self.emitted: castore.Progress | None = None
        self.emitted_at = 0.0
        self.bar: tqdm[Any] | None = None
        if not as_json and sys.stderr.isatty():
            self.bar = tqdm(
                desc=command,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                delay=BAR_DELAY,
                file=sys.stderr,
            )

    @property
    def callback(self) -> Callable[[castore.Progress], None] | None:
        """What to hand an operation's `progress` parameter: None when nothing is shown,
        so that the operation does no work for totals no one sees."""
        return self.show if self.as_json or self.bar is not None else None

    def show(self, progress: castore.Progress) -> None:
        """Take the latest counters; draw or print them if it is time."""
        self.last = progress
        if self.bar is not None:
            if progress.total_bytes is not None and self.bar.total != progress.total_bytes:
                self.bar.total = progress.total_bytes
                self.bar.refresh()
            self.bar.update(progress.bytes - self.bar.n)
            if self.counts_files:
                files = (
                    progress.files
                    if progress.total_files is None
                    else (f"{progress.files}/{progress.total_files}")
                )
                self.bar.set_postfix(files=files, refresh=False)
        elif self.as_json:
            now = time.monotonic()
            if self.emitted is None or now - self.emitted_at >= self.interval:
                self._emit(progress, now)

    def bytes_done(self, done: int, total: int | None) -> None:
        """Take a byte count of a transfer that has no files (put, get)."""
        self.show(castore.Progress(0, done, 0, time.monotonic() - self.started, "", None, total))

    def _emit(self, progress: castore.Progress, now: float) -> None:
        line = status_message(self.command, progress, self.counts_files)
        print(json.dumps(line), file=sys.stderr, flush=True)
        self.emitted, self.emitted_at = progress, now

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.as_json and kind is None:
            last = self.last or castore.Progress(0, 0, 0, time.monotonic() - self.started, "")
            if last is not self.emitted:
                self._emit(last, time.monotonic())
