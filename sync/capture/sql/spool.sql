-- gearsync_spool: changes the capture triggers could not hand to gearmand (udf mode,
-- --on-enqueue-failure spool) or always keep (--mode outbox), until sync-relay sends them.
-- One per database that has captured tables; `sync-triggers install` creates it when missing.
-- Re-runnable. InnoDB: a spooled change commits or rolls back with the row change itself.
CREATE TABLE IF NOT EXISTS gearsync_spool (
  `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  `function` VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  `payload` LONGBLOB NOT NULL,
  `created_at` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
