"""Seed sites: the wrapper put in place of a host submodule (the way PEFT injects adapters).

A :class:`SeedSite` keeps the original module as ``base_layer`` and, while a seed is
grafted, runs the seed as a branch parallel to it: the seed takes the site's input and
produces an output shaped like the site's output. What the branch contributes depends only
on the site's :class:`SiteMode`, which the executor derives from the replayed lifecycle
state; the forward pass itself never touches the database and never syncs with the host.

A dormant site costs one attribute check: ``forward`` calls ``base_layer`` and returns.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from kasmina.kernels.blend import BlenderConfig, BlendStats, blend


#: Blend statistics are sampled on one forward in this many: the summary stays representative,
#: and the other forwards can take the fused single-pass kernel (which keeps no statistics).
STATS_EVERY = 8


class SiteMode(str, Enum):
    DORMANT = "dormant"          # no seed: the host module alone
    PAUSED = "paused"            # a seed is attached but does not run
    TRAINING = "training"        # output == host exactly; the seed learns straight-through
    BLENDING = "blending"        # host (detached) blended with the seed at alpha
    ACTIVE = "active"            # SHADOWING / PROBATIONARY: alpha 1, host still detached
    FOSSILIZED = "fossilized"    # permanent: alpha 1, gradients reach the host as usual


class _StraightThrough(torch.autograd.Function):
    """Forward: the host output, bit for bit. Backward: the upstream gradient to both.

    The seed branch's input is detached, so this gives the seed the task loss's gradient
    while the host receives exactly the gradient it would get without the seed. The output
    is a copy, not a view, so in-place ops after the site (``ReLU(inplace=True)``) work; and
    not ``host + (seed - seed.detach())``, which a non-finite seed would turn into NaN.
    """

    @staticmethod
    def forward(ctx: Any, host: Tensor, seed: Tensor) -> Tensor:  # type: ignore[override]
        return host.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return grad, grad


class SeedSite(nn.Module):
    """A host submodule with a slot for one seed at a time."""

    def __init__(self, base_layer: nn.Module, site: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.site = site
        self.seed: nn.Module | None = None
        self.mode = SiteMode.DORMANT
        self.config: BlenderConfig | None = None
        self.stats = BlendStats()
        self._forwards = 0
        # On the host module's device from the start (a CPU alpha would make every blend
        # copy it to the GPU: a sync per step); it follows later .to() calls as a buffer.
        self.register_buffer("alpha", torch.zeros((), device=module_placement(base_layer)[0]), persistent=False)
        #: What the last forward saw (detached views, no copies): probes and gates reuse it.
        self.last_input: Tensor | None = None
        self.last_output_meta: tuple[torch.Size, torch.dtype, torch.device] | None = None
        #: Set (in Python, from shapes alone) when the seed's output does not fit the site.
        self.interface_error: str | None = None

    def get_base_layer(self) -> nn.Module:
        return self.base_layer

    def extra_repr(self) -> str:
        return f"site={self.site!r}, mode={self.mode.value}"

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        host = self.base_layer(x, *args, **kwargs)
        mode = self.mode
        if mode is SiteMode.DORMANT or mode is SiteMode.PAUSED or self.seed is None:
            return host
        seed_input = x if mode is SiteMode.FOSSILIZED else x.detach()
        if not torch.is_inference_mode_enabled():  # an inference tensor could not be probed with autograd later
            self.last_input = seed_input.detach()
        self.last_output_meta = (host.shape, host.dtype, host.device)
        seed = self.seed(seed_input)
        if seed.shape != host.shape or seed.dtype != host.dtype or seed.device != host.device:
            # Never let a misfit seed break the training step: the host runs alone and
            # gate G3 culls the seed with this reason.
            self.interface_error = (f"seed output {tuple(seed.shape)} {seed.dtype} on {seed.device}, "
                                    f"site output {tuple(host.shape)} {host.dtype} on {host.device}")
            return host
        if mode is SiteMode.TRAINING:
            return _StraightThrough.apply(host, seed)
        self._forwards += 1
        stats = self.stats if self._forwards % STATS_EVERY == 1 else None
        if mode is SiteMode.BLENDING:
            return blend(host, seed, self.alpha, self.config, stats=stats)
        return blend(host, seed, 1.0, self.config, stats=stats, detach_host=mode is not SiteMode.FOSSILIZED)


def split_name(model: nn.Module, name: str) -> tuple[nn.Module, str, nn.Module]:
    """``(parent, child_name, child)`` for a dotted submodule name."""
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, child_name, model.get_submodule(name)


def inject(model: nn.Module, names: list[str]) -> dict[str, SeedSite]:
    """Replace each named submodule by a :class:`SeedSite`; validates every name first."""
    available = {n for n, _ in model.named_modules() if n}
    problems = []
    for name in names:
        if name not in available:
            close = sorted(n for n in available if n.split(".")[-1] == name.split(".")[-1] or n.startswith(name))
            hint = f" (did you mean {', '.join(close[:5])}?)" if close else ""
            problems.append(f"no submodule {name!r} in the model{hint}")
        elif isinstance(model.get_submodule(name), SeedSite):
            problems.append(f"{name!r} is already a seed site")
    if len(set(names)) != len(names):
        problems.append("a site is named twice")
    nested = [(a, b) for a in names for b in names if a != b and b.startswith(a + ".")]
    if nested:
        problems.append(f"sites {nested[0][0]!r} and {nested[0][1]!r} are nested")
    if problems:
        raise ValueError("; ".join(problems))
    sites: dict[str, SeedSite] = {}
    for name in names:
        parent, child_name, child = split_name(model, name)
        site = SeedSite(child, name)
        setattr(parent, child_name, site)
        sites[name] = site
    return sites


def unload(model: nn.Module, sites: dict[str, SeedSite]) -> None:
    """Put every ``base_layer`` back: the model is the plain host again."""
    for name, site in sites.items():
        parent, child_name, _ = split_name(model, name)
        setattr(parent, child_name, site.base_layer)


def module_placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a site's parameters live (CPU fp32 for a parameter-free module)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32
