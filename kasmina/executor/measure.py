"""Measuring what a due gate needs, from a live seed site (off the hot path).

Called only when a gate falls due (a dwell boundary or a controller's advance), so this
is where the executor may synchronise with the device: every figure it reads was kept on
the device during the steps before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from kasmina.executor.counterfactual import autocast_like
from kasmina.executor.isolation import IsolationMonitor, leaked_parameters
from kasmina.executor.site import SeedSite
from kasmina.lifecycle.gates import GateInputs
from kasmina.lifecycle.stages import Gate
from kasmina.lifecycle.state import SeedState


@dataclass
class SiteRuntime:
    """What the executor knows about a grafted seed that the log does not need to hold."""

    generation: int
    fetch_ms: float
    monitor: IsolationMonitor | None = None
    violations: int = 0
    prewarm_ms: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricPolicy:
    """How G4 reads the host metric the training loop reports to ``Executor.step``."""

    name: str | None = "val_loss"
    higher_is_better: bool = False
    tolerance: float = 0.05
    latency_budget_ms: float = 10.0


def _probe(site: SeedSite) -> tuple[Tensor, Tensor] | None:
    """The seed's output on the site's last input (without autograd, in the dtype that forward
    ran in) and the host's output of that forward."""
    x = site.probe_input()
    if site.seed is None or x is None or site.last_host is None:
        return None
    with torch.no_grad(), autocast_like(site):
        seed = site.seed(x)
    host = site.last_host
    if seed.dtype != host.dtype and seed.is_floating_point():
        seed = seed.to(host.dtype)  # as the forward casts it under autocast
    return seed, host


def _grads_finite(seed: nn.Module) -> bool:
    grads = [p.grad for p in seed.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())  # one sync


def measure(
    site: SeedSite,
    runtime: SiteRuntime | None,
    state: SeedState,
    gates: tuple[Gate, ...],
    *,
    host_params: list[Tensor],
    metrics: Mapping[str, float],
    policy: MetricPolicy,
    base_hooks: int = 0,
    leftover_groups: int = 0,
    contribution: Mapping[str, Any] | None = None,
) -> GateInputs:
    """Gate inputs for ``gates``; anything that cannot be measured is left ``None``.

    ``contribution`` holds the counterfactual's figures (measured by the executor, which owns
    the model and the probe batch), recorded with every gate past TRAINING.
    """
    values: dict[str, Any] = {"latency_budget_ms": policy.latency_budget_ms, **(contribution or {})}
    probe = _probe(site) if set(gates) & {Gate.G1_GRADIENT_HEALTH, Gate.G2_STABILITY, Gate.G3_INTERFACE} else None
    if runtime is not None and site.seed is not None and site.last_input is not None and (
        set(gates) & {Gate.G1_GRADIENT_HEALTH, Gate.G4_SYSTEM_IMPACT}
    ):
        with autocast_like(site):
            runtime.violations += leaked_parameters(site.seed, site.probe_input(), host_params)
    violations = runtime.violations if runtime is not None else 0
    if Gate.G1_GRADIENT_HEALTH in gates:
        values["kernel_attached"] = site.seed is not None
        values["isolation_violations"] = violations
        if probe is not None:
            loss = metrics.get("loss")
            values["seed_loss_finite"] = bool(torch.isfinite(probe[0]).all()) and (
                loss is None or math.isfinite(loss))
        if site.seed is not None:
            values["seed_grad_finite"] = _grads_finite(site.seed)
    if Gate.G2_STABILITY in gates:
        if runtime is not None:
            values["fetch_latency_ms"] = round(runtime.fetch_ms, 4)
            if runtime.monitor is not None:  # the window since the last G2 (TRAINING, then BLENDING)
                values["seed_grad_norm"] = round(runtime.monitor.read(), 6)
                runtime.monitor.reset()
        if probe is not None:
            seed_out, host_out = probe
            values["output_finite"] = bool(torch.isfinite(seed_out).all())
            host_norm = float(host_out.float().norm())
            values["output_growth"] = round(float(seed_out.float().norm()) / max(host_norm, 1e-12), 6)
    if Gate.G3_INTERFACE in gates:
        problem = site.interface_error
        if problem is None and probe is not None:
            seed_out, host_out = probe
            if (seed_out.shape, seed_out.dtype, seed_out.device) != (host_out.shape, host_out.dtype, host_out.device):
                problem = f"seed output {tuple(seed_out.shape)}, site output {tuple(host_out.shape)}"
        if probe is not None or problem is not None:
            values["interface_ok"] = problem is None
            values["interface_detail"] = problem
    if Gate.G4_SYSTEM_IMPACT in gates:
        values["isolation_violations"] = violations
        values["higher_is_better"] = policy.higher_is_better
        values["metric_tolerance"] = policy.tolerance
        if policy.name is not None and policy.name in metrics:
            values["metric"] = float(metrics[policy.name])
        values["baseline_metric"] = state.baseline_metric
    if Gate.G5_RESET in gates:
        monitor_hooks = runtime.monitor.hook_count if runtime and runtime.monitor else 0
        module_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                           for m in site.modules())
        values["hooks"] = monitor_hooks + module_hooks - base_hooks
        values["registered_params"] = (sum(1 for _ in site.seed.parameters()) if site.seed is not None else 0) + \
            leftover_groups
        values["cache_entries"] = int(site.last_input is not None) + int(runtime is not None)
    return GateInputs(**values)
