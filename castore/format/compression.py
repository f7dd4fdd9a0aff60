"""Per-chunk codecs: how a chunk's bytes are stored in a pack."""

from __future__ import annotations

import threading
from enum import IntEnum

import zstandard

from castore.errors import IntegrityError
from castore.format.config import CompressionParams


class Codec(IntEnum):
    """Codec ids as written in pack entries (docs/FORMAT.md, section 6)."""

    RAW = 0
    ZSTD = 1


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # zstandard compressors are not thread-safe: one per thread and level.
    compressors = _local.__dict__.setdefault("compressors", {})
    if level not in compressors:
        compressors[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return compressors[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


def encode_chunk(data: memoryview, params: CompressionParams) -> tuple[Codec, bytes | memoryview]:
    """Compress a chunk, or keep it raw when zstd saves less than `params.min_saving`."""
    compressed = _compressor(params.level).compress(data)
    if len(compressed) <= len(data) * (1.0 - params.min_saving):
        return Codec.ZSTD, compressed
    return Codec.RAW, data


def decode_chunk(codec: int, payload: memoryview, raw_len: int, where: str) -> bytes | memoryview:
    """The raw bytes of a stored chunk, bounded by `raw_len` before anything is allocated."""
    if codec == Codec.RAW:
        if len(payload) != raw_len:
            raise IntegrityError(f"{where}: stored length {len(payload)} != raw length {raw_len}")
        return payload
    if codec == Codec.ZSTD:
        try:
            declared = zstandard.frame_content_size(payload)
            if declared != raw_len:
                raise IntegrityError(
                    f"{where}: zstd frame declares {declared} bytes, not {raw_len}"
                )
            data = _decompressor().decompress(payload, max_output_size=raw_len)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{where}: zstd cannot decode the chunk: {exc}") from exc
        if len(data) != raw_len:
            raise IntegrityError(f"{where}: decoded {len(data)} bytes, expected {raw_len}")
        return data
    raise IntegrityError(f"{where}: unknown codec id {codec}")
