"""Where each kind of object lives below a store's root (docs/FORMAT.md, section 3).

Objects are named by 32-byte SHA-256 digests, but not all of their own bytes: a pack is
named by the SHA-256 of its entry table (section 7.5), a stream object by the content
digest of the stream it describes (section 9); index objects and manifests are named by
the SHA-256 of their complete bytes (sections 8 and 11).
"""

import hashlib

CONFIG = "config"
PACKS = "packs"
INDEX = "index"
STREAMS = "streams"
MANIFESTS = "manifests"
SIGNATURES = "signatures"
REFS = "refs"
VERSIONS = "@versions"
TAGS = "@tags"
LOCKS = "locks"
WRITER_LEASES = f"{LOCKS}/writers"
GC_MARKER = f"{LOCKS}/gc"


def _fanned(folder: str, name: bytes) -> str:
    hex_name = name.hex()
    return f"{folder}/{hex_name[:2]}/{hex_name}"


def pack_path(pack_id: bytes) -> str:
    """``packs/<hh>/<hex>`` for a pack id: the SHA-256 of the pack's entry table.

    Not of the pack's bytes: the table lists every chunk id, offset, length and codec,
    so the name commits to the content without another hash pass over the records.
    """
    return _fanned(PACKS, pack_id)


def stream_path(content_digest: bytes) -> str:
    """``streams/<hh>/<hex>`` for the stream object of a content digest."""
    return _fanned(STREAMS, content_digest)


def manifest_path(version_digest: bytes) -> str:
    """``manifests/<hh>/<hex>`` for a manifest named by the SHA-256 of its bytes."""
    return _fanned(MANIFESTS, version_digest)


def digest_of(data: bytes | bytearray | memoryview) -> bytes:
    """The SHA-256 of an object's complete bytes: the name of index objects and manifests."""
    return hashlib.sha256(data).digest()


def index_path(index_id: bytes) -> str:
    """``index/<hex>`` for an index object named by the SHA-256 of its bytes."""
    return f"{INDEX}/{index_id.hex()}"


def name_of(path: str) -> bytes | None:
    """The 32-byte name encoded in a content-addressed path, or None if it is not one."""
    last = path.rsplit("/", 1)[-1]
    if len(last) != 64:
        return None
    try:
        return bytes.fromhex(last)
    except ValueError:
        return None


def versions_folder(name: str) -> str:
    """``refs/<name>/@versions``: the version refs of a name."""
    return f"{REFS}/{name}/{VERSIONS}"


def version_ref_path(name: str, number: int) -> str:
    """``refs/<name>/@versions/<n>``: the ref of one version."""
    return f"{versions_folder(name)}/{number}"


def tags_folder(name: str) -> str:
    """``refs/<name>/@tags``: every tag log of a name."""
    return f"{REFS}/{name}/{TAGS}"


def tag_folder(name: str, tag: str) -> str:
    """``refs/<name>/@tags/<tag>``: the event log of one tag."""
    return f"{tags_folder(name)}/{tag}"


def signature_folder(version_digest: bytes) -> str:
    """``signatures/<hh>/<version hex>``: every signature of one version."""
    return _fanned(SIGNATURES, version_digest)


def signature_path(version_digest: bytes, key_id: str) -> str:
    """``signatures/<hh>/<version hex>/<key id>``: one key's signature of one version."""
    return f"{signature_folder(version_digest)}/{key_id}"


def writer_lease_path(lease_id: str) -> str:
    """``locks/writers/<id>``: one writer's lease."""
    return f"{WRITER_LEASES}/{lease_id}"
