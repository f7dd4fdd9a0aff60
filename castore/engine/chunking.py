"""Content-defined chunking of a byte stream with FastCDC (pyfastcdc), in bounded memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

from pyfastcdc import FastCDC

from castore.format.config import ChunkerParams

BLOCK_SIZE = 8 * 1024 * 1024
"""Bytes buffered before cutting; every group of chunks emitted shares one block's buffer."""


def fastcdc(params: ChunkerParams) -> FastCDC:
    """pyfastcdc's FastCDC 2020 cutter for the store's chunker parameters.

    ChunkerParams admits only values within pyfastcdc's limits, so this cannot fail.
    """
    return FastCDC(
        params.avg_size,
        min_size=params.min_size,
        max_size=params.max_size,
        normalized_chunking=cast(Literal[0, 1, 2, 3], params.normalization),
    )


def cut_whole(data: bytes | memoryview, params: ChunkerParams) -> list[memoryview]:
    """The chunks of a complete stream held in memory: the same cuts a Chunker makes."""
    return [chunk.data for chunk in fastcdc(params).cut_buf(data)]


class Chunker:
    """Cuts a stream written to it into chunks; cuts depend only on the bytes.

    Bytes are buffered in blocks; whenever a block fills, the chunks whose cut no later
    byte can change are handed to `emit` as memoryviews into that block. A block is never
    reused, so the views stay valid for as long as anyone holds them.
    """

    def __init__(
        self,
        params: ChunkerParams,
        emit: Callable[[list[memoryview]], None],
        block_size: int = BLOCK_SIZE,
    ) -> None:
        self._cdc = fastcdc(params)
        self._max_size = params.max_size
        self._block_size = max(block_size, 2 * params.max_size)
        self._emit = emit
        self._buffer: bytearray | None = None  # allocated on first write, dropped at the end
        self._filled = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes to the stream; return how many were taken (all of them)."""
        view = memoryview(data).cast("B")
        taken = len(view)
        while view:
            if self._buffer is None:
                self._buffer = bytearray(self._block_size)
            count = min(len(self._buffer) - self._filled, len(view))
            self._buffer[self._filled : self._filled + count] = view[:count]
            self._filled += count
            view = view[count:]
            if self._filled == len(self._buffer):
                self._cut(eof=False)
        return taken

    def finish(self) -> None:
        """End the stream: emit the remaining chunks."""
        self._cut(eof=True)

    def _cut(self, eof: bool) -> None:
        if self._buffer is None:
            return
        view = memoryview(self._buffer)[: self._filled]
        chunks, consumed = self._final_chunks(view, eof)
        carry = view[consumed:]
        if eof:
            self._buffer, self._filled = None, 0
        else:
            self._buffer = bytearray(self._block_size)
            self._buffer[: len(carry)] = carry
            self._filled = len(carry)
        if chunks:
            self._emit(chunks)

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
