"""Fused single-pass CUDA blend kernels (WP-K4), hand-written in Triton.

Blending is memory-bound: a forward reads host and seed and writes the output, a backward
reads the upstream gradient and writes the seed's. Eager PyTorch reaches that bound for
CONVEX in fp32 (``torch.lerp``) but not in bf16, nor for the broadcast-weight modes; these
kernels make every mode one pass over the activations, computing in fp32 and storing in the
activation dtype, with the same results as the eager reference in :mod:`kasmina.kernels.blend`:

* CONVEX:     w = clamp(alpha, 0, 1)                         out = lerp(h, s, w)
* RESIDUAL:   w = clamp(alpha, 0, 1)                         out = h + w·s
* CHANNEL:    w[c] = alpha_vec[c]·w, c = (i // inner) % C      out = lerp(h, s, w[c])
* CONFIDENCE: w[n] = clamp(w·sigmoid(k·(margin[n] − tau)), lo, hi), n = i // inner
              (the per-sample margin is computed first from the detached seed by two small
              kernels, a spatial mean read straight from the activation dtype and a closed-form
              top-1 minus top-2 softmax probability; the gate arithmetic is folded into the
              blend pass)

Alpha is read inside the kernel from its 0-d device tensor: no host sync, and a new alpha
value every step never recompiles anything. Each forward also stores the effective alpha it
used in a one-element scratch tensor, so the backward (grad_seed = w × grad_out, one pass;
the host is detached and gets no gradient) uses the forward's alpha even when the caller
updates its alpha tensor in place before ``backward()``.

Triton is imported lazily: on a machine without CUDA or Triton this module imports and
:func:`available` answers False, and the eager path stays the reference and the CPU path.
With ``TRITON_INTERPRET=1`` and inside :func:`on_cpu` the same kernels run on CPU tensors
in Triton's interpreter: that is how the test suite checks them on machines without a GPU.
Nothing here calls ``torch.compile`` or Dynamo; :func:`prewarm` runs Triton's own JIT once
per kernel variant so that the first training step pays no compilation.
"""

from __future__ import annotations

import functools
import importlib
import os
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor

__all__ = ["available", "accepts", "fused_blend", "interpreting", "on_cpu", "prewarm"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ALPHA_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# Kernel "modes" (constexpr): the weight is a scalar alpha, a per-channel vector, or a
# per-sample confidence gate.
_SCALAR_LERP, _SCALAR_ADD, _CHANNEL, _CONFIDENCE = 0, 1, 2, 3

# Launch configuration: (BLOCK, num_warps, streaming cache hints), by element size. Every
# choice gives the same results; tools/bench_fused.py --sweep times the alternatives.
# Measured on an H200 at (64, 256, 56, 56): fp32 reaches ~97-99 % of copy bandwidth at
# 4096/8, bf16 ~90-98 % at 2048/8; the streaming hints made no measurable difference.
_LAUNCH: dict[int, tuple[int, int, bool]] = {4: (4096, 8, False), 2: (2048, 8, False)}


@functools.lru_cache(maxsize=1)
def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install: the eager path still works
        return False
    return True


def _blend_module() -> Any:
    """The eager module (``kasmina.kernels`` exports a ``blend`` function of the same name)."""
    return importlib.import_module("kasmina.kernels.blend")


def interpreting() -> bool:
    """Whether Triton's interpreter is on (``TRITON_INTERPRET=1``, read by Triton when it is
    first imported): kernels then run in NumPy, on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@contextmanager
def on_cpu() -> Iterator[None]:
    """Within this block, blends of CPU tensors take the fused kernels, run in Triton's
    interpreter: slow, for tests and debugging (how CI checks the kernels without a GPU).

    Needs ``TRITON_INTERPRET=1`` set before Triton is first imported (torch imports it
    early); the test suite's conftest sets it on machines without CUDA.
    """
    eager = _blend_module()
    if not interpreting():
        raise RuntimeError("fused kernels on the CPU need TRITON_INTERPRET=1, set before Triton is imported")
    previous, eager._FUSED_ON_CPU = eager._FUSED_ON_CPU, True
    try:
        yield
    finally:
        eager._FUSED_ON_CPU = previous


def available(*tensors: Tensor) -> bool:
    """Whether the fused kernels can run on ``tensors``: CUDA (or the CPU within
    :func:`on_cpu`), contiguous, fp32/bf16/fp16, non-empty, at least 1-D, Triton importable."""
    if not tensors:
        return False
    cpu_ok = _blend_module()._FUSED_ON_CPU
    for t in tensors:
        if not ((t.is_cuda or (cpu_ok and t.device.type == "cpu")) and t.dtype in _DTYPES and t.dim() >= 1
                and t.numel() > 0 and t.is_contiguous()):
            return False
    return _triton_ok()


def accepts(host: Tensor, seed: Tensor, alpha: Tensor) -> bool:
    """Whether :func:`fused_blend` reproduces the eager blend for these arguments.

    The fused path gives no gradient to alpha, so an alpha that requires grad (while grad
    mode is on) stays on the eager path, as does a host that is not contiguous or differs
    from the seed in device or dtype (eager raises or handles those).
    """
    return (host.device == seed.device and host.dtype == seed.dtype and host.shape == seed.shape
            and host.is_contiguous()
            and alpha.dim() == 0 and (alpha.dtype in _ALPHA_DTYPES or not alpha.is_floating_point())
            and not (alpha.requires_grad and torch.is_grad_enabled()))


# --------------------------------------------------------------------------- kernels


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool = False) -> Any:
    """Define (once, lazily) and return the Triton blend kernel (forward and backward).

    Keyed by :func:`interpreting`: Triton decides at definition whether a kernel is compiled
    or interpreted, so each mode gets its own definition (callers pass ``interpreting()``).
    """
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["n_elements", "inner", "n_vec", "inv_inner", "inv_vec",
                                   "k", "tau", "lo", "hi"])
    def blend_kernel(x_ptr, y_ptr, out_ptr, alpha_ptr, vec_ptr, snap_ptr,
                     n_elements, inner, n_vec, inv_inner, inv_vec, k, tau, lo, hi,
                     MODE: tl.constexpr, BWD: tl.constexpr, BLOCK: tl.constexpr,
                     INT64: tl.constexpr, EVICT: tl.constexpr, ST_CACHE: tl.constexpr):
        # Forward (BWD=False): x = host, y = seed, out = blend; writes the effective alpha
        # to snap. Backward (BWD=True): x = grad_out, out = grad_seed = w × grad_out, alpha
        # read back from snap (y_ptr and alpha_ptr unused).
        OUT_TY: tl.constexpr = out_ptr.dtype.element_ty
        pid = tl.program_id(0)
        if INT64:
            start = pid.to(tl.int64) * BLOCK
        else:
            start = pid * BLOCK
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n_elements
        if BWD:
            a = tl.load(snap_ptr)  # the forward's effective (rounded, clamped) alpha, fp32
        else:
            # alpha as the eager path sees it: cast to the activation dtype, clamped to
            # [0, 1] (comparisons are False for NaN: a NaN alpha stays NaN, as in clamp).
            a = tl.load(alpha_ptr).to(tl.float32).to(OUT_TY).to(tl.float32)
            a = tl.where(a < 0.0, 0.0, tl.where(a > 1.0, 1.0, a))
            if pid == 0:
                tl.store(snap_ptr, a)
        # Per-element weight in fp32, rounded through the activation dtype exactly as the
        # eager reference rounds it (its weight tensor lives in that dtype). The row of an
        # element (i // inner: its sample, or its (sample, channel) pair) is found without a
        # per-element integer division, which would make these passes compute-bound: one
        # scalar division per program, then either a compare (a block spans at most two rows
        # when inner >= BLOCK) or an exact float reciprocal (indices below 2·BLOCK).
        if MODE >= 2:
            base = start // inner
            r = (start - base * inner) + tl.arange(0, BLOCK)  # offset from base's first element
            if inner >= BLOCK:  # at most two rows: two scalar weights, one select
                second = r >= inner
                if MODE == 2:  # CHANNEL: alpha_vec (activation dtype) × alpha
                    c0 = base % n_vec
                    c1 = tl.where(c0 + 1 >= n_vec, 0, c0 + 1)
                    w0 = (tl.load(vec_ptr + c0).to(tl.float32) * a).to(OUT_TY).to(tl.float32)
                    w1 = (tl.load(vec_ptr + c1).to(tl.float32) * a).to(OUT_TY).to(tl.float32)
                else:  # CONFIDENCE: clamp(sigmoid(k·(margin − tau))·a, lo, hi) per sample
                    m0 = tl.load(vec_ptr + base).to(tl.float32)
                    m1 = tl.load(vec_ptr + tl.minimum(base + 1, n_vec - 1)).to(tl.float32)
                    w0 = a / (1.0 + tl.exp(-((m0 - tau) * k)))
                    w1 = a / (1.0 + tl.exp(-((m1 - tau) * k)))
                    w0 = tl.where(w0 < lo, lo, tl.where(w0 > hi, hi, w0)).to(OUT_TY).to(tl.float32)
                    w1 = tl.where(w1 < lo, lo, tl.where(w1 > hi, hi, w1)).to(OUT_TY).to(tl.float32)
                w = tl.where(second, w1, w0)
            else:  # r < inner + BLOCK < 2·BLOCK: (r + 0.5)·(1/inner) floors exactly
                q = ((r.to(tl.float32) + 0.5) * inv_inner).to(tl.int32)
                if MODE == 2:
                    v = base % n_vec + q
                    if n_vec > BLOCK:  # q <= BLOCK < n_vec: at most one wrap
                        c = tl.where(v >= n_vec, v - n_vec, v)
                    else:  # v < n_vec + BLOCK: exact again
                        c = v - n_vec * ((v.to(tl.float32) + 0.5) * inv_vec).to(tl.int32)
                    wv = tl.load(vec_ptr + c, mask=mask, other=0.0).to(tl.float32)
                    w = (wv * a).to(OUT_TY).to(tl.float32)
                else:
                    m = tl.load(vec_ptr + (base + q), mask=mask, other=0.0).to(tl.float32)
                    w = a / (1.0 + tl.exp(-((m - tau) * k)))
                    w = tl.where(w < lo, lo, tl.where(w > hi, hi, w)).to(OUT_TY).to(tl.float32)
        else:
            w = a
        # Full blocks load and store unmasked, so Triton vectorises them whatever the size
        # (a mask on an unspecialised size would force scalar accesses everywhere); only the
        # last block of a tensor takes the masked path.
        full = start + BLOCK <= n_elements
        if full:
            x = tl.load(x_ptr + offs, eviction_policy=EVICT).to(tl.float32)
        else:
            x = tl.load(x_ptr + offs, mask=mask, other=0.0, eviction_policy=EVICT).to(tl.float32)
        if BWD:
            out = x * w
        else:
            if full:
                s = tl.load(y_ptr + offs, eviction_policy=EVICT).to(tl.float32)
            else:
                s = tl.load(y_ptr + offs, mask=mask, other=0.0,
                            eviction_policy=EVICT).to(tl.float32)
            if MODE == 1:  # RESIDUAL, as torch.addcmul: h + s·a
                out = x + s * w
            else:  # torch.lerp's formula, for its accuracy at both ends of the weight
                d = s - x
                out = tl.where(tl.abs(w) < 0.5, x + w * d, s - d * (1.0 - w))
        out = out.to(OUT_TY)
        if full:
            tl.store(out_ptr + offs, out, cache_modifier=ST_CACHE)
        else:
            tl.store(out_ptr + offs, out, mask=mask, cache_modifier=ST_CACHE)

    return blend_kernel


@functools.lru_cache(maxsize=2)
def _margin_kernels(interpret: bool = False) -> Any:
    """Define (once, lazily) the two kernels of CONFIDENCE's per-sample gate pre-pass.

    Both loop over fixed-size blocks, so one compiled variant per input dtype serves every
    shape (what :func:`prewarm` relies on).
    """
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["inner", "inv_inner"])
    def row_mean_kernel(x_ptr, out_ptr, inner, inv_inner, BLOCK: tl.constexpr):
        # One program per (sample, channel) row of a map: its mean over the spatial dims,
        # accumulated in fp32 straight from the activation dtype (one read, no fp32 copy).
        row = tl.program_id(0).to(tl.int64)
        base = x_ptr + row * inner
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, inner, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            acc += tl.load(base + offs, mask=offs < inner, other=0.0).to(tl.float32)
        tl.store(out_ptr + row, tl.sum(acc, axis=0) * inv_inner)

    @triton.jit(do_not_specialize=["channels"])
    def margin_kernel(z_ptr, out_ptr, channels, BLOCK: tl.constexpr):
        # One program per sample: top-1 minus top-2 softmax probability of its logits, in
        # closed form (1 - exp(z2 - z1)) / sum(exp(z - z1)): no softmax tensor, no top-k.
        n = tl.program_id(0).to(tl.int64)
        row = z_ptr + n * channels
        lanes = tl.arange(0, BLOCK)
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        where = tl.full([BLOCK], 2147483647, tl.int32)
        for start in range(0, channels, BLOCK):  # pass 1: the top logit, first index on ties
            offs = start + lanes
            z = tl.load(row + offs, mask=offs < channels, other=float("-inf")).to(tl.float32)
            better = z > best
            where = tl.where(better, offs, where)
            best = tl.where(better, z, best)
        z1 = tl.max(best, axis=0)
        first = tl.min(tl.where(best == z1, where, 2147483647), axis=0)
        second = tl.full([BLOCK], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, channels, BLOCK):  # pass 2: the runner-up (a tied top counts), the sum
            offs = start + lanes
            inside = offs < channels
            z = tl.load(row + offs, mask=inside, other=float("-inf")).to(tl.float32)
            total += tl.where(inside, tl.exp(z - z1), 0.0)
            second = tl.maximum(second, tl.where(offs == first, float("-inf"), z))
        z2 = tl.max(second, axis=0)
        tl.store(out_ptr + n, (1.0 - tl.exp(z2 - z1)) / tl.sum(total, axis=0))

    return row_mean_kernel, margin_kernel


#: Block sizes of the pre-pass kernels (fixed: one compiled variant per dtype).
_ROW_BLOCK, _MARGIN_BLOCK = 1024, 512


def _per_sample_margin(seed: Tensor) -> Tensor:
    """CONFIDENCE's gate input, shape (N,) fp32: the fused counterpart of the eager
    ``kasmina.kernels.blend._per_sample_margin`` (the same maths in two launches, where the
    eager ops take a reduction, a softmax, a top-k and a subtraction)."""
    from kasmina.kernels.blend import _per_sample_margin as eager_margin

    z = seed.detach()
    if z.dim() == 1:
        z = z.unsqueeze(0)
    samples, channels = z.shape[0], z.shape[1]
    if channels < 2:
        return eager_margin(seed, torch.float32)  # no runner-up: the gate is fully open
    row_mean, margin = _margin_kernels(interpreting())
    if z.dim() > 2:
        inner = z.numel() // (samples * channels)
        means = torch.empty(samples * channels, dtype=torch.float32, device=z.device)
        row_mean[(samples * channels,)](z, means, inner, 1.0 / inner, BLOCK=_ROW_BLOCK, num_warps=4)
        z = means
    out = torch.empty(samples, dtype=torch.float32, device=z.device)
    margin[(samples,)](z, out, channels, BLOCK=_MARGIN_BLOCK, num_warps=4)
    return out


def _compiled_variants() -> int | None:
    """How many variants Triton has compiled of the blend and gate kernels (None when unknown)."""
    if not _triton_ok():
        return None
    total = 0
    for kernel in (_kernels(interpreting()), *_margin_kernels(interpreting())):
        caches = getattr(kernel, "device_caches", None)
        if caches is None:
            return None
        try:
            total += sum(len(entry[0]) for entry in caches.values())
        except Exception:  # another Triton version's cache layout
            return None
    return total


def _launch(n: int, element_size: int, inner: int = 0) -> tuple[tuple[int], dict[str, Any]]:
    """Grid and launch keywords for ``n`` elements of ``element_size`` bytes.

    For a per-row weight (``inner`` > 0) with rows of 1024 elements or more the block shrinks
    to a power of two no longer than a row, so the kernel takes its scalar-weight path (two
    loads and a select) rather than a per-element gather: three block sizes at most.
    """
    block, warps, stream = _LAUNCH.get(element_size, _LAUNCH[4])
    if 1024 <= inner < block:
        block = 1 << (inner.bit_length() - 1)
    return ((n + block - 1) // block,), {
        "BLOCK": block, "INT64": n + block >= 2**31, "num_warps": warps,
        "EVICT": "evict_first" if stream else "", "ST_CACHE": ".cs" if stream else ""}


class _FusedBlend(torch.autograd.Function):
    """One fused forward pass; backward is grad_seed = w × grad_out (one pass), and for a host
    that is not detached grad_host = grad_out − grad_seed ((1 − w) × grad_out; all of
    grad_out under RESIDUAL)."""

    @staticmethod
    def forward(ctx: Any, host: Tensor, seed: Tensor, alpha: Tensor, vec: Tensor,  # type: ignore[override]
                params: tuple[int, int, int, float, float, float, float]) -> Tensor:
        mode, inner, n_vec, k, tau, lo, hi = params
        out = torch.empty_like(seed)
        snap = torch.empty(1, dtype=torch.float32, device=seed.device)
        n = seed.numel()
        grid, kw = _launch(n, seed.element_size(), inner if mode >= _CHANNEL else 0)
        _kernels(interpreting())[grid](host, seed, out, alpha, vec, snap, n, inner, n_vec,
                         1.0 / inner, 1.0 / n_vec, k, tau, lo, hi, MODE=mode, BWD=False, **kw)
        ctx.snap, ctx.vec, ctx.params = snap, vec, params
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        want_host, want_seed = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (want_host or want_seed):
            return None, None, None, None, None
        mode, inner, n_vec, k, tau, lo, hi = ctx.params
        g = grad_out.contiguous()
        if mode == _SCALAR_ADD and not want_seed:
            return g, None, None, None, None
        grad_seed = torch.empty_like(g)
        n = g.numel()
        snap = ctx.snap
        grid, kw = _launch(n, g.element_size(), inner if mode >= _CHANNEL else 0)
        _kernels(interpreting())[grid](g, g, grad_seed, snap, ctx.vec, snap, n, inner, n_vec,
                         1.0 / inner, 1.0 / n_vec, k, tau, lo, hi, MODE=mode, BWD=True, **kw)
        grad_host = (g if mode == _SCALAR_ADD else g - grad_seed) if want_host else None
        return grad_host, grad_seed if want_seed else None, None, None, None


def fused_blend(host: Tensor, seed: Tensor, alpha_tensor: Tensor, config: Any = None, *,
                detach_host: bool = True) -> Tensor:
    """``blend(host, seed, alpha_tensor, config, detach_host=...)`` (no stats) in fused kernels.

    Same semantics as the eager path: alpha is cast to the activation dtype and clamped to
    [0, 1]; shape, dtype and channel mismatches raise ``ValueError``. The caller checks
    :func:`available` and :func:`accepts` first (``blend`` does).
    """
    from kasmina.kernels.blend import _DEFAULT, BlendMode

    if host.shape != seed.shape:
        raise ValueError(f"host output {tuple(host.shape)} and seed output {tuple(seed.shape)} differ in shape")
    if host.dtype != seed.dtype:
        raise ValueError(f"host output is {host.dtype} but seed output is {seed.dtype}")
    if alpha_tensor.dim() != 0:
        raise ValueError(f"alpha must be a float or a 0-d tensor, got shape {tuple(alpha_tensor.shape)}")
    cfg = _DEFAULT if config is None else config
    mode = cfg.mode
    nd = seed.dim()
    if nd == 0 and mode in (BlendMode.CHANNEL, BlendMode.CONFIDENCE):
        raise ValueError(f"{mode.value} blend needs at least a 1-D activation")
    device, dtype = seed.device, seed.dtype
    alpha = alpha_tensor.detach()
    if alpha.device != device:
        alpha = alpha.to(device)
    if alpha.dtype not in _ALPHA_DTYPES:
        alpha = alpha.to(torch.float32)
    h = host.detach() if detach_host else host
    numel = seed.numel()
    k = tau = lo = 0.0
    hi = 1.0
    if mode is BlendMode.CONVEX:
        kmode, vec, inner, n_vec = _SCALAR_LERP, alpha, 1, 1
    elif mode is BlendMode.RESIDUAL:
        kmode, vec, inner, n_vec = _SCALAR_ADD, alpha, 1, 1
    elif mode is BlendMode.CHANNEL:
        channels = seed.shape[0] if nd == 1 else seed.shape[1]
        cfg.check_channels(channels)
        vec = cfg.channel_weights(device, dtype, nd)
        kmode, n_vec = _CHANNEL, channels
        inner = 1 if nd == 1 else numel // (seed.shape[0] * channels)
    else:
        with torch.no_grad():
            vec = _per_sample_margin(seed)
        kmode, n_vec = _CONFIDENCE, vec.numel()
        inner = numel if nd == 1 else numel // seed.shape[0]
        k, tau, lo, hi = cfg.gate_k, cfg.gate_tau, cfg.alpha_lo, cfg.alpha_hi
    if numel == 0:
        return torch.empty_like(seed).requires_grad_(seed.requires_grad and torch.is_grad_enabled())
    return _FusedBlend.apply(h, seed, alpha, vec, (kmode, inner, n_vec, k, tau, lo, hi))


def prewarm(device: torch.device | str | None = None,
            dtypes: Iterable[torch.dtype] = (torch.float32, torch.bfloat16)) -> int:
    """Launch every kernel variant once on tiny tensors so Triton compiles it now.

    Returns how many forward+backward launches ran (0 when fused kernels are unavailable).
    Triton's JIT compiles per dtype, mode and block size (sizes are not specialised on), so
    this covers every later call on that device with a float32 alpha and 16-byte-aligned
    tensors, except tensors of 2**31 or more elements (64-bit indexing, compiled on first use).
    """
    from kasmina.kernels.blend import BlenderConfig, BlendMode

    dev = torch.device("cuda" if device is None else device)
    if dev.type != "cuda" or not torch.cuda.is_available() or not _triton_ok():
        return 0
    launches = 0
    with torch.inference_mode(False), torch.enable_grad():
        alpha = torch.full((), 0.5, dtype=torch.float32, device=dev)
        for dtype in dtypes:
            if dtype not in _DTYPES:
                continue
            # rows of 5, 1024 and 2048 elements: every block size _launch can pick; and a
            # 2-D activation, whose CONFIDENCE gate reads the activation dtype directly
            for shape in ((2, 3, 5), (1, 1, 1024), (1, 1, 2048), (2, 3)):
                host = torch.randn(shape, device=dev, dtype=dtype)
                seed = torch.randn(shape, device=dev, dtype=dtype, requires_grad=True)
                for mode in BlendMode:
                    if shape != (2, 3, 5) and mode not in (BlendMode.CHANNEL, BlendMode.CONFIDENCE):
                        continue
                    if shape == (2, 3) and mode is not BlendMode.CONFIDENCE:
                        continue
                    vec = (0.5,) * shape[1] if mode is BlendMode.CHANNEL else None
                    cfg = BlenderConfig(mode=mode, alpha_vec=vec)
                    out = fused_blend(host, seed, alpha, cfg)
                    out.backward(torch.ones_like(out))
                    seed.grad = None
                    launches += 1
    torch.cuda.synchronize(dev)
    return launches
