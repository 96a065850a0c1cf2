"""The Blueprint record, and the per-seed generator every builder draws its init from.

A blueprint's ``builder(site, generator, **parameters)`` returns a NEW module on CPU in fp32
whose every random number comes from ``generator``:

* never from the global RNG, because ``nn.Linear``/``nn.Conv2d`` constructors draw their
  default init from it, which would make a seed depend on whatever the host drew before and
  would also shift the host's own random stream (dropout masks, data order);
* in a fixed order, so the same generator seed gives byte-identical parameters.

:func:`seed_generator` derives that generator from (run seed, site, generation), so a re-run
of the same training job grows the same seeds (SPEC §13 "Determinism").
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Collection, Mapping

import torch
from torch import nn

from kasmina.catalogue.blueprints.geometry import as_info, example_batch
from kasmina.catalogue.sites import SiteInfo, SiteKind

__all__ = ["Blueprint", "Builder", "Fits", "generator_seed", "seed_generator", "site_misfit", "fitted",
           "library_blueprint"]

#: Blueprint ids are also directory names under a catalogue root: no separators, no "..".
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

Builder = Callable[..., nn.Module]
"""``builder(site, generator, **parameters) -> nn.Module``; parameters are keyword floats."""

Fits = Callable[..., "str | None"]
"""``fits(info) -> reason or None``; one that also takes ``**parameters`` is given the
command's bounded parameters when the caller has them (attention's ``heads``)."""


def _takes_keywords(fn: Callable[..., Any] | None) -> bool:
    """Whether ``fn`` accepts ``**parameters`` (decided once, when the blueprint is made)."""
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _where(info: SiteInfo) -> str:
    return f"site {info.name!r} ({info.kind.value}" + (f", {info.layout})" if info.layout else ")")


def site_misfit(blueprint_id: str, kinds: Collection[SiteKind], fits: Fits | None, info: SiteInfo,
                parameters: Mapping[str, float] | None = None) -> str | None:
    """Why ``blueprint_id`` cannot grow at ``info``'s site (one line naming both), or None.

    Shared by :meth:`Blueprint.misfit` (G0) and :func:`fitted` (the builders' own check).
    """
    if kinds and info.kind not in kinds:
        names = ", ".join(sorted(k.value for k in kinds))
        return f"blueprint {blueprint_id!r} fits {names} sites, not {_where(info)}"
    problem = info.problem()
    if problem is not None:
        return f"blueprint {blueprint_id!r} cannot grow here: {problem}"
    if fits is None:
        return None
    try:
        reason = fits(info, **parameters) if parameters and _takes_keywords(fits) else fits(info)
    except Exception as e:  # noqa: BLE001 - a crashing predicate cannot vouch for the site
        return f"blueprint {blueprint_id!r}: its site check raised {type(e).__name__}: {e}"
    return None if reason is None else f"blueprint {blueprint_id!r} does not fit {_where(info)}: {reason}"


def fitted(site: nn.Module | SiteInfo, blueprint_id: str, kinds: Collection[SiteKind], fits: Fits | None,
           **parameters: float | None) -> SiteInfo:
    """The site's :class:`SiteInfo`, or ValueError with the misfit line.

    Builders call it first: G0 has checked the site already, but a direct call, or a cache
    hit (which skips the check), must fail with the reason rather than deep in a layer.
    """
    info = as_info(site)
    given = {k: v for k, v in parameters.items() if v is not None}
    reason = site_misfit(blueprint_id, kinds, fits, info, given)
    if reason is not None:
        raise ValueError(reason)
    return info


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
    fits: Fits | None = None
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

    def misfit(self, info: SiteInfo, parameters: Mapping[str, float] | None = None) -> str | None:
        """Why this blueprint cannot grow at ``info``'s site (one line naming both), or None.

        ``parameters`` (the command's, when known) reach a ``fits`` that takes keywords; only
        the names this blueprint bounds are passed.
        """
        given = {k: v for k, v in (parameters or {}).items() if k in self.parameter_bounds}
        reason = site_misfit(self.blueprint_id, self.kinds, self.fits, info, given)
        if reason is not None:
            return reason
        try:
            ok = bool(self.supports(info.module))
        except Exception as e:  # noqa: BLE001 - a crashing predicate cannot vouch for the site
            return f"blueprint {self.blueprint_id!r}: its site check raised {type(e).__name__}: {e}"
        return None if ok else f"blueprint {self.blueprint_id!r} does not fit {_where(info)}"

    def _site(self, site: nn.Module | SiteInfo) -> Any:
        """What the builder was written against: the SiteInfo, or the module."""
        if self.takes_info:
            return as_info(site)
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


def library_blueprint(blueprint_id: str, description: str, builder: Builder, *, kinds: Collection[SiteKind],
                      fits: Fits | None = None, bounds: Mapping[str, tuple[float, float]] | None = None,
                      integers: Collection[str] = (), version: int = 1) -> Blueprint:
    """A blueprint written against :class:`SiteInfo` that learns a delta from zero.

    What the library's own blueprints share: ``takes_info``, the fixed example batch of
    :func:`~kasmina.catalogue.blueprints.geometry.example_batch`, and RESIDUAL by default
    (the seed's output is exactly zero at birth; CONVEX would fade the host out against it).
    """
    return Blueprint(blueprint_id=blueprint_id, version=version, description=description, builder=builder,
                     parameter_bounds=dict(bounds or {}), example_input=example_batch,
                     integer_parameters=frozenset(integers), kinds=frozenset(kinds), fits=fits,
                     takes_info=True, default_blend="RESIDUAL")


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
