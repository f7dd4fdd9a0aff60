"""Issue 3's model-sequence benchmark: castore, joblib files, borg and restic side by side.

Four versions of one model (benchmarks/model_sequence.py) are saved one after the other
into a fresh repository of each peer, then loaded back; this is repeated `runs` times, and
the sizes of the repositories after each version are kept. joblib.dump(compress=3) is
slow (about 40 MB/s), so it runs once. A second, castore-only experiment varies the
average chunk size and the compression threshold over the same sequence.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np

import castore
from benchmarks.measure import MB, Case, Measurement, MiB, run_rounds, timed
from benchmarks.model_sequence import (
    ModelVersion,
    UniqueContent,
    forest_bytes,
    make_sequence,
    new_chunk_bytes,
    tensor_count,
    unique_content,
)
from benchmarks.peers import (
    PLAIN_FILE,
    CastorePeer,
    JoblibFilesPeer,
    Peer,
    PeerStatus,
    StagedVersion,
    find_archivers,
)
from castore.engine.writer import WriteStats

Log = Callable[[str], None]
CHUNK_SIZES_KIB = (16, 32, 64, 128)
MIN_SAVINGS = (1 / 32, 0.10)
COMPRESSED_DUMP_LEVEL = 3
SETTLE_SECONDS = 10.0
"""Idle time after which memory freed by this process has gone back to the hypervisor."""
TOUCH_BYTES = 1024 * MiB


@dataclass(frozen=True)
class SequenceSettings:
    """Sizes and repetitions of the sequence benchmark and of the experiment."""

    tensor_bytes: int
    experiment_tensor_bytes: int
    runs: int
    experiment_runs: int
    seed: int


@dataclass(frozen=True)
class VersionFacts:
    """One version as every peer sees it."""

    number: int
    change: str
    tensors: int
    stream_bytes: int
    sha256: str


@dataclass(frozen=True)
class Operation:
    """One operation of one peer, measured on each version in turn."""

    label: str
    per_version: list[Measurement]


@dataclass(frozen=True)
class Repository:
    """A peer's repository size (du -s) after each version."""

    label: str
    sizes: list[int]


@dataclass(frozen=True)
class ExperimentRow:
    """castore with one chunker and compression setting, over the whole sequence."""

    chunker: castore.ChunkerParams
    compression: castore.CompressionParams
    stored_bytes: int
    save: Measurement
    """The four saves of each round, timed together."""
    load: Measurement
    """The four loads of each round, timed together."""


@dataclass(frozen=True)
class Experiment:
    """The chunk-size and compression-threshold experiment."""

    tensor_bytes: int
    stream_bytes: int
    """The four streams together."""
    unique: UniqueContent
    runs: int
    rows: list[ExperimentRow]


@dataclass(frozen=True)
class SequenceResults:
    """Everything the sequence benchmark measured."""

    tensor_bytes: int
    forest_bytes: int
    seed: int
    versions: list[VersionFacts]
    unique: UniqueContent
    new_chunk_bytes: list[int]
    """Raw bytes of the chunks (castore's default chunker) that each stream adds."""
    castore_config: castore.StoreConfig
    castore_writes: list[WriteStats]
    castore_streams_identical: bool
    """Whether castore's stream of every version has the plain joblib file's SHA-256."""
    stored: dict[str, Repository]
    """Peer key ('castore', 'joblib', 'joblib_z3', 'borg', 'restic') -> its sizes."""
    throughput: dict[str, Operation]
    """'<peer key>.save' or '<peer key>.load' -> its measurements."""
    runs: int
    peers: list[PeerStatus]
    touch: TouchRates
    experiment: Experiment | None


@dataclass(frozen=True)
class TouchRates:
    """How fast this machine fills newly allocated memory, in MB/s."""

    after_idle: float
    """Memory allocated after `SETTLE_SECONDS` of idling since the last free."""
    just_freed: float
    """Memory allocated again at once after freeing the same amount."""


def _fill_rate(nbytes: int) -> float:
    """MB/s of allocating and writing `nbytes` of fresh memory (freed afterwards)."""
    start = time.perf_counter()
    block = np.ones(nbytes // 8)
    seconds = time.perf_counter() - start
    del block
    return nbytes / seconds / MB


def memory_touch_rates() -> TouchRates:
    """Fill rates of memory after an idle pause and of memory just freed.

    On a virtual machine that hands freed memory back to its host (virtio-balloon free
    page reporting does so within seconds), the first touch of such memory is far slower
    than re-using pages just freed; every load (new arrays) and save (new page cache)
    pays one or the other, which is most of the spread between rounds.
    """
    time.sleep(SETTLE_SECONDS)
    after_idle = _fill_rate(TOUCH_BYTES)
    return TouchRates(after_idle, _fill_rate(TOUCH_BYTES))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(8 * MiB):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def stage(versions: list[ModelVersion], directory: Path) -> list[StagedVersion]:
    """Write each version's plain joblib file to ``<directory>/vN/model.pkl`` (untimed)."""
    staged = []
    for version in versions:
        plain = directory / f"v{version.number}" / PLAIN_FILE
        plain.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(version.obj, plain)
        staged.append(StagedVersion(version.number, version.obj, plain))
    return staged


def _cases(
    peers: list[Peer], staged: list[StagedVersion], sizes: dict[tuple[str, int], int]
) -> list[Case]:
    """Every peer saves v1..v4 into an emptied repository, then loads each back.

    The peers take turns within each version, so that noise hits them alike; after each
    save, the repository's size goes into `sizes` (untimed). Each round starts by emptying
    every repository and then waiting `SETTLE_SECONDS` (untimed), so that the first saves
    do not run on the memory the deletions just freed (see `memory_touch_rates`).
    """

    def save(peer: Peer, version: StagedVersion) -> float:
        if version.number == 1 and peer is peers[0]:
            for each in peers:
                each.reset()
            time.sleep(SETTLE_SECONDS)
        seconds = timed(lambda: peer.save(version))
        sizes[peer.key, version.number] = peer.stored_bytes()
        return seconds

    def case(peer: Peer, version: StagedVersion, operation: str) -> Case:
        run = save if operation == "save" else lambda p, v: timed(lambda: p.load(v))
        label = f"{peer.save_label if operation == 'save' else peer.load_label} v{version.number}"
        key = f"{peer.key}.{operation}.{version.number}"
        return Case(key, label, version.size, lambda: run(peer, version))

    return [
        case(peer, version, operation)
        for operation in ("save", "load")
        for version in staged
        for peer in peers
    ]


def _operations(
    peers: Iterable[Peer], staged: list[StagedVersion], timings: dict[str, Measurement]
) -> dict[str, Operation]:
    """'<peer key>.<save|load>' -> the measurement of each version, in version order."""
    rows: dict[str, Operation] = {}
    for peer in peers:
        for operation, label in (("save", peer.save_label), ("load", peer.load_label)):
            key = f"{peer.key}.{operation}"
            rows[key] = Operation(label, [timings[f"{key}.{v.number}"] for v in staged])
    return rows


def combined(label: str, measurements: list[Measurement]) -> Measurement:
    """Several operations timed as one: bytes and each round's seconds are added up."""
    seconds = [sum(run) for run in zip(*(m.seconds for m in measurements), strict=True)]
    return Measurement(label, sum(m.nbytes for m in measurements), seconds)


def _facts(versions: list[ModelVersion], staged: list[StagedVersion]) -> list[VersionFacts]:
    return [
        VersionFacts(v.number, v.change, tensor_count(v), s.size, _sha256_file(s.plain))
        for v, s in zip(versions, staged, strict=True)
    ]


def _measure_peers(
    peers: list[Peer], staged: list[StagedVersion], runs: int, log: Log
) -> tuple[dict[str, Operation], dict[str, Repository]]:
    """Time every peer over the sequence: its operations, and its sizes after each version."""
    sizes: dict[tuple[str, int], int] = {}
    timings = run_rounds(_cases(peers, staged, sizes), runs, log)
    stored = {p.key: Repository(p.label, [sizes[p.key, v.number] for v in staged]) for p in peers}
    return _operations(peers, staged, timings), stored


def _run_peers(
    staged: list[StagedVersion], work_dir: Path, runs: int, log: Log
) -> tuple[CastorePeer, dict[str, Operation], dict[str, Repository], list[PeerStatus]]:
    """castore, plain joblib files, and borg and restic where installed; then compress=3."""
    archivers, statuses = find_archivers(work_dir)
    castore_peer = CastorePeer(work_dir / "castore")
    peers: list[Peer] = [JoblibFilesPeer(work_dir / "joblib", 0), castore_peer, *archivers]
    compressed = JoblibFilesPeer(work_dir / "joblib-z3", COMPRESSED_DUMP_LEVEL)
    try:
        log(f"model sequence: {', '.join(p.label for p in peers)}, {runs} rounds")
        throughput, stored = _measure_peers(peers, staged, runs, log)
        statuses += [PeerStatus(p.label, True, p.settings()) for p in archivers]
        log("model sequence: joblib.dump(compress=3), 1 round (about 40 MB/s)")
        slow_throughput, slow_stored = _measure_peers([compressed], staged, 1, log)
    finally:
        for peer in [*peers, compressed]:
            peer.close()
    return castore_peer, throughput | slow_throughput, stored | slow_stored, statuses


def _experiment_peers(work_dir: Path) -> list[CastorePeer]:
    """castore at each average chunk size (default threshold), and at each threshold."""
    peers = [
        CastorePeer(
            work_dir / f"chunks-{kib}k",
            chunker=castore.ChunkerParams(kib * 256, kib * 1024, kib * 4096),
            key=f"castore_{kib}k",
            label=f"castore {kib} KiB chunks",
        )
        for kib in CHUNK_SIZES_KIB
    ]
    peers += [
        CastorePeer(
            work_dir / f"saving-{saving:.3f}",
            compression=castore.CompressionParams(level=3, min_saving=saving),
            key=f"castore_saving_{saving:.3f}",
            label=f"castore min_saving {saving:.3g}",
        )
        for saving in MIN_SAVINGS
        if saving != castore.CompressionParams().min_saving
    ]
    return peers


def run_experiment(
    tensor_bytes: int,
    staged: list[StagedVersion],
    unique: UniqueContent,
    work_dir: Path,
    runs: int,
    log: Log,
) -> Experiment:
    """castore over the sequence with each chunk size and compression threshold."""
    peers = _experiment_peers(work_dir)
    log(f"chunking experiment: {len(peers)} castore settings, {runs} rounds")
    try:
        operations, stored = _measure_peers(list(peers), staged, runs, log)
    finally:
        for peer in peers:
            peer.close()
    rows = [
        ExperimentRow(
            chunker=peer.chunker,
            compression=peer.compression,
            stored_bytes=stored[peer.key].sizes[-1],
            save=combined(peer.save_label, operations[f"{peer.key}.save"].per_version),
            load=combined(peer.load_label, operations[f"{peer.key}.load"].per_version),
        )
        for peer in peers
    ]
    return Experiment(tensor_bytes, sum(s.size for s in staged), unique, runs, rows)


def _experiment(
    settings: SequenceSettings,
    main: tuple[list[StagedVersion], UniqueContent],
    work_dir: Path,
    log: Log,
) -> Experiment:
    """The experiment on the main sequence, or on a sequence of its own size."""
    size = settings.experiment_tensor_bytes
    if size == settings.tensor_bytes:
        staged, unique = main
    else:
        versions = make_sequence(size, settings.seed)
        staged = stage(versions, work_dir / "experiment-plain")
        unique = unique_content(versions, castore.CompressionParams().level)
    return run_experiment(
        size, staged, unique, work_dir / "experiment", settings.experiment_runs, log
    )


def run(settings: SequenceSettings, work_dir: Path, log: Log) -> SequenceResults:
    """Run the sequence benchmark and the experiment in `work_dir` (removed afterwards)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        log(f"model sequence: building 4 versions, tensors of {settings.tensor_bytes} bytes")
        versions = make_sequence(settings.tensor_bytes, settings.seed)
        staged = stage(versions, work_dir / "plain")
        unique = unique_content(versions, castore.CompressionParams().level)
        new_chunks = new_chunk_bytes([s.plain for s in staged], castore.ChunkerParams())
        facts = _facts(versions, staged)
        touch = memory_touch_rates()
        castore_peer, throughput, stored, statuses = _run_peers(
            staged, work_dir, settings.runs, log
        )
        digests = [castore_peer.content_digests[f.number] for f in facts]
        experiment = None
        if settings.experiment_runs > 0:
            experiment = _experiment(settings, (staged, unique), work_dir, log)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return SequenceResults(
        tensor_bytes=settings.tensor_bytes,
        forest_bytes=forest_bytes(versions[0]),
        seed=settings.seed,
        versions=facts,
        unique=unique,
        new_chunk_bytes=new_chunks,
        castore_config=castore.StoreConfig(),
        castore_writes=[castore_peer.writes[f.number] for f in facts],
        castore_streams_identical=digests == [f.sha256 for f in facts],
        stored=stored,
        throughput=throughput,
        runs=settings.runs,
        peers=statuses,
        touch=touch,
        experiment=experiment,
    )
