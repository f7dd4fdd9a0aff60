"""The ``castore`` command line: the Python API for shells and scripts.

Exit codes: 0 success; 1 integrity problem, failed verification, or a version `inspect`
finds will not load; 2 invalid input or usage; 3 not found; 4 storage backend failure;
5 any other castore error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import castore
from castore.cli.progress import ProgressDisplay
from castore.cli.terminal import guarded, shown
from castore.errors import (
    BackendError,
    CastoreError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
)

EXIT_CODES: list[tuple[type[CastoreError], int]] = [
    (IntegrityError, 1),
    (InvalidInputError, 2),
    (NotFoundError, 3),
    (BackendError, 4),
    (CastoreError, 5),
]

INCOMPLETE = 3
"""Exit code of a backup whose snapshot was made with files that changed as they were read."""

EPILOG = """\
examples:
  castore --store ./models init
  castore put weights.bin                     # -> sha256:<content digest>
  castore put model.onnx --name churn/onnx --tag candidate --meta auc=0.91
  castore ls                                  # names, latest versions, tags
  castore log churn/onnx --verify             # history, hash chain checked
  castore tag churn/onnx:3 production
  castore resolve churn/onnx:production       # -> churn/onnx@sha256:<version digest>
  castore get churn/onnx@sha256:<hex> -o model.onnx
  castore diff churn/onnx:2 churn/onnx:3
  castore --json info churn/onnx:latest       # digests, metadata, signatures (trusted or not)
  castore inspect churn/model:3               # every global a load needs, and the policy's verdict
  castore info churn/model:3 --globals
  castore key generate; castore key trust alice.pub; castore key ls
  castore backup runs/exp-42 --name backups/exp-42 --exclude '*.tmp'
  castore ls backups/exp-42:1 checkpoints; castore diff backups/exp-42:1 backups/exp-42:2
  castore restore backups/exp-42:1 out/ checkpoints/best.pt
  castore restore --dry-run --no-owner backups/exp-42:1 out/
  castore forget backups/exp-42 --keep-last 3 --keep-daily 7 --dry-run

The store is --store URL or $CASTORE_STORE (a path, file://, s3://bucket/prefix...).
S3 settings come from the usual AWS variables, or --option endpoint_url=http://... .
exit codes: 0 ok, 1 integrity problem or failed check (verify, log --verify, inspect),
2 invalid input, 3 not found, 4 backend error, 5 other castore error.
"""

CAT_MEMORY = 64 * 1024 * 1024
"""Bytes `cat` holds in memory while it verifies a stream; past that, a temporary file."""
CAT_BLOCK = 1024 * 1024
"""Bytes `cat` reads and writes at a time."""


def _parse_pairs(pairs: list[str], what: str) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"{what} must look like key=value, got {pair!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def _chunker_params(text: str) -> castore.ChunkerParams:
    """MIN,AVG,MAX in bytes, as `init --chunker-params` takes them."""
    sizes = text.split(",")
    # Past 20 digits a size is out of range anyway, and int() refuses 4300 digits or more.
    if len(sizes) != 3 or not all(re.fullmatch("[0-9]{1,20}", size) for size in sizes):
        raise InvalidInputError(
            f"--chunker-params takes MIN,AVG,MAX: three whole numbers of bytes, not {text!r}"
        )
    min_size, avg_size, max_size = map(int, sizes)
    return castore.ChunkerParams(min_size, avg_size, max_size)


def _init_config(args: argparse.Namespace) -> castore.StoreConfig:
    """The config `init` writes: the defaults, with the chunker sizes given."""
    if args.chunker_params is None:
        return castore.StoreConfig()
    return castore.StoreConfig(chunker=_chunker_params(args.chunker_params))


class Command:
    """One invocation: parsed arguments, the opened store, and output helpers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._store: castore.Store | None = None

    @property
    def store(self) -> castore.Store:
        """The store named by --store or $CASTORE_STORE, opened on first use."""
        if self._store is None:
            url = self.args.store or os.environ.get("CASTORE_STORE")
            if not url:
                raise InvalidInputError("no store given: use --store URL or set CASTORE_STORE")
            options = _parse_pairs(self.args.option, "--option")
            if self.args.command == "init":
                self._store = castore.init(url, config=_init_config(self.args), **options)
            else:
                self._store = castore.open(url, **options)
        return self._store

    def close(self) -> None:
        """Release the store."""
        if self._store is not None:
            self._store.close()

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        """Print JSON with --json, else human-readable text."""
        if self.args.json:
            print(json.dumps(data, indent=2, default=str))
        else:
            print(guarded(text() if callable(text) else text))

    def emit_rows(self, rows: Iterator[Any], line: Callable[[Any], str]) -> None:
        """Print rows as they come (a JSON array with --json, else a line each), so that
        a listing holds one row at a time, however long it is."""
        if not self.args.json:
            printed = False
            for row in rows:
                print(guarded(line(row)))
                printed = True
            if not printed:
                print()
            return
        opened = False
        for row in rows:
            print("[" if not opened else ",")
            print("  " + json.dumps(row, indent=2, default=str).replace("\n", "\n  "), end="")
            opened = True
        print("\n]" if opened else "[]")

    def progress(self, *, counts_files: bool = True) -> ProgressDisplay:
        """The command's progress on stderr: a bar on a terminal, JSON lines with --json."""
        return ProgressDisplay(self.args.command, as_json=self.args.json, counts_files=counts_files)


def _version_json(version: castore.Version) -> dict[str, Any]:
    return {
        "name": version.name,
        "version": version.version,
        "digest": version.digest,
        "reference": version.reference,
        "content_digest": version.content_digest,
        "size": version.size,
        "stream_size": version.stream_size,
        "serializer": version.serializer,
        "created": version.created,
        "metadata": version.metadata,
    }


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class _ProgressReader:
    """A binary file wrapper that reports bytes read to a progress display."""

    def __init__(self, file: Any, display: ProgressDisplay, total: int | None) -> None:
        self._file = file
        self._display = display
        self._total = total
        self._done = 0

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._done += len(data)
        self._display.bytes_done(self._done, self._total)
        return data


# -- commands ----------------------------------------------------------------------------------


def cmd_init(command: Command) -> int:
    """castore init."""
    store = command.store
    command.emit(
        {"store": store.url, "store_id": store.config.store_id},
        f"created castore store {store.url}",
    )
    return 0


def cmd_put(command: Command) -> int:
    """castore put FILE|- [--name NAME]."""
    args = command.args
    source = sys.stdin.buffer if args.file == "-" else Path(args.file)
    if isinstance(source, Path) and not source.is_file():
        raise InvalidInputError(f"{args.file} is not a readable file")
    total = source.stat().st_size if isinstance(source, Path) else None
    with command.progress(counts_files=False) as display:
        file = open(source, "rb") if isinstance(source, Path) else source  # noqa: SIM115
        try:
            reader = _ProgressReader(file, display, total)
            if args.name:
                metadata = _parse_pairs(args.meta, "--meta")
                version = command.store.save(
                    reader,
                    args.name,
                    serializer="raw",
                    metadata=metadata,
                    tags=args.tag,
                    force=args.force,
                )
            else:
                digest = command.store.put(reader)
        finally:
            if isinstance(source, Path):
                file.close()
    stats = command.store.last_write
    new_bytes = stats.new_bytes_stored if stats else 0
    if args.name:
        command.emit(
            {**_version_json(version), "new_bytes_stored": new_bytes},
            f"{version.name}:{version.version}  {version.reference}  "
            f"({_human_size(version.size)}, {_human_size(new_bytes)} new)",
        )
    else:
        command.emit({"digest": digest, "new_bytes_stored": new_bytes}, digest)
    return 0


def _digest(command: Command, ref: str) -> str:
    """The digest whose bytes to read: a bare digest as given (a version digest first, then
    a content digest), any other reference (a short digest too) pinned to its version's
    digest."""
    if ref.startswith(castore.DIGEST_PREFIX) and len(ref) == len(castore.DIGEST_PREFIX) + 64:
        return ref
    return command.store.version(ref).digest


def cmd_import(command: Command) -> int:
    """castore import FILE... --name NAME [--serializer S] [--no-check]."""
    args = command.args
    metadata = _parse_pairs(args.meta, "--meta")
    versions = [
        command.store.import_file(
            file,
            args.name,
            serializer=args.serializer,
            metadata=metadata,
            tags=args.tag,
            check=not args.no_check,
        )
        for file in args.files
    ]
    command.emit(
        [_version_json(version) for version in versions],
        lambda: "\n".join(
            f"{file} -> {v.name}:{v.version}  {v.reference}"
            for file, v in zip(args.files, versions, strict=True)
        ),
    )
    return 0


def cmd_get(command: Command) -> int:
    """castore get REF -o PATH: PATH is replaced only once every byte is verified."""
    target = Path(command.args.output)
    with command.progress(counts_files=False) as display:
        digest = _digest(command, command.args.ref)
        size = command.store.get_file(digest, target, progress=display.bytes_done)
    command.emit({"path": str(target), "size": size}, f"wrote {target} ({_human_size(size)})")
    return 0


def cmd_cat(command: Command) -> int:
    """castore cat REF: the bytes to standard output, once every one of them is verified.

    They are held in memory up to CAT_MEMORY bytes and in a temporary file (deleted when
    done) past that, so that a stream that fails its checks prints nothing.
    """
    digest = _digest(command, command.args.ref)
    with (
        command.store.open_stream(digest) as stream,
        tempfile.SpooledTemporaryFile(max_size=CAT_MEMORY) as held,
    ):
        while block := stream.read(CAT_BLOCK):
            try:
                held.write(block)
            except OSError as exc:
                raise CastoreError(
                    f"cannot hold the bytes to verify in {tempfile.gettempdir()}: {exc}; "
                    "set TMPDIR to a folder with room"
                ) from exc
        held.seek(0)
        while block := held.read(CAT_BLOCK):
            sys.stdout.buffer.write(block)
    sys.stdout.buffer.flush()
    return 0


def _is_snapshot(store: castore.Store, ref: str) -> bool:
    return store.version(ref).kind == "tree"


def _version_row(version: castore.Version, tags: dict[str, int]) -> dict[str, Any]:
    """A version as `ls NAME` lists it: its JSON and the tags that point at it."""
    return {
        **_version_json(version),
        "tags": sorted(t for t, n in tags.items() if n == version.version),
    }


def _version_line(row: dict[str, Any]) -> str:
    return (
        f"{row['version']:<5} {row['digest'][:19]}  {_human_size(row['size']):>10}  "
        f"{shown(row['created'][:19])}  " + " ".join(row["tags"])
    )


def _entry_json(entry: Any) -> dict[str, Any]:
    return {
        "path": entry.path_str,
        "type": entry.type,
        "mode": oct(entry.mode),
        "size": entry.size,
        "mtime_ns": entry.mtime_ns,
        **({"target": os.fsdecode(entry.target)} if entry.type == "symlink" else {}),
        **(
            {"major": entry.major, "minor": entry.minor}
            if entry.type in ("chardev", "blockdev")
            else {}
        ),
        **({"xattrs": [os.fsdecode(name) for name, _ in entry.xattrs]} if entry.xattrs else {}),
        **({"reason": entry.reason} if entry.reason else {}),
    }


def _entry_line(e: dict[str, Any]) -> str:
    # A device shows its numbers where its size would be, as ls -l does.
    size = f"{e['major']},{e['minor']}" if "major" in e else _human_size(e["size"])
    return (
        f"{e['type']:<8} {e['mode']:>7} {size:>10}  {shown(e['path'])}"
        + (f" -> {shown(e['target'])}" if "target" in e else "")
        + (f"  [xattrs: {shown(', '.join(e['xattrs']))}]" if "xattrs" in e else "")
        + (f"  (skipped: {shown(e['reason'])})" if "reason" in e else "")
    )


def _list_snapshot(command: Command, ref: str, path: str | None) -> int:
    command.emit_rows(map(_entry_json, command.store.snapshot_entries(ref, path)), _entry_line)
    return 0


def cmd_ls(command: Command) -> int:
    """castore ls [NAME | REF | SNAPSHOT [PATH]]."""
    store = command.store
    args = command.args
    if args.where and (args.name is None or any(c in args.name for c in ":@")):
        raise InvalidInputError("--where searches the versions of a NAME: castore ls NAME --where")
    if args.name is not None and any(c in args.name for c in ":@"):
        version = store.version(args.name)
        if version.kind == "tree":
            return _list_snapshot(command, args.name, args.path)
        if args.path is not None:
            raise InvalidInputError(
                f"{args.name} is a {version.kind} version, not a snapshot: it has no paths; "
                "use castore info"
            )
        row = _version_row(version, store.tags(version.name))
        command.emit([row], lambda: _version_line(row))
        return 0
    if args.name is None:
        rows = []
        for name in store.names():
            latest = store.version(name)
            tags = store.tags(name)
            rows.append({**_version_row(latest, tags), "name_tags": tags})
        command.emit(
            rows,
            lambda: (
                "\n".join(
                    f"{r['name']:<40} latest {r['version']:<5} {_human_size(r['size']):>10}  "
                    + " ".join(f"{t}={v}" for t, v in sorted(r["name_tags"].items()))
                    for r in rows
                )
                or "(no names)"
            ),
        )
        return 0
    name = args.name
    numbers = store.versions(name)
    if not numbers:
        store.version(name)  # raises NotFoundError saying what the store has instead
    tags = store.tags(name)
    if args.where:
        rows = [_version_row(v, tags) for v in store.find(name, args.where)]
    else:
        rows = [_version_row(store.version(f"{name}:{n}"), tags) for n in numbers]
    command.emit(
        rows, lambda: "\n".join(_version_line(row) for row in rows) or "(no version matches)"
    )
    return 0


def cmd_log(command: Command) -> int:
    """castore log NAME [--verify]."""
    store = command.store
    name = command.args.name
    check = store.check_history(name) if command.args.verify else None
    problems = check.problems if check else []
    absent = check.not_in_store if check else []
    entries = store.log(name)
    data = {
        "name": name,
        "verified": not problems if command.args.verify else None,
        "problems": problems,
        "not_in_store": absent,
        "versions": [
            {
                "version": e.version,
                "digest": e.digest,
                "deleted": e.deleted,
                **(
                    {"created": e.details.created, "metadata": e.details.metadata}
                    if e.details
                    else {}
                ),
            }
            for e in entries
        ],
    }

    def text() -> str:
        lines = []
        for e in entries:
            if e.details is None:
                lines.append(f"{name}:{e.version}  {e.digest}  (deleted {shown(e.deleted)})")
            else:
                meta = json.dumps(e.details.metadata) if e.details.metadata else ""
                created = shown(e.details.created[:19])
                lines.append(f"{name}:{e.version}  {e.digest}  {created}  {meta}")
        if command.args.verify:
            lines.append("history verified: hash chain intact" if not problems else "BROKEN:")
            lines.extend(f"  {shown(p)}" for p in problems)
            if absent:
                lines.append(f"not in this store (never copied here): {', '.join(absent)}")
        return "\n".join(lines)

    command.emit(data, text)
    return 1 if problems else 0


def _globals_json(report: castore.Inspection) -> dict[str, Any]:
    return {
        "globals": [
            {"name": g.name, "use": g.use, "reason": g.reason, "trusted": g.trusted}
            for g in report.globals
        ],
        "refused": list(report.refused),
        "admitted": report.admitted,
        "trusted_signers": list(report.trusted_signers),
        "loads": report.loads,
        "problem": report.problem,
        "trusted_argument": report.trusted_argument,
        "trusted_globals_file": str(castore.trusted_globals_path()),
        "advice": report.advice,
    }


def _globals_text(report: castore.Inspection) -> list[str]:
    names = [shown(g.name) for g in report.globals]
    width = max(map(len, names), default=0)
    lines = [f"{len(names)} globals, {len(report.refused)} refused"]
    lines += [
        f"  {g.use:<8} {name:<{width}}  {shown(g.reason)}"
        for g, name in zip(report.globals, names, strict=True)
    ]
    if report.problem is not None:
        lines.append(f"the scan stopped early (later globals are missing): {shown(report.problem)}")
    if report.trusted_argument is not None:
        lines += [
            "one edit admits every refused global: load with",
            f"  {shown(report.trusted_argument)}",
            f"or add these lines to {castore.trusted_globals_path()}:",
            *(f"  {shown(name)}" for name in report.refused),
        ]
    elif report.advice is not None:
        lines.append(shown(report.advice))
    elif report.admitted:
        lines.append("the policy admits every global (a load also checks calls and state)")
    if report.trusted_signers:
        lines.append(
            f"signed by a trusted key ({', '.join(report.trusted_signers)}): it loads without "
            "the policy"
        )
    return lines


def cmd_inspect(command: Command) -> int:
    """castore inspect REF: exit 1 unless the version would get past the load policy."""
    report = command.store.inspect(command.args.ref)
    version = report.version
    command.emit(
        {"reference": version.reference, "serializer": version.serializer} | _globals_json(report),
        lambda: "\n".join(
            [
                f"{version.name}:{version.version}  {version.reference}  ({version.serializer})",
                *_globals_text(report),
            ]
        ),
    )
    return 0 if report.loads else 1


def _signature_text(signature: dict[str, Any]) -> str:
    validity = "valid" if signature["valid"] else f"INVALID ({signature['problem']})"
    trusted = "yes" if signature["trusted"] else "no"
    created = f"  {signature['created']}" if signature["created"] else ""
    return shown(f"  {signature['key']}  {validity}  trusted: {trusted}{created}")


def cmd_info(command: Command) -> int:
    """castore info REF [--globals]."""
    info = command.store.info(command.args.ref)
    report = command.store.inspect(command.args.ref) if command.args.globals else None

    def field(value: Any) -> str:
        return shown(value if isinstance(value, str | int) else json.dumps(value, default=str))

    def text() -> str:
        lines = [f"{key}: {field(value)}" for key, value in info.items() if key != "signatures"]
        lines.append("signatures:" if info["signatures"] else "signatures: none")
        lines += [_signature_text(signature) for signature in info["signatures"]]
        if report is not None:
            lines += _globals_text(report)
        return "\n".join(lines)

    command.emit(info | (_globals_json(report) if report is not None else {}), text)
    return 0


def cmd_tag(command: Command) -> int:
    """castore tag REF TAG | --delete NAME TAG | --history NAME TAG."""
    store = command.store
    args = command.args
    if args.delete:
        store.untag(args.ref, args.tag)
        command.emit({"name": args.ref, "tag": args.tag, "removed": True}, f"removed {args.tag}")
    elif args.history:
        events = store.tag_history(args.ref, args.tag)
        command.emit(
            [
                {"sequence": e.sequence, "version": e.version, "digest": e.digest, "time": e.time}
                for e in events
            ],
            lambda: "\n".join(
                f"{shown(e.time)}  {'removed' if e.version is None else f'-> {e.version}'}"
                for e in events
            ),
        )
    else:
        version = store.tag(args.ref, args.tag)
        command.emit(
            {**_version_json(version), "tag": args.tag},
            f"{version.name}:{args.tag} -> {version.version} ({version.digest})",
        )
    return 0


def cmd_resolve(command: Command) -> int:
    """castore resolve REF [--qualified]."""
    store = command.store
    ref = command.args.ref
    pinned = store.qualified(ref) if command.args.qualified else store.resolve(ref)
    command.emit({"reference": ref, "resolved": pinned}, pinned)
    return 0


def _value(value: Any) -> str:
    """A metadata value as JSON (bytes as their repr): json.dumps escapes every control
    and non-ASCII character, so the text is safe on a terminal as it is (as in log)."""
    return json.dumps(value, default=repr)


def _diff_snapshots(command: Command) -> int:
    changes = list(command.store.snapshot_diff(command.args.a, command.args.b))
    marks = {"added": "+", "removed": "-", "changed": "M"}
    command.emit(
        [{"kind": c.kind, "path": c.path_str, "what": list(c.what)} for c in changes],
        lambda: (
            "\n".join(
                f"{marks[c.kind]} {shown(c.path_str)}"
                + (f"  ({', '.join(c.what)})" if c.what else "")
                for c in changes
            )
            or "no differences"
        ),
    )
    return 0


def cmd_diff(command: Command) -> int:
    """castore diff A B."""
    store = command.store
    if _is_snapshot(store, command.args.a) and _is_snapshot(store, command.args.b):
        return _diff_snapshots(command)
    result = store.diff(command.args.a, command.args.b)
    share = result.shared_bytes / result.b.stream_size if result.b.stream_size else 1.0
    data = {
        "a": result.a.reference,
        "b": result.b.reference,
        "same_content": result.same_content,
        "shared_bytes": result.shared_bytes,
        "size_a": result.a.size,
        "size_b": result.b.size,
        "metadata_added": result.metadata_added,
        "metadata_removed": result.metadata_removed,
        "metadata_changed": result.metadata_changed,
    }

    def text() -> str:
        lines = [
            f"{result.a.name}:{result.a.version} -> {result.b.name}:{result.b.version}",
            f"content: {'identical' if result.same_content else 'differs'}; "
            f"{_human_size(result.shared_bytes)} of {_human_size(result.b.stream_size)} shared "
            f"({share:.0%})",
        ]
        lines += [f"+ {shown(k)} = {_value(v)}" for k, v in result.metadata_added.items()]
        lines += [f"- {shown(k)} = {_value(v)}" for k, v in result.metadata_removed.items()]
        lines += [
            f"~ {shown(k)}: {_value(a)} -> {_value(b)}"
            for k, (a, b) in result.metadata_changed.items()
        ]
        return "\n".join(lines)

    command.emit(data, text)
    return 0


def cmd_dump(command: Command) -> int:
    """castore dump SNAPSHOT PATH [--archive tar]: a file's bytes, or a folder as a tar
    stream, to standard output; each chunk verified before its bytes are written."""
    args = command.args
    if args.json:
        raise InvalidInputError("dump writes the snapshot's bytes to stdout: drop --json")
    command.store.dump(
        args.ref, args.path, sys.stdout.buffer, archive=args.archive, devices=args.devices
    )
    sys.stdout.buffer.flush()
    return 0


def cmd_find(command: Command) -> int:
    """castore find PATTERN... [--name NAME]: the snapshots holding matching paths."""
    args = command.args
    rows = [
        {**_version_json(found.version), "matches": [_entry_json(e) for e in found.entries]}
        for found in command.store.find_paths(args.patterns, args.name or None)
    ]

    def text() -> str:
        lines = []
        for row in rows:
            lines.append(f"{shown(row['name'])}:{row['version']}  {shown(row['created'][:19])}")
            lines += [f"  {_entry_line(e)}" for e in row["matches"]]
        return "\n".join(lines) or "(no snapshot holds a matching path)"

    command.emit(rows, text)
    return 0


def cmd_backup(command: Command) -> int:
    """castore backup PATH --name NAME."""
    args = command.args
    with command.progress() as display:
        snapshot = command.store.backup(
            args.path,
            args.name,
            exclude=args.exclude,
            tags=args.tag,
            progress=display.callback,
            one_file_system=args.one_file_system,
            exclude_caches=args.exclude_caches,
            skip_if_unchanged=args.skip_if_unchanged,
            xattrs=not args.no_xattrs,
        )
    stats = snapshot.stats
    command.emit(
        {**_version_json(snapshot), "stats": vars(stats)},
        ("unchanged since the latest snapshot: none added\n" if stats.unchanged else "")
        + f"{snapshot.name}:{snapshot.version}  {snapshot.reference}\n"
        f"{stats.files} files ({_human_size(stats.bytes)}), {stats.files_read} read, "
        f"{stats.files_reused} unchanged, {stats.skipped} skipped; "
        f"{_human_size(stats.new_bytes_stored)} new"
        + "".join(
            f"\nchanged while read (recorded as read): {shown(path)}"
            for path in stats.changed_paths
        ),
    )
    # restic's code for a snapshot that was made but does not hold the source as it was.
    return INCOMPLETE if stats.changed else 0


def _plan_text(plan: castore.RestorePlan, target: str, verb: str) -> str:
    owners = "owners restored" if plan.ownership.owners else "owners not restored"
    stripped = f", setuid/setgid stripped from {plan.setid_stripped}" if plan.setid_stripped else ""
    return f"{verb} {plan.files} files, {_human_size(plan.bytes)} to {target} ({owners}{stripped})"


def _restore_json(stats: castore.RestoreStats) -> dict[str, Any]:
    plan = stats.plan
    # Every count and setting of the plan; not the manifest and paths it was made from.
    totals = [
        item.name
        for item in dataclasses.fields(plan)
        if item.name not in ("manifest", "selection", "ownership", "top")
    ]
    return {
        **{key: value for key, value in vars(stats).items() if key != "plan"},
        "plan": {
            "owners_restored": plan.ownership.owners,
            "setid_restored": plan.ownership.setid,
            "xattrs_restored": plan.ownership.xattrs.enabled,
            "devices_restored": plan.ownership.devices,
            **{key: getattr(plan, key) for key in totals},
        },
    }


def _restore_dry_run(command: Command) -> int:
    """castore restore --dry-run: the plan and every entry it would write, nothing written."""
    args, store = command.args, command.store
    stats = store.restore(
        args.ref,
        args.target,
        args.paths,
        owners=not args.no_owner,
        setid=args.keep_setid,
        overwrite=args.overwrite,
        delete=args.delete,
        dry_run=True,
        xattrs=not args.no_xattrs,
        devices=args.devices,
    )
    plan = stats.plan
    entries = [
        {**_entry_json(entry), "mode": oct(plan.mode(entry))}
        for entry in store.planned_entries(plan)
        if entry.type != "skipped"
    ]
    command.emit(
        {**_restore_json(stats), "entries": entries},
        lambda: "\n".join(
            [_plan_text(plan, args.target, "would restore")]
            + [f"{e['type']:<8} {e['mode']:>7} {e['size']:>12}  {e['path']}" for e in entries]
            + [f"would delete {shown(path)}" for path in stats.removed_paths]
        ),
    )
    return 0


def cmd_restore(command: Command) -> int:
    """castore restore REF TARGET [PATH...] [--no-owner] [--dry-run]."""
    args = command.args
    if args.dry_run:
        return _restore_dry_run(command)

    def announce(plan: castore.RestorePlan) -> None:
        if not args.json:
            print(_plan_text(plan, args.target, "restoring"), flush=True)

    with command.progress() as display:
        stats = command.store.restore(
            args.ref,
            args.target,
            args.paths,
            owners=not args.no_owner,
            setid=args.keep_setid,
            overwrite=args.overwrite,
            delete=args.delete,
            progress=display.callback,
            on_plan=announce,
            xattrs=not args.no_xattrs,
            devices=args.devices,
        )
    command.emit(
        _restore_json(stats),
        f"restored {stats.files_written} files ({_human_size(stats.bytes_written)}), "
        f"{stats.files_unchanged} already up to date, {stats.dirs} directories, "
        f"{stats.symlinks} symlinks into {args.target}" + _restore_notes(stats, args.delete),
    )
    return 0


def _restore_notes(stats: castore.RestoreStats, delete: bool) -> str:
    """The clauses of restore's summary that are there only when they say something."""
    plan = stats.plan
    notes = [
        (stats.existing_kept, f"{stats.existing_kept} left as they were"),
        (delete, f"{stats.removed} deleted"),
        (plan.setid_stripped, f"setuid/setgid stripped from {plan.setid_stripped}"),
        (stats.specials, f"{stats.specials} FIFOs and devices"),
        (plan.devices_refused, f"{plan.devices_refused} device nodes not created (--devices)"),
        (
            plan.xattrs_stripped,
            f"{plan.xattrs_stripped} security/trusted attributes left out (--keep-setid)",
        ),
        (stats.xattrs_unsupported, f"{stats.xattrs_unsupported} attributes refused by the target"),
    ]
    return "".join(f"; {text}" for present, text in notes if present)


def cmd_forget(command: Command) -> int:
    """castore forget NAME --keep-* N [--dry-run]."""
    args = command.args
    policy = {
        key: getattr(args, key)
        for key in (
            "keep_last",
            "keep_hourly",
            "keep_daily",
            "keep_weekly",
            "keep_monthly",
            "keep_yearly",
        )
    }
    result = command.store.forget(
        args.name,
        keep_within=args.keep_within,
        keep_tag=args.keep_tag,
        dry_run=args.dry_run,
        **policy,
    )
    verb = "would remove" if result.dry_run else "removed"
    command.emit(
        {
            "dry_run": result.dry_run,
            "kept": [
                {"version": k.version.version, "reasons": list(k.reasons)} for k in result.kept
            ],
            "removed": [v.version for v in result.removed],
        },
        lambda: "\n".join(
            [
                f"keep   {args.name}:{k.version.version}  {shown(k.version.created[:19])}  "
                f"({', '.join(k.reasons)})"
                for k in result.kept
            ]
            + [f"{verb} {args.name}:{v.version}  {shown(v.created[:19])}" for v in result.removed]
        ),
    )
    return 0


def _usage_json(usage: castore.CacheUsage) -> dict[str, Any]:
    return {**vars(usage), "bytes": usage.bytes}


def _usage_text(usage: castore.CacheUsage) -> str:
    return (
        f"cache {usage.root}: {_human_size(usage.bytes)} of {_human_size(usage.max_bytes)}\n"
        f"  chunks   {usage.chunk_files:>8} files  {_human_size(usage.chunk_bytes)}\n"
        f"  streams  {usage.stream_files:>8} files  {_human_size(usage.stream_bytes)}\n"
        f"  index    {usage.index_stores:>8} stores {_human_size(usage.index_bytes)}"
    )


def cmd_cache_ls(command: Command) -> int:
    """castore cache ls: where the local cache is and what it holds."""
    usage = castore.LocalCache().usage()
    command.emit(_usage_json(usage), _usage_text(usage))
    return 0


def cmd_cache_prune(command: Command) -> int:
    """castore cache prune [--max-size SIZE]: evict least recently used data."""
    cache = castore.LocalCache()
    limit = castore.parse_size(command.args.max_size) if command.args.max_size else None
    freed = cache.prune(limit)
    usage = cache.usage()
    command.emit(
        {"freed_bytes": freed, **_usage_json(usage)},
        f"freed {_human_size(freed)}\n{_usage_text(usage)}",
    )
    return 0


def cmd_key_generate(command: Command) -> int:
    """castore key generate [PATH]."""
    public = castore.generate_key(command.args.path)
    command.emit(
        {"key_id": public.key_id, "public_key": public.to_openssh()},
        f"wrote a new Ed25519 key pair (key id {public.key_id}); to trust it, run "
        f"'castore key trust' on its .pub file, which adds this line to "
        f"{castore.trusted_keys_path()}:\n{public.to_openssh()}",
    )
    return 0


def cmd_key_trust(command: Command) -> int:
    """castore key trust PUBKEY_FILE."""
    public = castore.load_public_key(command.args.pubkey_file)
    added = castore.trust_key(public)
    path = castore.trusted_keys_path()
    command.emit(
        {"key_id": public.key_id, "comment": public.comment, "added": added, "file": str(path)},
        f"{'now trusting' if added else 'already trusted'}: {shown(public)} (in {path})",
    )
    return 0


def cmd_key_ls(command: Command) -> int:
    """castore key ls: the trusted keys."""
    policy = castore.TrustPolicy.from_config()
    command.emit(
        {
            "file": policy.source,
            "keys": [
                {"key_id": k.key_id, "comment": k.comment, "public_key": k.to_openssh()}
                for k in policy.keys
            ],
        },
        lambda: "\n".join(
            [
                f"trusted keys in {policy.source}:"
                if policy.keys
                else f"no trusted keys in {policy.source}"
            ]
            + [f"  {k.key_id}  {shown(k.comment) or '(no comment)'}" for k in policy.keys]
        ),
    )
    return 0


def cmd_sign(command: Command) -> int:
    """castore sign REF [--key PATH]."""
    key = castore.load_private_key(command.args.key)
    signature = command.store.sign(command.args.ref, key)
    command.emit(
        {"reference": command.args.ref, "key_id": signature.key_id},
        f"signed {command.store.resolve(command.args.ref)} with key {signature.key_id}",
    )
    return 0


def cmd_rm(command: Command) -> int:
    """castore rm REF [--force]: a version that tags point at only with --force."""
    store = command.store
    target = store.version(command.args.ref)
    where = f"{target.name}:{target.version}"
    tags = sorted(t for t, n in store.tags(target.name).items() if n == target.version)
    if tags and not command.args.force:
        raise InvalidInputError(
            f"{where} carries the tags {', '.join(tags)}; deleting it drops them: "
            "move them first (castore tag), or pass --force"
        )
    version = store.delete(target.reference)  # the version checked, even if a tag moves
    dropped = f"; dropped its tags {', '.join(tags)}" if tags else ""
    command.emit(
        {**_version_json(version), "tags_dropped": tags},
        f"deleted {where}{dropped}; its data is freed by 'castore gc'",
    )
    return 0


def cmd_verify(command: Command) -> int:
    """castore verify [--read-data | --read-data-subset S]."""
    args = command.args
    subset = args.read_data_subset
    report = command.store.verify(read_data=args.read_data, subset=subset)
    command.emit(
        {
            "ok": report.ok,
            "versions_checked": report.versions_checked,
            "streams_checked": report.streams_checked,
            "packs_checked": report.packs_checked,
            "bytes_read": report.bytes_read,
            "problems": report.problems,
            "affected": report.affected,
        },
        lambda: "\n".join(
            [
                f"checked {report.versions_checked} versions, {report.streams_checked} put "
                f"streams, {report.packs_checked} packs ({_human_size(report.bytes_read)} read)"
            ]
            + (
                ["no problems found"]
                if report.ok
                else [f"PROBLEM: {shown(p)}" for p in report.problems]
            )
            + ([f"affected: {shown(', '.join(report.affected))}"] if report.affected else [])
        ),
    )
    return 0 if report.ok else 1


def cmd_gc(command: Command) -> int:
    """castore gc [--dry-run] [--repack-threshold F]."""
    args = command.args
    report = command.store.gc(dry_run=args.dry_run, repack_threshold=args.repack_threshold)
    verb = "would free" if report.dry_run else "freed"
    command.emit(
        vars(report),
        lambda: "\n".join(
            [
                f"{verb} {_human_size(report.bytes_freed)}: {report.packs_deleted} packs deleted, "
                f"{report.packs_repacked} repacked ({_human_size(report.bytes_rewritten)} "
                f"rewritten), {report.orphan_packs} orphan packs, "
                f"{report.manifests_deleted} manifests, "
                f"{report.signatures_deleted} signatures"
            ]
            + [f"PROBLEM: {shown(p)}" for p in report.problems]
        ),
    )
    return 1 if report.problems else 0


def _holder_json(holder: castore.LeaseHolder) -> dict[str, Any]:
    return {
        "path": holder.path,
        "host": holder.host,
        "pid": holder.pid,
        "age_seconds": round(holder.age, 1),
        "fresh": holder.fresh,
    }


def cmd_unlock(command: Command) -> int:
    """castore unlock [--remove-all]."""
    store = command.store
    removed = store.unlock(remove_all=command.args.remove_all)
    remaining = store.locks()
    command.emit(
        {
            "removed": [_holder_json(h) for h in removed],
            "remaining": [_holder_json(h) for h in remaining],
        },
        lambda: "\n".join(
            [f"removed {shown(h.describe())}" for h in removed]
            + [f"kept {shown(h.describe())}" for h in remaining]
            or ["no locks"]
        ),
    )
    return 0


def cmd_stats(command: Command) -> int:
    """castore stats."""
    stats = command.store.stats()
    data = {
        **vars(stats),
        "dedup_ratio": stats.dedup_ratio,
        "compression_ratio": stats.compression_ratio,
        "garbage_bytes": stats.garbage_bytes,
    }
    command.emit(
        data,
        lambda: "\n".join(
            [
                f"names {stats.names}, versions {stats.versions} "
                f"({stats.deleted_versions} deleted), put streams {stats.put_streams}",
                f"manifests {stats.manifests}, packs {stats.packs}, chunks {stats.chunks} "
                f"({stats.referenced_chunks} referenced)",
                f"logical {_human_size(stats.logical_bytes)}, unique "
                f"{_human_size(stats.unique_bytes)}, stored {_human_size(stats.stored_bytes)} "
                f"(garbage {_human_size(stats.garbage_bytes)})",
                f"dedup {stats.dedup_ratio:.2f}x, compression {stats.compression_ratio:.2f}x",
            ]
        ),
    )
    return 0


def cmd_repair(command: Command) -> int:
    """castore repair."""
    report = command.store.repair()
    command.emit(
        vars(report),
        lambda: "\n".join(
            [
                f"re-indexed {report.packs_reindexed} packs, removed "
                f"{report.index_objects_removed} damaged index objects",
                f"{report.lost_chunks} chunks are lost"
                + (f"; affected: {shown(', '.join(report.affected))}" if report.affected else ""),
            ]
            + [f"unreadable: {shown(p)}" for p in report.unreadable_packs]
        ),
    )
    return 1 if report.lost_chunks or report.unreadable_packs else 0


_COPY_TEXT = {
    "copied": "copied",
    "present": "already there",
    "restored": "restored",
    "skipped": "skipped",
}


def _copy_line(item: castore.VersionCopy) -> str:
    v = item.version
    line = f"{_COPY_TEXT[item.action]} {v.name}:{v.version}  {v.reference}"
    if item.action == "restored":
        return f"{line}  (it had been deleted there at {shown(item.deleted)})"
    if item.action == "skipped":
        when = shown(item.deleted)
        return f"{line}  (deleted there at {when}; copy {v.name}:{v.version} to restore it)"
    return line


def _tag_line(item: castore.TagCopy) -> str:
    tag = f"{item.name}:{item.tag}"
    if item.action == "kept":
        there = "unset" if item.dest_version is None else f"-> {item.dest_version}"
        return f"kept tag {tag} {there} (moved there on its own; the source has {item.version})"
    was = f" (was {item.dest_version})" if item.action == "moved" else ""
    return f"{item.action} tag {tag} -> {item.version}{was}"


def cmd_copy(command: Command) -> int:
    """castore copy REF DEST [--no-tags] [--dest-option K=V]."""
    args = command.args
    options = _parse_pairs(args.dest_option, "--dest-option")
    with castore.open(args.dest, **options) as dest, command.progress() as display:
        report = command.store.copy(
            args.ref, dest, tags=not args.no_tags, progress=display.callback
        )
    command.emit(
        {
            "versions": [
                {**_version_json(item.version), "action": item.action, "deleted": item.deleted}
                for item in report.versions
            ],
            "tag_moves": [vars(item) for item in report.tags],
            "bytes_sent": report.bytes_sent,
        },
        lambda: "\n".join(
            [_copy_line(item) for item in report.versions]
            + [_tag_line(item) for item in report.tags]
        ),
    )
    return 0


# -- parser -------------------------------------------------------------------------------------


def _add_global_flags(parser: argparse.ArgumentParser, *, after: bool) -> None:
    """--store, --option and --json, before the command or (`after`) after it. After it
    they leave unset what they are not given, so as not to undo the flags given before;
    --option given there is kept apart (as options_after) and added to those before."""
    unset: dict[str, Any] = {"default": argparse.SUPPRESS} if after else {}
    parser.add_argument("--store", help="store URL or path (default: $CASTORE_STORE)", **unset)
    parser.add_argument(
        "--option",
        action="append",
        dest="options_after" if after else "option",
        metavar="KEY=VALUE",
        help="storage option passed to fsspec, e.g. endpoint_url=http://127.0.0.1:9000",
        **(unset or {"default": []}),
    )
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output", **unset)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="castore",
        description="Content-addressed, deduplicated, verified store for ML models and backups.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_flags(parser, after=False)
    parser.add_argument("--version", action="version", version=f"castore {castore.__version__}")
    after_command = argparse.ArgumentParser(add_help=False)
    _add_global_flags(after_command, after=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Callable[[Command], int], help_text: str, within: Any = sub
    ) -> argparse.ArgumentParser:
        command = within.add_parser(
            name, help=help_text, description=help_text, parents=[after_command]
        )
        command.set_defaults(handler=handler)
        return command

    def group(name: str, help_text: str) -> Any:
        """A command whose actions (`castore key ls`) are added to what it returns."""
        parser = sub.add_parser(name, help=help_text, description=help_text)
        return parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    init = add("init", cmd_init, "create a store")
    default = castore.ChunkerParams()
    init.add_argument(
        "--chunker-params",
        metavar="MIN,AVG,MAX",
        help="FastCDC chunk sizes in bytes, MIN <= AVG <= MAX (default "
        f"{default.min_size},{default.avg_size},{default.max_size})",
    )
    put = add("put", cmd_put, "store a file (- for stdin); with --name, as a new version")
    put.add_argument("file")
    put.add_argument("--name", help="save as the next version of NAME (raw bytes)")
    put.add_argument("--tag", action="append", default=[], help="tag the version (repeatable)")
    put.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata (values parsed as JSON when they can be)",
    )
    put.add_argument("--force", action="store_true", help="add a version even if unchanged")
    imp = add(
        "import",
        cmd_import,
        "make existing joblib/pickle files successive versions of --name, byte for byte "
        "(each loaded under the default policy first, unless --no-check)",
    )
    imp.add_argument("files", nargs="+", metavar="FILE", help="in the order to number them")
    imp.add_argument("--name", required=True, help="the versions' name")
    imp.add_argument("--serializer", default="joblib", choices=["joblib", "pickle", "cloudpickle"])
    imp.add_argument("--tag", action="append", default=[], help="tag each version")
    imp.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata")
    imp.add_argument(
        "--no-check", action="store_true", help="do not load each file under the policy first"
    )
    get = add("get", cmd_get, "write a content digest's or a version's bytes to a file")
    get.add_argument("ref")
    get.add_argument("-o", "--output", required=True, help="file to write")
    add("cat", cmd_cat, "write a content digest's or a version's bytes to stdout").add_argument(
        "ref"
    )
    ls = add("ls", cmd_ls, "list names, the versions of NAME, or the files of a snapshot")
    ls.add_argument("name", nargs="?", help="NAME, a version NAME:N, or a snapshot NAME:N")
    ls.add_argument("path", nargs="?", help="a directory inside the snapshot")
    ls.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COND",
        help="only versions whose metadata meets COND, such as 'auc>0.9' or "
        "'params.depth<=8 and stage==prod' (repeatable: all must hold)",
    )
    log = add("log", cmd_log, "history of a name, newest first")
    log.add_argument("name")
    log.add_argument(
        "--verify", action="store_true", help="check the hash chain (exit 1 if broken)"
    )
    info = add("info", cmd_info, "everything about a version, with its signatures")
    info.add_argument("ref")
    info.add_argument(
        "--globals", action="store_true", help="also every global a load needs (as inspect)"
    )
    add(
        "inspect",
        cmd_inspect,
        "every global a load of REF needs, whether the load policy admits each and how, and "
        "the one trusted=[...] edit that admits the refused ones; nothing is run "
        "(exit 1 if some are refused and no trusted key signed it)",
    ).add_argument("ref")
    tag = add("tag", cmd_tag, "point TAG at REF; or --delete / --history NAME TAG")
    tag.add_argument("ref", help="a reference (or a NAME with --delete/--history)")
    tag.add_argument("tag")
    mode = tag.add_mutually_exclusive_group()
    mode.add_argument("--delete", action="store_true", help="remove the tag from NAME")
    mode.add_argument("--history", action="store_true", help="show every move of the tag")
    resolve = add("resolve", cmd_resolve, "pin a reference to name@sha256:<version digest>")
    resolve.add_argument("ref")
    resolve.add_argument("--qualified", action="store_true", help="prefix the store URL")
    diff = add("diff", cmd_diff, "metadata changes and shared bytes between two versions")
    diff.add_argument("a")
    diff.add_argument("b")
    rm = add("rm", cmd_rm, "delete a version (data is freed by gc)")
    rm.add_argument("ref")
    rm.add_argument("--force", action="store_true", help="delete it even if tags point at it")
    keys = group("key", "signing keys: generate a key pair, trust a public key, list trusted keys")
    generate_help = "write a new Ed25519 key pair: PATH (default: the user's key) and PATH.pub"
    generate = add("generate", cmd_key_generate, generate_help, keys)
    generate.add_argument("path", nargs="?", help="private key file (default: the user's key)")
    trust_help = (
        "trust the Ed25519 public key in PUBKEY_FILE (an OpenSSH .pub line): add it to the "
        "user's trusted keys, once"
    )
    add("trust", cmd_key_trust, trust_help, keys).add_argument("pubkey_file", metavar="PUBKEY_FILE")
    add("ls", cmd_key_ls, "list the trusted keys: key id and comment", keys)
    cache = group("cache", "the local cache of remote stores' chunks, streams and index objects")
    add(
        "ls",
        cmd_cache_ls,
        "where the cache is, its bound ($CASTORE_CACHE_SIZE), what it holds",
        cache,
    )
    prune_help = (
        "delete the least recently used chunks and streams down to --max-size (default: the "
        "cache's bound); --max-size 0 empties the cache"
    )
    prune = add("prune", cmd_cache_prune, prune_help, cache)
    prune.add_argument("--max-size", metavar="SIZE", help="e.g. 5GiB, 500M, 0")
    sign = add("sign", cmd_sign, "sign a version with your Ed25519 key")
    sign.add_argument("ref")
    sign.add_argument("--key", help="private key file (default: the user's key)")
    backup = add("backup", cmd_backup, "snapshot a directory as the next version of --name")
    backup.add_argument("path")
    backup.add_argument("--name", required=True, help="the snapshot's name")
    backup.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="gitignore-style pattern (repeatable)",
    )
    backup.add_argument("--tag", action="append", default=[], help="tag the snapshot")
    backup.add_argument(
        "-x",
        "--one-file-system",
        action="store_true",
        help="do not cross file system boundaries: mount points are recorded, not entered",
    )
    backup.add_argument(
        "--exclude-caches",
        action="store_true",
        help="do not back up the contents of directories tagged with a CACHEDIR.TAG file",
    )
    backup.add_argument(
        "--skip-if-unchanged",
        action="store_true",
        help="add no snapshot when nothing changed since the latest one",
    )
    backup.add_argument(
        "--no-xattrs",
        action="store_true",
        help="do not record extended attributes (user.*; as root also security.*, "
        "trusted.* and POSIX ACLs)",
    )
    restore = add(
        "restore",
        cmd_restore,
        "restore a snapshot, or some paths of it, under TARGET; as root with its owners "
        "(by number) and setuid/setgid bits, which are dropped otherwise or with --no-owner",
    )
    restore.add_argument("ref", help="NAME[:version]")
    restore.add_argument("target")
    restore.add_argument("paths", nargs="*", help="only these paths of the snapshot")
    restore.add_argument(
        "--no-owner",
        action="store_true",
        help="do not restore owners, even as root (then setuid and setgid bits are dropped)",
    )
    restore.add_argument(
        "--keep-setid",
        action="store_true",
        help="as root with owners, keep setuid and setgid bits (only for snapshots you trust:"
        " a store writer could plant a set-id program owned by root)",
    )
    restore.add_argument(
        "--overwrite",
        choices=castore.RESTORE_OVERWRITE,
        default="if-changed",
        help="what to do with what is in an entry's place: rewrite it unless identical "
        "(if-changed, the default), always, or never",
    )
    restore.add_argument(
        "--delete",
        action="store_true",
        help="remove what TARGET holds and the snapshot does not (inside PATHs only)",
    )
    restore.add_argument(
        "--no-xattrs", action="store_true", help="do not restore extended attributes"
    )
    restore.add_argument(
        "--devices",
        action="store_true",
        help="as root, create the device nodes the snapshot records (only for snapshots "
        "you trust: a planted block device gives raw disk access)",
    )
    restore.add_argument(
        "--dry-run", action="store_true", help="list what would be written; write nothing"
    )
    dump = add(
        "dump",
        cmd_dump,
        "write a file of a snapshot to stdout, or with --archive tar a folder of it (PATH / "
        "for the whole snapshot); nothing is restored",
    )
    dump.add_argument("ref", help="NAME[:version] of a snapshot")
    dump.add_argument("path", help="a file, or with --archive a folder, inside the snapshot")
    dump.add_argument("--archive", choices=["tar"], help="write PATH as a tar stream")
    dump.add_argument(
        "--devices",
        action="store_true",
        help="with --archive, include device nodes (tar as root makes them: only for "
        "snapshots you trust)",
    )
    find = add("find", cmd_find, "list the snapshots that hold paths matching PATTERN")
    find.add_argument(
        "patterns",
        nargs="+",
        metavar="PATTERN",
        help="a glob matched against each name (against the whole path if it has a /)",
    )
    find.add_argument(
        "--name", action="append", default=[], help="only the snapshots of NAME (repeatable)"
    )
    forget = add("forget", cmd_forget, "delete the snapshots a retention policy does not keep")
    forget.add_argument("name")
    for unit in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        forget.add_argument(
            f"--keep-{unit}",
            type=int,
            default=0,
            metavar="N",
            help=f"keep the {unit} N snapshots (-1: all)"
            if unit != "last"
            else "keep the N newest snapshots",
        )
    forget.add_argument(
        "--keep-within",
        metavar="DURATION",
        help="keep every snapshot made within DURATION (such as 1y6m7d2h) of the newest",
    )
    forget.add_argument(
        "--keep-tag",
        action="append",
        default=[],
        metavar="TAG",
        help="keep the snapshot TAG points at (repeatable)",
    )
    forget.add_argument("--dry-run", action="store_true", help="say what would go")
    verify = add(
        "verify", cmd_verify, "check refs, hash chains and chunk locations (exit 1 on problems)"
    )
    verify.add_argument(
        "--read-data", action="store_true", help="also re-read and re-hash every pack"
    )
    verify.add_argument(
        "--read-data-subset",
        metavar="S",
        help="re-read a share of the packs: 10%% at random, or n/t",
    )
    gc = add("gc", cmd_gc, "delete data no version reaches; repack mostly-garbage packs")
    gc.add_argument("--dry-run", action="store_true", help="say what would go, change nothing")
    gc.add_argument(
        "--repack-threshold",
        type=float,
        default=castore.DEFAULT_REPACK_THRESHOLD,
        help="repack packs with more than this share of garbage (default 0.2)",
    )
    add("stats", cmd_stats, "sizes, counts, dedup and compression ratios")
    add("repair", cmd_repair, "rebuild lost or damaged index objects from pack footers")
    unlock = add(
        "unlock",
        cmd_unlock,
        "remove stale locks and those of writers that died on this host",
    )
    unlock.add_argument(
        "--remove-all",
        action="store_true",
        help="remove every lock, whoever holds it (only when nothing writes anywhere)",
    )
    copy = add("copy", cmd_copy, "copy a version, or all versions of a name, to another store")
    copy.add_argument("ref", help="NAME (every version), or a version reference")
    copy.add_argument("dest", help="destination store URL")
    copy.add_argument(
        "--no-tags", action="store_true", help="leave tags behind (default: copy them)"
    )
    copy.add_argument(
        "--dest-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="storage option for the destination",
    )
    return parser


def _fail(as_json: bool, kind: str, message: str, code: int) -> int:
    """Report a failure on stderr (one JSON object with --json) and return its exit code."""
    if as_json:
        error = {"type": kind, "message": message, "exit_code": code}
        print(json.dumps({"message_type": "error", "error": error}), file=sys.stderr)
    else:
        print(f"castore: {'error: ' if code != 130 else ''}{shown(message)}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    args.option += getattr(args, "options_after", [])
    command = Command(args)
    try:
        return args.handler(command)
    except CastoreError as exc:
        code = next(code for kind, code in EXIT_CODES if isinstance(exc, kind))
        return _fail(args.json, type(exc).__name__, str(exc), code)
    except KeyboardInterrupt:
        return _fail(args.json, "Interrupted", "interrupted", 130)
    except BrokenPipeError:
        return 0
    finally:
        command.close()
