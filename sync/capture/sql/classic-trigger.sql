-- The classic recipe's trigger, with only the JSON builder renamed: json_object cannot be
-- created as a UDF on current servers (MariaDB's native JSON_OBJECT takes the name), so it is
-- gearsync's gman_json_object. `sync-worker --classic` applies the jobs of syncToRedis as
-- SET <id> <payload>, unversioned. Only UPDATEs are sent, and a NULL from gman_do_background
-- (gearmand down) drops the change: use `sync-triggers install` for versioned insert/update/
-- delete capture with a spool.
DROP TRIGGER IF EXISTS datatoredis;
DELIMITER $$
CREATE TRIGGER datatoredis AFTER UPDATE ON data FOR EACH ROW BEGIN SET @ret=gman_do_background('syncToRedis', gman_json_object(NEW.id as `id`, NEW.volume as `volume`)); END$$
DELIMITER ;
