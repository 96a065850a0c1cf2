"""``kasmina simulate``: realistic seed lifecycles without a model, through the real store.

A scripted controller germinates seeds at random sites, each with a fate drawn from the run
seed: most pass every gate and fossilize, some fail a named gate (non-finite loss, a slow
kernel fetch, an interface mismatch, a regressing host metric) and are culled, embargoed,
reset and germinated again. It also sends a few commands the lifecycle must refuse. The
gate inputs are synthetic; everything else (decide, append, evolve, snapshots) is the code
the executor uses, so this is a fixture for tests, a workload for benchmarks and a way to
try the audit tools.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from kasmina.events.store import EventStore
from kasmina.ledger import Ledger
from kasmina.lifecycle import commands as c
from kasmina.lifecycle.gates import GateInputs
from kasmina.lifecycle.stages import Gate, Stage
from kasmina.lifecycle.state import SeedState

BLUEPRINTS = ("conv_adapter", "bottleneck_mlp", "zero_linear")
#: Gate a doomed seed fails, and how often (the rest are healthy).
FATES: tuple[tuple[Gate | None, float], ...] = (
    (None, 0.6),
    (Gate.G1_GRADIENT_HEALTH, 0.1),
    (Gate.G2_STABILITY, 0.1),
    (Gate.G3_INTERFACE, 0.1),
    (Gate.G4_SYSTEM_IMPACT, 0.1),
)


@dataclass
class SimulationReport:
    seeds: int
    steps: int
    first_step: int
    events: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    final_stages: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"seeds": self.seeds, "steps": self.steps, "first_step": self.first_step,
                "events": self.events, "commands_accepted": self.accepted,
                "commands_refused": dict(self.refused), "final_stages": self.final_stages}


def _inputs(rng: random.Random, fate: Gate | None, gates: tuple[Gate, ...], baseline: float) -> GateInputs:
    """Healthy measurements, except for the gate this seed is fated to fail.

    G4 also gets a counterfactual, recorded but not gated on (no threshold): the host metric
    as the loss with the seed, its baseline as the loss without. Derived, not drawn, so the
    run seed still gives the same fates as before the counterfactual existed.
    """
    bad = fate in gates
    latency = 25.0 if bad and fate is Gate.G2_STABILITY else round(rng.uniform(0.2, 4.0), 3)
    growth = round(rng.uniform(0.8, 3.0), 3)  # drawn in this order since the first release
    metric = round(baseline * (1.5 if bad and fate is Gate.G4_SYSTEM_IMPACT else rng.uniform(0.9, 1.02)), 6)
    counterfactual = {}
    if Gate.G4_SYSTEM_IMPACT in gates:
        counterfactual = {"loss_with": metric, "loss_without": baseline,
                          "contribution": round((baseline - metric) / baseline, 6)}
    return GateInputs(
        **counterfactual,
        blueprint_known=True, parameters={},
        kernel_attached=True, isolation_violations=0,
        seed_loss_finite=not (bad and fate is Gate.G1_GRADIENT_HEALTH), seed_grad_finite=True,
        fetch_latency_ms=latency, output_finite=True, output_growth=growth,
        interface_ok=not (bad and fate is Gate.G3_INTERFACE),
        interface_detail="expected (32, 16, 8, 8), got (32, 8, 8, 8)" if bad and fate is Gate.G3_INTERFACE else None,
        metric=metric, baseline_metric=baseline,
        hooks=0, registered_params=0, cache_entries=0,
    )


def run(store: EventStore, *, seeds: int, steps: int, rng: int = 0,
        progress: Callable[[int], None] | None = None) -> SimulationReport:
    """Simulate ``steps`` training steps of ``seeds`` sites on ``store`` (continues a log)."""
    ledger = Ledger.open(store)
    first = 1 + max((s.stage_entered_step for s in ledger.seeds.values()), default=0)
    report = SimulationReport(seeds, steps, first)
    random_ = random.Random(rng)
    sites = [f"sim.layer{i}" for i in range(seeds)]
    fates: dict[str, Gate | None] = {}
    wake: dict[str, int] = {s: first + random_.randrange(0, max(1, steps // 10)) for s in sites}
    counter = 0

    def submit(command: c.Command) -> None:
        nonlocal counter
        counter += 1
        outcome = ledger.submit(command, command_id=f"sim-{rng}-{first}-{counter}")
        if outcome.accepted:
            report.accepted += 1
        else:
            report.refused[outcome.reason] += 1

    def measure(state: SeedState, gates: tuple[Gate, ...]) -> GateInputs:
        return _inputs(random_, fates.get(state.seed_id), gates, state.baseline_metric or 1.0)

    for step in range(first, first + steps):
        for site in sites:
            state = ledger.state(site)
            if state.stage in (Stage.UNKNOWN, Stage.DORMANT) and step >= wake[site]:
                fates[site] = random_.choices([f for f, _ in FATES], [w for _, w in FATES])[0]
                params = {"training_steps": random_.randint(4, 20), "blend_steps": random_.randint(4, 15),
                          "shadow_steps": random_.randint(2, 8), "probation_steps": random_.randint(2, 10),
                          "embargo_steps": random_.randint(3, 12)}
                submit(c.Germinate(site, random_.choice(BLUEPRINTS), step,
                                   GateInputs(blueprint_known=True, parameters=params),
                                   parameters=params, baseline_metric=round(random_.uniform(0.3, 2.0), 4)))
            elif state.stage is Stage.TRAINING and random_.random() < 0.01:
                submit(c.Germinate(site, "conv_adapter", step, GateInputs(blueprint_known=True, parameters={})))
            elif state.stage is Stage.BLENDING and random_.random() < 0.01 and not state.paused:
                submit(c.Pause(site, step))
            elif state.paused and random_.random() < 0.3:
                submit(c.Resume(site, step))
            elif state.stage is Stage.FOSSILIZED and random_.random() < 0.002:
                submit(c.Terminate(site, step))
            elif state.stage is Stage.SHADOWING and random_.random() < 0.005:
                submit(c.Cull(site, step, reason="controller changed its mind"))
            elif state.stage is Stage.DORMANT and random_.random() < 0.002:
                submit(c.Pause(site, step))  # illegal: refused with a reason
        ledger.tick(step, measure)
        if progress is not None:
            progress(step - first + 1)
    report.events = store.head()[0]
    report.final_stages = {sid: s.stage.name for sid, s in sorted(ledger.seeds.items())}
    return report
