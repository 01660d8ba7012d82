-- The docker compose demo schema: the same table as `make demo` (CREATE_TABLE in sync/demo/;
-- tests/unit/test_compose.py keeps the two equal). The rows come from the load job after the
-- capture triggers exist, so every row reaches Redis through the triggers and the binlog alike.
CREATE DATABASE IF NOT EXISTS gearman;   -- gearmand's persistent queue (-q mysql)
CREATE DATABASE IF NOT EXISTS demo;
USE demo;
CREATE TABLE data (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  volume INT NOT NULL,
  label VARCHAR(64) NOT NULL,
  updated_at DATETIME(6) NOT NULL
) ENGINE=InnoDB;
