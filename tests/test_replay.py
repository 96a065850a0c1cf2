"""Replay is exact: the live state after every command equals replay(to_position=p)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kasmina.events import migrate, open_store
from kasmina.ledger import Ledger
from kasmina.lifecycle import GateInputs, Stage, commands as c
from kasmina.rebuild import replay, replay_seed, verify

SEEDS = ("features.0", "features.3", "classifier.0")
HEALTHY = dict(
    blueprint_known=True, parameters={}, kernel_attached=True, isolation_violations=0,
    seed_loss_finite=True, seed_grad_finite=True, fetch_latency_ms=1.0, output_finite=True,
    output_growth=1.0, interface_ok=True, metric=1.0, baseline_metric=1.0, hooks=0,
    registered_params=0, cache_entries=0,
)
FAULTS = [{}, {"seed_loss_finite": False}, {"fetch_latency_ms": 50.0}, {"interface_ok": False},
          {"metric": 9.0}, {"hooks": 2}, {"blueprint_known": False}]

op = st.tuples(
    st.sampled_from(["germinate", "tick", "tick", "tick", "advance", "cull", "terminate", "pause", "resume"]),
    st.sampled_from(SEEDS),
    st.integers(min_value=0, max_value=4),         # steps to advance the clock
    st.sampled_from(range(len(FAULTS))),           # which input is bad (0 = none)
    st.integers(min_value=1, max_value=4),         # dwell for every stage
)


def _command(kind: str, seed: str, step: int, inputs: GateInputs, dwell: int, ledger: Ledger) -> c.Command | None:
    if kind == "germinate":
        params = {k: float(dwell) for k in ("training_steps", "blend_steps", "shadow_steps",
                                            "probation_steps", "embargo_steps")}
        return c.Germinate(seed, "conv_adapter", step, inputs, parameters=params, baseline_metric=1.0,
                           blend={"mode": "CONVEX"})
    if kind == "advance":
        nxt = {Stage.GERMINATED: Stage.TRAINING, Stage.TRAINING: Stage.BLENDING, Stage.BLENDING: Stage.SHADOWING,
               Stage.SHADOWING: Stage.PROBATIONARY, Stage.PROBATIONARY: Stage.FOSSILIZED}
        return c.Advance(seed, step, nxt.get(ledger.state(seed).stage, Stage.FOSSILIZED), inputs)
    return {"cull": c.Cull(seed, step, "test"), "terminate": c.Terminate(seed, step),
            "pause": c.Pause(seed, step), "resume": c.Resume(seed, step)}.get(kind)


def _run(store, ops, snapshot_every: int) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(store, snapshot_every=snapshot_every)
    step, checkpoints, n = 0, [], 0
    for kind, seed, advance, fault, dwell in ops:
        step += advance
        inputs = GateInputs(**{**HEALTHY, **FAULTS[fault]})
        if kind == "tick":
            ledger.tick(step, lambda state, gates: inputs, seed_ids=SEEDS)
        else:
            n += 1
            command = _command(kind, seed, step, inputs, dwell, ledger)
            assert command is not None
            ledger.submit(command, command_id=f"cmd-{n}")
        live = {sid: s for sid, s in ledger.seeds.items() if s.version}
        checkpoints.append((store.head()[0], live))
    for position, live in checkpoints:
        assert replay(store, to_position=position).seeds == live
        assert replay(store, to_position=position, use_snapshots=False).seeds == live
        for sid, state in live.items():
            assert replay_seed(store, sid, to_position=position) == state
    verify(store)


@settings(max_examples=60, deadline=None)
@given(st.lists(op, min_size=1, max_size=40))
def test_live_state_equals_replay_memory(ops) -> None:  # type: ignore[no-untyped-def]
    _run(open_store("memory://"), ops, snapshot_every=3)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=25))
def test_live_state_equals_replay_sqlite(ops) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'log.db'}"
        migrate.upgrade(url)
        with open_store(url, synchronous="NORMAL") as store:
            _run(store, ops, snapshot_every=2)


def test_same_log_same_digest_and_reopened_ledger_matches(tmp_path: Path) -> None:
    from kasmina.simulate import run

    url = f"sqlite:///{tmp_path / 'a.db'}"
    migrate.upgrade(url)
    with open_store(url) as store:
        run(store, seeds=5, steps=200, rng=3)
        first = replay(store)
        assert replay(store).digest == first.digest == replay(store, use_snapshots=False).digest
        assert Ledger.open(store).seeds == first.seeds
    # the same simulation into another log gives the same seeds, hence the same digest
    with open_store("memory://") as other:
        run(other, seeds=5, steps=200, rng=3)
        assert replay(other).digest == first.digest
        assert replay(other, to_position=10).digest != first.digest
