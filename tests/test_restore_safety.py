"""Restores of snapshots planted by someone who can write to the store and holds no key.

Each test plants a tree stream by hand, as docs/FORMAT.md section 20 describes it (or
backs up a directory and then rigs the target), restores it as root or as an unprivileged
user, and checks what tar and restic users expect: no setuid or setgid bit unless owners
are restored, hard links in the target never changed, and the size known before writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import castore
from castore.format.tree import DIR
from tests.helpers import ROOT, pattern
from tests.test_backup import commit_raw_tree, raw_file, raw_link, raw_meta

SETID = stat.S_ISUID | stat.S_ISGID
NOBODY = 65534
OWNER, GROUP = 4242, 4343
"""The owner and group the planted entries record (no such user on the test machine)."""

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="owners are restored only as root")


def hostile_tree(store: castore.Store) -> list[object]:
    """Entries with every set-id bit an attacker would plant: 4 of them carry one."""
    content = store.repository.write_stream(b"#!/bin/sh\nid\n")
    owned = {"uid": OWNER, "gid": GROUP}
    return [
        raw_meta(b"d", DIR, mode=0o7777, **owned),
        raw_link(b"d/link", b"suid") | owned,
        raw_file(b"d/suid", content, mode=0o4755, **owned),
        raw_file(b"d/ugid", content, mode=0o6755, **owned),
        raw_file(b"sgid", content, mode=0o2755, **owned),
        raw_meta(b"sticky", DIR, mode=0o1777, **owned),
    ]


STRIPPED_MODES = {"d": 0o1777, "d/suid": 0o755, "d/ugid": 0o755, "sgid": 0o755, "sticky": 0o1777}
"""The modes the hostile tree restores with when owners are not restored."""


def modes(target: Path) -> dict[str, int]:
    """The permission bits of every file and directory below target (links left out)."""
    return {
        str(path.relative_to(target)): stat.S_IMODE(path.lstat().st_mode)
        for path in target.rglob("*")
        if not path.is_symlink()
    }


def cli(store: str, *args: str, prefix: tuple[str, ...] = (), **env: str) -> str:
    """Run the castore command line (after `prefix`, e.g. setpriv); its stdout."""
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "castore", "--store", store, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[castore.Store]:
    """A store on the local file system (restore works the same on every backend)."""
    with castore.init(tmp_path / "store") as store:
        yield store


# -- modes and owners ------------------------------------------------------------------------


def assert_owned(target: Path) -> None:
    """Every entry restored under `target` has the planted owner and group."""
    for path in target.rglob("*"):
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (OWNER, GROUP), path


@requires_root
def test_as_root_owners_are_restored_before_the_modes_that_need_them(
    local_store: castore.Store, tmp_path: Path
) -> None:
    ref = commit_raw_tree(local_store, "evil/owned", hostile_tree(local_store))
    target = tmp_path / "out"
    stats = local_store.restore(ref, target, setid=True)
    assert_owned(target)
    expected = {"d": 0o7777, "d/suid": 0o4755, "d/ugid": 0o6755, "sgid": 0o2755, "sticky": 0o1777}
    assert modes(target) == expected  # chown before chmod, or chown clears the set-id bits
    assert stats.plan.ownership.owners and stats.plan.ownership.setid
    assert stats.plan.setid_stripped == 0


@requires_root
def test_as_root_by_default_owners_come_back_but_no_setid_bit(
    local_store: castore.Store, tmp_path: Path
) -> None:
    """A snapshot anyone could have planted must not leave a set-id program owned by
    root: by default set-id bits need `setid=True` even when owners are restored."""
    ref = commit_raw_tree(local_store, "evil/default", hostile_tree(local_store))
    target = tmp_path / "out"
    stats = local_store.restore(ref, target)
    assert_owned(target)
    assert not any(path.lstat().st_mode & SETID for path in target.rglob("*"))
    assert stats.plan.ownership.owners and not stats.plan.ownership.setid
    assert stats.plan.setid_stripped == 4


@requires_root
def test_as_root_without_owners_setuid_and_setgid_are_stripped_and_counted(
    local_store: castore.Store, tmp_path: Path
) -> None:
    ref = commit_raw_tree(local_store, "evil/setid", hostile_tree(local_store))
    target = tmp_path / "out"
    stats = local_store.restore(ref, target, owners=False)
    assert not stats.plan.ownership.owners and stats.plan.setid_stripped == 4
    assert modes(target) == STRIPPED_MODES
    assert {path.lstat().st_uid for path in target.rglob("*")} == {0}

    summary = json.loads(
        cli(local_store.url, "--json", "restore", "--no-owner", ref, str(tmp_path / "cli"))
    )
    assert summary["plan"]["setid_stripped"] == 4 and not summary["plan"]["owners_restored"]
    assert modes(tmp_path / "cli") == STRIPPED_MODES
    text = cli(local_store.url, "restore", "--no-owner", ref, str(tmp_path / "cli"))
    assert "setuid/setgid stripped from 4" in text.splitlines()[-1]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder that an unprivileged user can reach (pytest's tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="castore-restore-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def unprivileged() -> tuple[str, ...]:
    """A command prefix that runs as nobody: setpriv when root, nothing otherwise."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot restore as another user")
    return (setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--")


def restore_unprivileged(
    shared_dir: Path,
    planted: Callable[[castore.Store], list[object]],
    *options: str,
    version: str = "1",
) -> dict[str, Any]:
    """Plant a tree of format `version` in a store in `shared_dir` and restore it into
    `shared_dir / "out"` with the command line as nobody (when root; as the user
    otherwise), with `options`; the restore's JSON summary."""
    prefix = unprivileged()
    with castore.init(shared_dir / "store") as store:
        ref = commit_raw_tree(store, "evil/planted", planted(store), version=version)
    if prefix:
        for folder, _, files in os.walk(shared_dir):
            for name in [folder, *(os.path.join(folder, file) for file in files)]:
                os.chown(name, NOBODY, NOBODY)
    store_url, target = str(shared_dir / "store"), str(shared_dir / "out")
    cache = str(shared_dir / "cache")
    restored = cli(
        store_url,
        "--json",
        "restore",
        *options,
        ref,
        target,
        prefix=prefix,
        CASTORE_CACHE_DIR=cache,
    )
    return cast(dict[str, Any], json.loads(restored))


def test_not_as_root_setuid_and_setgid_are_stripped_and_counted(shared_dir: Path) -> None:
    summary = restore_unprivileged(shared_dir, hostile_tree)
    target = shared_dir / "out"
    assert not any(path.lstat().st_mode & SETID for path in target.rglob("*"))
    assert modes(target) == STRIPPED_MODES
    assert summary["plan"]["setid_stripped"] == 4 and not summary["plan"]["owners_restored"]


# -- never change what the restore did not create ----------------------------------------


def test_a_hard_link_in_the_target_is_replaced_and_its_outside_file_left_alone(
    local_store: castore.Store, tmp_path: Path
) -> None:
    src, target, outside = tmp_path / "src", tmp_path / "out", tmp_path / "outside"
    for folder in (src, outside):
        folder.mkdir()
    (src / "f").write_bytes(b"same content")
    (src / "f").chmod(0o644)
    os.symlink("somewhere", src / "l")
    snapshot = local_store.backup(src, "backups/links")
    target.mkdir()

    victim, victim_link = outside / "victim", outside / "victim-link"
    victim.write_bytes(b"same content")  # the entry's size, content and mtime
    os.utime(victim, ns=(0, (src / "f").stat().st_mtime_ns))
    victim.chmod(0o600)
    os.symlink("somewhere", victim_link)  # the entry's target, another mtime
    os.utime(victim_link, ns=(0, 1_000_000_000), follow_symlinks=False)
    if os.geteuid() == 0:
        os.chown(victim, OWNER, GROUP)
    before = {path: path.lstat() for path in (victim, victim_link)}
    os.link(victim, target / "f")
    os.link(victim_link, target / "l", follow_symlinks=False)

    stats = local_store.restore(snapshot.reference, target)
    assert victim.read_bytes() == b"same content"
    for path, old in before.items():
        new = path.lstat()
        assert (new.st_mode, new.st_uid, new.st_gid, new.st_mtime_ns) == (
            old.st_mode,
            old.st_uid,
            old.st_gid,
            old.st_mtime_ns,
        ), path
        assert new.st_nlink == 1, path
    restored = (target / "f").lstat()
    assert stat.S_IMODE(restored.st_mode) == 0o644 and restored.st_ino != before[victim].st_ino
    assert (target / "l").lstat().st_mtime_ns == (src / "l").lstat().st_mtime_ns
    assert (stats.files_written, stats.files_unchanged) == (1, 0)


# -- the size up front, dry runs --------------------------------------------------------------


def amplified_file(
    store: castore.Store, path: bytes, times: int, *, honest: bool
) -> dict[str, object]:
    """A file entry listing the chunks of one small stored stream `times` times: the
    amplification a planted entry gets for free. Its SHA-256 is wrong unless `honest`."""
    data = pattern(64 * 1024)
    stored = store.repository.write_stream(data)
    content = data * times
    entry = raw_file(path, stored, size=len(content))
    entry.update(chunks=stored.chunk_ids * times, sizes=list(stored.chunk_sizes) * times)
    entry["sha256"] = hashlib.sha256(content if honest else b"other").digest()
    return entry


def test_the_size_is_known_before_anything_is_written(
    local_store: castore.Store, tmp_path: Path
) -> None:
    times = 256  # 16 MiB from one 64 KiB chunk
    ref = commit_raw_tree(
        local_store, "evil/big", [amplified_file(local_store, b"big", times, honest=True)]
    )
    target = tmp_path / "out"
    plans: list[castore.RestorePlan] = []

    def before_writing(plan: castore.RestorePlan) -> None:
        assert not target.exists()
        plans.append(plan)

    stats = local_store.restore(ref, target, on_plan=before_writing)
    assert [(plan.files, plan.bytes) for plan in plans] == [(1, times * 64 * 1024)]
    assert stats.bytes_written == times * 64 * 1024
    first = cli(local_store.url, "restore", ref, str(tmp_path / "cli")).splitlines()[0]
    owners = "owners restored" if os.geteuid() == 0 else "owners not restored"
    assert first == f"restoring 1 files, 16.0 MiB to {tmp_path / 'cli'} ({owners})"

    lying = commit_raw_tree(
        local_store, "evil/lie", [amplified_file(local_store, b"big", times, honest=False)]
    )
    with pytest.raises(castore.IntegrityError, match="restores as"):
        local_store.restore(lying, tmp_path / "lie")
    assert list((tmp_path / "lie").iterdir()) == []  # no final name, no temporary left


def test_a_dry_run_lists_what_it_would_write_and_writes_nothing(
    local_store: castore.Store, tmp_path: Path
) -> None:
    ref = commit_raw_tree(local_store, "evil/setid", hostile_tree(local_store))
    target = tmp_path / "out"
    stats = local_store.restore(ref, target, owners=False, dry_run=True)
    assert not target.exists()
    assert stats.dry_run and stats.files_written == 0
    plan = stats.plan
    assert (plan.files, plan.dirs, plan.symlinks, plan.setid_stripped) == (3, 2, 1, 4)
    assert plan.bytes == 3 * len(b"#!/bin/sh\nid\n")
    listed = {entry.path_str: plan.mode(entry) for entry in local_store.planned_entries(plan)}
    assert {path: listed[path] for path in STRIPPED_MODES} == STRIPPED_MODES

    target.mkdir()
    (target / "sgid").write_bytes(b"already here")
    before = (target / "sgid").stat()
    output = cli(local_store.url, "restore", "--dry-run", ref, str(target), "d")
    lines = output.splitlines()
    assert lines[0].startswith(f"would restore 2 files, 26 B to {target}")
    assert [line.split()[-1] for line in lines[1:]] == ["d", "d/link", "d/suid", "d/ugid"]
    assert [path.name for path in target.iterdir()] == ["sgid"]
    assert (target / "sgid").stat() == before
    planned = json.loads(cli(local_store.url, "--json", "restore", "--dry-run", ref, str(target)))
    assert planned["dry_run"] and planned["plan"]["files"] == 3
    assert {e["path"]: e["size"] for e in planned["entries"]}["sgid"] == len(b"#!/bin/sh\nid\n")


# -- planted device nodes and extended attributes ----------------------------------------------

CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")
"""security.capability granting cap_net_bind_service: what an attacker would make cap_sys_admin."""


def planted_specials(store: castore.Store) -> list[object]:
    """A tree of version 3 with a world-writable block device for the first disk, a FIFO
    and a program carrying a file capability and a trusted attribute."""
    content = store.repository.write_stream(b"#!/bin/sh\nid\n")
    privileged = [[b"security.capability", CAPABILITY], [b"trusted.overlay.redirect", b"/etc"]]
    return [
        raw_meta(b"disk", "blockdev", mode=0o666, major=8, minor=0),
        raw_meta(b"pipe", "fifo", mode=0o600),
        raw_file(b"prog", content, mode=0o755, xattrs=[*privileged, [b"user.ok", b"1"]]),
    ]


def test_a_planted_device_node_or_file_capability_needs_its_opt_in(
    local_store: castore.Store, tmp_path: Path
) -> None:
    ref = commit_raw_tree(local_store, "evil/specials", planted_specials(local_store), version="3")
    target = tmp_path / "out"
    stats = local_store.restore(ref, target)
    assert sorted(path.name for path in target.iterdir()) == ["pipe", "prog"]
    assert stats.plan.devices_refused == 1 and stats.specials == 1
    assert os.listxattr(target / "prog") == ["user.ok"]
    assert stats.plan.xattrs_stripped == 2
    summary = json.loads(cli(local_store.url, "--json", "restore", ref, str(tmp_path / "cli")))
    assert summary["plan"]["devices_refused"] == 1 and not summary["plan"]["devices_restored"]
    assert not (tmp_path / "cli" / "disk").exists()
    text = cli(local_store.url, "restore", ref, str(tmp_path / "text")).splitlines()[-1]
    assert "; 1 FIFOs and devices; 1 device nodes not created (--devices)" in text
    assert "; 2 security/trusted attributes left out (--keep-setid)" in text


@requires_root
def test_as_root_the_opt_ins_restore_what_they_name(
    local_store: castore.Store, tmp_path: Path
) -> None:
    planted = planted_specials(local_store)
    planted[0] = raw_meta(b"disk", "chardev", mode=0o600, major=1, minor=3)  # /dev/null
    ref = commit_raw_tree(local_store, "evil/opted", planted, version="3")
    target = tmp_path / "out"
    stats = local_store.restore(ref, target, setid=True, devices=True)
    assert os.lstat(target / "disk").st_rdev == os.makedev(1, 3)
    assert os.getxattr(target / "prog", "security.capability") == CAPABILITY
    assert stats.plan.xattrs_stripped == stats.plan.devices_refused == 0


def test_not_as_root_no_device_node_is_made_even_when_asked(shared_dir: Path) -> None:
    options = ("--devices", "--keep-setid")
    summary = restore_unprivileged(shared_dir, planted_specials, *options, version="3")
    target = shared_dir / "out"
    assert sorted(path.name for path in target.iterdir()) == ["pipe", "prog"]
    assert summary["plan"]["devices_refused"] == 1 and summary["plan"]["xattrs_stripped"] == 2
    assert os.listxattr(target / "prog") == ["user.ok"]


@pytest.mark.parametrize(
    "xattrs",
    [
        [[b"user.big", b"x" * 65537]],
        [[b"user.%04d" % n, b""] for n in range(1025)],
        [[b"user.%02d" % n, b"x" * 65536] for n in range(17)],
        [[b"system.sockprotoname", b"x"]],
        [[b"user.b", b""], [b"user.a", b""]],
    ],
    ids=["value too long", "too many", "too large in all", "other namespace", "unsorted"],
)
def test_malformed_planted_xattrs_are_damage_and_nothing_is_written(
    local_store: castore.Store, tmp_path: Path, xattrs: list[list[bytes]]
) -> None:
    content = local_store.repository.write_stream(b"data")
    values = [raw_meta(b"d", DIR), raw_file(b"d/f", content, xattrs=xattrs)]
    ref = commit_raw_tree(local_store, "evil/xattrs", values, version="3")
    with pytest.raises(castore.IntegrityError, match="extended attribute"):
        local_store.restore(ref, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- the target folder's own metadata -------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ({"mode": 0o10000, "mtime_ns": 0, "uid": 0, "gid": 0}, "outside"),
        ({"mode": 0o755, "mtime_ns": 0, "uid": 0}, "exactly"),
        ({"mode": 0o755, "mtime_ns": 0, "uid": 0, "gid": 0, "path": b"/etc"}, "exactly"),
        ({"mode": "0755", "mtime_ns": 0, "uid": 0, "gid": 0}, "should be int"),
        ([0o755], "should be dict"),
    ],
)
def test_malformed_root_metadata_is_damage_and_nothing_is_written(
    local_store: castore.Store, tmp_path: Path, root: object, message: str
) -> None:
    ref = commit_raw_tree(local_store, "evil/root", [raw_meta(b"d", DIR)], metadata={"root": root})
    with pytest.raises(castore.IntegrityError, match=message):
        local_store.restore(ref, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_targets_setid_bits_need_the_opt_in_too(
    local_store: castore.Store, tmp_path: Path
) -> None:
    root = {"mode": 0o6777, "mtime_ns": 0, "uid": os.getuid(), "gid": os.getgid()}
    ref = commit_raw_tree(local_store, "evil/root", [raw_meta(b"d", DIR)], metadata={"root": root})
    stats = local_store.restore(ref, tmp_path / "out")
    assert stat.S_IMODE(os.lstat(tmp_path / "out").st_mode) == 0o777
    assert stats.plan.setid_stripped == 1


def test_the_targets_own_metadata_is_not_set_through_a_symlink(
    local_store: castore.Store, tmp_path: Path
) -> None:
    """Found by the attack on tree format 3: a first restore leaves T/sub -> OUTSIDE; a
    second into T/sub must not chmod or chown OUTSIDE itself."""
    outside = tmp_path / "etc"
    outside.mkdir(mode=0o755)
    first = commit_raw_tree(local_store, "evil/one", [raw_link(b"sub", os.fsencode(outside))])
    root = {"mode": 0o777, "mtime_ns": 0, "uid": 65534, "gid": 65534}
    second = commit_raw_tree(
        local_store, "evil/two", [raw_meta(b"d", DIR)], metadata={"root": root}
    )
    local_store.restore(first, tmp_path / "T")
    local_store.restore(second, tmp_path / "T" / "sub")
    after = os.stat(outside)
    assert (stat.S_IMODE(after.st_mode), after.st_uid) == (0o755, os.getuid())
    local_store.restore(second, tmp_path / "real")  # named as it is: the metadata applies
    assert stat.S_IMODE(os.stat(tmp_path / "real").st_mode) == 0o777


def test_planted_device_numbers_past_linux_bounds_are_damage(
    local_store: castore.Store, tmp_path: Path
) -> None:
    for major, minor in ((2**12, 0), (0, 2**20), (2**32 - 1, 0)):
        node = raw_meta(b"dev", "chardev", major=major, minor=minor)
        ref = commit_raw_tree(local_store, "evil/dev", [node], version="3")
        with pytest.raises(castore.IntegrityError, match=r"major|minor"):
            local_store.restore(ref, tmp_path / "out", devices=True)
