"""The ``castore`` command, built on the public API only."""
