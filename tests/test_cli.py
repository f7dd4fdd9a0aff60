"""The castore command line, run as a user would: a subprocess per command."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import castore
from tests.conftest import Location
from tests.helpers import pattern


def _cli(location: Location, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    options = [f"--option={k}={v}" for k, v in location.options.items()]
    return subprocess.run(
        [sys.executable, "-m", "castore", "--store", location.url, *options, *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, "CASTORE_STORE": ""},
        timeout=120,
    )


def _ok(location: Location, *args: str, stdin: bytes | None = None) -> str:
    result = _cli(location, *args, stdin=stdin)
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

    _ok(location, "rm", "team/model:1")
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
    assert [v["version"] for v in copied] == [1, 3]
    bad = _cli(location, "verify", "--read-data-subset", "lots")
    assert bad.returncode == 2 and b"expected a percentage" in bad.stderr


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
