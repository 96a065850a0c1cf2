"""The device cache: LRU + TTL over *validated kernels*, never over modules.

What an entry saves. A miss in :class:`~kasmina.catalogue.Catalogue` checks that the
blueprint supports the site, reads the blueprint's stored artifact and verifies its SHA-256,
builds the seed, moves it to the device and dtype and checks its placement (plus, when the
catalogue was made with ``probe_interface=True``, one probe forward for the output shape).
The resulting :class:`CachedKernel` records that all of this succeeded for one key
``(blueprint id, version, device, dtype, site signature, parameters)``; a hit skips the
support check, the artifact read and the verification.

What an entry does not hold: a module or any tensor. Every fetch, hit or miss, builds a new
module with :meth:`CachedKernel.instantiate`, i.e. the blueprint's builder drawing from *that
seed's* generator. So

* two seeds never share parameters (the prototype cached one module per blueprint id and
  handed the same object to every seed, reference §11.7);
* the same (run seed, site, generation) gives byte-identical parameters whether the fetch
  hit or missed, because both run the same code on the same generator state. A cached
  template copied with ``deepcopy`` would carry the *first* seed's random init into every
  later seed (and on this CPU, deepcopy of a small seed is slower than building it).

TTL counts from insertion, not from last use: it bounds how long a verified artifact is
trusted before the next fetch re-reads and re-verifies it (a tampered artifact file is
noticed within ``ttl_s``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Mapping, NamedTuple

import torch
from torch import nn

from kasmina.catalogue.blueprints import Blueprint
from kasmina.catalogue.sites import SiteInfo

__all__ = ["CacheKey", "CachedKernel", "DeviceCache", "place", "site_signature"]


class CacheKey(NamedTuple):
    """What a validated kernel depends on; ``parameters`` are the sorted builder parameters."""

    blueprint_id: str
    version: int
    device: str
    dtype: str
    site_signature: tuple[Hashable, ...]
    parameters: tuple[tuple[str, float], ...] = ()


def site_signature(site: nn.Module) -> tuple[Hashable, ...]:
    """Everything about a site that ``supports`` and the builders read (its type and sizes).

    Linear and Conv2d are spelled out (cheap, exact); any other module type falls back to
    its ``extra_repr()``, so a custom blueprint for a custom site must keep what it reads
    there.
    """
    kind = type(site).__qualname__
    if isinstance(site, nn.Conv2d):
        return (kind, site.in_channels, site.out_channels, site.kernel_size, site.stride,
                site.padding if isinstance(site.padding, str) else tuple(site.padding),
                site.dilation, site.groups, site.bias is not None, site.padding_mode)
    if isinstance(site, nn.Linear):
        return (kind, site.in_features, site.out_features, site.bias is not None)
    # extra_repr() can be empty (transformers' Conv1D): the parameter shapes tell sizes apart.
    shapes = tuple((name, tuple(t.shape)) for name, t in site.named_parameters(recurse=False))
    return (kind, site.extra_repr(), shapes)


def place(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move a freshly built (CPU fp32) seed to ``device``/``dtype``; a no-op when already there."""
    first = next(module.parameters(), None)
    if first is not None and first.device == device and first.dtype == dtype:
        return module
    return module.to(device=device, dtype=dtype)


@dataclass(frozen=True, slots=True, eq=False)
class CachedKernel:
    """A blueprint validated for one key; builds a new seed per call, holds no tensors."""

    blueprint: Blueprint
    checksum: str
    device: torch.device
    dtype: torch.dtype
    parameters: Mapping[str, float] = field(default_factory=dict)

    def instantiate(self, site: nn.Module | SiteInfo, generator: torch.Generator) -> nn.Module:
        """A NEW seed owned by the caller: the builder draws from ``generator``, then it is placed."""
        module = self.blueprint.build(site, generator, **self.parameters)
        if not isinstance(module, nn.Module):
            raise TypeError(f"builder of {self.blueprint.blueprint_id} returned {type(module).__name__}, "
                            "not an nn.Module")
        return place(module, self.device, self.dtype)


class DeviceCache:
    """LRU + TTL map from :class:`CacheKey` to :class:`CachedKernel`, with hit/miss counters."""

    def __init__(self, capacity: int = 32, ttl_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.capacity = int(capacity)
        self.ttl_s = float(ttl_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[CacheKey, tuple[float, CachedKernel]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0  # dropped to make room (LRU)
        self.expirations = 0  # dropped because older than ttl_s
        self.removed = 0  # dropped by evict(predicate) / clear()

    def get(self, key: CacheKey) -> CachedKernel | None:
        """The live entry for ``key`` (now most recently used), or None; counts hit or miss."""
        with self._lock:
            item = self._entries.get(key)
            if item is not None and self._clock() - item[0] >= self.ttl_s:
                del self._entries[key]
                self.expirations += 1
                item = None
            if item is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return item[1]

    def put(self, key: CacheKey, entry: CachedKernel) -> None:
        """Insert or refresh ``key``; drops expired entries, then the least recently used."""
        with self._lock:
            now = self._clock()
            self._entries.pop(key, None)
            if len(self._entries) >= self.capacity:
                for stale in [k for k, (at, _) in self._entries.items() if now - at >= self.ttl_s]:
                    del self._entries[stale]
                    self.expirations += 1
            while len(self._entries) >= self.capacity:
                self._entries.popitem(last=False)
                self.evictions += 1
            self._entries[key] = (now, entry)

    def evict(self, predicate: Callable[[CacheKey], bool]) -> int:
        """Drop every entry whose key matches ``predicate``; returns how many were dropped."""
        with self._lock:
            doomed = [k for k in self._entries if predicate(k)]
            for k in doomed:
                del self._entries[k]
            self.removed += len(doomed)
            return len(doomed)

    def clear(self) -> None:
        """Drop everything (counters are kept)."""
        self.evict(lambda _key: True)

    def keys(self) -> list[CacheKey]:
        """Keys from least to most recently used (expired ones included until touched)."""
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Membership without touching LRU order or counters; expired entries count as absent."""
        with self._lock:
            item = self._entries.get(key)  # type: ignore[call-overload]
            return item is not None and self._clock() - item[0] < self.ttl_s

    def __iter__(self) -> Iterator[CacheKey]:
        return iter(self.keys())

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def stats(self) -> dict[str, Any]:
        """JSON-ready counters."""
        return {"size": len(self._entries), "capacity": self.capacity, "ttl_s": self.ttl_s,
                "hits": self.hits, "misses": self.misses, "hit_rate": self.hit_rate,
                "evictions": self.evictions, "expirations": self.expirations, "removed": self.removed}
