"""sync.capture.triggers: the generated SQL, without a server (the integration tests run it for real)."""

from __future__ import annotations

import orjson
import pytest

from sync.capture.triggers import (
    EVENTS,
    MARKER_PREFIX,
    TriggerOptions,
    _delimiter,
    create_trigger_sql,
    file_stem,
    install_script,
    install_statements,
    not_queued_message,
    payload_sql,
    read_marker,
    trigger_names,
    uninstall_statements,
)
from sync.errors import ConfigError
from sync.rows.schema import Column, TableSchema

HOSTILE = ["a`b", "it's", 'dq"x', "sp ace", "semi;colon", "Größe名前", "select", "*/", "--", "/*", "a\\b",
           "x' OR 1=1 -- ", "``", "$$", "json_data"]


def col(name: str, data_type: str = "int", column_type: str | None = None, *, charset: str | None = None,
        nullable: bool = True, fsp: int | None = None) -> Column:
    return Column(name, data_type, column_type or data_type, nullable, fsp, charset)


def table(name: str, columns: list[Column], key: tuple[str, ...], database: str = "db") -> TableSchema:
    return TableSchema(database, name, tuple(columns), key, "PRIMARY")


def tokens(sql: str) -> list[tuple[str, str]]:
    """Scan SQL into ("I", identifier), ("S", string literal) and ("c", other char) tokens; a
    quote left open fails the test (that would be an injection)."""
    out, i = [], 0
    while i < len(sql):
        ch = sql[i]
        if ch in "`'":
            j = i + 1
            while True:
                k = sql.find(ch, j)
                if k < 0:
                    raise AssertionError(f"unterminated {ch} at {i}: {sql[i:i + 60]!r}")
                if sql[k + 1 : k + 2] == ch:  # doubled quote inside
                    j = k + 2
                    continue
                break
            out.append(("I" if ch == "`" else "S", sql[i + 1 : k].replace(ch + ch, ch)))
            i = k + 1
        else:
            out.append(("c", ch))
            i += 1
    return out


def strip_quoted(sql: str) -> str:
    """The SQL with every `identifier` and 'literal' replaced by I / S."""
    return "".join(kind if kind != "c" else text for kind, text in tokens(sql))


def literal_values(sql: str) -> list[str]:
    return [text for kind, text in tokens(sql) if kind == "S"]


def identifiers(sql: str) -> list[str]:
    return [text for kind, text in tokens(sql) if kind == "I"]


@pytest.fixture(params=HOSTILE)
def hostile(request: pytest.FixtureRequest) -> str:
    return request.param


def test_hostile_names_stay_inside_quotes(hostile: str) -> None:
    schema = table(hostile, [col(hostile), col("v" + hostile, "varchar", charset="utf8mb4")], (hostile,))
    options = TriggerOptions.for_table(hostile, "fn", columns=("v" + hostile,))
    for stmt in install_statements(schema, options)[1:] + uninstall_statements(schema):
        if stmt.startswith("CREATE"):
            # Our one comment: the install marker, a single line of JSON (names escaped in it).
            marker = [line for line in stmt.splitlines() if MARKER_PREFIX in line]
            assert len(marker) == 1 and read_marker(stmt) == (hostile, options)
            stmt = stmt.replace(marker[0] + "\n", "")
        bare = strip_quoted(stmt)
        # Outside quotes only our own SQL is left: no comment starts, no stray quote.
        assert "--" not in bare and "/*" not in bare and "#" not in bare, bare
        assert "`" not in bare and "'" not in bare and '"' not in bare
        if stmt.startswith("CREATE"):  # the name arrives whole (table, column, key alias)
            assert hostile in identifiers(stmt)
    body = create_trigger_sql(schema, "INSERT", options)
    assert strip_quoted(body).count(";") == 4  # DECLARE, SET, INSERT, END IF


def test_table_name_travels_as_json_inside_the_literal(hostile: str) -> None:
    schema = table(hostile, [col("id")], ("id",))
    sql = payload_sql(schema, "insert", "NEW")
    if "\\" in orjson.dumps(hostile).decode():
        assert "CHAR(92 USING utf8mb4)" in sql  # JSON escapes never rely on sql_mode
    else:
        head = literal_values(sql)[0]
        assert head == '{"v":1,"table":' + orjson.dumps(hostile).decode() + ',"op":"insert","pk":'


def test_payload_shape_and_order() -> None:
    schema = table("data", [col("id"), col("volume")], ("id",))
    sql = payload_sql(schema, "update", "NEW")
    assert sql.startswith(
        "IFNULL(CONCAT('{\"v\":1,\"table\":\"data\",\"op\":\"update\",\"pk\":', gman_json_object(NEW.`id` AS `id`), "
        "',\"row\":', gman_json_object(NEW.`id` AS `id`, NEW.`volume` AS `volume`), "
        "',\"version\":', UUID_SHORT(), ',\"source\":\"trigger\"}'), "
        # the row's JSON over the UDF's max_payload (NULL): its key and an error, never a NULL payload
        "CONCAT('{\"v\":1,\"table\":\"data\",\"op\":\"update\",\"pk\":', gman_json_object(NEW.`id` AS `id`), "
        "',\"version\":', UUID_SHORT(), ',\"source\":\"trigger\",\"error\":\"the row''s JSON is over the UDF''s "
        "max_payload")
    assert sql.endswith("row data: ', (IFNULL(LENGTH(NEW.`id`), 0) + IFNULL(LENGTH(NEW.`volume`), 0)), ' bytes\"}'))")
    delete = payload_sql(schema, "delete", "OLD")
    assert '"row"' not in delete and "OLD.`id` AS `id`" in delete and "NEW." not in delete


def test_value_expressions_come_from_the_schema_mapping() -> None:
    schema = table("t", [col("id", "bigint", "bigint(20) unsigned"), col("d", "decimal", "decimal(30,10)"),
                         col("ts", "timestamp", fsp=6), col("l1", "varchar", charset="latin1")], ("id",))
    sql = payload_sql(schema, "insert", "NEW")
    assert "CAST(NEW.`id` AS DECIMAL(20,0)) AS `id`" in sql
    assert "CAST(NEW.`d` AS CHAR) AS `d`" in sql
    assert "CONVERT_TZ(NEW.`ts`, @@session.time_zone, '+00:00') AS `ts`" in sql
    assert "CONVERT(NEW.`l1` USING utf8mb4) AS `l1`" in sql


def test_json_prefixed_column_is_passed_pre_encoded() -> None:
    # gman_json_object treats an alias json_<name> as "insert raw JSON under <name>".
    schema = table("t", [col("id"), col("json_doc", "varchar", charset="utf8mb4")], ("id",))
    sql = payload_sql(schema, "insert", "NEW")
    assert "AS `json_doc`" not in sql
    assert ("SUBSTRING(gman_json_array(NEW.`json_doc`), 2, LENGTH(gman_json_array(NEW.`json_doc`)) - 2) "
            "AS `json_json_doc`") in sql


def test_composite_key_and_update_checks() -> None:
    schema = table("orders", [col("tenant", "varchar", charset="utf8mb4"), col("id"), col("qty"),
                              col("blob", "blob")], ("tenant", "id"))
    sql = create_trigger_sql(schema, "UPDATE", TriggerOptions.for_table("orders"))
    assert "gman_json_object(NEW.`tenant` AS `tenant`, NEW.`id` AS `id`)" in sql
    # nothing synced changed → nothing sent; text/binary compared as bytes (case, trailing spaces)
    assert ("IF NOT (CAST(NEW.`tenant` AS BINARY) <=> CAST(OLD.`tenant` AS BINARY) AND NEW.`id` <=> OLD.`id` "
            "AND NEW.`qty` <=> OLD.`qty` AND CAST(NEW.`blob` AS BINARY) <=> CAST(OLD.`blob` AS BINARY)) THEN") in sql
    # key changed → delete of the OLD key first, then the NEW row
    key_check = "IF NOT (CAST(NEW.`tenant` AS BINARY) <=> CAST(OLD.`tenant` AS BINARY) AND NEW.`id` <=> OLD.`id`) THEN"
    assert key_check in sql
    assert sql.index(key_check) < sql.index('"op":"delete"') < sql.index('"op":"update"')
    assert sql.count("UUID_SHORT()") == 3     # delete, update, the update's too-large fallback


def test_column_subset_keeps_the_key() -> None:
    schema = table("data", [col("id"), col("volume"), col("secret")], ("id",)).select(["volume"])
    assert [c.name for c in schema.columns] == ["id", "volume"]
    sql = "\n".join(install_statements(schema, TriggerOptions.for_table("data")))
    assert "secret" not in sql


def test_unknown_column_is_refused() -> None:
    with pytest.raises(ConfigError, match="column 'nope' is not in table 'data'"):
        table("data", [col("id")], ("id",)).select(["nope"])


def test_table_without_key_and_the_spool_itself_are_refused() -> None:
    with pytest.raises(ConfigError, match="no key"):
        install_statements(table("t", [col("a")], ()), TriggerOptions.for_table("t"))
    with pytest.raises(ConfigError, match="own spool"):
        install_statements(table("gearsync_spool", [col("id")], ("id",)), TriggerOptions.for_table("x"))


def test_modes() -> None:
    schema = table("data", [col("id"), col("volume")], ("id",))
    spool = create_trigger_sql(schema, "INSERT", TriggerOptions.for_table("data"))
    assert "IF gman_do_background('gearsync.data', gearsync_payload) IS NULL THEN" in spool
    assert "INSERT INTO `db`.`gearsync_spool` (`function`, `payload`) VALUES ('gearsync.data', gearsync_payload);" in spool
    fail = create_trigger_sql(schema, "DELETE", TriggerOptions.for_table("data", on_enqueue_failure="fail"))
    assert ("SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = "
            "'gearsync: change to data not queued: gearmand unreachable';") in fail
    assert "gearsync_spool" not in fail
    ignore = create_trigger_sql(schema, "INSERT", TriggerOptions.for_table("data", on_enqueue_failure="ignore"))
    assert "@gearsync_not_queued" in ignore and "gearsync_spool" not in ignore
    outbox = create_trigger_sql(schema, "UPDATE", TriggerOptions.for_table("data", "fn.x", mode="outbox"))
    assert "gman_do_background" not in outbox and "DECLARE" not in outbox
    assert outbox.count("INSERT INTO `db`.`gearsync_spool` (`function`, `payload`) VALUES ('fn.x', IFNULL(CONCAT(") == 1
    assert outbox.count("INSERT INTO `db`.`gearsync_spool` (`function`, `payload`) VALUES ('fn.x', CONCAT(") == 1


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="--mode: 'sync'"):
        TriggerOptions.for_table("t", mode="sync")
    with pytest.raises(ConfigError, match="--on-enqueue-failure: 'retry'"):
        TriggerOptions.for_table("t", on_enqueue_failure="retry")
    with pytest.raises(ConfigError, match="--function"):
        TriggerOptions.for_table("t", "has\ttab")
    # A table name with spaces gives a valid default function name.
    assert TriggerOptions.for_table("a b").function == "gearsync.a b"


def test_fail_message_is_bounded_and_a_plain_literal() -> None:
    msg = not_queued_message("x" * 64)
    assert len(msg) <= 128 and msg.endswith("not queued: gearmand unreachable")
    assert "\\" not in not_queued_message("a\\b\nc")
    schema = table("a\\b", [col("id")], ("id",))
    sql = create_trigger_sql(schema, "INSERT", TriggerOptions.for_table("ab", on_enqueue_failure="fail"))
    assert "MESSAGE_TEXT = 'gearsync: change to a?b not queued: gearmand unreachable'" in sql


def test_trigger_names() -> None:
    names = trigger_names("data")
    assert names == {"INSERT": "gearsync_data_ai", "UPDATE": "gearsync_data_au", "DELETE": "gearsync_data_ad"}
    long_a, long_b = "a" * 64, "a" * 63 + "b"
    for name in list(trigger_names(long_a).values()) + list(trigger_names(long_b).values()):
        assert len(name) <= 64
    assert trigger_names(long_a) == trigger_names(long_a)            # deterministic
    assert trigger_names(long_a)["INSERT"] != trigger_names(long_b)["INSERT"]
    assert len(set(trigger_names(long_a).values())) == 3


def test_follows_and_script() -> None:
    schema = table("data$$", [col("id")], ("id",))
    sql = create_trigger_sql(schema, "UPDATE", TriggerOptions.for_table("data"), follows="user`s trigger")
    assert "FOR EACH ROW\nFOLLOWS `user``s trigger`\nBEGIN" in sql
    script = install_script(schema, TriggerOptions.for_table("data"), {e: None for e in EVENTS})
    assert script.count("DELIMITER") == 2 and "DELIMITER $$" not in script  # $$ is in the name
    assert "SET NAMES utf8mb4;" in script
    assert _delimiter("a $$ b // c ;; d") == "$gearsync$"


def test_file_stem() -> None:
    assert file_stem("data") == "data"
    stem = file_stem("../etc/passwd")
    assert "/" not in stem and not stem.startswith(".")
    assert file_stem("a b") != file_stem("a_b")
