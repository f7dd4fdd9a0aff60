"""Issue 16's comparison: one tree with every kind of entry, restored by restic and by
castore, each restored tree checked against the source path by path.

Run alone: ``.venv/bin/python benchmarks/fidelity.py`` prints the table; the suite
(benchmarks/run.py) puts it in RESULTS.md. As root the tree also holds a device node,
an ACL and owners; otherwise those rows say "not checked (not root)".
"""

from __future__ import annotations

import filecmp
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import castore
from benchmarks.markdown import table
from benchmarks.peers import _program_version, _run

MTIME = 1_600_000_000_123_456_789
MIB = 1024 * 1024
SPARSE_SIZE = 64 * MIB
# A POSIX access ACL in the kernel's form: owner rw, user 4242 r, group r, mask r, other -.
ACL = (2).to_bytes(4, "little") + b"".join(
    tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + ident.to_bytes(4, "little")
    for tag, perm, ident in (
        (1, 6, 2**32 - 1),
        (2, 4, 4242),
        (4, 4, 2**32 - 1),
        (0x10, 4, 2**32 - 1),
        (0x20, 0, 2**32 - 1),
    )
)
ACL_NAME = "system.posix_acl_access"


def build_tree(root: Path) -> None:
    """Files with modes and times, hard links, a symlink, a sparse file, attributes, a
    FIFO, an empty folder; as root also a device node, an ACL and other owners."""
    (root / "docs" / "empty").mkdir(parents=True)
    (root / "docs" / "notes.txt").write_bytes(b"notes\n" * 1000)
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "bin" / "tool", 0o750)
    os.link(root / "docs" / "notes.txt", root / "bin" / "notes-link")
    (root / "bin" / "link").symlink_to("../docs/notes.txt")
    with open(root / "disk.img", "wb") as image:
        image.truncate(SPARSE_SIZE)
        image.seek(SPARSE_SIZE // 2)
        image.write(os.urandom(MIB))
    os.setxattr(root / "docs" / "notes.txt", "user.origin", b"benchmark")
    os.mkfifo(root / "pipe", 0o640)
    os.chmod(root / "docs" / "empty", 0o700)
    if os.geteuid() == 0:
        os.mknod(root / "null", stat.S_IFCHR | 0o640, os.makedev(1, 3))
        os.setxattr(root / "bin" / "tool", ACL_NAME, ACL)
        os.chown(root / "bin" / "tool", 4242, 4343)
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, ns=(MTIME, MTIME), follow_symlinks=False)
    os.chmod(root, 0o751)
    os.utime(root, ns=(MTIME, MTIME))


Check = Callable[[Path, Path], bool | None]
"""A check of a restored tree against its source: True, False, or None (not checked)."""


DEVICE = Path("null")
"""The device node, which has a row of its own (castore makes it only with an opt-in)."""


def _all_paths(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p != root / DEVICE)


def _same_content(src: Path, out: Path) -> bool:
    files = [p for p in _all_paths(src) if (src / p).is_file() and not (src / p).is_symlink()]
    return _all_paths(src) == _all_paths(out) and all(
        filecmp.cmp(src / p, out / p, shallow=False) for p in files
    )


def _same_stat(field_of: Callable[[os.stat_result], object]) -> Check:
    def check(src: Path, out: Path) -> bool:
        return all((out / p).exists() or (out / p).is_symlink() for p in _all_paths(src)) and all(
            field_of(os.lstat(src / p)) == field_of(os.lstat(out / p)) for p in _all_paths(src)
        )

    return check


def _hard_links(src: Path, out: Path) -> bool:
    return (
        os.lstat(out / "bin" / "notes-link").st_ino == os.lstat(out / "docs" / "notes.txt").st_ino
    )


def _symlink(src: Path, out: Path) -> bool:
    return os.readlink(out / "bin" / "link") == os.readlink(src / "bin" / "link")


def _xattrs(src: Path, out: Path) -> bool:
    return os.getxattr(out / "docs" / "notes.txt", "user.origin") == b"benchmark"


def _acl(src: Path, out: Path) -> bool | None:
    if os.geteuid() != 0:
        return None
    return ACL_NAME in os.listxattr(out / "bin" / "tool") and os.getxattr(
        out / "bin" / "tool", ACL_NAME
    ) == os.getxattr(src / "bin" / "tool", ACL_NAME)


def _sparse(src: Path, out: Path) -> bool:
    return os.stat(out / "disk.img").st_blocks * 512 <= 2 * MIB


def _fifo(src: Path, out: Path) -> bool:
    return stat.S_ISFIFO(os.lstat(out / "pipe").st_mode)


def _device(src: Path, out: Path) -> bool | None:
    if os.geteuid() != 0:
        return None
    node = os.lstat(out / DEVICE) if os.path.lexists(out / DEVICE) else None
    return node is not None and stat.S_ISCHR(node.st_mode) and node.st_rdev == os.makedev(1, 3)


def _owners(src: Path, out: Path) -> bool | None:
    if os.geteuid() != 0:
        return None
    return _same_stat(lambda st: (st.st_uid, st.st_gid))(src, out)


def _top(src: Path, out: Path) -> bool:
    before, after = os.stat(src), os.stat(out)
    return (stat.S_IMODE(after.st_mode), after.st_mtime_ns) == (
        stat.S_IMODE(before.st_mode),
        before.st_mtime_ns,
    )


CHECKS: dict[str, Check] = {
    "contents (every path, file bytes)": _same_content,
    "modes": _same_stat(lambda st: stat.S_IMODE(st.st_mode)),
    "mtimes (ns)": _same_stat(lambda st: st.st_mtime_ns),
    "hard links share an inode": _hard_links,
    "symlink target": _symlink,
    "user.* attribute": _xattrs,
    "POSIX ACL": _acl,
    "sparse file: 1 MiB allocated of 64 MiB": _sparse,
    "FIFO": _fifo,
    "character device (1, 3)": _device,
    "owners by number": _owners,
    "the top folder's mode and mtime": _top,
}


@dataclass
class Restored:
    """One tool's restored tree: what each check found, and how long it took."""

    tool: str
    checks: dict[str, bool | None] = field(default_factory=dict)
    backup_seconds: float = 0.0
    restore_seconds: float = 0.0


@dataclass
class FidelityResults:
    """The comparison: each tool's restore, and who ran it."""

    restored: list[Restored]
    as_root: bool
    skipped: list[str]


def _checked(tool: str, src: Path, out: Path, backup: float, restore: float) -> Restored:
    return Restored(
        tool, {name: check(src, out) for name, check in CHECKS.items()}, backup, restore
    )


def _castore(work: Path, src: Path) -> list[Restored]:
    store = castore.init(str(work / "castore-store"))
    started = time.perf_counter()
    snap = store.backup(src, "fidelity")
    backup = time.perf_counter() - started
    results = []
    for label, opted in (("castore (defaults)", False), ("castore --keep-setid --devices", True)):
        out = work / label.replace(" ", "_")
        started = time.perf_counter()
        store.restore(snap.reference, out, setid=opted, devices=opted)
        results.append(_checked(label, src, out, backup, time.perf_counter() - started))
    return results


def _restic(work: Path, src: Path, version: str) -> Restored:
    env = {**os.environ, "RESTIC_REPOSITORY": str(work / "restic-repo"), "RESTIC_PASSWORD": "x"}
    _run(["restic", "init"], env)
    started = time.perf_counter()
    _run(["restic", "backup", "--host", "bench", "."], env, cwd=src)
    backup = time.perf_counter() - started
    out = work / "restic-out"
    started = time.perf_counter()
    # restic writes holes with `restore --sparse` from 0.15 on; older ones have no flag.
    sparse = ["--sparse"] if tuple(map(int, version.split(".")[:2])) >= (0, 15) else []
    _run(["restic", "restore", "latest", *sparse, "--target", str(out)], env)
    label = f"restic {version}" + (" (restore --sparse)" if sparse else "")
    return _checked(label, src, out, backup, time.perf_counter() - started)


def run(work: Path, log: Callable[[str], None]) -> FidelityResults:
    """Build the tree under `work`, back it up and restore it with each tool, check."""
    src = work / "tree"
    src.mkdir(parents=True)
    build_tree(src)
    log("fidelity: castore")
    restored = _castore(work, src)
    skipped = []
    version = _program_version("restic")
    if version is None:
        skipped.append("restic: not found on PATH (Debian package restic)")
    else:
        log("fidelity: restic")
        restored.insert(0, _restic(work, src, version))
    return FidelityResults(restored, os.geteuid() == 0, skipped)


OPT_INS = {"POSIX ACL": "--keep-setid", "character device (1, 3)": "--devices"}
"""What castore restores only when asked (SECURITY.md), by row."""


def _mark(found: bool | None, opt_in: str | None) -> str:
    if found is False and opt_in is not None:
        return f"no: only with {opt_in}"
    return {True: "yes", False: "**no**", None: "not checked (not root)"}[found]


def _opt_in(restored: Restored, row: str) -> str | None:
    return OPT_INS.get(row) if restored.tool == "castore (defaults)" else None


def render(results: FidelityResults) -> list[str]:
    """The RESULTS.md section."""
    lines = [
        "## Backup fidelity: restic and castore restore the same tree (issue 16)",
        "",
        "One tree holding every kind of entry (benchmarks/fidelity.py: files with modes "
        "and nanosecond mtimes, a hard link, a symlink, a 64 MiB sparse file with 1 MiB of "
        "data, a user.* attribute, a FIFO, an empty 0700 folder"
        + (", a character device, an ACL and other owners, as root" if results.as_root else "")
        + ") is backed up and restored by each tool with its defaults; each restored tree "
        "is compared with the source path by path. castore restores ACLs, security.* and "
        "trusted.* attributes and device nodes only with its opt-ins (SECURITY.md), hence "
        "two castore columns. Times are one run each, for scale only.",
        "",
    ]
    header = ["check", *(r.tool for r in results.restored)]
    rows = [
        [name, *(_mark(r.checks[name], _opt_in(r, name)) for r in results.restored)]
        for name in CHECKS
    ]
    rows.append(["backup, seconds", *(f"{r.backup_seconds:.2f}" for r in results.restored)])
    rows.append(["restore, seconds", *(f"{r.restore_seconds:.2f}" for r in results.restored)])
    lines += table(header, rows)
    lines += [f"- {note}" for note in results.skipped]
    return lines


def main() -> int:
    """Run the comparison in a temporary folder and print its table."""
    with tempfile.TemporaryDirectory(prefix="castore-fidelity-") as folder:
        results = run(Path(folder), lambda message: print(message, file=sys.stderr))
    print("\n".join(render(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
