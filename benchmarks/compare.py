"""Compare castore's speed at two revisions, for a "no regression over 5%" check.

Usage (from the repository root)::

    .venv/bin/python benchmarks/compare.py BASE_REV NEW_REV [--rounds N] [--mib M]

Both revisions are checked out into temporary git worktrees (``git worktree add
--detach``, removed at the end). The workload is built once and shared: a ``joblib.dump``
of a dict of seeded standard-normal float32 tensors (benchmarks/workload.py, `--mib` MiB
in all), and a fixed subset of the running venv's site-packages (one file in
`--tree-every`, in sorted walk order; benchmarks/backup_tree.py's ``copy_every``).

Both checkouts are byte-compiled first, as an installed package is. Each round runs one
subprocess per revision, with ``PYTHONPATH=<that checkout>``, after an untimed warm-up
round (`--warmup`); the order alternates from round to round (base then new, then new
then base, ...), so that drift in the machine's load hits both revisions alike. A
subprocess times, on fresh local stores in a temporary directory and after an untimed
``os.sync()`` each: ``put`` of the dump file, ``get`` (bytes, checked against the
digest), a read of ``open_stream`` to the end, ``save`` of the tensor dict, ``load`` of it
(checked), ``backup`` of the tree and ``restore`` of that snapshot into an empty folder
(checked by the parent); it prints wall-clock and CPU seconds (user + system, all
threads) as JSON. The page cache cannot be dropped here, so every read is warm and the
figures are medians over rounds (use at least 5).

The report is Markdown on stdout: per operation the median wall-clock seconds (min-max)
at each revision, the ratio new/base of the medians, a flag where new is more than 5%
slower, and the ratio of the median CPU seconds, which other load on a shared machine
usually disturbs less (not for backup and restore, whose CPU time is mostly system time
that grows with contention); a wall-clock flag with a CPU ratio near 1 calls for a rerun
with more rounds before anyone believes it. Then the CPU seconds, the machine
(benchmarks/machine.py) and the exact command. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT_DIR = Path(__file__).resolve().parent
SEED = 20240601
"""Seed of the tensors (the suite's seed, benchmarks/suite.py)."""
THRESHOLD = 1.05
"""An operation is flagged when new's median exceeds base's by more than this factor."""
MIN_ROUNDS = 5
"""Fewer rounds than this are reported as not conclusive."""
TREE_EVERY = 8
"""Default: back up one file of site-packages in this many (a few thousand files)."""
READ_BLOCK = 1024 * 1024
"""Bytes per read() of open_stream."""
MODEL_NAME = "model"
TREE_NAME = "tree"
OPERATIONS: dict[str, str] = {
    "put": "put (Path of the dump file)",
    "get": "get (bytes, checked)",
    "open_stream": "open_stream read to the end",
    "save": "save (tensor dict, joblib)",
    "load": "load (checked)",
    "backup": "backup (site-packages subset)",
    "restore": "restore (empty folder)",
}
"""The timed operations, in the order a subprocess runs them, with their table labels."""


def log(message: str) -> None:
    """Progress on stderr, flushed at once."""
    print(message, file=sys.stderr, flush=True)


# -- the subprocess: runs against one checkout ------------------------------------------------


def child_main(argv: list[str]) -> int:
    """Time every operation once against the castore of ``--checkout``; print JSON."""
    parser = argparse.ArgumentParser(prog="compare.py --child")
    parser.add_argument("--checkout", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--stream", type=Path, required=True)
    parser.add_argument("--sha256", required=True)
    parser.add_argument("--tree", type=Path, required=True)
    args = parser.parse_args(argv)

    import castore  # from PYTHONPATH, i.e. the checkout: nothing else may shadow it

    origin = Path(castore.__file__).resolve()
    if not origin.is_relative_to(args.checkout.resolve()):
        raise RuntimeError(f"castore imported from {origin}, not from {args.checkout}")
    # castore is imported (its submodules load from its own __path__): now this
    # repository's benchmark helpers, not the checkout's, may come first.
    sys.path.insert(0, str(REPO_ROOT))
    import joblib
    import numpy as np

    from benchmarks.measure import timed

    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def step(key: str, operation: Callable[[], object]) -> None:
        os.sync()
        before = time.process_time()
        timings[key] = timed(operation)
        cpu[key] = time.process_time() - before

    size = args.stream.stat().st_size
    tensors: dict[str, np.ndarray] = joblib.load(args.stream)
    found: dict[str, Any] = {}

    with castore.init(args.work / "put-store") as store:
        step("put", lambda: found.update(digest=store.put(args.stream)))
        digest = found.pop("digest")
        if digest != f"sha256:{args.sha256}":
            raise RuntimeError(f"put returned {digest}, not sha256:{args.sha256}")
        step("get", lambda: found.update(data=store.get(digest)))
        data = found.pop("data")
        if len(data) != size or hashlib.sha256(data).hexdigest() != args.sha256:
            raise RuntimeError("get returned other bytes than were put")
        del data

        def read_stream() -> None:
            count = 0
            with store.open_stream(digest) as stream:
                while block := stream.read(READ_BLOCK):
                    count += len(block)
            found["count"] = count

        step("open_stream", read_stream)
        if found.pop("count") != size:
            raise RuntimeError("open_stream returned a different number of bytes")

    with castore.init(args.work / "save-store") as store:
        step("save", lambda: found.update(version=store.save(tensors, MODEL_NAME)))
        reference = found.pop("version").reference
        step("load", lambda: found.update(loaded=store.load(reference)))
        loaded = found.pop("loaded")
        if not isinstance(loaded, dict) or loaded.keys() != tensors.keys():
            raise RuntimeError("load returned something other than the saved tensors")
        if not all(np.array_equal(loaded[key], tensors[key]) for key in tensors):
            raise RuntimeError("load returned tensors that differ from the saved ones")
        del loaded

    with castore.init(args.work / "backup-store") as store:
        step("backup", lambda: found.update(snapshot=store.backup(args.tree, TREE_NAME)))
        ref = f"{TREE_NAME}:{found.pop('snapshot').version}"
        target = args.work / "restored"
        target.mkdir()
        step("restore", lambda: store.restore(ref, target))

    print(json.dumps({"castore": str(origin), "timings": timings, "cpu": cpu}))
    return 0


# -- the parent: checkouts, workload, rounds, report -----------------------------------------


@dataclass(frozen=True)
class Revision:
    """One side of the comparison: as typed, resolved, and checked out."""

    role: str
    """"base" or "new"."""
    spelled: str
    commit: str
    checkout: Path

    @property
    def short(self) -> str:
        """The abbreviated commit id."""
        return self.commit[:7]


@dataclass(frozen=True)
class Workload:
    """The shared inputs: the dump file (and its SHA-256) and the directory tree."""

    stream: Path
    sha256: str
    tree: Path
    stream_bytes: int
    tensors: int
    tree_files: int
    tree_bytes: int


def _per_operation() -> dict[str, list[float]]:
    return {key: [] for key in OPERATIONS}


@dataclass
class Timings:
    """Wall-clock and CPU seconds per operation, one value per round, for one revision."""

    seconds: dict[str, list[float]] = field(default_factory=_per_operation)
    cpu: dict[str, list[float]] = field(default_factory=_per_operation)


def git(*args: str) -> str:
    """Run git in this repository; its stdout, stripped."""
    result = subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def resolve(spelled: str) -> str:
    """The full commit id of a revision; exits with a message if there is none."""
    try:
        return git("rev-parse", "--verify", "--end-of-options", f"{spelled}^{{commit}}")
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"compare.py: {spelled!r} is not a commit of {REPO_ROOT}") from exc


def add_worktree(role: str, spelled: str, commit: str, root: Path) -> Revision:
    """``git worktree add --detach`` of `commit` under `root`."""
    checkout = root / f"checkout-{role}"
    git("worktree", "add", "--quiet", "--detach", str(checkout), commit)
    # Byte-compile castore up front, as an installed package is: otherwise every
    # subprocess (PYTHONDONTWRITEBYTECODE may be set) compiles the modules it imports
    # lazily inside a timed operation, and the two revisions have different modules.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(checkout / "castore")], check=True
    )
    return Revision(role, spelled, commit, checkout)


def remove_worktree(checkout: Path) -> None:
    """Remove a worktree this script added (forced: its __pycache__ is untracked).

    Only this worktree: no ``git worktree prune``, which would touch everyone's entries.
    """
    result = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(checkout)],
        check=False,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        log(f"could not remove the worktree {checkout}: {result.stderr.strip()}")


def build_workload(root: Path, mib_count: int, tree_every: int) -> Workload:
    """Dump the tensors and copy the site-packages subset, once for every run."""
    from benchmarks.backup_tree import copy_every, tree_size
    from benchmarks.measure import MiB
    from benchmarks.workload import dump, make_tensors

    folder = root / "workload"
    folder.mkdir()
    stream = folder / "stream.pkl"
    log(f"workload: joblib.dump of {mib_count} MiB of float32 tensors (seed {SEED})")
    tensors = make_tensors(mib_count * MiB, SEED)
    dump(tensors, stream)
    digest = hashlib.sha256()
    with open(stream, "rb") as file:
        while block := file.read(READ_BLOCK):
            digest.update(block)
    source = Path(sysconfig.get_paths()["purelib"])
    tree = folder / "tree"
    log(f"workload: one file in {tree_every} of {source}")
    copy_every(source, tree, tree_every)
    size = tree_size(tree)
    log(f"workload: {size.files:,} files, {size.bytes / MiB:,.1f} MiB")
    return Workload(
        stream=stream,
        sha256=digest.hexdigest(),
        tree=tree,
        stream_bytes=stream.stat().st_size,
        tensors=len(tensors),
        tree_files=size.files,
        tree_bytes=size.bytes,
    )


def run_once(revision: Revision, workload: Workload, root: Path) -> dict[str, dict[str, float]]:
    """One subprocess against `revision`'s checkout: its "timings" and "cpu" seconds.

    The subprocess checks put, get and load itself; the restored tree is checked here.
    """
    from benchmarks.backup_tree import tree_size

    work = root / f"run-{revision.role}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(revision.checkout),
        "CASTORE_CACHE_DIR": str(root / f"cache-{revision.role}"),
    }
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--checkout",
        str(revision.checkout),
        "--work",
        str(work),
        "--stream",
        str(workload.stream),
        "--sha256",
        workload.sha256,
        "--tree",
        str(workload.tree),
    ]
    try:
        result = subprocess.run(
            command, env=env, stdout=subprocess.PIPE, text=True, check=False, cwd=work
        )
        if result.returncode != 0:
            raise RuntimeError(f"{revision.role} ({revision.short}) failed: {result.returncode}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        restored = tree_size(work / "restored")
        if (restored.files, restored.bytes) != (workload.tree_files, workload.tree_bytes):
            raise RuntimeError(
                f"{revision.role} restored {restored.files} files / {restored.bytes} B, "
                f"not {workload.tree_files} / {workload.tree_bytes}"
            )
        return {"timings": report["timings"], "cpu": report["cpu"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_rounds(
    revisions: tuple[Revision, Revision],
    workload: Workload,
    rounds: int,
    warmups: int,
    root: Path,
) -> tuple[dict[str, Timings], list[str]]:
    """`warmups` untimed rounds, then `rounds` rounds of one subprocess per revision.

    Odd rounds run base then new, even rounds new then base.
    """
    for number in range(1, warmups + 1):
        for revision in revisions:
            run_once(revision, workload, root)
            log(f"  warm-up {number}/{warmups} {revision.role} {revision.short}: discarded")
    results = {revision.role: Timings() for revision in revisions}
    orders: list[str] = []
    for number in range(1, rounds + 1):
        order = revisions if number % 2 else revisions[::-1]
        orders.append(" ".join(revision.role for revision in order))
        for revision in order:
            measured = run_once(revision, workload, root)
            figures = results[revision.role]
            for key in OPERATIONS:
                figures.seconds[key].append(measured["timings"][key])
                figures.cpu[key].append(measured["cpu"][key])
            shown = ", ".join(
                f"{key} {measured['timings'][key]:.2f} (cpu {measured['cpu'][key]:.2f})"
                for key in OPERATIONS
            )
            log(f"  round {number}/{rounds} {revision.role} {revision.short}: {shown}")
    return results, orders


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def _ratio(after: list[float], before: list[float]) -> float:
    return statistics.median(after) / statistics.median(before)


def render(
    revisions: tuple[Revision, Revision],
    workload: Workload,
    results: dict[str, Timings],
    orders: list[str],
    machine: dict[str, str],
    command: str,
) -> tuple[list[str], list[str]]:
    """The Markdown report, and the operations flagged as over 5% slower (wall clock)."""
    from benchmarks.markdown import table
    from benchmarks.measure import MiB

    base, new = revisions
    before, after = results["base"], results["new"]
    rounds = len(orders)
    slower_than = f"> {THRESHOLD - 1:.0%} slower"
    header = [
        "Operation",
        f"base {base.short} median s (min-max)",
        f"new {new.short} median s (min-max)",
        "new/base",
        slower_than,
        "CPU new/base",
    ]
    rows: list[list[str]] = []
    cpu_rows: list[list[str]] = []
    flagged: list[str] = []
    for key, label in OPERATIONS.items():
        ratio = _ratio(after.seconds[key], before.seconds[key])
        cpu_ratio = _ratio(after.cpu[key], before.cpu[key])
        if ratio > THRESHOLD:
            flagged.append(key)
        mark = "**YES**" if ratio > THRESHOLD else ""
        rows.append(
            [
                label,
                _summary(before.seconds[key]),
                _summary(after.seconds[key]),
                f"{ratio:.3f}",
                mark,
                f"{cpu_ratio:.3f}",
            ]
        )
        cpu_rows.append(
            [label, _summary(before.cpu[key]), _summary(after.cpu[key]), f"{cpu_ratio:.3f}"]
        )
    caution = (
        [f"**Only {rounds} round(s): not conclusive (use at least {MIN_ROUNDS}).**", ""]
        if rounds < MIN_ROUNDS
        else []
    )
    verdict = (
        f"**Over {THRESHOLD - 1:.0%} slower (median wall clock): {', '.join(flagged)}.**"
        if flagged
        else f"No operation is more than {THRESHOLD - 1:.0%} slower (median wall clock)."
    )
    return [
        f"## castore {base.spelled} ({base.short}) vs {new.spelled} ({new.short})",
        "",
        *caution,
        f"Workload: `joblib.dump` of {workload.tensors} float32 standard-normal tensors, "
        f"{workload.stream_bytes / MiB:,.1f} MiB (seed {SEED}); backup tree: "
        f"{workload.tree_files:,} files, {workload.tree_bytes / MiB:,.1f} MiB of site-packages. "
        f"Wall-clock seconds, medians of {rounds} round(s), one subprocess per revision per "
        f"round, order alternating ({'; '.join(orders)}); fresh local stores; warm page "
        f"cache. CPU new/base is the ratio of the median CPU seconds (user + system, all "
        f"threads of the subprocess), which other load usually disturbs less (not for backup "
        f"and restore, mostly system time that grows with contention).",
        "",
        *table(header, rows),
        verdict,
        "",
        "CPU seconds (user + system, all threads), median (min-max):",
        "",
        *table(["Operation", f"base {base.short}", f"new {new.short}", "new/base"], cpu_rows),
        "Machine:",
        "",
        *table(["", ""], [[label, value] for label, value in machine.items()]),
        "Command:",
        "",
        "```",
        command,
        "```",
    ], flagged


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/compare.py",
        description="Compare castore's speed at two revisions (see the module docstring).",
    )
    parser.add_argument("base", metavar="BASE_REV", help="the revision before the change")
    parser.add_argument("new", metavar="NEW_REV", help="the revision after the change")
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help="rounds (default 5)")
    parser.add_argument("--mib", type=int, default=256, help="tensor MiB (default 256)")
    parser.add_argument(
        "--tree-every",
        type=int,
        default=TREE_EVERY,
        help=f"back up one file of site-packages in this many (default {TREE_EVERY})",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    args = parser.parse_args(argv)
    if min(args.rounds, args.mib, args.tree_every) < 1 or args.warmup < 0:
        parser.error("--rounds, --mib and --tree-every must be positive, --warmup not negative")
    return args


def main(argv: list[str]) -> int:
    """Check both revisions out, build the workload, run the rounds, print the report."""
    args = parse_args(argv)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.machine import describe

    command = shlex.join([sys.executable, "benchmarks/compare.py", *argv])
    commits = resolve(args.base), resolve(args.new)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="castore-compare-"))
    checkouts: list[Path] = []
    try:
        base = add_worktree("base", args.base, commits[0], root)
        checkouts.append(base.checkout)
        new = add_worktree("new", args.new, commits[1], root)
        checkouts.append(new.checkout)
        machine = describe(REPO_ROOT, root)
        workload = build_workload(root, args.mib, args.tree_every)
        log(f"{args.rounds} rounds: base {base.short}, new {new.short}")
        results, orders = run_rounds((base, new), workload, args.rounds, args.warmup, root)
    finally:
        for checkout in checkouts:
            remove_worktree(checkout)
        shutil.rmtree(root, ignore_errors=True)
    machine.pop("castore commit", None)
    machine["Base revision"] = f"{args.base} = {base.commit}"
    machine["New revision"] = f"{args.new} = {new.commit}"
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    machine["Load average at end (1, 5, 15 min)"] = load
    machine["Elapsed"] = f"{time.perf_counter() - started:.0f} s"
    lines, _ = render((base, new), workload, results, orders, machine, command)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    # This folder holds modules named like common ones (machine, markdown, report...):
    # keep it off the path; the repository root (parent) or the checkout (child) serves.
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != SCRIPT_DIR]
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
