"""sync.signing: the byte format, verification, rotation and key checks (no servers needed)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from sync.errors import ConfigError
from sync.signing import (
    HEADER_LEN,
    REASON_BAD_SIGNATURE,
    REASON_UNSIGNED,
    JobKey,
    JobKeys,
    SignatureError,
    Signer,
    Verifier,
    load_keys,
)

KEY = "k" * 32
OLD = "0123456789abcdef0123456789abcdef"
FN = b"gearsync.data"
PAYLOAD = b'{"v":1,"table":"data","op":"update","pk":{"id":1},"row":{"id":1},"version":5,"source":"trigger"}'


def test_format_is_the_documented_one() -> None:
    signed = Signer(JobKey(KEY.encode())).sign(FN, PAYLOAD)
    kid = hashlib.sha256(KEY.encode()).hexdigest()[:8]
    mac = hmac.new(KEY.encode(), FN + b"\0" + PAYLOAD, hashlib.sha256).hexdigest()
    assert signed == f"gs1.{kid}.{mac}.".encode() + PAYLOAD
    assert len(signed) - len(PAYLOAD) == HEADER_LEN == 78


def test_signed_job_opens_to_its_payload() -> None:
    keys = load_keys({"GEARSYNC_JOB_KEY": KEY})
    assert keys.signer is not None
    assert keys.verifier.open(FN, keys.signer.sign(FN, PAYLOAD)) == PAYLOAD


@pytest.mark.parametrize("tamper", [
    lambda s: s[:-1] + b"}" if not s.endswith(b"}") else s[:-2] + b"9}",   # payload changed
    lambda s: s[:20] + (b"0" if s[20:21] != b"0" else b"1") + s[21:],      # mac changed
    lambda s: s[:HEADER_LEN - 1] + b"x" + s[HEADER_LEN:],                 # header broken
    lambda s: s[:40],                                                      # truncated
])
def test_tampered_job_is_refused(tamper) -> None:
    keys = load_keys({"GEARSYNC_JOB_KEY": KEY})
    assert keys.signer is not None
    signed = keys.signer.sign(FN, PAYLOAD)
    with pytest.raises(SignatureError, match=f"^{REASON_BAD_SIGNATURE}$"):
        keys.verifier.open(FN, tamper(signed))


def test_signature_binds_the_function() -> None:
    keys = load_keys({"GEARSYNC_JOB_KEY": KEY})
    assert keys.signer is not None
    with pytest.raises(SignatureError, match=REASON_BAD_SIGNATURE):
        keys.verifier.open(b"gearsync.other", keys.signer.sign(FN, PAYLOAD))


def test_unsigned_and_foreign_key_jobs_are_refused_with_a_key() -> None:
    verifier = load_keys({"GEARSYNC_JOB_KEY": KEY}).verifier
    with pytest.raises(SignatureError, match=f"^{REASON_UNSIGNED}$"):
        verifier.open(FN, PAYLOAD)
    forged = Signer(JobKey(b"x" * 32)).sign(FN, PAYLOAD)
    with pytest.raises(SignatureError, match=f"^{REASON_BAD_SIGNATURE}$"):
        verifier.open(FN, forged)


def test_rotation_accepts_old_key_until_it_is_removed() -> None:
    by_old = Signer(JobKey(OLD.encode())).sign(FN, PAYLOAD)
    rotating = load_keys({"GEARSYNC_JOB_KEY": KEY, "GEARSYNC_JOB_KEY_OLD": OLD})
    assert rotating.verifier.open(FN, by_old) == PAYLOAD
    assert rotating.signer is not None and rotating.signer.key.kid == JobKey(KEY.encode()).kid  # signs with the new
    with pytest.raises(SignatureError):
        load_keys({"GEARSYNC_JOB_KEY": KEY}).verifier.open(FN, by_old)


def test_without_a_key_jobs_pass_unchanged_and_headers_are_removed() -> None:
    keys = load_keys({})
    assert keys.signer is None and not keys.verifier.required
    assert keys.verifier.open(FN, PAYLOAD) == PAYLOAD
    assert keys.verifier.open(FN, Signer(JobKey(KEY.encode())).sign(FN, PAYLOAD)) == PAYLOAD


@pytest.mark.parametrize("env, named", [
    ({"GEARSYNC_JOB_KEY": "short"}, "GEARSYNC_JOB_KEY: a key of 5 bytes"),
    ({"GEARSYNC_JOB_KEY": "with space " * 3}, "GEARSYNC_JOB_KEY: the key has a blank"),
    ({"GEARSYNC_JOB_KEY": KEY, "GEARSYNC_JOB_KEY_OLD": OLD + ",,"}, "GEARSYNC_JOB_KEY_OLD entry 2"),
    ({"GEARSYNC_JOB_KEY_OLD": OLD}, "GEARSYNC_JOB_KEY is not"),
])
def test_bad_keys_are_named_never_shown(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_keys(env)
    message = str(info.value)
    assert named in message
    for secret in env.values():
        assert secret.strip(",") not in message


def test_key_never_in_repr() -> None:
    keys = JobKeys(JobKey(KEY.encode()))
    assert KEY not in repr(keys) and KEY not in repr(keys.current)


def test_verifier_keys_by_id() -> None:
    verifier = Verifier([JobKey(KEY.encode()), JobKey(OLD.encode())])
    assert verifier.required
    assert len(verifier.keys) == 2
