"""Gates G0–G5 as pure checks over explicit, recorded inputs.

A gate never reads the model or the clock: the executor (or the simulator) measures what a
gate needs into a :class:`GateInputs`, the inputs are stored in the event next to the
verdict, and ``kasmina verify`` re-runs the gate on them to prove the recorded verdict.
Missing inputs fail the gate (fail closed), naming the missing field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping

from kasmina.lifecycle.stages import Gate

DEFAULT_LATENCY_BUDGET_MS = 10.0
DEFAULT_GROWTH_LIMIT = 100.0
DEFAULT_METRIC_TOLERANCE = 0.05
#: Largest absolute value G0 accepts for any numeric command parameter.
PARAMETER_LIMIT = 1e9


@dataclass(frozen=True, slots=True)
class GateInputs:
    """What the executor measured when a gate fell due. ``None`` means not measured."""

    # G0 SANITY
    blueprint_known: bool | None = None
    parameters: Mapping[str, float] | None = None
    parameter_bounds: Mapping[str, tuple[float, float] | list[float]] | None = None
    #: The blueprint and the blend fit the site (kind, shapes, CHANNEL's vector length);
    #: ``site_detail`` says why not. Not measured (older logs): not checked.
    site_fits: bool | None = None
    site_detail: str | None = None
    # G1 GRADIENT_HEALTH
    kernel_attached: bool | None = None
    isolation_violations: int | None = None
    seed_loss_finite: bool | None = None
    seed_grad_finite: bool | None = None
    # G2 STABILITY
    fetch_latency_ms: float | None = None
    latency_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS
    output_finite: bool | None = None
    output_growth: float | None = None
    growth_limit: float = DEFAULT_GROWTH_LIMIT
    #: Seed gradient norm accumulated by the isolation hooks over the window (optional).
    seed_grad_norm: float | None = None
    # G3 INTERFACE
    interface_ok: bool | None = None
    interface_detail: str | None = None
    # G4 SYSTEM_IMPACT
    metric: float | None = None
    baseline_metric: float | None = None
    metric_tolerance: float = DEFAULT_METRIC_TOLERANCE
    higher_is_better: bool = False
    #: The counterfactual: the probe loss with the seed at its alpha and with it removed,
    #: and the relative improvement ``(loss_without - loss_with) / |loss_without|``.
    loss_with: float | None = None
    loss_without: float | None = None
    contribution: float | None = None
    #: Least contribution G4 accepts (relative); None: no counterfactual is required.
    contribution_threshold: float | None = None
    #: Why the counterfactual could not be measured (the user's probe raised).
    contribution_detail: str | None = None
    # G5 RESET
    hooks: int | None = None
    registered_params: int | None = None
    cache_entries: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form holding only what was measured (defaults kept for replay).

        A non-finite measurement (the very thing a gate exists to catch) is written as the
        text ``"nan"``, ``"inf"`` or ``"-inf"``: JSON has no such numbers.
        """
        out = {k: _json_float(v) for k, v in asdict(self).items() if v is not None}
        if self.parameters is not None:
            out["parameters"] = {k: _json_float(v) for k, v in self.parameters.items()}
        if self.parameter_bounds is not None:
            out["parameter_bounds"] = {k: list(v) for k, v in self.parameter_bounds.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateInputs:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in _FLOAT_FIELDS & values.keys():
            values[name] = _from_json_float(values[name])
        if isinstance(values.get("parameters"), Mapping):
            values["parameters"] = {k: _from_json_float(v) for k, v in values["parameters"].items()}
        return cls(**values)


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_FLOAT_FIELDS = frozenset({"fetch_latency_ms", "latency_budget_ms", "output_growth", "growth_limit", "metric",
                           "seed_grad_norm", "baseline_metric", "metric_tolerance", "loss_with", "loss_without",
                           "contribution", "contribution_threshold"})
#: The reason a seed that does not help is culled with (G4), ahead of its figures.
NO_CONTRIBUTION = "no_contribution"
#: Command parameter: the least relative contribution G4 accepts for this seed, in [-1, 1].
CONTRIBUTION_THRESHOLD = "contribution_threshold"


def _json_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _from_json_float(value: Any) -> Any:
    return _NON_FINITE.get(value, value) if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class Verdict:
    gate: Gate
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate.name, "passed": self.passed, "reason": self.reason}


class _Missing(Exception):
    """An input the gate needs was not measured."""


def _need(inputs: GateInputs, name: str) -> Any:
    value = getattr(inputs, name)
    if value is None:
        raise _Missing(name)
    return value


def _g0(i: GateInputs) -> str | None:
    if not _need(i, "blueprint_known"):
        return "blueprint not in catalogue"
    if i.site_fits is False:
        return i.site_detail or "blueprint does not fit the site"
    for key, value in sorted(_need(i, "parameters").items()):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"parameter {key!r} is not a number"
        if not math.isfinite(value):
            return f"parameter {key!r} is not finite"
        if abs(value) > PARAMETER_LIMIT:
            return f"parameter {key!r} out of bounds (|{value}| > {PARAMETER_LIMIT:g})"
        low, high = (i.parameter_bounds or {}).get(key, (-PARAMETER_LIMIT, PARAMETER_LIMIT))
        if not low <= value <= high:
            return f"parameter {key!r}={value:g} out of bounds [{low:g}, {high:g}]"
    return None


def _g1(i: GateInputs) -> str | None:
    if not _need(i, "kernel_attached"):
        return "kernel not attached"
    if _need(i, "isolation_violations") > 0:
        return f"isolation violations: {i.isolation_violations}"
    if not _need(i, "seed_loss_finite"):
        return "seed loss not finite"
    if not _need(i, "seed_grad_finite"):
        return "seed gradient not finite"
    return None


def _g2(i: GateInputs) -> str | None:
    latency = _need(i, "fetch_latency_ms")
    if latency > i.latency_budget_ms:
        return f"kernel fetch {latency:.3f} ms over budget {i.latency_budget_ms:g} ms"
    if not _need(i, "output_finite"):
        return "seed output not finite"
    growth = _need(i, "output_growth")
    if not math.isfinite(growth) or growth > i.growth_limit:
        return f"seed output exploding (growth {growth:g} > {i.growth_limit:g})"
    if i.seed_grad_norm is not None and not math.isfinite(i.seed_grad_norm):
        return "seed gradients not finite during the window"
    return None


def _g3(i: GateInputs) -> str | None:
    if not _need(i, "interface_ok"):
        return f"interface mismatch: {i.interface_detail or 'probe failed'}"
    return None


def _g4(i: GateInputs) -> str | None:
    if i.isolation_violations:
        return f"isolation violations: {i.isolation_violations}"
    metric = _need(i, "metric")
    baseline = _need(i, "baseline_metric")
    if not math.isfinite(metric):
        return "host metric not finite"
    # Regression is measured in the direction that is worse, relative to the baseline.
    worse = (baseline - metric) if i.higher_is_better else (metric - baseline)
    allowed = i.metric_tolerance * max(abs(baseline), 1e-12)
    if worse > allowed:
        return f"host metric regressed: {metric:.6g} vs baseline {baseline:.6g} (tolerance {i.metric_tolerance:g})"
    if i.contribution_threshold is not None:
        if i.contribution is None and i.contribution_detail:
            return f"input not measured: contribution ({i.contribution_detail})"
        contribution = _need(i, "contribution")
        with_seed, without = _need(i, "loss_with"), _need(i, "loss_without")
        if not math.isfinite(contribution) or contribution < i.contribution_threshold:
            return (f"{NO_CONTRIBUTION}: the seed improves the probe loss by {contribution:.3%} "
                    f"({without:.6g} without it, {with_seed:.6g} with it), "
                    f"under the {i.contribution_threshold:.3%} required")
    return None


def _g5(i: GateInputs) -> str | None:
    dirty = [n for n in ("hooks", "registered_params", "cache_entries") if _need(i, n)]
    if dirty:
        return "site not clean: " + ", ".join(f"{n}={getattr(i, n)}" for n in dirty)
    return None


_CHECKS: Mapping[Gate, Callable[[GateInputs], str | None]] = {
    Gate.G0_SANITY: _g0,
    Gate.G1_GRADIENT_HEALTH: _g1,
    Gate.G2_STABILITY: _g2,
    Gate.G3_INTERFACE: _g3,
    Gate.G4_SYSTEM_IMPACT: _g4,
    Gate.G5_RESET: _g5,
}


def evaluate(gate: Gate, inputs: GateInputs) -> Verdict:
    """Run one gate. Pure: same inputs, same verdict, in the live run and in ``verify``."""
    check = _CHECKS.get(gate)
    if check is None:
        return Verdict(gate, False, "unsupported gate")
    try:
        failure = check(inputs)
    except _Missing as missing:
        return Verdict(gate, False, f"input not measured: {missing}")
    return Verdict(gate, failure is None, failure or "passed")


def evaluate_all(gates: tuple[Gate, ...], inputs: GateInputs) -> tuple[Verdict, ...]:
    """Evaluate gates in order, stopping at the first failure."""
    verdicts: list[Verdict] = []
    for gate in gates:
        verdict = evaluate(gate, inputs)
        verdicts.append(verdict)
        if not verdict.passed:
            break
    return tuple(verdicts)
