"""Export: the grown model back as a plain PyTorch module, to ship or fine-tune elsewhere.

:func:`export` builds a NEW model from the executor's (which is left as it was, still
training): every :class:`~kasmina.executor.site.SeedSite` becomes a copy of its host layer
again, so the state dict's keys are the host's own, and then per site:

* a FOSSILIZED seed that is a linear map of its layer's kind (``lora``, ``zero_linear``, or
  any seed that is one Linear, conv or Embedding, or a low-rank pair of them), blended
  CONVEX, RESIDUAL or CHANNEL, is **merged** into the layer's weights, computed in fp32
  (fp64 for an fp64 layer) and cast back to the layer's dtype: nothing is added;
* any other FOSSILIZED seed is **kept**: a ``torch.fx`` GraphModule (the seed traced down to
  torch modules and ops, then the blend at alpha 1) that is both child ``seed`` of its host
  layer and that layer's forward hook (a Sequential host is made a GraphModule of the same
  layers first, and a GraphModule host calls the seed as the last node of its graph);
* a seed not yet fossilized is refused in one line naming it (``drop_unfinished=True``
  leaves it out: the host layer alone there); a site without a seed is its host layer.

Why a hook and not a wrapper module: a wrapper would have to take and pass on any call of
the layer (a ``GPT2Block`` is called with ``**kwargs``), and the code fx generates cannot
pass arguments on with ``*``/``**``; a hook receives the call already made, so the layer
keeps its class, its signature and its other outputs. Why fx: a GraphModule is plain
torch, pickled as its generated source, so a kept seed needs neither Kasmina nor the
blueprint's class to run or to be loaded.

The report (:class:`ExportReport`: what happened at each site, the largest absolute output
difference on the probe batch, both parameter counts) is kept on the executor as
``ex.last_export`` and recorded in its log as an ``export`` note. The merge is done in
:mod:`kasmina.executor.export_merge`, the kept seed built in :mod:`kasmina.executor.export_graft`.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, overload

import torch
from torch import Tensor, nn

from kasmina.catalogue.sites import SiteKind, describe
from kasmina.errors import KasminaError, StoreError
from kasmina.executor.counterfactual import evaluation_mode
from kasmina.executor.export_graft import (_attach, _Call, _call_of, _first_line, _graft, _hook_tables, _host_for_seed,
                                           _in_graph, _ours_callable)
from kasmina.executor.export_merge import _merged, _write
from kasmina.executor.site import SeedSite, SiteMode

if TYPE_CHECKING:
    from kasmina.executor.executor import Executor

__all__ = ["ExportReport", "SiteExport", "export"]

#: What happened at a site: its seed merged into the layer, kept beside it, left out
#: (unfinished, ``drop_unfinished``), or there was no seed (the host layer alone).
MERGED, KEPT, DROPPED, HOST = "merged", "kept", "dropped", "host"
#: Per-hook flags of ``nn.Module``, cleared with the Kasmina hooks the plain copy leaves out.
_HOOK_FLAGS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")
_MODE_STAGES = {SiteMode.TRAINING: "TRAINING", SiteMode.BLENDING: "BLENDING", SiteMode.ACTIVE: "SHADOWING/PROBATIONARY",
                SiteMode.PAUSED: "PAUSED", SiteMode.FOSSILIZED: "FOSSILIZED", SiteMode.DORMANT: "DORMANT"}

logger = logging.getLogger(__name__)


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteExport:
    """What the export did at one site, and why when it did not merge."""

    site: str
    stage: str
    blueprint: str | None
    action: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What :func:`export` did; ``print(report)`` is a table."""

    sites: tuple[SiteExport, ...]
    #: Largest absolute difference between the executor's model's outputs and the exported
    #: model's on the probe batch (every floating tensor of the output); None without a probe.
    max_abs_diff: float | None
    parameters_before: int
    parameters_after: int
    merge: bool

    def _named(self, action: str) -> tuple[str, ...]:
        return tuple(s.site for s in self.sites if s.action == action)

    @property
    def merged(self) -> tuple[str, ...]:
        return self._named(MERGED)

    @property
    def kept(self) -> tuple[str, ...]:
        return self._named(KEPT)

    @property
    def dropped(self) -> tuple[str, ...]:
        return self._named(DROPPED)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what the log's ``export`` note records)."""
        diff = self.max_abs_diff
        return {"merge": self.merge, "sites": [{"site": s.site, "stage": s.stage, "blueprint": s.blueprint,
                                                "action": s.action, "reason": s.reason} for s in self.sites],
                "max_abs_diff": diff if diff is None or math.isfinite(diff) else str(diff),
                "parameters_before": self.parameters_before, "parameters_after": self.parameters_after}

    def __str__(self) -> str:
        rows = [("site", "stage", "blueprint", "export", "why")] + [
            (s.site, s.stage, s.blueprint or "-", s.action, s.reason) for s in self.sites]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4] for r in rows]
        diff = "not measured (no probe)" if self.max_abs_diff is None else f"{self.max_abs_diff:.3g}"
        lines.append(f"max |diff| on the probe: {diff}; parameters: {self.parameters_before} in the "
                     f"executor's model, {self.parameters_after} exported")
        return "\n".join(line.rstrip() for line in lines)


# -- what to do at each site --------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    name: str
    site: SeedSite
    stage: str
    blueprint: str | None
    action: str = HOST
    reason: str = ""


def _plans(target: Executor | nn.Module, sites: Mapping[str, SeedSite]) -> list[_Plan]:
    """One plan per site, its stage and blueprint from the log when there is an executor."""
    ledger = getattr(target, "ledger", None)
    plans = []
    for name, site in sites.items():
        if ledger is not None:
            state = ledger.state(name)
            stage = state.stage.name + (" (paused)" if state.paused else "")
            blueprint = (state.kernel or {}).get("used") or state.blueprint_id
        else:
            stage, blueprint = _MODE_STAGES.get(site.mode, site.mode.value.upper()), None
        plans.append(_Plan(name, site, stage, blueprint if site.seed is not None else None))
    return plans


def _unfinished(site: SeedSite) -> bool:
    """A seed that runs (or would) but is not part of the model yet."""
    return site.seed is not None and site.mode not in (SiteMode.DORMANT, SiteMode.FOSSILIZED)


def _decide(plans: list[_Plan], drop_unfinished: bool) -> None:
    """Fossilized seeds are exported; unfinished ones refused, or dropped when asked."""
    unfinished = [p for p in plans if _unfinished(p.site)]
    if unfinished and not drop_unfinished:
        named = ", ".join(f"{p.name!r} ({p.stage})" for p in unfinished)
        raise KasminaError(f"export: {len(unfinished)} seed(s) not fossilized: {named}; fossilize or cull them "
                           "first, or pass drop_unfinished=True to export the host layer alone there")
    for plan in plans:
        if _unfinished(plan.site):
            plan.action, plan.reason = DROPPED, "not fossilized: the host layer alone"
        elif plan.site.seed is not None and plan.site.mode is SiteMode.FOSSILIZED:
            plan.action = KEPT  # exported: kept as a module unless it merges


# -- a plain copy of the model ------------------------------------------------------------------


_DROPPED_HOOK = object()


def _plain_copy(model: nn.Module, sites: Mapping[str, SeedSite]) -> nn.Module:
    """A deep copy of ``model`` with each SeedSite replaced by a copy of its host layer.

    Through the deepcopy memo: a site maps to its host layer's copy (tied weights stay tied,
    the original is never modified), and Kasmina's own hooks are marked and left out.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for hooks in _hook_tables(module):
            for hook in hooks.values():
                if _ours_callable(hook):
                    memo[id(hook)] = _DROPPED_HOOK
    for site in sites.values():
        memo[id(site)] = copy.deepcopy(site.base_layer, memo)
    exported = copy.deepcopy(model, memo)
    for module in exported.modules():
        for hooks in _hook_tables(module):
            for key in [k for k, hook in hooks.items() if hook is _DROPPED_HOOK]:
                del hooks[key]
                for flags in _HOOK_FLAGS:
                    getattr(module, flags, {}).pop(key, None)
    return exported


# -- the probe ----------------------------------------------------------------------------------


def _run(model: nn.Module, probe: Any) -> Any:
    with evaluation_mode(model), torch.no_grad():
        if isinstance(probe, Mapping):
            return model(**probe)
        if isinstance(probe, (tuple, list)):
            return model(*probe)
        return model(probe)


def _check_probe(probe: Any) -> None:
    if probe is None or isinstance(probe, (Tensor, tuple, list)):
        return
    if isinstance(probe, Mapping) and all(isinstance(k, str) for k in probe):
        return
    raise KasminaError(f"export: probe must be a batch the model takes (a tensor, a tuple of arguments or a "
                       f"mapping of keyword arguments), got {type(probe).__name__}")


def _tensors(out: Any) -> list[Tensor]:
    """Every floating tensor of a model output (tensors, tuples, lists, mappings, ModelOutputs)."""
    if isinstance(out, Tensor):
        return [out] if out.is_floating_point() or out.is_complex() else []
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _tensors(v)]
    return []


def _max_diff(before: Any, after: Any) -> float:
    a, b = _tensors(before), _tensors(after)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return math.inf
    if not a:
        return 0.0
    return max(float((x.detach().double() - y.detach().double()).abs().max()) if x.numel() else 0.0
               for x, y in zip(a, b))


def _observe(model: nn.Module, plans: list[_Plan], probe: Any) -> tuple[Any, dict[str, _Call | str]]:
    """The executor's model's output on the probe, and how each kept site was called.

    The sites' per-forward caches are put back afterwards: the gates of seeds still
    training must not see the probe as their last batch.
    """
    calls: dict[str, _Call | str] = {}
    saved = [(p.site, p.site.last_input, p.site.last_host, p.site.probe, p.site.sample_stats, p.site.interface_error)
             for p in plans]
    handles = []
    for plan in plans:
        if plan.action == KEPT:
            def seen(module: nn.Module, args: Any, kwargs: Any, out: Any, name: str = plan.name) -> None:
                calls.setdefault(name, _call_of(args, kwargs, out))
            handles.append(plan.site.register_forward_hook(seen, with_kwargs=True))
    try:
        for plan in plans:
            plan.site.sample_stats = False
        output = _run(model, probe)
    except Exception as e:  # noqa: BLE001 - the user's batch or model: one line that says which
        raise KasminaError(f"export: the probe batch failed in the executor's model: {type(e).__name__}: "
                           f"{_first_line(e)}") from None
    finally:
        for handle in handles:
            handle.remove()
        for site, last_input, last_host, seen_probe, sample, error in saved:
            site.last_input, site.last_host, site.probe = last_input, last_host, seen_probe
            site.sample_stats, site.interface_error = sample, error
    return output, calls


# -- export -------------------------------------------------------------------------------------


def _sites_of(target: Executor | nn.Module) -> tuple[nn.Module, Mapping[str, SeedSite]]:
    from kasmina.executor.executor import Executor

    if isinstance(target, Executor):
        return target.model, target.sites
    if isinstance(target, nn.Module):
        if isinstance(target, SeedSite):
            raise KasminaError("export: give the model (or its executor), not one of its seed sites")
        return target, {n: m for n, m in target.named_modules() if isinstance(m, SeedSite)}
    raise KasminaError(f"export: expected a kasmina.Executor or a torch nn.Module, got {type(target).__name__}")



def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise KasminaError(f"export: {name} must be True or False, got {value!r}")
    return value


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _export(target: Executor | nn.Module, probe: Any = None, *, merge: bool = True,
                       drop_unfinished: bool = False) -> tuple[nn.Module, ExportReport]:
    """The grown model as a new plain ``nn.Module``, and what was done to get it (see the module docstring)."""
    merge, drop_unfinished = _flag("merge", merge), _flag("drop_unfinished", drop_unfinished)
    _check_probe(probe)
    model, sites = _sites_of(target)
    plans = _plans(target, sites)
    _decide(plans, drop_unfinished)
    exported = _plain_copy(model, sites)
    for plan in plans:
        if plan.action != KEPT:
            continue
        host = exported.get_submodule(plan.name)
        kind = describe(plan.name, host).kind
        result = _merged(plan, host, kind, exported) if merge else "merge=False"
        if isinstance(result, str):
            plan.reason = result
        else:
            _write(host, *result)
            plan.action = MERGED
    if probe is None:
        blocks = [p.name for p in plans if p.action == KEPT and describe(p.name, p.site.base_layer).kind is SiteKind.BLOCK]
        if blocks:  # how a block is called (which argument, what it returns) is only seen on a batch
            raise KasminaError(f"export: the seeds at {', '.join(map(repr, blocks))} are kept beside blocks, "
                               "whose call is learnt from a probe batch: pass probe=<a batch for the model>")
    reference, calls = _observe(model, plans, probe) if probe is not None else (None, {})
    for plan in plans:
        if plan.action == KEPT:
            call = calls.get(plan.name, _Call())
            if isinstance(call, str):
                raise KasminaError(f"export: the seed at {plan.name!r} cannot be kept: {call}")
            host = _host_for_seed(exported, plan.name)
            _attach(host, _graft(plan, _in_graph(host, call)))
    diff = None
    if probe is not None:
        try:
            diff = _max_diff(reference, _run(exported, probe))
        except Exception as e:  # noqa: BLE001 - a bug of the export, said in one line with its cause
            raise KasminaError(f"export: the exported model failed on the probe batch: {type(e).__name__}: "
                               f"{_first_line(e)}") from None
    report = ExportReport(tuple(SiteExport(p.name, p.stage, p.blueprint, p.action, p.reason) for p in plans), diff,
                          _parameters(model), _parameters(exported), merge)
    _record(target, report)
    return exported, report


def _record(target: Executor | nn.Module, report: ExportReport) -> None:
    """Keep the report on the executor and note it in the log (when this executor writes one)."""
    if isinstance(target, nn.Module):
        return
    target.last_export = report
    if target.leader and not target.closed:
        try:
            target.note("export", report.to_dict())
        except StoreError as e:  # the log is away: the export stands, and the report is on the executor
            logger.warning("export not noted in the log: %s", e)


@overload
def export(target: Executor | nn.Module, probe: Any = None, *, merge: bool = True, drop_unfinished: bool = False,
           report: Literal[False] = False) -> nn.Module: ...


@overload
def export(target: Executor | nn.Module, probe: Any = None, *, merge: bool = True, drop_unfinished: bool = False,
           report: Literal[True]) -> tuple[nn.Module, ExportReport]: ...


def export(target: Executor | nn.Module, probe: Any = None, *, merge: bool = True, drop_unfinished: bool = False,
           report: bool = False) -> nn.Module | tuple[nn.Module, ExportReport]:
    """The grown model as a new plain ``nn.Module`` (``ex.export()``, ``kasmina.export()``).

    ``target``: an executor, or a model holding seed sites (what they hold is exported).
    ``probe``: a batch the model takes (a tensor, a tuple of arguments, a mapping of keyword
    arguments) on which both models are compared. ``report=True`` returns ``(module,
    report)``; an executor also keeps the report as ``ex.last_export``.
    """
    wanted = _flag("report", report)
    exported, found = _export(target, probe, merge=merge, drop_unfinished=drop_unfinished)
    return (exported, found) if wanted else exported

