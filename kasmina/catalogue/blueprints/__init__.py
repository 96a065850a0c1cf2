"""Blueprints: recipes that build a seed for the site it grafts onto.

A seed runs beside a site (a host submodule): it takes the site's input and returns a tensor
shaped like the site's output. Every builder returns a NEW module on CPU in fp32 drawn from
the seed's own generator, never from the global RNG (see :mod:`.base`).

The built-in blueprints, grouped by the activations they serve:

* :mod:`.dense`: ``lora`` (Linear, Conv1D, 1x1 conv, Embedding), ``bottleneck_mlp``;
* :mod:`.conv`: (B, C, H, W): ``conv_light``, ``conv_heavy``, ``conv_adapter``;
* :mod:`.sequence`: (B, T, D) and (B, D): ``attention``, ``mlp``;
* :mod:`.channel`: output shaped like the input: ``norm``;
* :mod:`.fallback`: every site: ``zero_linear``, the catalogue's fallback.
"""

from __future__ import annotations

from kasmina.catalogue.blueprints.base import (
    Blueprint,
    Builder,
    fitted,
    generator_seed,
    library_blueprint,
    seed_generator,
    site_misfit,
)
from kasmina.catalogue.blueprints.channel import NORM, ChannelAffine, build_norm
from kasmina.catalogue.blueprints.conv import (
    CONV_ADAPTER,
    CONV_HEAVY,
    CONV_LIGHT,
    DEFAULT_CONV_WIDTH,
    ConvAdapter,
    ConvBranch,
    DepthwiseSeparable,
    build_conv_adapter,
    build_conv_heavy,
    build_conv_light,
)
from kasmina.catalogue.blueprints.dense import BOTTLENECK_MLP, LORA, LowRank, build_bottleneck_mlp, build_lora
from kasmina.catalogue.blueprints.fallback import ZERO_LINEAR, build_zero_linear
from kasmina.catalogue.blueprints.geometry import (
    example_batch,
    is_conv2d,
    is_linear,
    keeps_spatial_alignment,
    keeps_spatial_size,
)
from kasmina.catalogue.blueprints.layers import (
    BottleneckMLP,
    SeedConv1d,
    SeedConv2d,
    SeedEmbedding,
    SeedLinear,
)
from kasmina.catalogue.blueprints.sequence import ATTENTION, MLP, SelfAttention, build_attention, build_mlp

__all__ = [
    "Blueprint", "Builder", "default_blueprints", "generator_seed", "seed_generator", "site_misfit", "fitted",
    "library_blueprint", "example_batch",
    "SeedLinear", "SeedConv1d", "SeedConv2d", "SeedEmbedding",
    "BottleneckMLP", "ConvAdapter", "ConvBranch", "DepthwiseSeparable", "LowRank", "SelfAttention", "ChannelAffine",
    "is_linear", "is_conv2d", "keeps_spatial_alignment", "keeps_spatial_size",
    "build_conv_adapter", "build_bottleneck_mlp", "build_zero_linear", "build_lora", "build_conv_light",
    "build_conv_heavy", "build_attention", "build_mlp", "build_norm",
    "CONV_ADAPTER", "BOTTLENECK_MLP", "ZERO_LINEAR", "LORA", "CONV_LIGHT", "CONV_HEAVY", "ATTENTION", "MLP", "NORM",
    "DEFAULT_CONV_WIDTH",
]


def default_blueprints() -> list[Blueprint]:
    """Every built-in blueprint, in a fresh list: the original three, then the library's."""
    return [CONV_ADAPTER, BOTTLENECK_MLP, ZERO_LINEAR, LORA, CONV_LIGHT, CONV_HEAVY, ATTENTION, MLP, NORM]
