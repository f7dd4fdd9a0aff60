"""Restricted load against pickle.load: a pickled random forest and 200k small dicts.

Run: ``PYTHONPATH=. python benchmarks/bench_unpickle.py [--rounds 7]``. Each round times
both loaders on the same bytes, alternating which goes first; the medians are printed
with their ratio (pickle.load time / restricted time: 1.0 means as fast).
"""

from __future__ import annotations

import argparse
import io
import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any

from castore import safety


def _forest() -> bytes:
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    features, labels = make_classification(n_samples=2000, n_features=20, random_state=0)
    model = RandomForestClassifier(n_estimators=100, random_state=0).fit(features, labels)
    return pickle.dumps(model, protocol=5)


def _dicts() -> bytes:
    rows = [{"id": i, "name": f"n{i}", "score": i * 0.5, "ok": i % 2 == 0} for i in range(200_000)]
    return pickle.dumps(rows, protocol=5)


def _time(load: Callable[[bytes], Any], data: bytes) -> float:
    started = time.perf_counter()
    load(data)
    return time.perf_counter() - started


def _restricted(data: bytes) -> Any:
    return safety.load_pickle(io.BytesIO(data), safety.Allowlist(), size=len(data))


def main() -> None:
    """Print the medians for each workload."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    for name, data in (("random forest (100 trees)", _forest()), ("200k small dicts", _dicts())):
        plain: list[float] = []
        restricted: list[float] = []
        for round_number in range(rounds):
            order = [(plain, pickle.loads), (restricted, _restricted)]
            for times, load in order if round_number % 2 == 0 else order[::-1]:
                times.append(_time(load, data))
        fast, safe = statistics.median(plain), statistics.median(restricted)
        print(
            f"{name}: {len(data) / 1e6:.1f} MB, pickle.load {fast * 1e3:.1f} ms, "
            f"restricted {safe * 1e3:.1f} ms, speed {fast / safe:.2f}x of pickle.load"
        )


if __name__ == "__main__":
    main()
