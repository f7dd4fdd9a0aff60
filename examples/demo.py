"""castore's main job in one minute: save, version, tag and load a real model.

Trains a small scikit-learn model, saves two versions into a local store, tags one,
loads it back by its digest, and shows how little the second version cost.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import castore

STORE = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-store")


def size(n: int) -> str:
    """Bytes in MiB."""
    return f"{n / 2**20:.2f} MiB"


def main() -> None:
    """Run the demo."""
    shutil.rmtree(STORE, ignore_errors=True)
    store = castore.init(STORE)
    print(f"store: {store.url}")

    features, labels = make_classification(n_samples=6000, n_features=40, random_state=0)
    features, held_out, labels, held_out_labels = train_test_split(features, labels, random_state=0)
    forest = RandomForestClassifier(n_estimators=60, random_state=0).fit(features, labels)
    model = {
        "forest": forest,
        "scaled_logreg": Pipeline(
            [("scale", StandardScaler()), ("logreg", LogisticRegression(max_iter=500))]
        ).fit(features, labels),
        "embeddings": np.random.default_rng(0).standard_normal((2000, 256)).astype(np.float32),
    }
    accuracy = float(forest.score(held_out, held_out_labels))

    started = time.perf_counter()
    v1 = store.save(model, "churn/classifier", metadata={"accuracy": accuracy}, tags=["candidate"])
    first_cost = store.last_write.new_bytes_stored
    print(
        f"saved {v1.name}:{v1.version} ({size(v1.size)} serialized, {size(first_cost)} stored) "
        f"in {time.perf_counter() - started:.2f}s"
    )

    # Version 2: the forest grows by 20 trees; everything else is unchanged.
    forest.set_params(n_estimators=80, warm_start=True).fit(features, labels)
    accuracy = float(forest.score(held_out, held_out_labels))
    v2 = store.save(model, "churn/classifier", metadata={"accuracy": accuracy})
    print(
        f"saved {v2.name}:{v2.version} ({size(v2.size)} serialized, only "
        f"{size(store.last_write.new_bytes_stored)} new: the unchanged parts are deduplicated)"
    )
    plain = STORE.parent / "plain-joblib.pkl"
    joblib.dump(model, plain, compress=3)
    print(
        f"for comparison, joblib.dump(compress=3) writes {size(plain.stat().st_size)} per version"
    )
    plain.unlink()

    store.tag("churn/classifier:1", "production")
    pinned = store.resolve("churn/classifier:production")
    print(f"production -> {pinned}")

    loaded = store.load(pinned)  # by digest: exactly the bytes that were saved, verified
    print(
        f"loaded version 1 by digest: {len(loaded['forest'].estimators_)} trees, held-out "
        f"accuracy {loaded['forest'].score(held_out, held_out_labels):.3f}"
    )
    difference = store.diff("churn/classifier:1", "churn/classifier:2")
    print(
        f"v1 -> v2 share {size(difference.shared_bytes)} of {size(difference.b.size)}; "
        f"metadata changed: {difference.metadata_changed}"
    )
    print(f"history verified: {not store.verify_history('churn/classifier')}")
    print(
        f"try: {castore_command()} --store {shlex.quote(str(STORE))} log churn/classifier --verify"
    )


def castore_command() -> str:
    """How to run castore from here as this demo runs: the castore script beside this
    interpreter (a venv's bin/) if there is one, else this interpreter with -m castore;
    relative to the current directory when below it, so it works without activating."""
    script = Path(sys.executable).with_name("castore")
    program = script.is_file() and os.access(script, os.X_OK)
    chosen = script if program else Path(sys.executable)
    text = str(chosen)
    if chosen.is_absolute() and chosen.is_relative_to(Path.cwd()):
        text = os.path.relpath(chosen)
        text = text if os.sep in text else os.curdir + os.sep + text  # not looked up in PATH
    return shlex.join([text] if program else [text, "-m", "castore"])


if __name__ == "__main__":
    main()
