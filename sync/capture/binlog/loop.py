"""The binlog dump connection read below mysql-replication's fetchone: the C event loop
(sync/capture/binlog/_binloop.c, the Loop type of the _rowdecode extension) and, for the events it
hands back, the library's own event object.

    dump = DumpLoop(stream)        # after stream.fetchone() returned (the dump is connected)
    for item in dump.read(): ...   # the items of _binloop.c's docstring
    dump.library_event(payload)    # an item-4 packet -> the library's event (or None: filtered)

mysql-replication keeps the handshake, registration, COM_BINLOG_DUMP(_GTID), checksum negotiation
and every event the loop does not handle (QUERY, ROTATE, FORMAT_DESCRIPTION, a new TABLE_MAP, ...):
those are built from the packet's bytes with the stream's own arguments and the stream's bookkeeping
(its table map, binlog file and position, format description) is kept the way fetchone keeps it.
The bytes are read from pymysql's buffered socket file (read1: what it buffered already, or one read
of the socket; TLS too), so the reader's quiet hook on the socket file's readinto still sees every
read that would wait.
"""

from __future__ import annotations

from typing import Any

_rowdecode: Any
try:
    from sync.capture.binlog import _rowdecode
except ImportError:  # not built: the reader keeps the library's fetchone (decoders.select_decoder)
    _rowdecode = None

__all__ = ["DumpLoop", "MAX_PACKET", "READ_SIZE"]

# One binlog event can be as large as the server's max_allowed_packet (at most 1 GiB).
MAX_PACKET = (1 << 30) + (1 << 16)
READ_SIZE = 1 << 16

_P = "_BinLogStreamReader__"


class DumpLoop:
    """The C event loop over one connected BinLogStreamReader's dump connection."""

    __slots__ = ("stream", "loop", "checksum", "_read1", "_encoding")

    def __init__(self, stream: Any) -> None:
        conn = stream._stream_connection
        self.stream = stream
        self.checksum = bool(getattr(stream, _P + "use_checksum"))
        self.loop: Any = _rowdecode.Loop(self.checksum, MAX_PACKET)
        self._read1 = conn._rfile.read1
        self._encoding = conn.encoding

    def read(self) -> list[tuple[Any, ...]]:
        """The items of the bytes the connection has now (waits for at least one byte)."""
        loop = self.loop
        if loop.paused:   # the events after one handed to Python are fed already
            data = b""
        else:
            data = self._read1(READ_SIZE)
            if not data:
                raise ConnectionError("binlog stream ended (server closed the dump)")
        items: list[tuple[Any, ...]] = loop.feed(data)
        return items

    def body(self, payload: bytes) -> bytes:
        """The event body of a packet (after the OK byte and the 19-byte header; no checksum)."""
        return payload[20:len(payload) - 4] if self.checksum else payload[20:]

    def library_event(self, payload: bytes) -> Any:
        """mysql-replication's event of the packet `payload` (what fetchone would have built), with
        the stream's bookkeeping done; None when the library filters it out. A TABLE_MAP event is
        returned even though the reader does not ask for it (the reader registers its table)."""
        from pymysql.protocol import MysqlPacket
        from pymysqlreplication.constants.BINLOG import FORMAT_DESCRIPTION_EVENT, ROTATE_EVENT, TABLE_MAP_EVENT
        from pymysqlreplication.packet import BinLogPacketWrapper

        s = self.stream

        def g(name: str) -> Any:
            return getattr(s, _P + name)

        w = BinLogPacketWrapper(
            MysqlPacket(payload, self._encoding), s.table_map, s._ctl_connection, s.mysql_version,
            g("use_checksum"), g("allowed_events_in_packet"), g("only_tables"), g("ignored_tables"),
            g("only_schemas"), g("ignored_schemas"), g("freeze_schema"), g("ignore_decode_errors"),
            g("verify_checksum"), g("optional_meta_data"), g("enable_logging"), g("use_column_name_cache"),
            g("post_header_lengths"),
        )
        ev = w.event
        if w.event_type == ROTATE_EVENT:
            s.log_pos, s.log_file = ev.position, ev.next_binlog
            if w.timestamp != 0:
                s.table_map = {}
        elif w.log_pos:
            s.log_pos = w.log_pos
        if ev is None:
            return None
        if w.event_type == FORMAT_DESCRIPTION_EVENT:
            s.mysql_version = ev.mysql_version
            setattr(s, _P + "post_header_lengths", ev.post_header_len)
        elif w.event_type == TABLE_MAP_EVENT:
            s.table_map[ev.table_id] = ev.get_table()
            return ev
        return ev if ev.__class__ in g("allowed_events") else None
