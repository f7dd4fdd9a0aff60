"""The model sequence of issue 3: four versions of one model, each a small edit of the last.

v1 is a dict: a metadata string first (``notes``), then 32 standard-normal float32
tensors, then a fitted scikit-learn RandomForestClassifier. v2 retrains 3 of the 32
tensors; v3 inserts a new tensor in the middle of the dict (joblib writes a dict in its
order, so everything after the new tensor moves); v4 lengthens the ``notes`` string at the
front, which moves every byte after it.

The module also measures the sequence's *unique content*, the baseline a deduplicating
store is judged against (see `unique_content`).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import zstandard

from castore.engine.chunking import Chunker
from castore.format.config import ChunkerParams

TENSOR_COUNT = 32
CHANGED_TENSORS = (3, 14, 27)
"""Indices of the tensors that v2 replaces."""
INSERT_AT = TENSOR_COUNT // 2
"""v3's new tensor goes before this tensor: the middle of the dict."""
NOTES = (
    "castore benchmark model. Weights: 32 float32 tensors from a standard normal "
    "distribution, which have the byte statistics of trained weights. Head: a random "
    "forest fitted on a synthetic classification problem. "
) * 8
NOTES_GROWTH = "v4: notes amended after review; thresholds re-validated on holdout. "
"""What v4 appends to the notes (68 bytes)."""
FOREST_TREES = 60
FOREST_SAMPLES = 6000
FLOAT32 = np.dtype(np.float32)


@dataclass(frozen=True)
class ModelVersion:
    """One version of the model: its number, what changed since the last one, the object."""

    number: int
    change: str
    obj: dict[str, Any]


def _tensor(rng: np.random.Generator, nbytes: int) -> np.ndarray:
    """A standard-normal float32 matrix of `nbytes` bytes (rows of 1024 values)."""
    columns = 1024
    return rng.standard_normal((nbytes // FLOAT32.itemsize // columns, columns), dtype=FLOAT32)


def _forest(seed: int) -> Any:
    """A RandomForestClassifier fitted on a fixed synthetic problem (a few MB pickled)."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    features, labels = make_classification(
        n_samples=FOREST_SAMPLES, n_features=20, n_informative=8, flip_y=0.05, random_state=seed
    )
    forest = RandomForestClassifier(n_estimators=FOREST_TREES, random_state=seed, n_jobs=1)
    return forest.fit(features, labels)


def _layer(index: int) -> str:
    return f"layer{index:03d}.weight"


def _with_inserted(obj: dict[str, Any], before: str, key: str, value: Any) -> dict[str, Any]:
    """A copy of `obj` with `key` inserted just before `before` (dict order is kept)."""
    result: dict[str, Any] = {}
    for existing, item in obj.items():
        if existing == before:
            result[key] = value
        result[existing] = item
    return result


def make_sequence(tensor_bytes: int, seed: int) -> list[ModelVersion]:
    """The four versions; they share their unchanged arrays and forest (no copies)."""
    rng = np.random.default_rng(seed)
    tensors = {_layer(i): _tensor(rng, tensor_bytes) for i in range(TENSOR_COUNT)}
    v1 = {"notes": NOTES, **tensors, "forest": _forest(seed)}
    v2 = {**v1, **{_layer(i): _tensor(rng, tensor_bytes) for i in CHANGED_TENSORS}}
    v3 = _with_inserted(v2, _layer(INSERT_AT), "inserted.weight", _tensor(rng, tensor_bytes))
    v4 = {**v3, "notes": NOTES + NOTES_GROWTH}
    changed = ", ".join(str(i) for i in CHANGED_TENSORS)
    return [
        ModelVersion(1, f"{TENSOR_COUNT} tensors, forest, notes at the front", v1),
        ModelVersion(2, f"tensors {changed} replaced by new values", v2),
        ModelVersion(3, f"a new tensor inserted before tensor {INSERT_AT}", v3),
        ModelVersion(4, f"notes lengthened by {len(NOTES_GROWTH.encode())} bytes", v4),
    ]


def tensor_count(version: ModelVersion) -> int:
    """How many tensors a version holds."""
    return sum(isinstance(value, np.ndarray) for value in version.obj.values())


def forest_bytes(version: ModelVersion) -> int:
    """Size of the forest alone as ``joblib.dump`` writes it."""
    return len(_piece_bytes(version.obj["forest"]))


def _piece_bytes(value: Any) -> bytes | memoryview:
    """The bytes of one dict value: an array's buffer, a string's UTF-8, else its joblib dump."""
    if isinstance(value, np.ndarray):
        return memoryview(np.ascontiguousarray(value)).cast("B")
    if isinstance(value, str):
        return value.encode()
    buffer = io.BytesIO()
    joblib.dump(value, buffer)
    return buffer.getvalue()


def _values(versions: list[ModelVersion]) -> Iterator[Any]:
    for version in versions:
        yield from version.obj.values()


@dataclass(frozen=True)
class UniqueContent:
    """The distinct logical pieces of the whole sequence, raw and zstd-compressed."""

    pieces: int
    raw_bytes: int
    compressed_bytes: int
    level: int
    tensor_saving: float
    """The fraction of the tensors' bytes that zstd saves."""


def unique_content(versions: list[ModelVersion], level: int) -> UniqueContent:
    """Sum the sizes of the distinct logical pieces across all versions.

    A piece is one value of a version's dict: a tensor (its raw array bytes), the forest
    (its own ``joblib.dump``) or the notes string (UTF-8). Pieces are distinct by SHA-256,
    so the sequence has 32 + 3 + 1 tensors, one forest and two notes strings. The dict keys
    and joblib's per-array framing (a few hundred bytes per array) are left out. The
    compressed figure is each distinct piece compressed whole with zstd at `level`:
    what an ideal store that compresses like castore would need.
    """
    compressor = zstandard.ZstdCompressor(level=level)
    sizes: dict[bytes, tuple[int, int, bool]] = {}
    for value in _values(versions):
        data = _piece_bytes(value)
        digest = hashlib.sha256(data).digest()
        if digest not in sizes:
            compressed = len(compressor.compress(data))
            sizes[digest] = (len(data), compressed, isinstance(value, np.ndarray))
    tensors = [(raw, packed) for raw, packed, is_tensor in sizes.values() if is_tensor]
    tensor_saving = 1 - sum(p for _, p in tensors) / sum(r for r, _ in tensors)
    raw = sum(size for size, _, _ in sizes.values())
    compressed = sum(size for _, size, _ in sizes.values())
    return UniqueContent(len(sizes), raw, compressed, level, tensor_saving)


def new_chunk_bytes(paths: list[Path], params: ChunkerParams) -> list[int]:
    """For each file in turn, the raw bytes of its chunks that no earlier file had.

    The chunks are those castore's chunker cuts with `params`; the sum of the list is the
    size of the distinct chunks of all the files.
    """
    seen: set[bytes] = set()
    added: list[int] = []

    def collect(chunks: list[memoryview]) -> None:
        for chunk in chunks:
            digest = hashlib.sha256(chunk).digest()
            if digest not in seen:
                seen.add(digest)
                added[-1] += len(chunk)

    for path in paths:
        added.append(0)
        chunker = Chunker(params, collect)
        with open(path, "rb") as file:
            while block := file.read(8 * 1024 * 1024):
                chunker.write(block)
        chunker.finish()
    return added
