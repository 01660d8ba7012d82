"""The spool table `gearsync_spool`: where the capture triggers put a change that could not be handed
to gearmand (udf mode) or every change (outbox mode), and where sync-relay takes them from."""

from __future__ import annotations

from sync.rows.schema import quote_ident

__all__ = ["SPOOL_TABLE", "spool_ddl"]

SPOOL_TABLE = "gearsync_spool"


def spool_ddl(database: str, table: str = SPOOL_TABLE) -> str:
    """CREATE TABLE IF NOT EXISTS for the spool (InnoDB: its rows commit or roll back with the
    captured change)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_ident(database)}.{quote_ident(table)} (\n"
        "  `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,\n"
        "  `function` VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,\n"
        "  `payload` LONGBLOB NOT NULL,\n"
        "  `created_at` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)\n"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    )
