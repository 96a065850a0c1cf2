"""Fused Triton blend kernels (WP-K4): same results as the eager reference, same gradients.

The kernel tests run on CUDA when there is a GPU, and otherwise on the CPU in Triton's
interpreter (``TRITON_INTERPRET=1`` from conftest, ``fused.on_cpu()`` for each of those
tests only), so CI checks the
kernels' results and gradients without a GPU; they are skipped only where Triton is not
installed. The eager path they compare against is ``blend(..., stats=BlendStats())``
(stats always take the eager path), which ``tests/test_blend.py`` checks against the SPEC
formulas. Tests of what only a GPU has (compiled variants, host syncs, pre-warm) need
CUDA. The tests at the top run anywhere.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import zlib
from typing import Iterator

import pytest
import torch
from torch import Tensor

from kasmina.kernels import BlenderConfig, BlendMode, BlendStats, blend
from kasmina.kernels import fused

MODES = list(BlendMode)
C = 6

# --------------------------------------------------------------------------- anywhere


def test_fused_source_never_references_compile_or_dynamo() -> None:
    tree = ast.parse(inspect.getsource(fused))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            assert node.attr not in {"compile", "_dynamo"}, ast.unparse(node)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any("_dynamo" in n or n == "compile" or "sqlalchemy" in n for n in names)


def test_fused_module_imports_triton_lazily() -> None:
    # Only inside functions: a CPU machine imports the module without Triton.
    tree = ast.parse(inspect.getsource(fused))
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.startswith("triton") for n in names)


def test_cpu_tensors_are_never_fused() -> None:
    x = torch.randn(2, 3)
    assert not fused.available(x)
    assert not fused.available()
    seed = torch.randn(2, C, requires_grad=True)
    out = blend(torch.randn(2, C), seed, torch.tensor(0.3))
    assert "Fused" not in type(out.grad_fn).__name__


def test_cpu_fused_path_needs_the_interpreter_and_is_scoped(monkeypatch: pytest.MonkeyPatch) -> None:
    eager = importlib.import_module("kasmina.kernels.blend")  # the package shadows it with a function
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        with fused.on_cpu():
            pass
    assert eager._FUSED_ON_CPU is False
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with fused.on_cpu():
        assert eager._FUSED_ON_CPU is True
    assert eager._FUSED_ON_CPU is False  # restored: no other test takes the fused path on the CPU


def test_prewarm_without_cuda_is_a_no_op() -> None:
    assert fused.prewarm("cpu") == 0


# --------------------------------------------------------------------------- GPU

_HAVE_TRITON = importlib.util.find_spec("triton") is not None
_CUDA = torch.cuda.is_available() and _HAVE_TRITON
#: Where the kernel tests run: the GPU, else the CPU in Triton's interpreter.
DEVICE = "cuda" if _CUDA else "cpu"
gpu = pytest.mark.skipif(not _CUDA, reason="needs a CUDA device and Triton "
                                           f"(cuda={torch.cuda.is_available()}, triton={_HAVE_TRITON})")
kernels = pytest.mark.skipif(not _HAVE_TRITON, reason="the fused kernels need Triton (not installed)")


@pytest.fixture(autouse=True)
def _interpreter_off_the_gpu(request: pytest.FixtureRequest) -> Iterator[None]:
    """Kernel tests without a GPU run in Triton's interpreter (conftest turned it on before
    Triton was imported); no other test takes the fused path on the CPU."""
    if DEVICE == "cpu" and request.node.get_closest_marker("kernel_test") is not None:
        with fused.on_cpu():
            yield
    else:
        yield

DTYPES = [torch.float32, torch.bfloat16]
# 1-D to 4-D; sizes chosen to not be multiples of the kernel's block (4096) or of 16.
# Past 4096 elements per row (a block spans at most two rows) and past 4096 channels too.
SHAPES = [(C,), (5000,), (5, C), (3, 5000), (3, C, 7), (4, C, 5, 3), (2, C, 37, 29),
          (2, C, 70, 71), (3, C, 61, 97), (3, C, 1500), (2, C, 3000)]


def _tol(dtype: torch.dtype) -> dict[str, float]:
    if dtype == torch.float32:
        return dict(rtol=1e-6, atol=1e-6)
    if DEVICE == "cpu":
        # Triton's interpreter converts fp32 to bf16 by truncation, where GPUs round to
        # nearest: its weights and outputs may be one bf16 step (2**-8 relative) off, which
        # on |host - seed| up to ~24 (the scaled tests) is up to 2**-3.3 absolute. fp32
        # above stays exact, so the kernels' logic is still checked to the last bit there.
        return dict(rtol=2 ** -6, atol=2 ** -3)
    return dict(rtol=1e-2, atol=1e-2)


def _config(mode: BlendMode, channels: int, **kw: float) -> BlenderConfig:
    vec = None
    if mode is BlendMode.CHANNEL:
        vec = tuple((0.13 + 0.37 * i) % 1.0 for i in range(channels))
    return BlenderConfig(mode=mode, alpha_vec=vec, **kw)  # type: ignore[arg-type]


def _is_fused(out: Tensor) -> bool:
    return out.grad_fn is not None and "FusedBlend" in type(out.grad_fn).__name__


def _pair(shape: tuple[int, ...], dtype: torch.dtype, cfg: BlenderConfig, alpha: Tensor,
          scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(fused out, eager out, fused seed grad, eager seed grad, host) for one blend call."""
    torch.manual_seed(zlib.crc32(repr((shape, str(dtype))).encode()))  # hash() of a str varies per run
    host = (torch.randn(shape, device=DEVICE) * scale).to(dtype).requires_grad_()
    seed = (torch.randn(shape, device=DEVICE) * scale).to(dtype)
    grad = torch.randn(shape, device=DEVICE).to(dtype)
    s1 = seed.clone().requires_grad_()
    s2 = seed.clone().requires_grad_()
    out = blend(host, s1, alpha, cfg)
    ref = blend(host, s2, alpha, cfg, stats=BlendStats())  # stats: always the eager path
    assert _is_fused(out) and not _is_fused(ref)
    out.backward(grad)
    ref.backward(grad)
    assert host.grad is None  # host detached: no gradient through either path
    return out, ref, s1.grad, s2.grad, host  # type: ignore[return-value]


@kernels
@pytest.mark.kernel_test
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_fused_matches_eager(mode: BlendMode, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    channels = shape[0] if len(shape) == 1 else shape[1]
    cfg = _config(mode, channels)
    for a in (0.0, 0.3, 0.5, 0.71, 1.0, 1.7, -0.4):
        alpha = torch.tensor(a, device=DEVICE)
        out, ref, g_fused, g_eager, _ = _pair(shape, dtype, cfg, alpha)
        assert out.dtype == dtype and out.shape == ref.shape and out.is_contiguous()
        torch.testing.assert_close(out, ref, **_tol(dtype))
        torch.testing.assert_close(g_fused, g_eager, **_tol(dtype))


@kernels
@pytest.mark.kernel_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_fused_gives_an_attached_host_its_share_like_eager(mode: BlendMode, dtype: torch.dtype) -> None:
    """``detach_host=False`` (a site whose host keeps learning while the seed blends): the
    host's gradient is (1 - w) x upstream (all of it under RESIDUAL), as eager computes it."""
    shape = (3, C, 5, 7)
    cfg = _config(mode, C)
    torch.manual_seed(7)
    host, seed = torch.randn(shape, device=DEVICE).to(dtype), torch.randn(shape, device=DEVICE).to(dtype)
    grad = torch.randn(shape, device=DEVICE).to(dtype)
    alpha = torch.tensor(0.37, device=DEVICE)
    results = []
    for stats in (None, BlendStats()):  # fused, then the eager reference (stats force eager)
        h, s = host.clone().requires_grad_(), seed.clone().requires_grad_()
        out = blend(h, s, alpha, cfg, stats=stats, detach_host=False)
        assert _is_fused(out) is (stats is None)
        out.backward(grad)
        results.append((out, h.grad, s.grad))
    (out, gh, gs), (ref, rh, rs) = results
    torch.testing.assert_close(out, ref, **_tol(dtype))
    torch.testing.assert_close(gs, rs, **_tol(dtype))
    torch.testing.assert_close(gh, rh, **_tol(dtype))
    if mode is BlendMode.RESIDUAL:
        assert torch.equal(gh, grad)


@kernels
@pytest.mark.kernel_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(C,), (5, C), (5, 1), (3, 1300), (2, C, 7), (2, 3, 5000, 2), (3, 700, 4, 4)],
                         ids=lambda s: "x".join(map(str, s)))
def test_fused_gate_margin_matches_eager(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    """CONFIDENCE's pre-pass: spatial mean (rows longer than a block), channels wider than a
    block, one channel (no runner-up), and ties for the top."""
    from kasmina.kernels.blend import _per_sample_margin as eager

    torch.manual_seed(zlib.crc32(repr((shape, str(dtype))).encode()))
    seed = (torch.randn(shape, device=DEVICE) * 3).to(dtype)
    torch.testing.assert_close(fused._per_sample_margin(seed), eager(seed, torch.float32), rtol=1e-5, atol=1e-5)
    if seed.dim() == 2 and shape[1] > 2:  # a tie for the top logit: the margin is exactly 0
        tied = seed.clone()
        tied[:, 1] = tied[:, 0] = tied.max() + 1
        assert torch.equal(fused._per_sample_margin(tied), torch.zeros(shape[0], device=DEVICE))
        assert torch.equal(eager(tied, torch.float32), torch.zeros(shape[0], device=DEVICE))


@kernels
@pytest.mark.kernel_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_confidence_bounds_and_gate_settings(dtype: torch.dtype) -> None:
    for kw in ({"alpha_lo": 0.2, "alpha_hi": 0.6}, {"gate_k": 12.0, "gate_tau": 0.05},
               {"gate_k": 0.0}, {"alpha_lo": 0.9, "alpha_hi": 0.9}):
        cfg = _config(BlendMode.CONFIDENCE, C, **kw)
        # scaled up so some samples are confident (large margin) and others are not
        out, ref, g1, g2, _ = _pair((8, C, 9, 11), dtype, cfg, torch.tensor(0.8, device=DEVICE), scale=3.0)
        torch.testing.assert_close(out, ref, **_tol(dtype))
        torch.testing.assert_close(g1, g2, **_tol(dtype))


@kernels
@pytest.mark.kernel_test
def test_alpha_dtypes_and_cpu_alpha() -> None:
    cfg = _config(BlendMode.CONVEX, C)
    for alpha in (torch.tensor(0.3, device=DEVICE, dtype=torch.float64),
                  torch.tensor(0.3, device=DEVICE, dtype=torch.bfloat16),
                  torch.tensor(0.3), torch.tensor(1, device=DEVICE)):
        for dtype in DTYPES:
            out, ref, g1, g2, _ = _pair((4, C, 5), dtype, cfg, alpha)
            torch.testing.assert_close(out, ref, **_tol(dtype))
            torch.testing.assert_close(g1, g2, **_tol(dtype))


@kernels
@pytest.mark.kernel_test
def test_nan_alpha_propagates_like_eager() -> None:
    for mode in MODES:
        cfg = _config(mode, C)
        h = torch.randn(3, C, 4, device=DEVICE)
        s = torch.randn(3, C, 4, device=DEVICE)
        nan = torch.tensor(float("nan"), device=DEVICE)
        out = blend(h, s, nan, cfg)
        ref = blend(h, s, nan, cfg, stats=BlendStats())
        torch.testing.assert_close(out, ref, equal_nan=True)


@gpu
def test_alpha_changes_without_recompiling() -> None:
    fused.prewarm("cuda")
    before = fused._compiled_variants()
    h = torch.randn(4, C, 17, 13, device=DEVICE)
    s = torch.randn(4, C, 17, 13, device=DEVICE)
    alpha = torch.zeros((), device=DEVICE)
    for mode in MODES:
        cfg = _config(mode, C)
        for step in range(5):
            alpha.fill_(step / 4)  # in place, as the executor updates its alpha buffer
            seed = s.clone().requires_grad_()
            out = blend(h, seed, alpha, cfg)
            assert _is_fused(out)
            torch.testing.assert_close(out, blend(h, s, alpha, cfg, stats=BlendStats()))
            out.sum().backward()
    # new alpha values and a new shape after prewarm: no new compiled variant
    assert fused._compiled_variants() == before or before is None


@kernels
@pytest.mark.kernel_test
def test_backward_uses_the_forward_alpha() -> None:
    # The executor updates alpha in place; a backward after that must use the forward's value.
    for mode in MODES:
        cfg = _config(mode, C)
        h = torch.randn(3, C, 5, device=DEVICE)
        s = torch.randn(3, C, 5, device=DEVICE)
        alpha = torch.tensor(0.25, device=DEVICE)
        s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
        out = blend(h, s1, alpha, cfg)
        ref = blend(h, s2, alpha, cfg, stats=BlendStats())
        alpha.fill_(0.9)
        out.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(s1.grad, s2.grad)


@gpu
def test_fused_blend_never_syncs_with_the_host() -> None:
    fused.prewarm("cuda")
    h = torch.randn(4, C, 8, 8, device=DEVICE)
    alpha = torch.tensor(0.4, device=DEVICE)
    cfgs = [_config(m, C) for m in MODES]
    for cfg in cfgs:  # warm-up: channel vectors are built once
        blend(h, torch.randn_like(h, requires_grad=True), alpha, cfg).sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for cfg in cfgs:
            seed = torch.randn_like(h, requires_grad=True)
            out = blend(h, seed, alpha, cfg)
            out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode(0)


@kernels
@pytest.mark.kernel_test
def test_inference_mode_and_no_grad() -> None:
    h = torch.randn(2, C, 3, device=DEVICE)
    s = torch.randn(2, C, 3, device=DEVICE, requires_grad=True)
    alpha = torch.tensor(0.6, device=DEVICE)
    for mode in MODES:
        cfg = _config(mode, C)
        ref = blend(h, s, alpha, cfg, stats=BlendStats()).detach()
        with torch.inference_mode():
            torch.testing.assert_close(blend(h, s, alpha, cfg), ref)
        with torch.no_grad():
            out = blend(h, s, alpha, cfg)
            assert not out.requires_grad
            torch.testing.assert_close(out, ref)


@kernels
@pytest.mark.kernel_test
def test_fallbacks_stay_eager() -> None:
    h = torch.randn(3, C, 4, device=DEVICE)
    s = torch.randn(3, C, 4, device=DEVICE, requires_grad=True)
    cfg = _config(BlendMode.CONVEX, C)
    alpha = torch.tensor(0.5, device=DEVICE)
    # non-contiguous seed, alpha that wants a gradient, channels on the last dim of a
    # (B, T, D) activation, float64 (a host that is not detached is fused: see above)
    assert not _is_fused(blend(h.transpose(1, 2), s.transpose(1, 2), alpha, cfg))
    a_grad = torch.tensor(0.5, device=DEVICE, requires_grad=True)
    out = blend(h, s, a_grad, cfg)
    assert not _is_fused(out)
    out.sum().backward()
    assert a_grad.grad is not None
    channel = BlenderConfig(mode="CHANNEL", alpha_vec=(0.5,) * 4)
    assert not _is_fused(blend(h, s, alpha, channel, channel_dim=-1))
    assert not _is_fused(blend(h.double(), s.double(), alpha, cfg))
    # errors are the eager path's
    with pytest.raises(ValueError, match="alpha_vec has"):
        blend(h, s, alpha, BlenderConfig(mode="CHANNEL", alpha_vec=(0.5,) * (C + 1)))
    with pytest.raises(ValueError, match="differ in shape"):
        fused.fused_blend(h, s[:2], alpha, cfg)


@gpu
def test_prewarm_compiles_every_variant_and_never_calls_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("torch.compile must not be used by Kasmina")

    monkeypatch.setattr(torch, "compile", refuse)
    assert fused.prewarm("cuda", (torch.float32, torch.bfloat16)) >= 2 * len(MODES)
    before = fused._compiled_variants()
    for dtype in DTYPES:
        for mode in MODES:
            h = torch.randn(3, 5, 7, 9, device=DEVICE, dtype=dtype)
            s = torch.randn(3, 5, 7, 9, device=DEVICE, dtype=dtype, requires_grad=True)
            alpha = torch.tensor(0.37, device=DEVICE)
            blend(h, s, alpha, _config(mode, 5)).sum().backward()
    if before is not None:
        assert fused._compiled_variants() == before
