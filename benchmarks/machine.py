"""What machine and software the benchmarks ran on."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from benchmarks.measure import GiB

PACKAGES = ("castore", "numpy", "joblib", "zstandard", "pyfastcdc", "fsspec", "s3fs", "moto")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _total_ram() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) * 1024 / GiB:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _disk(path: Path) -> str:
    usage = shutil.disk_usage(path)
    return f"{usage.free / GiB:.0f} GiB free of {usage.total / GiB:.0f} GiB (at {path})"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit(repo: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit} (with uncommitted changes to tracked files)" if dirty else commit


def describe(repo: Path, work_dir: Path) -> dict[str, str]:
    """The machine, its load and the software versions, as label -> value."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return {
        "Date (UTC)": datetime.now(UTC).isoformat(timespec="seconds"),
        "CPU": _cpu_model(),
        "Logical CPUs": str(os.cpu_count()),
        "RAM": _total_ram(),
        "Disk": _disk(work_dir),
        "OS": platform.platform(),
        "Load average at start (1, 5, 15 min)": load,
        "Python": platform.python_version(),
        "castore commit": _git_commit(repo),
        **{f"{package} version": _version(package) for package in PACKAGES},
    }
