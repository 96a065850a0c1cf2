"""The kernel catalogue (the role of Esper's Urza): versioned, checksummed blueprints and fetch.

``fetch`` turns (blueprint id, site, device, dtype, the seed's generator) into a new seed
module, measuring its latency. In order:

1. the breaker (``allow()`` false: no attempt, fallback with reason ``breaker_open``);
2. the device cache; a hit skips step 3 and the placement check of step 4 (see
   :mod:`kasmina.catalogue.cache` for what is saved, and why it holds no module);
3. ``supports(site)``, then the stored artifact is read and its SHA-256 checked against the
   checksum recorded at ``register`` (and the ``.sha256`` file beside it under ``root``);
4. build with the seed's generator, move to device/dtype, check placement and parameter
   ownership (and, with ``probe_interface=True``, one probe forward for the output shape);
5. over ``latency_budget_ms``: a failure like the others.

On failure it falls back to ``fallback_blueprint_id`` when that blueprint supports the site.
The fallback is fetched under its OWN id and cache key and reported with
``fallback_used=True`` and the reason; nothing is ever stored under the requested id (the
prototype cached its fallback there, so every later seed of that blueprint silently got the
fallback as a "hit", reference §11.6). Before the fallback builds, the generator is rewound
to its state at the start of the fetch, so a seed's init never depends on how far a failed
builder got.

Breaker accounting: failures of the fetch machinery (artifact unreadable or tampered,
builder error, parameters shared with a live seed, interface mismatch, over budget) count; caller mistakes (unknown blueprint,
unsupported site) do not, so a controller asking for a bad id cannot lock every seed out.
Parameters outside the blueprint's bounds raise :class:`FetchError` without a fallback: the
command is wrong, and a zero seed would hide that.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import hmac
import json
import math
import os
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from kasmina.catalogue.blueprints import Blueprint, default_blueprints, is_conv2d, is_linear
from kasmina.catalogue.breaker import CircuitBreaker
from kasmina.catalogue.cache import CacheKey, CachedKernel, DeviceCache, site_signature
from kasmina.catalogue.sites import SiteInfo, SiteKind, UnsupportedSite, describe
from kasmina.errors import KasminaError

__all__ = ["Catalogue", "CatalogueError", "FetchError", "FetchResult", "UnknownBlueprint",
           "artifact_bytes", "REASONS"]

#: Every ``reason`` a fetch can report, and whether it counts as a breaker failure.
REASONS: Mapping[str, bool] = {
    "unknown_blueprint": False,
    "unsupported_site": False,
    "invalid_parameters": False,
    "breaker_open": False,
    "artifact_unavailable": True,
    "checksum_mismatch": True,
    "builder_error": True,
    "shared_parameters": True,
    "interface_mismatch": True,
    "latency_budget_exceeded": True,
}

#: Fetch latencies kept for the mean / p95 in :meth:`Catalogue.stats`.
LATENCY_WINDOW = 4096


class CatalogueError(KasminaError):
    """The catalogue refused an operation (conflicting artifact, bad configuration)."""


class UnknownBlueprint(CatalogueError):
    """No blueprint with that id is registered."""


class FetchError(CatalogueError):
    """No seed could be fetched: the request failed and no fallback fits the site."""

    def __init__(self, reason: str, blueprint_id: str, detail: str = "",
                 fallback_reason: str | None = None) -> None:
        message = f"cannot fetch blueprint {blueprint_id!r}: {reason}"
        if detail:
            message += f" ({detail})"
        if fallback_reason is not None:
            message += f"; fallback failed too: {fallback_reason}"
        super().__init__(message)
        self.reason, self.blueprint_id = reason, blueprint_id
        self.detail, self.fallback_reason = detail, fallback_reason


@dataclass(frozen=True, slots=True)
class FetchResult:
    """A fetched seed and how it was obtained.

    ``version``/``checksum`` describe the blueprint actually used; ``cache_hit`` is whether
    that blueprint's validated kernel came from the cache; ``reason`` is why the requested
    blueprint was not used (None unless ``fallback_used``); ``latency_ms`` covers the whole
    call, fallback included.
    """

    module: nn.Module
    blueprint_id_requested: str
    blueprint_id_used: str
    version: int
    checksum: str
    latency_ms: float
    cache_hit: bool
    fallback_used: bool
    reason: str | None


class _Failure(Exception):
    """Internal: one attempt failed for ``reason``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _forget(issued: dict[int, weakref.ref[torch.Tensor]], key: int, ref: weakref.ref[torch.Tensor]) -> None:
    """Weakref callback: a seed's parameter died; forget it unless its id was reused since."""
    if issued.get(key) is ref:
        del issued[key]


def artifact_bytes(spec: Mapping[str, Any]) -> bytes:
    """Canonical JSON of a blueprint spec: the exact bytes stored and checksummed."""
    return (json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
            + "\n").encode("ascii")


# -- artifact stores --------------------------------------------------------------------------


class _MemoryArtifacts:
    """Artifacts kept in this process (the default)."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, int], bytes] = {}

    def put(self, blueprint_id: str, version: int, data: bytes, checksum: str) -> None:
        existing = self._data.get((blueprint_id, version))
        if existing is not None and existing != data:
            raise CatalogueError(f"blueprint {blueprint_id} v{version} is already registered with a different "
                                 "spec; give the changed blueprint a new version")
        self._data[(blueprint_id, version)] = data

    def read(self, blueprint_id: str, version: int) -> tuple[bytes, str | None]:
        return self._data[(blueprint_id, version)], None


class _FileArtifacts:
    """``<root>/<id>/v<version>.json`` plus ``v<version>.json.sha256`` (``sha256sum -c`` format)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, blueprint_id: str, version: int) -> Path:
        return self.root / blueprint_id / f"v{version}.json"

    def put(self, blueprint_id: str, version: int, data: bytes, checksum: str) -> None:
        path = self.path(blueprint_id, version)
        sidecar = path.with_name(path.name + ".sha256")
        if path.exists():
            if path.read_bytes() != data:
                raise CatalogueError(f"artifact {path} differs from blueprint {blueprint_id} v{version}: it was "
                                     "edited, or the blueprint changed without a new version")
            if sidecar.exists() and _sidecar_digest(sidecar.read_text("ascii")) != checksum:
                raise CatalogueError(f"checksum file {sidecar} does not match {path}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, data)
        if not sidecar.exists():
            _write_atomic(sidecar, f"{checksum}  {path.name}\n".encode("ascii"))

    def read(self, blueprint_id: str, version: int) -> tuple[bytes, str | None]:
        path = self.path(blueprint_id, version)
        data = path.read_bytes()
        return data, _sidecar_digest(path.with_name(path.name + ".sha256").read_text("ascii"))


def _sidecar_digest(text: str) -> str:
    return text.split()[0].lower() if text.split() else ""


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file and rename, so a reader never sees half an artifact."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- interface probe --------------------------------------------------------------------------


def _probe_shapes(info: SiteInfo) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """A small input for the site and the output shape the site gives for it (None: unknown).

    Computed from the site's hyperparameters or its recorded first forward, never by running
    the site: the host module may carry hooks (Kasmina's own among them) and live on another
    device. Embedding sites take integer ids, so they are not probed with zeros.
    """
    site = info.module
    if info.kind is SiteKind.EMBEDDING:
        return None
    if info.probe is not None:
        return (1, *info.probe.in_shape), (1, *info.probe.out_shape)
    if is_linear(site):
        assert isinstance(site, nn.Linear)
        return (2, site.in_features), (2, site.out_features)
    if is_conv2d(site):
        assert isinstance(site, nn.Conv2d)
        size_in, size_out = [], []
        for i in range(2):
            k, s, d = site.kernel_size[i], site.stride[i], site.dilation[i]
            h = d * (k - 1) + 1 + s  # smallest size with a non-empty output, plus a stride
            if site.padding == "same":
                out = h
            else:
                p = 0 if site.padding == "valid" else int(site.padding[i])  # type: ignore[index]
                out = (h + 2 * p - d * (k - 1) - 1) // s + 1
            size_in.append(h)
            size_out.append(out)
        return (1, site.in_channels, *size_in), (1, site.out_channels, *size_out)
    return None


def _check_interface(module: nn.Module, site: SiteInfo, device: torch.device, dtype: torch.dtype) -> None:
    """One no-grad forward in eval mode on a zero probe: output shape, device, dtype as the site's.

    Opt-in (``Catalogue(probe_interface=True)``): on CPU the first conv of a new geometry costs
    5-30 ms of backend kernel set-up (oneDNN; cuDNN plans on GPU), which would push ordinary
    fetches over the 10 ms budget. The executor's G3 gate checks the interface on the real
    input anyway; the probe is for catching a third-party builder early.
    """
    shapes = _probe_shapes(site)
    if shapes is None:
        return
    shape_in, shape_out = shapes
    was_training = module.training
    module.eval()  # no BatchNorm statistics update, no dropout draws
    try:
        with torch.no_grad():
            out = module(torch.zeros(shape_in, device=device, dtype=dtype))
    except Exception as e:  # noqa: BLE001 - any forward error means the seed does not fit
        raise _Failure("interface_mismatch", f"probe forward raised {type(e).__name__}: {e}") from e
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise _Failure("interface_mismatch", f"seed returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != shape_out or out.device != device or out.dtype != dtype:
        raise _Failure("interface_mismatch", f"probe {shape_in} gave {tuple(out.shape)} {out.dtype} on "
                                             f"{out.device}; the site gives {shape_out} {dtype} on {device}")


def _check_placement(module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Cheap structural checks on every miss: materialised, floating tensors on device/dtype."""
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if isinstance(t, (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer)):
            raise _Failure("interface_mismatch", f"seed tensor {name} is lazy (uninitialised)")
        if t.device != device or (t.is_floating_point() and t.dtype != dtype):
            raise _Failure("interface_mismatch", f"seed tensor {name} is {t.dtype} on {t.device}, "
                                                 f"wanted {dtype} on {device}")


def _placement(site: nn.Module, device: torch.device | str | None,
               dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """Explicit device/dtype, else those of the site's first floating parameter, else CPU fp32."""
    if device is None or dtype is None:
        ref = next((p for p in site.parameters() if p.is_floating_point()), None)
        device = device if device is not None else (ref.device if ref is not None else "cpu")
        dtype = dtype if dtype is not None else (ref.dtype if ref is not None else torch.float32)
    return (device if isinstance(device, torch.device) else torch.device(device)), dtype


def _info(site: nn.Module | SiteInfo) -> SiteInfo | None:
    """The site's description (None: a module no seed can grow beside)."""
    if isinstance(site, SiteInfo):
        return site
    try:
        return describe("site", site)
    except UnsupportedSite:
        return None


# -- the catalogue ----------------------------------------------------------------------------


class Catalogue:
    """Registered blueprints, their checksummed artifacts, the device cache and the fetch breaker."""

    def __init__(self, blueprints: Iterable[Blueprint] | None = None, *, root: str | Path | None = None,
                 latency_budget_ms: float = 10.0, fallback_blueprint_id: str | None = "zero_linear",
                 cache_capacity: int = 32, cache_ttl_s: float = 600.0, breaker: CircuitBreaker | None = None,
                 clock: Callable[[], float] = time.perf_counter, cache: DeviceCache | None = None,
                 probe_interface: bool = False) -> None:
        if not latency_budget_ms > 0:
            raise CatalogueError(f"latency_budget_ms must be > 0, got {latency_budget_ms}")
        self.latency_budget_ms = float(latency_budget_ms)
        self.fallback_blueprint_id = fallback_blueprint_id
        self.probe_interface = probe_interface
        self.root = Path(root) if root is not None else None
        self.cache = cache if cache is not None else DeviceCache(cache_capacity, cache_ttl_s)
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._clock = clock
        self._store: _MemoryArtifacts | _FileArtifacts = (
            _FileArtifacts(self.root) if self.root is not None else _MemoryArtifacts())
        self._versions: dict[str, dict[int, Blueprint]] = {}
        self._current: dict[str, Blueprint] = {}
        self._checksums: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._fetches = 0
        self._fallbacks = 0
        self._failures: collections.Counter[str] = collections.Counter()
        # id -> weak reference of every parameter handed out and still alive: a builder that
        # returns a module (or a tensor) it handed out before would make two seeds share
        # parameters. (Not a WeakSet: its membership test compares tensors with ``==``.)
        self._issued: dict[int, weakref.ref[torch.Tensor]] = {}
        for blueprint in default_blueprints() if blueprints is None else blueprints:
            self.register(blueprint)
        if fallback_blueprint_id is not None and fallback_blueprint_id not in self._current:
            raise CatalogueError(f"fallback blueprint {fallback_blueprint_id!r} is not registered; register it "
                                 "or pass fallback_blueprint_id=None")

    # -- registry -------------------------------------------------------------------------

    def register(self, blueprint: Blueprint) -> str:
        """Store ``blueprint.spec()`` as a versioned artifact; returns its SHA-256.

        The highest registered version of an id is the one fetched. Re-registering the same
        spec is a no-op; a different spec under an existing (id, version) is refused.
        """
        data = artifact_bytes(blueprint.spec())
        checksum = hashlib.sha256(data).hexdigest()
        bid, version = blueprint.blueprint_id, blueprint.version
        with self._lock:
            self._store.put(bid, version, data, checksum)
            self._checksums[(bid, version)] = checksum
            self._versions.setdefault(bid, {})[version] = blueprint
            current = self._current.get(bid)
            if current is None or version >= current.version:
                self._current[bid] = blueprint
                latest = version
            else:
                latest = current.version
        self.cache.evict(lambda k: k.blueprint_id == bid and k.version != latest)
        return checksum

    def names(self) -> list[str]:
        """Registered blueprint ids, sorted."""
        return sorted(self._current)

    def knows(self, blueprint_id: str) -> bool:
        return blueprint_id in self._current

    def get(self, blueprint_id: str) -> Blueprint:
        """The current (highest) version of ``blueprint_id``."""
        try:
            return self._current[blueprint_id]
        except KeyError:
            raise UnknownBlueprint(f"unknown blueprint {blueprint_id!r}; known: {', '.join(self.names())}") from None

    def bounds(self, blueprint_id: str) -> Mapping[str, tuple[float, float]]:
        """Bounds on the command parameters the blueprint accepts."""
        return self.get(blueprint_id).parameter_bounds

    def checksum(self, blueprint_id: str, version: int | None = None) -> str:
        """SHA-256 recorded for the blueprint's artifact (current version by default)."""
        bp = self.get(blueprint_id)
        return self._checksums[(blueprint_id, bp.version if version is None else version)]

    def example_input(self, blueprint_id: str, site: nn.Module | SiteInfo, batch: int = 1) -> torch.Tensor | None:
        """A representative CPU input for pre-warm, or None when the blueprint cannot know one."""
        info = _info(site)
        return self.get(blueprint_id).example(info, batch) if info is not None else None

    def misfit(self, blueprint_id: str, site: nn.Module | SiteInfo,
               parameters: Mapping[str, float] | None = None) -> str | None:
        """Why ``blueprint_id`` cannot grow at ``site`` (unknown, or does not fit), or None: G0's check."""
        if not self.knows(blueprint_id):
            return f"unknown blueprint {blueprint_id!r}; known: {', '.join(self.names())}"
        info = site if isinstance(site, SiteInfo) else None
        if info is None:
            try:
                info = describe("site", site)
            except UnsupportedSite as e:
                return str(e)
        return self.get(blueprint_id).misfit(info, parameters)

    def invalidate(self, blueprint_id: str | None = None) -> int:
        """Drop cached kernels (of one blueprint, or all): the next fetch re-verifies."""
        return self.cache.evict(lambda k: blueprint_id is None or k.blueprint_id == blueprint_id)

    # -- fetch ----------------------------------------------------------------------------

    def fetch(self, blueprint_id: str, site: nn.Module | SiteInfo, *, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None, generator: torch.Generator,
              parameters: Mapping[str, float] | None = None) -> FetchResult:
        """A new seed for ``site`` built from ``generator`` (see the module docstring).

        ``site`` is the site's module, or its :class:`SiteInfo` (which a block site needs: its
        shapes come from its first forward). ``device``/``dtype`` default to the site's.
        ``parameters`` may carry the whole command
        map: only names the blueprint bounds are used (validated; out of bounds raises
        :class:`FetchError` ``invalid_parameters``), the rest are ignored.
        """
        start = self._clock()
        if not isinstance(generator, torch.Generator):
            # None would make the builders draw from the global RNG: no determinism, silently.
            raise TypeError(f"generator must be a torch.Generator (see seed_generator), got {type(generator).__name__}")
        try:
            info = _info(site)
            if info is None:  # no blueprint, the fallback included, can grow here
                why = f"{type(site).__name__} cannot hold a seed"
                fallback = self.fallback_blueprint_id
                raise FetchError("unsupported_site", blueprint_id, why, fallback_reason=(
                    f"{fallback}: unsupported_site: {why}" if fallback not in (None, blueprint_id) else None))
            place_device, place_dtype = _placement(info.module, device, dtype)
            if not place_dtype.is_floating_point:
                raise FetchError("invalid_parameters", blueprint_id, f"dtype {place_dtype} is not floating point")
            params = self._parameters(blueprint_id, parameters)
        except FetchError as e:
            self._record(self._since(start), e.reason, fallback=False)
            raise
        rewind = generator.get_state()
        if not self.breaker.allow():
            failure = _Failure("breaker_open", f"breaker {self.breaker.state.name}")
        else:
            try:
                module, entry, hit = self._attempt(blueprint_id, info, place_device, place_dtype, generator, params)
                elapsed_ms = self._since(start)
                if elapsed_ms > self.latency_budget_ms:
                    raise _Failure("latency_budget_exceeded",
                                   f"{elapsed_ms:.3f} ms > budget {self.latency_budget_ms:g} ms")
            except _Failure as f:
                failure = f
                if REASONS.get(f.reason, True):
                    self.breaker.record_failure(f.reason)
            else:
                self.breaker.record_success()
                self._record(elapsed_ms, None, fallback=False)
                return FetchResult(module, blueprint_id, blueprint_id, entry.blueprint.version, entry.checksum,
                                   elapsed_ms, hit, False, None)
        generator.set_state(rewind)
        return self._fallback(blueprint_id, failure, info, place_device, place_dtype, generator, start)

    def _fallback(self, requested: str, failure: _Failure, site: SiteInfo, device: torch.device,
                  dtype: torch.dtype, generator: torch.Generator, start: float) -> FetchResult:
        fallback = self.fallback_blueprint_id
        if fallback is None or (fallback == requested and failure.reason != "breaker_open"):
            self._record(self._since(start), failure.reason, fallback=False)
            raise FetchError(failure.reason, requested, failure.detail)
        try:
            # The fallback's own id and key: never cached under ``requested``. No breaker:
            # the fallback is the safe path that the open breaker redirects to.
            module, entry, hit = self._attempt(fallback, site, device, dtype, generator, {})
        except _Failure as f:
            self._record(self._since(start), failure.reason, fallback=False)
            raise FetchError(failure.reason, requested, failure.detail,
                             fallback_reason=f"{fallback}: {f}") from None
        latency_ms = self._since(start)
        self._record(latency_ms, failure.reason, fallback=True)
        return FetchResult(module, requested, fallback, entry.blueprint.version, entry.checksum, latency_ms,
                           hit, True, failure.reason)

    def _attempt(self, blueprint_id: str, site: SiteInfo, device: torch.device, dtype: torch.dtype,
                 generator: torch.Generator, params: Mapping[str, float]) -> tuple[nn.Module, CachedKernel, bool]:
        """One fetch of one blueprint, cache first; raises :class:`_Failure`."""
        bp = self._current.get(blueprint_id)
        if bp is None:
            raise _Failure("unknown_blueprint", f"known: {', '.join(self.names())}")
        key = CacheKey(blueprint_id, bp.version, str(device), str(dtype),
                       (*site_signature(site.module), site.kind.value, site.probe, site.causal),
                       tuple(sorted(params.items())))
        entry = self.cache.get(key)
        if entry is not None:
            try:
                return self._build(entry, site, generator), entry, True
            except _Failure:
                self.cache.evict(lambda k: k == key)  # a kernel that stopped building is not validated
                raise
        misfit = bp.misfit(site, params)
        if misfit is not None:
            raise _Failure("unsupported_site", misfit)
        entry = CachedKernel(bp, self._verify(bp), device, dtype, dict(params))
        module = self._build(entry, site, generator)
        _check_placement(module, device, dtype)
        if self.probe_interface:
            _check_interface(module, site, device, dtype)
        self.cache.put(key, entry)
        return module, entry, False

    def _build(self, entry: CachedKernel, site: SiteInfo, generator: torch.Generator) -> nn.Module:
        """Instantiate, then refuse parameters that an earlier seed still owns.

        Sharing with the *site* is not refused here: that is a gradient-isolation violation,
        which the executor detects, records and gates on (SPEC §7); hiding it behind a
        fallback would lose the event.
        """
        try:
            module = entry.instantiate(site, generator)
        except Exception as e:  # noqa: BLE001 - a builder bug must fall back, not crash training
            raise _Failure("builder_error", f"{type(e).__name__}: {e}") from e
        params = list(module.parameters())
        issued = self._issued
        reused = [p for p in params if (r := issued.get(id(p))) is not None and r() is p]
        if reused:
            site_params = {id(q) for q in site.module.parameters()}
            if any(id(p) not in site_params for p in reused):
                raise _Failure("shared_parameters", f"builder of {entry.blueprint.blueprint_id} returned "
                                                    "parameters that an earlier seed still owns")
        for p in params:
            issued[id(p)] = weakref.ref(p, functools.partial(_forget, issued, id(p)))
        return module

    def _verify(self, bp: Blueprint) -> str:
        """Re-read the stored artifact and check its SHA-256 against the registered one."""
        expected = self._checksums[(bp.blueprint_id, bp.version)]
        try:
            data, recorded = self._store.read(bp.blueprint_id, bp.version)
        except (OSError, KeyError, UnicodeDecodeError) as e:
            raise _Failure("artifact_unavailable", f"{type(e).__name__}: {e}") from e
        actual = hashlib.sha256(data).hexdigest()
        if not hmac.compare_digest(actual, expected):
            raise _Failure("checksum_mismatch", f"artifact sha256 {actual[:12]}… != registered {expected[:12]}…")
        if recorded is not None and not hmac.compare_digest(recorded, expected):
            raise _Failure("checksum_mismatch", f"checksum file says {recorded[:12]}…, registered {expected[:12]}…")
        return expected

    def _parameters(self, blueprint_id: str, parameters: Mapping[str, float] | None) -> dict[str, float]:
        """The bounded parameters of the request, validated; others ignored (see ``fetch``)."""
        bp = self._current.get(blueprint_id)
        if bp is None or not parameters:
            return {}
        out: dict[str, float] = {}
        for name, (low, high) in bp.parameter_bounds.items():
            if name not in parameters:
                continue
            try:
                value = float(parameters[name])
            except (TypeError, ValueError):
                raise FetchError("invalid_parameters", blueprint_id, f"{name}={parameters[name]!r} is not a number") \
                    from None
            if not (math.isfinite(value) and low <= value <= high):
                raise FetchError("invalid_parameters", blueprint_id, f"{name}={value:g} outside [{low:g}, {high:g}]")
            if name in bp.integer_parameters and value != int(value):
                raise FetchError("invalid_parameters", blueprint_id, f"{name}={value:g} must be a whole number")
            out[name] = value
        return out

    # -- metrics --------------------------------------------------------------------------

    def _since(self, start: float) -> float:
        return (self._clock() - start) * 1e3

    def _record(self, latency_ms: float, reason: str | None, *, fallback: bool) -> None:
        with self._lock:
            self._fetches += 1
            self._latencies.append(latency_ms)
            if fallback:
                self._fallbacks += 1
            if reason is not None:
                self._failures[reason] += 1

    def stats(self) -> dict[str, Any]:
        """Fetch metrics: latency mean / p95 over the last 4096 fetches, counters, cache, breaker."""
        with self._lock:
            window = sorted(self._latencies)
            fetches, fallbacks, failures = self._fetches, self._fallbacks, dict(self._failures)
        p95 = window[max(0, math.ceil(0.95 * len(window)) - 1)] if window else 0.0  # nearest rank
        cache = self.cache.stats()
        return {
            "fetches": fetches,
            "fallbacks": fallbacks,
            "failures": failures,
            "fetch_latency_ms_mean": sum(window) / len(window) if window else 0.0,
            "fetch_latency_ms_p95": p95,
            "hit_rate": cache["hit_rate"],
            "cache": cache,
            "breaker_state": self.breaker.state.name,
        }
