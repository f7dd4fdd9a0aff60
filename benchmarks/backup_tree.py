"""Issue 4's backup benchmark: a real directory tree backed up by castore, restic and borg.

The tree is the installed site-packages of the running Python (code nobody here wrote),
copied once into the work directory so that every tool reads the same files. Each round
times, for every tool: the first backup into a fresh repository, an unchanged rerun into
the same repository, and a full restore into an empty directory; then du -s of the
repository. The number of objects (files) in castore's store is counted for the whole tree
and for a tree of one file in ten, to show that it follows the bytes, not the files.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import castore
from benchmarks.markdown import Target, mib, table
from benchmarks.measure import du_bytes, timed
from benchmarks.peers import BorgPeer, PeerStatus, ResticPeer, _run, find_archivers, restic_summary
from castore.snapshots.backup import BackupStats, Snapshot

ISSUE = 4
TREE_NAME = "tree"
VS_RESTIC = 1.5
"""castore's first backup, rerun and restore may take at most this times restic's."""
FILES_PER_OBJECT = 100
"""The whole tree's store must hold at least this many backed-up files per object."""
SUBSET_EVERY = 10
"""The small tree keeps one file in this many, to show that objects do not follow files."""
QUICK_EVERY = 20
"""--quick backs up one file of site-packages in this many."""

Log = Callable[[str], None]


@dataclass(frozen=True)
class BackupSettings:
    """Where the tree comes from, how much of it, and how many rounds."""

    runs: int
    quick: bool
    source: Path = field(default_factory=lambda: Path(sysconfig.get_paths()["purelib"]))


@dataclass(frozen=True)
class TreeSize:
    """What a tree holds: regular files, symlinks, directories and apparent bytes."""

    files: int
    symlinks: int
    dirs: int
    bytes: int


@dataclass
class ToolFigures:
    """One tool's timings (seconds per round) and repository sizes (du -s, per round)."""

    key: str
    label: str
    first: list[float] = field(default_factory=list)
    rerun: list[float] = field(default_factory=list)
    restore: list[float] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ObjectCount:
    """castore's store after one backup of a tree: its objects by top-level folder."""

    tree: TreeSize
    by_folder: dict[str, int]
    stored_bytes: int

    @property
    def objects(self) -> int:
        """Every file in the store directory."""
        return sum(self.by_folder.values())


@dataclass(frozen=True)
class BackupResults:
    """Everything the backup benchmark measured."""

    source: str
    tree: TreeSize
    runs: int
    quick: bool
    tools: dict[str, ToolFigures]
    skipped: list[PeerStatus]
    first_stats: BackupStats
    rerun_stats: BackupStats
    full_objects: ObjectCount
    subset_objects: ObjectCount


def tree_size(root: Path) -> TreeSize:
    """Count a tree without following symlinks."""
    files = symlinks = dirs = nbytes = 0
    for top, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(top, name))
            if os.path.islink(os.path.join(top, name)):
                symlinks += 1
            elif name in dirnames:
                dirs += 1
            else:
                files += 1
                nbytes += st.st_size
    return TreeSize(files, symlinks, dirs, nbytes)


def copy_every(source: Path, target: Path, every: int) -> None:
    """Copy one file (or symlink) in `every` of `source`, in sorted walk order, to `target`."""
    position = 0
    for top, dirnames, filenames in os.walk(source):
        dirnames.sort()
        links = [d for d in dirnames if os.path.islink(os.path.join(top, d))]
        for name in sorted([*filenames, *links]):
            position += 1
            if position % every:
                continue
            origin = Path(top, name)
            copy = target / origin.relative_to(source)
            copy.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_symlink():
                copy.symlink_to(os.readlink(origin))
            else:
                shutil.copy2(origin, copy)


def count_objects(store_root: Path) -> dict[str, int]:
    """Files in a store directory, by top-level folder (packs, index, manifests, ...)."""
    counts: dict[str, int] = {}
    for path in store_root.rglob("*"):
        if path.is_file():
            folder = path.relative_to(store_root).parts[0]
            counts[folder] = counts.get(folder, 0) + 1
    return dict(sorted(counts.items()))


class TreeTool(Protocol):
    """One backup program, driven the same way as the others."""

    key: str
    label: str

    def reset(self) -> None:
        """An empty repository."""
        ...

    def backup(self, tree: Path) -> None:
        """Back `tree` up as the next snapshot (the timed operation)."""
        ...

    def restore(self, target: Path) -> None:
        """Restore the latest snapshot into the empty `target` (the timed operation)."""
        ...

    def stored_bytes(self) -> int:
        """du -s of the repository."""
        ...

    def close(self) -> None:
        """Delete the repository."""
        ...


class CastoreTree:
    """``store.backup`` and ``store.restore`` with the default store configuration."""

    key = "castore"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = f"castore {castore.__version__}"
        self.store: castore.Store | None = None
        self.snapshots: list[Snapshot] = []

    def reset(self) -> None:
        """A fresh store (default chunker, compression and pack size)."""
        self.close()
        self.store = castore.init(self.root)

    def _open(self) -> castore.Store:
        if self.store is None:
            raise RuntimeError("reset() the castore tree tool first")
        return self.store

    def backup(self, tree: Path) -> None:
        """``store.backup(tree, 'tree')``; keeps the snapshot and its stats."""
        self.snapshots.append(self._open().backup(tree, TREE_NAME))

    def restore(self, target: Path) -> None:
        """``store.restore('tree:N', target)`` of the latest snapshot."""
        self._open().restore(f"{TREE_NAME}:{self.snapshots[-1].version}", target)

    def stored_bytes(self) -> int:
        """du -s of the store directory."""
        return du_bytes(self.root)

    def close(self) -> None:
        """Close the store and delete it."""
        if self.store is not None:
            self.store.close()
            self.store = None
        self.snapshots.clear()
        shutil.rmtree(self.root, ignore_errors=True)


class BorgTree:
    """``borg create repo::aN .`` from the tree, ``borg extract`` into the target; defaults."""

    key = "borg"

    def __init__(self, peer: BorgPeer) -> None:
        self.peer = peer
        self.label = peer.label
        self.archives = 0

    def reset(self) -> None:
        """``borg init --encryption=none`` (the model-sequence peer's reset)."""
        self.peer.reset()
        self.archives = 0

    def backup(self, tree: Path) -> None:
        """``borg create`` of the whole tree as the next archive."""
        self.archives += 1
        archive = f"{self.peer.repo}::a{self.archives}"
        _run(["borg", "create", archive, "."], self.peer.env, cwd=tree)

    def restore(self, target: Path) -> None:
        """``borg extract`` of the latest archive."""
        archive = f"{self.peer.repo}::a{self.archives}"
        _run(["borg", "extract", archive], self.peer.env, cwd=target)

    def stored_bytes(self) -> int:
        """du -s of the repository."""
        return self.peer.stored_bytes()

    def close(self) -> None:
        """Delete the repository."""
        self.peer.close()


class ResticTree:
    """``restic backup .`` from the tree (restic finds the parent snapshot), ``restic restore``."""

    key = "restic"

    def __init__(self, peer: ResticPeer) -> None:
        self.peer = peer
        self.label = peer.label
        self.snapshot = ""

    def reset(self) -> None:
        """``restic init`` (the model-sequence peer's reset)."""
        self.peer.reset()

    def backup(self, tree: Path) -> None:
        """``restic backup`` of the whole tree; keeps the snapshot id."""
        argv = ["restic", "backup", "--json", "--host", "bench", "."]
        self.snapshot = restic_summary(_run(argv, self.peer.env, cwd=tree))["snapshot_id"]

    def restore(self, target: Path) -> None:
        """``restic restore <snapshot> --target``."""
        argv = ["restic", "restore", self.snapshot, "--target", str(target)]
        _run(argv, self.peer.env)

    def stored_bytes(self) -> int:
        """du -s of the repository."""
        return self.peer.stored_bytes()

    def close(self) -> None:
        """Delete the repository."""
        self.peer.close()


def _check_restored(target: Path, tree: TreeSize, label: str) -> None:
    """Fail unless the restore holds as many regular files, of as many bytes, as the tree."""
    found = tree_size(target)
    if (found.files, found.bytes) != (tree.files, tree.bytes):
        raise RuntimeError(
            f"{label} restored {found.files} files / {found.bytes} B, "
            f"not {tree.files} / {tree.bytes}"
        )


def _round(tool: TreeTool, figures: ToolFigures, tree: Path, size: TreeSize, work: Path) -> None:
    """First backup into a fresh repository, unchanged rerun, full restore; du -s."""
    tool.reset()
    os.sync()
    figures.first.append(timed(lambda: tool.backup(tree)))
    os.sync()
    figures.rerun.append(timed(lambda: tool.backup(tree)))
    figures.stored.append(tool.stored_bytes())
    target = work / f"restored-{tool.key}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    os.sync()
    figures.restore.append(timed(lambda: tool.restore(target)))
    _check_restored(target, size, tool.label)
    shutil.rmtree(target)


def _objects_of(tree: Path, root: Path) -> ObjectCount:
    """Back `tree` up once into a fresh store at `root` and count its objects."""
    shutil.rmtree(root, ignore_errors=True)
    with castore.init(root) as store:
        store.backup(tree, TREE_NAME)
    counted = ObjectCount(tree_size(tree), count_objects(root), du_bytes(root))
    shutil.rmtree(root)
    return counted


def run(settings: BackupSettings, work: Path, log: Log) -> BackupResults:
    """Copy the tree, run every tool `settings.runs` rounds (interleaved), count objects."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tree, subset = work / "site-packages", work / "subset"
    try:
        every = QUICK_EVERY if settings.quick else 1
        log(f"backup tree: copying {settings.source} (one file in {every})")
        if every == 1:
            shutil.copytree(settings.source, tree, symlinks=True)
        else:
            copy_every(settings.source, tree, every)
        copy_every(tree, subset, SUBSET_EVERY)
        size = tree_size(tree)
        log(f"backup tree: {size.files:,} files, {mib(size.bytes)}")
        archivers, skipped = find_archivers(work)
        castore_tool = CastoreTree(work / "castore")
        tools: list[TreeTool] = [castore_tool]
        for peer in archivers:
            tools.append(BorgTree(peer) if isinstance(peer, BorgPeer) else ResticTree(peer))
        figures = {tool.key: ToolFigures(tool.key, tool.label) for tool in tools}
        first_stats = rerun_stats = None
        for number in range(1, settings.runs + 1):
            for tool in tools:
                _round(tool, figures[tool.key], tree, size, work)
                f = figures[tool.key]
                log(
                    f"  round {number}/{settings.runs} {tool.label}: first {f.first[-1]:.1f} s, "
                    f"rerun {f.rerun[-1]:.1f} s, restore {f.restore[-1]:.1f} s, "
                    f"{mib(f.stored[-1])}"
                )
                if tool is castore_tool and first_stats is None:
                    first_stats = castore_tool.snapshots[0].stats
                    rerun_stats = castore_tool.snapshots[1].stats
                tool.close()
        assert first_stats is not None and rerun_stats is not None
        log("backup tree: counting castore's objects, whole tree and one file in ten")
        full_objects = _objects_of(tree, work / "count-full")
        subset_objects = _objects_of(subset, work / "count-subset")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BackupResults(
        source=str(settings.source),
        tree=size,
        runs=settings.runs,
        quick=settings.quick,
        tools=figures,
        skipped=skipped,
        first_stats=first_stats,
        rerun_stats=rerun_stats,
        full_objects=full_objects,
        subset_objects=subset_objects,
    )


OPERATIONS = {"first": "first backup", "rerun": "unchanged rerun", "restore": "full restore"}


def _median(values: list[float] | list[int]) -> float:
    return statistics.median(values)


def targets(results: BackupResults) -> list[Target]:
    """Issue 4's backup targets: store size vs borg, times vs restic, objects vs files."""
    castore_figures = results.tools["castore"]
    found: list[Target] = []
    borg = results.tools.get("borg")
    stored = _median(castore_figures.stored)
    found.append(
        Target(
            "backup: castore store (du) no larger than borg's repository (du), site-packages",
            "borg not installed"
            if borg is None
            else f"{mib(stored)} vs {mib(_median(borg.stored))}",
            None if borg is None else stored <= _median(borg.stored),
            ISSUE,
        )
    )
    restic = results.tools.get("restic")
    for key, what in OPERATIONS.items():
        mine = _median(getattr(castore_figures, key))
        if restic is None:
            measured, passed = "restic not installed", None
        else:
            theirs = _median(getattr(restic, key))
            measured = f"{mine:.2f} s vs {theirs:.2f} s ({mine / theirs:.2f}x)"
            passed = mine <= VS_RESTIC * theirs
        goal = f"backup: castore {what} within {VS_RESTIC:g}x restic's time"
        found.append(Target(goal, measured, passed, ISSUE))
    full, small = results.full_objects, results.subset_objects
    object_ratio = full.objects / small.objects
    byte_ratio = full.stored_bytes / small.stored_bytes
    found.append(
        Target(
            f"backup: store objects independent of the number of files (>= "
            f"{FILES_PER_OBJECT} files per object; objects grow no faster than stored bytes)",
            f"{full.objects:,} objects for {full.tree.files:,} files "
            f"({full.tree.files / full.objects:,.0f} per object); 1/{SUBSET_EVERY} of the files: "
            f"{small.objects:,} objects; objects x{object_ratio:.1f} for files "
            f"x{full.tree.files / small.tree.files:.1f}, stored bytes x{byte_ratio:.1f}",
            full.tree.files >= FILES_PER_OBJECT * full.objects and object_ratio <= byte_ratio,
            ISSUE,
        )
    )
    return found


def _seconds(values: list[float]) -> str:
    return f"{_median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _ratio(tool: ToolFigures, restic: ToolFigures | None, key: str) -> str:
    if restic is None:
        return "-"
    return f"{_median(getattr(tool, key)) / _median(getattr(restic, key)):.2f}x"


def _objects_row(label: str, counted: ObjectCount) -> list[str]:
    folders = ", ".join(f"{name} {count:,}" for name, count in counted.by_folder.items())
    return [
        label,
        f"{counted.tree.files:,}",
        mib(counted.tree.bytes),
        f"{counted.objects:,}",
        folders,
        mib(counted.stored_bytes),
    ]


def render(results: BackupResults) -> list[str]:
    """The RESULTS.md section of the backup benchmark."""
    tree = results.tree
    smoke = (
        f"**Smoke-test size (--quick): one file in {QUICK_EVERY} of site-packages; not "
        f"representative.** "
        if results.quick
        else ""
    )
    copied = (
        f"one file in {QUICK_EVERY}, symlinks kept"
        if results.quick
        else "shutil.copytree(symlinks=True)"
    )
    restic = results.tools.get("restic")
    header = [
        "Tool",
        "first backup s",
        "unchanged rerun s",
        "full restore s",
        "repository du",
        "first / restic",
        "rerun / restic",
        "restore / restic",
    ]
    rows = [
        [
            f.label,
            _seconds(f.first),
            _seconds(f.rerun),
            _seconds(f.restore),
            mib(_median(f.stored)),
            _ratio(f, restic, "first"),
            _ratio(f, restic, "rerun"),
            _ratio(f, restic, "restore"),
        ]
        for f in results.tools.values()
    ]
    first, rerun = results.first_stats, results.rerun_stats
    stats_rows = [
        [
            "files / dirs / symlinks / skipped",
            f"{first.files:,} / {first.dirs:,} / {first.symlinks:,} / {first.skipped:,}",
        ],
        ["bytes", f"{first.bytes:,} B ({mib(first.bytes)})"],
        ["first backup: files read / reused", f"{first.files_read:,} / {first.files_reused:,}"],
        ["first backup: new payload bytes stored", f"{first.new_bytes_stored:,} B"],
        ["rerun: files read / reused", f"{rerun.files_read:,} / {rerun.files_reused:,}"],
        ["rerun: new payload bytes stored", f"{rerun.new_bytes_stored:,} B"],
    ]
    skipped = [f"- {status.name}: {status.detail}" for status in results.skipped]
    return [
        "## Backup of a real tree: site-packages (issue 4)",
        "",
        f"{smoke}Tree: a copy of `{results.source}` (installed packages, code nobody here "
        f"wrote), made once ({copied}) so that every tool reads the same files: "
        f"{tree.files:,} regular files, {tree.dirs:,} directories, "
        f"{tree.symlinks:,} symlinks, {tree.bytes:,} bytes ({mib(tree.bytes)}). "
        f"Each round, for each tool in turn: the first backup into a fresh repository, an "
        f"unchanged rerun into the same repository (restic finds its parent snapshot, borg "
        f"uses its files cache, castore its previous snapshot of the name), du -s of the "
        f"repository, and a full restore into an empty directory (checked: same number of "
        f"files and bytes). Every tool runs with its defaults: castore's default store "
        f"config; borg `init --encryption=none` (lz4); restic's repository format 2 (zstd "
        f"auto, encrypted). Times are the median of {results.runs} rounds (min-max); an "
        f"untimed os.sync() precedes each timed step, and the tree is in the page cache.",
        "",
        *table(header, rows),
        "castore's counts (BackupStats of the first round):",
        "",
        *table(["Figure", "value"], stats_rows),
        f"Objects (files) in castore's store after one backup, for the whole tree and for "
        f"a tree of one file in {SUBSET_EVERY} of it (sorted walk order):",
        "",
        *table(
            ["Tree", "files", "bytes", "objects", "by folder", "store du"],
            [
                _objects_row("whole tree", results.full_objects),
                _objects_row(f"1/{SUBSET_EVERY} of the files", results.subset_objects),
            ],
        ),
        *([*skipped, ""] if skipped else []),
    ]
