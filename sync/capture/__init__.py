"""Capture: where changes come from — the capture triggers and their spool, the outbox relay, the UDF
installer, and the binary-log reader (capture/binlog)."""
