"""The seed lifecycle: stages, the transition table, gates, ``decide`` and ``evolve``."""

from __future__ import annotations

from kasmina.lifecycle import commands, events
from kasmina.lifecycle.decide import Decision, MissingGateInputs, decide, due_gates
from kasmina.lifecycle.evolve import ReplayError, apply, evolve
from kasmina.lifecycle.gates import GateInputs, Verdict, evaluate, evaluate_all
from kasmina.lifecycle.machine import ALLOWED_NEXT, MACHINE, PROGRESSION, gates_for, is_allowed
from kasmina.lifecycle.stages import LIVE_STAGES, Gate, Stage
from kasmina.lifecycle.state import SeedState, canonical_json, digest

__all__ = [
    "ALLOWED_NEXT", "LIVE_STAGES", "MACHINE", "PROGRESSION", "Decision", "Gate", "GateInputs",
    "MissingGateInputs", "ReplayError", "SeedState", "Stage", "Verdict", "apply", "canonical_json",
    "commands", "decide", "digest", "due_gates", "evaluate", "evaluate_all", "events", "evolve",
    "gates_for", "is_allowed",
]
