"""The demo's host network and the two blueprints it adds to the default catalogue.

The host is deliberately narrow (a 64-8-8-10 MLP): seeds have room to help. Its three
Linear layers are the seed sites.

``widened_linear`` shows how a user writes a blueprint: a private copy of the site's
Linear (copied, never shared: the isolation checks would catch sharing) plus a GELU
bottleneck whose up-projection starts at zero, so at graft time the seed computes exactly
what the host layer does (function-preserving growth, as in Net2Net) and every blend mode
starts from the host's own output. ``unstable_linear`` stands in for a seed that diverges:
it turns non-finite after a few forwards, so a gate has something real to cull.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kasmina.catalogue import Blueprint, Catalogue
from kasmina.catalogue.blueprints import default_blueprints, is_linear

SITES = ("body.0", "body.2", "head")


class DigitsNet(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class WidenedLinear(nn.Module):
    def __init__(self, site: nn.Module, generator: torch.Generator, *, rank: float = 32) -> None:
        super().__init__()
        assert isinstance(site, nn.Linear)
        r = int(rank)
        device, dtype = site.weight.device, site.weight.dtype
        self.base = nn.Linear(site.in_features, site.out_features, device=device, dtype=dtype)
        self.down = nn.Linear(site.in_features, r, device=device, dtype=dtype)
        self.up = nn.Linear(r, site.out_features, device=device, dtype=dtype)
        bound = 1.0 / math.sqrt(site.in_features)
        with torch.no_grad():
            self.base.weight.copy_(site.weight)
            self.base.bias.copy_(site.bias if site.bias is not None else torch.zeros_like(self.base.bias))
            draw = torch.empty(self.down.weight.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
            self.down.weight.copy_(draw)
            for t in (self.down.bias, self.up.weight, self.up.bias):
                t.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.up(F.gelu(self.down(x)))


class UnstableLinear(nn.Module):
    """A Linear copy that returns NaN from its sixth forward on (a seed gone bad)."""

    def __init__(self, site: nn.Module, generator: torch.Generator, *, healthy_calls: float = 5) -> None:
        super().__init__()
        assert isinstance(site, nn.Linear)
        self.inner = nn.Linear(site.in_features, site.out_features, device=site.weight.device,
                               dtype=site.weight.dtype)
        with torch.no_grad():
            self.inner.weight.copy_(site.weight)
            self.inner.bias.zero_()
        self.healthy_calls = int(healthy_calls)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        out = self.inner(x)
        return out * float("nan") if self.calls > self.healthy_calls else out


WIDENED_LINEAR = Blueprint(
    blueprint_id="widened_linear", version=1,
    description="Linear sites: a copy of the site plus a zero-initialised GELU bottleneck (function-preserving)",
    builder=WidenedLinear, parameter_bounds={"rank": (1, 1024)}, integer_parameters=frozenset({"rank"}),
    supports=is_linear)
UNSTABLE_LINEAR = Blueprint(
    blueprint_id="unstable_linear", version=1,
    description="Linear sites: a copy of the site that emits NaN after a few forwards (for the demo's cull)",
    builder=UnstableLinear, parameter_bounds={"healthy_calls": (0, 1000)},
    integer_parameters=frozenset({"healthy_calls"}), supports=is_linear)


def catalogue() -> Catalogue:
    return Catalogue([*default_blueprints(), WIDENED_LINEAR, UNSTABLE_LINEAR])
