"""Retention: which versions of a name to keep, by restic's rules, and forget the rest.

Times are the versions' creation times (their manifests' ``created``). The policy is a
pure function of those times (`keep_reasons`), tested against a reference model;
`forget` applies it to a name and deletes what it does not keep.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

from castore.errors import IntegrityError, InvalidInputError, NotFoundError
from castore.versions import catalog
from castore.versions.catalog import Version

if TYPE_CHECKING:
    from castore.engine.repository import Repository


@dataclass(frozen=True)
class RetentionPolicy:
    """restic's keep rules: how many of the newest snapshots, hours, days... to keep.

    0 disables a rule, -1 makes it unlimited. Buckets use the snapshot's creation time.
    """

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def __post_init__(self) -> None:
        for rule in fields(self):
            value = getattr(self, rule.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise InvalidInputError(
                    f"keep-{rule.name} must be a count >= 0, or -1 for unlimited, not {value!r}"
                )

    @property
    def empty(self) -> bool:
        """Whether no rule keeps anything."""
        return not any(getattr(self, rule.name) for rule in fields(self))


@dataclass(frozen=True)
class Kept:
    """A version that forget keeps, and the rules that keep it."""

    version: Version
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ForgetResult:
    """What forget kept and removed (or would, with dry_run), newest first."""

    kept: list[Kept]
    removed: list[Version]
    dry_run: bool


_BUCKETS: tuple[tuple[str, Callable[[datetime, int], object]], ...] = (
    ("last", lambda when, number: number),
    ("hourly", lambda when, number: (when.year, when.month, when.day, when.hour)),
    ("daily", lambda when, number: when.date()),
    ("weekly", lambda when, number: tuple(when.isocalendar())[:2]),
    ("monthly", lambda when, number: (when.year, when.month)),
    ("yearly", lambda when, number: when.year),
)
"""Each keep rule's bucket of a snapshot (its time, its position newest first)."""


def keep_reasons(times: Sequence[datetime], policy: RetentionPolicy) -> list[tuple[str, ...]]:
    """restic's policy: for snapshots newest first, the rules that keep each (empty: forget).

    A rule with count n keeps the newest snapshot of each of the n most recent buckets
    (hours, days, ISO weeks, months, years) that hold a snapshot; "last" keeps the n
    newest snapshots.
    """
    remaining = {rule: getattr(policy, rule) for rule, _ in _BUCKETS}
    latest: dict[str, object] = {}
    reasons = []
    for number, when in enumerate(times):
        kept = []
        for rule, bucket in _BUCKETS:
            value = bucket(when, number)
            if remaining[rule] == 0 or (rule in latest and latest[rule] == value):
                continue
            latest[rule] = value
            remaining[rule] -= 1 if remaining[rule] > 0 else 0
            kept.append(rule)
        reasons.append(tuple(kept))
    return reasons


_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?")


def within_cutoff(newest: datetime, duration: str) -> datetime:
    """restic's --keep-within: the time `duration` ("1y6m7d2h": years, months, days,
    hours, each optional) before `newest`. Months are calendar months, the day clamped to
    the month's last (31 March less a month is 29 February in a leap year)."""
    match = _DURATION.fullmatch(duration)
    if not duration or match is None:
        raise InvalidInputError(
            f"keep-within wants a duration such as 1y6m7d2h (years, months, days, hours), "
            f"not {duration!r}"
        )
    years, months, days, hours = (int(group or 0) for group in match.groups())
    year, month = divmod(newest.year * 12 + newest.month - 1 - years * 12 - months, 12)
    if year < 1:
        raise InvalidInputError(f"keep-within {duration!r} reaches before the year 1")
    day = min(newest.day, calendar.monthrange(year, month + 1)[1])
    try:
        return newest.replace(year=year, month=month + 1, day=day) - timedelta(
            days=days, hours=hours
        )
    except OverflowError as exc:
        raise InvalidInputError(f"keep-within {duration!r} reaches before the year 1") from exc


def snapshot_time(version: Version, tz: tzinfo | None = None) -> datetime:
    """When a version was created (its manifest's `created`), in `tz` (default: local)."""
    try:
        when = datetime.fromisoformat(version.created)
    except ValueError as exc:
        raise IntegrityError(
            f"{version.name}:{version.version} has an unreadable creation time {version.created!r}"
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(tz)


def forget(
    repo: Repository,
    name: str,
    *,
    keep_last: int = 0,
    keep_hourly: int = 0,
    keep_daily: int = 0,
    keep_weekly: int = 0,
    keep_monthly: int = 0,
    keep_yearly: int = 0,
    keep_within: str | None = None,
    keep_tag: Sequence[str] = (),
    dry_run: bool = False,
    tz: tzinfo | None = None,
) -> ForgetResult:
    """Delete the versions of `name` that no keep rule keeps (restic's ``forget``).

    Times are the manifests' creation times, bucketed in `tz` (default: the local time
    zone, as restic does). `keep_within` keeps every version created within that
    duration ("1y6m7d2h") of the newest; `keep_tag` keeps the versions those tags of
    `name` point at (a tag the name does not have is an error, not a rule that keeps
    nothing). With `dry_run` nothing is deleted. Deleted versions become tombstones
    (catalog.delete); their data is freed by a later gc. At least one rule is required.
    """
    policy = RetentionPolicy(
        last=keep_last,
        hourly=keep_hourly,
        daily=keep_daily,
        weekly=keep_weekly,
        monthly=keep_monthly,
        yearly=keep_yearly,
    )
    if policy.empty and keep_within is None and not keep_tag:
        raise InvalidInputError(
            "no keep rule given (--keep-last, --keep-daily...): refusing to forget every version"
        )
    tagged = catalog.tags(repo, name) if keep_tag else {}
    if missing := sorted(set(keep_tag) - set(tagged)):
        raise NotFoundError(
            f"{name} has no tag {', '.join(missing)}: refusing to forget by a rule that keeps "
            f"nothing (its tags: {', '.join(sorted(tagged)) or 'none'})"
        )
    live = [entry.details for entry in catalog.log(repo, name) if entry.details is not None]
    newest_first = sorted(live, key=lambda v: (snapshot_time(v), v.version), reverse=True)
    cutoff = (
        within_cutoff(snapshot_time(newest_first[0]), keep_within)
        if keep_within is not None and newest_first
        else None
    )
    reasons = [
        why
        + (("within",) if cutoff is not None and snapshot_time(v) >= cutoff else ())
        + tuple(f"tag {tag}" for tag in sorted(set(keep_tag)) if tagged[tag] == v.version)
        for v, why in zip(
            newest_first,
            keep_reasons([snapshot_time(v, tz) for v in newest_first], policy),
            strict=True,
        )
    ]
    kept = [Kept(v, why) for v, why in zip(newest_first, reasons, strict=True) if why]
    removed = [v for v, why in zip(newest_first, reasons, strict=True) if not why]
    if not dry_run:
        for version in removed:
            catalog.delete(repo, version.reference)
    return ForgetResult(kept, removed, dry_run)
