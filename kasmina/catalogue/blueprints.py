"""Blueprints: recipes that build a seed for the site it grafts onto.

A seed runs beside a site (a host submodule): it takes the site's input and returns a tensor
shaped like the site's output. A blueprint's ``builder(site, generator, **parameters)``
returns a NEW module on CPU in fp32 whose every random number comes from ``generator``:

* never from the global RNG, because ``nn.Linear``/``nn.Conv2d`` constructors draw their
  default init from it, which would make a seed depend on whatever the host drew before and
  would also shift the host's own random stream (dropout masks, data order);
* in a fixed order, so the same generator seed gives byte-identical parameters.

:func:`seed_generator` derives that generator from (run seed, site, generation), so a re-run
of the same training job grows the same seeds (SPEC §13 "Determinism").
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from kasmina.catalogue.sites import SiteInfo, SiteKind, describe

__all__ = [
    "Blueprint",
    "BottleneckMLP",
    "ConvAdapter",
    "SeedConv2d",
    "SeedLinear",
    "default_blueprints",
    "generator_seed",
    "seed_generator",
    "CONV_ADAPTER",
    "BOTTLENECK_MLP",
    "ZERO_LINEAR",
]

#: Blueprint ids are also directory names under a catalogue root: no separators, no "..".
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

Builder = Callable[..., nn.Module]
"""``builder(site, generator, **parameters) -> nn.Module``; parameters are keyword floats."""


@dataclass(frozen=True)
class Blueprint:
    """A versioned recipe for a seed; :meth:`spec` is what the catalogue stores and checksums.

    ``example_input(site, batch)`` returns a representative CPU fp32 input batch for pre-warm,
    or ``None`` when it cannot know one: a Conv2d site's module says nothing about H and W,
    so conv sites need the executor's callback (or the site's last seen input) instead.
    ``integer_parameters`` names bounded parameters that must be whole numbers (``rank``).
    Without ``supports`` every site is accepted and a builder that cannot fit one fails at
    fetch time (and falls back) instead of at the G0 gate.
    """

    blueprint_id: str
    version: int
    description: str
    builder: Builder
    parameter_bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    supports: Callable[[nn.Module], bool] = field(default=lambda site: True)
    example_input: Callable[[Any, int], torch.Tensor | None] | None = None
    integer_parameters: frozenset[str] = field(default_factory=frozenset)
    #: The site kinds this blueprint fits (listed by ``kasmina blueprints``; G0 refuses others).
    #: Empty: any module ``supports`` accepts (a custom blueprint written against modules).
    kinds: frozenset[SiteKind] = field(default_factory=frozenset)
    #: A finer check than ``kinds`` (channels divisible by heads, a 1x1 conv): a reason, or None.
    fits: Callable[[SiteInfo], str | None] | None = None
    #: The builder, ``fits`` and ``example_input`` take the :class:`SiteInfo`, not the module.
    takes_info: bool = False
    #: Blend mode used when a GERMINATE names none: ``"RESIDUAL"`` for a seed that learns a
    #: delta from zero (LoRA, an added branch), which CONVEX would fade the host out against.
    #: None: the executor's default (CONVEX).
    default_blend: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.blueprint_id, str) or not _ID_PATTERN.fullmatch(self.blueprint_id):
            raise ValueError(f"blueprint id {self.blueprint_id!r} must match {_ID_PATTERN.pattern}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"blueprint {self.blueprint_id}: version must be an int >= 1, got {self.version!r}")
        bounds: dict[str, tuple[float, float]] = {}
        for name, pair in self.parameter_bounds.items():
            low, high = (float(v) for v in pair)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"blueprint {self.blueprint_id}: bounds for {name!r} must be finite, low <= high")
            bounds[str(name)] = (low, high)
        unbounded = set(self.integer_parameters) - bounds.keys()
        if unbounded:
            raise ValueError(f"blueprint {self.blueprint_id}: integer parameters {sorted(unbounded)} have no bounds")
        # Frozen means frozen: callers cannot widen the bounds after registration.
        object.__setattr__(self, "parameter_bounds", MappingProxyType(bounds))
        object.__setattr__(self, "integer_parameters", frozenset(self.integer_parameters))
        object.__setattr__(self, "kinds", frozenset(SiteKind(k) for k in self.kinds))

    def misfit(self, info: SiteInfo) -> str | None:
        """Why this blueprint cannot grow at ``info``'s site (one line naming both), or None."""
        where = f"site {info.name!r} ({info.kind.value}" + (f", {info.layout})" if info.layout else ")")
        if self.kinds and info.kind not in self.kinds:
            kinds = ", ".join(sorted(k.value for k in self.kinds))
            return f"blueprint {self.blueprint_id!r} fits {kinds} sites, not {where}"
        problem = info.problem()
        if problem is not None:
            return problem
        try:
            ok = bool(self.supports(info.module))
            reason = self.fits(info) if self.fits is not None else None
        except Exception as e:  # noqa: BLE001 - a crashing predicate cannot vouch for the site
            return f"blueprint {self.blueprint_id!r}: its site check raised {type(e).__name__}: {e}"
        if not ok:
            return f"blueprint {self.blueprint_id!r} does not fit {where}"
        return None if reason is None else f"blueprint {self.blueprint_id!r} does not fit {where}: {reason}"

    def _site(self, site: nn.Module | SiteInfo) -> Any:
        """What the builder was written against: the SiteInfo, or the module."""
        if self.takes_info:
            return site if isinstance(site, SiteInfo) else describe("site", site)
        return site.module if isinstance(site, SiteInfo) else site

    def build(self, site: nn.Module | SiteInfo, generator: torch.Generator, **parameters: float) -> nn.Module:
        """Call the builder (with the SiteInfo or the module, whichever it was written against)."""
        return self.builder(self._site(site), generator, **parameters)

    def example(self, site: nn.Module | SiteInfo, batch: int) -> torch.Tensor | None:
        """A representative CPU input for pre-warm, or None when the blueprint cannot know one."""
        return None if self.example_input is None else self.example_input(self._site(site), batch)

    def __hash__(self) -> int:
        return hash((self.blueprint_id, self.version))

    def spec(self) -> dict[str, Any]:
        """JSON-ready description stored as the versioned artifact (the checksum covers it)."""
        return {
            "blueprint_id": self.blueprint_id,
            "version": self.version,
            "description": self.description,
            "parameter_bounds": {k: [lo, hi] for k, (lo, hi) in sorted(self.parameter_bounds.items())},
            "integer_parameters": sorted(self.integer_parameters),
            "builder": _qualified_name(self.builder),
            **({"kinds": sorted(k.value for k in self.kinds)} if self.kinds else {}),
            **({"default_blend": self.default_blend} if self.default_blend else {}),
        }


def _qualified_name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__qualname__)}"


# -- determinism ------------------------------------------------------------------------------


def generator_seed(run_seed: int, site: str, generation: int) -> int:
    """63-bit seed from SHA-256 of the canonical JSON ``[run_seed, site, generation]``.

    JSON (not string concatenation) keeps ("a1", 2) and ("a", 12) apart; SHA-256 keeps
    neighbouring generations uncorrelated, which ``run_seed + generation`` would not.
    """
    if isinstance(run_seed, bool) or not isinstance(run_seed, int):
        raise TypeError(f"run_seed must be an int, got {type(run_seed).__name__}")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise ValueError(f"generation must be an int >= 0, got {generation!r}")
    if not isinstance(site, str) or not site:
        raise ValueError("site must be a non-empty string")
    payload = json.dumps([run_seed, site, generation], separators=(",", ":"), ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(payload.encode("utf-8")).digest()[:8], "big") >> 1


def seed_generator(run_seed: int, site: str, generation: int) -> torch.Generator:
    """The CPU generator a seed's builder draws its whole init from."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(generator_seed(run_seed, site, generation))
    return generator


# -- layers that do not touch the global RNG --------------------------------------------------


class SeedLinear(nn.Linear):
    """``nn.Linear`` whose constructor leaves the weights unset.

    ``nn.Linear.__init__`` calls ``reset_parameters``, which draws from the global RNG; the
    builder fills every parameter from the seed's generator instead. (Also ~10x cheaper than
    ``torch.nn.utils.skip_init`` or meta-device construction, which matters on cache hits.)
    """

    def reset_parameters(self) -> None:  # deliberately empty: see the class docstring
        pass


class SeedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose constructor leaves the weights unset (see :class:`SeedLinear`)."""

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


class ConvAdapter(nn.Module):
    """``proj(gelu(conv(x)))``: a conv with the site's geometry, then a 1x1 projection."""

    def __init__(self, conv: nn.Conv2d, proj: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.conv(x)))


def _uniform_(tensor: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        tensor.uniform_(-bound, bound, generator=generator)


def _normal_(tensor: torch.Tensor, std: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        if std == 0.0:
            tensor.zero_()
        else:
            tensor.normal_(0.0, std, generator=generator)


def _zero_(*tensors: torch.Tensor | None) -> None:
    with torch.no_grad():
        for t in tensors:
            if t is not None:
                t.zero_()


# -- site predicates --------------------------------------------------------------------------


def _materialised(site: nn.Module) -> bool:
    return not (isinstance(site, LazyModuleMixin) and site.has_uninitialized_params())


def is_linear(site: nn.Module) -> bool:
    """An initialised ``nn.Linear`` (or subclass)."""
    return isinstance(site, nn.Linear) and _materialised(site) and site.in_features > 0


def is_conv2d(site: nn.Module) -> bool:
    """An initialised ``nn.Conv2d`` (``ConvTranspose2d`` is not one)."""
    return isinstance(site, nn.Conv2d) and _materialised(site) and site.in_channels > 0


def _conv_padding(site: nn.Conv2d) -> tuple[int, int] | str:
    padding = site.padding
    return padding if isinstance(padding, str) else _pair(padding)


def _pair(values: tuple[int, ...]) -> tuple[int, int]:
    return int(values[0]), int(values[1])


def keeps_spatial_alignment(site: nn.Conv2d) -> bool:
    """True when a 1x1 conv with the site's stride gives the site's output size for every H, W.

    The site gives ``floor((H + 2p - d(k-1) - 1) / s) + 1`` and the 1x1 conv
    ``floor((H - 1) / s) + 1``: equal for all H exactly when ``2p == d(k-1)`` in each dim
    ("same" padding; "valid" only for 1x1 kernels).
    """
    padding = _conv_padding(site)
    if padding == "same":
        return True
    pads = (0, 0) if padding == "valid" else padding
    assert not isinstance(pads, str)
    return all(2 * p == d * (k - 1) for p, d, k in zip(pads, site.dilation, site.kernel_size))


def _int_param(name: str, value: float) -> int:
    if value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value}")
    return int(value)


def _linear_example(site: nn.Module, batch: int) -> torch.Tensor | None:
    """A fixed standard-normal batch for Linear sites (own generator, seed 0); None for conv."""
    if not is_linear(site):
        return None
    assert isinstance(site, nn.Linear)
    return torch.randn(batch, site.in_features, generator=torch.Generator().manual_seed(0))


# -- conv_adapter -----------------------------------------------------------------------------

#: Default hidden width of ``conv_adapter`` (capped by the site's output channels).
DEFAULT_CONV_WIDTH = 64


def _supports_conv_adapter(site: nn.Module) -> bool:
    return isinstance(site, nn.Conv2d) and is_conv2d(site) and site.groups == 1


def build_conv_adapter(site: nn.Module, generator: torch.Generator, *, width: float | None = None,
                       init_scale: float = 1e-3) -> nn.Module:
    """Conv with the site's geometry (in -> width) -> GELU -> 1x1 conv (width -> out).

    The first conv copies kernel, stride, padding, dilation and padding mode, so the output
    size matches the site's for every input size. The projection starts at ``N(0,
    init_scale)`` with zero bias, so the seed's output starts near zero. ``width`` defaults
    to ``min(out_channels, DEFAULT_CONV_WIDTH)``: at full width a 512-channel 3x3 site needs
    2.6 M random numbers, about the whole 10 ms fetch budget on one CPU core.
    """
    if not _supports_conv_adapter(site):
        raise TypeError(f"conv_adapter grafts onto Conv2d sites with groups=1, not {type(site).__name__}")
    assert isinstance(site, nn.Conv2d)
    hidden = min(site.out_channels, DEFAULT_CONV_WIDTH) if width is None else _int_param("width", width)
    conv = SeedConv2d(site.in_channels, hidden, _pair(site.kernel_size), stride=_pair(site.stride),
                      padding=_conv_padding(site), dilation=_pair(site.dilation), bias=True,
                      padding_mode=site.padding_mode)
    proj = SeedConv2d(hidden, site.out_channels, 1, bias=True)
    fan_in = site.in_channels * site.kernel_size[0] * site.kernel_size[1]
    _uniform_(conv.weight, 1.0 / math.sqrt(fan_in), generator)
    _normal_(proj.weight, float(init_scale), generator)
    _zero_(conv.bias, proj.bias)
    return ConvAdapter(conv, proj)


CONV_ADAPTER = Blueprint(
    blueprint_id="conv_adapter",
    version=1,
    description="Conv2d sites (groups=1): conv with the site's geometry -> GELU -> 1x1 conv, near-zero start",
    builder=build_conv_adapter,
    parameter_bounds={"width": (1, 4096), "init_scale": (0.0, 1.0)},
    supports=_supports_conv_adapter,
    example_input=None,
    integer_parameters=frozenset({"width"}),
)


# -- bottleneck_mlp ---------------------------------------------------------------------------


def _supports_bottleneck(site: nn.Module) -> bool:
    if is_linear(site):
        return True
    return isinstance(site, nn.Conv2d) and is_conv2d(site) and site.groups == 1 and keeps_spatial_alignment(site)


def build_bottleneck_mlp(site: nn.Module, generator: torch.Generator, *, rank: float = 16,
                         init_scale: float = 1e-3) -> nn.Module:
    """in -> rank -> GELU -> out; Linear layers for Linear sites, 1x1 convs for Conv2d sites.

    On a conv site the down-projection carries the site's stride, which reproduces the site's
    output size only when the site is "same"-padded (see :func:`keeps_spatial_alignment`);
    ``supports`` refuses other conv geometries. The up-projection starts at ``N(0,
    init_scale)`` with zero bias, so the seed's output starts near zero.
    """
    r = _int_param("rank", rank)
    down: nn.Module
    up: nn.Module
    if is_linear(site):
        assert isinstance(site, nn.Linear)
        fan_in = site.in_features
        down = SeedLinear(site.in_features, r, bias=True)
        up = SeedLinear(r, site.out_features, bias=True)
    elif _supports_bottleneck(site):
        assert isinstance(site, nn.Conv2d)
        fan_in = site.in_channels
        down = SeedConv2d(site.in_channels, r, 1, stride=_pair(site.stride), bias=True)
        up = SeedConv2d(r, site.out_channels, 1, bias=True)
    else:
        raise TypeError(f"bottleneck_mlp grafts onto Linear or same-padded Conv2d sites, not {site!r}")
    _uniform_(down.weight, 1.0 / math.sqrt(fan_in), generator)
    _normal_(up.weight, float(init_scale), generator)
    _zero_(down.bias, up.bias)
    return BottleneckMLP(down, up)


BOTTLENECK_MLP = Blueprint(
    blueprint_id="bottleneck_mlp",
    version=1,
    description="Linear sites, or same-padded Conv2d sites (groups=1) via 1x1 convs: in -> rank -> GELU -> out",
    builder=build_bottleneck_mlp,
    parameter_bounds={"rank": (1, 1024), "init_scale": (0.0, 1.0)},
    supports=_supports_bottleneck,
    example_input=_linear_example,
    integer_parameters=frozenset({"rank"}),
)


# -- zero_linear ------------------------------------------------------------------------------


def _supports_zero_linear(site: nn.Module) -> bool:
    return is_linear(site) or is_conv2d(site)


def build_zero_linear(site: nn.Module, generator: torch.Generator) -> nn.Module:
    """A linear map with zero weight and bias: output exactly 0 at start, draws nothing.

    Linear sites get ``Linear(in, out)``; Conv2d sites get a conv with the site's full
    geometry (kernel, stride, padding, dilation, groups, padding mode), which is also a linear
    map and matches the output shape of every Conv2d, so this is the catalogue's default
    fallback.
    """
    del generator  # nothing random: the seed is exactly zero
    module: nn.Module
    if is_linear(site):
        assert isinstance(site, nn.Linear)
        module = SeedLinear(site.in_features, site.out_features, bias=True)
    elif is_conv2d(site):
        assert isinstance(site, nn.Conv2d)
        module = SeedConv2d(site.in_channels, site.out_channels, _pair(site.kernel_size),
                            stride=_pair(site.stride), padding=_conv_padding(site),
                            dilation=_pair(site.dilation), groups=site.groups, bias=True,
                            padding_mode=site.padding_mode)
    else:
        raise TypeError(f"zero_linear grafts onto Linear or Conv2d sites, not {type(site).__name__}")
    _zero_(module.weight, module.bias)
    return module


ZERO_LINEAR = Blueprint(
    blueprint_id="zero_linear",
    version=1,
    description="Linear sites: zero Linear(in, out); Conv2d sites: zero conv with the site's geometry",
    builder=build_zero_linear,
    parameter_bounds={},
    supports=_supports_zero_linear,
    example_input=_linear_example,
)


def default_blueprints() -> list[Blueprint]:
    """The three built-in blueprints, in a fresh list."""
    return [CONV_ADAPTER, BOTTLENECK_MLP, ZERO_LINEAR]
