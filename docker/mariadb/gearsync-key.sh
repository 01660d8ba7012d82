#!/bin/sh
# Entry point of the gearsync MariaDB image: writes GEARSYNC_JOB_KEY into the UDF library's key file
# beside it (mode 0600, owned by mysql; docs/security.md) — a file, never SQL, which would put the key
# in the logs and the binlog — then hands over to the official entrypoint without the variable.
set -eu
key_file=/usr/lib/mysql/plugin/gearsync_udf.key
if [ -n "${GEARSYNC_JOB_KEY:-}" ]; then
  umask 077
  printf '%s\n' "$GEARSYNC_JOB_KEY" > "$key_file.tmp"
  chown mysql:mysql "$key_file.tmp"
  mv -f "$key_file.tmp" "$key_file"
fi
unset GEARSYNC_JOB_KEY
exec docker-entrypoint.sh "$@"
