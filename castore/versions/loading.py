"""Loading versions: verified bytes in, an object out, under the trust policy."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from castore.errors import IntegrityError
from castore.format.digests import format_digest
from castore.safety import Allowlist
from castore.trust.signatures import TrustPolicy, trusted_signers
from castore.versions.catalog import resolve
from castore.versions.serializers import LoadOptions, check_loadable, serializer_named

if TYPE_CHECKING:
    from castore.engine.repository import Repository


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
    manifest, digest = resolve(repo, ref)
    chosen = serializer_named(manifest.serializer)
    where = f"version {manifest.number} of {manifest.name} ({format_digest(digest)})"
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
    # The manifest was checked against its version digest, so its chunk list is authentic.
    with repo.open_descriptor(manifest.stream, authenticated=True) as file:
        obj = chosen.load(file, options)
        if file.read(1):
            raise IntegrityError(f"{where} has bytes after its serialized object")
    return obj
