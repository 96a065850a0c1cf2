"""The demo's scripted controller: the role Esper's Tamiyo plays, as a fixed plan.

It decides only from the executor's replayed state (stage and generation of each seed),
never from memory of what it sent: after a crash and ``--resume`` it picks up exactly
where the log says the run is, without sending anything twice. Every command is signed.

Each task (:mod:`kasmina.demo.digits`, :mod:`kasmina.demo.text`) gives its plan: seeds
grafted one at a time, in order, so gate G4 judges one seed, not a crowd. A planned seed
may also ask to be fossilized while it still blends: the lifecycle refuses it
(``illegal_transition``), which gives the audit views a refusal to explain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from kasmina import commands
from kasmina.leyline import AdaptationCommand
from kasmina.lifecycle.stages import Stage
from kasmina.security import sign

if TYPE_CHECKING:
    from kasmina.executor import Executor, Result

#: Stages in which a planned seed has had its chance (success or cull) and the plan moves on.
_SETTLED = frozenset({Stage.FOSSILIZED, Stage.TERMINATED, Stage.CULLED, Stage.EMBARGOED, Stage.RESETTING,
                      Stage.DORMANT})


@dataclass(frozen=True, slots=True)
class Planned:
    site: str
    generation: int  # the generation this germination creates (1 = the site's first seed)
    blueprint: str
    parameters: Mapping[str, float] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: Ask for FOSSILIZE once while it blends (refused: the lifecycle's own check, on record).
    fossilize_early: bool = False

    @property
    def blend_mode(self) -> str:
        return self.annotations.get("blend_mode", "CONVEX")


def dwell_parameters(dwell: int) -> dict[str, int]:
    """Stage lengths for one seed, scaled to the run: about 3 x ``dwell`` steps to fossilize."""
    half = max(1, dwell // 2)
    return {"training_steps": dwell, "blend_steps": dwell, "shadow_steps": half, "probation_steps": half,
            "embargo_steps": max(1, dwell // 3)}


class ScriptedController:
    def __init__(self, plan: tuple[Planned, ...], secret: bytes, *, stages: Mapping[str, int], rng: int) -> None:
        self.plan = plan
        self.secret = secret
        #: Stage lengths given to every germination (a planned seed's own parameters win).
        self.stages = dict(stages)
        self.premature_id = f"demo-{rng}-premature-fossilize"

    def _signed(self, command: AdaptationCommand) -> AdaptationCommand:
        return sign(command, self.secret)

    def _settled(self, ex: Executor, item: Planned) -> bool:
        state = ex.state(item.site)
        return state.generation >= item.generation and state.stage in _SETTLED

    def commands(self, ex: Executor) -> list[tuple[str, AdaptationCommand]]:
        """The signed commands this step calls for (usually none), from the replayed state."""
        for item in self.plan:
            if self._settled(ex, item):
                continue
            state = ex.state(item.site)
            if state.generation == item.generation - 1 and state.stage in (Stage.UNKNOWN, Stage.DORMANT):
                cmd = commands.germinate(item.site, item.blueprint, annotations=item.annotations,
                                         parameters={**self.stages, **item.parameters})
                return [(f"germinate {item.site} ({item.blueprint}, {item.blend_mode})", self._signed(cmd))]
            if state.stage is Stage.BLENDING and item.fossilize_early and not ex.store.find_command(self.premature_id):
                cmd = commands.fossilize(item.site, command_id=self.premature_id)
                return [(f"fossilize {item.site} while blending", self._signed(cmd))]
            return []  # one seed in flight at a time
        return []

    def act(self, ex: Executor) -> list[tuple[str, Result]]:
        """Carry out this step's commands; returns what happened to each."""
        return [(what, ex.handle(cmd)) for what, cmd in self.commands(ex)]
