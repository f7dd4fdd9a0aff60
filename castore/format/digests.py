"""The textual form of SHA-256 digests: ``sha256:<64 lowercase hex digits>``."""

from __future__ import annotations

import re

from castore.errors import InvalidInputError

PREFIX = "sha256:"
"""What every digest castore prints or takes starts with: ``sha256:<64 lowercase hex>``."""
_HEX64 = re.compile(r"[0-9a-f]{64}")


def format_digest(raw: bytes) -> str:
    """``sha256:<hex>`` for a 32-byte digest."""
    return PREFIX + raw.hex()


def parse_digest(text: str) -> bytes:
    """The 32 raw bytes of ``sha256:<hex>``; anything else is an InvalidInputError."""
    if not isinstance(text, str):
        raise InvalidInputError(f"a digest must be a string like 'sha256:<64 hex>', got {text!r}")
    hex_part = text.removeprefix(PREFIX)
    if hex_part == text or not _HEX64.fullmatch(hex_part):
        raise InvalidInputError(
            f"malformed digest {text!r}: expected 'sha256:' followed by 64 lowercase hex digits"
        )
    return bytes.fromhex(hex_part)
