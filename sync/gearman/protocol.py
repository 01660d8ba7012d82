"""The Gearman wire protocol, without any I/O.

Binary packets (both directions)::

    magic     4 bytes   b"\\0REQ" (client/worker -> server) or b"\\0RES" (server -> client/worker)
    type      uint32 BE  a PacketType
    size      uint32 BE  length of the payload that follows
    payload   the arguments joined by NUL; the last argument is raw data and may itself contain NULs

Every packet type has a fixed argument count (ARG_COUNTS). The parser splits the payload into exactly that many
arguments, so a data argument keeps its NUL bytes and a packet with too few separators is rejected.

The text admin protocol (``status``, ``workers``, ``version``, ``show jobs`` ...) shares the port; its replies are
parsed here by pure functions over already-received lines; the sockets live in admin.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from sync.errors import ProtocolError

__all__ = [
    "ARG_COUNTS",
    "DEFAULT_MAX_PACKET_BYTES",
    "HEADER_BYTES",
    "MAX_FUNCTION_BYTES",
    "MAX_UNIQUE_BYTES",
    "REQ_MAGIC",
    "RES_MAGIC",
    "FunctionStatus",
    "JobInfo",
    "Packet",
    "PacketParser",
    "PacketType",
    "encode_function",
    "encode_unique",
    "WorkerInfo",
    "pack_packet",
    "pack_request",
    "pack_response",
    "pack_submit",
    "pack_work_complete",
    "parse_admin_error",
    "parse_show_jobs",
    "parse_show_unique_jobs",
    "parse_status",
    "parse_version",
    "parse_workers",
]

REQ_MAGIC = b"\0REQ"
RES_MAGIC = b"\0RES"
HEADER_BYTES = 12
# The largest job a capture can hand over: a 1 GiB payload (MariaDB's largest max_allowed_packet, the
# UDF's max_payload cap) plus function, unique and handle. The parser buffers only what a packet really
# holds; the limit stops a garbage size field (up to 4 GiB) before anything is buffered.
DEFAULT_MAX_PACKET_BYTES = (1 << 30) + (64 << 10)
# gearmand limits (libgearman/constants: GEARMAN_MAX_UNIQUE_SIZE, GEARMAN_FUNCTION_MAX_SIZE); above these it
# answers ERROR ARGUMENT_TOO_LARGE.
MAX_UNIQUE_BYTES = 64
MAX_FUNCTION_BYTES = 512


def encode_function(function: str | bytes) -> bytes:
    """Function name as bytes; must be 1..512 bytes, without NUL."""
    return _encode_argument(function, MAX_FUNCTION_BYTES, "function name")


def encode_unique(unique: str | bytes) -> bytes:
    """Unique id as bytes; must be 1..64 bytes (gearmand's limit), without NUL."""
    return _encode_argument(unique, MAX_UNIQUE_BYTES, "unique id")


def _encode_argument(value: str | bytes, limit: int, what: str) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if not raw or len(raw) > limit or b"\0" in raw:
        raise ValueError(f"{what} must be 1..{limit} bytes without NUL, got {raw[:80]!r} ({len(raw)} bytes)")
    return raw


class PacketType(IntEnum):
    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


_T = PacketType
# Number of NUL-separated arguments of each type; the last one is raw (may contain NUL).
ARG_COUNTS: dict[PacketType, int] = {
    _T.CAN_DO: 1,  # function
    _T.CANT_DO: 1,  # function
    _T.RESET_ABILITIES: 0,
    _T.PRE_SLEEP: 0,
    _T.NOOP: 0,
    _T.SUBMIT_JOB: 3,  # function, unique, data
    _T.JOB_CREATED: 1,  # handle
    _T.GRAB_JOB: 0,
    _T.NO_JOB: 0,
    _T.JOB_ASSIGN: 3,  # handle, function, data
    _T.WORK_STATUS: 3,  # handle, numerator, denominator
    _T.WORK_COMPLETE: 2,  # handle, data
    _T.WORK_FAIL: 1,  # handle
    _T.GET_STATUS: 1,  # handle
    _T.ECHO_REQ: 1,  # data
    _T.ECHO_RES: 1,  # data
    _T.SUBMIT_JOB_BG: 3,
    _T.ERROR: 2,  # code, text
    _T.STATUS_RES: 5,  # handle, known, running, numerator, denominator
    _T.SUBMIT_JOB_HIGH: 3,
    _T.SET_CLIENT_ID: 1,  # client id
    _T.CAN_DO_TIMEOUT: 2,  # function, timeout
    _T.ALL_YOURS: 0,
    _T.WORK_EXCEPTION: 2,  # handle, data
    _T.OPTION_REQ: 1,  # option name
    _T.OPTION_RES: 1,  # option name
    _T.WORK_DATA: 2,  # handle, data
    _T.WORK_WARNING: 2,  # handle, data
    _T.GRAB_JOB_UNIQ: 0,
    _T.JOB_ASSIGN_UNIQ: 4,  # handle, function, unique, data
    _T.SUBMIT_JOB_HIGH_BG: 3,
    _T.SUBMIT_JOB_LOW: 3,
    _T.SUBMIT_JOB_LOW_BG: 3,
    _T.SUBMIT_JOB_SCHED: 8,  # function, unique, minute, hour, day of month, month, day of week, data
    _T.SUBMIT_JOB_EPOCH: 4,  # function, unique, epoch, data
    _T.GRAB_JOB_ALL: 0,
    _T.JOB_ASSIGN_ALL: 5,  # handle, function, unique, reducer, data
    _T.GET_STATUS_UNIQUE: 1,  # unique
    _T.STATUS_RES_UNIQUE: 6,  # unique, known, running, numerator, denominator, client count
}
assert set(ARG_COUNTS) == set(PacketType)

# Dense lookup tables indexed by the type number (faster than dict/enum lookups on the hot path).
_TABLE_SIZE = max(PacketType) + 1
_TYPE_BY_NUMBER: list[PacketType | None] = [None] * _TABLE_SIZE
_ARGC_BY_NUMBER: list[int] = [-1] * _TABLE_SIZE
for _t, _n in ARG_COUNTS.items():
    _TYPE_BY_NUMBER[_t] = _t
    _ARGC_BY_NUMBER[_t] = _n
del _t, _n

_HEADER = struct.Struct(">4sII")
_HEADER_INTS = struct.Struct(">III")


class Packet:
    """One binary packet: its type and its arguments (a tuple of bytes, exactly ARG_COUNTS[type] long)."""

    __slots__ = ("type", "args")

    def __init__(self, type: PacketType, args: tuple[bytes, ...] | list[bytes] = ()) -> None:
        self.type = type
        self.args = tuple(args)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Packet):
            return NotImplemented
        return self.type == other.type and self.args == other.args

    def __hash__(self) -> int:
        return hash((self.type, self.args))

    def __repr__(self) -> str:
        shown = ", ".join(repr(a) if len(a) <= 40 else f"<{len(a)} bytes>" for a in self.args)
        return f"Packet({self.type.name}, ({shown}))"


def _to_bytes(arg: bytes | bytearray | memoryview | str | int) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, int) and not isinstance(arg, bool):
        return str(arg).encode("ascii")
    raise TypeError(f"packet argument must be bytes, str or int, got {type(arg).__name__}")


def pack_packet(magic: bytes, type: int, *args: bytes | str | int) -> bytes:
    """Encode one packet with the given magic. Checks the argument count and that no argument but the last
    contains a NUL (it would shift the arguments on the other side)."""
    if magic not in (REQ_MAGIC, RES_MAGIC):
        raise ValueError(f"magic must be {REQ_MAGIC!r} or {RES_MAGIC!r}, got {magic!r}")
    if not 0 <= type < _TABLE_SIZE or _TYPE_BY_NUMBER[type] is None:
        raise ProtocolError(f"unknown packet type {type}")
    expected = _ARGC_BY_NUMBER[type]
    if len(args) != expected:
        raise ProtocolError(
            f"{PacketType(type).name} takes {expected} argument(s), got {len(args)}"
        )
    encoded = [_to_bytes(a) for a in args]
    for i, a in enumerate(encoded[:-1]):
        if b"\0" in a:
            raise ProtocolError(
                f"{PacketType(type).name} argument {i} contains a NUL byte; only the last argument may"
            )
    payload = b"\0".join(encoded)
    return _HEADER.pack(magic, type, len(payload)) + payload


def pack_request(type: int, *args: bytes | str | int) -> bytes:
    """Encode a client/worker -> server packet: ``pack_request(PacketType.CAN_DO, b"fn")``."""
    return pack_packet(REQ_MAGIC, type, *args)


def pack_response(type: int, *args: bytes | str | int) -> bytes:
    """Encode a server -> client packet (used by tests and tools)."""
    return pack_packet(RES_MAGIC, type, *args)


def pack_work_complete(handle: bytes, data: bytes = b"") -> bytes:
    """Fast path for the worker's hot loop: a WORK_COMPLETE packet (handle must not contain NUL; the caller's
    handle came from the server, which never puts a NUL in it)."""
    return (
        _HEADER.pack(REQ_MAGIC, PacketType.WORK_COMPLETE, len(handle) + 1 + len(data))
        + handle
        + b"\0"
        + data
    )


def pack_submit(type: int, function: bytes, unique: bytes, workload: bytes) -> bytes:
    """Fast path for SUBMIT_JOB* packets (3 arguments). The caller guarantees ``function`` and ``unique`` hold
    no NUL (the client validates them once); ``workload`` may be any bytes."""
    return (
        _HEADER.pack(REQ_MAGIC, type, len(function) + len(unique) + 2 + len(workload))
        + function
        + b"\0"
        + unique
        + b"\0"
        + workload
    )


class PacketParser:
    """Incremental parser: ``feed(chunk)`` returns every packet completed by the chunk, in order.

    Any split of the stream works, down to one byte per feed; an incomplete packet stays buffered until its
    remaining bytes arrive. Errors raise ProtocolError and poison the parser (the stream position is lost, so the
    connection must be closed):

    * wrong magic (the first bytes are shown in hex), checked as soon as the first byte of a header is there;
    * unknown packet type (its number is named);
    * a size field above ``max_packet_bytes``, raised as soon as the 12-byte header is complete, before any
      payload is buffered;
    * a payload with fewer NUL separators than the type's argument count (or any payload for a 0-arg type).

    The internal buffer therefore never holds more than one header + ``max_packet_bytes`` + one fed chunk.
    """

    __slots__ = ("_buf", "_magic", "_magic_int", "max_packet_bytes", "_error")

    def __init__(self, magic: bytes = RES_MAGIC, max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES) -> None:
        if magic not in (REQ_MAGIC, RES_MAGIC):
            raise ValueError(f"magic must be {REQ_MAGIC!r} or {RES_MAGIC!r}, got {magic!r}")
        if max_packet_bytes < 0:
            raise ValueError(f"max_packet_bytes must be >= 0, got {max_packet_bytes!r}")
        self._buf = bytearray()
        self._magic = magic
        self._magic_int = int.from_bytes(magic, "big")
        self.max_packet_bytes = max_packet_bytes
        self._error: ProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as packets."""
        return len(self._buf)

    def _fail(self, message: str) -> ProtocolError:
        self._error = ProtocolError(message)
        self._buf = bytearray()
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        if self._error is not None:
            raise ProtocolError(f"parser already failed: {self._error}")
        buf = self._buf
        buf += data
        end = len(buf)
        pos = 0
        out: list[Packet] = []
        append = out.append
        unpack_from = _HEADER_INTS.unpack_from
        magic_int = self._magic_int
        limit = self.max_packet_bytes
        types = _TYPE_BY_NUMBER
        argcs = _ARGC_BY_NUMBER
        ntypes = _TABLE_SIZE
        while end - pos >= HEADER_BYTES:
            magic, ptype, size = unpack_from(buf, pos)
            if magic != magic_int:
                head = bytes(buf[pos : pos + HEADER_BYTES]).hex(" ")
                raise self._fail(f"bad packet magic: expected {self._magic.hex(' ')}, got bytes {head}")
            if ptype >= ntypes or types[ptype] is None:
                raise self._fail(f"unknown packet type {ptype} (size field {size})")
            if size > limit:
                raise self._fail(
                    f"{types[ptype].name} packet of {size} bytes exceeds max_packet_bytes={limit}"
                )
            start = pos + HEADER_BYTES
            stop = start + size
            if stop > end:
                break
            argc = argcs[ptype]
            if argc == 0:
                if size:
                    raise self._fail(f"{types[ptype].name} takes no arguments, got a {size}-byte payload")
                args: tuple[bytes, ...] | list[bytes] = ()
            elif argc == 1:
                args = (bytes(buf[start:stop]),)
            else:
                args = bytes(buf[start:stop]).split(b"\0", argc - 1)
                if len(args) != argc:
                    raise self._fail(
                        f"{types[ptype].name} needs {argc} NUL-separated arguments, got {len(args)} "
                        f"in a {size}-byte payload"
                    )
            pkt = Packet.__new__(Packet)
            pkt.type = types[ptype]
            pkt.args = tuple(args)
            append(pkt)
            pos = stop
        if pos:
            del buf[:pos]
        if buf:
            # Reject a wrong magic as soon as its first byte is visible, not only once 12 bytes arrived.
            n = min(len(buf), 4)
            if buf[:n] != self._magic[:n]:
                head = bytes(buf[:HEADER_BYTES]).hex(" ")
                raise self._fail(f"bad packet magic: expected {self._magic.hex(' ')}, got bytes {head}")
        return out


# ---------------------------------------------------------------------------------------------------------------
# Text admin protocol. Commands are single lines ending in "\n"; list replies are lines ending with a line ".";
# single-line replies start with "OK "; errors are "ERR <code> <url-encoded text>".


@dataclass(frozen=True, slots=True)
class FunctionStatus:
    """One line of ``status``: ``queued`` counts all jobs of the function, running ones included."""

    name: str
    queued: int
    running: int
    workers: int


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One line of ``workers``: ``fd ip client_id : function function ...`` (client_id "-" when unset;
    fd -1 for a connection gearmand is closing, seen in 1.1.20 while a client disconnects)."""

    fd: int
    ip: str
    client_id: str
    functions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class JobInfo:
    """One line of ``show jobs``: ``handle retries ignore_job job_queued``."""

    handle: str
    retries: int
    ignore_job: bool
    queued: bool


def parse_admin_error(line: str) -> tuple[str, str] | None:
    """``ERR CODE url+encoded+text`` -> (code, text); None when the line is not an error."""
    if not line.startswith("ERR"):
        return None
    parts = line.rstrip("\r\n").split(" ", 2)
    code = parts[1] if len(parts) > 1 else ""
    text = parts[2].replace("+", " ") if len(parts) > 2 else ""
    return code, text


def _split_tab_line(line: str, n: int, command: str) -> list[str]:
    parts = line.split("\t")
    if len(parts) != n:
        raise ProtocolError(f"{command}: expected {n} tab-separated fields, got {len(parts)} in {line!r}")
    return parts


def _to_int(value: str, what: str, line: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ProtocolError(f"{what}: expected an integer, got {value!r} in {line!r}") from None
    if number < 0:
        raise ProtocolError(f"{what}: expected a count >= 0, got {number} in {line!r}")
    return number


def parse_status(lines: list[str]) -> list[FunctionStatus]:
    """Lines of a ``status`` reply, without the final "." line."""
    out = []
    for line in lines:
        name, total, running, workers = _split_tab_line(line, 4, "status")
        out.append(
            FunctionStatus(
                name=name,
                queued=_to_int(total, "status total", line),
                running=_to_int(running, "status running", line),
                workers=_to_int(workers, "status workers", line),
            )
        )
    return out


def parse_workers(lines: list[str]) -> list[WorkerInfo]:
    """Lines of a ``workers`` reply, without the final "." line."""
    out = []
    for line in lines:
        head, sep, funcs = line.partition(" :")
        if not sep:
            raise ProtocolError(f"workers: expected 'fd ip client_id : functions', got {line!r}")
        fields = head.split(" ")
        if len(fields) != 3:
            raise ProtocolError(f"workers: expected 'fd ip client_id' before ':', got {head!r}")
        fd, ip, client_id = fields
        out.append(
            WorkerInfo(
                fd=-1 if fd == "-1" else _to_int(fd, "workers fd", line),
                ip=ip,
                client_id=client_id,
                functions=tuple(funcs.split()),
            )
        )
    return out


def parse_show_jobs(lines: list[str]) -> list[JobInfo]:
    """Lines of a ``show jobs`` reply, without the final "." line."""
    out = []
    for line in lines:
        handle, retries, ignore, queued = _split_tab_line(line, 4, "show jobs")
        out.append(
            JobInfo(
                handle=handle,
                retries=_to_int(retries, "show jobs retries", line),
                ignore_job=_to_int(ignore, "show jobs ignore_job", line) != 0,
                queued=_to_int(queued, "show jobs job_queued", line) != 0,
            )
        )
    return out


def parse_show_unique_jobs(lines: list[str]) -> list[str]:
    """Lines of a ``show unique jobs`` reply (one unique id a line, "" for a job without one)."""
    return list(lines)


def parse_version(line: str) -> str:
    """``OK 1.1.20+ds`` -> ``1.1.20+ds``."""
    line = line.rstrip("\r\n")
    if not line.startswith("OK "):
        raise ProtocolError(f"version: expected 'OK <version>', got {line!r}")
    return line[3:]
