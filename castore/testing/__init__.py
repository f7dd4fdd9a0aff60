"""Test helpers that other projects can reuse: the backend conformance suite.

`castore.testing.backend_conformance` needs pytest; this package imports nothing itself.
"""
