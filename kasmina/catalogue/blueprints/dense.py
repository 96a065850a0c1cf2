"""Seeds for linear maps of the features: Linear, transformers' Conv1D, 1x1 convs, Embedding.

``lora`` is the low-rank update of PEFT (``B A x * alpha / rank``, B zero so the seed is
exactly zero at birth); ``bottleneck_mlp`` is the original Linear / same-padded Conv2d
bottleneck (its up-projection zero at birth unless ``init_scale`` says otherwise).
"""

from __future__ import annotations

import torch
from torch import nn

from kasmina.catalogue.blueprints.base import Blueprint, fitted, library_blueprint
from kasmina.catalogue.blueprints.geometry import (
    CONVS,
    DENSE,
    conv_padding,
    example_batch,
    int_param,
    ints,
    is_conv2d,
    is_linear,
    keeps_spatial_alignment,
)
from kasmina.catalogue.blueprints.layers import (
    BottleneckMLP,
    SeedConv1d,
    SeedConv2d,
    SeedEmbedding,
    SeedLinear,
    fill_kaiming,
    fill_normal,
    fill_zero,
    gelu_mlp,
)
from kasmina.catalogue.sites import SiteInfo, SiteKind

__all__ = ["LowRank", "LORA", "BOTTLENECK_MLP", "build_lora", "build_bottleneck_mlp"]


# -- lora -------------------------------------------------------------------------------------

#: Default rank of ``lora``.
DEFAULT_RANK = 8
LORA_KINDS = frozenset({*DENSE, *CONVS, SiteKind.EMBEDDING})


class LowRank(nn.Module):
    """``up(down(x)) * scale``: down is A (a Linear, 1x1 conv or lookup table), up is B."""

    def __init__(self, down: nn.Module, up: nn.Module, scale: float) -> None:
        super().__init__()
        self.down = down
        self.up = up
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x)) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


def fits_lora(info: SiteInfo) -> str | None:
    """A conv is a linear map of the channels only with a 1x1 (or 1) kernel and groups=1."""
    if info.kind not in CONVS:
        return None
    conv = info.module
    kernel = "x".join(str(k) for k in conv.kernel_size)  # type: ignore[union-attr]
    if any(k != 1 for k in conv.kernel_size):  # type: ignore[union-attr]
        return f"its kernel is {kernel}; lora fits convs with a 1x1 kernel only"
    if conv.groups != 1:  # type: ignore[union-attr]
        return f"it has groups={conv.groups}; lora fits convs with groups=1 only"
    return None


def _lora_down(info: SiteInfo, rank: int) -> nn.Module:
    """A, before its init: the site's own kind of linear map, into ``rank`` features."""
    site = info.module
    if info.kind is SiteKind.EMBEDDING:
        assert isinstance(site, nn.Embedding)
        return SeedEmbedding(site.num_embeddings, rank, padding_idx=site.padding_idx)
    if info.kind in CONVS:
        conv = SeedConv2d if info.kind is SiteKind.CONV2D else SeedConv1d
        return conv(int(info.in_features), rank, 1, stride=ints(site.stride),  # type: ignore[arg-type]
                    padding=conv_padding(site), padding_mode=site.padding_mode, bias=False)  # type: ignore[arg-type]
    return SeedLinear(int(info.in_features), rank, bias=False)  # type: ignore[arg-type]


def _lora_up(info: SiteInfo, rank: int) -> nn.Module:
    out = int(info.out_features)  # type: ignore[arg-type]
    if info.kind is SiteKind.CONV2D:
        return SeedConv2d(rank, out, 1, bias=False)
    if info.kind is SiteKind.CONV1D:
        return SeedConv1d(rank, out, 1, bias=False)
    return SeedLinear(rank, out, bias=False)


def build_lora(site: nn.Module | SiteInfo, generator: torch.Generator, *, rank: float = DEFAULT_RANK,
               alpha: float | None = None) -> nn.Module:
    """``B(A(x)) * alpha / rank`` with B zero: exactly zero at birth, and B learns first.

    A has the site's kind: a Linear for Linear and Conv1D sites, a 1x1 conv with the site's
    stride and padding for 1x1 conv sites (so the output size matches), a lookup table for
    Embedding sites. Linear / conv A is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as in PEFT; the
    table is N(0, 1) as ``nn.Embedding``'s own init (a one-hot input has no useful fan-in),
    its ``padding_idx`` row zero so padding stays without an update. ``alpha`` defaults to
    ``rank`` (scale 1).
    """
    info = fitted(site, "lora", LORA_KINDS, fits_lora)
    r = int_param("rank", rank)
    down, up = _lora_down(info, r), _lora_up(info, r)
    if isinstance(down, nn.Embedding):
        fill_normal(down.weight, 1.0, generator)
        if down.padding_idx is not None:
            fill_zero(down.weight[down.padding_idx])
    else:
        fill_kaiming(down.weight, generator)
    fill_zero(up.weight)
    return LowRank(down, up, (r if alpha is None else float(alpha)) / r)


LORA = library_blueprint(
    "lora",
    "rank-r update B(A x) * alpha/rank, B zero: Linear, Conv1D, 1x1 conv and Embedding sites",
    build_lora, kinds=LORA_KINDS, fits=fits_lora,
    bounds={"rank": (1, 1024), "alpha": (0, 4096)}, integers={"rank"},
)


# -- bottleneck_mlp ---------------------------------------------------------------------------


def _supports_bottleneck(site: nn.Module) -> bool:
    if is_linear(site):
        return True
    return isinstance(site, nn.Conv2d) and is_conv2d(site) and site.groups == 1 and keeps_spatial_alignment(site)


def build_bottleneck_mlp(site: nn.Module, generator: torch.Generator, *, rank: float = 16,
                         init_scale: float = 0.0) -> nn.Module:
    """in -> rank -> GELU -> out; Linear layers for Linear sites, 1x1 convs for Conv2d sites.

    On a conv site the down-projection carries the site's stride, which reproduces the site's
    output size only when the site is "same"-padded (see :func:`keeps_spatial_alignment`);
    ``supports`` refuses other conv geometries. The up-projection starts at ``N(0,
    init_scale)`` with zero bias: exactly zero by default (``init_scale`` 0, function-preserving
    at birth like every library seed; a small positive one starts near zero instead).
    """
    r = int_param("rank", rank)
    if is_linear(site):
        assert isinstance(site, nn.Linear)
        return gelu_mlp(site.in_features, r, site.out_features, generator, up_std=float(init_scale))
    if not _supports_bottleneck(site):
        raise TypeError(f"bottleneck_mlp grafts onto Linear or same-padded Conv2d sites, not {site!r}")
    assert isinstance(site, nn.Conv2d)
    down = SeedConv2d(site.in_channels, r, 1, stride=ints(site.stride), bias=True)
    up = SeedConv2d(r, site.out_channels, 1, bias=True)
    fill_kaiming(down.weight, generator)
    fill_normal(up.weight, float(init_scale), generator)
    fill_zero(down.bias, up.bias)
    return BottleneckMLP(down, up)


BOTTLENECK_MLP = Blueprint(
    blueprint_id="bottleneck_mlp",
    version=2,  # v2: the stored spec names the kinds it fits
    description="Linear sites, or same-padded Conv2d sites (groups=1) via 1x1 convs: in -> rank -> GELU -> out",
    builder=build_bottleneck_mlp,
    parameter_bounds={"rank": (1, 1024), "init_scale": (0.0, 1.0)},
    supports=_supports_bottleneck,
    example_input=example_batch,
    integer_parameters=frozenset({"rank"}),
    kinds=frozenset({SiteKind.LINEAR, SiteKind.CONV2D}),
)
