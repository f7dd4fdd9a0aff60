"""Named versions: serializers, the catalog (save, resolve, tags, log, diff, delete), loading."""
