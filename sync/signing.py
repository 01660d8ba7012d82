"""Signed jobs: HMAC-SHA256 over each job's function and payload with a shared key.

gearmand has no authentication, so whoever reaches its port could submit a change. With a key,
every producer (the UDF, sync-relay, sync-binlog --sink gearman, sync-bench) signs what it submits
and sync-worker refuses — dead letter, before any parsing — what does not carry a valid signature.

    keys = load_keys()                       # GEARSYNC_JOB_KEY, GEARSYNC_JOB_KEY_OLD; ConfigError if bad
    signed = keys.signer.sign(b"gearsync.data", payload)   # producers: the current key only
    payload = keys.verifier.open(b"gearsync.data", signed)  # workers: current + old keys;
                                                            # SignatureError("bad signature"/"unsigned job")

Byte format (docs/security.md), ASCII header then the payload bytes unchanged:

    gs1.<kid>.<mac>.<payload>
    kid = hex(SHA-256(key)[:4])                           8 lowercase hex digits: which key signed
    mac = hex(HMAC-SHA256(key, function || 0x00 || payload))   64 lowercase hex digits

A payload is a JSON object (it starts with '{' or blank), so a job is signed exactly when it
starts with "gs1.". Keys: 16 to 1024 printable ASCII characters, no blank or comma
(`openssl rand -hex 32`); GEARSYNC_JOB_KEY_OLD is a comma-separated list of keys still accepted
while producers move to the new one. Without any key: jobs are not signed, a signed job's header
is removed unchecked (it cannot be verified), and each command says so once at start
(`job_signing_off`). Key text never appears in a log line or an error.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from sync.errors import ConfigError, PayloadError

__all__ = [
    "ENV_KEY",
    "ENV_KEY_OLD",
    "HEADER_LEN",
    "KEY_FILE_NAME",
    "REASON_BAD_SIGNATURE",
    "REASON_UNSIGNED",
    "JobKey",
    "JobKeys",
    "SignatureError",
    "Signer",
    "Verifier",
    "check_key_text",
    "load_keys",
]

log = structlog.get_logger(__name__)

ENV_KEY = "GEARSYNC_JOB_KEY"
ENV_KEY_OLD = "GEARSYNC_JOB_KEY_OLD"
KEY_FILE_NAME = "gearsync_udf.key"  # the UDF's copy of the key, beside the library in @@plugin_dir
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 1024

REASON_BAD_SIGNATURE = "bad signature"
REASON_UNSIGNED = "unsigned job"

MAGIC = b"gs1."
_KID_HEX = 8
_MAC_HEX = 64
HEADER_LEN = len(MAGIC) + _KID_HEX + 1 + _MAC_HEX + 1  # 78 bytes before the payload
_KID_END = len(MAGIC) + _KID_HEX  # the '.' after the key id
_MAX_CACHED_FUNCTIONS = 256


class SignatureError(PayloadError):
    """A job refused by the signature check; str() is the dead-letter reason."""


def check_key_text(text: str, where: str) -> bytes:
    """The key's bytes, or ConfigError naming `where` (never the key itself)."""
    raw = text.encode("utf-8", "replace")
    if not MIN_KEY_BYTES <= len(raw) <= MAX_KEY_BYTES:
        raise ConfigError(f"{where}: a key of {len(raw)} bytes; expected {MIN_KEY_BYTES} to {MAX_KEY_BYTES} "
                          "printable ASCII characters (e.g. `openssl rand -hex 32`)")
    if any(not 0x21 <= b <= 0x7E or b == 0x2C for b in raw):
        raise ConfigError(f"{where}: the key has a blank, comma or non-ASCII character; expected printable "
                          "ASCII without blanks or commas (e.g. `openssl rand -hex 32`)")
    return raw


class JobKey:
    """One key: its id, and SHA-256 states after the HMAC pad blocks (RFC 2104), copied per job; the
    inner state after the function name and its NUL is kept per function (a process serves a few)."""

    __slots__ = ("kid", "_inner", "_outer", "_by_function")

    def __init__(self, secret: bytes) -> None:
        self.kid = hashlib.sha256(secret).hexdigest()[:_KID_HEX].encode("ascii")
        block = (hashlib.sha256(secret).digest() if len(secret) > 64 else secret).ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self._by_function: dict[bytes, Any] = {}

    def mac(self, function: bytes, payload: bytes) -> bytes:
        """hex(HMAC-SHA256(key, function || 0x00 || payload)) as ASCII bytes."""
        state = self._by_function.get(function)
        if state is None:
            state = self._inner.copy()
            state.update(function + b"\0")
            if len(self._by_function) < _MAX_CACHED_FUNCTIONS:
                self._by_function[function] = state
        inner = state.copy()
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode("ascii")

    def __repr__(self) -> str:  # never the secret
        return f"JobKey(kid={self.kid.decode()})"


class Signer:
    """Signs with one key (the current one)."""

    __slots__ = ("key", "_prefix")

    def __init__(self, key: JobKey) -> None:
        self.key = key
        self._prefix = MAGIC + key.kid + b"."

    def sign(self, function: bytes, payload: bytes) -> bytes:
        return b"".join((self._prefix, self.key.mac(function, payload), b".", payload))


class Verifier:
    """Accepts jobs signed with any of `keys`; with no keys, accepts every job (header removed)."""

    __slots__ = ("keys",)

    def __init__(self, keys: list[JobKey]) -> None:
        self.keys = {k.kid: k for k in keys}

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def open(self, function: bytes, workload: bytes) -> bytes:
        """The payload of a job; SignatureError when it is not validly signed and a key is set."""
        if workload[:4] != MAGIC:
            if self.keys:
                raise SignatureError(REASON_UNSIGNED)
            return workload
        if len(workload) < HEADER_LEN or workload[_KID_END] != 0x2E or workload[HEADER_LEN - 1] != 0x2E:
            raise SignatureError(REASON_BAD_SIGNATURE)
        payload = workload[HEADER_LEN:]
        if not self.keys:
            return payload
        key = self.keys.get(workload[4:_KID_END])
        # compare_digest: constant time; the computed mac is lowercase hex, so anything else differs
        if key is None or not hmac.compare_digest(key.mac(function, payload), workload[_KID_END + 1:HEADER_LEN - 1]):
            raise SignatureError(REASON_BAD_SIGNATURE)
        return payload


@dataclass(frozen=True)
class JobKeys:
    """The keys of one command: `signer` (None without a key) and `verifier`."""

    current: JobKey | None
    old: tuple[JobKey, ...] = ()

    @property
    def signer(self) -> Signer | None:
        return Signer(self.current) if self.current is not None else None

    @property
    def verifier(self) -> Verifier:
        return Verifier(([self.current] if self.current is not None else []) + list(self.old))

    def warn_if_off(self, command: str) -> None:
        """One warning line when there is no key (call once, at the start of a command that
        produces or consumes jobs)."""
        if self.current is None:
            log.warning("job_signing_off", command=command,
                        reason=f"{ENV_KEY} is not set: jobs are neither signed nor checked, and anything that "
                               "reaches gearmand can submit a change (docs/security.md)")


def load_keys(env: Mapping[str, str] | None = None) -> JobKeys:
    """GEARSYNC_JOB_KEY (signs and verifies) and GEARSYNC_JOB_KEY_OLD (comma-separated, verify only).
    ConfigError for a bad key or an old key without a current one."""
    env = os.environ if env is None else env
    text = env.get(ENV_KEY, "")
    old_text = env.get(ENV_KEY_OLD, "")
    current = JobKey(check_key_text(text, ENV_KEY)) if text else None
    old = tuple(JobKey(check_key_text(item, f"{ENV_KEY_OLD} entry {i + 1}"))
                for i, item in enumerate(old_text.split(",")) if old_text)
    if old and current is None:
        raise ConfigError(f"{ENV_KEY_OLD} is set but {ENV_KEY} is not; expected the current key in {ENV_KEY} "
                          f"and only retiring keys in {ENV_KEY_OLD}")
    return JobKeys(current, old)
