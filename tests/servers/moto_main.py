"""moto's S3 server, with its conditional PUT made atomic.

moto answers ``PUT`` with ``If-None-Match: *`` by looking the key up and then storing the
object, two steps that its threaded server lets two requests interleave: both racing
creates then succeed, which S3 and radosgw never allow, and the backend conformance
suite's exclusive-create race failed now and then. One lock around the handler makes
moto keep the promise castore relies on.
"""

from __future__ import annotations

import functools
import threading

from moto.s3.responses import S3Response
from moto.server import main

_PUTS = threading.Lock()
_put_object = S3Response.put_object


@functools.wraps(_put_object)
def _atomic_put_object(self: S3Response) -> object:
    with _PUTS:
        return _put_object(self)


S3Response.put_object = _atomic_put_object  # type: ignore[method-assign,assignment]

if __name__ == "__main__":
    main()
