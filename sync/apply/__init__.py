"""Apply: the fenced Redis applier, the dead-letter store and the sync-worker loop."""
