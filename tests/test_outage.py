"""The database goes away mid-run, then comes back (issue 7).

The REAL PostgreSQL test database is taken away the way an outage looks to a client: new
connections are refused (``ALTER DATABASE ... ALLOW_CONNECTIONS false``) and every open
session, the executor's held writer connection included, is terminated. While it is away,
commands are refused with ``store_unavailable`` and nothing is carried out, and training
steps go on with the last replayed state. When it is back, handling resumes, the pending
transitions are recorded, and the log is complete and verifiable, with nothing half-written.

A second test makes another writer move a seed's stream under the executor (what a commit
whose answer was lost with the connection looks like): the step must recover by reloading
the seed from the log, not stay stale.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
import torch
from sqlalchemy.engine import make_url

import kasmina
from kasmina import commands
from kasmina.events import NewEvent, PendingAppend, migrate, open_store
from kasmina.lifecycle import events as ev
from kasmina.rebuild import replay, verify
from conftest import _admin
from test_executor import FAST, SECRET, Net, _catalogue, signed, train

SLOWER = {**FAST, "training_steps": 6, "blend_steps": 10}


class Outage:
    """Take a database away from clients and give it back (the admin session stays)."""

    def __init__(self, url: str) -> None:
        self.name = make_url(url).database

    def _admin(self, *sql: str) -> None:
        with _admin() as conn:
            for statement in sql:
                conn.execute(statement)

    def begin(self) -> None:
        self._admin(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS false',
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()")

    def end(self) -> None:
        self._admin(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS true')


@pytest.fixture
def outage(pg_url: str) -> Iterator[Outage]:
    o = Outage(pg_url)
    try:
        yield o
    finally:
        o.end()  # never leave the test database closed, whatever failed


def test_commands_refuse_and_training_goes_on_while_the_database_is_away(pg_url: str, outage: Outage) -> None:
    migrate.upgrade(pg_url)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ex = kasmina.Executor(model, ["features.2", "classifier.1"], db=pg_url, secret=SECRET, catalogue=_catalogue(),
                          optimizer=opt)
    try:
        assert ex.handle(signed(commands.germinate("features.2", "conv_adapter", parameters=SLOWER))).accepted
        train(model, opt, ex, 8)  # into BLENDING
        assert ex.seed("features.2").stage == "BLENDING"
        head_before = ex.store.head()[0]
        alpha_before = ex.seed("features.2").alpha

        outage.begin()
        late = signed(commands.germinate("classifier.1", "zero_linear", parameters=FAST))
        result = ex.handle(late)
        assert (result.accepted, result.reason) == (False, "store_unavailable")
        assert "unavailable" in result.detail and "\n" not in result.detail
        assert ex.sites["classifier.1"].seed is None  # nothing carried out
        errors = []
        for _ in range(12):  # the blend would end in here: the transition cannot be recorded
            train(model, opt, ex, 1)
            errors.append(ex.last_error)  # kept alive, so id() cannot be reused
        assert ex.last_error is not None and "unavailable" in str(ex.last_error)
        assert len({id(e) for e in errors}) < 12  # backoff: not one connection attempt per step
        assert ex.seed("features.2").stage == "BLENDING"  # the last replayed state
        assert ex.seed("features.2").alpha >= alpha_before  # alpha still follows the step
        assert all(torch.isfinite(p).all() for p in model.parameters())

        outage.end()
        deadline = time.monotonic() + 10
        while ex.last_error is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # the backoff (0.5 s after one failed attempt) runs out
            train(model, opt, ex, 1)
        assert ex.last_error is None
        assert ex.seed("features.2").stage == "SHADOWING"  # recorded as soon as the log is back
        again = ex.handle(late)  # the same command: it was never recorded, so it is not a replay
        assert again.accepted, again
        assert ex.sites["classifier.1"].seed is not None
    finally:
        ex.close()
    with open_store(pg_url) as store:
        assert verify(store) == store.head()[0] > head_before
        events = list(store.read())
        assert [e.position for e in events] == list(range(1, len(events) + 1))
        assert sum(1 for e in events if e.command_id == late.command_id) > 0
        # Nothing but what was recorded before and after: no refusal for the lost command,
        # and exactly one BLENDING -> SHADOWING transition.
        moves = [(e.data["from_stage"], e.data["to_stage"]) for e in events
                 if e.stream_id == "features.2" and e.type == ev.STAGE_CHANGED]
        assert moves.count(("BLENDING", "SHADOWING")) == 1
        assert replay(store).seeds["features.2"].stage.name == "SHADOWING"


def test_a_step_recovers_when_another_writer_moved_a_seed_on(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'run.db'}"
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ex = kasmina.Executor(model, ["features.2"], db=db, secret=SECRET, catalogue=_catalogue(), optimizer=opt)
    try:
        assert ex.handle(signed(commands.germinate("features.2", "conv_adapter", parameters=FAST))).accepted
        with open_store(db) as other:
            version = other.stream_version("features.2")
            other.append_many([PendingAppend("features.2", [NewEvent(ev.BASELINE_RECORDED, {"metric": 0.5, "step": 0})],
                                             expected_version=version)])
        train(model, opt, ex, 1)  # the tick's expected version is stale: no change this step
        assert ex.last_error is not None and type(ex.last_error).__name__ == "StaleVersion"
        assert ex.state("features.2").baseline_metric == 0.5  # reloaded from the log
        train(model, opt, ex, 1)
        assert ex.last_error is None and ex.seed("features.2").stage == "TRAINING"
    finally:
        ex.close()
    with open_store(db) as store:
        assert verify(store) == store.head()[0]
