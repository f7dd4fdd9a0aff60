"""Store upkeep: reachability, gc, verify, stats, repair and copy."""
