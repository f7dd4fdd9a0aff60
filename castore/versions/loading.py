"""Loading versions: verified bytes in, an object out, under the trust policy; and
inspecting what a load of a version would need."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from castore.errors import IntegrityError, InvalidInputError, UnsupportedFormatError
from castore.format.digests import format_digest
from castore.format.streams import StreamDescriptor
from castore.safety import Allowlist, Scan
from castore.trust.signatures import TrustPolicy, trusted_signers
from castore.versions.catalog import Version, resolve
from castore.versions.serializers import (
    SERIALIZERS,
    LoadOptions,
    Serializer,
    check_loadable,
)

if TYPE_CHECKING:
    from castore.engine.repository import Repository

MMAP_MODES = (None, "r", "c")
"""numpy's memory-map modes that leave the mapped file as it is. The file is the verified
copy that later loads of the same stream map too: "r+" would let writes to an array
change what they load, and "w+" would truncate it."""


def load(
    repo: Repository,
    ref: str,
    *,
    mmap_mode: str | None = None,
    trusted: Iterable[Any] = (),
    allow_unsafe: bool = False,
    require_signature: bool = False,
    policy: TrustPolicy | None = None,
) -> Any:
    """Deserialize a version; every chunk is verified against the authenticated chunk list.

    Pickle-based streams are unpickled with the restricted unpickler: only the built-in
    allowlist, the user's ``trusted_globals`` and `trusted` patterns are admitted. A version
    signed by a key of the trust `policy` (default: the user's ``trusted_keys``) loads with
    the plain unpickler, as does any version with `allow_unsafe`. With `require_signature`,
    a version no trusted key signed is refused (UntrustedVersionError).
    """
    if mmap_mode not in MMAP_MODES:
        hint = ' ("c" maps arrays copy-on-write: writable, and the stored copy stays)'
        raise InvalidInputError(
            f"mmap_mode must be one of {MMAP_MODES}, not {mmap_mode!r}"
            + (hint if mmap_mode in ("r+", "w+") else "")
        )
    manifest, digest = resolve(repo, ref)
    where = f"version {manifest.number} of {manifest.name} ({format_digest(digest)})"
    chosen = _reader(manifest.serializer, where)
    trust = policy if policy is not None else TrustPolicy.from_config()
    signers = trusted_signers(repo, digest, trust, where=where, require=require_signature)
    check_loadable(manifest.serializer, str(manifest.environment.get("python", "")), where)
    path = repo.materialize(manifest.stream) if mmap_mode is not None else None
    options = LoadOptions(
        path=None if path is None else str(path),
        mmap_mode=mmap_mode,
        size=manifest.stream.size,
        allowlist=None if allow_unsafe or signers else Allowlist.from_config(trusted),
        unsafe=allow_unsafe or bool(signers),
        where=where,
    )
    if path is not None:
        with open(path, "rb") as file:
            return chosen.load(file, options)
    return read_stream(repo, manifest.stream, chosen, options)


def _reader(serializer: str, where: str) -> Serializer:
    """The serializer that reads a stored version back, or why this castore cannot."""
    if serializer not in SERIALIZERS:
        raise UnsupportedFormatError(
            f"{where} was written by serializer {serializer!r}, which this castore does not "
            f"know (it knows {', '.join(sorted(SERIALIZERS))}): a newer castore may load it; "
            "its bytes can still be read (get)"
        )
    return SERIALIZERS[serializer]


def read_stream(
    repo: Repository, stream: StreamDescriptor, chosen: Serializer, options: LoadOptions
) -> Any:
    """Deserialize a stored stream whose chunk list is authentic (it comes from a manifest
    checked against its version digest, or from this process's own write)."""
    with repo.open_descriptor(stream, authenticated=True) as file:
        obj = chosen.load(file, options)
        if file.read(1):
            raise IntegrityError(f"{options.where} has bytes after its serialized object")
    return obj


@dataclass(frozen=True, kw_only=True)
class Inspection(Scan):
    """The scan of a version's stream: every global a load of it needs, in order, and
    whether the policy admits each (see `castore.safety.Scan`)."""

    version: Version
    trusted_signers: tuple[str, ...] = ()
    """Key ids of trusted keys that signed the version: it then loads without the policy."""

    @property
    def loads(self) -> bool:
        """Whether a load would get past the policy: a trusted key signed the version, or
        the policy admits every global (a load still checks calls, states and structures)."""
        return bool(self.trusted_signers) or self.admitted


def inspect(
    repo: Repository,
    ref: str,
    *,
    trusted: Iterable[Any] = (),
    policy: TrustPolicy | None = None,
) -> Inspection:
    """Every global the version's stream names and what the load policy (the built-in
    rules, the user's ``trusted_globals`` and `trusted`) makes of each, and the keys of
    the trust `policy` (default: the user's) that signed it; nothing is built."""
    manifest, digest = resolve(repo, ref)
    where = f"version {manifest.number} of {manifest.name} ({format_digest(digest)})"
    trust = policy if policy is not None else TrustPolicy.from_config()
    signers = trusted_signers(repo, digest, trust, where=where)
    options = LoadOptions(size=manifest.stream.size, allowlist=Allowlist.from_config(trusted))
    with repo.open_descriptor(manifest.stream, authenticated=True) as file:
        scan = _reader(manifest.serializer, where).scan(file, options)
    return Inspection(
        globals=scan.globals,
        problem=scan.problem,
        version=Version.of(manifest, digest),
        trusted_signers=tuple(signers),
    )
