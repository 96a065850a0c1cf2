"""Blend kernels (SPEC §6, WP-K1): how a seed's output is mixed into its host's output.

h = host activation, s = seed activation, a = alpha in [0, 1]. The host enters every mode
detached, so no gradient can reach the host through the blend (the isolation invariant):

* CONVEX:     out = h + a·(s − h)                        one ``torch.lerp``
* RESIDUAL:   out = h + a·s                              one ``torch.add`` / ``torch.addcmul``
* CHANNEL:    a_c = clamp(a·alpha_vec[c], 0, 1) on the channel dim   one ``torch.lerp`` (broadcast weight)
* CONFIDENCE: a_n = clamp(a·sigmoid(k·(margin_n − tau)), alpha_lo, alpha_hi) per sample,
              margin = top-1 minus top-2 softmax probability of the (detached) seed output
              over the channel dim; with channels on dim 1, 3-D and larger maps are averaged
              over every dim after 1 first.

The channel dim is 1 by default ((B, C), (B, C, H, W)); sequence activations (B, T, D) carry
their features last, and ``channel_dim=-1`` blends CHANNEL over D and gates CONFIDENCE per
token (one margin per (b, t) over D).

Every mode is a single fused elementwise pass over the activations (CONFIDENCE adds one
read-only reduction of the seed for its per-sample gate). Alpha may be a Python float or a
0-d tensor on the activations' device: the executor keeps it as a device tensor so that a
per-step update costs no host sync. Nothing here is compiled (no ``torch.compile``, no
Dynamo): the kernels are plain eager ops, so alpha changing every step never retraces.

The prototype this replaces (see the reference notes) rebuilt the channel vector from a
Python list on every call, broke on 4-D maps in CONFIDENCE and silently fell back to convex
on any error; here a mismatch is a ``ValueError`` and 4-D maps are a first-class case.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor

from kasmina.lifecycle.naming import NamedEnum

__all__ = ["BlendMode", "BlenderConfig", "BlendStats", "blend", "HOST_GRADIENTS"]

#: ``host_gradient`` choices: the host's share of the gradient while blending, or none.
HOST_GRADIENTS = ("blend", "detached")

#: Set only by ``kasmina.kernels.fused.on_cpu()``: CPU blends then take the fused kernels,
#: interpreted by Triton (tests and debugging; never in training).
_FUSED_ON_CPU = False


class BlendMode(NamedEnum):
    """The four blend modes; the value is the name, which is what annotations and events carry."""

    CONVEX = "CONVEX"
    RESIDUAL = "RESIDUAL"
    CHANNEL = "CHANNEL"
    CONFIDENCE = "CONFIDENCE"


def _finite_float(name: str, value: Any) -> float:
    """``float(value)``, refusing anything that is not a finite real number."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return out


def _clamp01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


@dataclass(frozen=True, slots=True)
class BlenderConfig:
    """A seed's blend settings, normalised on construction so every instance is usable.

    Frozen so the cached channel vector (``_vec_cache``, per device/dtype/rank) can never go
    stale: the vector it was built from cannot change.
    """

    mode: BlendMode | str = "CONVEX"
    alpha_vec: tuple[float, ...] | None = None
    gate_k: float = 4.0
    gate_tau: float = 0.2
    alpha_lo: float = 0.0
    alpha_hi: float = 1.0
    source: str | None = None
    #: What the host receives while its seed blends in (the site's choice, K1's blend is
    #: unchanged): ``"blend"`` its share of the task gradient, ``"detached"`` none.
    host_gradient: str = "blend"
    _vec_cache: dict[tuple[torch.device, torch.dtype, int], Tensor] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        mode = BlendMode.parse(self.mode)
        object.__setattr__(self, "mode", mode)
        vec = self.alpha_vec
        if vec is not None:
            if isinstance(vec, (str, bytes)):
                raise ValueError(f"alpha_vec must be a sequence of numbers, got {vec!r}")
            try:
                items = list(vec.tolist() if isinstance(vec, Tensor) else vec)  # type: ignore[union-attr]
            except TypeError:
                raise ValueError(f"alpha_vec must be a sequence of numbers, got {vec!r}") from None
            values = tuple(_clamp01(_finite_float(f"alpha_vec[{i}]", x)) for i, x in enumerate(items))
            object.__setattr__(self, "alpha_vec", values or None)
        if mode is BlendMode.CHANNEL and not self.alpha_vec:
            raise ValueError("CHANNEL blend needs a non-empty alpha_vec")
        for name in ("gate_k", "gate_tau"):
            value = _finite_float(name, getattr(self, name))
            if value < 0.0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
            object.__setattr__(self, name, value)
        lo = _clamp01(_finite_float("alpha_lo", self.alpha_lo))
        hi = _clamp01(_finite_float("alpha_hi", self.alpha_hi))
        if lo > hi:
            lo, hi = hi, lo
        object.__setattr__(self, "alpha_lo", lo)
        object.__setattr__(self, "alpha_hi", hi)
        if self.source is not None and not isinstance(self.source, str):
            object.__setattr__(self, "source", str(self.source))
        choice = str(self.host_gradient).strip().lower()
        if choice not in HOST_GRADIENTS:
            raise ValueError(f"host_gradient must be one of {', '.join(HOST_GRADIENTS)}, got {self.host_gradient!r}")
        object.__setattr__(self, "host_gradient", choice)

    @property
    def detach_host(self) -> bool:
        return self.host_gradient == "detached"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the payload of the ``blend_config`` event (and so of replay)."""
        vec = self.alpha_vec
        return {
            "mode": self.mode.value,  # type: ignore[union-attr]
            "alpha_vec": None if vec is None else list(vec),
            "alpha_vec_len": 0 if vec is None else len(vec),
            "gate_k": self.gate_k,
            "gate_tau": self.gate_tau,
            "alpha_lo": self.alpha_lo,
            "alpha_hi": self.alpha_hi,
            "source": self.source,
            "host_gradient": self.host_gradient,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlenderConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored so newer events still load."""
        vec = data.get("alpha_vec")
        config = cls(
            mode=data.get("mode", "CONVEX"),
            alpha_vec=vec,
            gate_k=data.get("gate_k", 4.0),
            gate_tau=data.get("gate_tau", 0.2),
            alpha_lo=data.get("alpha_lo", 0.0),
            alpha_hi=data.get("alpha_hi", 1.0),
            source=data.get("source"),
            # A config recorded before the choice existed kept the host detached.
            host_gradient=data.get("host_gradient", "detached"),
        )
        declared = data.get("alpha_vec_len")
        actual = 0 if config.alpha_vec is None else len(config.alpha_vec)
        if declared is not None and declared != actual:
            raise ValueError(f"alpha_vec_len is {declared!r} but alpha_vec has {actual} entries")
        return config

    def check_channels(self, channels: int) -> None:
        """Refuse, at configuration time, a CHANNEL vector that does not fit the site."""
        if self.mode is not BlendMode.CHANNEL:
            return
        n = len(self.alpha_vec or ())
        if n != channels:
            raise ValueError(f"alpha_vec has {n} entries but the site has {channels} channels")

    def weights_for(self, device: torch.device, dtype: torch.dtype, ndim: int, channel_dim: int = 1) -> Tensor:
        """alpha_vec shaped for an ``ndim``-D activation whose channels are on ``channel_dim``.

        The one place blend and a site that prepares its vector ahead of a traced forward
        agree on the cache key (a 1-D vector broadcasts over the last dim).
        """
        return self.channel_weights(device, dtype, 1 if channels_last(ndim, channel_dim) else ndim)

    def channel_weights(self, device: torch.device, dtype: torch.dtype, ndim: int) -> Tensor:
        """alpha_vec as a tensor shaped to broadcast over dim 1 (dim 0 for 1-D), built once.

        Built outside inference mode so a vector first made during a probe still works in a
        later training step (inference tensors cannot be saved for backward).
        """
        key = (device, dtype, ndim)
        cached = self._vec_cache.get(key)
        if cached is None:
            with torch.inference_mode(False), torch.no_grad():
                vec = torch.tensor(self.alpha_vec or (), dtype=dtype, device=device)
                shape = (-1,) if ndim == 1 else (1, -1) + (1,) * (ndim - 2)
                cached = vec.view(shape)
            self._vec_cache[key] = cached
        return cached


_DEFAULT = BlenderConfig()


class BlendStats:
    """Effective-alpha telemetry kept on the device: recording never syncs with the host.

    * ``alpha_mean``: sum / count of every effective alpha recorded (one value per call for
      CONVEX/RESIDUAL, one per channel for CHANNEL, one per sample for CONFIDENCE).
    * ``alpha_p95``: the 95th percentile (linear interpolation, as ``numpy.quantile``) of the
      most recent ``capacity`` values, kept in a ring buffer on the device.
    * ``clamped_fraction``: the fraction of recorded values that a clamp changed, i.e. that
      differ from the unclamped formula (alpha outside [0, 1]; for CONFIDENCE also a·gate
      outside [alpha_lo, alpha_hi]).

    A call only appends references to its (already computed) alpha tensors, or a Python
    float, to a pending list; every ``fold_every`` calls the pending values are folded into
    the device accumulators in a handful of batched ops, so the per-step cost is a list
    append rather than ~6 tiny kernel launches. Float alphas travel to the device at fold
    time through pinned memory without blocking. Within one fold batch float values enter
    the ring before tensor values, so "most recent" is exact only to fold granularity.
    :meth:`read` folds and does the one host sync: call it at telemetry flush, not per step.
    """

    def __init__(self, capacity: int = 4096, fold_every: int = 128) -> None:
        if capacity < 1 or fold_every < 1:
            raise ValueError(f"capacity and fold_every must be >= 1, got {capacity}, {fold_every}")
        self.capacity = capacity
        self.fold_every = fold_every
        self.reset()

    @property
    def count(self) -> int:
        """How many effective alpha values have been recorded since the last reset."""
        return self._count

    def reset(self) -> None:
        """Forget everything recorded (the device buffers are re-made on the next fold)."""
        self._sum: Tensor | None = None
        self._clamped: Tensor | None = None
        self._buf: Tensor | None = None
        self._device: torch.device | None = None
        self._values: list[Tensor] = []       # pending tensor values (detached)
        self._masks: list[Tensor] = []        # pending clamp masks (bool, any shape)
        self._floats: list[float] = []        # pending float values
        self._host_clamped = 0                # clamped float values (known on the host)
        self._count = 0                       # host-side: known from shapes, costs no sync
        self._pos = 0
        self._filled = 0

    def update(self, effective: Tensor | float, clamped: Tensor | bool | int = 0,
               device: torch.device | None = None) -> None:
        """Record effective alphas (a tensor of any shape, or one float) and which were clamped.

        ``clamped`` is a bool mask tensor (or a 0-d flag) or a host-side count.
        """
        if isinstance(effective, Tensor):
            values = effective.detach()
            if values.numel() == 0:
                return
            self._device = values.device
            self._values.append(values)
            self._count += values.numel()
        else:
            if device is None:
                raise ValueError("a float effective alpha needs the device its stats live on")
            self._device = torch.device(device)
            self._floats.append(float(effective))
            self._count += 1
        if isinstance(clamped, Tensor):
            self._masks.append(clamped.detach())
        else:
            self._host_clamped += int(clamped)
        if len(self._values) + len(self._floats) >= self.fold_every:
            self._fold()

    def _fold(self) -> None:
        """Fold pending values into the device accumulators (a few batched ops, no sync)."""
        device = self._device
        if device is None or not (self._values or self._floats or self._masks):
            return
        with torch.no_grad():
            if self._buf is not None and self._buf.device != device:
                self._buf = self._sum = self._clamped = None  # moved device: restart the window
                self._pos = self._filled = 0
            if self._buf is None:
                acc = torch.float32 if device.type == "mps" else torch.float64
                with torch.inference_mode(False):  # normal tensors: in-place works in any mode
                    self._sum = torch.zeros((), dtype=acc, device=device)
                    self._clamped = torch.zeros((), dtype=acc, device=device)
                    self._buf = torch.zeros(self.capacity, dtype=torch.float32, device=device)
            parts: list[Tensor] = []
            if self._floats:
                host = torch.tensor(self._floats, dtype=torch.float32)
                if device.type == "cuda":
                    host = host.pin_memory()
                parts.append(host.to(device, non_blocking=True))
            parts += [v.reshape(-1).to(device) for v in self._values]
            values = (torch.cat(parts) if len(parts) > 1 else parts[0]).to(torch.float32)
            total, n_clamped, buf = self._sum, self._clamped, self._buf
            total.add_(values.sum(dtype=total.dtype))  # type: ignore[union-attr]
            if self._masks:
                masks = [m.reshape(-1).to(device) for m in self._masks]
                n_clamped.add_((torch.cat(masks) if len(masks) > 1 else masks[0]).sum())  # type: ignore[union-attr]
            cap, n = self.capacity, values.numel()
            if n >= cap:
                buf.copy_(values[n - cap:])  # type: ignore[union-attr]
                self._pos = 0
            else:
                first = min(n, cap - self._pos)
                buf[self._pos:self._pos + first].copy_(values[:first])  # type: ignore[index]
                if n > first:
                    buf[:n - first].copy_(values[first:])  # type: ignore[index]
                self._pos = (self._pos + n) % cap
            self._filled = min(cap, self._filled + n)
        self._values, self._masks, self._floats = [], [], []

    def read(self) -> dict[str, float]:
        """``{"alpha_mean", "alpha_p95", "clamped_fraction"}`` as floats (0.0 when empty).

        The single host sync of the telemetry path.
        """
        self._fold()
        if self._count == 0 or self._buf is None:
            return {"alpha_mean": 0.0, "alpha_p95": 0.0, "clamped_fraction": 0.0}
        with torch.no_grad():
            recent = self._buf[: self._filled].to(self._sum.dtype)  # type: ignore[union-attr]
            packed = torch.stack([self._sum / self._count, torch.quantile(recent, 0.95),  # type: ignore[operator]
                                  (self._clamped + self._host_clamped) / self._count])  # type: ignore[operator]
            mean, q, frac = packed.tolist()
        return {"alpha_mean": float(mean), "alpha_p95": float(q), "clamped_fraction": float(frac)}


def _round_to(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded (to nearest even) to ``dtype``, in pure Python: no tensor, no sync.

    So a float alpha and the same alpha as a float32 0-d tensor cast to the activation dtype
    blend with the same weight (both round through float32, as torch's casts do).
    """
    if dtype == torch.float16:  # via float32, as a (float32) alpha tensor is cast
        as_float = struct.unpack("<f", struct.pack("<f", value))[0]
        return struct.unpack("<e", struct.pack("<e", as_float))[0]
    if dtype == torch.bfloat16:
        bits = struct.unpack("<I", struct.pack("<f", value))[0]
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return struct.unpack("<f", struct.pack("<I", bits))[0]
    if dtype == torch.float32:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    return value


def _per_sample_margin(seed: Tensor, calc: torch.dtype) -> Tensor:
    """Top-1 minus top-2 softmax probability per sample of the detached seed, shape (N,)."""
    z = seed.detach()
    if z.dim() == 1:
        z = z.unsqueeze(0)
    elif z.dim() > 2:
        dims = tuple(range(2, z.dim()))
        if z.device.type == "cpu":
            # sum, then scale the small (N, C) result: the same mean, measurably cheaper
            # than ``mean`` over a large map on CPU.
            z = z.sum(dim=dims, dtype=calc) * (1.0 / max(1, math.prod(z.shape[2:])))
        else:  # one kernel instead of two
            z = z.mean(dim=dims, dtype=calc)
    if z.shape[1] < 2:
        return torch.ones(z.shape[0], dtype=calc, device=z.device)
    top2 = torch.softmax(z, dim=1, dtype=calc).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def channels_last(ndim: int, channel_dim: int) -> bool:
    """Channels are the last dim of an activation with a dim between batch and channels."""
    return ndim > 2 and channel_dim in (-1, ndim - 1)


def _per_token_margin(seed: Tensor, calc: torch.dtype) -> Tensor:
    """Top-1 minus top-2 softmax probability over the last dim, one per position: (B, T, ...)."""
    z = seed.detach()
    if z.shape[-1] < 2:
        return torch.ones(z.shape[:-1], dtype=calc, device=z.device)
    top2 = torch.softmax(z, dim=-1, dtype=calc).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def blend(host: Tensor, seed: Tensor, alpha: float | Tensor, config: BlenderConfig | None = None,
          *, stats: BlendStats | None = None, detach_host: bool = True, channel_dim: int = 1) -> Tensor:
    """Blend ``seed`` into ``host`` with weight ``alpha`` in the mode of ``config`` (default CONVEX).

    ``alpha`` is a float or a 0-d tensor and is clamped to [0, 1]; it is cast to the
    activations' dtype. ``stats``, when given, records the effective alphas on the device.
    ``detach_host=False`` lets the host receive its share of the gradient (``(1-a)·g`` under
    CONVEX, ``g`` under RESIDUAL): a FOSSILIZED seed, or a site that lets the host keep
    learning while its seed blends in. ``channel_dim`` (1 or -1) is the dim CHANNEL and
    CONFIDENCE read channels from.
    Errors (shape, dtype or channel mismatch, non-0-d alpha) raise ``ValueError``: a blend
    never silently falls back to another mode.
    """
    if host.shape != seed.shape:
        raise ValueError(f"host output {tuple(host.shape)} and seed output {tuple(seed.shape)} differ in shape")
    if host.dtype != seed.dtype:
        raise ValueError(f"host output is {host.dtype} but seed output is {seed.dtype}")
    cfg = _DEFAULT if config is None else config
    mode = cfg.mode
    h = host.detach() if detach_host else host
    dtype, device = seed.dtype, seed.device
    last = channels_last(seed.dim(), channel_dim)
    if channel_dim not in (1, -1, seed.dim() - 1):
        raise ValueError(f"channel_dim must be 1 or -1, got {channel_dim}")

    if isinstance(alpha, Tensor):
        if alpha.dim() != 0:
            raise ValueError(f"alpha must be a float or a 0-d tensor, got shape {tuple(alpha.shape)}")
        # Fused single-pass Triton kernels: on CUDA, or on the CPU in Triton's interpreter
        # within kasmina.kernels.fused.on_cpu() (how tests check the kernels without a GPU).
        if stats is None and not last and (seed.is_cuda or _FUSED_ON_CPU):
            from kasmina.kernels import fused
            if fused.available(seed) and fused.accepts(h, seed, alpha):
                return fused.fused_blend(h, seed, alpha, cfg, detach_host=detach_host)
        raw_t = alpha.to(device=device, dtype=dtype)
        a_t = raw_t.clamp(0.0, 1.0)
        if mode is BlendMode.CONVEX:
            out = torch.lerp(h, seed, a_t)
        elif mode is BlendMode.RESIDUAL:
            out = torch.addcmul(h, seed, a_t)
        else:
            return _weighted(h, seed, a_t, raw_t, cfg, stats, last)
        if stats is not None:
            stats.update(a_t, a_t != raw_t)
        return out

    a_raw = float(alpha)
    if not math.isfinite(a_raw):
        raise ValueError(f"alpha must be finite, got {alpha!r}")
    a = _round_to(_clamp01(a_raw), dtype)
    if mode is BlendMode.CONVEX:
        out = torch.lerp(h, seed, a)
    elif mode is BlendMode.RESIDUAL:
        out = torch.add(h, seed, alpha=a)
    else:
        return _weighted(h, seed, a, _round_to(a_raw, dtype), cfg, stats, last)
    if stats is not None:
        stats.update(a, a != _round_to(a_raw, dtype), device)
    return out


def _weighted(h: Tensor, seed: Tensor, a: float | Tensor, raw: float | Tensor, cfg: BlenderConfig,
              stats: BlendStats | None, last: bool = False) -> Tensor:
    """CHANNEL and CONFIDENCE: a per-channel, per-sample or per-token weight tensor, then one lerp.

    ``last``: channels are the last dim of a (B, T, ..., D) activation, not dim 1.
    """
    nd = seed.dim()
    if nd == 0:
        raise ValueError(f"{cfg.mode.value} blend needs at least a 1-D activation")  # type: ignore[union-attr]
    device, dtype = seed.device, seed.dtype
    # ``a`` is already in [0, 1]; ``raw`` is the caller's alpha before that clamp. Without
    # stats this path launches the fewest kernels it can; stats add at most two small ones.
    unclamped_alpha = isinstance(a, Tensor) or a != raw
    if cfg.mode is BlendMode.CHANNEL:
        channels = seed.shape[0] if nd == 1 else seed.shape[-1 if last else 1]
        cfg.check_channels(channels)
        vec = cfg.weights_for(device, dtype, nd, -1 if last else 1)
        # a and alpha_vec are both in [0, 1], so their product is too: the clamp of SPEC §6
        # can never change a value and is left out of the hot path.
        weight = vec * a
        if stats is not None:
            with torch.no_grad():
                stats.update(weight, (weight != vec * raw) if unclamped_alpha else 0)
        return torch.lerp(h, seed, weight)

    calc = torch.float64 if dtype == torch.float64 else torch.float32
    margin = _per_token_margin(seed, calc) if last else _per_sample_margin(seed, calc)
    gate = margin.sub_(cfg.gate_tau).mul_(cfg.gate_k).sigmoid_()
    pre = gate * (a.to(calc) if isinstance(a, Tensor) else a)
    # a and the gate are in [0, 1]: with the default bounds the clamp cannot change anything.
    bounded = cfg.alpha_lo > 0.0 or cfg.alpha_hi < 1.0
    eff = pre.clamp(cfg.alpha_lo, cfg.alpha_hi) if bounded else pre
    weight = eff.to(dtype)
    if stats is not None:
        with torch.no_grad():
            if unclamped_alpha:
                unclamped = gate * (raw.to(calc) if isinstance(raw, Tensor) else raw)
                stats.update(weight, eff != unclamped)
            else:
                stats.update(weight, (eff != pre) if bounded else 0)
    if last:
        return torch.lerp(h, seed, weight.unsqueeze(-1))
    shape = () if nd == 1 else (-1,) + (1,) * (nd - 1)
    return torch.lerp(h, seed, weight.view(shape))
