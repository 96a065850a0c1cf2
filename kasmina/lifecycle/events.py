"""Domain events: what ``decide`` returns, the store records and ``evolve`` folds.

An event is a type name plus a JSON-ready payload. The payload keys used by the shipped
SQL views (``from_stage``, ``to_stage``, ``gate``, ``reason``, ``step``) are fixed here, in
one place, so the views and the code agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from kasmina.lifecycle.gates import GateInputs, Verdict
from kasmina.lifecycle.stages import Stage

STAGE_CHANGED = "stage_changed"
GATE_FAILED = "gate_failed"
BLEND_CONFIG = "blend_config"
ANNOTATION_WARNING = "annotation_warning"
SEED_PAUSED = "seed_paused"
SEED_RESUMED = "seed_resumed"
SEED_ROLLED_BACK = "seed_rolled_back"
COMMAND_REFUSED = "command_refused"
COMMAND_ACCEPTED = "command_accepted"
#: Which module actually grafted (the fallback, if the requested one failed), and its costs.
KERNEL_ATTACHED = "kernel_attached"
#: Executor-wide facts (the training step at close, an emergency) on the executor stream.
EXECUTOR_CLOSED = "executor_closed"
#: The host metric G4 compares against, when none was reported before germination.
BASELINE_RECORDED = "baseline_recorded"
#: A seed broke isolation (shared or leaking host parameters): audit record, fails G1/G4.
ISOLATION_VIOLATION = "isolation_violation"
EMERGENCY = "emergency"
BREAKER_FORCED = "breaker_forced"
#: A model checkpoint was written (path, SHA-256, step): what a resume may trust.
CHECKPOINT_SAVED = "checkpoint_saved"
#: A fact the training loop itself records on the executor stream (``Executor.note``).
RUN_NOTE = "run_note"
#: The executor's sites and their host layer types, when a leader opens with sites the log
#: does not list yet (``kasmina status`` shows a site nothing has grown in from it).
SITES_REGISTERED = "sites_registered"

#: Stream that holds executor-wide events (refusals, breaker commands): never a site name.
EXECUTOR_STREAM = "$executor"


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)


class Recorded(Protocol):
    """What ``evolve`` needs from a stored event (``kasmina.events.RecordedEvent`` fits)."""

    @property
    def type(self) -> str: ...
    @property
    def data(self) -> Mapping[str, Any]: ...
    @property
    def version(self) -> int: ...
    @property
    def position(self) -> int: ...


def stage_changed(
    source: Stage,
    dest: Stage,
    *,
    step: int,
    reason: str,
    verdicts: tuple[Verdict, ...] = (),
    inputs: GateInputs | None = None,
    **extra: Any,
) -> Event:
    """A transition. ``gate`` names the deciding gate: the failing one, else the last passed."""
    data: dict[str, Any] = {
        "from_stage": source.name,
        "to_stage": dest.name,
        "step": step,
        "reason": reason,
        "gate": verdicts[-1].gate.name if verdicts else None,
        "passed": verdicts[-1].passed if verdicts else None,
    }
    if verdicts:
        data["verdicts"] = [v.to_dict() for v in verdicts]
    if inputs is not None:
        data["inputs"] = inputs.to_dict()
    data.update(extra)
    return Event(STAGE_CHANGED, data)


def gate_failed(stage: Stage, verdict: Verdict, *, step: int, inputs: GateInputs) -> Event:
    """A gate that failed where the table offers no cull (RESETTING waits for a clean site)."""
    return Event(
        GATE_FAILED,
        {
            "stage": stage.name,
            "step": step,
            "gate": verdict.gate.name,
            "passed": False,
            "reason": verdict.reason,
            "verdicts": [verdict.to_dict()],
            "inputs": inputs.to_dict(),
        },
    )


def refused(reason: str, *, seed_id: str | None, detail: str = "", **extra: Any) -> Event:
    data: dict[str, Any] = {"reason": reason, "seed_id": seed_id, "detail": detail}
    data.update(extra)
    return Event(COMMAND_REFUSED, data)
