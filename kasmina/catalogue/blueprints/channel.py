"""A per-channel seed: ``x * gamma + beta`` on the site's channel dim.

The cheapest seed there is (2 C parameters) and the only one that reads the site's input
as it is, so it fits only sites whose output is shaped like their input. ``gamma = beta = 0``
at birth: the output is zero, yet ``gamma``'s gradient (the input times the upstream
gradient) is not, so it learns from the first step.
"""

from __future__ import annotations

import torch
from torch import nn

from kasmina.catalogue.blueprints.base import fitted, library_blueprint
from kasmina.catalogue.blueprints.geometry import CONVS, DENSE, keeps_spatial_size
from kasmina.catalogue.sites import SiteInfo, SiteKind

__all__ = ["ChannelAffine", "NORM", "build_norm"]

NORM_KINDS = frozenset({*DENSE, *CONVS, SiteKind.BLOCK})


class ChannelAffine(nn.Module):
    """``x * gamma + beta`` with one (gamma, beta) per channel on ``dim`` (1 or -1)."""

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dim == -1:
            return x * self.gamma + self.beta
        shape = (-1, *([1] * (x.dim() - 2)))  # channels on dim 1: broadcast over H, W (or L)
        return x * self.gamma.view(shape) + self.beta.view(shape)

    def extra_repr(self) -> str:
        return f"channels={self.gamma.numel()}, dim={self.dim}"


def fits_norm(info: SiteInfo) -> str | None:
    """The site's output has its input's shape (channels, and a conv's spatial size)."""
    if info.in_features != info.out_features:
        return (f"it maps {info.in_features} channels to {info.out_features}; norm needs a site whose "
                "output is shaped like its input")
    if info.kind in CONVS and not keeps_spatial_size(info.module):  # type: ignore[arg-type]
        conv = info.module
        return (f"its output size differs from its input's (kernel {conv.kernel_size}, stride {conv.stride}, "  # type: ignore[union-attr]
                f"padding {conv.padding}); norm needs a site whose output is shaped like its input")
    if info.shape_preserving is False:
        return f"it gives {info.out_shape} for an input of {info.in_shape}; norm needs them equal"
    return None


def build_norm(site: nn.Module | SiteInfo, generator: torch.Generator) -> nn.Module:
    """Per-channel scale and shift of the site input, both zero: draws nothing."""
    del generator  # nothing random: gamma and beta start at zero
    info = fitted(site, "norm", NORM_KINDS, fits_norm)
    return ChannelAffine(int(info.in_features), info.channel_dim)  # type: ignore[arg-type]


NORM = library_blueprint(
    "norm",
    "sites whose output is shaped like their input: per-channel x * gamma + beta, gamma = beta = 0 at birth",
    build_norm, kinds=NORM_KINDS, fits=fits_norm,
)
