"""Store health: verify that every stored stream resolves and reads back exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from castore import layout
from castore.digests import format_digest
from castore.errors import CastoreError
from castore.packs import check_pack
from castore.streams import decode_stream_object

if TYPE_CHECKING:
    from castore.store import Store


@dataclass
class VerifyReport:
    """What `verify` checked and every problem it found."""

    packs_checked: int = 0
    streams_checked: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def verify(store: Store, *, read_data: bool = True) -> VerifyReport:
    """Check index objects, packs and streams; with `read_data`, re-hash every stored byte."""
    report = VerifyReport()
    store.index.refresh()
    report.problems.extend(f"{path}: {reason}" for path, reason in store.index.damaged.items())
    if read_data:
        for path in store.backend.list(layout.PACKS):
            pack_id = layout.name_of(path)
            report.packs_checked += 1
            try:
                if pack_id is None:
                    raise CastoreError(f"{path} is not named by a digest")
                data = store.backend.read(path)
                report.bytes_read += len(data)
                check_pack(data, pack_id)
            except CastoreError as exc:
                report.problems.append(f"{path}: {exc}")
    for path in store.backend.list(layout.STREAMS):
        digest = layout.name_of(path)
        report.streams_checked += 1
        try:
            if digest is None:
                raise CastoreError(f"{path} is not named by a digest")
            descriptor = decode_stream_object(store.backend.read(path), digest)
            if read_data:
                for _ in store.iter_chunks(descriptor):
                    pass
            else:
                missing = [c.hex() for c, _ in descriptor.chunks() if c not in store.index]
                if missing:
                    raise CastoreError(f"{len(missing)} chunks are in no index, first {missing[0]}")
        except CastoreError as exc:
            report.problems.append(f"{format_digest(digest or bytes(32))} ({path}): {exc}")
    return report
