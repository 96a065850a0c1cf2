"""Leader and follower executors on one log (issue 7: multi-process training).

* In one process: a leader and a follower executor around two equal replicas on one
  SQLite log; the follower takes every decision from the log.
* Two ranks of ``torch.distributed`` (gloo) sharing one REAL PostgreSQL log, through
  ``examples/distributed_demo.py``: every rank reaches the same log position, stages,
  alpha and blend configuration at every step, the replicas stay equal, and each event is
  stored once.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kasmina
from kasmina import commands
from kasmina.errors import KasminaError, StoreError
from kasmina.events import migrate, open_store
from kasmina.lifecycle.state import digest
from test_executor import FAST, SECRET, Net, _catalogue, signed

ROOT = Path(__file__).resolve().parents[1]
SITES = ["features.2", "classifier.1"]


def _pair(db: str) -> tuple[Net, Net, kasmina.Executor, kasmina.Executor]:
    torch.manual_seed(0)
    a = Net()
    b = copy.deepcopy(a)
    leader = kasmina.Executor(a, SITES, db=db, secret=SECRET, catalogue=_catalogue(),
                              optimizer=torch.optim.SGD(a.parameters(), lr=0.05))
    follower = kasmina.Executor(b, SITES, db=db, secret=SECRET, catalogue=_catalogue(),
                                optimizer=torch.optim.SGD(b.parameters(), lr=0.05), role="follower")
    return a, b, leader, follower


def _view(ex: kasmina.Executor) -> list[tuple[str, str, float, int, object]]:
    return [(v.seed_id, v.stage, v.alpha, v.generation, ex.state(v.seed_id).blend) for v in ex.seeds()]


def test_a_follower_takes_every_decision_from_the_log_and_writes_nothing(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'run.db'}"
    a, b, leader, follower = _pair(db)
    try:
        assert leader.handle(signed(commands.germinate("features.2", "conv_adapter", parameters=FAST,
                                                       annotations={"blend_mode": "RESIDUAL"}))).accepted
        before = leader.store.head()[0]
        refused = follower.handle(signed(commands.germinate("classifier.1", "zero_linear")))
        assert (refused.accepted, refused.reason) == (False, "not_leader")
        assert leader.store.head()[0] == before  # a follower's refusal is not written either
        follower.sync()
        g = torch.Generator().manual_seed(1)
        for _ in range(14):
            x = torch.randn(8, 1, 6, 6, generator=g)
            for model, ex in ((a, leader), (b, follower)):
                model(x).sum().backward()
            leader.step({"val_loss": 1.0})
            head = leader.ledger.position
            follower.step()
            follower.sync(head)
            assert follower.ledger.position == head
            assert _view(follower) == _view(leader)
            assert digest(follower.ledger.seeds.values()) == digest(leader.ledger.seeds.values())
            assert follower.sites["features.2"].mode == leader.sites["features.2"].mode
            assert torch.equal(follower.sites["features.2"].alpha, leader.sites["features.2"].alpha)
        assert leader.seed("features.2").stage == "FOSSILIZED"
        # The follower built the same seed from the same generator, and recorded nothing.
        for p, q in zip(leader.sites["features.2"].seed.parameters(), follower.sites["features.2"].seed.parameters()):
            assert torch.equal(p, q)
        head = leader.store.head()[0]
        follower.close()
        assert leader.store.head()[0] == head
    finally:
        leader.close()


def test_a_follower_that_cannot_read_the_log_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = f"sqlite:///{tmp_path / 'run.db'}"
    _, _, leader, follower = _pair(db)
    try:
        leader.handle(signed(commands.germinate("features.2", "conv_adapter", parameters=FAST)))
        (tmp_path / "run.db").rename(tmp_path / "gone.db")
        follower.store.close()  # its connection is gone with the file: the next read must fail
        with pytest.raises(StoreError):
            follower.sync()
    finally:
        with caplog.at_level(logging.WARNING, logger="kasmina.executor.runlog"):
            leader.close()  # the run's end cannot be recorded either: said, not raised
    assert "could not record its end" in caplog.text


def test_a_follower_whose_read_fails_part_way_still_follows_what_it_folded(tmp_path: Path) -> None:
    """Found in review: catch_up folds event by event, so a read that failed after a few
    left states changed but the model not reconciled, and the retry never did it either."""
    db = f"sqlite:///{tmp_path / 'run.db'}"
    _, _, leader, follower = _pair(db)
    try:
        assert leader.handle(signed(commands.germinate("features.2", "conv_adapter", parameters=FAST))).accepted
        target = leader.ledger.written
        real_read = follower.store.read

        def failing_read(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            for count, event in enumerate(real_read(*args, **kwargs)):  # type: ignore[arg-type]
                if count == 2:  # after DORMANT and GERMINATED, before kernel_attached
                    raise StoreError("read failed, database unavailable: connection lost")
                yield event

        follower.store.read = failing_read  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            follower.sync(target)
        assert follower.state("features.2").stage.name == "GERMINATED"
        assert follower.sites["features.2"].seed is not None  # reconciled with what was folded
        follower.store.read = real_read  # type: ignore[method-assign]
        follower.sync(target)
        assert follower.ledger.position == target and _view(follower) == _view(leader)
    finally:
        follower.close()
        leader.close()


def test_a_follower_never_writes_notes_or_checkpoints(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'run.db'}"
    _, _, leader, follower = _pair(db)
    try:
        head = leader.store.head()[0]
        with pytest.raises(KasminaError, match="a follower never writes"):
            follower.note("evaluation", {"acc": 0.5})
        with pytest.raises(KasminaError, match="a follower never writes"):
            follower.checkpoint(tmp_path / "ckpt")
        assert leader.store.head()[0] == head and not (tmp_path / "ckpt").exists()
    finally:
        follower.close()
        leader.close()


def test_a_writer_that_was_interleaved_catches_up_on_the_other_writers_events() -> None:
    """Found in review: the ledger moved its position past another writer's events when it
    appended after them, so catch_up (and Executor.sync) never folded them."""
    from kasmina.events.memory import MemoryEventStore
    from kasmina.ledger import Ledger
    from kasmina.lifecycle import GateInputs
    from kasmina.lifecycle import commands as c

    store = MemoryEventStore()
    a, b = Ledger(store), Ledger(store)
    germinate = lambda seed: c.Germinate(seed, "conv_adapter", 0, GateInputs(blueprint_known=True,  # noqa: E731
                                                                             parameters={}))
    assert a.submit(germinate("x")).accepted
    assert b.submit(germinate("y")).accepted  # another writer, between a's appends
    assert a.submit(c.Pause("x", 1)).accepted
    assert a.written == store.head()[0] and a.position < a.written
    assert a.state("y").stage.name == "UNKNOWN"
    a.catch_up()
    assert a.state("y").stage.name == "GERMINATED" and a.position == store.head()[0]
    assert digest(a.seeds.values()) == digest(Ledger.open(store).seeds.values())


def test_role_is_checked() -> None:
    with pytest.raises(KasminaError, match="role must be"):
        kasmina.Executor(Net(), SITES, db="memory://", secret=SECRET, role="boss")


@pytest.mark.slow
def test_two_ranks_share_one_postgres_log(pg_url: str, tmp_path: Path) -> None:
    migrate.upgrade(pg_url)
    trace = tmp_path / "trace"
    trace.mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "distributed_demo.py"), "--db", pg_url,
                           "--world-size", "2", "--steps", "96", "--host-steps", "150", "--rng", "3",
                           "--trace", str(trace)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((trace / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["role"] for r in ranks] == ["leader", "follower"]
    steps0, steps1 = ranks[0]["trace"], ranks[1]["trace"]
    assert len(steps0) == len(steps1) == 96
    for mine, theirs in zip(steps0, steps1):
        assert mine == theirs, f"ranks diverged at step {mine['step']}"
    assert ranks[0]["model_sha256"] == ranks[1]["model_sha256"]
    stages = {s["stage"] for step in steps0 for s in step["seeds"]}
    assert {"TRAINING", "BLENDING", "SHADOWING", "PROBATIONARY", "FOSSILIZED", "EMBARGOED"} <= stages
    assert ranks[0]["final"]["body.2"] == ["FOSSILIZED", 2]
    with open_store(pg_url) as store:
        events = list(store.read())
        assert [e.position for e in events] == list(range(1, len(events) + 1))
        assert events[-1].position == steps0[-1]["position"] + 1  # + the leader's executor_closed
        kinds = [e.type for e in events]
        # Written once, by the leader: one kernel_attached per germination, one close.
        germinations = sum(1 for e in events if e.type == "stage_changed" and e.data["to_stage"] == "GERMINATED")
        assert kinds.count("kernel_attached") == germinations == 4
        assert kinds.count("executor_closed") == 1
        assert len({(e.stream_id, e.version) for e in events}) == len(events)
    verified = subprocess.run([str(Path(sys.executable).with_name("kasmina")), "verify", "--db", pg_url, "--json"],
                              capture_output=True, text=True, timeout=120)
    assert json.loads(verified.stdout)["ok"] is True, verified.stderr
