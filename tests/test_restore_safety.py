"""Restores of snapshots planted by someone who can write to the store and holds no key.

Each test backs up a directory and then rigs the target, as an attacker sharing the
machine would, restores it, and checks that nothing outside the target changes: a hard
link in the target is replaced, never changed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import castore

OWNER, GROUP = 4242, 4343
"""An owner and group that no user of the test machine has."""


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[castore.Store]:
    """A store on the local file system (restore works the same on every backend)."""
    with castore.init(tmp_path / "store") as store:
        yield store


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
