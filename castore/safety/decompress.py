"""Reading joblib files that joblib compressed (``joblib.dump(..., compress=3)``).

castore writes joblib streams uncompressed and compresses each chunk, but files made
elsewhere and imported keep joblib's whole-file compression. Such a file is decompressed
first, a buffer at a time, into a temporary file (in memory while small), up to a bound
on how much it may expand; the restricted unpickler then reads that copy as it reads an
uncompressed stream, of an exactly known size, so that every length the stream declares
is checked against bytes that are really there.
"""

from __future__ import annotations

import bz2
import io
import lzma
import tempfile
import zlib
from collections.abc import Callable
from typing import IO, Any

from castore.errors import DeserializationError

READ_BYTES = 256 * 1024
"""Compressed bytes read at a time."""
IN_MEMORY = 64 * 1024 * 1024
"""Decompressed bytes held in memory; past that, the copy goes to a temporary file."""
MAX_RATIO = 1100
"""How many times its stored size a file may decompress to (zlib cannot exceed 1032),
past a floor of MIN_EXPANSION: a few bytes of bz2 can otherwise stand for terabytes."""
MIN_EXPANSION = 64 * 1024 * 1024
LZMA_MEMORY = 80 * 1024 * 1024
"""Most memory an xz or lzma stream may make the decoder take: its header names a
dictionary size (up to 4 GiB), and xz's strongest preset, which joblib writes for
``compress=("xz", 9)``, needs 65 MiB."""


class _Inflate:
    """zlib's decompressor (zlib and gzip wrapping) with the interface of bz2's and lzma's."""

    def __init__(self, wbits: int) -> None:
        self._inflate = zlib.decompressobj(wbits)

    @property
    def eof(self) -> bool:
        return self._inflate.eof

    @property
    def needs_input(self) -> bool:
        return not self._inflate.unconsumed_tail

    @property
    def unused_data(self) -> bytes:
        return self._inflate.unused_data

    def decompress(self, data: bytes, max_length: int) -> bytes:
        return self._inflate.decompress(self._inflate.unconsumed_tail or data, max_length)


class _Decompressing(io.RawIOBase):
    """A compressed stream, decompressed at most a buffer at a time: what comes out is
    only ever what a read asked for, whatever the compressed bytes say."""

    def __init__(self, file: IO[bytes], decompressor: Any, kind: str) -> None:
        self._file = file
        self._decompressor = decompressor
        self._kind = kind

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        decompressor = self._decompressor
        while view.nbytes and not decompressor.eof:
            data = self._file.read(READ_BYTES) if decompressor.needs_input else b""
            try:
                out = decompressor.decompress(data, view.nbytes)
            except (OSError, EOFError, ValueError, MemoryError, lzma.LZMAError, zlib.error) as exc:
                raise DeserializationError(
                    f"the {self._kind} stream is damaged, or needs more memory than castore "
                    f"gives a decompressor: {exc}"
                ) from None
            if out:
                view[: len(out)] = out
                return len(out)
            if decompressor.needs_input and not data:
                raise DeserializationError(f"the {self._kind} stream is truncated")
        if decompressor.eof and (decompressor.unused_data or self._file.read(1)):
            raise DeserializationError(f"the file holds bytes after its {self._kind} stream")
        return 0


_DECOMPRESSORS: tuple[tuple[bytes, str, Callable[[], Any]], ...] = (
    (b"\x78", "zlib", lambda: _Inflate(zlib.MAX_WBITS)),
    (b"\x1f\x8b", "gzip", lambda: _Inflate(16 + zlib.MAX_WBITS)),
    (b"BZ", "bz2", bz2.BZ2Decompressor),
    (b"\xfd7zXZ", "xz", lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ, LZMA_MEMORY)),
    (b"\x5d\x00", "lzma", lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE, LZMA_MEMORY)),
)
"""joblib's compressed file formats, by the bytes they start with (joblib.compressor)."""
_UNSUPPORTED = ((b"ZF", "joblib < 0.9.3's zfile"), (b"\x04\x22\x4d\x18", "lz4"))


def decompressed(file: IO[bytes], first: bytes, stored: int | None) -> tuple[IO[bytes], int] | None:
    """The joblib stream inside a compressed joblib file that starts with `first` (of
    `stored` bytes, if known), decompressed whole and checked to its end, as a seekable
    file and its size; None if `first` is not the start of a compressed file joblib
    writes. Compressions joblib once wrote that castore does not read are refused by name,
    as is a file that expands more than MAX_RATIO times."""
    for prefix, kind in _UNSUPPORTED:
        if first.startswith(prefix):
            raise DeserializationError(
                f"the stream is a {kind} compressed joblib file, which the safe loader does "
                "not read: load it with joblib and save it again"
            )
    for prefix, kind, decompressor in _DECOMPRESSORS:
        if first.startswith(prefix):
            limit = max(MIN_EXPANSION, MAX_RATIO * (stored or 0))
            return _spooled(_Decompressing(file, decompressor(), kind), kind, limit)
    return None


def _spooled(source: _Decompressing, kind: str, limit: int) -> tuple[IO[bytes], int]:
    copy = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY)  # noqa: SIM115 (returned open)
    try:
        buffer = bytearray(READ_BYTES * 4)
        size = 0
        while count := source.readinto(buffer):
            size += count
            if size > limit:
                raise DeserializationError(
                    f"the {kind} stream decompresses to more than {limit} bytes, over "
                    f"{MAX_RATIO} times its size: the safe loader refuses it"
                )
            copy.write(memoryview(buffer)[:count])
        copy.seek(0)
    except BaseException:
        copy.close()
        raise
    return copy, size
