"""castore's benchmark suite: run it with ``.venv/bin/python benchmarks/run.py``."""
