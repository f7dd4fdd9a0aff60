"""Stores that keep a sequence of model versions: castore, joblib files, borg and restic.

Every peer offers the same four steps, so that one runner times them all alike: `reset`
(an empty repository), `save` a version, `load` a version back, and `stored_bytes` (du -s
of what it keeps). borg and restic are external programs: they are used when found on
PATH and skipped otherwise; nothing is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import joblib

import castore
from benchmarks.measure import du_bytes
from castore.engine.writer import WriteStats

MODEL_NAME = "model"
PLAIN_FILE = "model.pkl"
"""The plain ``joblib.dump`` file of a version, as borg and restic back it up."""


@dataclass(frozen=True)
class StagedVersion:
    """A version ready for every peer: the object and its plain joblib file."""

    number: int
    obj: dict[str, Any]
    plain: Path
    """``<dir>/model.pkl``: one directory per version, the same file name in each."""

    @property
    def size(self) -> int:
        """Bytes of the serialized stream (the plain file)."""
        return self.plain.stat().st_size


class Peer(Protocol):
    """One way of keeping the versions."""

    key: str
    label: str
    """What the peer is, e.g. 'borg 1.2.4'."""
    save_label: str
    load_label: str

    def reset(self) -> None:
        """Start again from an empty repository."""
        ...

    def save(self, version: StagedVersion) -> None:
        """Store a version (the timed operation)."""
        ...

    def load(self, version: StagedVersion) -> None:
        """Get a version back (the timed operation)."""
        ...

    def stored_bytes(self) -> int:
        """du -s (allocated bytes) of the repository."""
        ...

    def close(self) -> None:
        """Release resources and remove scratch files."""
        ...


@dataclass(frozen=True)
class PeerStatus:
    """Whether a peer took part, and its version and settings, or why it was skipped."""

    name: str
    available: bool
    detail: str


def _check_loaded(loaded: object, version: StagedVersion) -> None:
    if not isinstance(loaded, dict) or list(loaded) != list(version.obj):
        raise RuntimeError(f"version {version.number} loaded back as something else")


def _check_extracted(directory: Path, version: StagedVersion) -> None:
    """Fail unless `directory` holds the version's plain file, with its size, at any depth."""
    sizes = [path.stat().st_size for path in directory.rglob(PLAIN_FILE)]
    if sizes != [version.size]:
        raise RuntimeError(f"version {version.number} was not restored as it was saved")


def _run(command: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    """Run a peer's command; its stdout, or RuntimeError with its stderr."""
    completed = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{completed.stderr}")
    return completed.stdout


def restic_summary(output: str) -> dict[str, Any]:
    """The summary message of ``restic backup --json`` output."""
    messages = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    summary = [m for m in messages if m.get("message_type") == "summary"]
    if not summary:
        raise RuntimeError("restic backup printed no summary")
    return summary[-1]


class CastorePeer:
    """castore ``store.save`` / ``store.load`` of the objects into one local store."""

    def __init__(
        self,
        root: Path,
        chunker: castore.ChunkerParams | None = None,
        compression: castore.CompressionParams | None = None,
        key: str = "castore",
        label: str = "castore",
    ) -> None:
        self.key = key
        self.label = label
        self.save_label = f"{label} store.save(obj)"
        self.load_label = f"{label} store.load('model:N')"
        self.root = root
        self.chunker = chunker or castore.ChunkerParams()
        self.compression = compression or castore.CompressionParams()
        self.store: castore.Store | None = None
        self.writes: dict[int, WriteStats] = {}
        """What each save of the current repository added (WriteStats)."""
        self.content_digests: dict[int, str] = {}

    def reset(self) -> None:
        """A fresh store with this peer's chunker and compression parameters."""
        self.close()
        config = castore.StoreConfig(chunker=self.chunker, compression=self.compression)
        self.store = castore.init(self.root, config=config)
        self.writes.clear()
        self.content_digests.clear()

    def _open(self) -> castore.Store:
        if self.store is None:
            raise RuntimeError("reset() the castore peer first")
        return self.store

    def save(self, version: StagedVersion) -> None:
        """``store.save`` of the object (joblib serializer) as the next version."""
        store = self._open()
        saved = store.save(version.obj, MODEL_NAME, serializer="joblib")
        if saved.version != version.number or store.last_write is None:
            raise RuntimeError(f"castore saved version {saved.version}, not {version.number}")
        self.writes[version.number] = store.last_write
        self.content_digests[version.number] = saved.content_digest

    def load(self, version: StagedVersion) -> None:
        """``store.load`` of the version by its number."""
        _check_loaded(self._open().load(f"{MODEL_NAME}:{version.number}"), version)

    def stored_bytes(self) -> int:
        """du -s of the store directory."""
        return du_bytes(self.root)

    def close(self) -> None:
        """Close the store and delete it."""
        if self.store is not None:
            self.store.close()
            self.store = None
        shutil.rmtree(self.root, ignore_errors=True)


class JoblibFilesPeer:
    """One ``joblib.dump`` file per version, optionally zlib-compressed (`compress`)."""

    def __init__(self, root: Path, compress: int) -> None:
        self.key = f"joblib_z{compress}" if compress else "joblib"
        call = f"compress={compress}" if compress else "uncompressed"
        self.label = f"joblib.dump({call}) files"
        self.save_label = f"joblib.dump({call})"
        self.load_label = f"joblib.load({call} file)"
        self.root = root
        self.compress = compress

    def _path(self, version: StagedVersion) -> Path:
        return self.root / f"v{version.number}.pkl"

    def reset(self) -> None:
        """An empty directory."""
        self.close()
        self.root.mkdir(parents=True)

    def save(self, version: StagedVersion) -> None:
        """joblib.dump of the object to this version's file."""
        joblib.dump(version.obj, self._path(version), compress=self.compress)

    def load(self, version: StagedVersion) -> None:
        """joblib.load of this version's file."""
        _check_loaded(joblib.load(self._path(version)), version)

    def stored_bytes(self) -> int:
        """du -s of the directory of files."""
        return du_bytes(self.root)

    def close(self) -> None:
        """Delete the files."""
        shutil.rmtree(self.root, ignore_errors=True)


class _ArchiverPeer:
    """What borg and restic share: a repository, a scratch directory to restore into."""

    program: str

    def __init__(self, root: Path) -> None:
        self.repo = root / "repo"
        self.restored = root / "restored"
        self.env = {**os.environ, **self._environment(root)}

    def _environment(self, root: Path) -> dict[str, str]:
        """Variables that keep the program's caches and settings under `root`."""
        raise NotImplementedError

    def _empty(self) -> None:
        """Remove the repository, ready for the program to create a new one."""
        self.close()
        self.repo.parent.mkdir(parents=True, exist_ok=True)

    def _clean_restored(self) -> Path:
        """The empty directory that the next restore writes into (emptied untimed)."""
        shutil.rmtree(self.restored, ignore_errors=True)
        self.restored.mkdir(parents=True)
        return self.restored

    def stored_bytes(self) -> int:
        """du -s of the repository (the program's local cache is elsewhere, not counted)."""
        return du_bytes(self.repo)

    def close(self) -> None:
        """Delete the repository and restored files."""
        shutil.rmtree(self.repo, ignore_errors=True)
        shutil.rmtree(self.restored, ignore_errors=True)


class BorgPeer(_ArchiverPeer):
    """borg: ``borg create`` of each version's plain file as one archive; default settings."""

    program = "borg"

    def __init__(self, root: Path, version: str) -> None:
        super().__init__(root)
        self.key = "borg"
        self.label = f"borg {version}"
        self.save_label = "borg create (plain file)"
        self.load_label = "borg extract (plain file)"

    def _environment(self, root: Path) -> dict[str, str]:
        return {
            "BORG_BASE_DIR": str(root / "base"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def reset(self) -> None:
        """``borg init --encryption=none`` of a new repository."""
        self._empty()
        _run(["borg", "init", "--encryption=none", str(self.repo)], self.env)

    def save(self, version: StagedVersion) -> None:
        """``borg create repo::vN model.pkl`` from the version's directory."""
        archive = f"{self.repo}::v{version.number}"
        _run(["borg", "create", archive, PLAIN_FILE], self.env, cwd=version.plain.parent)

    def load(self, version: StagedVersion) -> None:
        """``borg extract repo::vN`` into an empty directory."""
        target = self._clean_restored()
        _run(["borg", "extract", f"{self.repo}::v{version.number}"], self.env, cwd=target)
        _check_extracted(target, version)

    def settings(self) -> str:
        """Compression and chunker in use (call while the repository holds v1)."""
        help_text = _run(["borg", "help", "compression"], self.env)
        found = re.search(r"Compression is (\S+) by default", help_text)
        compression = found.group(1) if found else "unknown"
        info = json.loads(_run(["borg", "info", "--json", f"{self.repo}::v1"], self.env))
        chunker = ",".join(str(p) for p in info["archives"][0]["chunker_params"])
        return (
            f"compression {compression} (borg's default, no --compression given), "
            f"chunker {chunker}, --encryption=none"
        )


class ResticPeer(_ArchiverPeer):
    """restic: ``restic backup`` of each version's plain file as one snapshot; defaults."""

    program = "restic"
    PASSWORD = "castore-benchmark"

    def __init__(self, root: Path, version: str) -> None:
        super().__init__(root)
        self.key = "restic"
        self.label = f"restic {version}"
        self.save_label = "restic backup (plain file)"
        self.load_label = "restic restore (plain file)"
        self.snapshots: dict[int, str] = {}

    def _environment(self, root: Path) -> dict[str, str]:
        return {
            "RESTIC_PASSWORD": self.PASSWORD,
            "RESTIC_REPOSITORY": str(root / "repo"),
            "RESTIC_CACHE_DIR": str(root / "cache"),
        }

    def reset(self) -> None:
        """``restic init`` of a new repository."""
        self._empty()
        self.snapshots.clear()
        _run(["restic", "init"], self.env)

    def save(self, version: StagedVersion) -> None:
        """``restic backup model.pkl`` from the version's directory; keeps the snapshot id."""
        output = _run(
            ["restic", "backup", "--json", "--host", "bench", PLAIN_FILE],
            self.env,
            cwd=version.plain.parent,
        )
        self.snapshots[version.number] = restic_summary(output)["snapshot_id"]

    def load(self, version: StagedVersion) -> None:
        """``restic restore <snapshot> --target <empty dir>``."""
        target = self._clean_restored()
        snapshot = self.snapshots[version.number]
        _run(["restic", "restore", snapshot, "--target", str(target)], self.env)
        _check_extracted(target, version)

    def settings(self) -> str:
        """Repository format and compression in use (call while the repository exists)."""
        version = json.loads(_run(["restic", "cat", "config"], self.env))["version"]
        compression = "auto (restic's default: zstd)" if version >= 2 else "none (format 1)"
        return f"repository format version {version}, compression {compression}, encrypted"


def _program_version(program: str) -> str | None:
    """The version a program reports, or None when it is not on PATH."""
    if shutil.which(program) is None:
        return None
    argv = [program, "--version"] if program == "borg" else [program, "version"]
    output = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    found = re.search(r"\d+\.\d+\.\d+", output)
    return found.group(0) if found else output.strip() or "unknown version"


ARCHIVERS: dict[str, tuple[type[BorgPeer | ResticPeer], str]] = {
    "borg": (BorgPeer, "borgbackup"),
    "restic": (ResticPeer, "restic"),
}
"""Each external peer: its class and the Debian package that provides it."""


def find_archivers(work_dir: Path) -> tuple[list[BorgPeer | ResticPeer], list[PeerStatus]]:
    """Peers for the programs on PATH, and a 'skipped' status for each one missing."""
    peers: list[BorgPeer | ResticPeer] = []
    skipped: list[PeerStatus] = []
    for program, (peer_class, package) in ARCHIVERS.items():
        version = _program_version(program)
        if version is None:
            detail = (
                f"not found on PATH: skipped (Debian package {package}; "
                "the benchmark installs nothing)"
            )
            skipped.append(PeerStatus(program, False, detail))
        else:
            peers.append(peer_class(work_dir / program, version))
    return peers, skipped
