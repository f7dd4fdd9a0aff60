"""The castore command line, run as a user would: a subprocess per command."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import castore
from castore.cli.main import main
from castore.format import layout
from castore.format.digests import parse_digest
from castore.format.streams import StreamDescriptor, encode_stream_object
from castore.versions import catalog
from tests.conftest import SMALL_PACKS, Location
from tests.helpers import (
    ROOT,
    flip_byte,
    pack_paths,
    pattern,
    pyfastcdc_accepts,
    stream_object_path,
    stream_of,
)


def _cli(
    location: Location, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    options = [f"--option={k}={v}" for k, v in location.options.items()]
    return subprocess.run(
        [sys.executable, "-m", "castore", "--store", location.url, *options, *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, "CASTORE_STORE": "", **(env or {})},
        timeout=120,
    )


def _ok(
    location: Location, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> str:
    result = _cli(location, *args, stdin=stdin, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.mark.slow
@pytest.mark.parametrize("new_location", ["local", "s3-moto"], indirect=True)
def test_end_to_end_session(location: Location, tmp_path: Path) -> None:
    data = pattern(400_000, seed=1)
    source = tmp_path / "model.bin"
    source.write_bytes(data)
    assert "created castore store" in _ok(location, "init")

    assert _ok(location, "put", str(source)).strip() == "sha256:" + hashlib.sha256(data).hexdigest()
    first = json.loads(
        _ok(
            location,
            "--json",
            "put",
            str(source),
            "--name",
            "team/model",
            "--tag",
            "candidate",
            "--meta",
            "auc=0.91",
        )
    )
    assert first["version"] == 1 and first["metadata"] == {"auc": 0.91}
    changed = data[:200_000] + b"retrained" + data[200_000:]
    second = json.loads(_ok(location, "--json", "put", "-", "--name", "team/model", stdin=changed))
    assert second["version"] == 2 and second["new_bytes_stored"] < len(changed) / 2

    assert _ok(location, "resolve", "team/model:candidate").strip() == first["reference"]
    _ok(location, "tag", "team/model:2", "production")
    assert json.loads(_ok(location, "--json", "info", "team/model:production"))["version"] == 2
    out = tmp_path / "restored.bin"
    _ok(location, "get", f"team/model@{first['digest']}", "-o", str(out))
    assert out.read_bytes() == data
    assert _cli(location, "cat", "team/model:2").stdout == changed

    listing = json.loads(_ok(location, "--json", "ls", "team/model"))
    assert [row["version"] for row in listing] == [1, 2]
    diff = json.loads(_ok(location, "--json", "diff", "team/model:1", "team/model:2"))
    assert diff["shared_bytes"] > len(data) / 2 and diff["metadata_removed"] == {"auc": 0.91}
    assert "hash chain intact" in _ok(location, "log", "team/model", "--verify")

    assert _cli(location, "rm", "team/model:1").returncode == 2  # it carries "candidate"
    _ok(location, "rm", "team/model:1", "--force")
    assert [row["version"] for row in json.loads(_ok(location, "--json", "ls", "team/model"))] == [
        2
    ]
    assert "no problems found" in _ok(location, "verify")


@pytest.mark.slow
def test_exit_codes_are_reliable(location: Location, tmp_path: Path) -> None:
    if location.url.startswith("memory://"):
        pytest.skip("a memory store does not outlive one process")
    assert _cli(location, "ls").returncode == 3  # not a store yet
    _ok(location, "init")
    assert _cli(location, "init").returncode == 5  # already exists
    assert _cli(location, "get", "missing/name", "-o", str(tmp_path / "x")).returncode == 3
    assert _cli(location, "get", "Bad Name!", "-o", str(tmp_path / "x")).returncode == 2
    assert _cli(location, "put", str(tmp_path / "absent")).returncode == 2
    for n in range(3):
        _ok(location, "put", "-", "--name", "chain", stdin=f"version {n}".encode())
    assert _cli(location, "rm", "chain:2").returncode == 0
    assert _cli(location, "log", "chain", "--verify").returncode == 0  # deletion keeps the chain
    with location.open() as store:
        store.repository.backend.delete(
            "refs/chain/@versions/2"
        )  # a version vanishes behind our back
    broken = _cli(location, "log", "chain", "--verify")
    assert broken.returncode == 1 and b"chain:2: version is missing" in broken.stdout
    bad = subprocess.run([sys.executable, "-m", "castore", "frobnicate"], capture_output=True)
    assert bad.returncode == 2 and b"invalid choice" in bad.stderr


def test_help_lists_examples_and_exit_codes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "castore", "--help"], capture_output=True, text=True, check=True
    )
    assert "examples:" in result.stdout and "exit codes" in result.stdout


def test_missing_store_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "castore", "ls"],
        capture_output=True,
        text=True,
        env={**os.environ, "CASTORE_STORE": ""},
    )
    assert result.returncode == 2 and "--store" in result.stderr


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_maintenance_commands(location: Location, tmp_path: Path) -> None:
    _ok(location, "init")
    for seed in range(3):
        _ok(location, "put", "-", "--name", "m", stdin=pattern(300_000, seed=seed))
    _ok(location, "rm", "m:2")
    preview = json.loads(_ok(location, "--json", "gc", "--dry-run"))
    assert preview["dry_run"] and preview["bytes_freed"] > 250_000
    assert json.loads(_ok(location, "--json", "gc"))["bytes_freed"] == preview["bytes_freed"]
    stats = json.loads(_ok(location, "--json", "stats"))
    assert stats["versions"] == 2 and stats["garbage_bytes"] == 0
    assert "no problems found" in _ok(location, "verify", "--read-data")
    assert json.loads(_ok(location, "--json", "verify", "--read-data-subset", "1/2"))["ok"]
    assert json.loads(_ok(location, "--json", "repair"))["lost_chunks"] == 0
    dest = tmp_path / "copy"
    subprocess.run([sys.executable, "-m", "castore", "--store", str(dest), "init"], check=True)
    copied = json.loads(_ok(location, "--json", "copy", "m", str(dest)))
    assert [(v["version"], v["action"]) for v in copied["versions"]] == [
        (1, "copied"),
        (3, "copied"),
    ]
    bad = _cli(location, "verify", "--read-data-subset", "lots")
    assert bad.returncode == 2 and b"expected a percentage" in bad.stderr


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_copy_commands(location: Location, tmp_path: Path) -> None:
    dest = Location(str(tmp_path / "dest"))
    _ok(location, "init")
    _ok(dest, "init")
    for seed in (1, 2, 3):
        _ok(location, "put", "-", "--name", "m", stdin=pattern(200_000, seed=seed))
    _ok(location, "tag", "m:2", "production")
    _ok(location, "tag", "m:1", "candidate")
    assert _ok(location, "copy", "m:3", dest.url).startswith("copied m:3")
    log = _cli(dest, "log", "m", "--verify")
    assert log.returncode == 0 and b"(deleted" not in log.stdout
    assert b"hash chain intact" in log.stdout and b"not in this store" in log.stdout
    assert json.loads(_ok(dest, "--json", "log", "m", "--verify"))["not_in_store"] == ["m:1-2"]
    assert "set tag m:production -> 2" in _ok(location, "copy", "m:2", dest.url)
    no_tags = json.loads(_ok(location, "--json", "copy", "m:1", dest.url, "--no-tags"))
    assert no_tags["tag_moves"] == [] and no_tags["versions"][0]["action"] == "copied"
    _ok(dest, "gc", env={"CASTORE_LEASE_TTL": "-1"})
    for seed in (1, 2, 3):
        assert _cli(dest, "cat", f"m:{seed}").stdout == pattern(200_000, seed=seed)
    assert json.loads(_ok(dest, "--json", "info", "m:production"))["version"] == 2
    assert _cli(dest, "info", "m:candidate").returncode == 3
    assert "not in this store" not in _ok(dest, "log", "m", "--verify")
    # a version saved on top of one that vanished is damage, not a gap
    _ok(dest, "put", "-", "--name", "m", stdin=b"saved in dest")
    Path(dest.url, "refs", "m", "@versions", "3").unlink()
    broken = _cli(dest, "log", "m", "--verify")
    assert broken.returncode == 1 and b"m:3: version is missing" in broken.stdout


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_a_deleted_collected_version_says_so(location: Location) -> None:
    _ok(location, "init")
    for seed in (1, 2):
        _ok(location, "put", "-", "--name", "m", stdin=pattern(200_000, seed=seed))
    pinned = _ok(location, "resolve", "m:1").strip()
    _ok(location, "rm", "m:1")
    _ok(location, "gc")  # young manifests stay, the data goes
    for ref in ("m:1", pinned, pinned.split("@")[1]):
        result = _cli(location, "cat", ref)
        assert result.returncode == 3 and b"version 1 of m was deleted at" in result.stderr
    _ok(location, "gc", env={"CASTORE_LEASE_TTL": "-1"})  # now the manifest goes too
    result = _cli(location, "cat", pinned)
    assert result.returncode == 3 and b"version 1 of m was deleted at" in result.stderr
    assert "no problems found" in _ok(location, "verify")


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_backup_commands(location: Location, tmp_path: Path) -> None:
    source = tmp_path / "run"
    (source / "checkpoints").mkdir(parents=True)
    (source / "checkpoints" / "best.pt").write_bytes(pattern(200_000, seed=1))
    (source / "log.txt").write_text("epoch 1\n")
    (source / "scratch.tmp").write_text("junk")
    _ok(location, "init")
    first = json.loads(
        _ok(location, "--json", "backup", str(source), "--name", "runs/exp", "--exclude", "*.tmp")
    )
    assert first["stats"]["files"] == 2 and first["stats"]["files_read"] == 2
    (source / "log.txt").write_text("epoch 1\nepoch 2\n")
    second = json.loads(_ok(location, "--json", "backup", str(source), "--name", "runs/exp"))
    assert second["stats"]["files_reused"] >= 1
    listing = json.loads(_ok(location, "--json", "ls", "runs/exp:1", "checkpoints"))
    assert [e["path"] for e in listing] == ["checkpoints", "checkpoints/best.pt"]
    changes = json.loads(_ok(location, "--json", "diff", "runs/exp:1", "runs/exp:2"))
    assert {(c["kind"], c["path"]) for c in changes} >= {("changed", "log.txt")}
    target = tmp_path / "restored"
    _ok(location, "restore", "runs/exp:1", str(target), "checkpoints/best.pt")
    assert (target / "checkpoints" / "best.pt").read_bytes() == pattern(200_000, seed=1)
    assert not (target / "log.txt").exists()
    plan = json.loads(
        _ok(location, "--json", "forget", "runs/exp", "--keep-last", "1", "--dry-run")
    )
    assert plan["removed"] == [1] and plan["dry_run"]
    _ok(location, "forget", "runs/exp", "--keep-last", "1")
    assert [row["version"] for row in json.loads(_ok(location, "--json", "ls", "runs/exp"))] == [2]


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_key_and_sign_commands(location: Location, tmp_path: Path) -> None:
    _ok(location, "init")
    _ok(location, "put", "-", "--name", "m", stdin=b"model bytes")
    key = tmp_path / "key"
    generated = json.loads(_ok(location, "--json", "key", "generate", str(key)))
    assert generated["public_key"].startswith("ssh-ed25519 ")
    signed = json.loads(_ok(location, "--json", "sign", "m:1", "--key", str(key)))
    assert signed["key_id"] == generated["key_id"]
    with location.open() as store:
        (check,) = store.signatures("m:1")
        assert check.valid
    assert "no problems found" in _ok(location, "verify")


def _damage(store: castore.Store, how: str) -> str:
    """A 3 MiB stream damaged `how` in its last pack; its reference. With small packs it
    spans many ranged reads, so that whatever was read before the damage could leak."""
    data = pattern(3 * 1024 * 1024, seed=7)
    if how == "replaced chunk list":
        digest = store.put(data)
        other = stream_of(store, store.put(pattern(len(data), seed=8)))
        forged = StreamDescriptor(
            parse_digest(digest), other.size, other.chunk_ids, other.chunk_sizes
        )
        store.repository.backend.write(stream_object_path(digest), encode_stream_object(forged))
        return digest
    if how == "corrupt chunk of a put stream":
        ref = store.put(data)
        descriptor = stream_of(store, ref)
    else:
        ref = f"m:{store.save(data, 'm', serializer='raw').version}"
        descriptor = catalog.resolve(store.repository, ref)[0].stream
    *_, (last_chunk, _) = descriptor.chunks()
    location = store.repository.index.lookup(last_chunk)
    assert location is not None
    flip_byte(store, layout.pack_path(location.pack_id), location.entry.offset + 10)
    return ref


DAMAGE = ["corrupt chunk of a put stream", "corrupt chunk of a version", "replaced chunk list"]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_cat_writes_nothing_from_a_damaged_stream(location: Location, how: str) -> None:
    """cat once wrote every verified block before the stream failed: a prefix, or with a
    replaced chunk list the whole of someone else's bytes, then an error."""
    with location.init(config=SMALL_PACKS) as store:
        ref = _damage(store, how)
    result = _cli(location, "cat", ref)
    assert result.returncode == 1, result.stderr.decode()
    assert result.stdout == b""
    assert b"castore: error:" in result.stderr


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_get_of_a_damaged_stream_leaves_the_target_alone(
    location: Location, tmp_path: Path, how: str
) -> None:
    """No partial or wrong file at the target, the old one untouched, no temporary left,
    and no temporary name shared with a concurrent get to the same target (get once used
    ``.<name>.castore-tmp`` and truncated and deleted another get's file there)."""
    with location.init(config=SMALL_PACKS) as store:
        ref = _damage(store, how)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"the previous model")
    (folder / ".model.bin.castore-tmp").write_bytes(b"another get, still writing")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for target in (folder / "model.bin", folder / "new.bin"):
        result = _cli(location, "get", ref, "-o", str(target))
        assert result.returncode == 1, result.stderr.decode()
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    with location.open() as store:
        digest = ref if ref.startswith(castore.DIGEST_PREFIX) else store.version(ref).digest
        with pytest.raises(castore.IntegrityError):
            store.get_file(digest, folder / "model.bin")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.slow
@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_cat_holds_a_large_stream_in_a_temporary_file_until_verified(
    location: Location, tmp_path: Path
) -> None:
    """Past its memory bound cat spools to a temporary file, deleted afterwards; a stream
    that fails there still prints nothing (it once printed every range read before)."""
    data = pattern(70 * 1024 * 1024, seed=3)
    with location.init() as store:
        digest = store.put(data)
    spool = tmp_path / "tmp"
    spool.mkdir()
    result = _cli(location, "cat", digest, env={"TMPDIR": str(spool)})
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == data
    assert list(spool.iterdir()) == []
    with location.open() as store:
        *_, (last_chunk, _) = stream_of(store, digest).chunks()
        place = store.repository.index.lookup(last_chunk)
        assert place is not None
        flip_byte(store, layout.pack_path(place.pack_id), place.entry.offset + 10)
    result = _cli(location, "cat", digest, env={"TMPDIR": str(spool)})
    assert result.returncode == 1 and result.stdout == b""
    assert list(spool.iterdir()) == []


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_trusting_a_key_on_the_command_line_makes_its_signatures_count(
    location: Location, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    monkeypatch.setenv("CASTORE_CONFIG_DIR", str(config))  # never the user's
    _ok(location, "init")
    with location.open() as store:
        store.save({"weights": [1, 2, 3]}, "m")
    keys = {}
    for who in ("alice", "mallory"):
        keys[who] = json.loads(_ok(location, "--json", "key", "generate", str(tmp_path / who)))
        _ok(location, "sign", "m:1", "--key", str(tmp_path / who))
    alice, mallory = keys["alice"]["key_id"], keys["mallory"]["key_id"]
    assert "no trusted keys" in _ok(location, "key", "ls")
    assert f"{alice}  valid  trusted: no" in _ok(location, "info", "m")
    with location.open() as store, pytest.raises(castore.UntrustedVersionError):
        store.load("m", require_signature=True)

    assert "now trusting" in _ok(location, "key", "trust", str(tmp_path / "alice.pub"))
    again = json.loads(_ok(location, "--json", "key", "trust", str(tmp_path / "alice.pub")))
    assert again == {
        "key_id": alice,
        "comment": "",
        "added": False,
        "file": str(config / "trusted_keys"),
    }
    assert (config / "trusted_keys").read_text() == keys["alice"]["public_key"] + "\n"
    listed = json.loads(_ok(location, "--json", "key", "ls"))
    assert [k["key_id"] for k in listed["keys"]] == [alice]
    assert f"  {alice}  (no comment)" in _ok(location, "key", "ls")
    with location.open() as store:
        assert store.load("m", require_signature=True) == {"weights": [1, 2, 3]}

    info = _ok(location, "info", "m")
    assert f"{alice}  valid  trusted: yes" in info and f"{mallory}  valid  trusted: no" in info
    signatures = json.loads(_ok(location, "--json", "info", "m"))["signatures"]
    assert {s["key_id"]: s["trusted"] for s in signatures} == {alice: True, mallory: False}
    (tmp_path / "bad.pub").write_text("ssh-rsa AAAAB3NzaC1yc2E someone\n")
    refused = _cli(location, "key", "trust", str(tmp_path / "bad.pub"))
    assert refused.returncode == 2 and b"Ed25519" in refused.stderr
    assert len(json.loads(_ok(location, "--json", "key", "ls"))["keys"]) == 1


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_a_snapshot_counts_its_files_bytes(location: Location, tmp_path: Path) -> None:
    """stats and ls once counted a snapshot's tree stream, not its files (dedup 0.01x)."""
    source = tmp_path / "run"
    source.mkdir()
    for seed in range(3):
        (source / f"part-{seed}.bin").write_bytes(pattern(300_000, seed=seed))
    (source / "copy.bin").write_bytes(pattern(300_000, seed=0))  # deduplicates with part-0
    (source / "link").symlink_to("part-0.bin")
    _ok(location, "init")
    _ok(location, "backup", str(source), "--name", "runs/exp")
    _ok(location, "backup", str(source), "--name", "runs/exp")  # a second, identical snapshot
    files = 4 * 300_000
    stats = json.loads(_ok(location, "--json", "stats"))
    assert stats["logical_bytes"] == 2 * files
    assert stats["dedup_ratio"] > 2 * 4 / 3 * 0.9
    info = json.loads(_ok(location, "--json", "info", "runs/exp:1"))
    assert info["size"] == files and 0 < info["stream_size"] < 10_000
    listing = json.loads(_ok(location, "--json", "ls", "runs/exp"))
    assert [row["size"] for row in listing] == [files, files]
    assert "1.1 MiB" in _ok(location, "ls", "runs/exp")
    assert "1.1 MiB" in _ok(location, "ls")
    with location.open() as store:
        assert store.version("runs/exp:2").size == files
        assert [e.details.size for e in store.log("runs/exp") if e.details] == [files, files]


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_ls_of_an_unknown_name_or_a_file_version(location: Location) -> None:
    """ls of an unknown name printed a blank line and exited 0; ls NAME:N of a file
    version said "invalid name"."""
    _ok(location, "init")
    _ok(location, "put", "-", "--name", "models/m", "--tag", "production", stdin=b"weights")
    missing = _cli(location, "ls", "nothing/here")
    assert missing.returncode == 3 and missing.stdout == b""
    assert b"there is no name 'nothing/here'" in missing.stderr
    shown = _ok(location, "ls", "models/m:1")
    assert shown.startswith("1 ") and "production" in shown and "invalid" not in shown
    row = json.loads(_ok(location, "--json", "ls", "models/m:production"))
    assert row == json.loads(_ok(location, "--json", "ls", "models/m"))
    assert row[0]["tags"] == ["production"] and row[0]["size"] == len(b"weights")
    with_path = _cli(location, "ls", "models/m:1", "some/dir")
    assert with_path.returncode == 2
    assert b"models/m:1 is a file version, not a snapshot" in with_path.stderr


def _bare(*args: str) -> subprocess.CompletedProcess:
    """castore with exactly these arguments (no --store put first, as _cli does)."""
    return subprocess.run(
        [sys.executable, "-m", "castore", *args],
        capture_output=True,
        env={**os.environ, "CASTORE_STORE": ""},
        timeout=120,
    )


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_global_flags_may_follow_the_command(location: Location) -> None:
    """castore ls --store x was refused: the global flags had to come first."""
    _ok(location, "init")
    _ok(location, "put", "-", "--name", "m", stdin=b"weights")
    listed = _bare("ls", "m", "--store", location.url, "--json")
    assert listed.returncode == 0, listed.stderr.decode()
    assert [row["version"] for row in json.loads(listed.stdout)] == [1]
    # given on both sides, the store after the command wins; --option adds up
    overridden = _bare("--store", "/nonexistent/store", "--json", "ls", "--store", location.url)
    assert overridden.returncode == 0 and json.loads(overridden.stdout)[0]["name"] == "m"
    both = _bare("--option", "a=1", "ls", "--store", location.url, "--option", "b=2")
    assert both.returncode == 2 and b"['a', 'b']" in both.stderr


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_the_short_digests_ls_prints_are_references(location: Location) -> None:
    _ok(location, "init")
    _ok(location, "put", "-", "--name", "m", stdin=b"weights")
    short = _ok(location, "ls", "m").split()[1]
    assert short.startswith("sha256:") and len(short) == 19
    assert _cli(location, "cat", short).stdout == b"weights"
    assert _cli(location, "cat", f"m@{short}").stdout == b"weights"
    assert _ok(location, "resolve", short).strip() == _ok(location, "resolve", "m:1").strip()
    trailing = _cli(location, "cat", "m:")
    assert trailing.returncode == 2 and b"nothing follows ':'" in trailing.stderr


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_rm_of_a_tagged_version_needs_force(location: Location) -> None:
    """castore rm name:production deleted the version and silently dropped the tag."""
    _ok(location, "init")
    for n in range(2):
        _ok(location, "put", "-", "--name", "m", stdin=f"version {n}".encode())
    _ok(location, "tag", "m:1", "production")
    _ok(location, "tag", "m:1", "candidate")
    for ref in ("m:production", "m:1"):
        refused = _cli(location, "rm", ref)
        assert refused.returncode == 2
        assert b"m:1 carries the tags candidate, production" in refused.stderr
    assert json.loads(_ok(location, "--json", "info", "m:1"))["tags"] == ["candidate", "production"]
    assert "dropped its tags candidate, production" in _ok(
        location, "rm", "m:production", "--force"
    )
    assert "dropped" not in _ok(location, "rm", "m:2")


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_small_cli_habits(location: Location, tmp_path: Path) -> None:
    """backup of a missing path, diff's Python reprs, and a not-found message without '; '."""
    _ok(location, "init")
    missing = _cli(location, "backup", str(tmp_path / "nope"), "--name", "b")
    assert missing.returncode == 2 and b"it does not exist" in missing.stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    not_dir = _cli(location, "backup", str(a_file), "--name", "b")
    assert not_dir.returncode == 2 and b"it is not a directory" in not_dir.stderr
    _ok(location, "put", "-", "--name", "m", "--meta", "stage=dev", "--meta", "auc=0.9", stdin=b"1")
    _ok(
        location, "put", "-", "--name", "m", "--meta", "stage=prod", "--meta", "ok=true", stdin=b"2"
    )
    diff = _ok(location, "diff", "m:1", "m:2")
    assert '~ stage: "dev" -> "prod"' in diff and "+ ok = true" in diff and "- auc = 0.9" in diff
    unknown = _cli(location, "log", "nothing")
    assert unknown.returncode == 3 and b"; names: m" in unknown.stderr


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_verify_names_each_affected_version_once(location: Location, tmp_path: Path) -> None:
    source = tmp_path / "run"
    source.mkdir()
    for copy in ("a.bin", "b.bin", "c.bin"):  # one chunk, three times in one snapshot
        (source / copy).write_bytes(pattern(100_000, seed=7))
    with location.init() as store:
        store.backup(source, "runs/exp")
        (pack,) = pack_paths(store)
        flip_byte(store, pack, 200)
    report = json.loads(_cli(location, "--json", "verify", "--read-data").stdout)
    assert report["affected"] == ["runs/exp:1"]
    needs = [p.partition("; needed by ")[2] for p in report["problems"] if "needed by" in p]
    assert needs and set(needs) == {"runs/exp:1"}, report["problems"]


def test_the_readme_demo_runs_and_its_closing_hint_works(tmp_path: Path) -> None:
    """The README's first command runs examples/demo.py: it once printed nothing at all
    (its main() was no longer called), and no test noticed."""
    demo = Path(__file__).parents[1] / "examples" / "demo.py"
    run = subprocess.run(
        [sys.executable, str(demo)], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"store: {tmp_path / 'demo-store'}" and "history verified: True" in lines
    hint = lines[-1].removeprefix("try: ")
    assert hint != lines[-1]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    follow = subprocess.run(hint, shell=True, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert follow.returncode == 0 and "hash chain intact" in follow.stdout, follow.stderr


def test_the_demo_hint_works_without_an_activated_venv(tmp_path: Path) -> None:
    """The demo closed with 'castore --store demo-store log ...', which needs castore on
    PATH (an activated venv)."""
    demo = Path(__file__).parents[1] / "examples" / "demo.py"
    code = f"import runpy; print(runpy.run_path({str(demo)!r})['castore_command']())"
    for cwd in (tmp_path, Path(sys.executable).parents[2]):
        hint = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=cwd
        ).stdout.strip()
        store = tmp_path / "store"
        result = subprocess.run(
            f"{hint} --store {store} init",
            shell=True,
            capture_output=True,
            cwd=cwd,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        )
        assert result.returncode == 0, (hint, result.stderr.decode())
        shutil.rmtree(store)


def _schema_problems(value: object, where: str = "") -> list[str]:
    """Where `value` breaks the JSON conventions every command shares: digests are
    "sha256:<hex>" strings under the key "digest" (or *_digest), never raw hex under
    "manifest"; "tags" is a list of tag names; "verified" is true, false or null."""
    problems = []
    if isinstance(value, list):
        for i, item in enumerate(value):
            problems += _schema_problems(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            at = f"{where}.{key}"
            if key == "manifest":
                problems.append(f"{at}: say 'digest'")
            digest_key = key == "digest" or key.endswith("_digest")
            well_formed = isinstance(item, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", item)
            if digest_key and not (item is None or well_formed):
                problems.append(f"{at}: {item!r} is not sha256:<hex>")
            if key == "tags" and not (
                isinstance(item, list) and all(isinstance(t, str) for t in item)
            ):
                problems.append(f"{at}: {item!r} is not a list of tag names")
            if key == "verified" and item not in (True, False, None):
                problems.append(f"{at}: {item!r}")
            problems += _schema_problems(item, at)
    return problems


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_json_output_is_one_schema(location: Location, tmp_path: Path) -> None:
    """Tags were a dict in `ls` and a list in `ls NAME`; `tag --history` said "manifest":
    "<hex>"; `log` without --verify said "verified": false; errors were plain text."""
    _ok(location, "init")
    _ok(location, "put", "-", "--name", "m", "--tag", "production", stdin=b"one")
    _ok(location, "put", "-", "--name", "m", stdin=b"two")
    _ok(location, "tag", "m:2", "production")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_bytes(b"file")
    _ok(location, "backup", str(tmp_path / "tree"), "--name", "home")
    outputs = {
        " ".join(args): json.loads(_ok(location, "--json", *args))
        for args in [
            ("ls",),
            ("ls", "m"),
            ("ls", "m:1"),
            ("ls", "home:1"),
            ("log", "m"),
            ("log", "m", "--verify"),
            ("info", "m:2"),
            ("tag", "m", "production", "--history"),
            ("resolve", "m:production"),
            ("diff", "m:1", "m:2"),
            ("stats",),
            ("verify",),
        ]
    }
    assert {k: p for k, out in outputs.items() if (p := _schema_problems(out))} == {}
    listing = outputs["ls"]
    assert {r["name"]: r["name_tags"] for r in listing} == {"m": {"production": 2}, "home": {}}
    assert [r["tags"] for r in listing if r["name"] == "m"] == [["production"]]
    assert outputs["log m"]["verified"] is None and outputs["log m --verify"]["verified"] is True
    moves = outputs["tag m production --history"]
    assert [(e["version"], e["digest"]) for e in moves] == [
        (v["version"], v["digest"]) for v in sorted(outputs["ls m"], key=lambda v: v["version"])
    ]


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_errors_under_json_are_json(location: Location) -> None:
    _ok(location, "init")
    for args, code, kind in [
        (("ls", "nothing/here"), 3, "NotFoundError"),
        (("info", "m:notatag!"), 2, "InvalidInputError"),
    ]:
        result = _cli(location, "--json", *args)
        assert result.returncode == code and result.stdout == b""
        line = json.loads(result.stderr)
        assert line["message_type"] == "error"
        error = line["error"]
        assert error["exit_code"] == code and error["type"] == kind and error["message"]
        plain = _cli(location, *args)
        assert plain.returncode == code
        assert plain.stderr.decode() == f"castore: error: {error['message']}\n"


def _keys(value: object) -> set[str]:
    """Every key in a JSON document, except those of maps whose keys are the user's."""
    if isinstance(value, list):
        return set().union(*map(_keys, value)) if value else set()
    if isinstance(value, dict):
        inner = [_keys(v) for k, v in value.items() if k not in ("metadata", "name_tags")]
        return set(value) | set().union(*inner) if inner else set(value)
    return set()


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_docs_cli_names_every_json_key(
    location: Location, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CLI.md is the contract for scripts: a key a command prints is named there."""
    monkeypatch.setenv("CASTORE_CONFIG_DIR", str(tmp_path / "config"))  # never the user's
    documented = set(re.findall(r"`([a-z_]+)`", (ROOT / "docs" / "CLI.md").read_text()))
    _ok(location, "init")
    _ok(location, "put", "-", "--name", "m", "--tag", "production", stdin=b"one")
    _ok(location, "put", "-", "--name", "m", stdin=b"two")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_bytes(b"file")
    (tmp_path / "tree" / "link").symlink_to("f")
    dest = f"{location.url}-copy"
    _ok(location, "--store", dest, "init")
    key = tmp_path / "key"
    printed = [
        _ok(location, "--json", *args)
        for args in [
            ("put", "-", "--name", "z"),
            ("backup", str(tmp_path / "tree"), "--name", "home"),
            ("ls",),
            ("ls", "m"),
            ("ls", "home:1"),
            ("log", "m", "--verify"),
            ("info", "m:1", "--globals"),
            ("inspect", "m:1"),
            ("tag", "m:1", "candidate"),
            ("tag", "m", "candidate", "--history"),
            ("tag", "m", "candidate", "--delete"),
            ("resolve", "m:1"),
            ("diff", "m:1", "m:2"),
            ("key", "generate", str(key)),
            ("key", "trust", f"{key}.pub"),
            ("key", "ls"),
            ("sign", "m:1", "--key", str(key)),
            ("find", "f", "--name", "home"),
            ("restore", "home:1", str(tmp_path / "out"), "--dry-run"),
            ("restore", "home:1", str(tmp_path / "out")),
            ("forget", "home", "--keep-last", "1", "--dry-run"),
            ("copy", "m", dest),
            ("rm", "m:2", "--force"),
            ("stats",),
            ("verify",),
            ("gc", "--dry-run"),
            ("repair",),
            ("unlock",),
            ("cache", "ls"),
            ("cache", "prune", "--max-size", "0"),
        ]
    ]
    documents = [json.loads(out) for out in printed]
    assert set().union(*map(_keys, documents)) - documented == set()
    assert [p for document in documents for p in _schema_problems(document)] == []


STATUS_KEYS = {
    "message_type",
    "command",
    "seconds_elapsed",
    "seconds_remaining",
    "percent_done",
    "files_done",
    "total_files",
    "bytes_done",
    "total_bytes",
    "current_file",
}


def _status_lines(location: Location, *args: str, stdin: bytes | None = None) -> list[dict]:
    """The status lines a command prints on stderr under --json (its stdout is checked to be
    one JSON document)."""
    result = _cli(location, "--json", *args, stdin=stdin)
    assert result.returncode == 0, result.stderr.decode()
    json.loads(result.stdout)
    lines = [json.loads(line) for line in result.stderr.decode().splitlines()]
    assert lines, f"{args[0]} printed no progress"
    for line in lines:
        assert set(line) == STATUS_KEYS and line["message_type"] == "status"
        assert line["command"] == args[0]
    done = [line["bytes_done"] for line in lines]
    assert done == sorted(done)
    return lines


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_progress_under_json_is_status_lines_ending_at_the_total(
    location: Location, tmp_path: Path
) -> None:
    documented = set(re.findall(r"`([a-z_]+)`", (ROOT / "docs" / "CLI.md").read_text()))
    assert documented >= STATUS_KEYS
    _ok(location, "init")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    sizes = {"a": 10, "sub/b": 70_000, "sub/c": 5 * 1024 * 1024}
    for rel, size in sizes.items():
        (tree / rel).write_bytes(pattern(size, seed=size))
    model = tmp_path / "model.bin"
    model.write_bytes(pattern(300_000, seed=3))
    dest = f"{location.url}-copy"
    _ok(location, "--store", dest, "init")

    for args, files, total in [
        (("put", str(model), "--name", "m"), None, 300_000),
        (("get", "m:1", "-o", str(tmp_path / "got")), None, 300_000),
        (("backup", str(tree), "--name", "home"), 3, sum(sizes.values())),
        (("restore", "home:1", str(tmp_path / "out")), 3, sum(sizes.values())),
        (("copy", "m:1", dest), 1, None),
    ]:
        last = _status_lines(location, *args)[-1]
        assert last["percent_done"] == 1.0 and last["seconds_remaining"] == 0.0, args
        assert (last["files_done"], last["total_files"]) == (files, files), args
        assert last["bytes_done"] == last["total_bytes"], args
        if total is not None:
            assert last["total_bytes"] == total, args
    streamed = _status_lines(location, "put", "-", "--name", "m", stdin=b"x" * 1000)[-1]
    assert streamed["total_bytes"] is None and streamed["percent_done"] is None

    plain = _cli(location, "backup", str(tree), "--name", "home")
    assert plain.returncode == 0 and plain.stderr == b""  # no bar off a terminal
    bad = _cli(
        location,
        "--json",
        "get",
        "m:1",
        "-o",
        str(tmp_path / "x"),
        env={"CASTORE_PROGRESS_FPS": "0"},
    )
    assert bad.returncode == 2 and b"CASTORE_PROGRESS_FPS" in bad.stderr


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_backup_skip_if_unchanged_and_forget_keep_rules(location: Location, tmp_path: Path) -> None:
    _ok(location, "init")
    source = tmp_path / "source"
    source.mkdir()
    (source / "f").write_bytes(b"f")
    for _ in range(3):
        _ok(location, "backup", str(source), "--name", "home")
    skipped = json.loads(
        _ok(location, "--json", "backup", str(source), "--name", "home", "--skip-if-unchanged")
    )
    assert skipped["version"] == 3 and skipped["stats"]["unchanged"] is True
    _ok(location, "tag", "home:1", "golden")
    typo = _cli(location, "forget", "home", "--keep-tag", "gold")
    assert typo.returncode == 3 and b"has no tag gold" in typo.stderr
    assert _cli(location, "forget", "home", "--keep-within", "3w").returncode == 2
    within = json.loads(
        _ok(location, "--json", "forget", "home", "--keep-within", "1h", "--dry-run")
    )
    assert [k["version"] for k in within["kept"]] == [3, 2, 1] and within["removed"] == []
    result = json.loads(
        _ok(location, "--json", "forget", "home", "--keep-tag", "golden", "--keep-last", "1")
    )
    assert {k["version"]: k["reasons"] for k in result["kept"]} == {
        3: ["last"],
        1: ["tag golden"],
    }
    assert json.loads(_ok(location, "--json", "ls", "home"))[0]["tags"] == ["golden"]


@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_ls_where_filters_versions_by_metadata(location: Location) -> None:
    _ok(location, "init")
    for auc in ("0.7", "0.95", "0.91"):
        _ok(location, "put", "-", "--name", "m", "--meta", f"auc={auc}", stdin=auc.encode())
    rows = json.loads(_ok(location, "--json", "ls", "m", "--where", "auc>0.9"))
    assert [r["version"] for r in rows] == [2, 3]
    both = _ok(location, "ls", "m", "--where", "auc>0.9", "--where", "auc<0.93")
    assert [line.split()[0] for line in both.splitlines()] == ["3"]
    assert _ok(location, "ls", "m", "--where", "auc>1").strip() == "(no version matches)"
    assert _cli(location, "ls", "m", "--where", "auc=1").returncode == 2
    assert _cli(location, "ls", "m:1", "--where", "auc>1").returncode == 2


@pytest.mark.parametrize("new_location", ["local", "s3-moto"], indirect=True)
def test_init_chunker_params_set_how_the_store_cuts(location: Location) -> None:
    _ok(location, "init", "--chunker-params", "1024,4096,8192")
    data = pattern(200_000)
    digest = _ok(location, "put", "-", stdin=data).strip()
    with location.open() as store:
        assert store.config.chunker == castore.ChunkerParams(1024, 4096, 8192)
        sizes = stream_of(store, digest).chunk_sizes
    assert sum(sizes) == len(data) and len(sizes) > len(data) // 8192
    assert all(1024 <= size <= 8192 for size in sizes[:-1]) and sizes[-1] <= 8192


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("1024,4096", "three whole numbers of bytes"),
        ("16KiB,64KiB,256KiB", "three whole numbers of bytes"),
        ("-1,4096,8192", "three whole numbers of bytes"),
        ("10,4096,8192", "min_size must be an integer from 64 to 1048576, not 10"),
        ("1024,4096,99999999", "max_size must be an integer from 1024 to 16777216"),
        ("8192,4096,16384", "must satisfy min_size <= avg_size <= max_size"),
    ],
)
@pytest.mark.parametrize("new_location", ["local"], indirect=True)
def test_init_refuses_invalid_chunker_params(location: Location, params: str, message: str) -> None:
    result = _cli(location, "init", f"--chunker-params={params}")
    assert result.returncode == 2 and message in result.stderr.decode()
    error = json.loads(_cli(location, "--json", "init", f"--chunker-params={params}").stderr)
    assert error["error"]["type"] == "InvalidInputError" and error["error"]["exit_code"] == 2
    assert _cli(location, "ls").returncode == 3  # no store was created


SIZE_TEXT = st.integers(-5, 17 * 1024**2).map(str) | st.text(max_size=6)


@settings(max_examples=60, deadline=None)
@given(params=st.lists(SIZE_TEXT, max_size=4).map(",".join))
def test_init_creates_a_store_only_for_usable_chunker_params(params: str) -> None:
    parts = params.split(",")
    valid = len(parts) == 3 and all(re.fullmatch("[0-9]{1,20}", part) for part in parts)
    valid = valid and pyfastcdc_accepts(*map(int, parts))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "store"
        code = main(["--store", str(root), "init", f"--chunker-params={params}"])
        assert code == (0 if valid else 2)
        assert (root / layout.CONFIG).exists() == valid
        if valid:
            with castore.open(root) as store:
                chunker = store.config.chunker
            assert (chunker.min_size, chunker.avg_size, chunker.max_size) == tuple(map(int, parts))
