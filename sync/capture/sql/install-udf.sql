-- gearsync UDFs (udf/build/gearsync_udf.so, copied into @@plugin_dir).
-- Re-runnable: CREATE OR REPLACE.  `make install-udf` runs it statement by
-- statement (sync/capture/udf_install.py).  Names carry the gman_ prefix: MariaDB's
-- native JSON_OBJECT/JSON_ARRAY would shadow json_object/json_array
-- (ERROR 1585).

-- job servers for the whole mysqld (defaults: env GEARSYNC_GEARMAN_SERVERS,
-- gearsync_udf.conf beside the library, 127.0.0.1:4730)
CREATE OR REPLACE FUNCTION gman_servers_set RETURNS STRING SONAME 'gearsync_udf.so';

-- background jobs: return the job handle, NULL on any failure
CREATE OR REPLACE FUNCTION gman_do_background RETURNS STRING SONAME 'gearsync_udf.so';
CREATE OR REPLACE FUNCTION gman_do_high_background RETURNS STRING SONAME 'gearsync_udf.so';
CREATE OR REPLACE FUNCTION gman_do_low_background RETURNS STRING SONAME 'gearsync_udf.so';

-- foreground jobs: return the worker's result, NULL on fail/timeout
CREATE OR REPLACE FUNCTION gman_do RETURNS STRING SONAME 'gearsync_udf.so';
CREATE OR REPLACE FUNCTION gman_do_high RETURNS STRING SONAME 'gearsync_udf.so';
CREATE OR REPLACE FUNCTION gman_do_low RETURNS STRING SONAME 'gearsync_udf.so';

-- one foreground job per row, the integer results summed
CREATE OR REPLACE AGGREGATE FUNCTION gman_sum RETURNS INTEGER SONAME 'gearsync_udf.so';

-- wait until this connection's pipelined background jobs are acknowledged;
-- returns how many are still unacknowledged (0 = all confirmed)
CREATE OR REPLACE FUNCTION gman_flush RETURNS INTEGER SONAME 'gearsync_udf.so';

-- why this connection's last gman_* call returned NULL
CREATE OR REPLACE FUNCTION gman_last_error RETURNS STRING SONAME 'gearsync_udf.so';

-- JSON text builders: gman_json_object(expr AS key, ...), gman_json_array(...)
CREATE OR REPLACE FUNCTION gman_json_object RETURNS STRING SONAME 'gearsync_udf.so';
CREATE OR REPLACE FUNCTION gman_json_array RETURNS STRING SONAME 'gearsync_udf.so';
