"""Every site at a glance: ``ex.status()`` live, and ``kasmina status`` from the log alone."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from typing import Any, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kasmina
from kasmina import commands
from kasmina.cli import commands as cli_commands
from kasmina.events import migrate, open_store
from kasmina.executor.status import site_hosts, trainable_parameters
from kasmina.ledger import Ledger
from kasmina.lifecycle import events as ev
from kasmina.lifecycle.stages import Stage
from kasmina.lifecycle.state import SeedState
from kasmina.security import sign
from kasmina.status import (SITES_REGISTERED, Status, attached, log_status, recorded_sites, site_status,
                            sites_fact)

SECRET = b"status-secret"
#: Short dwells; a negative threshold lets a seed whose contribution is tiny still fossilize.
FAST = {"training_steps": 3, "blend_steps": 6, "shadow_steps": 2, "probation_steps": 2, "embargo_steps": 50,
        "contribution_threshold": -1.0}
SITES = ["conv", "fc1", "fc2", "fc3", "head"]
#: What each site is at the end of :func:`grow`: one seed per stage of interest, one empty site.
STAGES = {"conv": "FOSSILIZED", "fc1": "BLENDING", "fc2": "TRAINING", "fc3": "EMBARGOED", "head": "DORMANT"}
#: Fields the log does not record (none: the executor records its sites' host types and
#: each attached seed's size; kept so the comparison says so if that ever changes).
NOT_RECORDED: tuple[str, ...] = ()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x)).flatten(1)
        return self.head(F.relu(self.fc3(F.relu(self.fc2(F.relu(self.fc1(h)))))))


def grow(url: str) -> kasmina.Executor:
    """A run mid-way: seeds FOSSILIZED, BLENDING, TRAINING, culled into EMBARGOED, and one empty site."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    probe = (torch.randn(8, 1, 4, 4, generator=g), torch.randint(0, 10, (8,), generator=g))
    ex = kasmina.Executor(model, sites=SITES, db=url, secret=SECRET, optimizer=opt, probe=lambda: probe)

    def command(cmd: Any) -> None:
        result = ex.handle(sign(cmd, SECRET))
        assert result.accepted, result

    def train(steps: int) -> None:
        for _ in range(steps):
            x, y = torch.randn(8, 1, 4, 4, generator=g), torch.randint(0, 10, (8,), generator=g)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ex.step(metrics={"val_loss": 1.0})

    command(commands.germinate("conv", "conv_adapter", parameters=FAST))
    train(16)
    command(commands.germinate("fc1", "lora", parameters=FAST))
    command(commands.germinate("fc2", "mlp", parameters={**FAST, "training_steps": 50}))
    train(1)
    command(commands.germinate("fc3", "zero_linear", parameters=FAST))
    train(6)
    command(commands.cull("fc3", reason="not wanted"))
    train(2)
    ex.note("evaluation", {"val_loss": 1.0})  # records the live step in the log
    return ex


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest) -> str:
    """A migrated log on each SQL backend (the executor never migrates an existing database)."""
    found = str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
    migrate.upgrade(found)
    return found


@pytest.fixture
def grown(url: str) -> Iterator[kasmina.Executor]:
    ex = grow(url)
    yield ex
    ex.close()


def test_live_status_is_a_table_and_json_with_every_field(grown: kasmina.Executor, url: str) -> None:
    status = grown.status()
    assert [row.site for row in status] == SITES and status.step == grown.step_count == 25
    assert {row.site: row.stage for row in status} == STAGES
    hosts = {row.site: row.host for row in status}
    assert hosts == {"conv": "Conv2d", "fc1": "Linear", "fc2": "Linear", "fc3": "Linear", "head": "Linear"}
    for name in SITES:
        row, seed = status[name], grown.sites[name].seed
        assert row.trainable_parameters == (sum(p.numel() for p in seed.parameters()) if seed is not None else 0)
        assert row.generation == (0 if name == "head" else 1)
        assert row.alpha == grown.seed(name).alpha
        state = grown.state(name)
        assert row.steps_in_stage == grown.step_count - state.stage_entered_step
    assert status["fc1"].trainable_parameters > 0 and 0 < status["fc1"].alpha < 1
    assert status["conv"].alpha == 1.0 and status["fc2"].alpha == status["fc3"].alpha == 0.0
    assert status["fc3"].trainable_parameters == 0 and status["fc3"].seed_id == "fc3"  # culled: which seed it was
    assert (status["conv"].blueprint, status["fc1"].blend_mode) == ("conv_adapter", "RESIDUAL")
    empty = status["head"]
    assert (empty.seed_id, empty.blueprint, empty.blend_mode, empty.contribution) == (None, None, None, None)

    # The contribution is the newest one a gate measured, as the seed_contributions view has it.
    measured = [c for c in cli_commands.audit(url)["contributions"] if c["seed_id"] == "conv"]
    assert measured and status["conv"].contribution == pytest.approx(measured[-1]["contribution"], abs=1e-9)
    assert status["fc1"].contribution is None  # no gate has fallen due while it blends

    text = str(status)
    lines = text.splitlines()
    assert lines[0] == "run default at step 25 (the executor): 5 sites"
    assert lines[1].split() == ["site", "host", "seed", "blueprint", "stage", "in", "stage", "alpha", "blend",
                                "gen", "trainable", "contribution"]
    assert lines[2].split()[:5] == ["conv", "Conv2d", "conv", "conv_adapter", "FOSSILIZED"]
    assert lines[-1].split() == ["head", "Linear", "-", "-", "DORMANT", "25", "0.000", "-", "0", "0", "-"]

    data = json.loads(status.to_json())
    assert data == status.to_dict() and data["source"] == "live" and len(data["sites"]) == 5
    assert Status.from_dict(data) == status
    with pytest.raises(KeyError, match="no site 'nope'"):
        status["nope"]


def _compare(live: Status, log: Status, *, unrecorded: tuple[str, ...]) -> None:
    """Row for row: equal on every field the log records; the others unknown (None) in the log,
    except a seed not in the model, which the log knows trains nothing."""
    rows = {row.site: row for row in log}
    for row in live:
        if row.site not in rows:
            continue
        found = rows[row.site]
        assert replace(found, **{k: getattr(row, k) for k in unrecorded}) == row, row.site
        for field in unrecorded:
            in_model = attached(SeedState(row.site, Stage[row.stage], blueprint_id=row.blueprint))
            expected = 0 if field == "trainable_parameters" and not in_model else None
            assert getattr(found, field) == expected, (row.site, field)


def test_log_status_agrees_with_live_row_for_row(grown: kasmina.Executor) -> None:
    live = grown.status()
    with open_store(grown.store.url, run=grown.store.run) as store:
        log = log_status(store)
    assert log.source == "log" and (log.run, log.step) == (live.run, live.step)
    # Every site, also the one nothing was sent to: the executor recorded its sites.
    assert [row.site for row in log] == SITES
    _compare(live, log, unrecorded=NOT_RECORDED)


def test_the_executor_records_hosts_sites_and_parameters(grown: kasmina.Executor) -> None:
    """What the log needs to know every field: the sites with their host types (once, when
    the leader opens), and each attached seed's trainable parameters (in kernel_attached)."""
    assert recorded_sites(grown.store) == site_hosts(grown.sites)
    registered = [e for e in grown.store.read(stream_id=ev.EXECUTOR_STREAM) if e.type == SITES_REGISTERED]
    assert len(registered) == 1
    for name, site in grown.sites.items():
        if site.seed is not None:
            attached = [e for e in grown.store.read(stream_id=name) if e.type == ev.KERNEL_ATTACHED][-1]
            assert attached.data["trainable_parameters"] == trainable_parameters(site) > 0
    assert log_status(grown.store).sites == grown.status().sites


def test_sites_are_recorded_only_when_the_log_does_not_list_them() -> None:
    with open_store("memory://") as store:
        ledger = Ledger(store)
        hosts = [("fc", "Linear"), ("conv", "Conv2d")]
        fact = sites_fact(store, hosts, 3)
        assert fact is not None and fact.type == SITES_REGISTERED and fact.data["step"] == 3
        ledger.note(ev.EXECUTOR_STREAM, [fact])
        assert recorded_sites(store) == hosts
        assert sites_fact(store, hosts, 9) is None  # a resumed run with the same sites records nothing
        changed = sites_fact(store, hosts[:1], 9)
        assert changed is not None and changed.data["sites"] == [["fc", "Linear"]]
        ledger.note(ev.EXECUTOR_STREAM, [changed])
        assert recorded_sites(store) == hosts[:1]  # the newest registration is the one shown


def test_cli_status_from_the_log_alone_without_torch(url: str) -> None:
    ex = grow(url)
    live = ex.status()
    ex.close()  # records the step reached: the log's step is the live one
    script = (
        "import sys\n"
        "from kasmina.cli import main\n"
        f"assert main(['status', '--db', {url!r}, '--json']) == 0\n"
        f"assert main(['status', '--db', {url!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    body, table = result.stdout.split("\n}\n", 1)
    data = json.loads(body + "\n}")
    assert data["database"] and data["step"] == live.step
    _compare(live, Status.from_dict(data), unrecorded=NOT_RECORDED)
    assert "at step 25 (the log): 5 sites" in table
    for name in SITES:
        assert name in table and STAGES[name] in table


def test_cli_status_of_an_empty_log_and_an_unknown_run(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from kasmina.cli import main

    migrate.upgrade(sqlite_url)
    assert main(["status", "--db", sqlite_url]) == 0
    assert "0 sites; no command has reached a site yet" in capsys.readouterr().out
    assert main(["status", "--db", sqlite_url, "--run", "nosuch"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no run 'nosuch'") and err.count("\n") == 1


def test_a_row_freezes_while_paused_and_shows_a_site_never_used_as_dormant() -> None:
    blending = SeedState("fc", Stage.BLENDING, generation=2, blueprint_id="lora", parameters={"blend_steps": 10},
                         stage_entered_step=100, paused_at_step=104, blend={"mode": "CHANNEL"})
    paused = site_status("fc", blending, 200, host="Linear", trainable_parameters=12, contribution=0.5)
    assert (paused.steps_in_stage, paused.paused, paused.blend_mode) == (4, True, "CHANNEL")
    assert paused.alpha == site_status("fc", replace(blending, paused_at_step=None), 104, host=None,
                                       trainable_parameters=None, contribution=None).alpha
    assert "BLENDING (paused)" in str(Status("r", 200, (paused,)))
    never = site_status("x", SeedState("x"), 7, host=None, trainable_parameters=None, contribution=0.3)
    assert (never.stage, never.steps_in_stage, never.seed_id, never.contribution) == ("DORMANT", 7, None, None)
    assert never.cells()[1] == "?" and never.cells()[-2] == "?"
    legacy = site_status("y", SeedState("y", Stage.TRAINING, 1, "lora"), 3, host="Linear", trainable_parameters=1,
                         contribution=None)
    assert legacy.blend_mode == "CONVEX"  # a germination from before blend configs were recorded
