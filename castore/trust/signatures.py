"""Signed versions: Ed25519 signatures over version digests, and the policy that trusts them.

A signature object ``signatures/<hh>/<version hex>/<key id>`` says that the holder of one
Ed25519 key vouches for one version digest (docs/FORMAT.md, section 21 "Signatures"). The
version digest authenticates the manifest, which authenticates every chunk, so a valid
signature by a trusted key proves who stored every byte of the version. Which keys are
trusted is the user's choice (a `TrustPolicy`), never the store's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from castore.backend import read_bounded
from castore.errors import (
    CastoreError,
    IntegrityError,
    InvalidInputError,
    ObjectExistsError,
    ObjectNotFoundError,
    UnsupportedFormatError,
    UntrustedVersionError,
)
from castore.format import layout, wire
from castore.format.digests import format_digest
from castore.trust.userconfig import config_dir, read_config_lines

if TYPE_CHECKING:
    from castore.engine.repository import Repository

SIGNATURE_VERSION = 1
ALGORITHM = "ed25519"
DOMAIN = b"castore-signature-v1\x00"
"""Prefix of every signed message, so that a castore signature means nothing elsewhere."""
MAX_SIGNATURE_OBJECT = 1024
MAX_CREATED_LENGTH = 64
MAX_REPORTED = 20
"""Signatures described, at most, in an error message."""
TRUSTED_KEYS_FILE = "trusted_keys"
SIGNING_KEY_FILE = "signing_key"
PRIVATE_MODE = 0o600
_KEY_ID = re.compile(r"[0-9a-f]{64}")
_SSH_ED25519 = "ssh-ed25519"


def default_key_path() -> Path:
    """Where `generate_key` and `load_private_key` put and find the user's key by default."""
    return config_dir() / SIGNING_KEY_FILE


def trusted_keys_path() -> Path:
    """The user's trusted public keys, one OpenSSH ``ssh-ed25519`` line each."""
    return config_dir() / TRUSTED_KEYS_FILE


def key_id_of(raw_public_key: bytes) -> str:
    """A key's id: the lowercase hex SHA-256 of its 32 raw public key bytes."""
    return hashlib.sha256(raw_public_key).hexdigest()


def signing_message(version_digest: bytes) -> bytes:
    """The exact bytes a signature signs: the domain prefix and the 32-byte version digest."""
    return DOMAIN + version_digest


# -- keys --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key (32 raw bytes) and an optional comment from its file."""

    raw: bytes
    comment: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != 32:
            raise InvalidInputError("an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> str:
        """The key's id (hex SHA-256 of the raw key), as in signature paths."""
        return key_id_of(self.raw)

    def __str__(self) -> str:
        return f"{self.key_id} ({self.comment})" if self.comment else self.key_id

    @classmethod
    def from_openssh(cls, line: str) -> PublicKey:
        """Parse ``ssh-ed25519 <base64> [comment]`` (an OpenSSH public key line)."""
        parts = line.strip().split(None, 2)
        if len(parts) < 2 or parts[0] != _SSH_ED25519:
            raise InvalidInputError(
                f"expected an OpenSSH Ed25519 public key 'ssh-ed25519 AAAA... [comment]', "
                f"got {line.strip()[:60]!r}"
            )
        try:
            key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidInputError(f"malformed Ed25519 public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidInputError("castore trusts Ed25519 keys only")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(raw, parts[2] if len(parts) > 2 else "")

    def to_openssh(self) -> str:
        """The key as one OpenSSH line, with its comment."""
        line = (
            Ed25519PublicKey.from_public_bytes(self.raw)
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        return f"{line} {self.comment}" if self.comment else line

    def verify(self, signature: bytes, message: bytes) -> bool:
        """Whether `signature` is this key's Ed25519 signature of `message`."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True


class PrivateKey:
    """An Ed25519 private key that signs version digests."""

    def __init__(self, key: Ed25519PrivateKey, comment: str = "") -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = PublicKey(raw, comment)
        """The matching public key, to give to those who should trust it."""

    def __repr__(self) -> str:
        return f"<castore.PrivateKey {self.public_key}>"

    @classmethod
    def generate(cls, comment: str = "") -> PrivateKey:
        """A new random key."""
        return cls(Ed25519PrivateKey.generate(), comment)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message`."""
        return self._key.sign(message)

    def to_openssh(self) -> bytes:
        """The private key in OpenSSH's format, unencrypted."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start; never replace an existing file."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise InvalidInputError(f"{path} already exists: castore never overwrites a key") from exc
    except OSError as exc:
        raise InvalidInputError(f"cannot create {path}: {exc}") from exc
    try:
        os.fchmod(descriptor, mode)
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def generate_key(path: str | os.PathLike[str] | None = None, *, comment: str = "") -> PublicKey:
    """Write a new key pair: the private key at `path` (mode 0600), the public one at `path`.pub.

    `path` defaults to `default_key_path()`. Existing files are never overwritten.
    """
    target = Path(path) if path is not None else default_key_path()
    public_path = target.with_name(target.name + ".pub")
    if public_path.exists():
        raise InvalidInputError(f"{public_path} already exists: castore never overwrites a key")
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create {target.parent}: {exc}") from exc
    key = PrivateKey.generate(comment)
    _write_new(target, key.to_openssh(), PRIVATE_MODE)
    _write_new(public_path, (key.public_key.to_openssh() + "\n").encode(), 0o644)
    return key.public_key


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the key file {path}: {exc}") from exc


def load_private_key(
    path: str | os.PathLike[str] | None = None, *, password: bytes | None = None
) -> PrivateKey:
    """Read an Ed25519 private key (OpenSSH or PKCS#8 PEM) that only its owner can read."""
    source = Path(path) if path is not None else default_key_path()
    data = _read_key_file(source)
    if os.name == "posix" and source.stat().st_mode & 0o077:
        raise InvalidInputError(
            f"the private key {source} is accessible by other users "
            f"(mode {source.stat().st_mode & 0o777:o}): run chmod 600 {source}"
        )
    key: object
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password)
        else:
            key = serialization.load_pem_private_key(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidInputError(f"{source} is not a usable private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInputError(f"{source} is not an Ed25519 key: castore signs with Ed25519 only")
    comment = ""
    with contextlib.suppress(InvalidInputError):  # the .pub file only lends its comment
        comment = load_public_key(source.with_name(source.name + ".pub")).comment
    return PrivateKey(key, comment)


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Read a public key file (one OpenSSH ``ssh-ed25519`` line)."""
    source = Path(path)
    lines = read_config_lines(source)
    if not source.exists() or not lines:
        raise InvalidInputError(f"{source} holds no public key")
    return PublicKey.from_openssh(lines[0][1])


# -- trust -------------------------------------------------------------------------------------

KeySource = PublicKey | Ed25519PublicKey | str | os.PathLike[str]
"""What a trust policy can be built from: keys, OpenSSH lines, or paths of .pub files."""


def _as_public_key(item: KeySource) -> PublicKey:
    if isinstance(item, PublicKey):
        return item
    if isinstance(item, Ed25519PublicKey):
        return PublicKey(
            item.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
    if isinstance(item, str) and item.lstrip().startswith(_SSH_ED25519 + " "):
        return PublicKey.from_openssh(item)
    if isinstance(item, str | os.PathLike):
        return load_public_key(item)
    raise InvalidInputError(f"cannot trust {item!r}: expected a public key, line or file")


@dataclass(frozen=True)
class TrustPolicy:
    """The public keys whose signatures a user trusts. Never read from a store."""

    keys: tuple[PublicKey, ...] = ()
    source: str = "passed in"
    """Where the keys came from, for messages."""

    @classmethod
    def of(cls, keys: Iterable[KeySource], source: str = "passed in") -> TrustPolicy:
        """A policy trusting these keys (PublicKey objects, OpenSSH lines or .pub paths)."""
        return cls(tuple(_as_public_key(item) for item in keys), source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TrustPolicy:
        """The keys of an OpenSSH-style file (one ``ssh-ed25519`` line each, # comments)."""
        source = Path(path)
        keys = []
        for number, line in read_config_lines(source):
            try:
                keys.append(PublicKey.from_openssh(line))
            except InvalidInputError as exc:
                raise InvalidInputError(f"{source}, line {number}: {exc}") from exc
        return cls(tuple(keys), str(source))

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None) -> TrustPolicy:
        """The user's trusted keys (`trusted_keys_path()`); none if the file does not exist."""
        return cls.from_file(path if path is not None else trusted_keys_path())

    def trusts(self, key_id: str) -> bool:
        """Whether the key with this id is trusted."""
        return any(key.key_id == key_id for key in self.keys)

    def describe(self, key_id: str) -> str:
        """The key id, with its comment when the policy knows the key."""
        for key in self.keys:
            if key.key_id == key_id:
                return str(key)
        return key_id


def trust_key(key: KeySource, path: str | os.PathLike[str] | None = None) -> bool:
    """Add a public key to the user's trusted keys (`trusted_keys_path()`, or `path`).

    The key (a PublicKey, an OpenSSH line or a .pub file) is validated, and so is the
    file: a malformed line in it is an InvalidInputError and nothing is written. Returns
    False, writing nothing, when the file already trusts the key.
    """
    public = _as_public_key(key)
    target = Path(path) if path is not None else trusted_keys_path()
    if TrustPolicy.from_file(target).trusts(public.key_id):
        return False
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(target, "a+b") as file:
            file.seek(0, os.SEEK_END)
            if file.tell():
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":
                    file.write(b"\n")
            file.write((public.to_openssh() + "\n").encode())
    except OSError as exc:
        raise InvalidInputError(f"cannot add the key to {target}: {exc}") from exc
    return True


# -- signature objects -------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """One key's signature of one version digest."""

    version_digest: bytes
    key: PublicKey
    signature: bytes
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    """When it was made (informational: not covered by the signature)."""

    @property
    def key_id(self) -> str:
        """The signer's key id."""
        return self.key.key_id

    @property
    def path(self) -> str:
        """Where the signature object is stored."""
        return layout.signature_path(self.version_digest, self.key_id)

    def is_valid(self) -> bool:
        """Whether the signature verifies for its version digest under its key."""
        return self.key.verify(self.signature, signing_message(self.version_digest))

    def encode(self) -> bytes:
        """The signature object's bytes."""
        return wire.encode(
            {
                "version": SIGNATURE_VERSION,
                "algorithm": ALGORITHM,
                "manifest": self.version_digest,
                "key": self.key.raw,
                "signature": self.signature,
                "created": self.created,
            }
        )

    @classmethod
    def decode(cls, data: bytes, version_digest: bytes, key_id: str) -> Signature:
        """Parse a signature object found under this version's folder and this key id.

        Malformations are IntegrityError (UnsupportedFormatError for newer formats or
        other algorithms); the signature itself is not verified here (see is_valid).
        """
        what = f"signature object {layout.signature_path(version_digest, key_id)}"
        if len(data) > MAX_SIGNATURE_OBJECT:
            raise IntegrityError(f"{what} is {len(data)} bytes, more than {MAX_SIGNATURE_OBJECT}")
        raw = wire.decode_map(data, what)
        wire.check_version(raw, SIGNATURE_VERSION, what)
        algorithm = wire.field(raw, "algorithm", str, what)
        if algorithm != ALGORITHM:
            raise UnsupportedFormatError(f"{what} uses the unknown algorithm {algorithm!r}")
        signed = _bin(raw, "manifest", 32, what)
        key = _bin(raw, "key", 32, what)
        signature = _bin(raw, "signature", 64, what)
        created = wire.field(raw, "created", str, what)
        if signed != version_digest:
            raise IntegrityError(f"{what} signs another version, {format_digest(signed)}")
        if key_id_of(key) != key_id:
            raise IntegrityError(f"{what} holds the key {key_id_of(key)}, not {key_id}")
        if len(created) > MAX_CREATED_LENGTH:
            raise IntegrityError(f"{what} has an overlong creation time")
        return cls(version_digest, PublicKey(key), signature, created)


def _bin(raw: dict[str, object], key: str, length: int, what: str) -> bytes:
    value = wire.field(raw, key, bytes, what)
    if len(value) != length:
        raise IntegrityError(f"{what} field {key!r} is {len(value)} bytes, not {length}")
    return value


@dataclass(frozen=True)
class SignatureCheck:
    """What one stored signature object of a version turned out to be."""

    key_id: str
    path: str
    valid: bool
    created: str | None = None
    problem: str | None = None
    """Why the signature is not valid."""


def _check_object(repo: Repository, version_digest: bytes, path: str) -> SignatureCheck | None:
    """Read, decode and verify one signature object; None if it vanished meanwhile."""
    key_id = path.rsplit("/", 1)[-1]
    if path != layout.signature_path(version_digest, key_id) or not _KEY_ID.fullmatch(key_id):
        return SignatureCheck(key_id, path, False, problem="not named by a key id")
    try:
        signature = Signature.decode(
            read_bounded(repo.backend, path, MAX_SIGNATURE_OBJECT), version_digest, key_id
        )
    except ObjectNotFoundError:
        return None
    except CastoreError as exc:
        return SignatureCheck(key_id, path, False, problem=str(exc))
    if not signature.is_valid():
        return SignatureCheck(key_id, path, False, signature.created, "the signature is forged")
    return SignatureCheck(key_id, path, True, signature.created)


def _check_all(
    repo: Repository, version_digest: bytes, paths: Iterable[str]
) -> list[SignatureCheck]:
    checks = (_check_object(repo, version_digest, path) for path in paths)
    return [check for check in checks if check is not None]


# -- signing and checking versions -------------------------------------------------------------


def sign(repo: Repository, digest: bytes, private_key: PrivateKey) -> Signature:
    """Sign the version with this version digest and store the signature.

    Signing again with the same key keeps a valid existing signature; a damaged one is
    replaced.
    """
    message = signing_message(digest)
    signature = Signature(digest, private_key.public_key, private_key.sign(message))
    try:
        repo.backend.create(signature.path, signature.encode())
    except ObjectExistsError:
        existing = _check_object(repo, digest, signature.path)
        if existing is not None and existing.valid:
            return Signature.decode(
                read_bounded(repo.backend, signature.path, MAX_SIGNATURE_OBJECT),
                digest,
                signature.key_id,
            )
        repo.backend.write(signature.path, signature.encode())
    return signature


def signatures(repo: Repository, digest: bytes) -> list[SignatureCheck]:
    """Every signature object stored for the version with this digest, checked."""
    return _check_all(repo, digest, repo.backend.list(layout.signature_folder(digest)))


def trusted_signers(
    repo: Repository,
    version_digest: bytes,
    policy: TrustPolicy,
    *,
    where: str,
    require: bool = False,
) -> list[str]:
    """Key ids of `policy`'s keys that validly signed this version digest.

    Only objects named by trusted key ids are read, so junk signature objects cost a
    listing at most. With `require`, no such key raises UntrustedVersionError naming
    `where` and the keys that did sign.
    """
    if not policy.keys and not require:
        return []
    paths = repo.backend.list(layout.signature_folder(version_digest))
    candidates = [path for path in paths if policy.trusts(path.rsplit("/", 1)[-1])]
    valid = [c.key_id for c in _check_all(repo, version_digest, candidates) if c.valid]
    if valid or not require:
        return valid
    raise UntrustedVersionError(_untrusted_message(repo, version_digest, policy, paths, where))


def _untrusted_message(
    repo: Repository, version_digest: bytes, policy: TrustPolicy, paths: list[str], where: str
) -> str:
    checks = _check_all(repo, version_digest, paths[:MAX_REPORTED])
    signed = [
        f"{policy.describe(c.key_id)} ("
        + ("valid, but not a trusted key" if c.valid else f"invalid: {c.problem}")
        + ")"
        for c in checks
    ]
    if len(paths) > MAX_REPORTED:
        signed.append(f"and {len(paths) - MAX_REPORTED} more")
    trusted = ", ".join(str(key) for key in policy.keys) or "none"
    return (
        f"{where} is not signed by a trusted key. Signed by: {'; '.join(signed) or 'no key'}. "
        f"Trusted keys ({policy.source}): {trusted}"
    )


@dataclass
class SignatureAudit:
    """What `verify_signatures` found."""

    checked: int = 0
    valid: int = 0
    orphans: int = 0
    """Valid signatures of versions whose manifests are gone: garbage for gc, not damage."""
    problems: list[str] = field(default_factory=list)


_SIGNATURE_PATH = re.compile(
    rf"{layout.SIGNATURES}/([0-9a-f]{{2}})/([0-9a-f]{{64}})/([0-9a-f]{{64}})"
)


def _signed_digest(path: str) -> bytes | None:
    """The version digest a signature object's path names, or None if it is no such path."""
    match = _SIGNATURE_PATH.fullmatch(path)
    if match is None or not match.group(2).startswith(match.group(1)):
        return None
    return bytes.fromhex(match.group(2))


def verify_signatures(repo: Repository) -> SignatureAudit:
    """Check every signature object in the store: its name, format, signature and version."""
    audit = SignatureAudit()
    for path in repo.backend.list(layout.SIGNATURES):
        audit.checked += 1
        digest = _signed_digest(path)
        if digest is None:
            audit.problems.append(f"{path}: not a signature object path")
            continue
        check_result = _check_object(repo, digest, path)
        if check_result is None:
            continue
        if not check_result.valid:
            audit.problems.append(f"{path}: {check_result.problem}")
        elif not repo.backend.exists(layout.manifest_path(digest)):
            audit.orphans += 1
        else:
            audit.valid += 1
    return audit


def delete_orphan_signatures(repo: Repository) -> int:
    """Delete the signature objects of versions whose manifests are gone (gc's last step).

    Objects under ``signatures/`` that are not signature paths are left for verify to
    report: gc deletes only what it knows to be garbage.
    """
    manifests = {layout.name_of(p) for p in repo.backend.list(layout.MANIFESTS)}
    deleted = 0
    for path in repo.backend.list(layout.SIGNATURES):
        digest = _signed_digest(path)
        if digest is not None and digest not in manifests:
            repo.backend.delete(path)
            deleted += 1
    return deleted


def copy_signatures(source: Repository, dest: Repository, version_digest: bytes) -> int:
    """Copy the valid signatures of one version into `dest`, byte for byte; return how many.

    Call it after the version's manifest is in `dest`. Invalid objects stay behind.
    """
    copied = 0
    paths = source.backend.list(layout.signature_folder(version_digest))
    for check_result in _check_all(source, version_digest, paths):
        if check_result.valid and not dest.backend.exists(check_result.path):
            dest.backend.write(check_result.path, source.backend.read(check_result.path))
            copied += 1
    return copied
