"""The public Store: each method a few lines over the services, on one Repository."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from castore.backend.counting import Requests
from castore.engine import leases
from castore.engine.cache import LocalCache
from castore.engine.progress import ProgressCallback
from castore.engine.reader import VerifiedStream
from castore.engine.refs import TagEvent
from castore.engine.repository import Repository, Source
from castore.engine.writer import WriteStats
from castore.errors import InvalidInputError
from castore.format import layout
from castore.format.config import StoreConfig
from castore.format.digests import format_digest, parse_digest
from castore.format.names import STORE_SEPARATOR, parse_reference
from castore.format.streams import encode_stream_object
from castore.format.tree import Entry
from castore.maintenance import copy as transfer
from castore.maintenance.copy import CopyReport
from castore.maintenance.gc import DEFAULT_REPACK_THRESHOLD, GcReport, gc
from castore.maintenance.repair import RepairReport
from castore.maintenance.repair import repair as repair_store
from castore.maintenance.stats import StoreStats
from castore.maintenance.stats import stats as store_stats
from castore.maintenance.verify import VerifyReport
from castore.maintenance.verify import verify as verify_store
from castore.snapshots import backup as backups
from castore.snapshots import browse, retention
from castore.snapshots import dump as snapshot_dump
from castore.snapshots.restore import RestorePlan, RestoreStats, planned_entries
from castore.snapshots.restore import restore as restore_snapshot
from castore.trust import signatures
from castore.trust.signatures import PrivateKey, Signature, SignatureCheck, TrustPolicy
from castore.versions import catalog, loading, lookup, saving, search
from castore.versions.catalog import Diff, HistoryCheck, LogEntry, Version
from castore.versions.loading import Inspection

__all__ = ["Source", "Store", "init", "load", "open_store", "save"]

TEMPORARY_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""How get_file creates its temporary: a new file, never an existing one or a link."""


class Store:
    """A castore store on one backend. Thread-safe; use as a context manager or close()."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        """The store's internals (backend, index, refs, leases): for maintenance tools."""

    @property
    def url(self) -> str:
        """Where the store lives."""
        return self.repository.url

    @property
    def config(self) -> StoreConfig:
        """The store's format parameters (chunker, compression, pack size)."""
        return self.repository.config

    @property
    def last_write(self) -> WriteStats | None:
        """What the most recent put, save or backup on this Store object added, and the
        backend requests it made (`requests`)."""
        return self.repository.last_write

    def requests(self) -> Requests:
        """Backend requests this Store object has made since it was opened, by kind."""
        return self.repository.requests()

    def __repr__(self) -> str:
        return f"<castore.Store {self.url}>"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store's worker threads."""
        self.repository.close()

    # -- bytes in ---------------------------------------------------------------------------

    def put(self, source: Source) -> str:
        """Store bytes, a binary file object or a file; return ``sha256:<hex>`` of the bytes.

        The digest equals what ``sha256sum`` prints for the same bytes.
        """
        repo = self.repository
        with repo.writing():
            descriptor = repo.write_stream(source)
            repo.lease.check()
            repo.backend.write(
                layout.stream_path(descriptor.sha256), encode_stream_object(descriptor)
            )
        return format_digest(descriptor.sha256)

    # -- bytes out --------------------------------------------------------------------------

    def contains(self, digest: str) -> bool:
        """Whether content with this digest was put into the store."""
        return self.repository.backend.exists(layout.stream_path(parse_digest(digest)))

    def get(self, digest: str) -> bytes:
        """The bytes a digest designates (as in open_stream), returned once all of them are
        verified, the whole-stream check included."""
        found = lookup.find_stream(self.repository, parse_digest(digest))
        return b"".join(
            self.repository.iter_chunks(found.descriptor, authenticated=found.authenticated)
        )

    def open_stream(self, digest: str) -> VerifiedStream:
        """A readable binary file over the bytes a digest designates, verified as it is read.

        ``sha256:<hex>`` is tried as a version digest first (the version's bytes), then as
        a content digest: a stream stored with put, else the stream of a live version (as
        ``info`` shows it), found by a scan of the live versions. No stream object planted
        under a version's digest can stand in for the version; verify reports such objects.

        Every chunk is checked against its SHA-256 before a read returns any of its bytes.
        The stream as a whole is proven only at its end: for a content digest, the read
        that reaches the end raises IntegrityError instead of returning b"" if the whole
        stream's SHA-256 differs (a version's chunk list is proven by its manifest). Treat
        what was read as unconfirmed until a read returns b""; get and get_file do. Asked
        for by its version digest, a version's stream is seekable and each read is proven
        (open_version too); by a content digest it reads from its start only.
        """
        found = lookup.find_stream(self.repository, parse_digest(digest))
        return self.repository.open_descriptor(found.descriptor, authenticated=found.authenticated)

    def open_version(self, ref: str) -> VerifiedStream:
        """A seekable readable binary file over a version's stored bytes: every chunk is
        verified before its bytes are returned, and the chunk list is proven by the
        version digest, so every read is proven wherever it starts."""
        manifest, _ = catalog.resolve(self.repository, ref)
        return self.repository.open_descriptor(manifest.stream, authenticated=True)

    def get_file(
        self,
        digest: str,
        path: str | os.PathLike[str],
        *,
        progress: Callable[[int, int], object] | None = None,
    ) -> int:
        """Write the bytes a digest designates (as in open_stream) to `path`; return their
        number. `progress(done, total)` is called after each chunk written.

        The bytes go to a temporary file beside `path`, created exclusively under a random
        name (concurrent gets of one path never share one), that replaces `path` only once
        every byte is verified, the whole-stream check included. On any failure `path` is
        left as it was, and the temporary is removed.
        """
        repo = self.repository
        found = lookup.find_stream(repo, parse_digest(digest))
        target = Path(path)
        where = f"cannot write {os.fspath(path)!r}"
        if not target.name:
            raise InvalidInputError(f"{where}: it names no file")
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.castore-tmp")
        try:
            file = open(os.open(temporary, TEMPORARY_FLAGS, 0o666), "wb")  # noqa: SIM115
        except OSError as exc:
            raise InvalidInputError(f"{where}: {exc}") from exc
        replaced = False
        try:
            with file:
                written = 0
                for chunk in repo.iter_chunks(found.descriptor, authenticated=found.authenticated):
                    file.write(chunk)
                    written += len(chunk)
                    if progress is not None:
                        progress(written, found.descriptor.size)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
            replaced = True
        except OSError as exc:
            raise InvalidInputError(f"{where}: {exc}") from exc
        finally:
            if not replaced:
                temporary.unlink(missing_ok=True)
        return found.descriptor.size

    # -- named versions ---------------------------------------------------------------------

    def save(
        self,
        obj: Any,
        name: str,
        *,
        metadata: dict[str, Any] | None = None,
        tags: Iterable[str] = (),
        serializer: str | None = None,
        force: bool = False,
        sign_with: PrivateKey | None = None,
        check_loadable: bool = False,
    ) -> Version:
        """Serialize `obj` straight into the store as the next version of `name`.

        Saving the same content and metadata as the latest version returns that version
        (with `tags` applied) unless `force` is set. Serializers: "joblib", "pickle",
        "cloudpickle", "raw" (bytes, a binary file or a path, as they are), and two that
        hold data only and so load with no trust configured: "tensors" (a dict of str to
        numpy arrays or torch tensors, in the safetensors layout) and "arrow" (a pandas
        DataFrame or Series, as Arrow IPC; needs pyarrow). By default (None) a dict of
        arrays or tensors saves as "tensors", a DataFrame or Series that Arrow holds exactly
        (string column labels, no object columns) as "arrow" when pyarrow is installed, and
        anything else as "joblib".

        A version that will not load under the default policy (it needs globals that
        policy refuses, see `inspect`) is saved with an UnloadableVersionWarning; with
        `check_loadable`, the object is loaded back under the default policy first, and
        the load's error (UnsafeObjectError, naming every refused global and what to do,
        or DeserializationError) is raised instead, with no version recorded.
        """
        repo = self.repository
        with repo.writing():
            version = saving.save(
                repo,
                obj,
                name,
                metadata=metadata,
                tags=tags,
                serializer=serializer,
                force=force,
                check_loadable=check_loadable,
            )
        if sign_with is not None:
            signatures.sign(repo, parse_digest(version.digest), sign_with)
        return version

    def import_file(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        serializer: str = "joblib",
        metadata: dict[str, Any] | None = None,
        tags: Iterable[str] = (),
        check: bool = True,
    ) -> Version:
        """Make an existing ``joblib.dump`` (or pickle, cloudpickle) file the next version
        of `name`, byte for byte: its ``sha256sum`` is the version's content digest. Unless
        `check` is false, it is first loaded under the default policy, and a file that would
        not load (refused globals, a damaged file) is refused, recording nothing. A file
        joblib compressed (``compress=3``) keeps its bytes and loads as joblib loads it."""
        repo = self.repository
        with repo.writing():
            return saving.import_file(
                repo,
                path,
                name,
                serializer=serializer,
                metadata=metadata,
                tags=tags,
                check=check,
            )

    def load(
        self,
        ref: str,
        *,
        mmap_mode: str | None = None,
        trusted: Iterable[Any] = (),
        allow_unsafe: bool = False,
        require_signature: bool = False,
        policy: TrustPolicy | None = None,
    ) -> Any:
        """Load the object a reference designates; ``mmap_mode="r"`` memory-maps arrays.

        Pickle-based streams are unpickled against an allowlist (numpy, scipy,
        scikit-learn, standard containers, plus `trusted` and the user's config): anything
        else is refused before it runs. Versions signed by a key of the trust `policy`
        (default: the user's trusted keys) load unrestricted, as does `allow_unsafe`.
        `require_signature` refuses versions no trusted key signed. See docs/SECURITY.md.
        """
        return loading.load(
            self.repository,
            ref,
            mmap_mode=mmap_mode,
            trusted=trusted,
            allow_unsafe=allow_unsafe,
            require_signature=require_signature,
            policy=policy,
        )

    def inspect(
        self, ref: str, *, trusted: Iterable[Any] = (), policy: TrustPolicy | None = None
    ) -> Inspection:
        """Every global a load of the version needs, and whether the load policy (built-in
        rules, the user's ``trusted_globals``, `trusted`) admits each; nothing is run.

        The report's `trusted_argument` is the one ``trusted=[...]`` that admits every
        refused global. A load also checks calls, states and structures, which this does
        not. `trusted_signers` lists the keys of the trust `policy` (default: the user's)
        that signed the version, which then loads without the allowlist.
        """
        return loading.inspect(self.repository, ref, trusted=trusted, policy=policy)

    def sign(self, ref: str, key: PrivateKey) -> Signature:
        """Sign a version (its version digest) with an Ed25519 key; several may sign."""
        _, digest = catalog.resolve(self.repository, ref)
        return signatures.sign(self.repository, digest, key)

    def signatures(self, ref: str) -> list[SignatureCheck]:
        """Every signature of a version, each checked."""
        _, digest = catalog.resolve(self.repository, ref)
        return signatures.signatures(self.repository, digest)

    def trusted_signers(self, ref: str, policy: TrustPolicy | None = None) -> list[str]:
        """Key ids of the policy's keys (default: the user's) that validly signed `ref`."""
        _, digest = catalog.resolve(self.repository, ref)
        trust = policy if policy is not None else TrustPolicy.from_config()
        return signatures.trusted_signers(self.repository, digest, trust, where=ref)

    def resolve(self, ref: str) -> str:
        """The pinned form ``name@sha256:<hex>`` of any reference."""
        manifest, digest = catalog.resolve(self.repository, ref)
        return f"{manifest.name}@{format_digest(digest)}"

    def qualified(self, ref: str) -> str:
        """``<store url>#name@sha256:<hex>``: store and content pinned in one string."""
        return f"{self.url}{STORE_SEPARATOR}{self.resolve(ref)}"

    def version(self, ref: str) -> Version:
        """The version a reference designates."""
        return Version.of(*catalog.resolve(self.repository, ref))

    def names(self) -> list[str]:
        """Every name with at least one live version."""
        return catalog.names(self.repository)

    def versions(self, name: str) -> list[int]:
        """The live version numbers of a name, ascending."""
        return catalog.versions(self.repository, name)

    def tag(self, ref: str, tag: str) -> Version:
        """Point a tag (``production``, ``candidate``...) at a version; its moves are kept."""
        return catalog.tag(self.repository, ref, tag)

    def untag(self, name: str, tag: str) -> None:
        """Remove a tag from a name (the removal is kept in the tag's history)."""
        catalog.untag(self.repository, name, tag)

    def tags(self, name: str) -> dict[str, int]:
        """A name's current tags and the version each points at."""
        return catalog.tags(self.repository, name)

    def tag_history(self, name: str, tag: str) -> list[TagEvent]:
        """Every move of a tag, oldest first."""
        return catalog.tag_history(self.repository, name, tag)

    def info(self, ref: str, policy: TrustPolicy | None = None) -> dict[str, Any]:
        """Everything known about a version: both digests, size, serializer, metadata, and
        its signatures, each saying whether a key of the trust `policy` (default: the
        user's trusted keys) made it."""
        trust = policy if policy is not None else TrustPolicy.from_config()
        return catalog.info(self.repository, ref, trust)

    def find(self, name: str, where: str | Iterable[str]) -> list[Version]:
        """The live versions of `name` whose metadata meets every condition, ascending:
        ``store.find("churn/model", "auc>0.9 and stage==prod")`` (castore.versions.search
        says how conditions read, in the spirit of MLflow's search_model_versions)."""
        conditions = search.parse_conditions(where)
        found = [
            entry.details
            for entry in catalog.log(self.repository, name)
            if entry.details is not None and search.matches_all(entry.details.metadata, conditions)
        ]
        return sorted(found, key=lambda version: version.version)

    def log(self, name: str, *, verify: bool = False) -> list[LogEntry]:
        """A name's history, newest first; with `verify`, IntegrityError on a broken chain."""
        return catalog.log(self.repository, name, verify=verify)

    def verify_history(self, name: str) -> list[str]:
        """Problems in a name's hash chain (missing, rewritten or swapped versions)."""
        return catalog.verify_history(self.repository, name)

    def check_history(self, name: str) -> HistoryCheck:
        """A name's hash chain checked: its problems, and the versions not in this store
        because a copy brought later ones without them (absent, not damaged)."""
        return catalog.check_history(self.repository, name)

    def diff(self, a: str, b: str) -> Diff:
        """Metadata changes between two versions and the bytes they share."""
        return catalog.diff(self.repository, a, b)

    def delete(self, ref: str) -> Version:
        """Delete a version (its tags go with it); its data is freed by gc."""
        return catalog.delete(self.repository, ref)

    # -- directory backups ------------------------------------------------------------------

    def backup(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        exclude: Iterable[str] = (),
        tags: Iterable[str] = (),
        progress: ProgressCallback | None = None,
        one_file_system: bool = False,
        exclude_caches: bool = False,
        skip_if_unchanged: bool = False,
        xattrs: bool = True,
    ) -> backups.Snapshot:
        """Snapshot a directory as the next version of `name`, deduplicated against
        everything in the store; files unchanged since the last snapshot are not read.
        `exclude` takes gitignore-style patterns; unreadable files are skipped and listed.
        `one_file_system` does not enter mount points, `exclude_caches` directories
        tagged with CACHEDIR.TAG (both are recorded, empty, and reported as skipped).
        `skip_if_unchanged` adds no snapshot when nothing changed since the latest one
        (restic's --skip-if-unchanged): that one is returned, with `stats.unchanged`.
        FIFOs and device nodes are recorded, and extended attributes unless `xattrs` is
        False (``user.*``; as root also ``security.*``, ``trusted.*`` and POSIX ACLs)."""
        repo = self.repository
        with repo.writing():
            return backups.backup(
                repo,
                path,
                name,
                exclude=exclude,
                tags=tags,
                progress=progress,
                one_file_system=one_file_system,
                exclude_caches=exclude_caches,
                skip_if_unchanged=skip_if_unchanged,
                xattrs=xattrs,
            )

    def restore(
        self,
        ref: str,
        target: str | os.PathLike[str],
        paths: Iterable[str] = (),
        *,
        owners: bool = True,
        setid: bool = False,
        overwrite: str = "if-changed",
        delete: bool = False,
        dry_run: bool = False,
        progress: ProgressCallback | None = None,
        on_plan: Callable[[RestorePlan], None] | None = None,
        xattrs: bool = True,
        devices: bool = False,
    ) -> RestoreStats:
        """Restore a snapshot (or some of its `paths`) under `target`, verified, never
        writing outside it; files already identical are left alone.

        As root, owners are restored (by number) unless `owners` is False. Setuid and
        setgid bits are kept only with the owners and `setid` (for snapshots you trust: a
        store writer could plant a set-id program owned by root); otherwise they are
        stripped and counted. `overwrite` says what happens to what is in an entry's
        place: "if-changed" (rewrite unless identical), "always", or "never" (leave it);
        `delete` removes what the target holds and the snapshot does not, inside the
        restored `paths` only (restic's --delete). `on_plan` gets the plan (files and bytes
        to write) before anything is written; with `dry_run` nothing is written at all
        (`removed_paths` then lists what `delete` would remove). Extended attributes are
        restored unless `xattrs` is False (security.* and trusted.* only with `setid`);
        FIFOs are made, device nodes only as root with `devices`."""
        return restore_snapshot(
            self.repository,
            ref,
            target,
            paths,
            owners=owners,
            setid=setid,
            overwrite=overwrite,
            delete=delete,
            dry_run=dry_run,
            progress=progress,
            on_plan=on_plan,
            xattrs=xattrs,
            devices=devices,
        )

    def planned_entries(self, plan: RestorePlan) -> Iterator[Entry]:
        """The entries a restore plan restores, in tree order: what a dry run would write."""
        with planned_entries(self.repository, plan) as entries:
            yield from entries

    def snapshot_entries(self, ref: str, path: str | None = None) -> Iterator[Entry]:
        """The entries of a snapshot, or of one directory of it."""
        return browse.list_snapshot(self.repository, ref, path)

    def snapshot_entry(self, ref: str, path: str) -> Entry:
        """The entry at `path` in snapshot `ref` (NotFoundError if there is none)."""
        return browse.find_entry(self.repository, ref, path)

    def open_snapshot_file(self, ref: str, path: str) -> VerifiedStream:
        """A seekable readable file over file `path` of snapshot `ref`, without restoring
        it: every chunk is verified before its bytes are returned."""
        return browse.open_file(self.repository, ref, path)

    def dump(
        self,
        ref: str,
        path: str,
        out: BinaryIO,
        *,
        archive: str | None = None,
        devices: bool = False,
    ) -> int:
        """Write file `path` of snapshot `ref` to the binary file `out` (return its size),
        or with ``archive="tar"`` a folder and all below it ("" for the whole snapshot) as
        a pax tar stream (return the number of members; device nodes only with
        `devices`). Every byte is verified before it is written; nothing is restored."""
        if archive is None:
            return snapshot_dump.dump_file(self.repository, ref, path, out)
        if archive not in snapshot_dump.ARCHIVES:
            raise InvalidInputError(
                f"archive must be one of {snapshot_dump.ARCHIVES}, not {archive!r}"
            )
        return snapshot_dump.dump_tar(self.repository, ref, path, out, devices=devices)

    def find_paths(
        self, patterns: Iterable[str], names: Iterable[str] | None = None
    ) -> Iterator[browse.PathMatches]:
        """The snapshots (of `names`, default every name) holding paths that match one of
        `patterns`, oldest first per name (restic's find): a pattern with a ``/`` matches
        the whole path, one without the last component; ``*``, ``?`` and ``[...]`` match
        within a component."""
        return browse.find_paths(self.repository, list(patterns), names)

    def snapshot_diff(self, a: str, b: str) -> Iterator[browse.Change]:
        """Files added, removed and changed between two snapshots."""
        return browse.diff_snapshots(self.repository, a, b)

    def forget(self, name: str, **policy: Any) -> retention.ForgetResult:
        """Delete the snapshots (versions) of `name` that a restic-style policy does not keep:
        keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly,
        keep_within ("1y6m7d2h"), keep_tag (tags of `name`), dry_run."""
        return retention.forget(self.repository, name, **policy)

    # -- health -----------------------------------------------------------------------------

    def verify(self, *, read_data: bool = False, subset: str | None = None) -> VerifyReport:
        """Check refs, manifests, hash chains and chunk locations; with `read_data`, re-read
        and re-hash every pack (or a `subset`: "10%" at random, or "n/t" by name)."""
        return verify_store(
            self.repository, read_data=read_data or subset is not None, subset=subset
        )

    def stats(self) -> StoreStats:
        """Logical and stored bytes, dedup and compression ratios, object counts."""
        return store_stats(self.repository)

    def copy(
        self,
        ref: str,
        dest: Store,
        *,
        tags: bool = True,
        progress: ProgressCallback | None = None,
    ) -> CopyReport:
        """Copy a version, or every version of a name, into another store.

        Only chunks `dest` lacks are transferred, every chunk is verified on the way, and
        version digests and numbers stay the same, so references work in both stores.
        Versions not copied are absent from `dest`, not deleted; a later copy adds them.
        With `tags`, the tags the source sets on the copied versions come along, except
        where `dest` moved or removed a tag on its own (the report says which).
        `progress` is called after each chunk sent and each version done.
        """
        source, target = self.repository, dest.repository
        if parse_reference(ref).name is not None and ":" not in ref and "@" not in ref:
            return transfer.copy_name(source, ref, target, tags=tags, progress=progress)
        return transfer.copy_version(source, ref, target, tags=tags, progress=progress)

    def consolidate_index(self) -> int:
        """Merge the store's index objects (one per write) into one, so that opens read one
        object instead of many; return how many were replaced. Safe while others read and
        write: the merged object is written before the old ones are deleted. Writes do this
        on their own once a store has more than 32 index objects; gc also leaves one."""
        return len(self.repository.consolidate_index())

    def repair(self) -> RepairReport:
        """Rebuild lost or damaged index objects from pack footers; report what is lost."""
        return repair_store(self.repository)

    def gc(
        self, *, dry_run: bool = False, repack_threshold: float = DEFAULT_REPACK_THRESHOLD
    ) -> GcReport:
        """Delete data no version or put stream reaches; repack mostly-garbage packs.

        Safe while other processes and machines read; it waits for no one: while writers
        hold fresh leases it raises StoreBusyError (retry later).
        """
        return gc(self.repository, dry_run=dry_run, repack_threshold=repack_threshold)

    def locks(self) -> list[leases.LeaseHolder]:
        """Every writer lease and the gc marker: who holds it, how fresh it is."""
        return leases.holders(self.repository.backend)

    def unlock(self, *, remove_all: bool = False) -> list[leases.LeaseHolder]:
        """Remove stale leases and those of processes gone from this host (restic's
        unlock); with `remove_all`, every lease and the gc marker, whoever holds them:
        only when no writer or gc is running anywhere. Return what was removed."""
        return leases.remove_leases(self.repository.backend, remove_all=remove_all)


def init(
    url: str | os.PathLike[str],
    *,
    config: StoreConfig | None = None,
    cache: LocalCache | None = None,
    **storage_options: Any,
) -> Store:
    """Create a store at a local path or fsspec URL and return it opened.

    Storage options (``endpoint_url``, ``key``, ``secret``...) go to fsspec.
    """
    return Store(Repository.create(os.fspath(url), storage_options, config or StoreConfig(), cache))


def open_store(
    url: str | os.PathLike[str], *, cache: LocalCache | None = None, **storage_options: Any
) -> Store:
    """Open an existing store at a local path or fsspec URL (options go to fsspec)."""
    return Store(Repository.open(os.fspath(url), storage_options, cache))


def save(
    obj: Any,
    target: str,
    *,
    metadata: dict[str, Any] | None = None,
    tags: Iterable[str] = (),
    serializer: str | None = None,
    force: bool = False,
    sign_with: PrivateKey | None = None,
    check_loadable: bool = False,
    **storage_options: Any,
) -> Version:
    """Save `obj` as the next version of a name in one call, as ``joblib.dump`` does:
    `target` is ``<store url>#<name>``, for example ``"s3://bucket/models#churn/model"``.

    The other arguments are those of `Store.save`; further keyword arguments are storage
    options for fsspec. The store must exist (``castore init``): a mistyped URL does not
    become a new, empty store.
    """
    parsed = parse_reference(target)
    pinned = (parsed.version, parsed.tag, parsed.digest, parsed.digest_prefix)
    if parsed.store_url is None or parsed.name is None or pinned != (None,) * 4:
        raise InvalidInputError(
            f"{target!r} is not '<store url>#<name>': save takes a store and a name, and "
            "gives the version its number"
        )
    with open_store(parsed.store_url, **storage_options) as store:
        return store.save(
            obj,
            parsed.name,
            metadata=metadata,
            tags=tags,
            serializer=serializer,
            force=force,
            sign_with=sign_with,
            check_loadable=check_loadable,
        )


def load(
    reference: str,
    *,
    mmap_mode: str | None = None,
    trusted: Iterable[Any] = (),
    require_signature: bool = False,
    policy: TrustPolicy | None = None,
    **storage_options: Any,
) -> Any:
    """Load from a store-qualified reference ``<store url>#<reference>`` in one call.

    `trusted`, `require_signature` and `policy` are load options as in `Store.load`;
    other keyword arguments are storage options for fsspec.
    """
    parsed = parse_reference(reference)
    if parsed.store_url is None:
        raise InvalidInputError(
            f"{reference!r} names no store: expected '<store url>#<reference>', "
            "or open the store and call its load()"
        )
    with open_store(parsed.store_url, **storage_options) as store:
        return store.load(
            reference,
            mmap_mode=mmap_mode,
            trusted=trusted,
            require_signature=require_signature,
            policy=policy,
        )
