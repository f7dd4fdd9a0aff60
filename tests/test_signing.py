"""Signed versions: keys, signature objects, trust policies and require_signature."""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import castore
import castore.errors
from castore.errors import UntrustedVersionError
from castore.format import layout, wire
from castore.trust import signatures as signing
from castore.trust import userconfig
from castore.trust.signatures import PrivateKey, Signature, TrustPolicy
from castore.versions import catalog

RFC8032_SECRET = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
EXAMPLE_VERSION = "e022946d0363e403655003d9a6b47ea3cd3ff5090496ed50a1090d25dd0131e9"
EXAMPLE_OBJECT = (  # docs/FORMAT.md, section Signatures (21.10, example)
    "86a776657273696f6e01a9616c676f726974686da765643235353139a86d616e"
    "6966657374c420e022946d0363e403655003d9a6b47ea3cd3ff5090496ed50a1"
    "090d25dd0131e9a36b6579c420d75a980182b10ab7d54bfed3c964073a0ee172"
    "f3daa62325af021a68f707511aa97369676e6174757265c440abbac848a79616"
    "5de9c0c07a768d85e1701b4ce83755c6961d96a13bbbfe55c6c4e48e81d3b215"
    "5548fc04ba7fe269fb619822c26ba764d01cc96ee33c3d6d0da7637265617465"
    "64b9323032352d30312d33315431323a30303a30302b30303a3030"
)


@pytest.fixture(autouse=True)
def private_config(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test gets its own (empty) user configuration, never the user's."""
    folder = tmp_path_factory.mktemp("config")
    monkeypatch.setenv(userconfig.CONFIG_DIR_VARIABLE, str(folder))
    return folder


@pytest.fixture
def alice() -> PrivateKey:
    """The key whose signatures are trusted."""
    return PrivateKey.generate("alice@example")


@pytest.fixture
def mallory() -> PrivateKey:
    """Someone else's key."""
    return PrivateKey.generate("mallory")


def test_the_specified_example_signature_object_is_what_castore_writes() -> None:
    key = PrivateKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_SECRET)))
    digest = bytes.fromhex(EXAMPLE_VERSION)
    made = Signature(
        digest,
        key.public_key,
        key.sign(signing.signing_message(digest)),
        "2025-01-31T12:00:00+00:00",
    )
    assert made.encode().hex() == EXAMPLE_OBJECT
    assert key.public_key.key_id == (
        "21fe31dfa154a261626bf854046fd2271b7bed4b6abe45aa58877ef47f9721b9"
    )
    assert made.path == f"signatures/e0/{EXAMPLE_VERSION}/{key.public_key.key_id}"
    decoded = Signature.decode(bytes.fromhex(EXAMPLE_OBJECT), digest, key.public_key.key_id)
    assert decoded == made and decoded.is_valid()


def test_generated_keys_are_private_never_overwritten_and_load_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "castore_key"
    public = signing.generate_key(path, comment="ci@example")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "castore_key.pub").read_text().startswith("ssh-ed25519 AAAA")
    loaded = signing.load_private_key(path)
    assert loaded.public_key == public and loaded.public_key.comment == "ci@example"
    assert signing.load_public_key(tmp_path / "keys" / "castore_key.pub") == public
    with pytest.raises(castore.InvalidInputError, match="never overwrites"):
        signing.generate_key(path)
    path.chmod(0o644)
    with pytest.raises(castore.InvalidInputError, match="chmod 600"):
        signing.load_private_key(path)


def test_the_default_key_lives_in_the_user_config(private_config: Path) -> None:
    public = signing.generate_key()
    assert signing.default_key_path() == private_config / signing.SIGNING_KEY_FILE
    assert signing.load_private_key().public_key == public


def test_trusted_keys_come_from_the_user_config_or_the_caller(
    private_config: Path, alice: PrivateKey, mallory: PrivateKey, tmp_path: Path
) -> None:
    assert TrustPolicy.from_config().keys == ()
    signing.trusted_keys_path().write_text(
        f"# the release team\n{alice.public_key.to_openssh()}\n\n"
    )
    policy = TrustPolicy.from_config()
    assert policy.trusts(alice.public_key.key_id) and not policy.trusts(mallory.public_key.key_id)
    assert policy.keys[0].comment == "alice@example"
    pub = tmp_path / "mallory.pub"
    pub.write_text(mallory.public_key.to_openssh())
    both = TrustPolicy.of([alice.public_key, pub, mallory.public_key.to_openssh()])
    assert [k.key_id for k in both.keys] == [
        alice.public_key.key_id,
        mallory.public_key.key_id,
        mallory.public_key.key_id,
    ]
    signing.trusted_keys_path().write_text("ssh-ed25519 AAAA\nssh-rsa AAAAB3Nza x\n")
    with pytest.raises(castore.InvalidInputError, match="line 1"):
        TrustPolicy.from_config()


def test_trust_key_adds_a_validated_key_to_the_user_config_once(
    alice: PrivateKey, mallory: PrivateKey, tmp_path: Path
) -> None:
    pub = tmp_path / "alice.pub"
    pub.write_text(alice.public_key.to_openssh() + "\n")
    assert castore.trust_key(pub) is True
    assert castore.trust_key(pub) is False  # idempotent, however the key is given
    assert castore.trust_key(alice.public_key.to_openssh()) is False
    path = signing.trusted_keys_path()
    path.write_text(path.read_text() + "# the release team, no newline at the end")
    assert castore.trust_key(mallory.public_key) is True
    assert [k.key_id for k in TrustPolicy.from_config().keys] == [
        alice.public_key.key_id,
        mallory.public_key.key_id,
    ]
    assert TrustPolicy.from_config().keys[0].comment == "alice@example"
    before = path.read_text()
    bad = tmp_path / "bad.pub"
    for line, error in [
        ("ssh-rsa AAAAB3NzaC1yc2E alice", "OpenSSH Ed25519 public key"),
        ("ssh-ed25519 AAAAnot-base64", "malformed Ed25519 public key"),
        ("", "holds no public key"),
    ]:
        bad.write_text(line + "\n")
        with pytest.raises(castore.InvalidInputError, match=error):
            castore.trust_key(bad)
    assert path.read_text() == before
    path.write_text(before + "ssh-ed25519\n")
    with pytest.raises(castore.InvalidInputError, match="line 4"):  # a broken file stays as is
        castore.trust_key(PrivateKey.generate().public_key)
    assert path.read_text() == before + "ssh-ed25519\n"


def test_info_says_which_signatures_a_trusted_key_made(
    store: castore.Store, alice: PrivateKey, mallory: PrivateKey
) -> None:
    version = store.save({"v": 1}, "m")
    assert store.info("m")["signatures"] == []
    store.sign("m", alice)
    store.sign("m", mallory)
    castore.trust_key(alice.public_key)
    signed = {s["key_id"]: s for s in store.info(version.reference)["signatures"]}
    assert signed[alice.public_key.key_id]["trusted"] is True
    assert signed[alice.public_key.key_id]["key"] == f"{alice.public_key.key_id} (alice@example)"
    assert signed[mallory.public_key.key_id]["trusted"] is False
    assert all(s["valid"] for s in signed.values())
    _tamper(store, layout.signature_path(_digest(store, "m"), alice.public_key.key_id))
    (forged,) = [s for s in store.info("m")["signatures"] if s["key_id"] == alice.public_key.key_id]
    assert not forged["valid"] and not forged["trusted"] and forged["problem"]
    policy = TrustPolicy.of([mallory.public_key])
    assert [s["trusted"] for s in store.info("m", policy)["signatures"] if s["valid"]] == [True]


def test_a_signed_version_loads_under_require_signature(
    store: castore.Store, alice: PrivateKey
) -> None:
    version = store.save({"weights": [1, 2, 3]}, "m")
    signature = store.sign("m:1", alice)
    assert signature.version_digest.hex() == version.digest[7:] and signature.is_valid()
    policy = TrustPolicy.of([alice.public_key])
    loaded = store.load("m:latest", require_signature=True, policy=policy)
    assert loaded == {"weights": [1, 2, 3]}
    assert store.trusted_signers(version.digest, policy) == [alice.public_key.key_id]
    assert [c.valid for c in store.signatures("m")] == [True]
    # Signing again keeps the signature; a second key adds one.
    assert store.sign(version.reference, alice) == signature
    store.sign(version.reference, PrivateKey.generate())
    assert len(store.signatures("m")) == 2
    # The user's own config is the default policy.
    signing.trusted_keys_path().write_text(alice.public_key.to_openssh() + "\n")
    assert store.load("m", require_signature=True) == {"weights": [1, 2, 3]}


def test_unsigned_or_wrongly_signed_versions_are_refused_naming_the_signers(
    store: castore.Store, alice: PrivateKey, mallory: PrivateKey
) -> None:
    policy = TrustPolicy.of([alice.public_key])
    store.save({"v": 1}, "m")
    with pytest.raises(UntrustedVersionError, match=r"version 1 of m .*Signed by: no key") as error:
        store.load("m", require_signature=True, policy=policy)
    assert alice.public_key.key_id in str(error.value)  # the trusted keys are listed too
    assert isinstance(error.value, castore.IntegrityError)

    store.sign("m:1", mallory)
    with pytest.raises(UntrustedVersionError) as error:
        store.load("m", require_signature=True, policy=policy)
    assert f"{mallory.public_key.key_id} (valid, but not a trusted key)" in str(error.value)

    store.sign("m:1", alice)
    _tamper(store, layout.signature_path(_digest(store, "m:1"), alice.public_key.key_id))
    with pytest.raises(UntrustedVersionError, match="invalid: the signature is forged"):
        store.load("m", require_signature=True, policy=policy)
    # Without require_signature the version still loads (through the restricted unpickler).
    assert store.load("m", policy=policy) == {"v": 1}


def test_a_signature_of_another_version_does_not_count(
    store: castore.Store, alice: PrivateKey
) -> None:
    policy = TrustPolicy.of([alice.public_key])
    store.save({"v": 1}, "m")
    store.save({"v": 2}, "m")
    signature = store.sign("m:1", alice)
    moved = layout.signature_path(_digest(store, "m:2"), alice.public_key.key_id)
    store.repository.backend.write(moved, store.repository.backend.read(signature.path))
    with pytest.raises(UntrustedVersionError, match="signs another version"):
        store.load("m:2", require_signature=True, policy=policy)
    assert store.load("m:1", require_signature=True, policy=policy) == {"v": 1}


def test_a_manifest_swapped_under_a_signed_ref_is_caught(
    store: castore.Store, alice: PrivateKey
) -> None:
    policy = TrustPolicy.of([alice.public_key])
    store.save({"approved": True}, "m")
    store.save({"other": True}, "n")
    store.sign("m:1", alice)
    store.sign("n:1", alice)
    ref_path = "refs/m/@versions/1"
    original = store.repository.backend.read(ref_path)
    # Another name's (signed) manifest under m's ref: the manifest names n, not m.
    store.repository.backend.write(
        ref_path, original.replace(_digest(store, "m:1"), _digest(store, "n:1"))
    )
    with pytest.raises(castore.IntegrityError, match="swapped"):
        store.load("m:1", require_signature=True, policy=policy)
    # A forged manifest for m:1 itself (same name and number): only the signature can tell.
    digest = _digest_of_ref(original)
    forged = dataclasses.replace(
        catalog.read_manifest(store.repository, digest), metadata={"approved": "forged"}
    )
    data = forged.encode()
    store.repository.backend.write(layout.manifest_path(layout.digest_of(data)), data)
    store.repository.backend.write(ref_path, original.replace(digest, layout.digest_of(data)))
    assert store.load("m:1") == {"approved": True}  # same stream; the manifest differs
    with pytest.raises(UntrustedVersionError, match=r"version 1 of m \(sha256:"):
        store.load("m:1", require_signature=True, policy=policy)


@pytest.mark.filterwarnings("ignore::castore.UnloadableVersionWarning")  # saved on purpose
def test_a_trusted_signature_lets_the_plain_unpickler_load(
    store: castore.Store, alice: PrivateKey, mallory: PrivateKey
) -> None:
    version = store.save(lambda x: x + 1, "f", serializer="cloudpickle")
    with pytest.raises(castore.errors.UnsafeObjectError):
        store.load(version.reference)
    store.sign(version.reference, mallory)
    with pytest.raises(castore.errors.UnsafeObjectError):
        store.load(version.reference, policy=TrustPolicy.of([alice.public_key]))
    store.sign(version.reference, alice)
    increment = store.load(version.reference, policy=TrustPolicy.of([alice.public_key]))
    assert increment(1) == 2
    assert store.load(version.reference, allow_unsafe=True)(2) == 3


def test_verify_signatures_reports_every_bad_object(
    store: castore.Store, alice: PrivateKey
) -> None:
    store.save({"v": 1}, "m")
    store.save({"v": 2}, "m")
    good = store.sign("m:1", alice)
    assert signing.verify_signatures(store.repository) == signing.SignatureAudit(checked=1, valid=1)
    tampered = store.sign("m:2", alice)
    _tamper(store, tampered.path)
    missing = bytes(32)
    orphan = Signature(missing, alice.public_key, alice.sign(signing.signing_message(missing)))
    store.repository.backend.write(orphan.path, orphan.encode())
    store.repository.backend.write(f"{layout.signature_folder(missing)}/not-a-key-id", b"junk")
    store.repository.backend.write("signatures/zz/junk", b"junk")
    audit = signing.verify_signatures(store.repository)
    assert (audit.checked, audit.valid, audit.orphans) == (5, 1, 1)
    problems = "\n".join(audit.problems)
    assert good.path not in problems
    assert f"{tampered.path}: the signature is forged" in problems
    assert orphan.path not in problems  # a signature of a collected version is garbage
    assert "not-a-key-id: not a signature object path" in problems
    assert "signatures/zz/junk: not a signature object path" in problems


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw.update(version=2), "format version 2"),
        (lambda raw: raw.update(algorithm="rsa"), "unknown algorithm"),
        (lambda raw: raw.update(key=bytes(31)), "'key' is 31 bytes"),
        (lambda raw: raw.update(key=bytes(32)), "holds the key"),
        (lambda raw: raw.update(signature="text"), "should be bytes"),
        (lambda raw: raw.update(created="x" * 100), "overlong"),
        (lambda raw: raw.pop("manifest"), "lacks the field"),
        (lambda raw: raw.update(padding="x" * 2000), "more than 1024"),
    ],
)
def test_malformed_signature_objects_are_castore_errors(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    key = PrivateKey.generate()
    digest = bytes(range(32))
    good = Signature(digest, key.public_key, key.sign(signing.signing_message(digest)))
    raw = wire.decode_map(good.encode(), "test")
    change(raw)
    with pytest.raises(castore.CastoreError, match=message):
        Signature.decode(wire.encode(raw), digest, key.public_key.key_id)


def _digest(store: castore.Store, ref: str) -> bytes:
    return catalog.resolve(store.repository, ref)[1]


def _digest_of_ref(ref_object: bytes) -> bytes:
    return wire.decode_map(ref_object, "ref")["manifest"]


def _tamper(store: castore.Store, path: str) -> None:
    """Flip one bit of the signature bytes inside a signature object."""
    raw = wire.decode_map(store.repository.backend.read(path), path)
    raw["signature"] = bytes([raw["signature"][0] ^ 1]) + raw["signature"][1:]
    store.repository.backend.write(path, wire.encode(raw))


def test_gc_collects_the_signatures_of_collected_versions(
    store: castore.Store, alice: PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save({"v": 1}, "m")
    kept = store.save({"v": 2}, "m")
    doomed = store.sign("m:1", alice)
    survivor = store.sign("m:2", alice)
    store.delete("m:1")
    assert store.verify().ok  # a signed, deleted version is no damage
    # No writer is active: take every unreferenced manifest (S3 stamps whole seconds).
    monkeypatch.setenv("CASTORE_LEASE_TTL", "-1")
    report = store.gc()
    monkeypatch.delenv("CASTORE_LEASE_TTL")
    assert report.manifests_deleted == 1 and report.signatures_deleted == 1
    backend = store.repository.backend
    assert not backend.exists(doomed.path) and backend.exists(survivor.path)
    verified = store.verify()
    assert verified.ok, verified.problems
    assert verified.orphan_signatures == 0
    assert store.trusted_signers(kept.reference, TrustPolicy.of([alice.public_key])) == [
        alice.public_key.key_id
    ]


def test_copy_carries_valid_signatures_only(
    store: castore.Store, alice: PrivateKey, mallory: PrivateKey, tmp_path: Path
) -> None:
    version = store.save({"v": 1}, "m")
    store.sign("m:1", alice)
    forged = store.sign("m:1", mallory)
    _tamper(store, forged.path)
    with castore.init(tmp_path / "dest") as dest:
        store.copy("m:1", dest)
        checks = dest.signatures(version.reference)
        assert [(c.key_id, c.valid) for c in checks] == [(alice.public_key.key_id, True)]
        policy = TrustPolicy.of([alice.public_key])
        assert dest.load("m:1", require_signature=True, policy=policy) == {"v": 1}
        assert dest.verify().ok
