-- Drop the gearsync UDFs.  Re-runnable.  Drop triggers that call them first,
-- or those triggers fail at their next row.
DROP FUNCTION IF EXISTS gman_servers_set;
DROP FUNCTION IF EXISTS gman_do_background;
DROP FUNCTION IF EXISTS gman_do_high_background;
DROP FUNCTION IF EXISTS gman_do_low_background;
DROP FUNCTION IF EXISTS gman_do;
DROP FUNCTION IF EXISTS gman_do_high;
DROP FUNCTION IF EXISTS gman_do_low;
DROP FUNCTION IF EXISTS gman_sum;
DROP FUNCTION IF EXISTS gman_flush;
DROP FUNCTION IF EXISTS gman_last_error;
DROP FUNCTION IF EXISTS gman_json_object;
DROP FUNCTION IF EXISTS gman_json_array;
