"""Binlog capture: the reader (mysql-replication + our row decoding) and the sync-binlog service."""
