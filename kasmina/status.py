"""Every site at a glance: the rows of ``ex.status()`` and of ``kasmina status``.

One row per site: what the site's host layer is, which seed it holds (blueprint, stage,
steps in that stage, alpha, blend mode, generation), how many trainable parameters the seed
has, and the last counterfactual contribution a gate measured for it. The live executor
(:func:`kasmina.executor.status.live_status`) and the log alone (:func:`log_status`) build
their rows with the same :func:`site_status`, so both say the same thing about what the log
records. This module never imports torch: ``kasmina status`` runs without it.

What the log alone knows: every site a command ever reached (its replayed state), the step
of its newest record (a clean ``close()``, a checkpoint or an ``ex.note`` record the live
step; between those, alpha and steps in stage are as of the newest record), the seeds'
contributions and, where the executor recorded them, every site with its host type (the
:data:`SITES_REGISTERED` fact, :func:`sites_fact`) and each attached seed's trainable
parameter count (in its ``kernel_attached`` fact); ``?`` where it did not.
"""

from __future__ import annotations

import json
from contextlib import closing
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Iterator, Mapping, Sequence

from kasmina.errors import KasminaError
from kasmina.events import EventStore
from kasmina.lifecycle import events as ev
from kasmina.lifecycle.alpha import alpha_for
from kasmina.lifecycle.stages import LIVE_STAGES, Stage
from kasmina.lifecycle.state import SeedState
from kasmina.rebuild import replay

__all__ = ["HEADERS", "SITES_REGISTERED", "SiteStatus", "Status", "attached", "contributions", "log_status",
           "recorded_sites", "recorded_step", "site_status", "sites_fact"]

#: The executor-stream fact that lists the executor's sites and host types
#: (``{"sites": [[site, host type], ...], "step": N}``): how the log knows a site nothing has
#: grown in yet.
SITES_REGISTERED = ev.SITES_REGISTERED
#: Events whose gate inputs may hold a counterfactual measurement.
_GATED = frozenset({ev.STAGE_CHANGED, ev.GATE_FAILED})
#: Stages in which a seed module sits in the model (what the executor attaches).
_ATTACHED = LIVE_STAGES | {Stage.FOSSILIZED}
#: Table headers, in the order of :meth:`SiteStatus.cells`.
HEADERS = ("site", "host", "seed", "blueprint", "stage", "in stage", "alpha", "blend", "gen", "trainable",
           "contribution")
#: Sites with their host layer types, in the executor's order.
Sites = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class SiteStatus:
    """One site's row. ``None`` means not applicable (no seed) or, for ``host`` and
    ``trainable_parameters`` read from a log that does not record them, unknown."""

    site: str
    host: str | None
    seed_id: str | None
    blueprint: str | None
    stage: str
    paused: bool
    steps_in_stage: int
    alpha: float
    blend_mode: str | None
    generation: int
    trainable_parameters: int | None
    #: Relative probe-loss change the seed made, as the newest gate of this generation
    #: recorded it (non-finite values as the text ``"nan"``, ``"inf"``); None: never measured.
    contribution: float | str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteStatus:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise KasminaError(f"a site status row needs {', '.join(missing)}")
        return cls(**{n: data[n] for n in names})

    def cells(self) -> list[str]:
        """The row as the table prints it: ``-`` for not applicable, ``?`` for unknown."""
        stage = f"{self.stage} (paused)" if self.paused else self.stage
        trainable = "?" if self.trainable_parameters is None else f"{self.trainable_parameters:,}"
        return [self.site, self.host or "?", self.seed_id or "-", self.blueprint or "-", stage,
                str(self.steps_in_stage), f"{self.alpha:.3f}", self.blend_mode or "-", str(self.generation),
                trainable, _percent(self.contribution)]


def _percent(value: float | str | None) -> str:
    if value is None:
        return "-"
    return f"{value:+.2%}" if isinstance(value, (int, float)) else str(value)


@dataclass(frozen=True, slots=True)
class Status:
    """Every site of a run at one step; ``print()`` it for a table, ``to_dict()`` for JSON."""

    run: str
    step: int
    sites: tuple[SiteStatus, ...]
    #: ``live`` (an executor's own view) or ``log`` (rebuilt from the event log alone).
    source: str = "live"

    def __iter__(self) -> Iterator[SiteStatus]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def __getitem__(self, site: str) -> SiteStatus:
        for row in self.sites:
            if row.site == site:
                return row
        raise KeyError(f"no site {site!r} (sites: {', '.join(r.site for r in self.sites) or 'none'})")

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "step": self.step, "source": self.source,
                "sites": [row.to_dict() for row in self.sites]}

    def to_json(self, **options: Any) -> str:
        return json.dumps(self.to_dict(), **options)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Status:
        try:
            return cls(str(data["run"]), int(data["step"]), tuple(SiteStatus.from_dict(r) for r in data["sites"]),
                       str(data.get("source", "live")))
        except (KeyError, TypeError, ValueError) as e:
            raise KasminaError(f"not a status: {e}") from None

    def title(self) -> str:
        where = "the log" if self.source == "log" else "the executor"
        return f"run {self.run} at step {self.step} ({where}): {len(self.sites)} site{'s' * (len(self.sites) != 1)}"

    def rows(self) -> list[list[str]]:
        return [row.cells() for row in self.sites]

    def __str__(self) -> str:
        table = [list(HEADERS), *self.rows()]
        widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
        return "\n".join([self.title(), *lines])


def site_status(site: str, state: SeedState, step: int, *, host: str | None, trainable_parameters: int | None,
                contribution: float | str | None) -> SiteStatus:
    """The one way a row is made, live or from the log.

    A site the log has never heard of (``UNKNOWN``: nothing germinated there yet) is shown
    DORMANT. Steps in stage, like alpha, stop counting while the seed is paused.
    """
    held = state.blueprint_id is not None
    mode = ((state.blend or {}).get("mode") or "CONVEX") if held else None
    stage = Stage.DORMANT if state.stage is Stage.UNKNOWN else state.stage
    return SiteStatus(
        site=site, host=host, seed_id=site if held else None, blueprint=state.blueprint_id, stage=stage.name,
        paused=state.paused, steps_in_stage=state.steps_in_stage(state.paused_at_step if state.paused else step),
        alpha=alpha_for(state, step), blend_mode=str(mode) if mode is not None else None,
        generation=state.generation, trainable_parameters=trainable_parameters,
        contribution=contribution if held else None)


def attached(state: SeedState) -> bool:
    """Whether the executor keeps a seed module in the model for this state."""
    return state.stage in _ATTACHED or (state.stage is Stage.TERMINATED and state.blueprint_id is not None)


def contributions(store: EventStore, seed_ids: Iterable[str]) -> dict[str, float | str]:
    """Each seed's newest counterfactual contribution in its current generation (when one was measured)."""
    found: dict[str, float | str] = {}
    for seed_id in seed_ids:
        value = None
        with closing(store.read(stream_id=seed_id)) as events:
            for event in events:
                if event.type not in _GATED:
                    continue
                if event.data.get("to_stage") in (Stage.GERMINATED.name, Stage.DORMANT.name):
                    value = None  # a new generation, or a site made clean: nothing measured yet
                inputs = event.data.get("inputs")
                if isinstance(inputs, Mapping) and inputs.get("contribution") is not None:
                    value = inputs["contribution"]
        if value is not None:
            found[seed_id] = value
    return found



def _executor_record(store: EventStore) -> tuple[int, Sites]:
    """The newest step the executor stream records, and the sites it last registered."""
    step, sites = 0, []
    with closing(store.read(stream_id=ev.EXECUTOR_STREAM)) as events:
        for event in events:
            if isinstance(event.data.get("step"), int):
                step = max(step, int(event.data["step"]))
            if event.type == SITES_REGISTERED and isinstance(event.data.get("sites"), list):
                sites = [(str(pair[0]), str(pair[1])) for pair in event.data["sites"]
                         if isinstance(pair, list) and len(pair) == 2]
    return step, sites


def recorded_sites(store: EventStore) -> Sites:
    """The sites (and host layer types) the executor last registered in this run, in its order."""
    return _executor_record(store)[1]


def sites_fact(store: EventStore, sites: Sequence[tuple[str, str]], step: int) -> ev.Event | None:
    """The :data:`SITES_REGISTERED` fact for an executor opening with ``sites`` (name, host
    type), or None when the log already says exactly that (a resumed run records nothing)."""
    listed = [(str(name), str(host)) for name, host in sites]
    if recorded_sites(store) == listed:
        return None
    return ev.Event(SITES_REGISTERED, {"sites": [list(pair) for pair in listed], "step": step})


def _seeds_step(store: EventStore, seeds: Iterable[SeedState]) -> int:
    """The newest step the seeds' own records hold: each stage's start and each stream's last event."""
    steps = [0]
    for state in seeds:
        steps.append(state.stage_entered_step)
        with closing(store.read(after=state.position - 1, upto=state.position)) as last:
            steps.extend(int(e.data["step"]) for e in last if isinstance(e.data.get("step"), int))
    return max(steps)


def recorded_step(store: EventStore, seeds: Iterable[SeedState]) -> int:
    """The training step the log has reached: the last one any event recorded.

    A clean ``close()``, every checkpoint and every note record it; after a crash the newest
    step written by any seed (a transition, a kernel attached, a baseline, a pause) or on the
    executor stream is the best the log knows. What a re-opened executor continues from.
    """
    return max(_executor_record(store)[0], _seeds_step(store, seeds))


def log_status(store: EventStore) -> Status:
    """The status of the store's run, from its events alone (no torch, no model)."""
    seeds = replay(store).seeds
    executor_step, registered = _executor_record(store)
    step = max(executor_step, _seeds_step(store, seeds.values()))
    hosts = dict(registered)
    names = list(hosts) + sorted(set(seeds) - hosts.keys())
    found = contributions(store, seeds)
    rows = []
    for name in names:
        state = seeds.get(name) or SeedState(name)
        kernel = state.kernel or {}
        trainable = kernel.get("trainable_parameters") if attached(state) else 0
        rows.append(site_status(name, state, step, host=hosts.get(name),
                                trainable_parameters=int(trainable) if isinstance(trainable, int) else None,
                                contribution=found.get(name)))
    return Status(store.run, step, tuple(rows), source="log")
