"""Render the measurements as benchmarks/RESULTS.md."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from benchmarks import backup_tree, fidelity, maintenance, sequence_report
from benchmarks.local_disk import LocalResults
from benchmarks.markdown import Target, mib, table, verdict
from benchmarks.measure import Measurement, Series
from benchmarks.memory_probe import FIGURES, LABELS, OPERATIONS, MemoryResults
from benchmarks.s3_moto import S3Results
from benchmarks.sequence import SequenceResults

PUT_VS_COMPRESSED_DUMP = 10.0
GET_VS_LOAD = 0.7
DEDUP_FRACTION = 0.01
RSS_LIMIT_MIB = 400.0


@dataclass(frozen=True)
class Run:
    """How the suite was run and what it measured."""

    command: str
    description: str
    machine: dict[str, str]
    local: LocalResults
    s3: S3Results | None
    memory: MemoryResults | None
    sequence: SequenceResults | None
    maintenance: list[maintenance.MaintenanceFigures] | None
    maintenance_bytes: int
    backup: backup_tree.BackupResults | None
    fidelity: fidelity.FidelityResults | None
    elapsed_seconds: float
    notes: tuple[str, ...]


def _ratio(numerator: Measurement, denominator: Measurement) -> float:
    """Ratio of median throughputs."""
    return numerator.rates.median / denominator.rates.median


def _throughput_rows(measurements: Iterable[Measurement]) -> list[list[str]]:
    return [
        [
            m.label,
            f"{m.rates.median:,.1f}",
            f"{m.rates.low:,.1f}",
            f"{m.rates.high:,.1f}",
            f"{statistics.median(m.seconds):.2f}",
            str(len(m.seconds)),
        ]
        for m in measurements
    ]


def _throughput_table(measurements: Iterable[Measurement]) -> list[str]:
    header = ["Operation", "median MB/s", "min MB/s", "max MB/s", "median s", "runs"]
    return table(header, _throughput_rows(measurements))


def _ratio_rows(pairs: Iterable[tuple[Measurement, Measurement]]) -> list[list[str]]:
    return [[f"{a.label} / {b.label}", f"{_ratio(a, b):.2f}x"] for a, b in pairs]


def targets(run: Run) -> list[Target]:
    """Every target of issues 2, 3 and 4 that this run measured, with its outcome."""
    t = run.local.throughput
    put_vs_z3 = _ratio(t["put"], t["dump_z3"])
    get_vs_load = _ratio(t["get"], t["load_plain"])
    load_vs_load = _ratio(t["load_stream"], t["load_plain"])
    fraction = run.local.second_put.new_bytes_stored / run.local.stream_bytes
    du_fraction = run.local.second_put_growth.allocated / run.local.stream_bytes
    found = [
        Target(
            f"castore put >= {PUT_VS_COMPRESSED_DUMP:g}x joblib.dump(compress=3)",
            f"{put_vs_z3:.1f}x",
            put_vs_z3 >= PUT_VS_COMPRESSED_DUMP,
        ),
        Target(
            f"castore get (bytes) >= {GET_VS_LOAD:g}x joblib.load(plain file)",
            f"{get_vs_load:.2f}x",
            get_vs_load >= GET_VS_LOAD,
        ),
        Target(
            f"joblib.load(store.open_stream) >= {GET_VS_LOAD:g}x joblib.load(plain file)",
            f"{load_vs_load:.2f}x",
            load_vs_load >= GET_VS_LOAD,
        ),
        Target(
            f"second put stores < {DEDUP_FRACTION:.0%} of the stream (WriteStats)",
            f"{fraction:.4%}",
            fraction < DEDUP_FRACTION,
        ),
        Target(
            f"second put grows the store < {DEDUP_FRACTION:.0%} of the stream (du)",
            f"{du_fraction:.4%}",
            du_fraction < DEDUP_FRACTION,
        ),
    ]
    if run.memory is not None:
        size = mib(run.memory.stream_bytes)
        found.extend(
            Target(
                f"peak RSS above baseline < {RSS_LIMIT_MIB:g} MiB: {LABELS[op]} of {size}",
                f"{run.memory.mib['above_hwm'][op].high:,.0f} MiB (worst run, VmHWM)",
                run.memory.mib["above_hwm"][op].high < RSS_LIMIT_MIB,
            )
            for op in OPERATIONS
        )
    if run.sequence is not None:
        found.extend(sequence_report.targets(run.sequence))
    if run.backup is not None:
        found.extend(backup_tree.targets(run.backup))
    return found


def _targets_section(run: Run) -> list[str]:
    rows = [[str(t.issue), t.goal, t.measured, verdict(t.passed)] for t in targets(run)]
    return ["## Targets", "", *table(["Issue", "Target", "Measured", "Result"], rows)]


def _local_section(local: LocalResults) -> list[str]:
    t = local.throughput
    pairs = [
        (t["put"], t["dump_z3"]),
        (t["put"], t["dump_plain"]),
        (t["put"], t["dump_fsync"]),
        (t["get"], t["load_plain"]),
        (t["load_stream"], t["load_plain"]),
        (t["put_again"], t["dump_plain"]),
    ]
    return [
        "## Local disk: throughput",
        "",
        f"Every operation moves the same {mib(local.stream_bytes)} stream "
        f"({local.stream_bytes:,} bytes); MB/s = 10^6 bytes per second.",
        "",
        *_throughput_table(t.values()),
        "Ratios of median throughputs:",
        "",
        *table(["Ratio", "value"], _ratio_rows(pairs)),
    ]


def _dedup_and_storage_section(local: LocalResults) -> list[str]:
    size = local.stream_bytes
    first, second = local.first_put, local.second_put
    usage, growth = local.store_usage, local.second_put_growth
    rows = [
        ["Stream size", f"{size:,} B ({mib(size)})"],
        ["First put: chunks / new chunks", f"{first.chunks:,} / {first.new_chunks:,}"],
        ["First put: payload bytes stored (WriteStats)", f"{first.new_bytes_stored:,} B"],
        ["Store after first put, du -s (allocated)", f"{usage.allocated:,} B"],
        ["Store after first put, du -s --apparent-size", f"{usage.apparent:,} B"],
        ["Compression ratio, stream / du allocated", f"{size / usage.allocated:.3f}"],
        ["Compression ratio, stream / du apparent", f"{size / usage.apparent:.3f}"],
        ["Second put: new chunks", f"{second.new_chunks:,} of {second.chunks:,}"],
        [
            "Second put: new payload bytes (WriteStats)",
            f"{second.new_bytes_stored:,} B ({second.new_bytes_stored / size:.4%} of stream)",
        ],
        [
            "Second put: du growth, allocated",
            f"{growth.allocated:,} B ({growth.allocated / size:.4%} of stream)",
        ],
        [
            "Second put: du growth, apparent",
            f"{growth.apparent:,} B ({growth.apparent / size:.4%} of stream)",
        ],
    ]
    return ["## Local disk: deduplication and storage", "", *table(["Figure", "value"], rows)]


def _series_row(label: str, series: Series, unit: str) -> list[str]:
    return [label, f"{series.median:,.0f} {unit}", f"{series.low:,.0f}", f"{series.high:,.0f}"]


def _memory_tables(memory: MemoryResults) -> list[str]:
    header = ["Operation", "median", "min", "max"]
    lines: list[str] = []
    for figure, description in FIGURES.items():
        rows = [_series_row(LABELS[op], memory.mib[figure][op], "MiB") for op in OPERATIONS]
        lines += [f"{description}:", "", *table(header, rows)]
    return lines


def _memory_section(memory: MemoryResults) -> list[str]:
    return [
        f"## Peak memory on a {mib(memory.stream_bytes)} stream",
        "",
        "Each operation runs in a fresh Python process: it imports castore, creates or opens "
        "the store, records its RSS (VmRSS) as the baseline, runs the operation, and reports "
        "its peak RSS minus the baseline. The stream is standard-normal float32, written to "
        "disk 16 MiB at a time. The peak is VmHWM, this process's own high-water mark: on "
        "Linux, exec carries the high-water mark of the forked copy of the parent into "
        "ru_maxrss, so a child's ru_maxrss begins at the *launching* process's peak RSS and "
        "ru_maxrss - baseline over-states the probe; it is shown too.",
        "",
        *_memory_tables(memory),
        "Throughput of the same runs:",
        "",
        *_throughput_table(memory.throughput[op] for op in OPERATIONS),
    ]


def _s3_section(s3: S3Results) -> list[str]:
    t = s3.throughput
    pairs = [
        (t["s3_put"], t["s3fs_pipe"]),
        (t["s3_get"], t["s3fs_cat"]),
        (t["s3_get_cached"], t["s3fs_cat"]),
    ]
    return [
        "## S3 (local moto server)",
        "",
        f"The same {mib(s3.stream_bytes)} stream; castore stores it in a fresh store per put "
        f"run, and s3fs moves it as one object (pipe_file uploads it in concurrent 50 MiB "
        f"multipart parts). The reference castore store holds {s3.stored_bytes:,} bytes "
        f"(stream / stored = {s3.stream_bytes / s3.stored_bytes:.3f}).",
        "",
        *_throughput_table(t.values()),
        *table(["Ratio", "value"], _ratio_rows(pairs)),
    ]


def render(run: Run) -> str:
    """The whole RESULTS.md."""
    lines = [
        "# castore benchmark results",
        "",
        "Generated by the command below; do not edit by hand.",
        "",
        "```",
        run.command,
        "```",
        "",
        run.description,
        "",
        "## Machine",
        "",
        *table(["", ""], ([key, value] for key, value in run.machine.items())),
        *_targets_section(run),
        *_local_section(run.local),
        *_dedup_and_storage_section(run.local),
    ]
    if run.sequence is not None:
        lines += sequence_report.render(run.sequence)
    if run.backup is not None:
        lines += backup_tree.render(run.backup)
    if run.fidelity is not None:
        lines += [*fidelity.render(run.fidelity), ""]
    if run.memory is not None:
        lines += _memory_section(run.memory)
    if run.s3 is not None:
        lines += _s3_section(run.s3)
    if run.maintenance is not None:
        lines += [maintenance.markdown(run.maintenance, run.maintenance_bytes)]
    lines += ["## Notes", "", *(f"- {note}" for note in run.notes)]
    lines += ["", f"The whole suite took {run.elapsed_seconds / 60:.1f} minutes.", ""]
    return "\n".join(lines)
