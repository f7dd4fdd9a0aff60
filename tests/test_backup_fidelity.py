"""Backups at restic's fidelity: hard links, sparse files, file system boundaries, cache
directories; tree format version 2 beside version 1 snapshots, and hostile link entries."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import castore
from castore.engine.progress import ProgressCallback
from castore.format.streams import StreamDescriptor
from castore.format.tree import DIR, FILE
from castore.versions import catalog
from tests.helpers import pattern
from tests.test_backup import commit_raw_tree
from tests.test_restore_safety import cli

MTIME = 1_600_000_000_123_456_789
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[castore.Store]:
    """A fresh store on local disk (these tests are about the file system, not backends)."""
    with castore.init(str(tmp_path / "store")) as opened:
        yield opened


def serializer_version(store: castore.Store, ref: str) -> str:
    """The tree format version a snapshot's manifest records."""
    manifest, _ = catalog.resolve(store.repository, ref)
    return manifest.serializer_version


def commit_tree(store: castore.Store, name: str, values: list[object], version: str) -> str:
    """Commit hand-made tree entries (msgpack maps) as a snapshot of tree format `version`."""
    return commit_raw_tree(store, name, values, version=version)


def raw_entry(path: bytes, kind: str, **extra: object) -> dict[str, object]:
    """A tree entry as the first-round (version 1) encoder wrote it, plus `extra` keys."""
    entry: dict[str, object] = {"path": path, "type": kind, "mode": 0o644, "mtime_ns": MTIME}
    entry.update(ctime_ns=MTIME, size=0, uid=0, gid=0, dev=0, ino=0)
    return entry | extra


def raw_file(path: bytes, content: StreamDescriptor, **extra: object) -> dict[str, object]:
    """A file entry holding `content`."""
    fields = {"size": content.size, "sha256": content.sha256, "chunks": content.chunk_ids}
    return raw_entry(path, FILE, **fields, sizes=list(content.chunk_sizes), **extra)


# -- hard links --------------------------------------------------------------------------------


def build_linked_tree(root: Path) -> None:
    """Three names of one inode in three directories, a pair in one directory, a loner."""
    (root / "a").mkdir(parents=True)
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a" / "data.bin").write_bytes(pattern(300_000, 3))
    os.link(root / "a" / "data.bin", root / "b" / "deep" / "again.bin")
    os.link(root / "a" / "data.bin", root / "third.bin")
    (root / "b" / "one").write_bytes(b"one")
    os.link(root / "b" / "one", root / "b" / "two")
    (root / "single").write_bytes(b"single")
    for path in (root / "a" / "data.bin", root / "b" / "one", root / "single"):
        os.utime(path, ns=(MTIME, MTIME))


def test_hard_links_are_recorded_once_and_restored_as_links(
    local_store: castore.Store, tmp_path: Path
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    build_linked_tree(src)
    snap = local_store.backup(src, "backups/links")
    assert (snap.stats.files, snap.stats.hardlinks, snap.stats.files_read) == (6, 3, 3)
    assert serializer_version(local_store, snap.reference) == "2"
    entries = {e.path: e for e in local_store.snapshot_entries(snap.reference)}
    assert entries[b"b/deep/again.bin"].hardlink == b"a/data.bin"
    assert entries[b"third.bin"].hardlink == b"a/data.bin"
    assert entries[b"b/two"].hardlink == b"b/one"
    assert entries[b"a/data.bin"].hardlink == b"" and entries[b"a/data.bin"].nlink == 3

    stats = local_store.restore(snap.reference, out)
    assert (stats.files_written, stats.hardlinks) == (3, 3)
    first = os.lstat(out / "a" / "data.bin")
    assert first.st_nlink == 3 and first.st_mtime_ns == MTIME
    for name in ("b/deep/again.bin", "third.bin"):
        assert os.lstat(out / name).st_ino == first.st_ino
    assert os.lstat(out / "b" / "two").st_ino == os.lstat(out / "b" / "one").st_ino
    assert os.lstat(out / "single").st_nlink == 1
    assert (out / "third.bin").read_bytes() == pattern(300_000, 3)

    # In place, a file with several links is never kept (its other names could lie
    # outside the target): the first names are rewritten and linked again.
    again = local_store.restore(snap.reference, out)
    assert (again.files_written, again.hardlinks, again.files_unchanged) == (2, 3, 1)
    assert os.lstat(out / "third.bin").st_ino == os.lstat(out / "a" / "data.bin").st_ino

    # A partial restore without the first name writes the other names as files.
    part = tmp_path / "part"
    local_store.restore(snap.reference, part, ["b"])
    assert (part / "b" / "deep" / "again.bin").read_bytes() == pattern(300_000, 3)
    assert os.lstat(part / "b" / "two").st_ino == os.lstat(part / "b" / "one").st_ino


def test_snapshots_without_new_features_stay_version_1(
    local_store: castore.Store, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "plain").write_bytes(b"plain")
    snap = local_store.backup(src, "backups/plain")
    assert serializer_version(local_store, snap.reference) == "1"
    (src / "plain.link").hardlink_to(src / "plain")
    linked = local_store.backup(src, "backups/plain")
    assert serializer_version(local_store, linked.reference) == "2"
    newer = commit_tree(local_store, "backups/newer", [], "4")
    with pytest.raises(castore.UnsupportedFormatError, match="upgrade castore"):
        local_store.restore(newer, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_an_old_format_snapshot_still_restores(local_store: castore.Store, tmp_path: Path) -> None:
    content = local_store.repository.write_stream(b"old content")
    # Version 1 readers ignore unknown keys: a `hardlink` key in a version 1 tree is
    # not a link, and must not be read as one.
    values: list[object] = [
        raw_entry(b"d", DIR, mode=0o755),
        raw_file(b"d/f", content),
        raw_file(b"g", content, hardlink=b"d/f", nlink=2),
    ]
    ref = commit_tree(local_store, "backups/old", values, "1")
    out = tmp_path / "out"
    stats = local_store.restore(ref, out)
    assert (stats.files_written, stats.hardlinks) == (2, 0)
    assert (out / "d" / "f").read_bytes() == (out / "g").read_bytes() == b"old content"
    assert os.lstat(out / "g").st_nlink == 1
    assert os.lstat(out / "g").st_mtime_ns == MTIME


def hostile_links(
    outside: Path, content: StreamDescriptor, other: StreamDescriptor
) -> dict[str, list[object]]:
    """Version 2 trees whose hard link names something it may not link to."""
    away = os.fsencode(outside / "victim")
    root = raw_file(b"a", content, nlink=2)
    return {
        "absolute": [raw_file(b"z", content, hardlink=away, nlink=2)],
        "dotdot": [raw_file(b"z", content, hardlink=b"../outside/victim", nlink=2)],
        "later": [raw_file(b"a", content, hardlink=b"b", nlink=2), raw_file(b"b", content)],
        "itself": [raw_file(b"a", content, hardlink=b"a", nlink=2)],
        "nonexistent": [root, raw_file(b"b", content, hardlink=b"aa", nlink=2)],
        "a directory": [raw_entry(b"a", DIR), raw_file(b"b", content, hardlink=b"a", nlink=2)],
        "single link": [raw_file(b"a", content), raw_file(b"b", content, hardlink=b"a")],
        "other content": [root, raw_file(b"b", other, hardlink=b"a", nlink=2)],
        "a link of a link": [
            root,
            raw_file(b"b", content, hardlink=b"a", nlink=2),
            raw_file(b"c", content, hardlink=b"b", nlink=2),
        ],
    }


def test_hostile_hard_links_are_refused(local_store: castore.Store, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"victim")
    content = local_store.repository.write_stream(b"evil bytes")
    other = local_store.repository.write_stream(b"other bytes")
    for number, (case, values) in enumerate(hostile_links(outside, content, other).items()):
        ref = commit_tree(local_store, f"evil/case{number}", values, "2")
        target = tmp_path / f"target{number}"
        with pytest.raises(castore.IntegrityError, match=r"hard ?link"):
            local_store.restore(ref, target)
        assert os.lstat(outside / "victim").st_nlink == 1, case
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"victim"


# -- sparse files ------------------------------------------------------------------------------

GIB = 1024**3
MIB = 1024**2


def data_map(path: Path) -> list[tuple[int, int]]:
    """The data extents of a file on disk (SEEK_DATA / SEEK_HOLE)."""
    extents = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, position = os.fstat(fd).st_size, 0
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:
                break
            position = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, position - start))
    finally:
        os.close(fd)
    return extents


def test_sparse_files_keep_their_holes(local_store: castore.Store, tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    image = src / "disk.img"
    with open(image, "wb") as file:
        file.truncate(10 * GIB)
        file.seek(GIB)
        file.write(pattern(MIB // 2, 4))
        file.seek(5 * GIB)
        file.write(pattern(MIB // 2, 5))
    if os.stat(image).st_blocks * 512 > 2 * MIB or len(data_map(image)) != 2:
        pytest.skip("this file system does not keep holes")
    (src / "all-hole").write_bytes(b"")
    os.truncate(src / "all-hole", 3 * MIB)
    snap = local_store.backup(src, "backups/sparse")
    assert snap.stats.sparse == 2 and snap.stats.bytes_read == MIB
    assert serializer_version(local_store, snap.reference) == "2"
    entries = {e.path: e for e in local_store.snapshot_entries(snap.reference)}
    assert entries[b"disk.img"].extents == tuple(data_map(image))
    assert entries[b"all-hole"].extents == () and entries[b"all-hole"].chunk_sizes == ()

    local_store.restore(snap.reference, out)
    restored = os.stat(out / "disk.img")
    assert restored.st_size == 10 * GIB
    assert restored.st_blocks * 512 <= 2 * MIB  # about 1 MiB allocated, not 10 GiB
    assert data_map(out / "disk.img") == data_map(image)
    with open(out / "disk.img", "rb") as file:
        assert os.pread(file.fileno(), MIB // 2, GIB) == pattern(MIB // 2, 4)
        assert os.pread(file.fileno(), MIB // 2, 5 * GIB) == pattern(MIB // 2, 5)
        assert os.pread(file.fileno(), 4096, 3 * GIB) == bytes(4096)
    hole = os.stat(out / "all-hole")
    assert (hole.st_size, hole.st_blocks) == (3 * MIB, 0)
    assert (out / "all-hole").read_bytes() == bytes(3 * MIB)

    again = local_store.backup(src, "backups/sparse")  # unchanged: reused with its extents
    assert again.stats.files_reused == 2
    reused = {e.path: e for e in local_store.snapshot_entries(again.reference)}
    assert reused[b"disk.img"].extents == entries[b"disk.img"].extents


# -- file system boundaries and cache directories -------------------------------------------------


@pytest.fixture
def mounted_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An empty directory with a tmpfs mounted on it (unmounted afterwards)."""
    point = tmp_path / "src" / "mnt"
    point.mkdir(parents=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "none", str(point)], capture_output=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def test_one_file_system_records_mount_points_without_their_contents(
    local_store: castore.Store, tmp_path: Path, mounted_tmpfs: Path
) -> None:
    src = tmp_path / "src"
    (src / "here.txt").write_bytes(b"here")
    (mounted_tmpfs / "sub").mkdir()
    (mounted_tmpfs / "sub" / "there.txt").write_bytes(b"there")
    os.chmod(mounted_tmpfs, 0o750)
    whole = local_store.backup(src, "backups/all")
    assert {e.path for e in local_store.snapshot_entries(whole.reference)} >= {b"mnt/sub"}

    snap = local_store.backup(src, "backups/x", one_file_system=True)
    paths = [e.path for e in local_store.snapshot_entries(snap.reference)]
    assert paths == [b"here.txt", b"mnt"]
    assert snap.stats.skipped == 1 and "another file system" in snap.stats.skipped_paths[0][1]
    assert snap.stats.skipped_paths[0][0] == "mnt"
    out = tmp_path / "out"
    local_store.restore(snap.reference, out)
    assert list((out / "mnt").iterdir()) == []
    assert stat.S_IMODE(os.stat(out / "mnt").st_mode) == 0o750


def test_exclude_caches_honours_cachedir_tags(local_store: castore.Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    cache, fake = src / "build" / "cache", src / "fake"
    cache.mkdir(parents=True)
    fake.mkdir()
    (cache / "CACHEDIR.TAG").write_bytes(b"Signature: 8a477f597d28d172789f06886806bc55\n# x\n")
    (cache / "blob").write_bytes(b"cached")
    (fake / "CACHEDIR.TAG").write_bytes(b"Signature: not the right one")
    (fake / "kept").write_bytes(b"kept")
    (src / "linked").mkdir()
    (src / "linked" / "CACHEDIR.TAG").symlink_to(cache / "CACHEDIR.TAG")  # not followed

    snap = local_store.backup(src, "backups/caches", exclude_caches=True)
    paths = {e.path for e in local_store.snapshot_entries(snap.reference)}
    assert b"build/cache" in paths and b"build/cache/blob" not in paths
    assert {b"fake/kept", b"linked/CACHEDIR.TAG"} <= paths
    assert snap.stats.skipped_paths == [
        ("build/cache", "a cache directory (CACHEDIR.TAG): its contents are not backed up")
    ]
    plain = local_store.backup(src, "backups/plain")
    assert b"build/cache/blob" in {e.path for e in local_store.snapshot_entries(plain.reference)}


def _grow_on_first_report(file: Path) -> ProgressCallback:
    """A progress callback that appends to `file` when the backup first reports reading
    it: an event inside the read, not a race against it."""
    grown: list[bool] = []

    def report(progress: castore.Progress) -> None:
        if progress.path.endswith(file.name) and not grown:
            grown.append(True)
            with open(file, "ab") as out:
                out.write(b"appended while it was read")

    return report


def test_a_file_that_changes_while_it_is_read_is_flagged(
    local_store: castore.Store, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "growing.log"
    big.write_bytes(pattern(9 * MIB, 6))
    (src / "still").write_bytes(b"same")
    snap = local_store.backup(src, "backups/live", progress=_grow_on_first_report(big))
    assert (snap.stats.changed, snap.stats.changed_paths) == (1, ["growing.log"])
    assert snap.metadata["changed"] == 1
    entries = {e.path: e for e in local_store.snapshot_entries(snap.reference)}
    assert entries[b"growing.log"].size in (9 * MIB, big.stat().st_size)  # what was read
    # Unchanged since: the next backup reads it again (its mtime moved) and flags nothing.
    again = local_store.backup(src, "backups/live")
    assert (again.stats.changed, again.stats.files_read) == (0, 1)
    assert "changed" not in again.metadata


GROWING_CLI = """
import sys
from pathlib import Path
import castore
from castore.cli import main
from tests.test_backup_fidelity import _grow_on_first_report

backup = castore.Store.backup
def hooked(self, path, name, *, progress=None, **options):
    hook = _grow_on_first_report(Path(path) / "growing.log")
    def both(report):
        hook(report)
        if progress is not None:
            progress(report)
    return backup(self, path, name, progress=both, **options)
castore.Store.backup = hooked
sys.exit(main.main(sys.argv[1:]))
"""


def test_the_command_exits_3_when_a_file_changed_while_read(
    local_store: castore.Store, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "growing.log").write_bytes(pattern(9 * MIB, 7))
    run = [sys.executable, "-c", GROWING_CLI, "--store", local_store.url, "backup", str(src)]
    done = subprocess.run([*run, "--name", "backups/live"], capture_output=True, cwd=ROOT)
    assert done.returncode == 3, done.stderr
    assert b"changed while read (recorded as read): growing.log" in done.stdout
    quiet = subprocess.run(
        [sys.executable, "-m", "castore", "--store", local_store.url, "backup", str(src),
         "--name", "backups/live"],
        capture_output=True,
    )  # fmt: skip
    assert quiet.returncode == 0, quiet.stderr


# -- extended attributes, FIFOs and device nodes (tree format version 3) ---------------------

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")
"""A security.capability value (VFS_CAP_REVISION_2) granting cap_net_bind_service."""
NO_ID = 2**32 - 1
ACL_ENTRIES = [(1, 6, NO_ID), (2, 4, 4242), (4, 4, NO_ID), (0x10, 4, NO_ID), (0x20, 0, NO_ID)]
ACL = (2).to_bytes(4, "little") + b"".join(
    tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + ident.to_bytes(4, "little")
    for tag, perm, ident in ACL_ENTRIES
)
"""A POSIX access ACL in the kernel's form: owner rw, user 4242 r, group r, mask r, other."""


def xattrs_of(path: Path) -> dict[str, bytes]:
    """The extended attributes of `path` itself (never following a symlink)."""
    names = os.listxattr(path, follow_symlinks=False)
    return {name: os.getxattr(path, name, follow_symlinks=False) for name in names}


def build_special_tree(root: Path) -> dict[str, dict[str, bytes]]:
    """Files, a folder, a FIFO (and, as root, a character device) with attributes; the
    attributes each path gets."""
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"with attributes")
    os.mkfifo(root / "pipe", 0o640)
    wanted = {"d": {"user.folder": b"x"}, "d/f": {"user.note": b"hello", "user.empty": b""}}
    if os.geteuid() == 0:
        os.mknod(root / "null", stat.S_IFCHR | 0o640, os.makedev(1, 3))  # as /dev/null
        wanted["d/f"] |= {"trusted.t": b"2", "security.capability": CAPABILITY}
        wanted["d/f"]["system.posix_acl_access"] = ACL
        wanted["pipe"] = {"trusted.pipe": b"p"}
    for rel, pairs in wanted.items():
        for name, value in pairs.items():
            os.setxattr(root / rel, name, value)
    for path in (root / "d" / "f", root / "pipe", root / "d"):
        os.utime(path, ns=(MTIME, MTIME), follow_symlinks=False)
    return wanted


def test_xattrs_and_fifos_round_trip(local_store: castore.Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    wanted = build_special_tree(src)
    snap = local_store.backup(src, "backups/special")
    assert serializer_version(local_store, snap.reference) == "3"
    assert snap.stats.xattrs == len(wanted)
    assert snap.stats.specials == 1 + (os.geteuid() == 0)
    out = tmp_path / "out"
    stats = local_store.restore(snap.reference, out, setid=True, devices=True)
    for rel, pairs in wanted.items():
        assert xattrs_of(out / rel) == pairs, rel
    pipe = os.lstat(out / "pipe")
    assert stat.S_ISFIFO(pipe.st_mode) and stat.S_IMODE(pipe.st_mode) == 0o640
    assert pipe.st_mtime_ns == os.lstat(out / "d").st_mtime_ns == MTIME
    assert stats.specials == snap.stats.specials and stats.xattrs_unsupported == 0
    again = local_store.restore(snap.reference, out, setid=True, devices=True)
    assert again.specials == stats.specials and os.lstat(out / "pipe").st_ino == pipe.st_ino

    bare = tmp_path / "bare"
    local_store.restore(snap.reference, bare, xattrs=False)
    assert all(xattrs_of(bare / rel) == {} for rel in wanted)
    plain = local_store.backup(src, "backups/plain", xattrs=False)
    assert all(not entry.xattrs for entry in local_store.snapshot_entries(plain.reference))
    (src / "pipe").unlink()
    (src / "null").unlink(missing_ok=True)
    assert serializer_version(local_store, local_store.backup(src, "b/x").reference) == "3"
    without = local_store.backup(src, "backups/without", xattrs=False)
    assert serializer_version(local_store, without.reference) == "1"


@requires_root
def test_as_root_device_nodes_round_trip_with_the_opt_in(
    local_store: castore.Store, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    build_special_tree(src)
    snap = local_store.backup(src, "backups/devices")
    (entry,) = [e for e in local_store.snapshot_entries(snap.reference) if e.path == b"null"]
    assert (entry.type, entry.major, entry.minor) == ("chardev", 1, 3)
    out = tmp_path / "out"
    stats = local_store.restore(snap.reference, out, devices=True)
    node = os.lstat(out / "null")
    assert stat.S_ISCHR(node.st_mode) and node.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(node.st_mode) == 0o640 and stats.plan.devices_refused == 0
    default = local_store.restore(snap.reference, tmp_path / "default")
    assert not (tmp_path / "default" / "null").exists()
    assert default.plan.devices_refused == 1 and default.specials == 1  # the FIFO
    # trusted.t, security.capability, the ACL (it grants user 4242 what 0644 does not),
    # trusted.pipe
    assert default.plan.xattrs_stripped == 4
    assert xattrs_of(tmp_path / "default" / "d" / "f") == {"user.note": b"hello", "user.empty": b""}


def test_an_attribute_the_file_system_refuses_is_counted(
    local_store: castore.Store, tmp_path: Path
) -> None:
    """Linux takes no user.* attribute on a symlink: the restore counts it and goes on."""
    link = raw_entry(b"link", "symlink", size=1, target=b"x", xattrs=[[b"user.a", b"1"]])
    ref = commit_tree(local_store, "backups/refused", [link], "3")
    stats = local_store.restore(ref, tmp_path / "out")
    assert stats.symlinks == 1 and stats.xattrs_unsupported == 1
    assert os.readlink(tmp_path / "out" / "link") == "x"


# -- the backed-up folder's own metadata --------------------------------------------------------


def test_a_full_restore_gives_the_target_the_folders_mode_mtime_and_owner(
    local_store: castore.Store, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    src.chmod(0o750)
    owner = (4242, 4343) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    os.chown(src, *owner)
    os.utime(src, ns=(MTIME, MTIME))
    snap = local_store.backup(src, "backups/top")
    assert serializer_version(local_store, snap.reference) == "1"  # the manifest holds it
    assert snap.metadata["root"] == {
        "mode": 0o750,
        "mtime_ns": MTIME,
        "uid": owner[0],
        "gid": owner[1],
    }
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    local_store.restore(snap.reference, out)
    top = os.lstat(out)
    assert (stat.S_IMODE(top.st_mode), top.st_mtime_ns) == (0o750, MTIME)
    assert (top.st_uid, top.st_gid) == owner
    part = tmp_path / "part"
    part.mkdir(mode=0o700)
    before = os.lstat(part)
    local_store.restore(snap.reference, part, ["f"])
    after = os.lstat(part)
    assert (stat.S_IMODE(after.st_mode), after.st_uid) == (0o700, before.st_uid)
    assert after.st_mtime_ns != MTIME


def test_snapshots_without_the_folders_metadata_leave_the_target_alone(
    local_store: castore.Store, tmp_path: Path
) -> None:
    ref = commit_tree(local_store, "backups/older", [raw_entry(b"d", DIR, mode=0o755)], "1")
    out = tmp_path / "out"
    out.mkdir(mode=0o711)
    local_store.restore(ref, out)
    assert stat.S_IMODE(os.lstat(out).st_mode) == 0o711


# -- listing, comparing and dumping the new entries ----------------------------------------------


def special_snapshot(store: castore.Store, name: str, note: bytes, minor: int) -> str:
    """A version 3 snapshot of a FIFO, a character device and a file with attributes."""
    content = store.repository.write_stream(b"noted")
    pairs = [[b"security.capability", b"\1\0\0\2"], [b"user.note", note]]
    values: list[object] = [
        raw_entry(b"f", FILE, size=content.size, sha256=content.sha256, chunks=content.chunk_ids)
        | {"sizes": list(content.chunk_sizes), "xattrs": pairs},
        raw_entry(b"null", "chardev", major=1, minor=minor),
        raw_entry(b"pipe", "fifo"),
    ]
    return commit_tree(store, name, values, "3")


def test_ls_diff_and_dump_show_special_entries_and_attributes(
    local_store: castore.Store, tmp_path: Path
) -> None:
    a = special_snapshot(local_store, "backups/a", b"one", 3)
    b = special_snapshot(local_store, "backups/b", b"two", 5)
    listed = {e["path"]: e for e in json.loads(cli(local_store.url, "--json", "ls", a))}
    assert (listed["null"]["major"], listed["null"]["minor"]) == (1, 3)
    assert listed["f"]["xattrs"] == ["security.capability", "user.note"]
    assert listed["pipe"]["type"] == "fifo" and "major" not in listed["pipe"]
    text = cli(local_store.url, "ls", a).splitlines()
    assert any(line.startswith("chardev") and " 1,3  null" in line for line in text)
    changes = {c.path_str: c.what for c in local_store.snapshot_diff(a, b)}
    assert changes == {"f": ("xattrs",), "null": ("device",)}

    def members(devices: bool) -> dict[str, tarfile.TarInfo]:
        out = io.BytesIO()
        local_store.dump(a, "/", out, archive="tar", devices=devices)
        out.seek(0)
        with tarfile.open(fileobj=out) as archive:
            return {member.name: member for member in archive}

    safe = members(devices=False)
    assert sorted(safe) == ["f", "pipe"] and safe["pipe"].isfifo()
    xattrs = {k: v for k, v in safe["f"].pax_headers.items() if k.startswith("SCHILY.xattr.")}
    assert xattrs == {"SCHILY.xattr.user.note": "one"}  # no capability
    node = members(devices=True)["null"]
    assert node.ischr() and (node.devmajor, node.devminor) == (1, 3)


SNAPSHOT_V1 = ROOT / "tests" / "data" / "snapshot-v1"
"""A store with one snapshot, backups/first-round:1, written by castore at bfbd0c6 (store
format 1, tree format 1, as the first round wrote them) from a tree of a text file, a
0750 program, a symlink to the file and an empty 0700 folder, every mtime MTIME."""


def test_a_stored_first_round_snapshot_still_restores(tmp_path: Path) -> None:
    shutil.copytree(SNAPSHOT_V1, tmp_path / "store")
    with castore.open(str(tmp_path / "store")) as store:
        assert serializer_version(store, "backups/first-round:1") == "1"
        out = tmp_path / "out"
        stats = store.restore("backups/first-round:1", out)
        assert (stats.files_written, stats.symlinks, stats.dirs) == (2, 1, 3)
        notes = "notes kept since the first round\n" * 50
        assert (out / "docs" / "notes.txt").read_text() == notes
        assert (out / "bin" / "tool").read_text() == "#!/bin/sh\necho tool\n"
        assert os.readlink(out / "bin" / "link") == "../docs/notes.txt"
        assert stat.S_IMODE(os.lstat(out / "bin" / "tool").st_mode) == 0o750
        assert stat.S_IMODE(os.lstat(out / "empty").st_mode) == 0o700
        for path in ("docs/notes.txt", "bin/tool", "bin/link", "empty", "docs", "bin"):
            assert os.lstat(out / path).st_mtime_ns == MTIME, path
        dumped = io.BytesIO()
        store.dump("backups/first-round:1", "docs/notes.txt", dumped)
        assert dumped.getvalue().decode() == notes
        assert not store.verify(read_data=True).problems
