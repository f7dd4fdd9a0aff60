"""The on-storage format: pure bytes <-> values, no I/O (docs/FORMAT.md)."""
