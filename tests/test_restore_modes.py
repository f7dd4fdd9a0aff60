"""restore's --overwrite always|if-changed|never and --delete (restic's options)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import castore
from tests.test_backup import commit_raw_tree, raw_file, raw_meta

MTIME = 1_600_000_000_000_000_000


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[castore.Store]:
    with castore.init(str(tmp_path / "store")) as opened:
        yield opened


def make_source(root: Path) -> None:
    (root / "b" / "deep").mkdir(parents=True)
    for name, text in {"a.txt": "alpha", "b/one": "one", "b/deep/two": "two"}.items():
        (root / name).write_text(text)
        os.utime(root / name, ns=(MTIME, MTIME))
    (root / "b" / "link").symlink_to("one")


def precious_folder(path: Path) -> Path:
    """A folder outside every restore target, holding a file named precious."""
    path.mkdir()
    (path / "precious").write_text("keep me")
    return path


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def restored(local_store: castore.Store, tmp_path: Path) -> tuple[str, Path, Path]:
    src, out = tmp_path / "src", tmp_path / "out"
    make_source(src)
    snap = local_store.backup(src, "backups/t")
    local_store.restore(snap.reference, out)
    return snap.reference, src, out


def test_overwrite_if_changed_always_and_never(
    local_store: castore.Store, restored: tuple[str, Path, Path]
) -> None:
    ref, src, out = restored
    (out / "a.txt").write_text("edited")
    (out / "b" / "link").unlink()
    (out / "b" / "link").write_text("a file where the link was")

    kept = local_store.restore(ref, out, overwrite="never")
    assert (kept.files_written, kept.files_unchanged, kept.existing_kept) == (0, 0, 4)
    assert (out / "a.txt").read_text() == "edited"
    assert not (out / "b" / "link").is_symlink()
    (out / "b" / "deep" / "two").unlink()
    again = local_store.restore(ref, out, overwrite="never")
    assert (again.files_written, again.existing_kept) == (1, 3)
    assert (out / "b" / "deep" / "two").read_text() == "two"

    changed = local_store.restore(ref, out)  # if-changed, the default
    assert (changed.files_written, changed.files_unchanged) == (1, 2)
    assert (out / "a.txt").read_text() == "alpha" and (out / "b" / "link").is_symlink()
    every = local_store.restore(ref, out, overwrite="always")
    assert (every.files_written, every.files_unchanged, every.existing_kept) == (3, 0, 0)
    assert {p: (src / p).read_bytes() for p in ("a.txt", "b/one", "b/deep/two")} == {
        p: (out / p).read_bytes() for p in ("a.txt", "b/one", "b/deep/two")
    }

    (out / "b" / "deep" / "two").unlink()
    (out / "b" / "deep").rmdir()
    (out / "b" / "deep").write_text("a file where a folder belongs")
    with pytest.raises(castore.InvalidInputError, match="overwrite 'never' leaves it"):
        local_store.restore(ref, out, overwrite="never")
    with pytest.raises(castore.InvalidInputError, match="overwrite must be one of"):
        local_store.restore(ref, out, overwrite="sometimes")


def test_delete_removes_what_the_snapshot_lacks_and_nothing_outside(
    local_store: castore.Store, restored: tuple[str, Path, Path], tmp_path: Path
) -> None:
    ref, _src, out = restored
    outside = precious_folder(tmp_path / "outside")
    (out / "stray.txt").write_text("x")
    (out / "b" / "old").mkdir()
    (out / "b" / "old" / "nested").write_text("y")
    (out / "b" / "deep" / "to-outside").symlink_to(outside)
    expected = {"stray.txt", "b/old", "b/deep/to-outside"}

    dry = local_store.restore(ref, out, delete=True, dry_run=True)
    assert set(dry.removed_paths) == expected and dry.removed == 3
    assert (out / "stray.txt").exists()  # a dry run removes nothing

    part = local_store.restore(ref, out, ["b/deep"], delete=True)
    assert part.removed_paths == ["b/deep/to-outside"]
    assert (out / "stray.txt").exists() and (out / "b" / "old").exists()

    everything = local_store.restore(ref, out, delete=True)
    assert sorted(everything.removed_paths) == ["b/old", "stray.txt"]
    assert listing(out) == {"a.txt", "b", "b/one", "b/link", "b/deep", "b/deep/two"}
    assert (outside / "precious").read_text() == "keep me"
    assert local_store.restore(ref, out, delete=True).removed == 0


def test_delete_keeps_paths_the_snapshot_records_as_skipped(
    local_store: castore.Store, tmp_path: Path
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_source(src)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(src / "secret"))  # a socket: recorded as skipped
    snap = local_store.backup(src, "backups/skips")
    assert snap.stats.skipped == 1
    out.mkdir()
    (out / "secret").write_text("mine")
    local_store.restore(snap.reference, out, delete=True)
    assert (out / "secret").read_text() == "mine"


def test_the_command_line_takes_overwrite_and_delete(
    local_store: castore.Store, restored: tuple[str, Path, Path]
) -> None:
    ref, _src, out = restored
    (out / "stray.txt").write_text("x")
    (out / "a.txt").write_text("edited")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "castore", "--store", local_store.url, "restore", ref,
             str(out), *args],
            capture_output=True,
            text=True,
        )  # fmt: skip

    dry = run("--delete", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete stray.txt" in dry.stdout
    never = run("--overwrite", "never", "--delete")
    assert never.returncode == 0, never.stderr
    assert "4 left as they were; 1 deleted" in never.stdout
    assert (out / "a.txt").read_text() == "edited" and not (out / "stray.txt").exists()
    assert run("--overwrite", "sometimes").returncode == 2


def test_a_folder_deeper_than_the_recursion_limit_is_replaced_and_deleted(
    local_store: castore.Store, tmp_path: Path
) -> None:
    """A first restore of a store writer's snapshot may leave folders 1,500 deep (within
    the path limit); replacing or deleting them must not raise RecursionError."""
    depth = sys.getrecursionlimit() + 500
    entries = [raw_meta(b"/".join([b"d"] * level), "dir") for level in range(1, depth + 1)]
    deep = commit_raw_tree(local_store, "deep", entries)
    content = local_store.repository.write_stream(b"flat\n")
    flat = commit_raw_tree(local_store, "flat", [raw_file(b"d", content)])
    other = commit_raw_tree(local_store, "other", [raw_file(b"e", content)])
    out = tmp_path / "out"
    for replace_with, options in ((flat, {}), (other, {"delete": True})):
        assert local_store.restore(deep, out).dirs == depth
        local_store.restore(replace_with, out, **options)
        assert os.listdir(out) == (["d"] if replace_with == flat else ["e"])


def test_delete_refuses_a_target_reached_through_a_symlink(
    local_store: castore.Store, restored: tuple[str, Path, Path], tmp_path: Path
) -> None:
    ref, _src, out = restored
    home = precious_folder(tmp_path / "home")
    (out / "data").symlink_to(home)  # as an earlier restore of a planted snapshot leaves
    for dry_run in (True, False):
        with pytest.raises(castore.InvalidInputError, match="leads through a symlink"):
            local_store.restore(ref, out / "data", delete=True, dry_run=dry_run)
    assert (home / "precious").read_text() == "keep me"
    local_store.restore(ref, home, delete=True)  # the real folder, named as it is
    assert not (home / "precious").exists()
