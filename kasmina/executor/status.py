"""What every site is doing, at a glance: ``ex.seed()``, ``ex.seeds()``, ``ex.status()``."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from kasmina.errors import StoreError
from kasmina.kernels.blend import BlendMode
from kasmina.lifecycle.alpha import alpha_for
from kasmina.status import Status, contributions, site_status

if TYPE_CHECKING:
    from kasmina.executor.executor import Executor
    from kasmina.executor.site import SeedSite


@dataclass(frozen=True, slots=True)
class SeedView:
    """A read-only look at one site (``Executor.seed``)."""

    seed_id: str
    stage: str
    alpha: float
    blend_mode: str
    generation: int
    blueprint_id: str | None
    paused: bool
    trainable_parameters: int
    prewarm_ms: float | None


def trainable_parameters(site: SeedSite) -> int:
    """What the seed at ``site`` trains (0 without one): ``ex.status()`` and the ``kernel_attached`` fact."""
    return sum(p.numel() for p in site.seed.parameters() if p.requires_grad) if site.seed is not None else 0


def site_hosts(sites: Mapping[str, SeedSite]) -> list[tuple[str, str]]:
    """Each site with its host layer's type (``Linear``, ``Conv2d``, ``Conv1D``), in the executor's order."""
    return [(name, type(site.base_layer).__name__) for name, site in sites.items()]


def seed_view(ex: Executor, seed_id: str) -> SeedView:
    site = ex._site(seed_id)
    state = ex.ledger.state(seed_id)
    runtime = ex._runtime.get(seed_id)
    mode = (state.blend or {}).get("mode") or BlendMode.CONVEX.value
    return SeedView(seed_id, state.stage.name, alpha_for(state, ex.step_count), str(mode), state.generation,
                    state.blueprint_id, state.paused, trainable_parameters(site),
                    runtime.prewarm_ms if runtime else None)


def live_status(ex: Executor) -> Status:
    """Every site as the executor holds it now (``kasmina status`` rebuilds the same from the log).

    Contributions are read from the log (the gates recorded them); while the log cannot be
    read they are left out, and the rest is still the live state.
    """
    found: dict[str, float | str] = {}
    with suppress(StoreError):
        found = contributions(ex.store, ex.sites)
    hosts = dict(site_hosts(ex.sites))
    rows = tuple(site_status(name, ex.ledger.state(name), ex.step_count, host=hosts[name],
                             trainable_parameters=trainable_parameters(site), contribution=found.get(name))
                 for name, site in ex.sites.items())
    return Status(ex.store.run, ex.step_count, rows, source="live")
