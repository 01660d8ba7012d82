"""Change sources: where row changes come from (sync.sources.binlog: the server's binary log)."""
