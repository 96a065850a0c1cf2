"""The three contenders a grown network is judged against (the Net2Net question).

* ``host``: the host alone, trained for as many steps as the grown network, on the same batches;
* ``grown``: the host with the seeds the controller grafted;
* ``static``: a network with the grown network's final architecture (the host plus every
  fossilized seed, blended as it was at the end), trained from scratch for the same number
  of steps on the same batches. Its host layers start from the host's own initial weights and
  each seed from its own generator, exactly as it began when it was grafted (zero at birth,
  as the library's seeds are: a residual branch that starts at zero, as in ReZero or Fixup).

The static network reuses :class:`~kasmina.executor.site.SeedSite` in FOSSILIZED mode, so
its forward is the grown network's forward, not a re-implementation of the blend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable

from torch import nn

from kasmina.catalogue import seed_generator
from kasmina.catalogue.sites import describe
from kasmina.executor.site import SeedSite, SiteMode, split_name
from kasmina.kernels.blend import BlenderConfig
from kasmina.lifecycle.stages import Stage

if TYPE_CHECKING:
    from kasmina.executor import Executor

NAMES = ("host", "grown", "static")


@dataclass(slots=True)
class Contender:
    """One contender's result: its final validation metric, size and training time."""

    metric: float
    parameters: int
    seconds: float

    def to_dict(self, metric_name: str) -> dict[str, Any]:
        out = asdict(self)
        return {metric_name: out.pop("metric"), **out}


def parameters(model: nn.Module) -> int:
    """Parameters in the model's forward (attached seeds included, each counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def fossils(ex: Executor, sites: Iterable[str]) -> list[str]:
    """The sites whose seed is part of the grown network for good."""
    return [name for name in sites if ex.state(name).stage in (Stage.FOSSILIZED, Stage.TERMINATED)]


def static_network(fresh: nn.Module, ex: Executor, sites: Iterable[str], run_seed: int) -> nn.Module:
    """``fresh`` (a newly initialised host) given every fossilized seed of ``ex``, each built
    again from its own generator, in FOSSILIZED mode with its recorded blend."""
    for name in fossils(ex, sites):
        state = ex.state(name)
        parent, child_name, base = split_name(fresh, name)
        grown = ex.sites[name]
        info = describe(name, base, grown.probe, causal=ex.causal)
        first = next(base.parameters())
        fetched = ex.catalogue.fetch(state.blueprint_id or "", info, device=first.device, dtype=first.dtype,
                                     generator=seed_generator(run_seed, name, state.generation),
                                     parameters=state.parameters)
        site = SeedSite(base, name)
        site.seed = fetched.module
        site.mode = SiteMode.FOSSILIZED
        site.config = BlenderConfig.from_dict(state.blend) if state.blend else None
        site.channel_dim = info.channel_dim
        site.alpha.fill_(1.0)
        setattr(parent, child_name, site)
    return fresh


__all__ = ["Contender", "NAMES", "fossils", "parameters", "static_network"]
