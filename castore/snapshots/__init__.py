"""Directory backups: scan, backup, restore, browse, retention and ignore rules."""
