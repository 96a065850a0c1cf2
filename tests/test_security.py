"""Command security: Esper-compatible signing, keyring, verification and the nonce ledger.

The signing tests pin byte-compatibility with Esper's Leyline signing twice over: the
signature is recomputed by hand (hmac/hashlib/base64), and the signed payload is compared
with protobuf wire bytes encoded by hand, independently of the protobuf library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kasmina import commands, leyline
from kasmina.security import (
    INVALID_SIGNATURE,
    ISSUED_IN_FUTURE,
    KEY_ID_ANNOTATION,
    MAX_ANNOTATION_VALUE_CHARS,
    MAX_ANNOTATIONS,
    MAX_COMMAND_BYTES,
    MISSING_COMMAND_ID,
    MISSING_SIGNATURE,
    MISSING_TIMESTAMP,
    NONCE_REPLAYED,
    OVERSIZED_COMMAND,
    REASON_MESSAGES,
    REASONS,
    SIGNATURE_ANNOTATION,
    STALE_COMMAND,
    UNKNOWN_KEY,
    VERIFIER_UNAVAILABLE,
    KeyConfigError,
    Keyring,
    NonceLedger,
    Verifier,
    VerifierLimits,
    parse_secrets,
    sign,
    signature_of,
    signed_payload,
)
from kasmina.security import verify as verify_module

SECRET = b"test-secret-\x00\xff-bytes"
NOW = 1_700_000_000.0


class Clock:
    """A settable wall clock for deterministic freshness/TTL tests."""

    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_cmd(**overrides: object) -> leyline.AdaptationCommand:
    kwargs: dict = dict(seed_id="seed-a", blueprint_id="bp-1", parameters={"lr": 0.5},
                        annotations={"blend_mode": "CONVEX"}, issued_at=NOW, command_id="cmd-0001")
    kwargs.update(overrides)
    return commands.germinate(**kwargs)


def signed(key: bytes | str = SECRET, key_id: str | None = None, **overrides: object) -> leyline.AdaptationCommand:
    return sign(make_cmd(**overrides), key, key_id=key_id)


def verifier(ring: Keyring | None = None, clock: Clock | None = None, **kw: object) -> Verifier:
    return Verifier(Keyring(SECRET) if ring is None else ring, clock=clock or Clock(), **kw)


# -- hand encoding of protobuf wire format (independent of the protobuf library) -----------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def _ld(number: int, data: bytes | str) -> bytes:
    return _field(number, 2, data.encode() if isinstance(data, str) else data)


def _vi(number: int, value: int) -> bytes:
    return _field(number, 0, _varint(value))


# =========================================================================================
# Signing
# =========================================================================================

def test_signature_is_hand_computed_hmac_sha256_base64_of_deterministic_bytes() -> None:
    cmd = signed()
    unsigned = leyline.AdaptationCommand()
    unsigned.CopyFrom(cmd)
    del unsigned.annotations["signature"]
    payload = unsigned.SerializeToString(deterministic=True)
    expected = base64.b64encode(hmac.new(SECRET, payload, hashlib.sha256).digest()).decode("ascii")
    assert cmd.annotations["signature"] == expected
    assert len(expected) == 44 and expected.endswith("=")  # standard base64, padded
    assert signed_payload(cmd) == payload
    assert signature_of(cmd, SECRET) == expected


def test_signed_payload_equals_hand_encoded_wire_bytes() -> None:
    """Canonical field order and key-sorted map entries, as Esper serializes them."""
    cmd = make_cmd(annotations={"blend_mode": "CONVEX", "alpha_lo": "0.1"}, issued_by="tamiyo")
    sign(cmd, SECRET)
    seed_op = (_vi(1, 1) + _ld(2, "bp-1")
               + _ld(3, _ld(1, "lr") + _field(2, 5, bytes.fromhex("0000003f"))))  # 0.5f
    expected = (_vi(1, 1) + _ld(2, "cmd-0001") + _vi(3, 1) + _ld(4, "seed-a")
                + _ld(6, _vi(1, 1_700_000_000)) + _ld(7, "tamiyo") + _ld(10, seed_op)
                + _ld(20, _ld(1, "alpha_lo") + _ld(2, "0.1"))
                + _ld(20, _ld(1, "blend_mode") + _ld(2, "CONVEX")))
    assert signed_payload(cmd) == expected
    want = base64.b64encode(hmac.new(SECRET, expected, hashlib.sha256).digest()).decode()
    assert cmd.annotations["signature"] == want


def test_golden_signature_vector() -> None:
    """Literal vector (the signature was cross-checked with ``openssl dgst -sha256 -hmac``
    over these bytes): any change to the payload recipe or encoding breaks it."""
    cmd = make_cmd(annotations={"blend_mode": "CONVEX"}, issued_by="tamiyo")
    sign(cmd, "esper-shared-secret")
    assert signed_payload(cmd).hex() == (
        "08011208636d642d3030303118012206736565642d6132060880e2cfaa063a0674616d69796f5213"
        "0801120462702d311a090a026c72150000003fa201140a0a626c656e645f6d6f64651206434f4e564558")
    assert cmd.annotations["signature"] == "bB8k38+81rUhkKbcC8JHvIFYtYTQvgERSm8Jp/57yIA="


def test_esper_style_verification_accepts_kasmina_signature_and_vice_versa() -> None:
    """Esper verifies by deleting the signature in place, serializing, and restoring it."""
    ours = signed()
    sig = ours.annotations.pop("signature")
    esper_expected = base64.b64encode(
        hmac.new(SECRET, ours.SerializeToString(deterministic=True), hashlib.sha256).digest()).decode()
    ours.annotations["signature"] = sig
    assert hmac.compare_digest(esper_expected, sig)

    theirs = make_cmd(command_id="esper-1")
    theirs.annotations["signature"] = base64.b64encode(
        hmac.new(SECRET, theirs.SerializeToString(deterministic=True), hashlib.sha256).digest()).decode()
    assert verifier().check(theirs) is None


def test_sign_mutates_returns_and_replaces_previous_signature() -> None:
    cmd = make_cmd()
    out = sign(cmd, b"one")
    assert out is cmd
    first = cmd.annotations["signature"]
    sign(cmd, b"two")
    assert cmd.annotations["signature"] != first
    assert cmd.annotations["signature"] == signature_of(cmd, b"two")  # old sig not in payload
    assert signed_payload(cmd) == signed_payload(make_cmd())


def test_signed_payload_does_not_modify_the_command() -> None:
    cmd = signed()
    before = cmd.SerializeToString(deterministic=True)
    signed_payload(cmd)
    assert cmd.SerializeToString(deterministic=True) == before


def test_str_key_is_utf8_of_bytes_key() -> None:
    assert signature_of(make_cmd(), "clé") == signature_of(make_cmd(), "clé".encode())


@pytest.mark.parametrize("bad", [b"", "", bytearray()])
def test_empty_key_is_refused(bad: bytes | str) -> None:
    with pytest.raises(ValueError):
        sign(make_cmd(), bad)


def test_non_key_type_is_refused() -> None:
    with pytest.raises(TypeError):
        sign(make_cmd(), 123)  # type: ignore[arg-type]


def test_plain_key_adds_no_key_id_and_drops_a_stale_one() -> None:
    cmd = signed()
    assert KEY_ID_ANNOTATION not in cmd.annotations
    sign(cmd, b"k", key_id="k1")
    assert cmd.annotations[KEY_ID_ANNOTATION] == "k1"
    sign(cmd, SECRET)
    assert KEY_ID_ANNOTATION not in cmd.annotations
    assert verifier().check(cmd) is None


def test_key_id_is_inside_the_signed_payload() -> None:
    cmd = signed(b"k1-secret", key_id="k1")
    assert b"key_id" in signed_payload(cmd) and b"k1" in signed_payload(cmd)
    ring = Keyring({"k1": b"k1-secret", "k2": b"k1-secret"})  # same secret, other id
    v = verifier(ring)
    assert v.check(cmd) is None
    cmd.annotations[KEY_ID_ANNOTATION] = "k2"  # re-point without re-signing
    assert v.check(cmd) == INVALID_SIGNATURE


@pytest.mark.parametrize("key_id", ["", 5])
def test_sign_rejects_bad_key_id(key_id: object) -> None:
    with pytest.raises(ValueError):
        sign(make_cmd(), SECRET, key_id=key_id)  # type: ignore[arg-type]


def test_annotation_insertion_order_does_not_matter() -> None:
    a, b = make_cmd(annotations={}), make_cmd(annotations={})
    items = [(f"k{i}", f"v{i}") for i in range(20)]
    for k, v in items:
        a.annotations[k] = v
    for k, v in reversed(items):
        b.annotations[k] = v
    b.seed_operation.parameters.clear()
    for k, v in reversed(sorted({"lr": 0.5, "a": 1.0, "z": 2.0}.items())):
        b.seed_operation.parameters[k] = v
    a.seed_operation.parameters.update({"a": 1.0, "z": 2.0})
    assert signed_payload(a) == signed_payload(b)
    sign(a, SECRET)
    sign(b, SECRET)
    assert a.annotations["signature"] == b.annotations["signature"]
    # A command re-parsed from the wire (order lost) still verifies.
    assert verifier().check(leyline.AdaptationCommand.FromString(b.SerializeToString())) is None


# =========================================================================================
# Keyring
# =========================================================================================

def test_keyring_single_plain_key() -> None:
    ring = Keyring("secret")
    assert ring and len(ring) == 1 and ring.has_plain_key
    assert ring.resolve(None) == b"secret"
    assert ring.resolve("anything") is None


def test_keyring_mapping_default_and_resolve() -> None:
    ring = Keyring({"k1": b"one", "k2": "two"}, default="k2")
    assert ring.key_ids == ("k1", "k2") and list(ring) == ["k1", "k2"]
    assert ring.resolve("k1") == b"one" and ring.resolve("k2") == b"two"
    assert ring.resolve(None) == b"two"
    assert ring.resolve("k3") is None
    assert Keyring({"k1": b"one"}).resolve(None) is None  # no plain, no default
    assert "k1" in ring and "k3" not in ring


def test_keyring_empty_is_false() -> None:
    assert not Keyring() and len(Keyring()) == 0
    assert not Keyring({})


def test_keyring_default_must_exist() -> None:
    with pytest.raises(KeyConfigError):
        Keyring({"k1": b"one"}, default="nope")


@pytest.mark.parametrize("kid", ["", " k", 3])
def test_keyring_rejects_bad_key_ids(kid: object) -> None:
    with pytest.raises(ValueError):
        Keyring({kid: b"x"})  # type: ignore[dict-item]


def test_keyring_never_shows_secrets() -> None:
    ring = Keyring({"k1": b"TOPSECRET-1"}, default="k1")
    ring.add("k2", "TOPSECRET-2")
    plain = Keyring("TOPSECRET-3")
    for text in (repr(ring), str(ring), repr(plain), repr(verifier(ring))):
        assert "TOPSECRET" not in text
    assert "k1" in repr(ring) and "k2" in repr(ring)


def test_keyring_add_remove_and_sign() -> None:
    ring = Keyring({"k1": b"one"}, default="k1")
    ring.add("k2", b"two")
    cmd = ring.sign(make_cmd(), "k2")
    assert cmd.annotations[KEY_ID_ANNOTATION] == "k2"
    cmd = ring.sign(make_cmd())  # default key, its id written in
    assert cmd.annotations[KEY_ID_ANNOTATION] == "k1"
    ring.remove("k1")
    assert ring.default is None and "k1" not in ring
    with pytest.raises(KeyError):
        ring.remove("k1")
    with pytest.raises(KeyConfigError):
        ring.sign(make_cmd())
    assert KEY_ID_ANNOTATION not in Keyring(b"p").sign(make_cmd()).annotations


def test_from_env_single_secret() -> None:
    ring = Keyring.from_env({"KASMINA_SECRET": "s3cret"})
    assert ring.resolve(None) == b"s3cret" and ring.key_ids == ()


def test_from_env_secrets_and_both() -> None:
    ring = Keyring.from_env({"KASMINA_SECRETS": " k1=one , k2=tw=o ", "KASMINA_SECRET": "plain"})
    assert ring.resolve("k1") == b"one"
    assert ring.resolve("k2") == b"tw=o"  # split at the first '='
    assert ring.resolve(None) == b"plain"
    ring = Keyring.from_env({"KASMINA_SECRETS": "k1=one,k2=two"}, default="k2")
    assert ring.resolve(None) == b"two"


def test_from_env_empty_means_no_keys() -> None:
    assert not Keyring.from_env({})
    assert not Keyring.from_env({"KASMINA_SECRET": "", "KASMINA_SECRETS": "  "})


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KASMINA_SECRET", "from-os")
    monkeypatch.delenv("KASMINA_SECRETS", raising=False)
    assert Keyring.from_env().resolve(None) == b"from-os"


@pytest.mark.parametrize("text, index", [
    ("SECRETVALUE", 0),                 # no '=' (a bare secret must not be echoed)
    ("k1=one,=SECRETVALUE", 1),         # empty key id
    ("k1=one,k2=", 1),                  # empty secret
    ("k1=one,,k3=SECRETVALUE", 1),      # empty entry
    ("k1=SECRETVALUE,k1=SECRETVALUE", 1),  # duplicate key id
    ("k1=one,", 1),                     # trailing comma
])
def test_malformed_secrets_name_the_entry_and_never_the_secret(text: str, index: int) -> None:
    with pytest.raises(ValueError) as info:
        Keyring.from_env({"KASMINA_SECRETS": text})
    message = str(info.value)
    assert f"entry {index}" in message and "KASMINA_SECRETS" in message
    assert "SECRETVALUE" not in message and "one" not in message
    assert isinstance(info.value, KeyConfigError)


def test_parse_secrets() -> None:
    assert parse_secrets("a=1,b=2") == {"a": b"1", "b": b"2"}


# =========================================================================================
# Verifier: every reason, exactly
# =========================================================================================

def test_reason_constants() -> None:
    assert set(REASONS) == {
        "verifier_unavailable", "oversized_command", "missing_signature", "unknown_key",
        "invalid_signature", "missing_command_id", "nonce_replayed", "missing_timestamp",
        "stale_command", "issued_in_future"}
    assert set(REASON_MESSAGES) == set(REASONS)
    assert "KASMINA_SECRET" in REASON_MESSAGES[VERIFIER_UNAVAILABLE]


def test_accepts_a_good_command() -> None:
    assert verifier().check(signed()) is None


def test_fail_closed_without_keys(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kasmina.security.verify"):
        v = Verifier(Keyring(), clock=Clock())
    assert "KASMINA_SECRET" in caplog.text
    for cmd in (signed(), make_cmd(), leyline.AdaptationCommand()):
        assert v.check(cmd) == VERIFIER_UNAVAILABLE


def test_fail_closed_follows_live_keyring_changes() -> None:
    ring = Keyring({"k1": b"one"})
    v = verifier(ring)
    cmd = signed(b"one", key_id="k1")
    assert v.check(cmd) is None
    ring.remove("k1")
    assert v.check(cmd) == VERIFIER_UNAVAILABLE


def test_missing_signature() -> None:
    assert verifier().check(make_cmd()) == MISSING_SIGNATURE
    cmd = make_cmd()
    cmd.annotations["signature"] = ""
    assert verifier().check(cmd) == MISSING_SIGNATURE


def test_unknown_key() -> None:
    ring = Keyring({"k1": b"one"})
    assert verifier(ring).check(signed(b"x", key_id="k9")) == UNKNOWN_KEY
    assert verifier(ring).check(signed(b"one")) == UNKNOWN_KEY  # no id, no default key
    assert verifier(Keyring(b"plain")).check(signed(b"plain", key_id="k1")) == UNKNOWN_KEY
    cmd = signed(b"one", key_id="k1")
    cmd.annotations[KEY_ID_ANNOTATION] = ""
    assert verifier(ring).check(cmd) == UNKNOWN_KEY


@pytest.mark.parametrize("bad", [
    "!!!not base64!!!", "AAAA", "é", base64.b64encode(b"\x00" * 32).decode(),
])
def test_invalid_signature_bad_base64_or_mismatch(bad: str) -> None:
    cmd = signed()
    cmd.annotations["signature"] = bad
    assert verifier().check(cmd) == INVALID_SIGNATURE


def test_invalid_signature_non_canonical_base64() -> None:
    cmd = signed()
    cmd.annotations["signature"] = cmd.annotations["signature"].rstrip("=")  # padding dropped
    assert verifier().check(cmd) == INVALID_SIGNATURE


def test_invalid_signature_wrong_key() -> None:
    assert verifier().check(signed(b"another key")) == INVALID_SIGNATURE


def _tamper(field: str):  # type: ignore[no-untyped-def]
    def set_(cmd: leyline.AdaptationCommand) -> None:
        if field == "version":
            cmd.version = 2
        elif field == "command_id":
            cmd.command_id = "cmd-0002"
        elif field == "command_type":
            cmd.command_type = leyline.CommandType.COMMAND_PAUSE
        elif field == "target_seed_id":
            cmd.target_seed_id = "seed-b"
        elif field == "execution_deadline_ms":
            cmd.execution_deadline_ms = 10
        elif field == "issued_at":
            cmd.issued_at.seconds += 1
        elif field == "issued_at.nanos":
            cmd.issued_at.nanos = 1
        elif field == "issued_by":
            cmd.issued_by = "mallory"
        elif field == "operation":
            cmd.seed_operation.operation = leyline.SeedOperation.SEED_OP_CULL
        elif field == "blueprint_id":
            cmd.seed_operation.blueprint_id = "bp-evil"
        elif field == "parameter value":
            cmd.seed_operation.parameters["lr"] = 0.25
        elif field == "parameter added":
            cmd.seed_operation.parameters["x"] = 1.0
        elif field == "annotation value":
            cmd.annotations["blend_mode"] = "RESIDUAL"
        elif field == "annotation added":
            cmd.annotations["resume"] = "true"
        elif field == "annotation removed":
            del cmd.annotations["blend_mode"]
        elif field == "payload swapped":
            cmd.circuit_breaker.desired_state = leyline.CircuitBreakerState.CIRCUIT_STATE_OPEN
        else:  # pragma: no cover
            raise AssertionError(field)
    return set_


TAMPERS = ["version", "command_id", "command_type", "target_seed_id", "execution_deadline_ms",
           "issued_at", "issued_at.nanos", "issued_by", "operation", "blueprint_id",
           "parameter value", "parameter added", "annotation value", "annotation added",
           "annotation removed", "payload swapped"]


@pytest.mark.parametrize("field", TAMPERS)
def test_tampering_any_field_after_signing_is_invalid(field: str) -> None:
    cmd = signed()
    assert verifier().check(cmd) is None
    _tamper(field)(cmd)
    assert verifier().check(cmd) == INVALID_SIGNATURE


@pytest.mark.parametrize("field", TAMPERS)
def test_tampering_with_rotated_keys_is_invalid(field: str) -> None:
    ring = Keyring({"k1": b"one"})
    cmd = signed(b"one", key_id="k1")
    _tamper(field)(cmd)
    assert verifier(ring).check(cmd) == INVALID_SIGNATURE


def test_missing_command_id() -> None:
    cmd = make_cmd()
    cmd.command_id = ""
    assert verifier().check(sign(cmd, SECRET)) == MISSING_COMMAND_ID


def test_nonce_replayed() -> None:
    v = verifier()
    cmd = signed()
    assert v.check(cmd) is None
    v.remember(cmd.command_id)
    assert v.check(cmd) == NONCE_REPLAYED
    # A different command (new id) is fine.
    assert v.check(signed(command_id="cmd-0002")) is None


def test_missing_timestamp() -> None:
    cmd = make_cmd()
    cmd.ClearField("issued_at")
    assert verifier().check(sign(cmd, SECRET)) == MISSING_TIMESTAMP


def test_stale_command() -> None:
    assert verifier().check(signed(issued_at=NOW - 61)) == STALE_COMMAND
    assert verifier().check(signed(issued_at=0)) == STALE_COMMAND  # epoch: set, but ancient


def test_issued_in_future() -> None:
    assert verifier().check(signed(issued_at=NOW + 6)) == ISSUED_IN_FUTURE


def test_oversized_too_many_annotations() -> None:
    many = {f"a{i:02d}": "v" for i in range(MAX_ANNOTATIONS)}  # + signature = 65
    assert verifier().check(signed(annotations=many)) == OVERSIZED_COMMAND
    many.pop("a00")  # 63 + signature = 64: at the bound
    assert verifier().check(signed(annotations=many)) is None


def test_oversized_annotation_value() -> None:
    long = "x" * (MAX_ANNOTATION_VALUE_CHARS + 1)
    assert verifier().check(signed(annotations={"note": long})) == OVERSIZED_COMMAND
    assert verifier().check(signed(annotations={"note": long[:-1]})) is None
    # Characters, not bytes: 4096 three-byte characters are accepted.
    assert verifier().check(signed(annotations={"note": "€" * MAX_ANNOTATION_VALUE_CHARS})) is None


def test_oversized_serialized_bytes() -> None:
    cmd = signed(blueprint_id="b" * MAX_COMMAND_BYTES)
    assert cmd.ByteSize() > MAX_COMMAND_BYTES
    assert verifier().check(cmd) == OVERSIZED_COMMAND
    params = {f"p{i}": 1.0 for i in range(6000)}  # ~ 80 KB of map entries
    assert verifier().check(signed(parameters=params)) == OVERSIZED_COMMAND


def test_oversized_is_checked_before_the_signature() -> None:
    cmd = make_cmd(annotations={f"a{i}": "v" for i in range(MAX_ANNOTATIONS + 1)})
    assert verifier().check(cmd) == OVERSIZED_COMMAND  # unsigned, yet oversized wins


def test_limits_are_configurable_and_documented() -> None:
    assert Verifier.limits == VerifierLimits(64 * 1024, 4096, 64)
    assert (MAX_COMMAND_BYTES, MAX_ANNOTATION_VALUE_CHARS, MAX_ANNOTATIONS) == (65536, 4096, 64)
    tight = verifier(limits=VerifierLimits(max_annotations=1))
    assert tight.check(signed()) == OVERSIZED_COMMAND  # blend_mode + signature = 2
    assert verifier().limits is Verifier.limits


# -- check order --------------------------------------------------------------------------

def test_order_signature_before_command_id_and_time() -> None:
    cmd = make_cmd(issued_at=NOW - 1000)
    cmd.command_id = ""
    assert verifier().check(cmd) == MISSING_SIGNATURE
    sign(cmd, b"wrong")
    assert verifier().check(cmd) == INVALID_SIGNATURE
    assert verifier(Keyring({"k": b"k"})).check(sign(cmd, b"wrong", key_id="z")) == UNKNOWN_KEY


def test_order_command_id_before_nonce_and_time() -> None:
    cmd = make_cmd(issued_at=NOW - 1000)
    cmd.command_id = ""
    assert verifier().check(sign(cmd, SECRET)) == MISSING_COMMAND_ID


def test_order_nonce_before_timestamps() -> None:
    v = verifier()
    v.remember("cmd-0001", NOW)
    assert v.check(signed(issued_at=NOW - 1000)) == NONCE_REPLAYED
    cmd = make_cmd()
    cmd.ClearField("issued_at")
    assert v.check(sign(cmd, SECRET)) == NONCE_REPLAYED


# -- nonce policy, TTL and boundaries ------------------------------------------------------

def test_check_records_nothing_and_refused_commands_do_not_consume_nonces() -> None:
    clock = Clock()
    v = verifier(clock=clock)
    stale = signed(issued_at=NOW - 61)
    assert v.check(stale) == STALE_COMMAND
    assert len(v.ledger) == 0
    fresh = signed()  # same command_id, fresh and valid
    assert v.check(fresh) is None
    assert v.check(fresh) is None  # still not remembered: the caller decides
    assert len(v.ledger) == 0


def test_nonce_ttl_expiry_with_injected_clock() -> None:
    """A command id is refused for the whole TTL, then forgotten (by then the original
    command is stale; a *new* command reusing the id is fresh and passes)."""
    clock = Clock()
    v = verifier(clock=clock)
    cmd = signed()
    assert v.check(cmd) is None
    v.remember(cmd.command_id)
    clock.t = NOW + 299.999
    assert v.check(signed(issued_at=clock.t)) == NONCE_REPLAYED
    clock.t = NOW + 300.0
    assert v.check(cmd) == STALE_COMMAND  # the original can never come back
    assert v.check(signed(issued_at=clock.t)) is None


def test_nonce_ledger_ttl_boundary_and_purge() -> None:
    clock = Clock()
    ledger = NonceLedger(300.0, clock)
    ledger.remember("a", NOW)
    clock.t = NOW + 299.999
    assert ledger.seen("a") and "a" in ledger
    clock.t = NOW + 300.0
    assert not ledger.seen("a") and "a" not in ledger
    assert len(ledger) == 1  # purged lazily, on the next insert
    ledger.remember("b", clock.t)
    assert len(ledger) == 1 and ledger.seen("b")


def test_nonce_ledger_ignores_expired_and_keeps_latest_time() -> None:
    clock = Clock()
    ledger = NonceLedger(300.0, clock)
    ledger.remember("old", NOW - 300)
    assert len(ledger) == 0
    ledger.remember("a", NOW - 200)
    ledger.remember("a", NOW - 10)
    ledger.remember("a", NOW - 250)  # older time does not shorten the window
    clock.t = NOW + 150
    assert ledger.seen("a")


def test_nonce_ledger_cap_evicts_closest_to_expiry() -> None:
    clock = Clock()
    ledger = NonceLedger(300.0, clock, max_entries=3)
    for i, cid in enumerate(["a", "b", "c", "d"]):
        ledger.remember(cid, NOW - 10 + i)
    assert len(ledger) == 3 and ledger.evicted == 1
    assert not ledger.seen("a") and all(ledger.seen(c) for c in "bcd")
    assert verify_module.MAX_NONCES == 1_000_000 == NonceLedger().max_entries


def test_nonce_ledger_heap_stays_bounded_on_repeats() -> None:
    clock = Clock()
    ledger = NonceLedger(300.0, clock)
    for i in range(5000):
        ledger.remember("same", NOW + i * 1e-3)
    assert len(ledger) == 1 and len(ledger._heap) <= 2 + 1024


def test_nonce_ledger_memory_bounded_over_time() -> None:
    clock = Clock()
    ledger = NonceLedger(10.0, clock)
    for i in range(10_000):
        clock.t = NOW + i * 0.1
        ledger.remember(f"c{i}", clock.t)
    assert len(ledger) <= 101 and len(ledger._heap) <= 101


@pytest.mark.parametrize("cid, at", [("", NOW), (None, NOW), ("a", float("nan")), ("a", float("inf"))])
def test_nonce_ledger_rejects_bad_input(cid: object, at: float) -> None:
    with pytest.raises(ValueError):
        NonceLedger(300.0, Clock()).remember(cid, at)  # type: ignore[arg-type]


def test_nonce_ledger_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        NonceLedger(0.0)
    with pytest.raises(ValueError):
        NonceLedger(300.0, max_entries=0)


def test_ledger_load_rebuild_refuses_replay_after_restart() -> None:
    clock = Clock()
    before = verifier(clock=clock)
    cmd = signed()
    assert before.check(cmd) is None
    log: list[tuple[str, float]] = []
    log.append((cmd.command_id, clock()))  # "durably recorded"
    before.remember(cmd.command_id, clock())
    log.append(("ancient", NOW - 10_000))
    log.append(("other", NOW - 1))

    clock.t = NOW + 20  # restart 20 s later: a new process, a new ledger
    ledger = NonceLedger(300.0, clock)
    assert ledger.load(log) == 2  # the expired entry is not held
    after = Verifier(Keyring(SECRET), clock=clock, ledger=ledger)
    assert after.check(cmd) == NONCE_REPLAYED
    assert not ledger.seen("ancient")


def test_freshness_window_boundaries() -> None:
    v = verifier()
    assert v.check(signed(issued_at=NOW - 60)) is None  # exactly 60 s old: inclusive
    assert v.check(signed(issued_at=NOW - 60.001)) == STALE_COMMAND
    assert v.check(signed(issued_at=NOW + 5)) is None  # exactly 5 s ahead: inclusive
    assert v.check(signed(issued_at=NOW + 5.001)) == ISSUED_IN_FUTURE
    ts = make_cmd()
    ts.issued_at.seconds, ts.issued_at.nanos = int(NOW) - 61, 999_000_000  # 60.001 s old
    assert v.check(sign(ts, SECRET)) == STALE_COMMAND


def test_verifier_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        Verifier(Keyring(SECRET), nonce_ttl_s=30.0)  # < 60 + 5: replays could slip through
    with pytest.raises(ValueError):
        Verifier(Keyring(SECRET), freshness_s=-1.0)
    with pytest.raises(ValueError):
        Verifier(Keyring(SECRET), future_skew_s=float("nan"))
    with pytest.raises(TypeError):
        Verifier(b"secret")  # type: ignore[arg-type]


def test_default_clock_is_wall_clock() -> None:
    v = Verifier(Keyring(SECRET))
    assert v.check(sign(commands.germinate("s", "bp"), SECRET)) is None
    assert v.clock is time.time


# -- rotation -----------------------------------------------------------------------------

def test_key_rotation_retired_key_becomes_unknown() -> None:
    ring = Keyring({"2024-old": b"old-secret", "2025-new": b"new-secret"}, default="2025-new")
    v = verifier(ring)
    old = signed(b"old-secret", key_id="2024-old", command_id="c-old")
    new = signed(b"new-secret", key_id="2025-new", command_id="c-new")
    plain = signed(b"new-secret", command_id="c-plain")  # no key_id: default key
    assert [v.check(c) for c in (old, new, plain)] == [None, None, None]
    ring.remove("2024-old")
    assert v.check(old) == UNKNOWN_KEY
    assert v.check(new) is None and v.check(plain) is None
    ring.add("2026-next", b"next-secret")
    assert v.check(signed(b"next-secret", key_id="2026-next")) is None


# =========================================================================================
# Robustness: the verifier never raises on a parsed message
# =========================================================================================

FUZZ_VERIFIER = Verifier(Keyring({"k1": SECRET}, default="k1"), clock=Clock())
FUZZ_VERIFIER.remember("cmd-0001", NOW)


def _parse_and_check(data: bytes) -> None:
    try:
        cmd = leyline.AdaptationCommand.FromString(data)
    except DecodeError:
        return
    result = FUZZ_VERIFIER.check(cmd)
    assert result is None or result in REASONS


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_decode_error_or_verdict(data: bytes) -> None:
    _parse_and_check(data)


_SEED_BYTES = signed(SECRET, key_id="k1", command_id="fuzz").SerializeToString()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_SEED_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=4),
       st.binary(max_size=16))
def test_mutated_signed_bytes_decode_error_or_verdict(edits: list[tuple[int, int]], tail: bytes) -> None:
    data = bytearray(_SEED_BYTES)
    for pos, byte in edits:
        data[pos] = byte
    _parse_and_check(bytes(data) + tail)


@settings(max_examples=150, deadline=None)
@given(seed=st.text(min_size=1, max_size=20).filter(str.strip),
       blueprint=st.text(min_size=1, max_size=20).filter(str.strip),
       ann=st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in ("signature", "key_id")),
                           st.text(max_size=30), max_size=8),
       params=st.dictionaries(st.text(min_size=1, max_size=8),
                              st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=6))
def test_any_builder_command_signed_round_trips_through_the_wire(seed: str, blueprint: str,
                                                                ann: dict[str, str],
                                                                params: dict[str, float]) -> None:
    cmd = sign(commands.germinate(seed, blueprint, annotations=ann, parameters=params,
                                  issued_at=NOW), SECRET, key_id="k1")
    v = Verifier(Keyring({"k1": SECRET}), clock=Clock())
    assert v.check(leyline.AdaptationCommand.FromString(cmd.SerializeToString())) is None
    cmd.target_seed_id += "x"
    assert v.check(cmd) == INVALID_SIGNATURE
