"""Hostile input (issue 7): whatever arrives gets one clear refusal and nothing else happens.

Why: the command decoder, the annotations, the command line and the database URLs are the
places where bytes Kasmina did not make come in (a controller, a network, an operator's
shell). Fuzzing them, with hypothesis and with a seeded generator, checks the promises that
matter to a training run: ``Executor.handle`` never raises, a refused command writes exactly
one ``command_refused`` event (with a one-line detail) and changes neither the model nor any
seed, a bad annotation is a warning plus the CONVEX fallback, the training step keeps
working, every CLI error is one ``error: ...`` line with a documented exit code, and a bad
URL is a one-line :class:`BadDatabaseURL` that never shows a password.

Every hypothesis run is derandomized (reproducible in CI) and sized to keep this file well
under a minute on two shared cores. The bounds checked here are in docs/hostile-input.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import kasmina
from kasmina import commands, leyline
from kasmina.annotations import BLEND_KEYS, MAX_ALPHA_VEC_LEN, MAX_VALUE_CHARS, parse_blend_annotations
from kasmina.cli import EXIT_USAGE, EXIT_USER_ERROR, EXIT_VERIFY_FAILED, build_parser, main
from kasmina.cli.argtypes import MAX_COUNT
from kasmina.errors import BadDatabaseURL, KasminaError
from kasmina.events import migrate, open_store
from kasmina.events.urls import MAX_URL_LENGTH, parse, redact
from kasmina.executor.executor import MAX_NOTE_BYTES
from kasmina.lifecycle import events as ev
from kasmina.security import (
    MAX_ANNOTATION_VALUE_CHARS,
    MAX_ANNOTATIONS,
    MAX_COMMAND_BYTES,
    MAX_COMMAND_ID_CHARS,
    MISSING_COMMAND_ID,
    MISSING_SIGNATURE,
    OVERSIZED_COMMAND,
    REASON_MESSAGES,
    Keyring,
    Verifier,
    sign,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_executor import SECRET, Net, _catalogue  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SITES = ("features.2", "classifier.1")
#: The blueprint that fits each site of the test model (Conv2d 8->16, Linear 64->10).
BLUEPRINTS = {"features.2": "conv_adapter", "classifier.1": "bottleneck_mlp"}
FAST = {"germinated_steps": 1, "training_steps": 1, "blend_steps": 3, "shadow_steps": 1,
        "probation_steps": 1, "embargo_steps": 2, "reset_steps": 1}


#: ``KASMINA_FUZZ_SCALE=20 pytest tests/test_hostile.py`` fuzzes 20x deeper (still reproducible).
FUZZ_SCALE = max(1, int(os.environ.get("KASMINA_FUZZ_SCALE", "1")))


def _fuzz(examples: int) -> settings:
    """Reproducible hypothesis settings: the same examples on every machine, no deadline."""
    return settings(max_examples=examples * FUZZ_SCALE, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


def one_line(text: str) -> bool:
    """True for a single line: no break of any kind a log viewer or terminal might split on."""
    return len(text.splitlines()) <= 1 and "\n" not in text and "\r" not in text


def documented_reasons() -> frozenset[str]:
    """The refusal reasons docs/executor.md lists: a refusal outside them is undocumented."""
    text = (ROOT / "docs" / "executor.md").read_text()
    found = re.search(r"Refusal reasons:(.*?)Each refusal is one", text, re.DOTALL)
    assert found, "docs/executor.md lost its 'Refusal reasons:' paragraph"
    return frozenset(re.findall(r"`([a-z_]+)`", found.group(1)))


REASONS = documented_reasons()
#: Hostile input must never look like a database outage: the store is healthy in these tests.
REFUSALS = REASONS - {"store_unavailable"}


# =========================================================================================
# An executor on a real SQLite log, and what "nothing happened" means
# =========================================================================================

@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The model is tiny: on shared cores extra threads make each step ~15x slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite log, copied for each executor (migrating costs ~100x a copy)."""
    path = tmp_path_factory.mktemp("template") / "log.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@dataclass
class Run:
    model: nn.Module
    opt: torch.optim.Optimizer
    ex: kasmina.Executor


def open_run(template: Path, path: Path) -> Run:
    """The test model with both sites, an optimizer and the test secret, on a copy of the log."""
    shutil.copyfile(template, path)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ex = kasmina.Executor(model, sites=list(SITES), db=f"sqlite:///{path}", secret=SECRET,
                          catalogue=_catalogue(), optimizer=opt)
    return Run(model, opt, ex)


def open_pg_run(pg_url: str) -> Run:
    """The same run on an empty PostgreSQL database (conftest's pg_url), migrated here."""
    migrate.upgrade(pg_url)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return Run(model, opt, kasmina.Executor(model, sites=list(SITES), db=pg_url, secret=SECRET,
                                            catalogue=_catalogue(), optimizer=opt))


@pytest.fixture
def run(template: Path, tmp_path: Path) -> Iterator[Run]:
    opened = open_run(template, tmp_path / "run.db")
    yield opened
    opened.ex.close()


@dataclass(frozen=True)
class Snapshot:
    """What a refused command must leave exactly as it was."""

    head: int
    weights: dict[str, torch.Tensor]
    states: dict[str, Any]
    step: int


def snapshot(r: Run) -> Snapshot:
    head, _ = r.ex.store.head()
    weights = {k: v.detach().clone() for k, v in r.model.state_dict().items()}
    return Snapshot(head, weights, {s: r.ex.state(s) for s in SITES}, r.ex.step_count)


def new_events(r: Run, before: Snapshot) -> list[Any]:
    return list(r.ex.store.read(after=before.head))


def assert_refused_and_nothing_else(r: Run, before: Snapshot, result: Any, allowed: frozenset[str] = REFUSALS) -> None:
    """A refusal: one documented reason, one command_refused event with a one-line detail,
    the model's weights and every seed's state untouched."""
    assert isinstance(result, kasmina.Result) and result.accepted is False, result
    assert result.reason in allowed, result
    assert one_line(result.detail), result
    written = new_events(r, before)
    assert [(e.type, e.stream_id) for e in written] == [(ev.COMMAND_REFUSED, ev.EXECUTOR_STREAM)], written
    assert written[0].data["reason"] == result.reason
    assert one_line(str(written[0].data["detail"])), written[0].data
    assert list(result.positions) == [written[0].position]
    assert {s: r.ex.state(s) for s in SITES} == before.states
    after = r.model.state_dict()
    assert after.keys() == before.weights.keys()
    assert all(torch.equal(after[k], v) for k, v in before.weights.items())
    assert r.ex.step_count == before.step


def train_step(r: Run, seed: int = 0) -> float:
    """One step of a training loop (forward, backward, optimizer, Executor.step): must work
    whatever was handled before, with a finite loss and finite outputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 6, 6, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    out = r.model(x)
    assert torch.isfinite(out).all(), "a handled command made the model's output non-finite"
    loss = F.cross_entropy(out, y)
    r.opt.zero_grad()
    loss.backward()
    r.opt.step()
    r.ex.step(metrics={"val_loss": 1.0})
    return loss.item()


def handle(r: Run, command: leyline.AdaptationCommand | bytes) -> kasmina.Result:
    """``Executor.handle``; any exception escaping it is the bug this file looks for."""
    return r.ex.handle(command)


def genuine(seed_id: str = "classifier.1", **kwargs: Any) -> leyline.AdaptationCommand:
    """A command the executor accepts: germinate the site's own blueprint, signed now."""
    return sign(commands.germinate(seed_id, BLUEPRINTS[seed_id], **kwargs), SECRET)


# =========================================================================================
# Random bytes into Executor.handle
# =========================================================================================

def test_hypothesis_bytes_are_refused_and_change_nothing(run: Run) -> None:
    """Any byte string: a documented refusal (mostly malformed_command or a signature
    problem), one refusal event, nothing else; training still works afterwards."""

    @_fuzz(300)
    @given(st.binary(max_size=1024))
    def check(data: bytes) -> None:
        before = snapshot(run)
        assert_refused_and_nothing_else(run, before, handle(run, data))

    check()
    train_step(run)


def _wrong_messages() -> list[bytes]:
    """Valid protobuf of other messages: they decode as *some* AdaptationCommand."""
    ts = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5)
    st_ = struct_pb2.Struct()
    st_.update({"to_position": 3, "seed": "features.2", "nested": {"a": [1, 2]}})
    op = leyline.CommandSeedOperation(operation=1, blueprint_id="conv_adapter")
    op.parameters["training_steps"] = 3.0
    messages: list[Message] = [ts, st_, op, struct_pb2.Value(string_value="x" * 300),
                               leyline.AdaptationCommand()]
    return [m.SerializeToString() for m in messages]


def _oversized_but_valid() -> bytes:
    """A well-formed, signed command over MAX_COMMAND_BYTES (an issued_by of 70,000 chars)."""
    cmd = commands.germinate("classifier.1", "bottleneck_mlp", issued_by="x" * 70_000)
    return sign(cmd, SECRET).SerializeToString()


def _decodes_to(data: bytes, real: bytes) -> bool:
    """Is ``data`` another encoding of the very message ``real`` encodes? Signatures cover
    the message, not its bytes (Esper-compatible: HMAC of the deterministic serialization),
    so such bytes are the genuine command: e.g. a flip of bit 34 of the int32 ``nanos``
    varint, which decoding truncates away."""
    try:
        return data != real and leyline.AdaptationCommand.FromString(data) == leyline.AdaptationCommand.FromString(real)
    except DecodeError:
        return False


def test_seeded_random_bytes_truncations_and_bit_flips(run: Run) -> None:
    """Large random buffers (up to 3x MAX_COMMAND_BYTES), valid protobuf of the wrong
    message, an oversized valid command, every truncation and a seeded sample of bit flips
    of a real signed command: all refused, none of them burns the genuine command's nonce."""
    rng = random.Random(20240607)
    real = genuine().SerializeToString()
    sizes = [0, 1, 2, 7, 64, 511, 4096, MAX_COMMAND_BYTES - 1, MAX_COMMAND_BYTES, MAX_COMMAND_BYTES + 1,
             3 * MAX_COMMAND_BYTES]
    buffers = [rng.randbytes(n) for n in sizes]
    buffers += _wrong_messages() + [_oversized_but_valid()]
    buffers += [real[:n] for n in range(len(real))]  # every truncation
    for index in rng.sample(range(len(real) * 8), 120):  # single bit flips
        flipped = bytearray(real)
        flipped[index // 8] ^= 1 << (index % 8)
        buffers.append(bytes(flipped))
    buffers += [real + rng.randbytes(rng.randint(1, 40)) for _ in range(20)]  # trailing junk
    reasons: set[str] = set()
    for data in buffers:
        if _decodes_to(data, real):
            continue  # the genuine command in other bytes, not a forgery: see _decodes_to
        before = snapshot(run)
        result = handle(run, data)
        assert_refused_and_nothing_else(run, before, result)
        reasons.add(result.reason)
    # The run met the decoder, the size bound and the signature check, not one path only.
    assert {"malformed_command", "oversized_command", "missing_signature", "invalid_signature"} <= reasons
    train_step(run)
    accepted = handle(run, real)
    assert accepted.accepted, accepted  # no forgery used up the genuine command's id
    train_step(run)


# =========================================================================================
# Structured fuzz: AdaptationCommands built field by field
# =========================================================================================

#: Text of every kind a protobuf string can hold (lone surrogates cannot be stored at all).
_chars = st.characters(blacklist_categories=("Cs",))
#: Every kind of line break and a few control characters, which random text rarely hits.
breaks = st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x00", "\t",
                          "\x1b[31m"])
any_text = st.one_of(st.text(_chars, max_size=24),
                     st.builds(lambda a, brk, b: a + brk + b, st.text(_chars, max_size=8), breaks,
                               st.text(_chars, max_size=8)))
huge_text = st.builds(lambda s, n: (s * n)[:n], st.text(_chars, min_size=1, max_size=3), st.integers(200, 70_000))
ids = st.one_of(st.sampled_from(SITES), any_text, huge_text,
                st.sampled_from(["", " ", "features.2\n", "classifier.1\x00", "$executor", "ｆｅａｔｕｒｅｓ.2",
                                 "features.2 ", "features", "features.2.x"]))
floats = st.one_of(st.floats(width=32), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 3.0, 1e30,
                                                         -1e30, 2.5, 1e7, 1e8]))
numbers_as_text = st.one_of(
    st.floats().map(repr), st.integers().map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "-0", "0x10", "1_000", " 4 ", "４", "1e-320", "", " ",
                     "[0.5, 1.0]", "0.5,1.0", "[]", "[[1]]", "[true]", "null", '{"a": 1}', "[" * 5000,
                     "[" + ",".join(["0.5"] * 16) + "]", "[" + ",".join(["0.5"] * 10) + "]",
                     ",".join(["1e400"] * 3), "[1, " + "9" * 5000 + "]"]))
blend_values = st.one_of(any_text, numbers_as_text, huge_text,
                         st.sampled_from(["CONVEX", "residual", "Channel", "CONFIDENCE", " confidence ", "NONE",
                                          "convex\x00", "ＣＯＮＶＥＸ"]))
annotation_keys = st.one_of(st.sampled_from([*BLEND_KEYS, "alpha_schedule", "reason", "resume", "signature",
                                             "key_id", "include_teacher"]), any_text)
annotations = st.dictionaries(annotation_keys, blend_values, max_size=10)


_FRESH_IDS = itertools.count()
_HOSTILE = st.sampled_from([True] + [False] * 7)


def _often(draw: st.DrawFn, plausible: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
    """A plausible value 7 times in 8, else a hostile one: each command is mostly
    sensible with a few bad fields, so the checks past the first refusal are reached too."""
    return draw(hostile) if draw(_HOSTILE) else draw(plausible)


@st.composite
def adaptation_commands(draw: st.DrawFn) -> leyline.AdaptationCommand:
    """Any AdaptationCommand: every field, enum numbers outside the enums, odd payloads."""
    cmd = leyline.AdaptationCommand(
        version=_often(draw, st.just(1), st.integers(0, 2 ** 32 - 1)),  # uint32
        # Mostly fresh (deterministic): a repeated id only ever reaches the nonce check.
        command_id=_often(draw, st.builds(lambda: f"fuzz-{next(_FRESH_IDS)}"),
                          st.one_of(st.just(""), any_text, huge_text)),
        command_type=_often(draw, st.sampled_from([1, 1, 1, 2, 4, 5, 6]), st.integers(-3, 12)),
        target_seed_id=_often(draw, st.sampled_from(SITES), ids),
        execution_deadline_ms=draw(st.integers(0, 2 ** 32 - 1)),
        issued_by=_often(draw, st.just("kasmina"), st.one_of(any_text, huge_text)),
    )
    when = _often(draw, st.just("now"), st.sampled_from(["none", "past", "future", "odd"]))
    if when != "none":
        now = time.time()
        seconds = {"now": now, "past": now - 3600, "future": now + 3600,
                   "odd": draw(st.integers(-(2 ** 40), 2 ** 40))}[when]
        cmd.issued_at.CopyFrom(timestamp_pb2.Timestamp(seconds=int(seconds),
                                                       nanos=draw(st.integers(0, 999_999_999))))
    natural = {1: "seed", 2: "rollback", 3: "optimizer", 4: "breaker"}.get(cmd.command_type, "none")
    payload = _often(draw, st.just(natural), st.sampled_from(["none", "seed", "breaker", "rollback", "optimizer"]))
    if payload == "seed":
        op = cmd.seed_operation
        op.operation = _often(draw, st.sampled_from([1, 1, 2, 3, 4, 5, 7, 8]), st.integers(-2, 12))
        op.blueprint_id = _often(draw, st.sampled_from([*BLUEPRINTS.values(), "leaky", "goes_nan"]), any_text)
        parameters = _often(draw, st.dictionaries(st.sampled_from(list(FAST)), st.integers(1, 5).map(float),
                                                  max_size=3),
                            st.dictionaries(st.one_of(st.sampled_from(list(FAST)), any_text), floats,
                                            max_size=6))
        for key, value in parameters.items():
            op.parameters[key] = value
    elif payload == "breaker":
        cmd.circuit_breaker.desired_state = _often(draw, st.integers(1, 3), st.integers(-2, 6))
        cmd.circuit_breaker.rationale = draw(any_text)
    elif payload == "rollback":
        value = _often(draw, st.integers(0, 30).map(float),
                       st.one_of(floats.map(float), st.integers(-5, 10 ** 6).map(float), any_text))
        cmd.rollback_payload.update({_often(draw, st.just("to_position"), any_text): value})
    elif payload == "optimizer":
        cmd.optimizer_adjustment.SetInParent()
    for key, value in _often(draw, st.dictionaries(annotation_keys, blend_values, max_size=3), annotations).items():
        cmd.annotations[key] = value
    return cmd


def test_unsigned_and_forged_commands_are_refused(run: Run) -> None:
    """Without a valid signature nothing but a refusal happens, whatever the fields say."""
    forged_reasons = frozenset({MISSING_SIGNATURE, OVERSIZED_COMMAND, "invalid_signature", "unknown_key"})

    @_fuzz(200)
    @given(adaptation_commands(), st.sampled_from(["unsigned", "forged", "wrong_key"]), st.booleans())
    def check(cmd: leyline.AdaptationCommand, how: str, as_bytes: bool) -> None:
        if how == "unsigned":
            if "signature" in cmd.annotations:
                del cmd.annotations["signature"]
            allowed = frozenset({MISSING_SIGNATURE, OVERSIZED_COMMAND})
        elif how == "wrong_key":
            sign(cmd, b"not-the-test-secret")
            allowed = forged_reasons
        else:  # whatever random "signature" annotation the strategy drew, or a random one
            cmd.annotations.setdefault("signature", "AAAA")
            allowed = forged_reasons
        before = snapshot(run)
        result = handle(run, cmd.SerializeToString() if as_bytes else cmd)
        assert_refused_and_nothing_else(run, before, result, allowed)

    check()
    train_step(run)


def test_signed_fuzzed_commands_never_crash_and_only_accepted_ones_change_state(run: Run) -> None:
    """Correctly signed, arbitrary content: a documented answer every time; a refusal leaves
    everything as it was; an accepted command writes no refusal; a training step after each
    command still works (so the log and model stay consistent with each other)."""
    seen: dict[bool, int] = {True: 0, False: 0}
    counter = iter(range(10 ** 6))

    @_fuzz(150)
    @given(adaptation_commands(), st.booleans())
    def check(cmd: leyline.AdaptationCommand, as_bytes: bool) -> None:
        sign(cmd, SECRET)
        before = snapshot(run)
        result = handle(run, cmd.SerializeToString() if as_bytes else cmd)
        seen[result.accepted] += 1
        if result.accepted:
            written = new_events(run, before)
            assert written and ev.COMMAND_REFUSED not in {e.type for e in written}, written
            assert all(e.position > before.head for e in written)
        else:
            assert_refused_and_nothing_else(run, before, result)
        train_step(run, next(counter))

    check()
    assert seen[True] >= 10 and seen[False] >= 10, seen  # both paths were really exercised
    assert kasmina.replay(run.ex.store).seeds == {s: run.ex.state(s) for s in run.ex.ledger.seeds}


def test_signed_fuzzed_command_at_a_random_stage_of_a_fresh_run(template: Path, tmp_path: Path) -> None:
    """The same promises on a fresh log each time, with a seed first grown to a random
    stage (dormant to fossilized or culled), so every lifecycle check meets hostile input;
    afterwards the log still replays to exactly the executor's state."""
    counter = iter(range(10 ** 6))
    seen: dict[bool, int] = {True: 0, False: 0}

    @_fuzz(200)
    @given(adaptation_commands(), st.booleans(), st.sampled_from([None, *SITES]), st.integers(0, 9))
    def check(cmd: leyline.AdaptationCommand, as_bytes: bool, grown: str | None, steps: int) -> None:
        r = open_run(template, tmp_path / f"stage-{next(counter)}.db")
        try:
            if grown is not None:
                assert handle(r, genuine(grown, parameters=FAST)).accepted
            for step in range(steps):
                train_step(r, step)
            sign(cmd, SECRET)
            before = snapshot(r)
            result = handle(r, cmd.SerializeToString() if as_bytes else cmd)
            seen[result.accepted] += 1
            if result.accepted:
                assert ev.COMMAND_REFUSED not in {e.type for e in new_events(r, before)}
            else:
                assert_refused_and_nothing_else(r, before, result)
            train_step(r, 99)
            assert kasmina.replay(r.ex.store).seeds == {s: r.ex.state(s) for s in r.ex.ledger.seeds}
        finally:
            r.ex.close()

    check()
    assert seen[True] >= 10 and seen[False] >= 10, seen


def _blend_annotations() -> st.SearchStrategy[dict[str, str]]:
    """Every blend key, each present or not, with a random, a valid or an extreme value."""
    valid = {
        "blend_mode": st.sampled_from(["CONVEX", "RESIDUAL", "CHANNEL", "CONFIDENCE", "confidence", " Channel "]),
        "blend_mode_source": any_text,
        "gate_k": st.sampled_from(["0", "4", "1e308", "1e-308", "5e-324", "1000"]),
        "gate_tau": st.sampled_from(["0", "0.2", "1e308", "1", "1e-300"]),
        "alpha_lo": st.sampled_from(["0", "1", "-5", "1e308", "0.3"]),
        "alpha_hi": st.sampled_from(["0", "1", "7", "0.3", "0.9"]),
        "alpha_vec": st.sampled_from(["[" + ",".join(["0.5"] * 16) + "]", ",".join(["1e300"] * 10),
                                      "[" + ",".join(["-1"] * 16) + "]", "[0.5]", "0.1, 0.9"]),
        "alpha_vec_len": st.sampled_from(["16", "10", "-1", "x", "9" * 5000]),
        "alpha_schedule": st.sampled_from(["LINEAR", "cosine", "sigmoid", "STEP"]),
    }
    entries = {key: st.one_of(st.none(), strategy, blend_values) for key, strategy in valid.items()}
    return st.fixed_dictionaries(entries).map(lambda d: {k: v for k, v in d.items() if v is not None})


#: Germinate parameters: the fast dwell values, sometimes with hostile keys and numbers mixed in.
hostile_parameters = st.one_of(
    st.just(FAST),
    st.dictionaries(st.one_of(st.sampled_from(list(FAST)), any_text), floats, min_size=1, max_size=4)
    .map(lambda extra: {**FAST, **extra}))


def test_signed_germinate_with_hostile_annotations_and_parameters(template: Path, tmp_path: Path) -> None:
    """A signed GERMINATE with any blend annotations is accepted (or, with a value over the
    bound, refused oversized_command; with a NUL anywhere, malformed_command; with a bad
    parameter, refused by G0 or as an invalid
    dwell); every annotation problem is an annotation_warning event naming the key and the
    blend falls back to CONVEX (as docs/blending.md says); and the seed then trains and
    blends with finite outputs."""
    counter = iter(range(10 ** 6))

    @_fuzz(120)
    @given(st.sampled_from(SITES), _blend_annotations(), hostile_parameters)
    def check(site: str, blend: dict[str, str], parameters: dict[str, float]) -> None:
        r = open_run(template, tmp_path / f"blend-{next(counter)}.db")
        try:
            before = snapshot(r)
            cmd = commands.germinate(site, BLUEPRINTS[site], annotations=blend)
            for key, value in parameters.items():  # past the builder, which refuses NaN itself
                cmd.seed_operation.parameters[key] = value
            result = handle(r, sign(cmd, SECRET))
            if any(len(v) > MAX_ANNOTATION_VALUE_CHARS for v in blend.values()):
                assert_refused_and_nothing_else(r, before, result, frozenset({OVERSIZED_COMMAND}))
                return
            if any("\x00" in text for text in [*blend, *blend.values(), *parameters]):
                # Signed or not, no NUL reaches the log (PostgreSQL could not return it as text).
                assert_refused_and_nothing_else(r, before, result, frozenset({"malformed_command"}))
                assert "NUL character" in result.detail
                return
            if not result.accepted:
                assert parameters is not FAST, result
                assert_refused_and_nothing_else(r, before, result, frozenset({"gate_failed", "invalid_parameter"}))
                return
            written = new_events(r, before)
            assert ev.COMMAND_REFUSED not in {e.type for e in written}
            warnings = [e.data for e in written if e.type == ev.ANNOTATION_WARNING]
            assert all(w["level"] == "WARNING" and one_line(w["message"]) and len(w["value"]) <= 200
                       for w in warnings), warnings
            expected, parse_warnings = parse_blend_annotations(blend)
            assert {w["key"] for w in parse_warnings} <= {w["key"] for w in warnings}
            assert {w["key"] for w in warnings} <= {*BLEND_KEYS, "alpha_schedule"}
            mode = r.ex.seed(site).blend_mode
            if expected is None:
                assert mode == "CONVEX" and not [w for w in warnings if w["key"] in BLEND_KEYS]
            elif any(w["key"] not in ("alpha_vec_len", "alpha_schedule") for w in warnings):
                assert mode == "CONVEX", (mode, warnings)
            else:
                assert mode == expected.mode.value
            for step in range(5):  # GERMINATED -> TRAINING -> BLENDING and on
                train_step(r, step)
            assert r.ex.seed(site).stage in ("BLENDING", "SHADOWING", "PROBATIONARY", "FOSSILIZED",
                                             "CULLED", "EMBARGOED"), r.ex.seed(site)
        finally:
            r.ex.close()

    check()


def test_parameter_key_with_a_line_break_is_quoted_in_the_refusal_detail(run: Run) -> None:
    """Bug: a signed GERMINATE whose parameter key holds a line break, with a non-finite
    value, gave a two-line detail ('parameter a<newline>b is not finite'); G0 quotes it now."""
    cmd = commands.germinate("classifier.1", BLUEPRINTS["classifier.1"])
    cmd.seed_operation.parameters["a\nb"] = math.inf
    before = snapshot(run)
    assert_refused_and_nothing_else(run, before, handle(run, sign(cmd, SECRET)))


# =========================================================================================
# Oversized: each bound, one over and exactly at it
# =========================================================================================

def _breaker(**kwargs: Any) -> leyline.AdaptationCommand:
    """A command that is accepted again and again (forcing the breaker CLOSED)."""
    return commands.circuit_breaker("CLOSED", "hostile-input test", **kwargs)


def _padded_to(size: int) -> leyline.AdaptationCommand:
    """A signed breaker command whose serialized size is exactly ``size`` bytes."""
    cmd = sign(_breaker(issued_by=""), SECRET)
    pad = size - cmd.ByteSize()
    for _ in range(3):  # the issued_by length prefix grows with the padding: settle it
        cmd = sign(_breaker(issued_by="p" * pad, command_id=cmd.command_id), SECRET)
        pad += size - cmd.ByteSize()
    assert cmd.ByteSize() == size
    return cmd


def _n_annotations(n: int) -> leyline.AdaptationCommand:
    """Signed, with ``n`` annotations in all (the signature is one of them)."""
    return sign(_breaker(annotations={f"note{i}": "x" for i in range(n - 1)}), SECRET)


def _value_chars(n: int) -> leyline.AdaptationCommand:
    """Signed, with one annotation value of ``n`` characters (two UTF-8 bytes each)."""
    return sign(_breaker(annotations={"reason": "é" * n}), SECRET)


def _command_id_chars(n: int) -> leyline.AdaptationCommand:
    cmd = _breaker()
    cmd.command_id = "c" * n  # past the builder, which refuses over-long ids itself
    return sign(cmd, SECRET)


BOUNDS: dict[str, tuple[Callable[[int], leyline.AdaptationCommand], int]] = {
    "serialized bytes": (_padded_to, MAX_COMMAND_BYTES),
    "annotations": (_n_annotations, MAX_ANNOTATIONS),
    "annotation value characters": (_value_chars, MAX_ANNOTATION_VALUE_CHARS),
    "command_id characters": (_command_id_chars, MAX_COMMAND_ID_CHARS),
}


@pytest.mark.parametrize("bound", list(BOUNDS))
def test_just_over_a_bound_is_refused_and_at_it_is_accepted(run: Run, bound: str) -> None:
    """Each documented bound is inclusive: at it the command runs, one past it is refused
    as oversized_command, and the refusal's detail states the numbers."""
    build, limit = BOUNDS[bound]
    before = snapshot(run)
    over = handle(run, build(limit + 1).SerializeToString())
    assert_refused_and_nothing_else(run, before, over, frozenset({OVERSIZED_COMMAND}))
    assert str(limit) in over.detail
    at = handle(run, build(limit).SerializeToString())
    assert at.accepted, at
    train_step(run)


def test_oversized_detail_states_every_bound() -> None:
    detail = REASON_MESSAGES[OVERSIZED_COMMAND]
    for number in (MAX_COMMAND_BYTES, MAX_ANNOTATIONS, MAX_ANNOTATION_VALUE_CHARS, MAX_COMMAND_ID_CHARS):
        assert str(number) in detail
    assert one_line(detail)


def test_bounds_are_stated_in_the_docs() -> None:
    """docs/hostile-input.md gives the exact numbers the code enforces (with separators)."""
    text = (ROOT / "docs" / "hostile-input.md").read_text()
    for number in (MAX_COMMAND_BYTES, MAX_ANNOTATIONS, MAX_ANNOTATION_VALUE_CHARS, MAX_COMMAND_ID_CHARS,
                   MAX_VALUE_CHARS, MAX_ALPHA_VEC_LEN, MAX_URL_LENGTH, MAX_COUNT, MAX_NOTE_BYTES):
        assert f"{number:,}" in text or str(number) in text, number


# =========================================================================================
# Regressions: command ids the log cannot store
# =========================================================================================

def test_command_id_with_nul_or_over_255_chars_is_refused_by_the_verifier() -> None:
    """Bug: a signed command whose id was over 255 characters or held a NUL passed the
    verifier, then PostgreSQL refused the row (VARCHAR(255), no NUL in text): the command
    answered store_unavailable and no refusal was recorded."""
    verifier = Verifier(Keyring(SECRET))
    for command_id, reason in [("c" * 256, OVERSIZED_COMMAND), ("a\x00b", MISSING_COMMAND_ID),
                               ("\x00", MISSING_COMMAND_ID)]:
        cmd = _breaker()
        cmd.command_id = command_id
        assert verifier.check(sign(cmd, SECRET)) == reason
    cmd = _breaker()
    cmd.command_id = "c" * 255
    assert verifier.check(sign(cmd, SECRET)) is None


@pytest.mark.parametrize("command_id", ["c" * 256, "a\x00b", "x" * 5000])
def test_builders_refuse_a_command_id_the_log_cannot_store(command_id: str) -> None:
    with pytest.raises(ValueError, match="command_id"):
        commands.emergency("x", command_id=command_id)


def test_unstorable_command_ids_are_recorded_refusals_on_postgres(pg_url: str) -> None:
    """On PostgreSQL (where the bug showed) each such command is one refusal event, a
    255-character id is accepted and stored, and training goes on."""
    r = open_pg_run(pg_url)
    try:
        for command_id, reason in [("c" * 256, OVERSIZED_COMMAND), ("a\x00b", MISSING_COMMAND_ID)]:
            cmd = _breaker()
            cmd.command_id = command_id
            before = snapshot(r)
            assert_refused_and_nothing_else(r, before, handle(r, sign(cmd, SECRET)), frozenset({reason}))
        cmd = _breaker()
        cmd.command_id = "c" * 255
        result = handle(r, sign(cmd, SECRET))
        assert result.accepted, result
        assert [e.command_id for e in r.ex.store.read(after=result.positions[0] - 1)] == ["c" * 255]
        train_step(r)
    finally:
        r.ex.close()


def test_unsigned_commands_cannot_make_the_postgres_audit_views_unreadable(
        pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Bug: an unsigned command whose target_seed_id held a NUL was refused and recorded
    with the NUL in the payload's seed_id; PostgreSQL's ->> cannot turn \\u0000 into text, so
    from then on 'kasmina audit' (the command_refusals view) failed on that log. Anyone
    could do it, no key needed. Fuzzed on PostgreSQL: after any unsigned or forged
    commands, the audit and its views still read."""
    r = open_pg_run(pg_url)
    try:
        cmd = _breaker()
        cmd.target_seed_id, cmd.command_id = "a\x00b", "c\x00d"
        before = snapshot(r)
        assert_refused_and_nothing_else(r, before, handle(r, cmd), frozenset({MISSING_SIGNATURE}))

        @_fuzz(40)
        @given(adaptation_commands(), st.booleans())
        def check(fuzzed: leyline.AdaptationCommand, wrong_key: bool) -> None:
            if wrong_key:
                sign(fuzzed, b"not-the-test-secret")
            before = snapshot(r)
            assert_refused_and_nothing_else(r, before, handle(r, fuzzed))

        check()
    finally:
        r.ex.close()
    code, out, err = run_cli(["audit", "--db", pg_url, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["refusals"]
    code, out, err = run_cli(["audit", "--db", pg_url, "--json", "--query",
                              "SELECT seed_id, reason, detail FROM command_refusals"], capsys)
    assert code == 0, err
    assert ["a\\x00b", MISSING_SIGNATURE] in [row[:2] for row in json.loads(out)["rows"]]


def test_signed_text_with_a_nul_is_refused_so_the_postgres_views_stay_readable(
        pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Bug: a key holder's cull with a NUL in its reason annotation was accepted; the reason
    became the stage change's reason and PostgreSQL could no longer read seed_transitions.
    Any NUL in a signed command's text (annotations, seed id, blueprint, parameter keys) is
    now a malformed_command refusal naming the field."""
    r = open_pg_run(pg_url)
    try:
        site = SITES[0]
        assert handle(r, sign(commands.germinate(site, BLUEPRINTS[site], parameters=FAST), SECRET)).accepted
        for cmd, field in [(commands.cull(site, "bad\x00reason"), "annotations"),
                           (commands.germinate(site, BLUEPRINTS[site], annotations={"blend_mode\x00": "CONVEX"}),
                            "annotations key")]:
            before = snapshot(r)
            result = handle(r, sign(cmd, SECRET))
            assert_refused_and_nothing_else(r, before, result, frozenset({"malformed_command"}))
            assert result.detail.startswith(f"NUL character in {field}")
    finally:
        r.ex.close()
    for query in ("SELECT seed_id, to_stage, reason FROM seed_transitions",
                  "SELECT seed_id, reason, detail FROM command_refusals"):
        code, out, err = run_cli(["audit", "--db", pg_url, "--json", "--query", query], capsys)
        assert code == 0, err
        assert json.loads(out)["rows"]


# =========================================================================================
# The command line
# =========================================================================================

#: Subcommands run for real by the fuzz: each finishes in well under a second on a small log.
#: The others (demo, bench, telemetry tail, follow: long-running or network) are parsed only.
DISPATCHED = frozenset({("db", "upgrade"), ("db", "downgrade"), ("db", "current"), ("simulate",), ("history",),
                        ("replay",), ("audit",), ("verify",)})


def _leaves(parser: argparse.ArgumentParser,
            path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable subcommand of the real parser, with its own parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _leaves(sub, (*path, name))


LEAVES = dict(_leaves(build_parser()))
junk = st.one_of(any_text, st.sampled_from(["-", "--", "---", "-x", "--db", "--json", "=", "--db=", "\n", "\x00",
                                            "-1", "1e9", "nan", "'; DROP TABLE kasmina_events; --", "%s", "{}",
                                            "--help=1", "--seeds=-5", "--steps=0", "--rng=-1"]))
int_text = st.one_of(st.integers(-3, 40).map(str), st.integers().map(str),
                     st.sampled_from(["0", "1", "10000000", "10000001", "1e3", "0x10", " 3", "3.0", "", "٣"]))
sql_text = st.one_of(any_text, st.sampled_from([
    "SELECT 1", "select :x", "select %s", "WITH x AS (SELECT 1) SELECT * FROM x", "explain select 1",
    "SELECT * FROM kasmina_events", "select 1; select 2", "DELETE FROM kasmina_events", "with", "select",
    "SELECT reason FROM command_refusals", "select '\x00'", "select 1 /*", "UPDATE kasmina_events SET position=1",
    "select * from nope", "select randomblob(10)", "select x'00ff'", "select 1e999"]))


def _db_values(log_url: str) -> st.SearchStrategy[str]:
    """Hostile --db values (the log itself is the plausible one)."""
    return st.one_of(st.just("memory://"), urls_quick,
                     st.sampled_from(["sqlite:///missing.db", "sqlite:///", "postgresql://u:S3cr3tPw@127.0.0.1:1/db",
                                      "mysql://u:S3cr3tPw@h/d", "memory://"]))


@st.composite
def argvs(draw: st.DrawFn, log_url: str, dispatched: bool) -> list[str]:
    """A command line for a real subcommand: its flags with valid, edge or junk values, junk
    flags and junk positionals, in any order. For the subcommands that run, most tokens are
    plausible (so most lines get past the parser); for parsing alone, half are junk."""
    def pick(plausible: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
        return _often(draw, plausible, hostile) if dispatched else draw(st.one_of(plausible, hostile))

    path = draw(st.sampled_from(sorted(p for p in LEAVES if (p in DISPATCHED) == dispatched or not dispatched)))
    parser = LEAVES[path]
    argv = list(path)
    tokens: list[list[str]] = []
    for action in parser._actions:
        if "--traceback" in action.option_strings:
            continue  # --traceback shows a traceback on purpose
        if not draw(st.booleans()) and (action.option_strings or not pick(st.just(True), st.just(False))):
            continue  # an option left out; a required positional left out now and then
        if action.option_strings:
            flag = draw(st.sampled_from(action.option_strings))
            if action.nargs == 0:
                tokens.append([flag])
                continue
            if action.dest == "db":
                value = pick(st.just(log_url), _db_values(log_url))
            elif action.choices:
                value = pick(st.sampled_from(sorted(map(str, action.choices))), junk)
            elif action.type is not None and action.type is not str:
                value = pick(st.integers(0, 40).map(str), st.one_of(int_text, junk))
            elif action.dest == "query":
                value = pick(st.sampled_from(["SELECT reason FROM command_refusals", "SELECT 1"]), sql_text)
            else:
                value = pick(st.sampled_from(["head", "base", "-1", "+1", "0001_event_log"]), junk)
            tokens.append([f"{flag}={value}"] if draw(st.booleans()) and flag.startswith("--") else [flag, value])
        else:
            tokens.append([pick(st.sampled_from([*SITES, "sim.layer0", "base", "head", "0001_event_log"]), junk)])
    tokens += [[t] for t in pick(st.just([]), st.lists(junk, min_size=1, max_size=2))]
    order = draw(st.permutations(range(len(tokens))))
    for i in order:
        argv += tokens[i]
    return argv


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str], *, parse_only: bool = False) -> tuple[int, str, str]:
    """``kasmina ARGV`` in-process: (exit code, stdout, stderr); argparse's exit counts."""
    try:
        if parse_only:
            build_parser().parse_args(argv)
            code = 0
        else:
            code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_cli(code: int, out: str, err: str) -> None:
    """A documented exit code, never a traceback, and an error is exactly one 'error: ' line."""
    assert code in (0, EXIT_USER_ERROR, EXIT_USAGE, EXIT_VERIFY_FAILED), (code, out, err)
    assert "Traceback" not in out + err
    if code in (EXIT_USER_ERROR, EXIT_USAGE):
        assert err.startswith("error: ") and err.endswith("\n") and one_line(err[:-1]), err
    else:
        assert err == "", err
    assert "S3cr3tPw" not in out + err


def _small_simulation(argv: list[str]) -> bool:
    """Only a simulate small enough to take well under a second is run, not just parsed."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit:
        return True
    return args.command != "simulate" or args.seeds * args.steps <= 2_000


@pytest.fixture
def log_url(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A small simulated log in a temp dir, also the cwd and $KASMINA_DB, so no fuzzed
    command line can touch the repository."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    shutil.copyfile(template, tmp_path / "cli.db")
    monkeypatch.setenv("KASMINA_DB", url)
    with open_store(url) as store:
        from kasmina.simulate import run as simulate

        simulate(store, seeds=3, steps=60, rng=1)
    shutil.copyfile(tmp_path / "cli.db", tmp_path / "cli.template")
    return url


def test_fuzzed_command_lines_exit_cleanly(log_url: str, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    """The subcommands that read or write the log, with fuzzed arguments, run for real."""
    codes: set[int] = set()

    @_fuzz(250)
    @given(argvs(log_url, dispatched=True))
    def check(argv: list[str]) -> None:
        shutil.copyfile(tmp_path / "cli.template", tmp_path / "cli.db")  # downgrade base drops it
        code, out, err = run_cli(argv, capsys, parse_only=not _small_simulation(argv))
        assert_clean_cli(code, out, err)
        codes.add(code)

    check()
    assert {0, EXIT_USER_ERROR, EXIT_USAGE} <= codes, codes


def test_fuzzed_command_lines_of_every_subcommand_parse_cleanly(log_url: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Every subcommand, long-running ones included, only parsed: usage errors are one line."""

    @_fuzz(400)
    @given(st.one_of(argvs(log_url, dispatched=False), st.lists(junk, max_size=4)))
    def check(argv: list[str]) -> None:
        assert_clean_cli(*run_cli(argv, capsys, parse_only=True))

    check()


@pytest.mark.parametrize("argv", [
    ["history", "a", "b\nc"], ["verify", "x\r\ny"], ["replay", "--json", "\u2028", "z"], ["a\nb"],
    ["audit", "--query", "select 1", "extra\x85line"],
])
def test_regression_usage_error_echoing_a_line_break_stays_one_line(argv: list[str], log_url: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Bug: argparse's 'unrecognized arguments: b<newline>c' put the user's line break into
    the error, making it two lines (and letting a caller forge an output line)."""
    code, out, err = run_cli(argv, capsys)
    assert code == EXIT_USAGE
    assert_clean_cli(code, out, err)


@pytest.mark.parametrize("argv", [
    ["db", "downgrade", ""], ["db", "downgrade", "x@"], ["db", "downgrade", "head@"],
    ["db", "upgrade", "--revision", "@"], ["db", "upgrade", "--revision=head-1"],
    ["db", "upgrade", "--revision", "base+0"], ["db", "upgrade", "--revision", "0001_event_log-1"],
])
def test_regression_revision_alembic_asserts_on_is_a_usage_error(argv: list[str], log_url: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Bug: these revisions made alembic raise AssertionError (not its CommandError), so
    'kasmina db downgrade ""' ended in a traceback; now they are refused by the parser."""
    code, out, err = run_cli(argv, capsys)
    assert code == EXIT_USAGE and "revision" in err
    assert_clean_cli(code, out, err)
    with open_store(log_url) as store:  # the log was not touched
        assert store.head()[0] > 0


@pytest.mark.parametrize("command", [["db", "current"], ["db", "upgrade"], ["db", "downgrade", "base"]])
def test_regression_db_commands_on_memory_url_are_one_line_errors(command: list[str], log_url: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Bug: 'kasmina db current --db memory://' (and upgrade, downgrade) ended in an
    AssertionError traceback: the in-memory store has no schema to read or migrate."""
    code, out, err = run_cli([*command, "--db", "memory://"], capsys)
    assert code == EXIT_USER_ERROR and "memory://" in err
    assert_clean_cli(code, out, err)


@pytest.mark.parametrize("argv, code", [
    (["db", "downgrade", "base"], 0), (["db", "upgrade", "--revision", "0001"], 0), (["db", "upgrade"], 0),
    (["db", "downgrade", "-1"], 0), (["db", "downgrade", "+5"], EXIT_USER_ERROR),
    (["db", "upgrade", "--revision", "nope"], EXIT_USER_ERROR),
])
def test_revisions_alembic_understands_still_run(argv: list[str], code: int, log_url: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The revision check refuses only shapes alembic cannot handle: these reach alembic
    (a revision that does not exist is alembic's own one-line error, exit code 1)."""
    got, out, err = run_cli(argv, capsys)
    assert got == code, (out, err)
    assert_clean_cli(got, out, err)


# =========================================================================================
# Database URLs
# =========================================================================================

url_chars = _chars
schemes = st.sampled_from(["sqlite", "sqlite+pysqlite", "SQLITE", "postgresql", "postgres", "postgresql+psycopg",
                           "postgresql+foo", "mysql", "memory", "http", "", "sqlite+", "+", "ä"])
urls_quick = st.one_of(
    st.text(url_chars, max_size=60),
    st.builds(lambda s, rest: f"{s}://{rest}", schemes, st.text(url_chars, max_size=60)),
    st.builds(lambda s, rest: f"{s}:{rest}", schemes, st.text(url_chars, max_size=20)),
    st.builds(lambda s, rest: f"{s}://{rest}", schemes,
              st.text(st.sampled_from("%:@/?#[]&=.0123456789abcdefABCDEFxX +\\~"), max_size=40)),
)
urls = st.one_of(
    urls_quick,
    st.builds(lambda s, rest, n: f"{s}://{rest * n}", schemes, st.text(url_chars, min_size=1, max_size=4),
              st.integers(400, 3000)),  # very long
    st.sampled_from(["", " ", "\t", "memory://", "memory:", "sqlite://", "sqlite:///", "sqlite:///:memory:",
                     "postgresql://", "postgresql:///", "postgresql://h:0/db", "postgresql://h:65536/db",
                     "postgresql://h:-1/db", "postgresql://[::1/db", "sqlite:///%00", "sqlite:///x\x00y"]),
)


def _check_url_error(e: BaseException, password: str | None = None) -> None:
    assert isinstance(e, KasminaError), f"{type(e).__name__}: {e}"
    assert str(e) and one_line(str(e)), str(e)
    if password is not None:
        assert password not in str(e), str(e)


def test_fuzzed_urls_parse_or_are_one_line_bad_database_url() -> None:
    @_fuzz(600)
    @given(urls)
    def check(text: str) -> None:
        try:
            parsed = parse(text)
        except BadDatabaseURL as e:
            _check_url_error(e)
            return
        assert parsed.backend in ("sqlite", "postgresql", "memory")
        if parsed.url is not None:  # normalised to the one driver of each backend
            assert parsed.url.drivername in ("sqlite+pysqlite", "postgresql+psycopg")

    check()


passwords = st.builds(lambda tail: "S3cr3tPw" + tail, st.text(url_chars.filter(lambda c: c != "@"), max_size=12))


@st.composite
def urls_with_password(draw: st.DrawFn) -> tuple[str, str]:
    password = draw(passwords)
    user = draw(st.text(url_chars.filter(lambda c: c not in "@:/?#"), max_size=8))  # userinfo, not a path
    rest = draw(st.one_of(st.text(url_chars.filter(lambda c: c != "@"), max_size=30),
                          st.sampled_from(["h/db", "h:abc/db", "h:99999/db", "h/", "[::1/db", "h:0/db",
                                           "h/db?port=x", "h:5432"])))
    scheme = draw(st.one_of(schemes, st.just("postgresql")))
    return f"{scheme}://{user}:{password}@{rest}", password


def test_url_errors_never_show_the_password() -> None:
    """Bug: a malformed URL ('postgresql://u:PASSWORD@h:abc/db') was quoted whole in the
    error, password included; so was a SQLite URL that names no file."""

    @_fuzz(400)
    @given(urls_with_password())
    def check(case: tuple[str, str]) -> None:
        text, password = case
        try:
            parse(text)
        except BadDatabaseURL as e:
            _check_url_error(e, password)
        assert password not in redact(text)

    check()


def test_regression_redact_of_a_url_with_a_bad_port_is_not_an_exception() -> None:
    """Bug: redact() let make_url's ValueError out for 'postgresql://u:pw@h:abc/db'."""
    assert redact("postgresql://u:S3cr3tPw@h:abc/db") == "<malformed URL>"


@pytest.mark.parametrize("text", ["postgresql://u:S3cr3tPw@h:abc/db", "sqlite://u:S3cr3tPw@/",
                                  "postgresql://u:S3cr3tPw@[::1/db", "postgresql:u:S3cr3tPw@h/db",
                                  "postgresql://h:99999/db?password=S3cr3tPw"])
def test_regression_password_hidden_in_malformed_url_errors(text: str) -> None:
    with pytest.raises(BadDatabaseURL) as raised:
        parse(text)
    _check_url_error(raised.value, "S3cr3tPw")


def _local_url(text: str) -> str:
    """Fuzzed URLs for real connections stay local: any PostgreSQL URL that parses becomes
    one on 127.0.0.1 port 1 (refused at once), never a name to resolve or a remote host."""
    try:
        parsed = parse(text)
    except BadDatabaseURL:
        return text
    if parsed.backend == "postgresql":
        return "postgresql://u:S3cr3tPw@127.0.0.1:1/db"
    return text


def test_fuzzed_urls_to_open_store_and_cli_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Opening a log at a fuzzed URL, directly or with 'kasmina verify --db', is a store or
    a one-line KasminaError; the CLI says it as one 'error: ' line with exit code 1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KASMINA_DB", f"sqlite:///{tmp_path / 'unused.db'}")

    @_fuzz(150)
    @given(urls_quick.map(_local_url))
    def check(text: str) -> None:
        try:
            open_store(text).close()
        except KasminaError as e:
            _check_url_error(e, "S3cr3tPw")
        code, out, err = run_cli(["verify", "--db", text], capsys)
        assert_clean_cli(code, out, err)

    check()
