"""Bounds: what a stream may make castore allocate or compute, whatever it declares.

Lengths are checked against the bytes the stream still holds (`LimitedReader`); numbers
that constructors parse or use as sizes are bounded here.
"""

from __future__ import annotations

import os
import re
import sys
from typing import IO, Any

from castore.errors import UnsafeObjectError

READ_PIECE = 16 * 1024 * 1024
"""Largest single read when the remaining size of a stream is unknown."""

MAX_INT_BITS = 8192
"""Largest integer (in bits) given to a constructor or a state: 128-bit random states and
UUIDs fit, numbers that make arithmetic slow do not."""

MAX_NUMBER_TEXT = 4300
"""Longest text parsed as a number (Python's own limit for int(str))."""

MAX_EXPONENT = 4300
"""Largest decimal exponent in text that Fraction and Decimal parse: Fraction("1e10000000")
computes 10**10000000."""

MAX_MEMO_INDEX = 1 << 24
"""Memo indices beyond this (and beyond the stream's size) are refused."""

_EXPONENT = re.compile(r"[eE]\s*([+-]?\d[\d_]*)")


def require_int(value: int, what: str) -> None:
    """Refuse an integer too large to be given to a constructor."""
    if value.bit_length() > MAX_INT_BITS:
        raise UnsafeObjectError(f"{what} holds an integer of {value.bit_length()} bits")


def require_number_text(text: str, what: str) -> None:
    """Refuse number text that is long, or whose exponent makes parsing it expensive."""
    if len(text) > MAX_NUMBER_TEXT:
        raise UnsafeObjectError(f"{what} parses a number of {len(text)} characters")
    for match in _EXPONENT.finditer(text):
        digits = match.group(1).replace("_", "").lstrip("+-")
        if len(digits) > 6 or int(digits) > MAX_EXPONENT:
            raise UnsafeObjectError(f"{what} parses a number with exponent {match.group(1)}")


class LimitedReader:
    """A read-only view of a binary file that counts what it reads and never reads past `size`.

    Large reads are capped by what is left, so that no length field in the stream makes
    castore allocate more than the stream holds.
    """

    def __init__(self, file: IO[bytes], size: int | None) -> None:
        self._file = file
        self.size = size
        self.position = 0

    @property
    def remaining(self) -> int | None:
        """Bytes left before `size`, or None when the size is unknown."""
        return None if self.size is None else max(self.size - self.position, 0)

    def read(self, count: int = -1) -> bytes:
        """Up to `count` bytes (all that is left if negative)."""
        left = self.remaining
        if count < 0:
            count = left if left is not None else sys.maxsize
        if left is not None:
            count = min(count, left)
        if count <= READ_PIECE:
            return self._counted(self._file.read(count))
        pieces = []
        while count > 0:
            piece = self._counted(self._file.read(min(count, READ_PIECE)))
            if not piece:
                break
            pieces.append(piece)
            count -= len(piece)
        return b"".join(pieces)

    def readline(self) -> bytes:
        """One line, including its newline."""
        left = self.remaining
        return self._counted(self._file.readline(-1 if left is None else left))

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` (straight from the file) as far as the stream allows; bytes read."""
        view = memoryview(buffer).cast("B")
        if self.remaining is not None:
            view = view[: self.remaining]
        filled = 0
        while filled < len(view):
            count = self._file.readinto(view[filled:])  # type: ignore[attr-defined]
            if not count:
                break
            filled += count
        self.position += filled
        return filled

    def skip(self, count: int) -> int:
        """Move `count` bytes ahead: a seek on files that can, reads of at most READ_PIECE
        bytes on others. Returns the bytes skipped (fewer at the end of a stream read)."""
        if self._file.seekable():
            self._file.seek(count, os.SEEK_CUR)
            self.position += count
            return count
        skipped = 0
        while skipped < count:
            piece = len(self.read(min(count - skipped, READ_PIECE)))
            if not piece:
                break
            skipped += piece
        return skipped

    def _counted(self, data: bytes) -> bytes:
        self.position += len(data)
        return data


def stream_size(file: IO[bytes], size: int | None) -> int | None:
    """Bytes left in `file`: `size` if given, else from the file system when it is a file."""
    if size is not None:
        return size
    try:
        return os.fstat(file.fileno()).st_size - file.tell()
    except (AttributeError, OSError, ValueError):
        return None
