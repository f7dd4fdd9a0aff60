"""Content-defined chunking of a byte stream with FastCDC (pyfastcdc), in bounded memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

from castore.config import ChunkerParams
from castore.errors import InvalidInputError

BLOCK_SIZE = 8 * 1024 * 1024
"""Bytes read per block; every group of chunks yielded shares one block's buffer."""


def _fill(source: BinaryIO, view: memoryview) -> int:
    """Read into `view` until it is full or the source ends; return the bytes read."""
    filled = 0
    readinto = getattr(source, "readinto", None)
    try:
        while filled < len(view):
            if readinto is not None:
                count = readinto(view[filled:])
            else:
                piece = source.read(len(view) - filled)
                count = len(piece)
                view[filled : filled + count] = piece
            if not count:
                break
            filled += count
    except OSError as exc:
        raise InvalidInputError(f"cannot read the input stream: {exc}") from exc
    return filled


class Chunker:
    """Cuts streams into chunks; a cut depends only on the bytes, never on block edges."""

    def __init__(self, params: ChunkerParams, block_size: int = BLOCK_SIZE) -> None:
        self._cdc = FastCDC(
            params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=params.normalization,
        )
        self._max_size = params.max_size
        self._block_size = max(block_size, 2 * params.max_size)

    def groups(
        self, source: BinaryIO | bytes | bytearray | memoryview
    ) -> Iterator[list[memoryview]]:
        """Yield the stream's chunks in order, grouped by the buffer they share.

        A buffer is never reused, so the memoryviews stay valid as long as anyone holds them.
        """
        if isinstance(source, bytes | bytearray | memoryview):
            yield from self._groups_of_buffer(memoryview(source).cast("B"))
            return
        carry = b""
        eof = False
        while not eof:
            buffer = bytearray(len(carry) + self._block_size)
            buffer[: len(carry)] = carry
            view = memoryview(buffer)
            read = _fill(source, view[len(carry) :])
            eof = read < self._block_size
            total = len(carry) + read
            chunks, consumed = self._final_chunks(view[:total], eof)
            carry = bytes(view[consumed:total])
            if chunks:
                yield chunks

    def _final_chunks(self, view: memoryview, eof: bool) -> tuple[list[memoryview], int]:
        """Chunks of `view` whose cut no later byte can change, and how far they reach.

        FastCDC looks at most max_size bytes ahead of a chunk's start, so a cut is final
        once that many bytes follow the start, or at the end of the stream.
        """
        chunks = []
        consumed = 0
        for chunk in self._cdc.cut_buf(view):
            if not eof and len(view) - chunk.offset < self._max_size:
                break
            chunks.append(chunk.data)
            consumed = chunk.offset + chunk.length
        return chunks, consumed

    def _groups_of_buffer(self, view: memoryview) -> Iterator[list[memoryview]]:
        group: list[memoryview] = []
        group_bytes = 0
        for chunk in self._cdc.cut_buf(view):
            group.append(chunk.data)
            group_bytes += chunk.length
            if group_bytes >= self._block_size:
                yield group
                group, group_bytes = [], 0
        if group:
            yield group
