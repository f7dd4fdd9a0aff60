"""Directory backups: round trips, incremental runs, excludes, skipped files, path escapes,
partial restores, diff and forget on every backend; properties of trees, excludes and
retention policies."""

from __future__ import annotations

import calendar
import hashlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import castore
import castore.format.manifest
from castore.engine.progress import Progress
from castore.format.tree import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    EMPTY_SHA256,
    FIFO,
    FILE,
    MAX_DEVICE_MAJOR,
    MAX_DEVICE_MINOR,
    SKIPPED,
    SYMLINK,
    Entry,
    TreeOrder,
    TreeWriter,
    normalize_path,
    path_problem,
    read_tree,
    sort_key,
)
from castore.snapshots import backup as bk
from castore.snapshots import scan
from castore.snapshots.ignore import IgnoreRules
from castore.snapshots.retention import RetentionPolicy, keep_reasons, within_cutoff
from castore.versions.catalog import commit_version
from tests.conftest import Location
from tests.helpers import pattern, without_read_override

BASE_TIME = 1_600_000_000_123_456_789
"""Nanosecond mtimes the test trees get, so that restored times can be compared exactly."""

# -- trees on disk ---------------------------------------------------------------------------

ROUND_TRIP_FILES: dict[str, bytes] = {
    "top.txt": b"top\n",
    "empty": b"",
    "run.sh": b"#!/bin/sh\necho hi\n",
    "nested/deeper/deepest/leaf.txt": b"leaf" * 100,
    "nested/medium.bin": pattern(50_000, 1),
    "big.bin": pattern(700_000, 2),
    "sp ace/ünïcödé ☃.txt": "snow ☃".encode(),
    "sp ace/new\nline": b"a newline in the name",
    "locked/inside.txt": b"in a read-only directory",
}
ROUND_TRIP_MODES = {"top.txt": 0o600, "run.sh": 0o755, "nested/medium.bin": 0o444, "locked": 0o500}
ROUND_TRIP_LINKS = {
    "link-to-dir": "nested/deeper",
    "link-absolute": "/etc/hostname",
    "dangling": "does/not/exist",
}
BAD_UTF8_NAME = b"bad-\xff-utf8"


def write_files(root: Path, files: dict[str, bytes]) -> None:
    """Create files (and their directories) below root."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def fix_times(root: Path) -> None:
    """Give every path below root a distinct, known mtime (directories last, deepest first)."""
    paths = sorted(
        (os.path.join(d, n) for d, ds, fs in os.walk(os.fsencode(root)) for n in ds + fs),
        key=lambda p: (os.path.isdir(p) and not os.path.islink(p), -p.count(b"/"), p),
    )
    for number, path in enumerate(paths):
        os.utime(path, ns=(BASE_TIME + number, BASE_TIME + number), follow_symlinks=False)


def build_round_trip_tree(root: Path) -> None:
    """Nested dirs, an empty file, a multi-pack file, symlinks, odd names, modes, mtimes."""
    write_files(root, ROUND_TRIP_FILES)
    with open(os.path.join(os.fsencode(root), BAD_UTF8_NAME), "wb") as file:
        file.write(b"a name that is not UTF-8")
    for rel, target in ROUND_TRIP_LINKS.items():
        os.symlink(target, root / rel)
    fix_times(root)
    for rel, mode in ROUND_TRIP_MODES.items():
        os.chmod(root / rel, mode)


def describe(root: Path) -> dict[bytes, tuple[object, ...]]:
    """Every path below root with what a restore must reproduce (type, mode, mtime, content)."""
    found: dict[bytes, tuple[object, ...]] = {}
    base = os.fsencode(root)
    for folder, dirs, files in os.walk(base):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            rel = os.path.relpath(path, base)
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("symlink", os.readlink(path), info.st_mtime_ns)
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", stat.S_IMODE(info.st_mode), info.st_mtime_ns)
            else:
                with open(path, "rb") as file:
                    digest = hashlib.sha256(file.read()).hexdigest()
                found[rel] = ("file", stat.S_IMODE(info.st_mode), info.st_mtime_ns, digest)
    return found


def object_count(store: castore.Store) -> int:
    """Objects in the store (besides its config)."""
    return sum(
        len(store.repository.backend.list(p)) for p in ("packs", "index", "manifests", "refs")
    )


@pytest.fixture
def no_small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send files over 64 KiB through the streaming path, as if they were large."""
    monkeypatch.setattr(bk, "SMALL_FILE_BYTES", 64 * 1024)


# -- round trip, dedup, objects --------------------------------------------------------------


def test_round_trip_restores_every_kind_of_entry(
    small_store: castore.Store, tmp_path: Path, no_small_files: None
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    build_round_trip_tree(src)
    expected = describe(src)
    seen: list[Progress] = []
    snap = small_store.backup(src, "backups/src", progress=seen.append)

    files = len(ROUND_TRIP_FILES) + 1
    assert (snap.name, snap.version, snap.serializer) == ("backups/src", 1, "tree")
    assert (snap.stats.files, snap.stats.symlinks, snap.stats.skipped) == (files, 3, 0)
    assert snap.stats.files_read == files and seen[-1].files == files
    assert (seen[-1].total_files, seen[-1].total_bytes) == (files, snap.stats.bytes)
    assert seen[-1].bytes == snap.stats.bytes and seen[-1].fraction == 1.0
    assert [p.bytes for p in seen] == sorted(p.bytes for p in seen)  # never goes back
    assert snap.metadata["files"] == files and snap.metadata["source"] == str(src)
    assert small_store.info(snap.reference)["kind"] == "tree"
    assert snap.stats.packs >= 10  # big.bin alone spans about eleven 64 KiB packs
    listed = [entry.path for entry in small_store.snapshot_entries(snap.reference)]
    assert listed == sorted(expected, key=sort_key)

    restored: list[Progress] = []
    stats = small_store.restore("backups/src:1", out, progress=restored.append)
    assert describe(out) == expected
    assert restored[-1].files == files and restored[-1].bytes == snap.stats.bytes
    assert (restored[-1].total_files, restored[-1].total_bytes) == (files, snap.stats.bytes)
    assert restored[-1].fraction == 1.0 and restored[-1].remaining == 0.0
    assert (stats.files_written, stats.symlinks, stats.bytes_written) == (
        files,
        3,
        snap.stats.bytes,
    )
    # Backed-up files are cut exactly as put() cuts them: both paths deduplicate with it.
    for rel in ("big.bin", "nested/medium.bin"):
        small_store.put(src / rel)
        assert small_store.last_write is not None and small_store.last_write.new_chunks == 0


def test_progress_reports_a_large_file_as_it_is_read_and_written(
    small_store: castore.Store, tmp_path: Path, no_small_files: None
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    size = 3 * 1024 * 1024 + 5
    (src / "large.bin").write_bytes(pattern(size, 7))
    seen: list[Progress] = []
    small_store.backup(src, "backups/large", progress=seen.append)
    assert [p.bytes for p in seen if p.files == 0][:3] == [1 << 20, 2 << 20, 3 << 20]
    assert (seen[-1].files, seen[-1].bytes, seen[-1].total_bytes) == (1, size, size)
    restored: list[Progress] = []
    small_store.restore("backups/large:1", tmp_path / "out", progress=restored.append)
    assert [p.bytes for p in restored] == sorted(p.bytes for p in restored)
    assert len({p.bytes for p in restored if p.files == 0}) > 10  # chunk by chunk, mid-file
    assert (restored[-1].files, restored[-1].bytes, restored[-1].fraction) == (1, size, 1.0)


def test_objects_do_not_grow_with_the_number_of_files(store: castore.Store, tmp_path: Path) -> None:
    added = []
    for count in (5, 400):
        src = tmp_path / f"src{count}"
        write_files(
            src, {f"d{i % 7}/f{i}.txt": f"file {i} of {count}".encode() for i in range(count)}
        )
        before = object_count(store)
        store.backup(src, f"backups/n{count}")
        added.append(object_count(store) - before)
    assert added == [4, 4]  # one pack, one index object, one manifest, one version ref


# -- incremental runs and diff ---------------------------------------------------------------


@contextmanager
def opened_files(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record every file the backup opens for reading."""
    opened: list[str] = []
    real = scan.open_regular

    def spy(abspath: str, listed: os.stat_result) -> Any:
        opened.append(os.path.basename(abspath))
        return real(abspath, listed)

    with monkeypatch.context() as patch:
        patch.setattr(scan, "open_regular", spy)
        yield opened


def test_incremental_backup_reads_only_changed_files(
    store: castore.Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_small_files: None
) -> None:
    src = tmp_path / "src"
    files = {f"dir{i % 3}/f{i}": pattern(100 + i, i) for i in range(12)}
    files["big"] = pattern(300_000, 99)
    write_files(src, files)
    fix_times(src)
    first = store.backup(src, "backups/inc", tags=["first"])
    assert (first.stats.files_read, first.stats.files_reused) == (13, 0)
    assert store.tags("backups/inc") == {"first": 1}

    (src / "dir0/f0").write_bytes(b"new content, new size")
    os.utime(src / "dir1/f1", ns=(BASE_TIME, BASE_TIME))  # same bytes, new mtime
    (src / "dir2/f2").unlink()
    (src / "dir0/added").write_bytes(b"a new file")
    replacement = tmp_path / "replacement"  # same size and mtime, new inode and content
    replacement.write_bytes(pattern(103, 1000))
    old = os.stat(src / "dir0/f3")
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(replacement, src / "dir0/f3")
    with opened_files(monkeypatch) as opened:
        second = store.backup(src, "backups/inc")
    assert sorted(opened) == ["added", "f0", "f1", "f3"]
    assert (second.stats.files_read, second.stats.files_reused) == (4, 9)
    changed = {"dir0/f0", "dir1/f1", "dir2/f2", "dir0/f3"}
    assert second.stats.bytes_reused == sum(len(files[k]) for k in files.keys() - changed)
    assert second.stats.parent == first.reference

    with opened_files(monkeypatch) as opened:
        third = store.backup(src, "backups/inc")  # nothing changed: nothing read
    assert opened == [] and third.stats.files_reused == 13 and third.version == 3

    out = tmp_path / "out"
    store.restore(third.reference, out)
    assert describe(out) == describe(src)

    changes = {
        c.path_str: (c.kind, c.what) for c in store.snapshot_diff("backups/inc:1", "backups/inc:2")
    }
    assert changes == {
        "dir0/added": ("added", ()),
        "dir2/f2": ("removed", ()),
        "dir0/f0": ("changed", ("content", "mtime")),
        "dir1/f1": ("changed", ("mtime",)),
        "dir0/f3": ("changed", ("content",)),
    }
    assert list(store.snapshot_diff("backups/inc:2", "backups/inc:3")) == []


# -- excludes --------------------------------------------------------------------------------


def test_excludes_follow_gitignore_rules(store: castore.Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    names = "keep.py mod.pyc pkg/mod.pyc pkg/keep.pyc build/out.o pkg/build/out.o docs/build"
    names += " top.log pkg/top.log a/x/y/z.tmp"
    write_files(src, {name: b"x" for name in names.split()})
    rules = ["*.pyc", "!keep.pyc", "build/", "/top.log", "a/**/*.tmp", "# a comment", ""]
    snap = store.backup(src, "backups/ex", exclude=rules)
    listed = {e.path_str for e in store.snapshot_entries(snap.reference) if e.type == FILE}
    assert listed == {"keep.py", "pkg/keep.pyc", "docs/build", "pkg/top.log"}
    assert snap.metadata["exclude"] == rules


# -- skipped files ---------------------------------------------------------------------------


def test_special_and_vanished_files_are_skipped_and_recorded(
    store: castore.Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_small_files: None
) -> None:
    src = tmp_path / "src"
    gone = {"gone.txt": b"removed before it is read", "gone-big": pattern(100_000, 3)}
    write_files(src, {"ok.txt": b"fine", **gone})
    os.mkfifo(src / "fifo")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(src / "sock"))
        real = scan.open_regular

        def remove_first(abspath: str, listed: os.stat_result) -> Any:
            if os.path.basename(abspath).startswith("gone"):
                os.unlink(abspath)  # listed, then gone before it is opened
            return real(abspath, listed)

        monkeypatch.setattr(scan, "open_regular", remove_first)
        snap = store.backup(src, "backups/sk")
    expected = {
        "gone-big": "No such file or directory",
        "gone.txt": "No such file or directory",
        "sock": "unsupported file type: socket",
    }
    assert dict(snap.stats.skipped_paths) == expected
    assert snap.metadata["skipped"] == 3 and snap.stats.files == 1
    assert snap.metadata["specials"] == snap.stats.specials == 1  # the FIFO
    recorded = {
        e.path_str: e.reason for e in store.snapshot_entries("backups/sk") if e.type == SKIPPED
    }
    assert recorded == expected
    stats = store.restore("backups/sk", tmp_path / "out")
    assert (stats.files_written, stats.skipped, stats.specials) == (1, 3, 1)
    assert sorted(os.listdir(tmp_path / "out")) == ["fifo", "ok.txt"]
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out" / "fifo").st_mode)


UNREADABLE_SCRIPT = """
import json, sys
import castore
url, options, src = json.loads(sys.argv[1])
with castore.init(url, **options) as store:
    snap = store.backup(src, "backups/denied")
    skipped = {e.path_str: e.reason for e in store.snapshot_entries(snap.reference)
               if e.type == "skipped"}
    files = sorted(e.path_str for e in store.snapshot_entries(snap.reference) if e.type == "file")
print(json.dumps({"skipped": skipped, "files": files, "count": snap.metadata["skipped"]}))
"""


def test_unreadable_files_are_skipped_and_recorded(location: Location, tmp_path: Path) -> None:
    """Permission denied for real: as root, the backup runs without the capabilities that
    let root read anything (setpriv), so that mode 000 files and directories refuse it."""
    prefix = without_read_override()
    src = tmp_path / "src"
    write_files(src, {"readable.txt": b"ok", "secret.txt": b"no", "closed/inner.txt": b"no"})
    os.chmod(src / "secret.txt", 0)
    os.chmod(src / "closed", 0)
    try:
        argument = json.dumps([location.url, location.options, str(src)])
        result = subprocess.run(
            [*prefix, sys.executable, "-c", UNREADABLE_SCRIPT, argument],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.chmod(src / "closed", 0o700)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["files"] == ["readable.txt"]
    assert report["skipped"] == {
        "closed": "cannot list the directory: Permission denied",
        "secret.txt": "Permission denied",
    }
    assert report["count"] == 2


# -- restore: partial, over an existing tree, path escapes -----------------------------------


def test_partial_restore_and_listing_by_path(store: castore.Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, {"a/b/c.txt": b"c", "a/b/d.txt": b"d", "a/e.txt": b"e", "f.txt": b"f"})
    store.backup(src, "backups/part")
    out = tmp_path / "out"
    stats = store.restore("backups/part:1", out, ["/a/b/", "./f.txt"])
    restored = {p for p in describe(out)}
    assert restored == {b"a", b"a/b", b"a/b/c.txt", b"a/b/d.txt", b"f.txt"}
    assert stats.files_written == 3
    assert [e.path_str for e in store.snapshot_entries("backups/part", "a/b")] == [
        "a/b",
        "a/b/c.txt",
        "a/b/d.txt",
    ]
    with pytest.raises(castore.NotFoundError, match="nope"):
        store.restore("backups/part", tmp_path / "out2", ["a/nope"])
    assert not (tmp_path / "out2").exists()
    with pytest.raises(castore.NotFoundError):
        list(store.snapshot_entries("backups/part", "a/nope"))
    with pytest.raises(castore.InvalidInputError, match=r"\.\."):
        store.restore("backups/part", out, ["a/../.."])


def test_restore_over_an_existing_tree_rewrites_only_what_differs(
    store: castore.Store, tmp_path: Path
) -> None:
    src, out, outside = tmp_path / "src", tmp_path / "out", tmp_path / "outside"
    write_files(src, {f"d/f{i}": pattern(200, i) for i in range(6)} | {"e/g": b"g", "h": b"h"})
    write_files(src, {"k": b"k"})
    fix_times(src)
    write_files(outside, {"victim": b"must stay"})
    snap = store.backup(src, "backups/over")
    store.restore(snap.reference, out)

    (out / "d/f0").write_bytes(pattern(200, 100))  # same size and mtime, other content
    os.utime(out / "d/f0", ns=(BASE_TIME, os.stat(src / "d/f0").st_mtime_ns))
    os.chmod(out / "d/f1", 0o600)  # mode only: kept, mode fixed
    (out / "d/f2").unlink()
    shutil.rmtree(out / "e")
    (out / "e").write_bytes(b"a file where a directory was")
    (out / "h").unlink()
    (out / "h").mkdir()
    (out / "h/junk").write_bytes(b"a directory where a file was")
    (out / "extra").write_bytes(b"not in the snapshot: left alone")
    shutil.rmtree(out / "d")
    (out / "d").symlink_to(outside)  # a symlink where a directory was: never followed
    (out / "k").unlink()
    (out / "k").symlink_to(outside / "victim")  # a symlink where a file was: replaced
    stats = store.restore(snap.reference, out)
    assert [p.name for p in outside.iterdir()] == ["victim"]
    assert (outside / "victim").read_bytes() == b"must stay"
    assert stats.files_written == 9 and stats.files_unchanged == 0
    assert describe(out) == describe(src) | {b"extra": describe(out)[b"extra"]}

    (out / "d/f0").write_bytes(pattern(200, 100))
    os.utime(out / "d/f0", ns=(BASE_TIME, os.stat(src / "d/f0").st_mtime_ns))
    os.chmod(out / "d/f1", 0o600)
    stats = store.restore(snap.reference, out)
    assert (stats.files_written, stats.files_unchanged) == (1, 8)
    assert describe(out) == describe(src) | {b"extra": describe(out)[b"extra"]}


def raw_meta(path: bytes, kind: str, **extra: object) -> dict[str, object]:
    """A hand-made tree entry (msgpack map) with plausible metadata."""
    base: dict[str, object] = {"path": path, "type": kind, "mode": 0o755, "mtime_ns": 0}
    base.update(ctime_ns=0, size=0, uid=0, gid=0, dev=0, ino=0)
    base.update(extra)
    return base


def raw_link(path: bytes, target: bytes) -> dict[str, object]:
    return raw_meta(path, SYMLINK, size=len(target), target=target)


def raw_file(path: bytes, descriptor: Any, **extra: object) -> dict[str, object]:
    content = {"size": descriptor.size, "sha256": descriptor.sha256}
    content.update(chunks=descriptor.chunk_ids, sizes=list(descriptor.chunk_sizes))
    return raw_meta(path, FILE, **(content | extra))


def commit_raw_tree(
    store: castore.Store,
    name: str,
    values: list[object],
    extra: bytes = b"",
    version: str = "1",
    metadata: dict[str, object] | None = None,
) -> str:
    """Commit a hand-crafted (possibly malicious) tree stream as a snapshot of tree format
    `version`, with the manifest `metadata` given."""
    data = b"".join(msgpack.packb(value, use_bin_type=True) for value in values) + extra
    committed = commit_version(
        store.repository,
        name,
        store.repository.write_stream(data),
        kind="tree",
        serializer="tree",
        serializer_version=version,
        metadata=metadata or {},
        tags=(),
        force=True,
    )
    return committed.reference


def malicious_trees(outside: Path, content: Any) -> dict[str, list[object]]:
    """Tree streams that try to write outside the restore target, or are malformed."""
    away = os.fsencode(outside)
    evil = raw_file(b"evil", content)
    return {
        "dotdot": [raw_file(b"../evil", content)],
        "absolute": [raw_file(away + b"/evil", content)],
        "inner dotdot": [raw_meta(b"a", DIR), raw_file(b"a/../../evil", content)],
        "through symlink": [raw_link(b"link", away), raw_file(b"link/evil", content)],
        "symlink then dir": [
            raw_link(b"link", away),
            raw_meta(b"link", DIR),
            raw_file(b"link/evil", content),
        ],
        "relative symlink": [
            raw_meta(b"d", DIR),
            raw_link(b"d/up", b"../.."),
            raw_file(b"d/up/evil", content),
        ],
        "no parent": [raw_file(b"x/evil", content)],
        "unsorted": [raw_file(b"b", content), raw_file(b"a", content)],
        "nul byte": [raw_file(b"evil\0.txt", content)],
        "dot component": [raw_file(b"./evil", content)],
        "double slash": [raw_meta(b"a", DIR), raw_file(b"a//evil", content)],
        "duplicate key": [],  # filled in by the test: msgpack map with a repeated key
        "wrong sizes": [{**evil, "size": content.size + 1}],
        "wrong digest": [{**evil, "sha256": hashlib.sha256(b"other").digest()}],
    }


def test_crafted_trees_cannot_escape_the_target(store: castore.Store, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    content = store.repository.write_stream(b"evil bytes")
    duplicate_key = b"\x82\xa4path\xc4\x04evil\xa4path\xc4\x05../ev"  # {"path": .., "path": ..}
    for number, (case, values) in enumerate(malicious_trees(outside, content).items()):
        extra = duplicate_key if case == "duplicate key" else b""
        ref = commit_raw_tree(store, f"evil/case{number}", values, extra)
        target = tmp_path / f"target{number}"
        with pytest.raises(castore.IntegrityError):
            store.restore(ref, target)
        assert not any(p.name.startswith("evil") for p in target.rglob("*")), case
    trailing = commit_raw_tree(store, "evil/trailing", [raw_file(b"ok", content)], b"\x92")
    with pytest.raises(castore.IntegrityError, match="not a whole entry"):
        list(store.snapshot_entries(trailing))
    assert list(outside.iterdir()) == []
    assert not list(tmp_path.glob("evil*"))


def test_restore_never_follows_symlinks_even_if_validation_were_bypassed(
    store: castore.Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defense in depth: with the tree's order checks switched off (duplicate names,
    entries under a symlink), the file system layer (descriptors opened with O_NOFOLLOW,
    entries placed only under directory entries) still keeps everything inside."""
    monkeypatch.setattr(TreeOrder, "check", lambda self, entry: None)
    outside = tmp_path / "outside"
    outside.mkdir()
    away = os.fsencode(outside)
    content = store.repository.write_stream(b"evil bytes")
    replaced = commit_raw_tree(
        store,
        "evil/replaced",
        [raw_link(b"link", away), raw_meta(b"link", DIR), raw_file(b"link/evil", content)],
    )
    with suppress(castore.CastoreError):  # a symlink and a directory of one name race
        store.restore(replaced, tmp_path / "t1")
    assert list(outside.iterdir()) == []
    through = commit_raw_tree(
        store, "evil/through", [raw_link(b"link", away), raw_file(b"link/evil", content)]
    )
    with pytest.raises(castore.IntegrityError, match="no directory entry above it"):
        store.restore(through, tmp_path / "t2")
    assert list(outside.iterdir()) == []


def test_errors_are_castore_errors(store: castore.Store, tmp_path: Path) -> None:
    store.save({"a": 1}, "models/m")
    with pytest.raises(castore.InvalidInputError, match="not a backup"):
        store.restore("models/m", tmp_path / "out")
    with pytest.raises(castore.InvalidInputError, match="not backups"):
        store.backup(tmp_path, "models/m")
    with pytest.raises(castore.InvalidInputError, match="does not exist"):
        store.backup(tmp_path / "missing", "backups/x")
    with pytest.raises(castore.NotFoundError):
        store.restore("backups/none", tmp_path / "out")
    (tmp_path / "file").write_bytes(b"")
    store.backup(tmp_path, "backups/y")
    with pytest.raises(castore.InvalidInputError, match="cannot restore into"):
        store.restore("backups/y", tmp_path / "file")


# -- forget ----------------------------------------------------------------------------------


class _Clock(datetime):
    """Stands in for castore.manifest's datetime so that snapshots get chosen times."""

    current = datetime(2024, 1, 1, tzinfo=UTC)

    @classmethod
    def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
        return cls.current.astimezone(tz)


FORGET_TIMES = [
    datetime(2024, 1, 1, 10, tzinfo=UTC),
    datetime(2024, 1, 1, 12, tzinfo=UTC),
    datetime(2024, 1, 2, 9, tzinfo=UTC),
    datetime(2024, 1, 8, 9, tzinfo=UTC),  # the next ISO week
    datetime(2024, 1, 9, 9, tzinfo=UTC),
    datetime(2024, 2, 1, 9, tzinfo=UTC),
    datetime(2024, 2, 1, 18, tzinfo=UTC),
]


@pytest.fixture
def daily_backups(store: castore.Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A name with one snapshot at each of FORGET_TIMES."""
    (tmp_path / "f").write_bytes(b"f")
    monkeypatch.setattr(castore.format.manifest, "datetime", _Clock)
    for when in FORGET_TIMES:
        _Clock.current = when
        store.backup(tmp_path, "backups/daily")
    return "backups/daily"


def test_forget_applies_restic_policies_to_snapshot_times(
    store: castore.Store, daily_backups: str
) -> None:
    policy = {"keep_last": 1, "keep_daily": 2, "keep_weekly": 3, "keep_monthly": 3}
    preview = store.forget("backups/daily", **policy, dry_run=True, tz=UTC)
    assert {k.version.version: k.reasons for k in preview.kept} == {
        7: ("last", "daily", "weekly", "monthly"),
        5: ("daily", "weekly", "monthly"),
        3: ("weekly",),
    }
    assert [v.version for v in preview.removed] == [6, 4, 2, 1]
    assert store.versions("backups/daily") == [1, 2, 3, 4, 5, 6, 7]
    result = store.forget("backups/daily", **policy, tz=UTC)
    assert [v.version for v in result.removed] == [6, 4, 2, 1]
    assert store.versions("backups/daily") == [3, 5, 7]
    again = store.forget("backups/daily", **policy, tz=UTC)
    assert again.removed == [] and len(again.kept) == 3
    with pytest.raises(castore.InvalidInputError, match="no keep rule"):
        store.forget("backups/daily")


def test_skip_if_unchanged_adds_no_snapshot_until_something_changes(
    store: castore.Store, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "f").write_bytes(b"one")
    first = store.backup(source, "home")
    again = store.backup(source, "home", skip_if_unchanged=True, tags=["checked"])
    assert again.reference == first.reference and again.stats.unchanged
    assert store.versions("home") == [1] and store.tags("home") == {"checked": 1}
    (source / "f").write_bytes(b"two")
    changed = store.backup(source, "home", skip_if_unchanged=True)
    assert changed.version == 2 and not changed.stats.unchanged
    assert not store.backup(source, "home").stats.unchanged  # the default adds one always
    assert store.versions("home") == [1, 2, 3]


def test_forget_keeps_by_time_window_and_by_tag(store: castore.Store, daily_backups: str) -> None:
    store.tag("backups/daily:2", "golden")
    preview = store.forget(
        "backups/daily", keep_within="24d9h", keep_tag=["golden"], dry_run=True, tz=UTC
    )
    # 24 days 9 hours before 1 February 18:00 is 8 January 09:00: version 4 is on the edge
    assert {k.version.version: k.reasons for k in preview.kept} == {
        7: ("within",),
        6: ("within",),
        5: ("within",),
        4: ("within",),
        2: ("tag golden",),
    }
    assert [v.version for v in preview.removed] == [3, 1]
    month = store.forget("backups/daily", keep_within="1m", dry_run=True, tz=UTC)
    assert [k.version.version for k in month.kept] == [7, 6, 5, 4, 3]  # 1 January 18:00 on
    with pytest.raises(castore.NotFoundError, match="has no tag goldne"):
        store.forget("backups/daily", keep_tag=["goldne"])
    with pytest.raises(castore.InvalidInputError, match="duration such as"):
        store.forget("backups/daily", keep_within="2 weeks")
    with pytest.raises(castore.InvalidInputError, match="before the year 1"):
        store.forget("backups/daily", keep_within="99999y")
    assert store.versions("backups/daily") == [1, 2, 3, 4, 5, 6, 7]  # refusals removed nothing
    store.forget("backups/daily", keep_tag=["golden"], keep_last=1)
    assert store.versions("backups/daily") == [2, 7] and store.tags("backups/daily") == {
        "golden": 2
    }


@settings(max_examples=300, deadline=None)
@given(
    newest=st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)),
    years=st.integers(0, 900),
    months=st.integers(0, 30),
    days=st.integers(0, 400),
    hours=st.integers(0, 100),
)
def test_keep_within_counts_calendar_months_then_days(
    newest: datetime, years: int, months: int, days: int, hours: int
) -> None:
    duration = "".join(
        f"{n}{unit}" for n, unit in zip((years, months, days, hours), "ymdh", strict=True) if n
    )
    if not duration:
        return
    cutoff = within_cutoff(newest, duration)
    back = cutoff + timedelta(days=days, hours=hours)  # undo the days and hours
    assert (newest.year * 12 + newest.month) - (back.year * 12 + back.month) == years * 12 + months
    assert back.day == min(newest.day, calendar.monthrange(back.year, back.month)[1])
    assert back.time() == newest.time()


BUCKETS: dict[str, Callable[[datetime], object]] = {
    "hourly": lambda t: t.strftime("%Y-%m-%d %H"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: t.strftime("%G-%V"),
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}


def reference_policy(times: list[datetime], counts: dict[str, int]) -> list[set[str]]:
    """A different formulation of restic's rules: the newest snapshot of each of the n
    newest distinct buckets (times newest first)."""
    reasons: list[set[str]] = [set() for _ in times]
    limit = counts["last"] if counts["last"] >= 0 else len(times)
    for number in range(min(limit, len(times))):
        reasons[number].add("last")
    for rule, bucket in BUCKETS.items():
        newest: dict[object, int] = {}
        for number, when in enumerate(times):
            newest.setdefault(bucket(when), number)
        chosen = list(newest.values())
        if counts[rule] >= 0:
            chosen = chosen[: counts[rule]]
        for number in chosen:
            reasons[number].add(rule)
    return reasons


@settings(max_examples=300, deadline=None)
@given(
    times=st.lists(
        st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2026, 12, 31)),
        max_size=40,
    ),
    counts=st.fixed_dictionaries({rule: st.integers(-1, 5) for rule in ("last", *BUCKETS)}),
)
def test_keep_reasons_match_a_reference_model(
    times: list[datetime], counts: dict[str, int]
) -> None:
    newest_first = sorted((t.replace(tzinfo=UTC) for t in times), reverse=True)
    policy = RetentionPolicy(**counts)
    got = keep_reasons(newest_first, policy)
    assert [set(r) for r in got] == reference_policy(newest_first, counts)
    if not policy.empty and newest_first:
        assert got[0]  # any rule keeps the newest snapshot


# -- tree stream format ----------------------------------------------------------------------

component = st.binary(min_size=1, max_size=6).filter(
    lambda c: b"/" not in c and b"\0" not in c and c not in (b".", b"..")
)


xattr_names = st.one_of(
    st.sampled_from([b"system.posix_acl_access", b"system.posix_acl_default"]),
    st.tuples(
        st.sampled_from([b"user.", b"security.", b"trusted."]),
        st.binary(min_size=1, max_size=8).filter(lambda n: b"\0" not in n),
    ).map(b"".join),
)
xattr_sets = st.dictionaries(xattr_names, st.binary(max_size=40), max_size=3).map(
    lambda pairs: tuple(sorted(pairs.items()))
)
"""Extended attributes as entries hold them: (name, value) pairs in order of name."""


@st.composite
def trees(draw: st.DrawFn) -> list[Entry]:
    """Valid trees: every parent a directory entry, entries in tree order."""
    leaves = draw(st.lists(st.lists(component, min_size=1, max_size=3), max_size=12))
    dirs = {b"/".join(parts[:i]) for parts in leaves for i in range(1, len(parts))}
    paths = dirs | {b"/".join(parts) for parts in leaves}
    entries = []
    for path in sorted(paths, key=sort_key):
        metadata = {
            "mode": draw(st.integers(0, 0o7777)),
            "mtime_ns": draw(st.integers(-(2**63), 2**63 - 1)),
            "ino": draw(st.integers(0, 2**64 - 1)),
        }
        metadata["xattrs"] = draw(xattr_sets)
        if path in dirs:
            entries.append(Entry(path, DIR, **metadata))
            continue
        kind = draw(st.sampled_from([FILE, SYMLINK, SKIPPED, FIFO, CHARDEV, BLOCKDEV]))
        if kind == SKIPPED:
            entries.append(Entry.skipped(path, draw(st.text(max_size=20))))
        elif kind in (CHARDEV, BLOCKDEV):
            numbers = {
                "major": draw(st.integers(0, MAX_DEVICE_MAJOR)),
                "minor": draw(st.integers(0, MAX_DEVICE_MINOR)),
            }
            entries.append(Entry(path, kind, **numbers, **metadata))
        elif kind == FIFO:
            entries.append(Entry(path, kind, **metadata))
        elif kind == SYMLINK:
            target = draw(st.binary(min_size=1, max_size=20).filter(lambda t: b"\0" not in t))
            entries.append(Entry(path, SYMLINK, size=len(target), target=target, **metadata))
        else:
            sizes = tuple(draw(st.lists(st.integers(1, 100_000), max_size=4)))
            ids = draw(st.binary(min_size=32 * len(sizes), max_size=32 * len(sizes)))
            digest = draw(st.binary(min_size=32, max_size=32)) if sizes else EMPTY_SHA256
            content = {"sha256": digest, "chunk_ids": ids, "chunk_sizes": sizes}
            entries.append(Entry(path, FILE, size=sum(sizes), **content, **metadata))
    return entries


def encode_tree(entries: list[Entry]) -> bytes:
    sink = io.BytesIO()
    writer = TreeWriter(sink.write)
    for entry in entries:
        writer.add(entry)
    writer.flush()
    return sink.getvalue()


@settings(max_examples=150, deadline=None)
@given(entries=trees())
def test_tree_streams_round_trip(entries: list[Entry]) -> None:
    data = encode_tree(entries)
    assert list(read_tree(io.BytesIO(data), len(data), "test tree")) == entries


@settings(max_examples=300, deadline=None)
@given(entries=trees(), position=st.integers(min_value=0), value=st.integers(0, 255))
def test_damaged_tree_streams_fail_only_with_integrity_errors(
    entries: list[Entry], position: int, value: int
) -> None:
    data = bytearray(encode_tree(entries))
    if data:
        data[position % len(data)] = value
    try:
        for entry in read_tree(io.BytesIO(bytes(data)), len(data), "test tree"):
            assert path_problem(entry.path) is None
    except castore.IntegrityError:
        pass


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"path": b"a", "type": "socket"}, "unknown type"),
        ({"path": "a", "type": FILE}, "should be bytes"),
        (raw_meta(b"a", DIR, size=4096), "size 0"),
        (raw_meta(b"a", DIR, mode=0o10000), "outside"),
        (raw_meta(b"a", DIR, mode=True), "should be int"),
        (raw_link(b"a", b""), "invalid symlink target"),
        (raw_meta(b"a", SYMLINK, size=3, target=b"abcd"), "not the target's length"),
        (raw_meta(b"a", FILE, size=0, sha256=b"\0" * 32, chunks=b"", sizes=[]), "empty"),
        (raw_meta(b"a", FILE, size=1, sha256=b"\0" * 32, chunks=b"", sizes=[1]), "sizes"),
        (raw_meta(b"a" * 256, DIR), "longer than 255"),
        ([b"a"], "not a msgpack map"),
        (raw_meta(b"a", DIR, xattrs={b"user.a": b"1"}), "should be list"),
        (raw_meta(b"a", DIR, xattrs=[]), "0 or more than"),
        (raw_meta(b"a", DIR, xattrs=[[b"user.a", "text"]]), "pair of bin"),
        (raw_meta(b"a", DIR, xattrs=[[b"user.a", b"1", b"2"]]), "pair of bin"),
        (raw_meta(b"a", DIR, xattrs=[[b"other.a", b"1"]]), "not in the user"),
        (raw_meta(b"a", DIR, xattrs=[[b"user.", b"1"]]), "only a namespace"),
        (raw_meta(b"a", DIR, xattrs=[[b"user.\0", b"1"]]), "without NUL"),
        (raw_meta(b"a", DIR, xattrs=[[b"user.b", b""], [b"user.a", b""]]), "ascending"),
        (raw_meta(b"a", DIR, xattrs=[[b"user.a", b""], [b"user.a", b""]]), "ascending"),
        (raw_meta(b"a", DIR, xattrs=[[b"user.a", b"x" * 65537]]), "over 65536 bytes"),
        (
            raw_meta(b"a", DIR, xattrs=[[b"user.%04d" % n, b""] for n in range(1025)]),
            "more than 1024",
        ),
        (
            raw_meta(b"a", DIR, xattrs=[[b"user.%02d" % n, b"x" * 65536] for n in range(17)]),
            "over 1048576 bytes in all",
        ),
        (raw_meta(b"a", FIFO, size=1), "size 0"),
        (raw_meta(b"a", CHARDEV, major=1), "lacks the field 'minor'"),
        (raw_meta(b"a", BLOCKDEV, major=-1, minor=3), "outside"),
    ],
)
def test_malformed_entries_are_rejected(value: object, message: str) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    with pytest.raises(castore.IntegrityError, match=message):
        list(read_tree(io.BytesIO(data), len(data), "test tree"))


def test_older_tree_versions_know_no_version_3_key_or_type() -> None:
    """A version 1 or 2 reader ignores `xattrs` (as any unknown key) and has no FIFOs."""
    entry = raw_meta(b"a", DIR, xattrs=[[b"user.a", b"1"]])
    data = msgpack.packb(entry, use_bin_type=True)
    for version in (1, 2):
        (read,) = read_tree(io.BytesIO(data), len(data), "test tree", version)
        assert read.xattrs == () and read.format_version == 1
    fifo = msgpack.packb(raw_meta(b"p", FIFO), use_bin_type=True)
    with pytest.raises(castore.IntegrityError, match="unknown type 'fifo'"):
        list(read_tree(io.BytesIO(fifo), len(fifo), "test tree", 2))


def test_tree_writer_refuses_disorder() -> None:
    writer = TreeWriter(lambda data: None)
    writer.add(Entry(b"a", DIR))
    writer.add(Entry(b"a/b", FILE, sha256=EMPTY_SHA256))
    with pytest.raises(castore.IntegrityError, match="ascending"):
        writer.add(Entry(b"a", FILE, sha256=EMPTY_SHA256))


names = st.sampled_from(["a", "b", "a-b", "a.b", "a b", "ab", "A", "é", "a0"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths=st.lists(st.lists(names, min_size=1, max_size=3), min_size=1, max_size=15))
def test_walk_order_is_tree_order(paths: list[list[str]]) -> None:
    with tempfile.TemporaryDirectory() as root:
        for parts in paths:
            folder = Path(root, *parts[:-1])
            if any(p.is_file() for p in [folder, *folder.parents]):
                continue
            folder.mkdir(parents=True, exist_ok=True)
            if not Path(folder, parts[-1]).is_dir():
                Path(folder, parts[-1]).write_bytes(b"")
        with ThreadPoolExecutor(2) as pool:
            found = list(scan.walk(root, IgnoreRules(), pool))
        order = TreeOrder("walk")
        for item in found:
            assert item.stat is not None
            kind = DIR if stat.S_ISDIR(item.stat.st_mode) else FILE
            order.check(Entry(os.fsencode(item.rel), kind))
        assert len(found) == sum(len(fs) + len(ds) for _, ds, fs in os.walk(root))


# -- paths and excludes ----------------------------------------------------------------------


@given(text=st.text(alphabet="ab/.é\\ ", max_size=20))
def test_user_paths_normalize_like_posix_paths(text: str) -> None:
    if ".." in text.split("/"):
        with pytest.raises(castore.InvalidInputError):
            normalize_path(text)
        return
    path = normalize_path(text)
    assert normalize_path(path) == path
    assert path == b"" or path_problem(path) is None
    normal = os.path.normpath("/" + text).lstrip("/")
    assert path == (b"" if normal in ("", ".") else normal.encode())


def git_included_files(root: Path, patterns: list[str]) -> set[str]:
    """The files git keeps (does not ignore) below root with these gitignore patterns."""
    exclude = root.parent / "exclude-patterns"
    exclude.write_text("\n".join(patterns) + "\n")
    git = ["git", "-c", "core.excludesFile=/dev/null", "-C", str(root)]
    subprocess.run([*git, "init", "-q"], check=True)
    listed = subprocess.run(
        [*git, "ls-files", "--others", "-z", f"--exclude-from={exclude}"],
        check=True,
        capture_output=True,
    ).stdout
    return {name.decode() for name in listed.split(b"\0") if name}


segments = st.sampled_from(["a", "b", "ab", "*", "?", "**", "a*", "*b", "[ab]", "[!a]", ".x"])
patterns = st.builds(
    lambda negate, lead, parts, trail: (
        ("!" if negate else "") + ("/" if lead else "") + "/".join(parts) + ("/" if trail else "")
    ),
    st.booleans(),
    st.booleans(),
    st.lists(segments, min_size=1, max_size=3),
    st.booleans(),
)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is the reference model")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=st.lists(patterns, min_size=1, max_size=4),
    files=st.lists(
        st.lists(st.sampled_from(["a", "b", "ab", "ba", ".x", "c"]), min_size=1, max_size=3),
        min_size=1,
        max_size=10,
    ),
)
def test_excludes_agree_with_git(rules: list[str], files: list[list[str]]) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary, "tree")
        for parts in files:
            path = root.joinpath(*parts)
            if any(p.is_file() for p in path.parents) or path.is_dir():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        with ThreadPoolExecutor(2) as pool:
            found = list(scan.walk(str(root), IgnoreRules(rules), pool))
        ours = {f.rel for f in found if f.stat is not None and not stat.S_ISDIR(f.stat.st_mode)}
        assert ours == git_included_files(root, rules)


def test_invalid_exclude_patterns_are_refused() -> None:
    for bad in ("[abc", "trailing\\", "[z-a]"):
        with pytest.raises(castore.InvalidInputError, match="invalid exclude pattern"):
            IgnoreRules([bad])
