"""What builders read off a site: its kind, its conv geometry, a representative input.

Builders size a seed from these alone, never by running the site: the host module may carry
hooks (Kasmina's own among them) and live on another device.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.lazy import LazyModuleMixin

from kasmina.catalogue.sites import SiteInfo, SiteKind, UnsupportedSite, describe

__all__ = ["as_info", "info_or_none", "is_linear", "is_conv2d", "ints", "conv_padding",
           "keeps_spatial_alignment", "keeps_spatial_size", "conv_geometry", "spatial_stride",
           "features_last", "int_param", "example_batch", "shape_text"]

#: Kinds whose module is a linear map of the last dim (transformers' Conv1D is a Linear
#: with its weight stored transposed; a seed can stand in for it with a plain Linear).
DENSE = frozenset({SiteKind.LINEAR, SiteKind.HF_CONV1D})
CONVS = frozenset({SiteKind.CONV1D, SiteKind.CONV2D})


def as_info(site: nn.Module | SiteInfo) -> SiteInfo:
    """``site`` itself, or a description of the module (for callers that pass a module)."""
    return site if isinstance(site, SiteInfo) else describe("site", site)


def info_or_none(site: nn.Module | SiteInfo) -> SiteInfo | None:
    try:
        return as_info(site)
    except UnsupportedSite:
        return None


def _materialised(site: nn.Module) -> bool:
    return not (isinstance(site, LazyModuleMixin) and site.has_uninitialized_params())


def is_linear(site: nn.Module) -> bool:
    """An initialised ``nn.Linear`` (or subclass)."""
    return isinstance(site, nn.Linear) and _materialised(site) and site.in_features > 0


def is_conv2d(site: nn.Module) -> bool:
    """An initialised ``nn.Conv2d`` (``ConvTranspose2d`` is not one)."""
    return isinstance(site, nn.Conv2d) and _materialised(site) and site.in_channels > 0


def ints(values: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def conv_padding(site: _ConvNd) -> tuple[int, ...] | str:
    padding = site.padding
    return padding if isinstance(padding, str) else ints(padding)


def conv_geometry(site: _ConvNd) -> dict[str, object]:
    """Keyword arguments that give a new conv the site's kernel, stride, padding, dilation."""
    return dict(kernel_size=ints(site.kernel_size), stride=ints(site.stride), padding=conv_padding(site),
                dilation=ints(site.dilation), padding_mode=site.padding_mode)


def keeps_spatial_alignment(site: _ConvNd) -> bool:
    """True when a 1x1 conv with the site's stride gives the site's output size for every H, W.

    The site gives ``floor((H + 2p - d(k-1) - 1) / s) + 1`` and the 1x1 conv
    ``floor((H - 1) / s) + 1``: equal for all H exactly when ``2p == d(k-1)`` in each dim
    ("same" padding; "valid" only for 1x1 kernels). A 3x3, padding-1 conv with the site's
    stride gives the same size as that 1x1 conv, so the same test serves 3x3 seeds.
    """
    padding = conv_padding(site)
    if padding == "same":
        return True
    pads = (0,) * len(site.kernel_size) if padding == "valid" else padding
    assert not isinstance(pads, str)
    return all(2 * p == d * (k - 1) for p, d, k in zip(pads, site.dilation, site.kernel_size))


def keeps_spatial_size(site: _ConvNd) -> bool:
    """The site's output has its input's spatial size, for every input size."""
    return all(s == 1 for s in site.stride) and keeps_spatial_alignment(site)


def spatial_stride(info: SiteInfo) -> tuple[int, ...]:
    """The site's stride (a conv's), or 1 in each spatial dim (a shape-preserving block)."""
    if info.kind in CONVS:
        return ints(info.module.stride)  # type: ignore[arg-type]
    return (1, 1) if info.layout == "BCHW" else (1,)


def features_last(info: SiteInfo) -> bool:
    """Features on the last dim: Linear, Conv1D, or a (B, T, D) / (B, D) block."""
    return info.kind in DENSE or (info.kind is SiteKind.BLOCK and info.layout in ("BTD", "BD"))


def shape_text(info: SiteInfo) -> str:
    """The site's activation layout for messages: ``(B, C, H, W)``, or the probed shape."""
    if info.layout in ("BCHW", "BCL", "BTD", "BD"):
        return "(" + ", ".join(["B", *info.layout[1:]]) + ")"
    if info.in_shape is not None:
        return str((None, *info.in_shape)).replace("None", "B")
    return "of unknown shape"


def int_param(name: str, value: float) -> int:
    if value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value}")
    return int(value)


def example_batch(site: nn.Module | SiteInfo, batch: int) -> torch.Tensor | None:
    """A fixed representative input batch (own generator, seed 0; never the global RNG).

    Shaped ``(batch, *in_shape)`` once the site has been probed; before that a Linear or
    Conv1D site's input is ``(batch, in_features)`` and an Embedding's ``(batch,)`` ids (any
    id shape gives an output of the site's shape). ``None`` when the shape is unknown (a
    conv's H and W, an unprobed block). Embedding sites get integer ids in
    ``[0, num_embeddings)``; every other site a standard-normal CPU fp32 batch.
    """
    info = info_or_none(site)
    if info is None:
        return None
    generator = torch.Generator().manual_seed(0)
    if info.probe is not None:
        shape: tuple[int, ...] | None = (batch, *info.probe.in_shape)
    elif info.kind in DENSE:
        shape = (batch, int(info.in_features))  # type: ignore[arg-type]
    elif info.kind is SiteKind.EMBEDDING:
        shape = (batch,)
    else:
        shape = None
    if shape is None:
        return None
    if info.kind is SiteKind.EMBEDDING:
        return torch.randint(0, int(info.in_features), shape, generator=generator)  # type: ignore[arg-type]
    return torch.randn(shape, generator=generator, dtype=torch.float32)
