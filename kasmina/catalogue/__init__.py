"""Kernel catalogue: versioned, checksummed blueprints; cached, breaker-guarded fetch.

``Catalogue().fetch("bottleneck_mlp", site, device=..., dtype=..., generator=seed_generator(
run_seed, "features.3", generation))`` returns a :class:`FetchResult` whose ``module`` is a
new seed owned by the caller, byte-identical for the same (run seed, site, generation).
"""

from __future__ import annotations

from kasmina.catalogue.blueprints import (
    ATTENTION,
    BOTTLENECK_MLP,
    CONV_ADAPTER,
    CONV_HEAVY,
    CONV_LIGHT,
    LORA,
    MLP,
    NORM,
    ZERO_LINEAR,
    Blueprint,
    SeedConv2d,
    SeedLinear,
    default_blueprints,
    generator_seed,
    seed_generator,
)
from kasmina.catalogue.breaker import BreakerState, CircuitBreaker
from kasmina.catalogue.cache import CacheKey, CachedKernel, DeviceCache, site_signature
from kasmina.catalogue.catalogue import (
    REASONS,
    Catalogue,
    CatalogueError,
    FetchError,
    FetchResult,
    UnknownBlueprint,
    artifact_bytes,
)

__all__ = [
    "Blueprint", "default_blueprints", "seed_generator", "generator_seed", "SeedLinear", "SeedConv2d",
    "CONV_ADAPTER", "BOTTLENECK_MLP", "ZERO_LINEAR", "LORA", "CONV_LIGHT", "CONV_HEAVY", "ATTENTION", "MLP", "NORM",
    "BreakerState", "CircuitBreaker",
    "CacheKey", "CachedKernel", "DeviceCache", "site_signature",
    "Catalogue", "CatalogueError", "FetchError", "FetchResult", "UnknownBlueprint", "artifact_bytes", "REASONS",
]
