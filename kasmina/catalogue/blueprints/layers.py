"""Torch layers that do not touch the global RNG, and the init fills builders use on them.

``nn.Linear.__init__`` (and Conv, Embedding) calls ``reset_parameters``, which draws from the
global RNG; the ``Seed*`` subclasses skip it and the builder fills every parameter from the
seed's generator instead (also ~10x cheaper than ``torch.nn.utils.skip_init`` or meta-device
construction, which matters on cache hits).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SeedLinear", "SeedConv1d", "SeedConv2d", "SeedEmbedding", "BottleneckMLP",
           "fill_uniform", "fill_kaiming", "fill_normal", "fill_zero", "gelu_mlp"]


class SeedLinear(nn.Linear):
    """``nn.Linear`` whose constructor leaves the weights unset (see the module docstring)."""

    def reset_parameters(self) -> None:  # deliberately empty: the builder fills the weights
        pass


class SeedConv1d(nn.Conv1d):
    """``nn.Conv1d`` whose constructor leaves the weights unset (see :class:`SeedLinear`)."""

    def reset_parameters(self) -> None:  # deliberately empty: see SeedLinear
        pass


class SeedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose constructor leaves the weights unset (see :class:`SeedLinear`)."""

    def reset_parameters(self) -> None:  # deliberately empty: see SeedLinear
        pass


class SeedEmbedding(nn.Embedding):
    """``nn.Embedding`` whose constructor leaves the table unset (see :class:`SeedLinear`)."""

    def reset_parameters(self) -> None:  # deliberately empty: see SeedLinear
        pass


class BottleneckMLP(nn.Module):
    """``up(gelu(down(x)))``: a named module rather than an ``nn.Sequential`` with an
    activation module, because every module object costs construction time on each fetch."""

    def __init__(self, down: nn.Module, up: nn.Module) -> None:
        super().__init__()
        self.down = down
        self.up = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))


def fill_uniform(tensor: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        tensor.uniform_(-bound, bound, generator=generator)


def fill_kaiming(weight: torch.Tensor, generator: torch.Generator) -> None:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): what ``kaiming_uniform_(a=sqrt(5))`` gives (the
    default of ``nn.Linear``/``nn.Conv*`` and of PEFT's LoRA A), from the seed's generator."""
    fan_in = math.prod(weight.shape[1:])
    fill_uniform(weight, 1.0 / math.sqrt(fan_in), generator)


def fill_normal(tensor: torch.Tensor, std: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        if std == 0.0:
            tensor.zero_()
        else:
            tensor.normal_(0.0, std, generator=generator)


def fill_zero(*tensors: torch.Tensor | None) -> None:
    with torch.no_grad():
        for t in tensors:
            if t is not None:
                t.zero_()


def gelu_mlp(d_in: int, hidden: int, d_out: int, generator: torch.Generator, *, up_std: float = 0.0) -> BottleneckMLP:
    """Linear(d_in, hidden) -> GELU -> Linear(hidden, d_out), drawn in a fixed order.

    The down-projection is U(-1/sqrt(d_in), 1/sqrt(d_in)); the up-projection ``N(0, up_std)``
    (exactly zero for ``up_std=0``); both biases zero.
    """
    down = SeedLinear(d_in, hidden, bias=True)
    up = SeedLinear(hidden, d_out, bias=True)
    fill_kaiming(down.weight, generator)
    fill_normal(up.weight, float(up_std), generator)
    fill_zero(down.bias, up.bias)
    return BottleneckMLP(down, up)
