"""Progress: the fraction done and the time left, for any counters an operation reports."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

import castore

counts = st.integers(min_value=0, max_value=2**50)
totals = st.none() | counts


@given(counts, counts, st.floats(min_value=0, max_value=1e6), totals, totals)
def test_fraction_is_bounded_and_unknown_only_without_totals(
    files: int, size: int, elapsed: float, total_files: int | None, total_bytes: int | None
) -> None:
    progress = castore.Progress(files, size, 0, elapsed, "p", total_files, total_bytes)
    fraction = progress.fraction
    assert (fraction is None) == (total_files is None and total_bytes is None)
    if fraction is not None:
        assert 0.0 <= fraction <= 1.0
        if total_bytes:  # bytes decide when there are bytes to move
            assert fraction == min(1.0, size / total_bytes)
    remaining = progress.remaining
    assert remaining is None or remaining >= 0.0
    if fraction == 1.0:
        assert remaining == 0.0


def test_time_left_follows_the_rate_so_far() -> None:
    half = castore.Progress(5, 50, 0, 10.0, "p", 10, 100)
    assert half.fraction == 0.5 and half.remaining == 10.0 and half.rate == 5.0
    assert castore.Progress(0, 0, 0, 3.0, "p", 10, 100).remaining is None  # no rate yet
