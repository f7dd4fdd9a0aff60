"""Per-chunk codecs: how a chunk's bytes are stored in a pack (docs/FORMAT.md, section 6)."""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from enum import IntEnum

import zstandard

from castore.errors import IntegrityError
from castore.format.config import CompressionParams, StoreConfig


class Codec(IntEnum):
    """Codec ids as written in pack entries (docs/FORMAT.md, section 6)."""

    RAW = 0
    ZSTD = 1
    GROUPED = 2


GROUP_WIDTHS = (2, 4)
"""Word widths a byte-grouped payload may split its chunk by (FORMAT.md 6.2)."""
GROUP_HEADER = struct.Struct("<BI")
"""One group's entry in a byte-grouped payload's header: its codec and stored length."""
GROUP_CODECS = (Codec.RAW, Codec.ZSTD)

PROBE_SIZE = 1024
"""A byte group longer than 4 probes gets a zstd pass only if its first PROBE_SIZE bytes
compress: groups of noise (low mantissa bytes) are stored raw at the cost of a probe."""
SAMPLE_SIZE = 4096
"""Bytes from the middle of a chunk that the encoder tries every codec on."""
PLAN_CHUNKS = 16
"""Chunks encoded with one sampled choice before the encoder samples again."""
DRIFT = 0.10
"""A chunk whose stored ratio moves this much (relative) from the plan's makes it resample."""
TEXT_SHARE = 0.95
"""A sample with at least this share of printable ASCII is text: byte groups never help it."""
_PRINTABLE = bytes([9, 10, 13, *range(32, 127)])

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # zstandard compressors are not thread-safe: one per thread and level.
    compressors = _local.__dict__.setdefault("compressors", {})
    if level not in compressors:
        compressors[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return compressors[level]


def _group_compressor() -> zstandard.ZstdCompressor:
    # A byte group has short repeats at best: zstd's fast strategy with short matches and
    # a small table finds them, and is faster than the chunk level (DECISIONS.md).
    if not hasattr(_local, "group_compressor"):
        params = zstandard.ZstdCompressionParameters(
            strategy=zstandard.STRATEGY_FAST,
            min_match=7,
            hash_log=8,
            window_log=17,
            write_content_size=True,
        )
        _local.group_compressor = zstandard.ZstdCompressor(compression_params=params)
    return _local.group_compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


def _saves_enough(stored: int, raw: int, min_saving: float) -> bool:
    return stored <= raw * (1.0 - min_saving)


def encode_zstd(data: memoryview, params: CompressionParams) -> tuple[Codec, bytes | memoryview]:
    """Compress a chunk, or keep it raw when zstd saves less than `params.min_saving`."""
    compressed = _compressor(params.level).compress(data)
    if _saves_enough(len(compressed), len(data), params.min_saving):
        return Codec.ZSTD, compressed
    return Codec.RAW, data


def encode_grouped(data: memoryview, width: int, min_saving: float) -> bytes:
    """The byte-grouped payload of a chunk (codec 2, FORMAT.md 6.2) with words of `width`.

    Group i holds byte i of every whole word; each group is zstd-compressed when that
    saves `min_saving`, else stored raw; the last len(data) % width bytes follow raw.
    """
    whole = len(data) - len(data) % width
    flat = bytes(data)  # slicing bytes by a step is C speed; slicing a memoryview is not
    header = bytearray([width])
    stored = []
    for i in range(width):
        group = flat[i:whole:width]
        compressed = _compress_group(group, min_saving)
        if compressed is not None:
            header += GROUP_HEADER.pack(Codec.ZSTD, len(compressed))
            stored.append(compressed)
        else:
            header += GROUP_HEADER.pack(Codec.RAW, len(group))
            stored.append(group)
    return b"".join([header, *stored, flat[whole:]])


def _compress_group(group: bytes, min_saving: float) -> bytes | None:
    """The group's zstd frame if it saves `min_saving`, else None (store it raw)."""
    compressor = _group_compressor()
    if len(group) > 4 * PROBE_SIZE:
        probe = compressor.compress(group[:PROBE_SIZE])
        if not _saves_enough(len(probe), PROBE_SIZE, min_saving):
            return None
    compressed = compressor.compress(group)
    return compressed if _saves_enough(len(compressed), len(group), min_saving) else None


def decode_chunk(codec: int, payload: memoryview, raw_len: int, where: str) -> bytes | memoryview:
    """The raw bytes of a stored chunk, bounded by `raw_len` before anything is allocated."""
    if codec == Codec.RAW:
        if len(payload) != raw_len:
            raise IntegrityError(f"{where}: stored length {len(payload)} != raw length {raw_len}")
        return payload
    if codec == Codec.ZSTD:
        return _decode_zstd(payload, raw_len, where)
    if codec == Codec.GROUPED:
        return _decode_grouped(payload, raw_len, where)
    raise IntegrityError(f"{where}: unknown codec id {codec}")


def _check_frame_size(payload: memoryview, raw_len: int, where: str) -> None:
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{where}: zstd cannot decode the chunk: {exc}") from exc
    if declared != raw_len:
        raise IntegrityError(f"{where}: zstd frame declares {declared} bytes, not {raw_len}")


def _decode_zstd(payload: memoryview, raw_len: int, where: str) -> bytes:
    _check_frame_size(payload, raw_len, where)
    try:
        data = _decompressor().decompress(payload, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{where}: zstd cannot decode the chunk: {exc}") from exc
    if len(data) != raw_len:
        raise IntegrityError(f"{where}: decoded {len(data)} bytes, expected {raw_len}")
    return data


def _decode_grouped(payload: memoryview, raw_len: int, where: str) -> memoryview:
    width = payload[0] if payload else 0
    if width not in GROUP_WIDTHS:
        raise IntegrityError(f"{where}: byte-group width {width} is neither 2 nor 4")
    start = 1 + width * GROUP_HEADER.size
    if len(payload) < start:
        raise IntegrityError(f"{where}: byte-group header is truncated ({len(payload)} bytes)")
    groups = [GROUP_HEADER.unpack_from(payload, 1 + i * GROUP_HEADER.size) for i in range(width)]
    words, tail = divmod(raw_len, width)
    if start + sum(length for _, length in groups) + tail != len(payload):
        raise IntegrityError(
            f"{where}: byte groups and a {tail}-byte tail do not fill the {len(payload)}-byte "
            "payload exactly"
        )
    stored = []
    offset = start
    for i, (group_codec, length) in enumerate(groups):
        stored.append(payload[offset : offset + length])
        offset += length
        if group_codec not in GROUP_CODECS:
            raise IntegrityError(f"{where}: byte group {i} has unknown codec {group_codec}")
        if group_codec == Codec.ZSTD:
            _check_frame_size(stored[i], words, f"{where}, byte group {i}")
        elif length != words:
            raise IntegrityError(f"{where}: raw byte group {i} holds {length} bytes, not {words}")
    # Every group now decodes to exactly `words` bytes or is refused: nothing below
    # allocates more than raw_len (and one group's `words` while it is decompressed).
    out = bytearray(raw_len)
    whole = words * width
    for i, ((group_codec, _), group) in enumerate(zip(groups, stored, strict=True)):
        if group_codec == Codec.ZSTD:
            out[i:whole:width] = _decode_zstd(group, words, f"{where}, byte group {i}")
        else:
            out[i:whole:width] = group
    out[whole:] = payload[offset:]
    return memoryview(out)


@dataclass
class _Plan:
    """A sampled choice: the word width to group by (0: plain zstd) and what it achieved."""

    width: int
    chunks_left: int = PLAN_CHUNKS
    ratio: float | None = None
    """Stored / raw of the first chunk encoded under the plan, which later ones must keep."""


def _looks_like_text(sample: bytes) -> bool:
    return len(sample.translate(None, _PRINTABLE)) <= len(sample) * (1.0 - TEXT_SHARE)


class ChunkEncoder:
    """Chooses each chunk's codec for a store and encodes it (FORMAT.md 6.1).

    In a store without byte groups (format version 1) every chunk is zstd or raw. With
    them, a 4 KiB sample from the middle of a chunk is encoded as plain zstd and grouped
    by 2 and 4 bytes; the smallest choice is kept for the next PLAN_CHUNKS chunks, unless
    a chunk under a grouped choice looks like text or a stored ratio drifts by DRIFT.
    One encoder serves one thread, and the chunks of one stream in order.
    """

    def __init__(self, config: StoreConfig) -> None:
        self._params = config.compression
        self._byte_groups = config.byte_groups
        self._plan: _Plan | None = None

    def encode(self, data: memoryview) -> tuple[Codec, bytes | memoryview]:
        """The codec and stored payload of one chunk."""
        if not self._byte_groups:
            return encode_zstd(data, self._params)
        sample = _sample(data)
        plan = self._plan
        if plan is None or plan.chunks_left == 0 or (plan.width and _looks_like_text(sample)):
            plan = self._plan = _Plan(self._choose(sample))
        codec, payload = self._encode_as(plan.width, data)
        ratio = len(payload) / len(data)
        plan.chunks_left -= 1
        if plan.ratio is None:
            plan.ratio = ratio
        elif abs(ratio - plan.ratio) > DRIFT * plan.ratio:
            self._plan = None
        return codec, payload

    def _choose(self, sample: bytes) -> int:
        view = memoryview(sample)
        sizes = {0: len(encode_zstd(view, self._params)[1])}
        if not _looks_like_text(sample):
            for width in GROUP_WIDTHS:
                sizes[width] = len(encode_grouped(view, width, self._params.min_saving))
        return min(sizes, key=lambda width: sizes[width])

    def _encode_as(self, width: int, data: memoryview) -> tuple[Codec, bytes | memoryview]:
        if not width:
            return encode_zstd(data, self._params)
        payload = encode_grouped(data, width, self._params.min_saving)
        if _saves_enough(len(payload), len(data), self._params.min_saving):
            return Codec.GROUPED, payload
        return Codec.RAW, data


def _sample(data: memoryview) -> bytes:
    """SAMPLE_SIZE bytes from the middle of a chunk, starting on a 4-byte word of it."""
    start = max(0, (len(data) - SAMPLE_SIZE) // 2) // 4 * 4
    return bytes(data[start : start + SAMPLE_SIZE])
