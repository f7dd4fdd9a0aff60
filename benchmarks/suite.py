"""The benchmark suite's command line: run every part, then write RESULTS.md."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import (
    backup_tree,
    fidelity,
    local_disk,
    maintenance,
    memory_probe,
    report,
    s3_moto,
    sequence,
)
from benchmarks.machine import describe
from benchmarks.measure import MiB
from benchmarks.workload import dump, make_tensors, write_normal_file

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "benchmarks"
WORK_DIR = BENCH_DIR / ".work"
CACHE_DIR = WORK_DIR / "cache"
"""castore's local cache (CASTORE_CACHE_DIR) during the run, so that ~/.cache is untouched."""
SEED = 20240601
EXPERIMENT_MAX_RUNS = 3
"""Rounds of the chunking experiment at most, to keep the whole suite under ~25 minutes."""


@dataclass(frozen=True)
class Settings:
    """Sizes and repetitions of one run of the suite."""

    size_mib: int
    large_mib: int
    s3_size_mib: int
    runs: int
    quick: bool
    skip_s3: bool
    skip_memory: bool
    skip_sequence: bool
    skip_maintenance: bool
    skip_backup: bool
    skip_fidelity: bool
    backup_runs: int
    maintenance_mib: int
    sequence: sequence.SequenceSettings
    output: Path


def parse_args(argv: list[str]) -> Settings:
    """Read the command line; --quick shrinks every size for a smoke test."""
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small smoke-test sizes")
    parser.add_argument("--size-mib", type=int, help="model-like stream size (default 512)")
    parser.add_argument("--large-mib", type=int, help="memory-probe stream size (default 2048)")
    parser.add_argument("--s3-size-mib", type=int, help="S3 stream size (default: --size-mib)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each operation")
    parser.add_argument("--skip-s3", action="store_true", help="leave out the moto S3 part")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the RSS probes")
    parser.add_argument(
        "--skip-sequence", action="store_true", help="leave out the model-sequence benchmark"
    )
    parser.add_argument(
        "--skip-maintenance", action="store_true", help="leave out the verify/gc benchmark"
    )
    parser.add_argument(
        "--skip-backup", action="store_true", help="leave out the site-packages backup benchmark"
    )
    parser.add_argument(
        "--skip-fidelity", action="store_true", help="leave out the restic fidelity comparison"
    )
    parser.add_argument(
        "--backup-runs",
        type=int,
        help="rounds of the backup benchmark (default: 3, or --runs if smaller)",
    )
    parser.add_argument(
        "--tensor-mib", type=int, help="model-sequence tensor size, 32 of them (default 16)"
    )
    parser.add_argument(
        "--experiment-tensor-mib",
        type=int,
        help="tensor size of the chunking experiment (default: --tensor-mib)",
    )
    parser.add_argument(
        "--sequence-runs",
        type=int,
        help=f"rounds of the model sequence (default: --runs); the chunking experiment "
        f"runs at most {EXPERIMENT_MAX_RUNS}",
    )
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md")
    args = parser.parse_args(argv)

    def chosen(value: int | None, full: int, quick: int) -> int:
        return value if value is not None else (quick if args.quick else full)

    size = chosen(args.size_mib, 512, 32)
    tensor_mib = chosen(args.tensor_mib, 16, 1)
    sequence_runs = chosen(args.sequence_runs, args.runs, 1)
    experiment_mib = chosen(args.experiment_tensor_mib, tensor_mib, tensor_mib)
    settings = Settings(
        size_mib=size,
        large_mib=chosen(args.large_mib, 2048, 128),
        s3_size_mib=chosen(args.s3_size_mib, size, size),
        runs=args.runs,
        quick=args.quick,
        skip_s3=args.skip_s3,
        skip_memory=args.skip_memory,
        skip_sequence=args.skip_sequence,
        skip_maintenance=args.skip_maintenance,
        skip_backup=args.skip_backup,
        skip_fidelity=args.skip_fidelity,
        backup_runs=chosen(args.backup_runs, min(args.runs, 3), 1),
        maintenance_mib=chosen(None, 256, 16),
        sequence=sequence.SequenceSettings(
            tensor_bytes=tensor_mib * MiB,
            experiment_tensor_bytes=experiment_mib * MiB,
            runs=sequence_runs,
            experiment_runs=min(sequence_runs, EXPERIMENT_MAX_RUNS),
            seed=SEED + 2,
        ),
        output=args.output,
    )
    sizes = (settings.size_mib, settings.large_mib, settings.s3_size_mib, settings.runs)
    if min(*sizes, tensor_mib, experiment_mib, sequence_runs, settings.backup_runs) < 1:
        parser.error("sizes, --runs and --sequence-runs must be positive")
    return settings


def log(message: str) -> None:
    """Progress on stderr, flushed at once."""
    print(message, file=sys.stderr, flush=True)


def _command(argv: list[str]) -> str:
    """The command line as typed from the repository root."""

    def shown(path: str) -> str:
        resolved = Path(path).absolute()
        return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else path

    return shlex.join([shown(sys.executable), "benchmarks/run.py", *argv])


def _write_stream(path: Path, size_mib: int) -> local_disk.Workload:
    """Dump model-like tensors of `size_mib` MiB with joblib: the stream castore stores."""
    tensors = make_tensors(size_mib * MiB, SEED)
    dump(tensors, path)
    return local_disk.Workload(path.parent, tensors, path)


def _description(settings: Settings) -> str:
    smoke = "**Smoke-test sizes (--quick): not representative.** " if settings.quick else ""
    return (
        f"{smoke}Stream: `joblib.dump` of a dict of {settings.size_mib} MiB of "
        f"standard-normal float32 tensors of at most 16 MiB each (numpy default_rng, "
        f"seed {SEED}), which mimics trained weights; it is written once and castore stores "
        f"that file's bytes. Each timed figure is the median of {settings.runs} runs (min and "
        f"max shown); the runs of different operations are interleaved round by round, so "
        f"that load on this shared machine hits all of them alike. "
        f"MB/s means 10^6 bytes per second; MiB means 2^20 bytes."
    )


def _notes(settings: Settings) -> tuple[str, ...]:
    notes = [
        "All files and stores are on the same disk (benchmarks/.work/, deleted at the end), "
        "and every timed run starts after an untimed os.sync(). Reads are from a warm page "
        "cache: the machine has far more RAM than the data, and the plain file and the store "
        "were both just written, so joblib.load(plain file) runs at memory-copy speed.",
        "castore put fsyncs every pack and index object; plain joblib.dump does not, so it "
        "measures writing into the page cache. 'joblib.dump (uncompressed) + fsync' is the "
        "durable equivalent.",
        "castore put reads its input from the plain dump file (a Path); joblib.dump "
        "serialises the in-memory tensors. Both produce or consume the same byte stream.",
        "joblib 1.6 reads arrays with file.read() whether it is given a path or a file "
        "object, so the two joblib.load figures are comparable.",
        "The S3 server (moto) runs in a separate process on 127.0.0.1 and keeps objects in "
        "its own memory; its speed, not the network, bounds the S3 figures. castore's local "
        "chunk cache (CASTORE_CACHE_DIR) lives in benchmarks/.work/cache during the run; it "
        "only serves remote stores.",
    ]
    if settings.s3_size_mib != settings.size_mib:
        notes.append(
            f"The S3 part uses a smaller stream ({settings.s3_size_mib} MiB) than the local "
            f"part, to keep moto's run time reasonable."
        )
    return tuple(notes)


def _run_s3(settings: Settings, source: Path) -> s3_moto.S3Results:
    if settings.s3_size_mib != settings.size_mib:
        source = _write_stream(WORK_DIR / "s3-stream.pkl", settings.s3_size_mib).source
    log(f"S3 on moto: {settings.s3_size_mib} MiB stream, {settings.runs} rounds")
    return s3_moto.run(source, WORK_DIR, CACHE_DIR, settings.runs, log)


def _run_memory(settings: Settings) -> memory_probe.MemoryResults:
    large = WORK_DIR / "large.bin"
    log(f"writing a {settings.large_mib} MiB file for the memory probes")
    write_normal_file(large, settings.large_mib * MiB, SEED + 1)
    try:
        return memory_probe.run(REPO_ROOT, WORK_DIR, large, settings.runs, log)
    finally:
        large.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    """Run the suite and write the results file."""
    settings = parse_args(argv)
    started = time.perf_counter()
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    WORK_DIR.mkdir(parents=True)
    os.environ["CASTORE_CACHE_DIR"] = str(CACHE_DIR)
    machine = describe(REPO_ROOT, WORK_DIR)
    try:
        log(f"writing the {settings.size_mib} MiB joblib stream")
        workload = _write_stream(WORK_DIR / "stream.pkl", settings.size_mib)
        log(f"local disk: {settings.runs} rounds")
        local = local_disk.run(workload, settings.runs, log)
        source = workload.source
        del workload  # frees the tensors before the S3 and memory parts
        s3 = None if settings.skip_s3 else _run_s3(settings, source)
        memory = None if settings.skip_memory else _run_memory(settings)
        models = None
        if not settings.skip_sequence:
            models = sequence.run(settings.sequence, WORK_DIR / "sequence", log)
        upkeep = None
        if not settings.skip_maintenance:
            log("maintenance: verify and gc, local and S3")
            upkeep = maintenance.run_maintenance(WORK_DIR, settings.maintenance_mib * MiB)
        backups = None
        if not settings.skip_backup:
            log(f"backup of site-packages: castore, restic, borg; {settings.backup_runs} rounds")
            backups = backup_tree.run(
                backup_tree.BackupSettings(settings.backup_runs, settings.quick),
                WORK_DIR / "backup",
                log,
            )
        faithful = None if settings.skip_fidelity else fidelity.run(WORK_DIR / "fidelity", log)
    finally:
        shutil.rmtree(WORK_DIR, ignore_errors=True)
    results = report.Run(
        command=_command(argv),
        description=_description(settings),
        machine=machine,
        local=local,
        s3=s3,
        memory=memory,
        sequence=models,
        maintenance=upkeep,
        backup=backups,
        fidelity=faithful,
        maintenance_bytes=settings.maintenance_mib * MiB,
        elapsed_seconds=time.perf_counter() - started,
        notes=_notes(settings),
    )
    settings.output.write_text(report.render(results))
    for target in report.targets(results):
        log(f"{report.verdict(target.passed).strip('*')}  {target.goal}: {target.measured}")
    log(f"wrote {settings.output}")
    return 0
