"""Merging a FOSSILIZED linear seed into its host layer's weights, for :func:`~kasmina.executor.export.export`.

Its own module because it is pure weight algebra (a seed that is a linear map of its layer's
kind, blended at alpha 1, folded into that layer's (weight, bias)), read and tested apart
from the fx grafting in :mod:`kasmina.executor.export_graft`. A private helper of
``export.py``: nothing here is public API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from kasmina.catalogue.blueprints.dense import LowRank
from kasmina.catalogue.sites import SiteKind
from kasmina.kernels.blend import BlenderConfig, BlendMode

if TYPE_CHECKING:
    from kasmina.executor.export import _Plan

#: The weight axis that holds a layer's output channels (what CHANNEL blends over).
_CHANNEL_AXIS = {SiteKind.LINEAR: 0, SiteKind.HF_CONV1D: 1, SiteKind.CONV1D: 0, SiteKind.CONV2D: 0,
                 SiteKind.EMBEDDING: 1}
#: The torch conv class a seed (or a ``lora`` pair) must be to merge at a conv site.
_CONVS = {SiteKind.CONV1D: "Conv1d", SiteKind.CONV2D: "Conv2d"}


def _primitive(module: nn.Module) -> str | None:
    """Which torch layer ``module`` computes exactly (a Kasmina ``SeedLinear`` is an ``nn.Linear``)."""
    cls = type(module)
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    if isinstance(module, nn.Linear) and cls.forward is nn.Linear.forward:
        return "linear"
    for conv in (nn.Conv1d, nn.Conv2d):
        if isinstance(module, conv) and cls.forward is conv.forward and cls._conv_forward is conv._conv_forward:
            return conv.__name__
    if isinstance(module, nn.Embedding) and cls.forward is nn.Embedding.forward and module.max_norm is None:
        return "embedding"
    return None


def _geometry(conv: nn.Module) -> tuple[Any, ...]:
    return (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode)


def _as(t: Tensor | None, calc: torch.dtype) -> Tensor | None:
    return None if t is None else t.detach().to(calc)


def _same_layer(seed: nn.Module, host: nn.Module, kind: SiteKind, calc: torch.dtype
                ) -> tuple[Tensor, Tensor | None] | str:
    """A one-layer seed (``zero_linear``) as (weight, bias) in the host layer's layout."""
    w, b = _as(seed.weight, calc), _as(getattr(seed, "bias", None), calc)
    primitive, host_shape = _primitive(seed), tuple(host.weight.shape)
    assert w is not None
    if kind is SiteKind.LINEAR and primitive == "linear" and tuple(w.shape) == host_shape:
        return w, b
    if kind is SiteKind.HF_CONV1D and primitive == "linear" and tuple(w.T.shape) == host_shape:
        return w.T, b
    if primitive == _CONVS.get(kind) and _geometry(seed) == _geometry(host) and tuple(w.shape) == host_shape:
        return w, b
    if kind is SiteKind.EMBEDDING and primitive == "embedding" and tuple(w.shape) == host_shape:
        return w, None
    return "it is not a layer of its host's kind and geometry"


def _pointwise_pair(seed: LowRank, host: nn.Module, kind: SiteKind) -> bool:
    """``lora`` at a 1x1 conv: both convs 1x1, the first with the layer's stride and padding."""
    conv, down, up = _CONVS[kind], seed.down, seed.up

    def pointwise(m: nn.Module) -> bool:
        return all(k == 1 for k in m.kernel_size) and m.groups == 1  # type: ignore[union-attr]

    return (pointwise(host) and _primitive(down) == conv and _primitive(up) == conv and pointwise(down)
            and pointwise(up) and (down.stride, down.padding, down.padding_mode) == (host.stride, host.padding,
                                                                                   host.padding_mode)
            and all(s == 1 for s in up.stride) and all(p == 0 for p in up.padding))  # type: ignore[union-attr]


def _low_rank(seed: LowRank, host: nn.Module, kind: SiteKind, calc: torch.dtype
              ) -> tuple[Tensor, Tensor | None] | str:
    """``lora``: ``up(down(x)) * scale`` as one (weight, bias) in the host layer's layout."""
    down, up, scale = seed.down, seed.up, seed.scale
    bias_down, bias_up = _as(getattr(down, "bias", None), calc), _as(getattr(up, "bias", None), calc)
    d, u = _as(getattr(down, "weight", None), calc), _as(getattr(up, "weight", None), calc)
    if d is None or u is None:
        return "its layers are not linear maps of the layer's kind"
    if kind is SiteKind.EMBEDDING:
        if _primitive(down) != "embedding" or _primitive(up) != "linear" or bias_up is not None:
            return "its layers are not a table and a Linear without bias"
        return (d @ u.T) * scale, None
    if kind in _CONVS:
        if not _pointwise_pair(seed, host, kind):
            return "its convolutions are not 1x1 maps with the layer's stride and padding"
        d, u = d.flatten(1), u.flatten(1)
    elif _primitive(down) != "linear" or _primitive(up) != "linear":
        return "its layers are not linear maps of the layer's kind"
    weight = (u @ d) * scale
    bias = None
    if bias_down is not None or bias_up is not None:
        bias = ((u @ bias_down) if bias_down is not None else torch.zeros_like(u[:, 0])) + (
            bias_up if bias_up is not None else 0.0)
        bias = bias * scale
    if kind is SiteKind.HF_CONV1D:
        weight = weight.T
    return weight.reshape(host.weight.shape), bias


def _merged(plan: _Plan, host: nn.Module, kind: SiteKind, exported: nn.Module
            ) -> tuple[Tensor, Tensor | None] | str:
    """The host layer's new (weight, bias) with its seed merged in, or why it cannot be."""
    config = plan.site.config or BlenderConfig()
    if config.mode is BlendMode.CONFIDENCE:
        return "CONFIDENCE weighs each sample: not a change of weights"
    if kind not in _CHANNEL_AXIS:
        return f"a {kind.value} site: its host is not one linear layer"
    if host._forward_hooks or host._forward_pre_hooks:
        return "the layer has forward hooks of its own"
    own = list(host.parameters(recurse=False))
    shared = [n for n, p in exported.named_parameters(remove_duplicate=False) if any(p is q for q in own)]
    if len(shared) > len(own):
        return f"its weights are shared with another layer ({', '.join(shared)})"
    calc = torch.float64 if host.weight.dtype == torch.float64 else torch.float32
    seed = plan.site.seed
    assert seed is not None
    delta = _low_rank(seed, host, kind, calc) if type(seed) is LowRank else (
        _same_layer(seed, host, kind, calc) if _primitive(seed) is not None
        else "it is not a linear map of the layer's kind")
    if isinstance(delta, str):
        return delta
    return _blended(host, kind, config, *delta, calc)


def _blended(host: nn.Module, kind: SiteKind, config: BlenderConfig, seed_weight: Tensor, seed_bias: Tensor | None,
             calc: torch.dtype) -> tuple[Tensor, Tensor | None] | str:
    """``blend(host, seed, 1.0)`` of two affine maps, done on their weights."""
    weight, bias = _as(host.weight, calc), _as(getattr(host, "bias", None), calc)
    assert weight is not None
    biased = bias is not None or seed_bias is not None
    host_b, seed_b = (_or0(bias, seed_bias), _or0(seed_bias, bias)) if biased else (None, None)
    if config.mode is BlendMode.RESIDUAL:
        new_weight = weight + seed_weight
        new_bias = host_b + seed_b if host_b is not None and seed_b is not None else None
    else:  # CONVEX (alpha 1) or CHANNEL: a lerp per output channel, as blend() does
        vec = torch.tensor(config.alpha_vec or (), dtype=calc, device=weight.device) \
            if config.mode is BlendMode.CHANNEL else torch.ones((), dtype=calc, device=weight.device)
        shape = [1] * weight.dim()
        shape[_CHANNEL_AXIS[kind]] = -1
        new_weight = torch.lerp(weight, seed_weight, vec.view(shape) if vec.dim() else vec)
        new_bias = torch.lerp(host_b, seed_b, vec) if host_b is not None and seed_b is not None else None
    if getattr(host, "bias", None) is None:
        if new_bias is not None and bool(new_bias.any()):
            return "the layer has no bias and the seed adds one"
        new_bias = None
    return new_weight, new_bias


def _or0(t: Tensor | None, like: Tensor | None) -> Tensor:
    if t is not None:
        return t
    assert like is not None
    return torch.zeros_like(like)


def _write(host: nn.Module, weight: Tensor, bias: Tensor | None) -> None:
    with torch.no_grad():
        host.weight.copy_(weight.to(host.weight.dtype))
        if bias is not None:
            host.bias.copy_(bias.to(host.bias.dtype))
