"""Blend kernels (SPEC §6): isolation, seed gradients, bounds, broadcasting, telemetry.

Every expected value is computed here from the SPEC formulas with plain tensor arithmetic
(float64 where it matters), never by calling the code under test a second way.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import sys
from typing import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import kasmina.kernels as kernels
import kasmina.lifecycle.schedule as schedule_module
from kasmina.kernels import BlenderConfig, BlendMode, BlendStats, blend

# ``kasmina.kernels.blend`` the attribute is the function; the module is in sys.modules.
blend_module = sys.modules["kasmina.kernels.blend"]

MODES = list(BlendMode)
NDIMS = [2, 3, 4]
N, C = 5, 6


def _host_module(ndim: int) -> nn.Module:
    torch.manual_seed(1)
    if ndim == 2:
        return nn.Linear(4, C)
    if ndim == 3:
        return nn.Conv1d(3, C, 3, padding=1)
    return nn.Conv2d(3, C, 3, padding=1)


def _input(ndim: int) -> Tensor:
    torch.manual_seed(2)
    if ndim == 2:
        return torch.randn(N, 4)
    if ndim == 3:
        return torch.randn(N, 3, 7)
    return torch.randn(N, 3, 5, 4)


def _config(mode: BlendMode, **kw: float) -> BlenderConfig:
    vec = (0.0, 0.25, 0.5, 0.75, 1.0, 0.6) if mode is BlendMode.CHANNEL else None
    return BlenderConfig(mode=mode, alpha_vec=vec, **kw)  # type: ignore[arg-type]


def _ref_gate(seed: Tensor, cfg: BlenderConfig) -> Tensor:
    """Per-sample gate sigmoid(k·(margin − tau)) of SPEC §6 in float64, shape (N,)."""
    z = seed.detach().double()
    if z.dim() == 1:
        z = z.unsqueeze(0)
    while z.dim() > 2:
        z = z.mean(dim=-1)
    if z.shape[1] < 2:
        margin = torch.ones(z.shape[0], dtype=torch.float64)
    else:
        p = torch.softmax(z, dim=1).sort(dim=1, descending=True).values
        margin = p[:, 0] - p[:, 1]
    return 1.0 / (1.0 + torch.exp(-cfg.gate_k * (margin - cfg.gate_tau)))


def _ref_confidence_weight(seed: Tensor, alpha: float, cfg: BlenderConfig) -> Tensor:
    """Per-sample a_eff = clamp(a·gate, alpha_lo, alpha_hi) in float64, shape (N,)."""
    a = min(1.0, max(0.0, alpha))
    return (a * _ref_gate(seed, cfg)).clamp(cfg.alpha_lo, cfg.alpha_hi)


def _ref_weight(mode: BlendMode, seed: Tensor, alpha: float, cfg: BlenderConfig) -> Tensor:
    """The effective alpha of SPEC §6, broadcastable against ``seed`` (float64)."""
    a = min(1.0, max(0.0, alpha))
    nd = seed.dim()
    if mode in (BlendMode.CONVEX, BlendMode.RESIDUAL):
        return torch.tensor(a, dtype=torch.float64)
    if mode is BlendMode.CHANNEL:
        vec = torch.tensor(cfg.alpha_vec, dtype=torch.float64)
        w = (a * vec).clamp(0.0, 1.0)
        return w if nd == 1 else w.view((1, -1) + (1,) * (nd - 2))
    w = _ref_confidence_weight(seed, alpha, cfg)
    return w.view(()) if nd == 1 else w.view((-1,) + (1,) * (nd - 1))


def _ref_out(mode: BlendMode, h: Tensor, s: Tensor, alpha: float, cfg: BlenderConfig) -> Tensor:
    w = _ref_weight(mode, s, alpha, cfg)
    h64, s64 = h.detach().double(), s.detach().double()
    if mode is BlendMode.RESIDUAL:
        return h64 + w * s64
    return h64 + w * (s64 - h64)


def _alpha(kind: str, value: float) -> float | Tensor:
    return value if kind == "float" else torch.tensor(value)


# --------------------------------------------------------------------------- isolation


@pytest.mark.parametrize("alpha_kind", ["float", "tensor"])
@pytest.mark.parametrize("ndim", NDIMS)
@pytest.mark.parametrize("mode", MODES)
def test_host_gets_no_gradient_and_seed_gets_alpha_times_upstream(mode: BlendMode, ndim: int,
                                                                  alpha_kind: str) -> None:
    host_net = _host_module(ndim)
    x = _input(ndim)
    host = host_net(x)
    host.retain_grad()
    torch.manual_seed(3)
    seed = (torch.randn_like(host) * 3).requires_grad_(True)
    upstream = torch.randn_like(host)
    cfg = _config(mode, alpha_lo=0.05, alpha_hi=0.9)
    alpha = 0.7

    out = blend(host, seed, _alpha(alpha_kind, alpha), cfg)
    out.backward(upstream)

    # Isolation: no gradient reaches the host activation or any host parameter.
    assert host.grad is None or torch.count_nonzero(host.grad) == 0
    for p in host_net.parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    # The seed gets exactly (effective alpha) x (upstream gradient).
    weight = _ref_weight(mode, seed, alpha, cfg)
    expected = (weight * upstream.double()).float()
    assert seed.grad is not None
    torch.testing.assert_close(seed.grad, expected, rtol=1e-6, atol=1e-6)
    # The output is the SPEC §6 formula.
    torch.testing.assert_close(out.double(), _ref_out(mode, host, seed, alpha, cfg), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_seed_gradient_is_exact_for_scalar_modes_and_channel(mode: BlendMode) -> None:
    """Where the weight is known exactly in fp32 the gradient must match bit for bit."""
    torch.manual_seed(4)
    host = torch.randn(3, C, 4, 4, requires_grad=True)
    seed = torch.randn(3, C, 4, 4, requires_grad=True)
    upstream = torch.randn(3, C, 4, 4)
    cfg = _config(mode)
    if mode is BlendMode.CONFIDENCE:
        # gate_k = 0 makes the gate exactly 0.5, so a_eff = 0.5 * 0.6 = 0.3 for every sample.
        cfg = BlenderConfig(mode=mode, gate_k=0.0)
    blend(host, seed, 0.6, cfg).backward(upstream)
    assert host.grad is None
    if mode is BlendMode.CHANNEL:
        vec = torch.tensor(cfg.alpha_vec, dtype=torch.float32).view(1, -1, 1, 1)
        expected = upstream * (vec * 0.6)
    elif mode is BlendMode.CONFIDENCE:
        expected = upstream * torch.full((3, 1, 1, 1), 0.5) * torch.tensor(0.6)
    else:
        expected = upstream * 0.6
    assert torch.equal(seed.grad, expected)


def test_seed_module_parameters_learn_and_host_module_does_not() -> None:
    torch.manual_seed(5)
    host_net, seed_net = nn.Conv2d(3, C, 3, padding=1), nn.Conv2d(3, C, 3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    for mode in MODES:
        host_net.zero_grad(set_to_none=True)
        seed_net.zero_grad(set_to_none=True)
        blend(host_net(x), seed_net(x), 0.5, _config(mode)).square().sum().backward()
        assert all(p.grad is None for p in host_net.parameters()), mode
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in seed_net.parameters()), mode


def test_detach_host_false_is_an_explicit_opt_out() -> None:
    """Only a FOSSILIZED seed passes detach_host=False; the default always detaches."""
    host = torch.randn(2, 3, requires_grad=True)
    seed = torch.randn(2, 3, requires_grad=True)
    blend(host, seed, 0.25, BlenderConfig(mode="RESIDUAL"), detach_host=False).sum().backward()
    assert torch.equal(host.grad, torch.ones(2, 3))
    host.grad = None
    blend(host, seed, 0.25, BlenderConfig(mode="RESIDUAL")).sum().backward()
    assert host.grad is None


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("mode", MODES)
def test_alpha_is_clamped_to_unit_interval(mode: BlendMode) -> None:
    torch.manual_seed(6)
    h, s = torch.randn(4, C, 3, 3), torch.randn(4, C, 3, 3)
    cfg = _config(mode)
    for kind in ("float", "tensor"):
        assert torch.equal(blend(h, s, _alpha(kind, 1.7), cfg), blend(h, s, 1.0, cfg))
        assert torch.equal(blend(h, s, _alpha(kind, -0.3), cfg), blend(h, s, 0.0, cfg))


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_confidence_effective_alpha_stays_within_lo_hi(ndim: int) -> None:
    torch.manual_seed(7)
    shape = (C,) if ndim == 1 else (8, C) + (3,) * (ndim - 2)
    seed = (torch.randn(shape) * 5).requires_grad_(True)
    cfg = BlenderConfig(mode="confidence", alpha_lo=0.3, alpha_hi=0.45, gate_k=8.0)
    for alpha in (0.0, 0.2, 0.5, 1.0):
        seed.grad = None
        blend(torch.zeros(shape), seed, alpha, cfg).backward(torch.ones(shape))
        assert seed.grad.min() >= 0.3 - 1e-7 and seed.grad.max() <= 0.45 + 1e-7
    # alpha = 0 still gives the seed at least alpha_lo weight (SPEC: a_eff >= alpha_lo).
    seed.grad = None
    out = blend(torch.zeros(shape), seed, 0.0, cfg)
    torch.testing.assert_close(out, 0.3 * seed.detach())


# --------------------------------------------------------------------------- CHANNEL


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("alpha_kind", ["float", "tensor"])
def test_channel_weight_broadcasts_over_dim_1(ndim: int, alpha_kind: str) -> None:
    vec = (0.1, 0.9, 0.5, 1.0)
    cfg = BlenderConfig(mode="CHANNEL", alpha_vec=vec)
    shape = (4,) if ndim == 1 else (3, 4) + (2, 5)[: ndim - 2]
    # host 0, seed 1: the output IS the weight, broadcast.
    out = blend(torch.zeros(shape), torch.ones(shape), _alpha(alpha_kind, 0.5), cfg)
    assert out.shape == torch.Size(shape)
    for c, v in enumerate(vec):
        plane = out[c] if ndim == 1 else out[:, c]
        assert torch.all(plane == torch.tensor(0.5) * torch.tensor(v)), (c, plane)
    cached = cfg.channel_weights(torch.device("cpu"), torch.float32, ndim)
    assert cached.shape == ((4,) if ndim == 1 else (1, 4) + (1,) * (ndim - 2))


def test_channel_vector_is_cached_per_device_and_dtype() -> None:
    cfg = BlenderConfig(mode="CHANNEL", alpha_vec=(0.5, 1.0))
    a = cfg.channel_weights(torch.device("cpu"), torch.float32, 4)
    assert cfg.channel_weights(torch.device("cpu"), torch.float32, 4) is a
    b = cfg.channel_weights(torch.device("cpu"), torch.float64, 4)
    assert b is not a and b.dtype == torch.float64
    assert torch.equal(a.flatten(), torch.tensor([0.5, 1.0]))
    # The cache is not part of identity: an equal config compares and hashes equal.
    fresh = BlenderConfig(mode="CHANNEL", alpha_vec=(0.5, 1.0))
    assert fresh == cfg and hash(fresh) == hash(cfg)


def test_channel_length_mismatch_is_a_clear_error() -> None:
    cfg = BlenderConfig(mode="CHANNEL", alpha_vec=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"^alpha_vec has 3 entries but the site has 16 channels$"):
        cfg.check_channels(16)
    cfg.check_channels(3)
    BlenderConfig(mode="CONVEX").check_channels(16)  # only CHANNEL cares
    with pytest.raises(ValueError, match="3 entries but the site has 16 channels"):
        blend(torch.zeros(2, 16, 4, 4), torch.zeros(2, 16, 4, 4), 0.5, cfg)


# --------------------------------------------------------------------------- CONFIDENCE


def test_confidence_works_on_4d_maps_with_one_weight_per_sample() -> None:
    torch.manual_seed(8)
    n, c, hgt, wid = 4, 10, 6, 5
    seed = torch.randn(n, c, hgt, wid)
    seed[0, 3] += 6.0   # sample 0: one channel dominates -> confident
    seed = seed.requires_grad_(True)
    cfg = BlenderConfig(mode="CONFIDENCE", gate_k=4.0, gate_tau=0.2)
    out = blend(torch.zeros(n, c, hgt, wid), seed, 0.8, cfg)
    out.backward(torch.ones_like(out))
    w = seed.grad
    per_sample = w.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1]), "one a_eff per sample, broadcast over C, H, W"
    expected = _ref_confidence_weight(seed, 0.8, cfg)
    torch.testing.assert_close(per_sample[:, 0].double(), expected, rtol=1e-6, atol=1e-6)
    assert per_sample[0, 0] > per_sample[1:, 0].max()  # the confident sample gets more weight
    torch.testing.assert_close(out.detach(), w * seed.detach())


def test_confidence_margin_on_logits_matches_hand_computation() -> None:
    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 1.0, 0.0]])
    cfg = BlenderConfig(mode="CONFIDENCE", gate_k=4.0, gate_tau=0.2)
    seed = logits.clone().requires_grad_(True)
    blend(torch.zeros(3, 3), seed, 1.0, cfg).backward(torch.ones(3, 3))
    e = np.exp(np.array([[10.0, 0, 0], [1, 1, 1], [2, 1, 0]]))
    p = e / e.sum(axis=1, keepdims=True)
    top = np.sort(p, axis=1)[:, ::-1]
    gate = 1 / (1 + np.exp(-4.0 * (top[:, 0] - top[:, 1] - 0.2)))
    np.testing.assert_allclose(seed.grad[:, 0].numpy(), gate, rtol=1e-6)
    assert abs(gate[1] - 1 / (1 + math.exp(0.8))) < 1e-12  # uniform -> margin 0


def test_confidence_single_channel_uses_margin_one() -> None:
    cfg = BlenderConfig(mode="CONFIDENCE", gate_k=3.0, gate_tau=0.5)
    seed = torch.randn(4, 1, 3, 3, requires_grad=True)
    blend(torch.zeros(4, 1, 3, 3), seed, 0.5, cfg).backward(torch.ones(4, 1, 3, 3))
    expected = 0.5 / (1 + math.exp(-3.0 * (1.0 - 0.5)))
    torch.testing.assert_close(seed.grad, torch.full((4, 1, 3, 3), expected))


def test_confidence_gate_does_not_backpropagate_through_the_margin() -> None:
    """The gate reads the seed detached: the seed gradient is a_eff x upstream, no more."""
    torch.manual_seed(9)
    seed = torch.randn(6, 5, requires_grad=True)
    cfg = BlenderConfig(mode="CONFIDENCE", gate_k=10.0, gate_tau=0.1)
    up = torch.randn(6, 5)
    blend(torch.randn(6, 5), seed, 0.9, cfg).backward(up)
    w = _ref_confidence_weight(seed, 0.9, cfg).view(-1, 1)
    torch.testing.assert_close(seed.grad.double(), w * up.double(), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- alpha forms, dtypes


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("mode", MODES)
def test_float_and_0d_tensor_alpha_give_identical_results(mode: BlendMode, ndim: int) -> None:
    torch.manual_seed(10)
    shape = (C,) if ndim == 1 else (3, C) + (4,) * (ndim - 2)
    h, s = torch.randn(shape), torch.randn(shape)
    cfg = _config(mode)
    for a in (0.0, 0.123456789, 0.3, 0.5, 0.77, 1.0):
        assert torch.equal(blend(h, s, a, cfg), blend(h, s, torch.tensor(a), cfg)), a


def test_alpha_must_be_0d_and_finite_and_shapes_must_match() -> None:
    h = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="0-d"):
        blend(h, h, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="finite"):
        blend(h, h, float("nan"))
    with pytest.raises(ValueError, match="shape"):
        blend(h, torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError, match="float64"):
        blend(h, h.double(), 0.5)
    for mode in ("CHANNEL", "CONFIDENCE"):
        with pytest.raises(ValueError, match="1-D"):
            blend(torch.zeros(()), torch.zeros(()), 0.5, BlenderConfig(mode=mode, alpha_vec=(1.0,)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", MODES)
def test_reduced_precision_activations(mode: BlendMode, dtype: torch.dtype) -> None:
    torch.manual_seed(11)
    h32, s32 = torch.randn(4, C, 3, 3), torch.randn(4, C, 3, 3)
    h, s = h32.to(dtype), s32.to(dtype).requires_grad_(True)
    cfg = _config(mode)
    alpha_t = torch.tensor(0.3)          # an fp32 device alpha, as the executor keeps it
    out = blend(h, s, alpha_t, cfg)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert s.grad is not None and s.grad.dtype == dtype
    ref = _ref_out(mode, h, s, 0.3, cfg)
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)
    # The float path rounds alpha to the activation dtype exactly as the tensor path casts it.
    # (RESIDUAL: on CPU, torch.add(alpha=) rounds twice in its scalar tail loop for half
    # types, so the float path may differ from addcmul by one ulp on a few elements.)
    if mode is BlendMode.RESIDUAL:
        torch.testing.assert_close(blend(h, s, 0.3, cfg), out, rtol=1e-2, atol=1e-2)
    else:
        assert torch.equal(blend(h, s, 0.3, cfg), out)


def test_round_to_matches_torch_casts() -> None:
    rng = np.random.default_rng(0)
    values = [0.0, 0.1, 0.3, 1 / 3, 0.77777, 0.999999, 1.0] + rng.random(2000).tolist()
    for value in values:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            expected = torch.tensor(value, dtype=torch.float32).to(dtype).item()
            assert blend_module._round_to(value, dtype) == expected, (value, dtype)


@pytest.mark.parametrize("mode", MODES)
def test_works_under_inference_mode(mode: BlendMode) -> None:
    cfg = _config(mode)
    stats = BlendStats()
    h, s = torch.randn(2, C, 3, 3), torch.randn(2, C, 3, 3)
    with torch.inference_mode():
        out = blend(h, s, torch.tensor(0.4), cfg, stats=stats)
        out_f = blend(h, s, 0.4, cfg, stats=stats)
    assert not out.requires_grad and torch.equal(out, out_f)
    # Vectors and buffers first made under inference mode still work in a training step.
    seed = s.clone().requires_grad_(True)
    blend(h, seed, 0.4, cfg, stats=stats).sum().backward()
    assert seed.grad is not None
    assert stats.count > 0 and math.isfinite(stats.read()["alpha_mean"])


# --------------------------------------------------------------------------- telemetry


@pytest.mark.parametrize("capacity, fold_every", [(16, 1), (16, 4), (4096, 5), (4096, 128)])
def test_blend_stats_match_a_numpy_reference(capacity: int, fold_every: int) -> None:
    """Ring wrap-around included; with fold_every > 1 floats enter a fold batch first, so
    the p95 window is compared exactly only where the order cannot matter."""
    torch.manual_seed(12)
    stats = BlendStats(capacity=capacity, fold_every=fold_every)
    cfg_plain = BlenderConfig(mode="CONFIDENCE")
    cfg_conf = BlenderConfig(mode="CONFIDENCE", alpha_lo=0.2, alpha_hi=0.6)
    cfg_chan = BlenderConfig(mode="CHANNEL", alpha_vec=(0.2, 0.4, 0.6, 0.8, 1.0, 0.0))
    history: list[float] = []
    clamped = 0
    for step in range(9):
        alpha = [0.1, 1.4, -0.2, 0.5, 0.9, 0.33, 1.0, 0.0, 0.7][step]
        a = min(1.0, max(0.0, alpha))
        h, s = torch.randn(5, C, 2, 2), torch.randn(5, C, 2, 2) * 4
        blend(h, s, torch.tensor(alpha), BlenderConfig(), stats=stats)
        history.append(float(np.float32(a)))
        clamped += a != alpha
        blend(h, s, alpha, cfg_chan, stats=stats)
        history += [float(np.float32(a * v)) for v in cfg_chan.alpha_vec]
        clamped += sum(1 for v in cfg_chan.alpha_vec if abs(alpha * v - a * v) > 1e-9)
        blend(h, s, alpha, cfg_conf, stats=stats)
        eff = _ref_confidence_weight(s, alpha, cfg_conf)
        unclamped = alpha * _ref_gate(s, cfg_conf)
        history += [float(np.float32(v)) for v in eff]
        clamped += int(((unclamped - eff).abs() > 1e-6).sum())
        blend(h, s, alpha, cfg_plain, stats=stats)       # default bounds: only alpha clamps
        eff = _ref_confidence_weight(s, alpha, cfg_plain)
        history += [float(np.float32(v)) for v in eff]
        clamped += int(((alpha * _ref_gate(s, cfg_plain) - eff).abs() > 1e-6).sum())
        blend(h, s, alpha, BlenderConfig(mode="RESIDUAL"), stats=stats)   # a float value
        history.append(float(np.float32(a)))
        clamped += a != alpha
        if fold_every == 4 and step == 4:
            got = stats.read()                           # a read mid-way changes nothing
            assert got["alpha_mean"] == pytest.approx(np.mean(history), abs=1e-6)
    got = stats.read()
    assert set(got) == {"alpha_mean", "alpha_p95", "clamped_fraction"}
    assert all(type(v) is float for v in got.values())
    assert stats.count == len(history)
    assert got["alpha_mean"] == pytest.approx(np.mean(history), abs=1e-6)
    if fold_every == 1 or capacity >= len(history):
        window = history[-capacity:]
        assert got["alpha_p95"] == pytest.approx(np.quantile(window, 0.95), abs=1e-6)
    else:  # the window is the last `capacity` values up to the order inside one fold batch
        assert min(history[-capacity - 16:]) <= got["alpha_p95"] <= max(history[-capacity - 16:])
    assert got["clamped_fraction"] == pytest.approx(clamped / len(history), abs=1e-9)
    stats.reset()
    assert stats.count == 0
    assert stats.read() == {"alpha_mean": 0.0, "alpha_p95": 0.0, "clamped_fraction": 0.0}


@pytest.mark.parametrize("fold_every", [1, 2, 100])
def test_blend_stats_ring_keeps_exactly_the_most_recent_values(fold_every: int) -> None:
    stats = BlendStats(capacity=5, fold_every=fold_every)
    seen: list[float] = []
    start = 0
    for length in (1, 3, 2, 7, 4, 1, 5, 2):
        values = [(start + i) / 100 for i in range(length)]
        start += length
        stats.update(torch.tensor(values), torch.zeros(length, dtype=torch.bool))
        seen += values
        got = stats.read()
        assert sorted(stats._buf[: stats._filled].tolist()) == pytest.approx(sorted(seen[-5:]))
        assert got["alpha_p95"] == pytest.approx(np.quantile(seen[-5:], 0.95), abs=1e-6)
        assert got["alpha_mean"] == pytest.approx(np.mean(seen), abs=1e-6)
        assert got["clamped_fraction"] == 0.0


def test_blend_stats_state_is_device_tensors() -> None:
    stats = BlendStats(capacity=8, fold_every=2)
    blend(torch.zeros(20, 3), torch.randn(20, 3), torch.tensor(0.5),
          BlenderConfig(mode="CONFIDENCE"), stats=stats)   # 20 values > capacity 8
    assert stats._buf is None and len(stats._values) == 1   # pending: nothing launched yet
    assert all(isinstance(v, Tensor) and not v.requires_grad for v in stats._values)
    blend(torch.zeros(20, 3), torch.randn(20, 3), 0.25, stats=stats)   # second call folds
    tensors = [stats._sum, stats._clamped, stats._buf]
    assert all(isinstance(t, Tensor) and t.device.type == "cpu" for t in tensors)
    assert stats._buf.shape == (8,) and stats.count == 21
    assert stats._values == [] and stats._floats == []
    got = stats.read()
    assert all(type(v) is float for v in got.values())


def test_blend_stats_hold_no_autograd_graph() -> None:
    stats = BlendStats()
    alpha = torch.tensor(0.5, requires_grad=True)
    seed = torch.randn(4, 3, requires_grad=True)
    for mode in MODES:
        blend(torch.zeros(4, 3), seed, alpha, _config(mode) if mode is not BlendMode.CHANNEL
              else BlenderConfig(mode=mode, alpha_vec=(0.2, 0.4, 0.6)), stats=stats)
    assert all(v.grad_fn is None for v in stats._values + stats._masks)


def test_blend_with_stats_never_syncs_with_the_host() -> None:
    """On the meta device any .item()/.tolist()/bool() raises, so a silent sync would fail here."""
    meta = torch.device("meta")
    stats = BlendStats(capacity=32, fold_every=3)   # fold often: folding must not sync either
    for mode in MODES:
        cfg = _config(mode)
        for alpha in (0.4, 1.3, torch.tensor(0.4, device=meta)):
            for shape in [(5, C), (5, C, 3), (5, C, 3, 3), (C,)]:
                h = torch.empty(shape, device=meta)
                s = torch.empty(shape, device=meta, requires_grad=True)
                out = blend(h, s, alpha, cfg, stats=stats)
                assert out.device == meta and out.shape == torch.Size(shape)
                out.backward(torch.empty(shape, device=meta))
    assert stats.count > 0 and stats._buf.device == meta


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for sync debug mode")
def test_blend_with_stats_has_no_cuda_sync() -> None:
    dev = torch.device("cuda")
    stats = BlendStats(fold_every=3)   # fold inside the checked window too
    cfgs = [_config(m) for m in MODES]
    h, s = torch.randn(8, C, 4, 4, device=dev), torch.randn(8, C, 4, 4, device=dev, requires_grad=True)
    alpha = torch.tensor(0.4, device=dev)
    for cfg in cfgs:  # warm up: channel vectors and stat buffers are built once
        blend(h, s, alpha, cfg, stats=stats).sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for cfg in cfgs:
            for a in (alpha, 0.4):
                blend(h, s, a, cfg, stats=stats).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert 0.0 < stats.read()["alpha_mean"] <= 1.0


# --------------------------------------------------------------------------- no compile


def test_no_mode_uses_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("torch.compile must not be used by Kasmina")

    monkeypatch.setattr(torch, "compile", refuse)
    stats = BlendStats()
    for mode in MODES:
        for ndim in NDIMS:
            shape = (3, C) + (2,) * (ndim - 2)
            seed = torch.randn(shape, requires_grad=True)
            blend(torch.randn(shape), seed, torch.tensor(0.5), _config(mode), stats=stats).sum().backward()
            assert seed.grad is not None
    stats.read()


@pytest.mark.parametrize("module", [blend_module, schedule_module, kernels])
def test_kernel_sources_never_reference_compile_or_dynamo(module: object) -> None:
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            assert node.attr not in {"compile", "_dynamo"}, ast.unparse(node)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any("_dynamo" in n or n == "compile" for n in names)


# --------------------------------------------------------------------------- config


def test_blend_mode_parse() -> None:
    assert BlendMode.parse(" residual ") is BlendMode.RESIDUAL
    assert BlendMode.parse("Confidence") is BlendMode.CONFIDENCE
    assert BlendMode.parse(BlendMode.CHANNEL) is BlendMode.CHANNEL
    assert [m.value for m in BlendMode] == ["CONVEX", "RESIDUAL", "CHANNEL", "CONFIDENCE"]
    for bad in ("", "lerp", "CONVEX2", 3, None):
        with pytest.raises(ValueError, match="allowed: CONVEX, RESIDUAL, CHANNEL, CONFIDENCE"):
            BlendMode.parse(bad)  # type: ignore[arg-type]


def test_config_normalises_its_fields() -> None:
    cfg = BlenderConfig(mode="channel", alpha_vec=[-1, 0.5, 2], alpha_lo=1.5, alpha_hi=-0.5,
                        gate_k=3, source="override")
    assert cfg.mode is BlendMode.CHANNEL
    assert cfg.alpha_vec == (0.0, 0.5, 1.0) and all(type(v) is float for v in cfg.alpha_vec)
    assert (cfg.alpha_lo, cfg.alpha_hi) == (0.0, 1.0)
    assert BlenderConfig(alpha_lo=0.7, alpha_hi=0.2).alpha_lo == 0.2
    assert BlenderConfig(alpha_lo=0.7, alpha_hi=0.2).alpha_hi == 0.7
    assert type(cfg.gate_k) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mode = BlendMode.CONVEX  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, field_name", [
    ({"gate_k": -1.0}, "gate_k"), ({"gate_tau": -0.1}, "gate_tau"),
    ({"gate_k": float("nan")}, "gate_k"), ({"gate_tau": float("inf")}, "gate_tau"),
    ({"alpha_lo": float("nan")}, "alpha_lo"), ({"alpha_hi": float("-inf")}, "alpha_hi"),
    ({"alpha_vec": (0.5, float("nan"))}, "alpha_vec"), ({"gate_k": "abc"}, "gate_k"),
    ({"alpha_vec": "0.5,1"}, "alpha_vec"),
])
def test_config_refuses_bad_numbers_naming_the_field(kwargs: dict[str, object], field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        BlenderConfig(**kwargs)  # type: ignore[arg-type]


def test_channel_config_needs_a_vector() -> None:
    for vec in (None, (), []):
        with pytest.raises(ValueError, match="CHANNEL blend needs a non-empty alpha_vec"):
            BlenderConfig(mode="CHANNEL", alpha_vec=vec)  # type: ignore[arg-type]


def test_config_dict_round_trip_is_json_ready() -> None:
    for cfg in (BlenderConfig(), BlenderConfig(mode="CHANNEL", alpha_vec=(0.25, 1.0), source="heuristic"),
                BlenderConfig(mode="confidence", gate_k=2.5, gate_tau=0.0, alpha_lo=0.1, alpha_hi=0.8)):
        data = cfg.to_dict()
        assert json.loads(json.dumps(data)) == data
        assert BlenderConfig.from_dict(data) == cfg
    data = BlenderConfig(mode="CHANNEL", alpha_vec=(0.25, 1.0), source="s").to_dict()
    assert data == {"mode": "CHANNEL", "alpha_vec": [0.25, 1.0], "alpha_vec_len": 2, "gate_k": 4.0,
                    "gate_tau": 0.2, "alpha_lo": 0.0, "alpha_hi": 1.0, "source": "s", "host_gradient": "blend"}
    with pytest.raises(ValueError, match="alpha_vec_len"):
        BlenderConfig.from_dict({**data, "alpha_vec_len": 3})
    old = BlenderConfig.from_dict({"mode": "residual", "future_key": 1})
    # A config recorded before host_gradient existed replays as it ran: host detached.
    assert old.mode is BlendMode.RESIDUAL and old.host_gradient == "detached" and old.detach_host
    with pytest.raises(ValueError, match="host_gradient"):
        BlenderConfig(host_gradient="sometimes")


def test_public_exports() -> None:
    assert set(kernels.__all__) >= {"BlendMode", "BlenderConfig", "BlendStats", "blend",
                                    "AlphaSchedule", "alpha_at"}
    for name in kernels.__all__:
        assert getattr(kernels, name) is not None
    fn: Callable[..., Tensor] = kernels.blend
    assert fn is blend
