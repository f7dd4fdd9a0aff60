"""The benchmark data: tensors shaped like trained weights, and large files written in blocks."""

from __future__ import annotations

import os
from pathlib import Path

import joblib
import numpy as np

from benchmarks.measure import MiB

TENSOR_BYTES = 16 * MiB
"""Size of each tensor of the model-like stream (smaller only for a smaller stream)."""
FLOAT32 = np.dtype(np.float32)


def make_tensors(total_bytes: int, seed: int) -> dict[str, np.ndarray]:
    """A dict of standard-normal float32 tensors, like trained weights, of `total_bytes` in all."""
    tensor_bytes = min(TENSOR_BYTES, total_bytes)
    rows = 1024
    columns = tensor_bytes // FLOAT32.itemsize // rows
    rng = np.random.default_rng(seed)
    return {
        f"layer{i:03d}.weight": rng.standard_normal((rows, columns), dtype=np.float32)
        for i in range(total_bytes // tensor_bytes)
    }


def dump(
    tensors: dict[str, np.ndarray], path: Path, compress: int = 0, durable: bool = False
) -> None:
    """``joblib.dump`` the tensors to `path`, zlib-compressed at level `compress` if nonzero.

    With `durable`, fsync the file afterwards, as castore does with everything it writes.
    """
    joblib.dump(tensors, path, compress=compress)
    if durable:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_normal_file(path: Path, nbytes: int, seed: int, block_bytes: int = TENSOR_BYTES) -> None:
    """Write `nbytes` of standard-normal float32 to `path` one block at a time (bounded memory)."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as file:
        remaining = nbytes
        while remaining > 0:
            count = min(block_bytes, remaining) // FLOAT32.itemsize
            rng.standard_normal(count, dtype=np.float32).tofile(file)
            remaining -= count * FLOAT32.itemsize
