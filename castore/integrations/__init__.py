"""castore where other tools look for files: an fsspec filesystem (protocol ``castore``).

Modules here use only castore's public API, as the command line does.
"""
