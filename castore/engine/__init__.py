"""The storage engine: chunking, index, refs, leases, cache, writer, reader, Repository."""
