"""Seeds for (B, C, H, W) activations: Conv2d sites and 4-D blocks.

``conv_light`` and ``conv_heavy`` use 3x3, padding-1 convs with the site's stride, so they
fit every site whose output size is that of such a conv for every input size (a
"same"-padded conv, or a shape-preserving block); ``conv_adapter`` copies the site's own
geometry instead, so it fits every Conv2d with groups=1. No BatchNorm anywhere: running
statistics would move on every probe and pre-warm forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kasmina.catalogue.blueprints.base import Blueprint, fitted, library_blueprint
from kasmina.catalogue.blueprints.geometry import (
    conv_geometry,
    int_param,
    is_conv2d,
    keeps_spatial_alignment,
    shape_text,
    spatial_stride,
)
from kasmina.catalogue.blueprints.layers import SeedConv2d, fill_kaiming, fill_normal, fill_zero
from kasmina.catalogue.sites import SiteInfo, SiteKind

__all__ = ["ConvAdapter", "DepthwiseSeparable", "ConvBranch", "CONV_LIGHT", "CONV_HEAVY", "CONV_ADAPTER",
           "build_conv_light", "build_conv_heavy", "build_conv_adapter"]

#: Default hidden width of ``conv_adapter`` and ``conv_heavy`` (capped by the site's output
#: channels): at full width a 512-channel 3x3 site needs 2.6 M random numbers, about the
#: whole 10 ms fetch budget on one CPU core.
DEFAULT_CONV_WIDTH = 64
SPATIAL_KINDS = frozenset({SiteKind.CONV2D, SiteKind.BLOCK})


def fits_spatial_3x3(info: SiteInfo) -> str | None:
    """A 3x3, padding-1 conv with the site's stride gives the site's output size."""
    if info.kind is SiteKind.BLOCK:
        return None if info.layout == "BCHW" else f"its activations are {shape_text(info)}, not (B, C, H, W)"
    conv = info.module
    assert isinstance(conv, nn.Conv2d)
    if keeps_spatial_alignment(conv):
        return None
    return (f"its output size (kernel {conv.kernel_size}, padding {conv.padding}, dilation {conv.dilation}) "
            f"is not a 3x3, padding-1 conv's with stride {conv.stride}")


def _conv3x3(c_in: int, c_out: int, stride: tuple[int, ...] = (1, 1), groups: int = 1) -> SeedConv2d:
    return SeedConv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=True)


def _channels(info: SiteInfo) -> tuple[int, int]:
    return int(info.in_features), int(info.out_features)  # type: ignore[arg-type]


# -- conv_light -------------------------------------------------------------------------------


class DepthwiseSeparable(nn.Module):
    """``pointwise(depthwise(x))``: a 3x3 per channel, then a 1x1 mixing the channels."""

    def __init__(self, depthwise: nn.Conv2d, pointwise: nn.Conv2d) -> None:
        super().__init__()
        self.depthwise = depthwise
        self.pointwise = pointwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def build_conv_light(site: nn.Module | SiteInfo, generator: torch.Generator) -> nn.Module:
    """Depthwise 3x3 (the site's stride) then pointwise 1x1 (in -> out), pointwise zero.

    About ``9 C_in + C_in C_out`` parameters: the cheapest spatial seed. The depthwise
    filters are drawn (U(-1/3, 1/3), fan-in 9), so the zero pointwise gets a gradient at once.
    """
    info = fitted(site, "conv_light", SPATIAL_KINDS, fits_spatial_3x3)
    c_in, c_out = _channels(info)
    depthwise = _conv3x3(c_in, c_in, spatial_stride(info), groups=c_in)
    pointwise = SeedConv2d(c_in, c_out, 1, bias=True)
    fill_kaiming(depthwise.weight, generator)
    fill_zero(depthwise.bias, pointwise.weight, pointwise.bias)
    return DepthwiseSeparable(depthwise, pointwise)


CONV_LIGHT = library_blueprint(
    "conv_light",
    "(B, C, H, W) sites: depthwise 3x3 (site's stride) -> pointwise 1x1 in -> out, pointwise zero",
    build_conv_light, kinds=SPATIAL_KINDS, fits=fits_spatial_3x3,
)


# -- conv_heavy -------------------------------------------------------------------------------


class ConvBranch(nn.Module):
    """``conv2(gelu(norm(conv1(x))))``."""

    def __init__(self, conv1: nn.Conv2d, norm: nn.GroupNorm, conv2: nn.Conv2d) -> None:
        super().__init__()
        self.conv1 = conv1
        self.norm = norm
        self.conv2 = conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.gelu(self.norm(self.conv1(x))))


def build_conv_heavy(site: nn.Module | SiteInfo, generator: torch.Generator, *,
                     width: float | None = None) -> nn.Module:
    """3x3 conv (in -> width, the site's stride) -> GroupNorm -> GELU -> 3x3 conv (width -> out).

    GroupNorm, not BatchNorm: no running statistics for probes and pre-warm to disturb; up
    to 8 groups (``gcd(width, 8)``), so any width works. The second conv is zero.
    """
    info = fitted(site, "conv_heavy", SPATIAL_KINDS, fits_spatial_3x3)
    c_in, c_out = _channels(info)
    hidden = min(c_out, DEFAULT_CONV_WIDTH) if width is None else int_param("width", width)
    conv1 = _conv3x3(c_in, hidden, spatial_stride(info))
    norm = nn.GroupNorm(math.gcd(hidden, 8), hidden)  # ones / zeros: no random numbers drawn
    conv2 = _conv3x3(hidden, c_out)
    fill_kaiming(conv1.weight, generator)
    fill_zero(conv1.bias, conv2.weight, conv2.bias)
    return ConvBranch(conv1, norm, conv2)


CONV_HEAVY = library_blueprint(
    "conv_heavy",
    "(B, C, H, W) sites: 3x3 conv -> GroupNorm -> GELU -> 3x3 conv (zero), width defaults to min(out, 64)",
    build_conv_heavy, kinds=SPATIAL_KINDS, fits=fits_spatial_3x3,
    bounds={"width": (1, 4096)}, integers={"width"},
)


# -- conv_adapter -----------------------------------------------------------------------------


class ConvAdapter(nn.Module):
    """``proj(gelu(conv(x)))``: a conv with the site's geometry, then a 1x1 projection."""

    def __init__(self, conv: nn.Conv2d, proj: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.conv(x)))


def _supports_conv_adapter(site: nn.Module) -> bool:
    return isinstance(site, nn.Conv2d) and is_conv2d(site) and site.groups == 1


def build_conv_adapter(site: nn.Module, generator: torch.Generator, *, width: float | None = None,
                       init_scale: float = 0.0) -> nn.Module:
    """Conv with the site's geometry (in -> width) -> GELU -> 1x1 conv (width -> out).

    The first conv copies kernel, stride, padding, dilation and padding mode, so the output
    size matches the site's for every input size. The projection starts at ``N(0,
    init_scale)`` with zero bias: exactly zero by default (``init_scale`` 0, function-preserving
    at birth like every library seed; a small positive one starts near zero instead). ``width`` defaults
    to ``min(out_channels, DEFAULT_CONV_WIDTH)``.
    """
    if not _supports_conv_adapter(site):
        raise TypeError(f"conv_adapter grafts onto Conv2d sites with groups=1, not {type(site).__name__}")
    assert isinstance(site, nn.Conv2d)
    hidden = min(site.out_channels, DEFAULT_CONV_WIDTH) if width is None else int_param("width", width)
    conv = SeedConv2d(site.in_channels, hidden, bias=True, **conv_geometry(site))  # type: ignore[arg-type]
    proj = SeedConv2d(hidden, site.out_channels, 1, bias=True)
    fill_kaiming(conv.weight, generator)
    fill_normal(proj.weight, float(init_scale), generator)
    fill_zero(conv.bias, proj.bias)
    return ConvAdapter(conv, proj)


CONV_ADAPTER = Blueprint(
    blueprint_id="conv_adapter",
    version=2,  # v2: the stored spec names the kinds it fits
    description="Conv2d sites (groups=1): conv with the site's geometry -> GELU -> 1x1 conv (zero at birth)",
    builder=build_conv_adapter,
    parameter_bounds={"width": (1, 4096), "init_scale": (0.0, 1.0)},
    supports=_supports_conv_adapter,
    example_input=None,
    integer_parameters=frozenset({"width"}),
    kinds=frozenset({SiteKind.CONV2D}),
)
