"""Kernel catalogue: blueprints on a real CNN, determinism, cache, fallback, checksums, breaker.

Time never comes from the wall clock here: caches, breakers and fetch latency all take an
injected :class:`FakeClock` (budgets are measured by benchmarks, SPEC §11).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kasmina.catalogue import (
    BOTTLENECK_MLP,
    CONV_ADAPTER,
    ZERO_LINEAR,
    Blueprint,
    BreakerState,
    CacheKey,
    CachedKernel,
    Catalogue,
    CatalogueError,
    CircuitBreaker,
    DeviceCache,
    FetchError,
    FetchResult,
    UnknownBlueprint,
    default_blueprints,
    generator_seed,
    seed_generator,
)
from kasmina.errors import KasminaError

CPU = torch.device("cpu")


class FakeClock:
    """A clock that moves only when told (seconds)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def make(*blueprints: Blueprint, **kw: Any) -> Catalogue:
    """A catalogue whose latency clock is frozen (latency 0) unless the test passes one."""
    kw.setdefault("clock", FakeClock())
    return Catalogue(list(blueprints) if blueprints else None, **kw)


class SmallCNN(nn.Module):
    """Three conv geometries (same-padded, strided, valid 5x5) and two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 5)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = self.pool(x).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


SITES = ["conv1", "conv2", "conv3", "fc1", "fc2"]
SUPPORTED = {
    "conv_adapter": {"conv1", "conv2", "conv3"},
    "bottleneck_mlp": {"conv1", "conv2", "fc1", "fc2"},  # conv3 is not same-padded
    "zero_linear": set(SITES),
}


@pytest.fixture(scope="module")
def cnn() -> tuple[SmallCNN, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The model and, per site, the (input, output) of a real forward on an odd-sized batch."""
    torch.manual_seed(0)
    model = SmallCNN()
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [getattr(model, name).register_forward_hook(
        lambda mod, args, out, name=name: seen.__setitem__(name, (args[0].detach(), out.detach())))
        for name in SITES]
    with torch.no_grad():
        model(torch.randn(2, 3, 17, 15))
    for h in handles:
        h.remove()
    return model, seen


def param_bytes(module: nn.Module) -> dict[str, bytes]:
    return {k: v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if v.dtype == torch.bfloat16
            else v.detach().cpu().numpy().tobytes() for k, v in module.state_dict().items()}


def flaky(blueprint_id: str = "flaky", **kw: Any) -> tuple[Blueprint, dict[str, Any]]:
    """A Linear-site blueprint whose behaviour the test controls through ``knobs``."""
    knobs: dict[str, Any] = {"fail": False, "calls": 0, "clock": None, "cost_s": 0.0, "draw": False}

    def build(site: nn.Module, generator: torch.Generator) -> nn.Module:
        knobs["calls"] += 1
        if knobs["draw"]:
            torch.empty(1000).uniform_(generator=generator)  # consume the stream, then maybe fail
        if knobs["clock"] is not None:
            knobs["clock"].advance(knobs["cost_s"])
        if knobs["fail"]:
            raise RuntimeError("kernel store on fire")
        assert isinstance(site, nn.Linear)
        module = nn.Linear(site.in_features, site.out_features, device="meta").to_empty(device="cpu")
        with torch.no_grad():
            module.weight.fill_(1.0)
            module.bias.fill_(0.5)
        module.flaky_marker = True  # type: ignore[assignment]
        return module

    bp = Blueprint(blueprint_id, 1, "test blueprint", build, {}, lambda s: isinstance(s, nn.Linear), **kw)
    return bp, knobs


# -- blueprints on a real CNN -----------------------------------------------------------------


# The three original blueprints, whose fit this table states; the library's (lora, conv_light,
# ...) are tested site kind by site kind in tests/test_blueprint_library.py.
@pytest.mark.parametrize("blueprint", [CONV_ADAPTER, BOTTLENECK_MLP, ZERO_LINEAR], ids=lambda b: b.blueprint_id)
@pytest.mark.parametrize("site_name", SITES)
def test_blueprint_output_matches_site_output(blueprint: Blueprint, site_name: str, cnn: Any) -> None:
    model, seen = cnn
    site = getattr(model, site_name)
    assert blueprint.supports(site) == (site_name in SUPPORTED[blueprint.blueprint_id])
    if not blueprint.supports(site):
        return
    x, y = seen[site_name]
    seed = blueprint.builder(site, seed_generator(0, site_name, 0))
    assert seed is not site and all(p.device == CPU and p.dtype == torch.float32 for p in seed.parameters())
    assert seed(x).shape == y.shape
    fetched = make().fetch(blueprint.blueprint_id, site, generator=seed_generator(0, site_name, 0))
    assert not fetched.fallback_used and fetched.module(x).shape == y.shape


CONV_GEOMETRIES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=1, stride=2),
    dict(kernel_size=(3, 5), padding=(1, 2), stride=(2, 1)),
    dict(kernel_size=3, dilation=2, padding=2),
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=3, padding="valid"),
    dict(kernel_size=4, stride=2, padding=1),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding=1, groups=2),
]


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=lambda g: ",".join(f"{k}={v}" for k, v in g.items()))
def test_conv_seeds_match_every_input_size(geometry: dict[str, Any]) -> None:
    site = nn.Conv2d(4, 6, **geometry)
    k, d = site.kernel_size, site.dilation
    pads = (0, 0) if site.padding == "valid" else (None if site.padding == "same" else site.padding)
    same = pads is None or all(2 * p == di * (ki - 1) for p, di, ki in zip(pads, d, k))
    assert BOTTLENECK_MLP.supports(site) == (same and site.groups == 1)
    assert CONV_ADAPTER.supports(site) == (site.groups == 1)
    assert ZERO_LINEAR.supports(site)
    catalogue = make()
    for bp in default_blueprints():
        if not bp.supports(site):
            continue
        seed = catalogue.fetch(bp.blueprint_id, site, generator=seed_generator(1, "s", 0)).module
        for h, w in [(8, 8), (9, 7), (13, 16)]:
            x = torch.randn(2, 4, h, w)
            assert seed(x).shape == site(x).shape, (bp.blueprint_id, h, w)


def test_every_seed_is_exactly_zero_at_birth_and_init_scale_starts_near_zero(cnn: Any) -> None:
    model, seen = cnn
    for name in SITES:
        x, y = seen[name]
        out = ZERO_LINEAR.builder(getattr(model, name), seed_generator(0, name, 0))(x)
        assert torch.equal(out, torch.zeros_like(y))
    for bp, name in [(BOTTLENECK_MLP, "fc1"), (BOTTLENECK_MLP, "conv2"), (CONV_ADAPTER, "conv3")]:
        x, y = seen[name]
        exact = bp.builder(getattr(model, name), seed_generator(0, name, 0))(x)
        assert torch.equal(exact, torch.zeros_like(y))  # function-preserving by default
        near = bp.builder(getattr(model, name), seed_generator(0, name, 0), init_scale=1e-3)(x)
        assert 0 < near.abs().max() < 0.05 * y.abs().max()


def test_conv_adapter_width_defaults_small_and_is_a_parameter() -> None:
    wide = nn.Conv2d(8, 128, 3, padding=1)
    catalogue = make()
    assert catalogue.fetch("conv_adapter", wide, generator=seed_generator(0, "w", 0)).module.conv.out_channels == 64
    narrow = catalogue.fetch("conv_adapter", nn.Conv2d(8, 16, 3, padding=1), generator=seed_generator(0, "w", 0))
    assert narrow.module.conv.out_channels == 16
    full = catalogue.fetch("conv_adapter", wide, generator=seed_generator(0, "w", 0), parameters={"width": 128})
    assert full.module.conv.out_channels == 128 and full.module(torch.randn(1, 8, 5, 5)).shape == (1, 128, 5, 5)
    with pytest.raises(TypeError):
        catalogue.fetch("conv_adapter", wide, generator=None)  # type: ignore[arg-type]


def test_example_input_for_prewarm(cnn: Any) -> None:
    model, _ = cnn
    catalogue = make()
    example = catalogue.example_input("bottleneck_mlp", model.fc1, 4)
    assert example is not None and example.shape == (4, 16)
    assert torch.equal(example, catalogue.example_input("zero_linear", model.fc1, 4))  # fixed, own generator
    assert catalogue.example_input("bottleneck_mlp", model.conv1, 4) is None  # H, W unknown
    assert catalogue.example_input("conv_adapter", model.conv1, 4) is None


def test_spec_is_json_and_blueprint_is_frozen() -> None:
    spec = BOTTLENECK_MLP.spec()
    assert json.loads(json.dumps(spec)) == spec
    assert spec["blueprint_id"] == "bottleneck_mlp" and spec["version"] == 2
    assert spec["parameter_bounds"]["rank"] == [1.0, 1024.0] and spec["integer_parameters"] == ["rank"]
    with pytest.raises(FrozenInstanceError):
        BOTTLENECK_MLP.version = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        BOTTLENECK_MLP.parameter_bounds["rank"] = (0, 1)  # type: ignore[index]
    for bad in [dict(blueprint_id="../etc"), dict(version=0), dict(parameter_bounds={"r": (2, 1)})]:
        fields = dict(blueprint_id="ok", version=1, description="", builder=lambda s, g: s,
                      parameter_bounds={}, supports=lambda s: True) | bad
        with pytest.raises(ValueError):
            Blueprint(**fields)


# -- determinism ------------------------------------------------------------------------------


def test_seed_generator_is_sha256_of_run_site_generation() -> None:
    digest = hashlib.sha256(b'[42,"features.3",2]').digest()
    assert generator_seed(42, "features.3", 2) == int.from_bytes(digest[:8], "big") >> 1
    assert seed_generator(42, "features.3", 2).initial_seed() == generator_seed(42, "features.3", 2)
    seeds = {generator_seed(r, s, g) for r in (0, 1) for s in ("a1", "a") for g in (0, 2, 12)}
    assert len(seeds) == 12  # ("a1", 2) and ("a", 12) do not collide
    with pytest.raises(ValueError):
        generator_seed(1, "a", -1)


@pytest.mark.parametrize("blueprint", [CONV_ADAPTER, BOTTLENECK_MLP], ids=lambda b: b.blueprint_id)
def test_builders_are_deterministic_and_leave_the_global_rng_alone(blueprint: Blueprint, cnn: Any) -> None:
    model, _ = cnn
    site = model.conv2
    rng = torch.get_rng_state()
    a = blueprint.builder(site, seed_generator(7, "conv2", 0))
    b = blueprint.builder(site, seed_generator(7, "conv2", 0))
    assert param_bytes(a) == param_bytes(b)
    assert param_bytes(a) != param_bytes(blueprint.builder(site, seed_generator(7, "conv2", 1)))
    assert param_bytes(a) != param_bytes(blueprint.builder(site, seed_generator(7, "conv1", 0)))
    assert param_bytes(a) != param_bytes(blueprint.builder(site, seed_generator(8, "conv2", 0)))
    make().fetch(blueprint.blueprint_id, site, generator=seed_generator(7, "conv2", 0))  # a miss
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("blueprint_id,site_name", [("bottleneck_mlp", "fc1"), ("conv_adapter", "conv1"),
                                                     ("bottleneck_mlp", "conv2")])
def test_cache_hit_gives_fresh_parameters_identical_to_a_miss(blueprint_id: str, site_name: str, cnn: Any) -> None:
    model, _ = cnn
    site = getattr(model, site_name)
    catalogue = make()
    first = catalogue.fetch(blueprint_id, site, generator=seed_generator(3, site_name, 0))
    second = catalogue.fetch(blueprint_id, site, generator=seed_generator(3, site_name, 0))
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.module is not first.module
    ptrs = {p.data_ptr() for p in first.module.parameters()}
    assert not ptrs & {p.data_ptr() for p in second.module.parameters()}
    cold = make().fetch(blueprint_id, site, generator=seed_generator(3, site_name, 0))
    assert not cold.cache_hit
    assert param_bytes(second.module) == param_bytes(first.module) == param_bytes(cold.module)
    other = catalogue.fetch(blueprint_id, site, generator=seed_generator(3, site_name, 1))
    assert other.cache_hit and param_bytes(other.module) != param_bytes(first.module)
    with torch.no_grad():
        next(second.module.parameters()).add_(1.0)  # owned by the caller: the first seed is untouched
    assert param_bytes(first.module) == param_bytes(cold.module)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_hit_and_miss_agree_in_other_dtypes(dtype: torch.dtype, cnn: Any) -> None:
    model, seen = cnn
    catalogue = make()
    miss = catalogue.fetch("bottleneck_mlp", model.fc1, device="cpu", dtype=dtype, generator=seed_generator(1, "f", 0))
    hit = catalogue.fetch("bottleneck_mlp", model.fc1, device="cpu", dtype=dtype, generator=seed_generator(1, "f", 0))
    assert hit.cache_hit and all(p.dtype == dtype for p in hit.module.parameters())
    assert param_bytes(hit.module) == param_bytes(miss.module)
    fp32 = catalogue.fetch("bottleneck_mlp", model.fc1, generator=seed_generator(1, "f", 0))
    assert not fp32.cache_hit  # dtype is part of the key
    assert fp32.module(seen["fc1"][0]).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_hit_and_miss_agree(cnn: Any) -> None:
    model, _ = cnn
    site = nn.Conv2d(8, 16, 3, padding=1).cuda()
    catalogue = make()
    miss = catalogue.fetch("conv_adapter", site, generator=seed_generator(1, "c", 0))
    hit = catalogue.fetch("conv_adapter", site, generator=seed_generator(1, "c", 0))
    assert hit.cache_hit and next(hit.module.parameters()).is_cuda
    assert param_bytes(hit.module) == param_bytes(miss.module)
    cpu = catalogue.fetch("conv_adapter", nn.Conv2d(8, 16, 3, padding=1), generator=seed_generator(1, "c", 0))
    assert param_bytes(cpu.module) == param_bytes(miss.module)  # init is drawn on CPU either way


# -- device cache -----------------------------------------------------------------------------


def _key(name: str) -> CacheKey:
    return CacheKey(name, 1, "cpu", "torch.float32", ("Linear", 4, 4, True))


def _entry() -> CachedKernel:
    return CachedKernel(ZERO_LINEAR, "0" * 64, CPU, torch.float32)


def test_cache_lru_eviction_and_hit_rate() -> None:
    cache = DeviceCache(capacity=2, ttl_s=60, clock=FakeClock())
    assert cache.hit_rate == 0.0
    cache.put(_key("a"), _entry())
    cache.put(_key("b"), _entry())
    assert cache.get(_key("a")) is not None  # a is now most recently used
    cache.put(_key("c"), _entry())
    assert _key("b") not in cache and _key("a") in cache and _key("c") in cache
    assert (len(cache), cache.evictions) == (2, 1)
    assert cache.get(_key("b")) is None
    assert cache.get(_key("c")) is not None and cache.get(_key("a")) is not None
    assert (cache.hits, cache.misses, cache.hit_rate) == (3, 1, 0.75)
    assert cache.evict(lambda k: k.blueprint_id == "a") == 1 and len(cache) == 1


def test_cache_ttl_counts_from_insertion() -> None:
    clock = FakeClock()
    cache = DeviceCache(capacity=2, ttl_s=10, clock=clock)
    cache.put(_key("a"), _entry())
    clock.advance(9.9)
    assert cache.get(_key("a")) is not None  # a hit does not extend the lifetime
    clock.advance(0.1)
    assert _key("a") not in cache
    assert cache.get(_key("a")) is None
    assert (cache.expirations, cache.evictions, len(cache)) == (1, 0, 0)
    cache.put(_key("b"), _entry())
    cache.put(_key("c"), _entry())
    clock.advance(10)
    cache.put(_key("d"), _entry())  # full of expired entries: they expire, nothing is evicted
    assert (cache.expirations, cache.evictions, cache.keys()) == (3, 0, [_key("d")])


def test_cached_kernel_builds_a_new_module_per_call(cnn: Any) -> None:
    model, _ = cnn
    entry = CachedKernel(BOTTLENECK_MLP, "0" * 64, CPU, torch.float64, {"rank": 4.0})
    a = entry.instantiate(model.fc1, seed_generator(0, "fc1", 0))
    b = entry.instantiate(model.fc1, seed_generator(0, "fc1", 0))
    assert a is not b and a.down.out_features == 4 and a.down.weight.dtype == torch.float64
    assert a.down.weight.data_ptr() != b.down.weight.data_ptr() and torch.equal(a.down.weight, b.down.weight)


def test_catalogue_cache_lru_and_ttl_with_an_injected_clock(cnn: Any) -> None:
    model, _ = cnn
    clock = FakeClock()
    catalogue = make(cache=DeviceCache(capacity=2, ttl_s=5, clock=clock))
    fetch = lambda site: catalogue.fetch("zero_linear", site, generator=seed_generator(0, "s", 0))  # noqa: E731
    assert [fetch(model.fc1).cache_hit, fetch(model.fc1).cache_hit] == [False, True]
    fetch(model.fc2)
    fetch(model.conv1)  # third key: fc1 is the least recently used and goes
    assert not fetch(model.fc1).cache_hit and catalogue.cache.evictions >= 1
    clock.advance(5)
    assert not fetch(model.fc1).cache_hit and catalogue.cache.expirations == 1
    assert catalogue.stats()["hit_rate"] == catalogue.cache.hit_rate == pytest.approx(1 / 6)  # one hit in six lookups


# -- fallback ---------------------------------------------------------------------------------


def test_fallback_on_unknown_and_unsupported(cnn: Any) -> None:
    model, seen = cnn
    catalogue = make()
    unknown = catalogue.fetch("no_such_blueprint", model.fc1, generator=seed_generator(0, "fc1", 0))
    assert (unknown.blueprint_id_requested, unknown.blueprint_id_used) == ("no_such_blueprint", "zero_linear")
    assert unknown.fallback_used and unknown.reason == "unknown_blueprint"
    assert torch.equal(unknown.module(seen["fc1"][0]), torch.zeros_like(seen["fc1"][1]))
    unsupported = catalogue.fetch("conv_adapter", model.fc2, generator=seed_generator(0, "fc2", 0))
    assert unsupported.fallback_used and unsupported.reason == "unsupported_site"
    conv = catalogue.fetch("bottleneck_mlp", model.conv3, generator=seed_generator(0, "conv3", 0))
    assert conv.reason == "unsupported_site" and conv.module(seen["conv3"][0]).shape == seen["conv3"][1].shape
    assert unknown.version == 2 and unknown.checksum == catalogue.checksum("zero_linear")
    # caller mistakes do not count against the breaker
    assert catalogue.breaker.snapshot()["failure_count"] == 0
    assert {k.blueprint_id for k in catalogue.cache.keys()} == {"zero_linear"}


def test_fallback_is_never_cached_under_the_requested_id(cnn: Any) -> None:
    model, seen = cnn
    bp, knobs = flaky()
    catalogue = make(*default_blueprints(), bp)
    knobs["fail"] = True
    failed = catalogue.fetch("flaky", model.fc1, generator=seed_generator(0, "fc1", 0))
    assert failed.fallback_used and failed.blueprint_id_used == "zero_linear" and failed.reason == "builder_error"
    assert "flaky" not in {k.blueprint_id for k in catalogue.cache.keys()}
    knobs["fail"] = False
    ok = catalogue.fetch("flaky", model.fc1, generator=seed_generator(0, "fc1", 0))
    assert (ok.blueprint_id_used, ok.fallback_used, ok.cache_hit, ok.reason) == ("flaky", False, False, None)
    assert getattr(ok.module, "flaky_marker", False) and not torch.equal(ok.module(seen["fc1"][0]),
                                                                        torch.zeros_like(seen["fc1"][1]))
    again = catalogue.fetch("flaky", model.fc1, generator=seed_generator(0, "fc1", 0))
    assert again.cache_hit and getattr(again.module, "flaky_marker", False) and knobs["calls"] == 3
    stats = catalogue.stats()
    assert (stats["fetches"], stats["fallbacks"], stats["failures"]) == (3, 1, {"builder_error": 1})


def test_slow_fetch_falls_back_and_a_later_fast_fetch_builds_the_blueprint(cnn: Any) -> None:
    model, _ = cnn
    clock = FakeClock()
    bp, knobs = flaky()
    knobs.update(clock=clock, cost_s=0.025)
    catalogue = make(*default_blueprints(), bp, clock=clock, latency_budget_ms=10.0)
    slow = catalogue.fetch("flaky", model.fc1, generator=seed_generator(0, "fc1", 0))
    assert slow.fallback_used and slow.reason == "latency_budget_exceeded"
    assert slow.latency_ms == pytest.approx(25.0)  # the real cost is reported, not the budget
    assert catalogue.breaker.snapshot()["failure_count"] == 1
    knobs["cost_s"] = 0.004
    fast = catalogue.fetch("flaky", model.fc1, generator=seed_generator(0, "fc1", 0))
    assert (fast.blueprint_id_used, fast.fallback_used) == ("flaky", False)
    assert getattr(fast.module, "flaky_marker", False) and fast.latency_ms == pytest.approx(4.0)
    assert catalogue.breaker.snapshot()["failure_count"] == 0


def test_generator_is_rewound_before_the_fallback_builds(cnn: Any) -> None:
    model, _ = cnn
    bp, knobs = flaky()
    knobs.update(fail=True, draw=True)
    catalogue = make(*default_blueprints(), bp, fallback_blueprint_id="bottleneck_mlp")
    fell = catalogue.fetch("flaky", model.fc1, generator=seed_generator(5, "fc1", 0))
    assert fell.blueprint_id_used == "bottleneck_mlp"
    direct = make().fetch("bottleneck_mlp", model.fc1, generator=seed_generator(5, "fc1", 0))
    assert param_bytes(fell.module) == param_bytes(direct.module)


def test_fetch_error_when_no_fallback_fits(cnn: Any) -> None:
    model, _ = cnn
    with pytest.raises(FetchError) as info:
        make(fallback_blueprint_id=None).fetch("nope", model.fc1, generator=seed_generator(0, "x", 0))
    assert info.value.reason == "unknown_blueprint" and isinstance(info.value, KasminaError)
    catalogue = make()
    for site in (nn.Identity(), nn.LSTM(4, 4), nn.ConvTranspose2d(3, 3, 3)):
        with pytest.raises(FetchError) as info:
            catalogue.fetch("conv_adapter", site, generator=seed_generator(0, "x", 0))
        assert info.value.reason == "unsupported_site" and "zero_linear" in str(info.value.fallback_reason)
    with pytest.raises(FetchError) as info:
        catalogue.fetch("zero_linear", nn.Identity(), generator=seed_generator(0, "x", 0))
    assert info.value.fallback_reason is None  # the fallback was what failed: no second try
    with pytest.raises(CatalogueError):
        Catalogue([BOTTLENECK_MLP])  # default fallback zero_linear is not registered
    assert catalogue.stats()["fetches"] == 4 and catalogue.stats()["fallbacks"] == 0


def test_parameters_are_bounded_and_part_of_the_key(cnn: Any) -> None:
    model, _ = cnn
    catalogue = make()
    gen = lambda: seed_generator(0, "fc1", 0)  # noqa: E731
    small = catalogue.fetch("bottleneck_mlp", model.fc1, generator=gen(), parameters={"rank": 4, "blend_steps": 30})
    assert small.module.down.out_features == 4 and not small.cache_hit
    default = catalogue.fetch("bottleneck_mlp", model.fc1, generator=gen())
    assert default.module.down.out_features == 16 and not default.cache_hit
    assert catalogue.fetch("bottleneck_mlp", model.fc1, generator=gen(), parameters={"rank": 4.0}).cache_hit
    for bad in ({"rank": 0}, {"rank": 2.5}, {"rank": float("nan")}, {"init_scale": 2}):
        with pytest.raises(FetchError) as info:
            catalogue.fetch("bottleneck_mlp", model.fc1, generator=gen(), parameters=bad)
        assert info.value.reason == "invalid_parameters" and info.value.fallback_reason is None
    assert catalogue.breaker.snapshot()["failure_count"] == 0
    assert dict(catalogue.bounds("bottleneck_mlp")) == {"rank": (1.0, 1024.0), "init_scale": (0.0, 1.0)}


def test_shared_or_misshapen_seeds_are_refused(cnn: Any) -> None:
    model, _ = cnn
    singleton = nn.Linear(16, 32)
    shared = Blueprint("singleton", 1, "returns one module forever", lambda s, g: singleton)
    wrong = Blueprint("wrong", 1, "wrong width", lambda s, g: nn.Linear(s.in_features, s.out_features + 1))
    itself = Blueprint("itself", 1, "returns the site", lambda s, g: s)
    catalogue = make(*default_blueprints(), shared, wrong, itself, probe_interface=True)
    fetch = lambda bid: catalogue.fetch(bid, model.fc1, generator=seed_generator(0, "fc1", 0))  # noqa: E731
    first = fetch("singleton")
    assert not first.fallback_used
    assert fetch("singleton").reason == "shared_parameters"  # the prototype's shared-kernel defect
    assert fetch("wrong").reason == "interface_mismatch"
    # sharing the SITE's weights is an isolation violation: the executor records and gates it
    assert [fetch("itself").fallback_used for _ in range(2)] == [False, False]


# -- artifacts and checksums ------------------------------------------------------------------


def test_file_artifacts_are_checksummed_and_tampering_is_caught(tmp_path: Path, cnn: Any) -> None:
    model, _ = cnn
    catalogue = make(root=tmp_path)
    artifact = tmp_path / "bottleneck_mlp" / "v2.json"
    sidecar = tmp_path / "bottleneck_mlp" / "v2.json.sha256"
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert sidecar.read_text() == f"{digest}  v2.json\n" and catalogue.checksum("bottleneck_mlp") == digest
    assert json.loads(artifact.read_text()) == BOTTLENECK_MLP.spec()
    assert Catalogue(root=tmp_path).names() == sorted(b.blueprint_id for b in default_blueprints())  # reopen

    artifact.write_text(artifact.read_text().replace("GELU", "ReLU"))
    tampered = catalogue.fetch("bottleneck_mlp", model.fc1, generator=seed_generator(0, "fc1", 0))
    assert tampered.fallback_used and tampered.reason == "checksum_mismatch"
    assert catalogue.breaker.snapshot()["failure_count"] == 1
    with pytest.raises(CatalogueError):
        Catalogue(root=tmp_path)  # a new process refuses the edited artifact at registration

    sidecar_only = make(root=tmp_path / "b")
    (tmp_path / "b" / "conv_adapter" / "v2.json.sha256").write_text("0" * 64 + "  v2.json\n")
    assert sidecar_only.fetch("conv_adapter", model.conv1, generator=seed_generator(0, "c", 0)).reason == \
        "checksum_mismatch"
    (tmp_path / "b" / "bottleneck_mlp" / "v2.json").unlink()
    assert sidecar_only.fetch("bottleneck_mlp", model.fc1, generator=seed_generator(0, "c", 0)).reason == \
        "artifact_unavailable"
    (tmp_path / "b" / "zero_linear" / "v2.json").write_text("{}")
    assert sidecar_only.invalidate("zero_linear") == 2  # cached (and trusted) by the two fallbacks above
    with pytest.raises(FetchError) as info:
        sidecar_only.fetch("nope", model.fc1, generator=seed_generator(0, "c", 0))
    assert info.value.reason == "unknown_blueprint" and "checksum_mismatch" in str(info.value.fallback_reason)


def test_ttl_bounds_how_long_a_verified_artifact_is_trusted(tmp_path: Path, cnn: Any) -> None:
    model, _ = cnn
    clock = FakeClock()
    catalogue = make(root=tmp_path, cache=DeviceCache(ttl_s=60, clock=clock))
    fetch = lambda: catalogue.fetch("bottleneck_mlp", model.fc1, generator=seed_generator(0, "f", 0))  # noqa: E731
    assert not fetch().cache_hit
    (tmp_path / "bottleneck_mlp" / "v2.json").write_text("{}")
    assert fetch().cache_hit  # within the TTL the verified kernel is trusted
    clock.advance(60)
    assert fetch().reason == "checksum_mismatch"


def test_register_versions_and_conflicts(cnn: Any) -> None:
    model, _ = cnn
    catalogue = make()
    assert catalogue.knows("zero_linear") and not catalogue.knows("nope")
    with pytest.raises(UnknownBlueprint):
        catalogue.get("nope")
    changed = Blueprint("zero_linear", 2, "same id and version, new text", ZERO_LINEAR.builder, {},
                        ZERO_LINEAR.supports)
    with pytest.raises(CatalogueError):
        catalogue.register(changed)
    assert catalogue.register(ZERO_LINEAR) == catalogue.checksum("zero_linear")  # idempotent
    catalogue.fetch("zero_linear", model.fc1, generator=seed_generator(0, "f", 0))
    v3 = Blueprint("zero_linear", 3, "v3", ZERO_LINEAR.builder, {}, ZERO_LINEAR.supports)
    catalogue.register(v3)
    assert catalogue.get("zero_linear") is v3 and not catalogue.cache.keys()  # v2 kernels dropped
    result = catalogue.fetch("zero_linear", model.fc1, generator=seed_generator(0, "f", 0))
    assert result.version == 3 and result.checksum == catalogue.checksum("zero_linear", 3)
    assert catalogue.checksum("zero_linear", 2) != catalogue.checksum("zero_linear", 3)


# -- breaker ----------------------------------------------------------------------------------


def test_breaker_states_follow_leyline() -> None:
    from kasmina.leyline import CircuitBreakerState

    for state in BreakerState:
        assert CircuitBreakerState.Value(f"CIRCUIT_STATE_{state.name}") == state.value


def test_breaker_opens_half_opens_and_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=30, success_threshold=2, clock=clock)
    breaker.record_failure("a")
    breaker.record_failure("b")
    breaker.record_success()  # a success resets the streak
    breaker.record_failure("c")
    breaker.record_failure("d")
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure("e")
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    snap = breaker.snapshot()
    assert snap["state"] == "OPEN" and snap["cooldown_remaining_s"] == 30 and snap["denied"] == 1
    assert snap["last_failure"] == "e" and snap["last_transition"]["to"] == "OPEN"
    clock.advance(29.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN
    breaker.record_success()
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.snapshot()["failure_count"] == 0


def test_breaker_half_open_failure_reopens_and_open_failure_extends() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock)
    breaker.record_failure("x")
    clock.advance(8)
    breaker.record_failure("late")  # still failing: the window restarts
    clock.advance(8)
    assert not breaker.allow()
    clock.advance(2)
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN
    breaker.record_failure("trial")
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    assert breaker.snapshot()["times_opened"] == 2


def test_breaker_force_accepts_enum_wire_value_and_name() -> None:
    breaker = CircuitBreaker(clock=FakeClock())
    breaker.force(2, "ops")
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    breaker.force("HALF_OPEN", "ops")
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allow()
    breaker.force("CIRCUIT_STATE_CLOSED", "controller")
    assert breaker.state is BreakerState.CLOSED
    breaker.force(BreakerState.OPEN, "drill")
    assert breaker.snapshot()["last_transition"]["reason"] == "forced: drill"
    for bad in (0, "UNKNOWN", 7):
        with pytest.raises(ValueError):
            breaker.force(bad, "x")


def test_catalogue_breaker_refuses_then_recovers(cnn: Any) -> None:
    model, _ = cnn
    clock = FakeClock()
    bad, bad_knobs = flaky("broken")
    good, good_knobs = flaky("good")
    bad_knobs["fail"] = True
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=30, success_threshold=2, clock=clock)
    catalogue = make(*default_blueprints(), bad, good, breaker=breaker)
    fetch = lambda bid: catalogue.fetch(bid, model.fc1, generator=seed_generator(0, "fc1", 0))  # noqa: E731
    for _ in range(5):
        assert fetch("nope").reason == "unknown_blueprint"  # caller errors never trip it
    assert breaker.state is BreakerState.CLOSED
    assert [fetch("broken").reason for _ in range(3)] == ["builder_error"] * 3
    assert breaker.state is BreakerState.OPEN and catalogue.stats()["breaker_state"] == "OPEN"
    refused = fetch("good")
    assert refused.fallback_used and refused.reason == "breaker_open" and refused.blueprint_id_used == "zero_linear"
    assert good_knobs["calls"] == 0 and bad_knobs["calls"] == 3  # no fetch attempt while open
    clock.advance(30)
    first = fetch("good")
    assert not first.fallback_used and breaker.state is BreakerState.HALF_OPEN
    assert not fetch("good").fallback_used and breaker.state is BreakerState.CLOSED


def test_stats_report_latency_mean_p95_and_counters(cnn: Any) -> None:
    model, _ = cnn
    clock = FakeClock()
    bp, knobs = flaky()
    knobs["clock"] = clock
    catalogue = make(*default_blueprints(), bp, clock=clock, latency_budget_ms=100)
    for ms in range(1, 21):  # latencies 1..20 ms
        knobs["cost_s"] = ms / 1000
        result = catalogue.fetch("flaky", model.fc1, generator=seed_generator(0, "f", ms))
        assert isinstance(result, FetchResult) and result.latency_ms == pytest.approx(ms)
    stats = catalogue.stats()
    assert stats["fetch_latency_ms_mean"] == pytest.approx(10.5)
    assert stats["fetch_latency_ms_p95"] == pytest.approx(19.0)  # nearest rank: 19th of 20
    assert (stats["fetches"], stats["fallbacks"], stats["breaker_state"]) == (20, 0, "CLOSED")
    assert stats["hit_rate"] == pytest.approx(19 / 20)
