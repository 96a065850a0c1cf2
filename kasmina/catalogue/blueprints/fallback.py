"""``zero_linear``: the catalogue's fallback, a zero linear map for every kind of site.

When a requested blueprint fails (or the breaker is open) the catalogue falls back to it, so
it must fit every site the executor serves, and its output must be shaped exactly like the
site's: zero and drawing nothing, it is the safe seed that changes no output.
"""

from __future__ import annotations

import torch
from torch import nn

from kasmina.catalogue.blueprints.base import Blueprint, fitted
from kasmina.catalogue.blueprints.geometry import DENSE, conv_geometry, example_batch, info_or_none
from kasmina.catalogue.blueprints.layers import SeedConv1d, SeedConv2d, SeedEmbedding, SeedLinear, fill_zero
from kasmina.catalogue.sites import SiteInfo, SiteKind

__all__ = ["ZERO_LINEAR", "build_zero_linear"]

ALL_KINDS = frozenset(SiteKind)


def _zero_map(info: SiteInfo) -> nn.Module:
    """The linear map, before zeroing, that gives the site's output shape from its input."""
    site = info.module
    c_in, c_out = int(info.in_features), int(info.out_features)  # type: ignore[arg-type]
    if info.kind in DENSE or (info.kind is SiteKind.BLOCK and info.layout in ("BTD", "BD")):
        return SeedLinear(c_in, c_out, bias=True)
    if info.kind is SiteKind.EMBEDDING:
        return SeedEmbedding(c_in, c_out)
    if info.kind in (SiteKind.CONV1D, SiteKind.CONV2D):
        conv = SeedConv2d if info.kind is SiteKind.CONV2D else SeedConv1d
        return conv(c_in, c_out, groups=site.groups, bias=True, **conv_geometry(site))  # type: ignore[arg-type]
    return SeedConv2d(c_in, c_out, 1, bias=True)  # a (B, C, H, W) block (problem() refused any other)


def _describable(site: nn.Module) -> bool:
    """Any module the executor can describe as a site (blocks are checked by ``problem()``)."""
    return info_or_none(site) is not None


def build_zero_linear(site: nn.Module | SiteInfo, generator: torch.Generator) -> nn.Module:
    """A linear map with zero weight and bias: output exactly 0 at start, draws nothing.

    Linear and Conv1D sites, and (B, T, D) / (B, D) blocks, get ``Linear(in, out)``; conv
    sites a conv with the site's full geometry (kernel, stride, padding, dilation, groups,
    padding mode), which matches the output size of every conv; Embedding sites a zero
    table; (B, C, H, W) blocks a 1x1 conv.
    """
    del generator  # nothing random: the seed is exactly zero
    info = fitted(site, "zero_linear", ALL_KINDS, None)
    module = _zero_map(info)
    fill_zero(module.weight, getattr(module, "bias", None))
    return module


ZERO_LINEAR = Blueprint(
    blueprint_id="zero_linear",
    version=2,  # v2: every site kind (was Linear and Conv2d)
    description="every site: a zero linear map shaped like the site (Linear, conv with its geometry, Embedding)",
    builder=build_zero_linear,
    parameter_bounds={},
    supports=_describable,
    example_input=example_batch,
    kinds=ALL_KINDS,
    takes_info=True,
)
