"""The grammar of names, tags and references (docs/FORMAT.md, "References")."""

from __future__ import annotations

import re
from dataclasses import dataclass

from castore.errors import InvalidInputError
from castore.format.digests import PREFIX, format_digest, parse_digest

LATEST = "latest"
MAX_NAME_LENGTH = 200

_COMPONENT = r"[a-z0-9_][a-z0-9._-]*"
NAME_PATTERN = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_PATTERN = re.compile(r"[a-z0-9_][a-z0-9._-]{0,127}")
NUMBER_PATTERN = re.compile(r"[1-9][0-9]{0,17}")
STORE_SEPARATOR = "#"
MIN_DIGEST_PREFIX = 8
SHORT_DIGEST_PATTERN = re.compile(rf"{PREFIX}([0-9a-f]{{{MIN_DIGEST_PREFIX},63}})")
"""``sha256:`` and a prefix of a version digest (docs/FORMAT.md 10.3): a reader's
shorthand, expanded to the one digest it starts; stored references carry full digests."""

NAME_RULES = (
    "names are lowercase letters, digits, '.', '_', '-' and '/', each '/'-separated part "
    "starting with a letter, digit or '_'"
)


def check_name(name: object) -> str:
    """Return `name` if it is a valid name, else raise InvalidInputError saying why."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(f"invalid name {name!r}: {NAME_RULES} (at most {MAX_NAME_LENGTH})")
    if name.split("/", 1)[0] == "sha256":
        raise InvalidInputError(f"invalid name {name!r}: 'sha256' is reserved for digests")
    return name


def check_tag(tag: object) -> str:
    """Return `tag` if it can be set by users, else raise InvalidInputError."""
    if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag):
        raise InvalidInputError(
            f"invalid tag {tag!r}: tags are 1-128 lowercase letters, digits, '.', '_', '-'"
        )
    if tag == LATEST or tag.isdigit():
        raise InvalidInputError(f"tag {tag!r} is reserved: 'latest' and numbers name versions")
    return tag


@dataclass(frozen=True)
class Reference:
    """A parsed reference: a name with a version, tag or digest, or a bare digest."""

    name: str | None
    version: int | None = None
    tag: str | None = None
    digest: bytes | None = None
    store_url: str | None = None
    digest_prefix: str | None = None
    """The hex digits of a short digest, to be expanded to the version digest they start."""

    def __str__(self) -> str:
        text = self.name or ""
        if self.digest is not None:
            text += ("@" if self.name else "") + format_digest(self.digest)
        elif self.digest_prefix is not None:
            text += ("@" if self.name else "") + PREFIX + self.digest_prefix
        elif self.version is not None:
            text += f":{self.version}"
        elif self.tag is not None:
            text += f":{self.tag}"
        return f"{self.store_url}{STORE_SEPARATOR}{text}" if self.store_url else text


REFERENCE_FORMS = (
    "expected 'name', 'name:latest', 'name:<version>', 'name:<tag>', 'name@sha256:<hex>', "
    f"'sha256:<hex>' (<hex>: 64 hex digits, or a unique prefix of at least {MIN_DIGEST_PREFIX}), "
    "or '<store url>#<any of these>'"
)


def _digest_reference(name: str | None, text: str, store_url: str | None) -> Reference:
    """A reference by a full version digest, or by a prefix of one."""
    if short := SHORT_DIGEST_PATTERN.fullmatch(text):
        return Reference(name, store_url=store_url, digest_prefix=short.group(1))
    return Reference(name, digest=parse_digest(text), store_url=store_url)


def parse_reference(text: object) -> Reference:
    """Parse any reference form (docs/FORMAT.md §10); InvalidInputError says what was expected."""
    if not isinstance(text, str) or not text:
        raise InvalidInputError(f"invalid reference {text!r}: {REFERENCE_FORMS}")
    store_url = None
    if STORE_SEPARATOR in text:
        store_url, _, text = text.rpartition(STORE_SEPARATOR)
        if not store_url:
            raise InvalidInputError(f"invalid reference: empty store URL; {REFERENCE_FORMS}")
    try:
        if text.startswith(PREFIX):
            return _digest_reference(None, text, store_url)
        if "@" in text:
            name, _, digest = text.partition("@")
            return _digest_reference(check_name(name), digest, store_url)
        name, colon, selector = text.partition(":")
        check_name(name)
        if colon and not selector:
            raise InvalidInputError("nothing follows ':'; write 'name' or 'name:latest'")
        if not selector or selector == LATEST:
            return Reference(name, store_url=store_url)
        if selector.isascii() and selector.isdigit():
            if not NUMBER_PATTERN.fullmatch(selector):
                raise InvalidInputError("versions are numbered from 1, without leading zeros")
            return Reference(name, version=int(selector), store_url=store_url)
        return Reference(name, tag=check_tag(selector), store_url=store_url)
    except InvalidInputError as exc:
        raise InvalidInputError(f"invalid reference {text!r}: {exc}; {REFERENCE_FORMS}") from exc
