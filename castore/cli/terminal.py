"""Store-derived strings made safe for a terminal.

Paths, link targets, skip reasons, times and problems come from the store, which anyone
with write access shapes. Raw, their control characters could rewrite lines, set the
window title or write the clipboard (OSC 52). `shown` escapes them, as ``ls -b`` does,
so that what the user reads is what is stored.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Controls (C0, DEL, C1), formats (bidirectional overrides), surrogates (undecodable
bytes of file names), private, unassigned, and line or paragraph separators."""


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(value: object) -> str:
    """`value` as text in which every unsafe character, and the backslash, is escaped."""
    text = str(value)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(c) if c in _NAMED or _unsafe(c) else c for c in text)


def guarded(text: str) -> str:
    """Human output with any unsafe character that escaped `shown` replaced by '?', as
    ``ls -q`` does; the line breaks the CLI itself wrote stay."""
    if text.isprintable():
        return text
    return "".join("?" if c != "\n" and _unsafe(c) else c for c in text)
