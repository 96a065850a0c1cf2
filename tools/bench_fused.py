"""Micro-benchmark of the fused Triton blend kernels against eager PyTorch and copy bandwidth.

    python3 tools/bench_fused.py [--shape 64,256,56,56] [--dtypes float32,bfloat16]
                                 [--repeats 50] [--sweep] [--json PATH]

For each dtype and blend mode: fused vs eager blend, forward and forward+backward, with
``torch.lerp(..., out=)`` and a device copy (``dst.copy_(src)``) as one-pass bounds. Times
are GPU times: medians over batches of 10 back-to-back calls between CUDA events, each
batch queued behind a GPU sleep so launch overhead is hidden (synchronised after each). Achieved
bandwidth counts the minimal traffic: forward 3·N·size (host, seed read; out written),
4·N·size for CONFIDENCE (its per-sample gate reads the seed once more); backward adds
2·N·size (grad_out read, grad_seed written). ``%copy`` is that bandwidth over the copy's.
Needs CUDA and Triton; imports only ``kasmina.kernels``. Never calls ``torch.compile``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kasmina.kernels import BlenderConfig, BlendMode, blend  # noqa: E402
from kasmina.kernels import fused  # noqa: E402
from kasmina.kernels.blend import _per_sample_margin  # noqa: E402


def _median_us(fn: Callable[[], object], repeats: int, warmup: int = 3, batch: int = 10) -> float:
    """Median per-call GPU time: ``repeats`` batches of ``batch`` back-to-back calls, each batch
    between two CUDA events and followed by a synchronize. A GPU sleep queued before each
    batch lets the CPU enqueue the whole batch first, so Python and autograd launch overhead
    is not timed: the figure is the kernels' device time, what the bandwidth bound is about."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(20_000_000)  # ~10 ms of GPU time while the CPU enqueues the batch
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / batch)
    return statistics.median(times)


class _Eager:
    """Context: ``blend`` takes the eager path (the fused dispatch answers 'unavailable')."""

    def __enter__(self) -> None:
        self._saved = fused.available
        fused.available = lambda *t: False  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        fused.available = self._saved  # type: ignore[assignment]


def _config(mode: BlendMode, channels: int) -> BlenderConfig:
    vec = tuple((0.13 + 0.37 * i) % 1.0 for i in range(channels)) if mode is BlendMode.CHANNEL else None
    return BlenderConfig(mode=mode, alpha_vec=vec)


def bench_dtype(shape: tuple[int, ...], dtype: torch.dtype, repeats: int) -> dict:
    dev = torch.device("cuda")
    n = 1
    for d in shape:
        n *= d
    size = torch.empty((), dtype=dtype).element_size()
    gb = n * size / 1e9
    h = torch.randn(shape, device=dev, dtype=dtype)
    s = torch.randn(shape, device=dev, dtype=dtype)
    g = torch.randn(shape, device=dev, dtype=dtype)
    out = torch.empty_like(h)
    alpha = torch.tensor(0.37, device=dev)
    a_t = alpha.to(dtype)
    res: dict = {"dtype": str(dtype).removeprefix("torch."), "shape": list(shape), "numel": n}

    copy_us = _median_us(lambda: out.copy_(s), repeats)
    copy_gbps = 2 * gb / (copy_us * 1e-6)
    lerp_us = _median_us(lambda: torch.lerp(h, s, a_t, out=out), repeats)
    res["bound"] = {"copy_us": copy_us, "copy_gbps": copy_gbps, "lerp_fwd_us": lerp_us,
                    "lerp_pct_copy": 100 * (3 * gb / (lerp_us * 1e-6)) / copy_gbps}
    seed = s.clone().requires_grad_()

    def fwd() -> None:
        with torch.no_grad():
            blend(h, seed, alpha, cfg)

    def fwdbwd() -> None:
        seed.grad = None
        blend(h, seed, alpha, cfg).backward(g)

    modes: dict = {}
    for mode in BlendMode:
        cfg = _config(mode, shape[1] if len(shape) > 1 else shape[0])
        probe = blend(h, seed, alpha, cfg)
        assert "FusedBlend" in type(probe.grad_fn).__name__, "fused path not taken"
        del probe
        fwd_bytes = (4 if mode is BlendMode.CONFIDENCE else 3) * gb
        bwd_bytes = fwd_bytes + 2 * gb
        row: dict = {}
        for impl in ("fused", "eager"):
            if impl == "eager":
                with _Eager():
                    f_us, fb_us = _median_us(fwd, repeats), _median_us(fwdbwd, repeats)
            else:
                f_us, fb_us = _median_us(fwd, repeats), _median_us(fwdbwd, repeats)
            row[impl] = {"fwd_us": f_us, "fwdbwd_us": fb_us,
                         "fwd_gbps": fwd_bytes / (f_us * 1e-6), "fwdbwd_gbps": bwd_bytes / (fb_us * 1e-6),
                         "fwd_pct_copy": 100 * fwd_bytes / (f_us * 1e-6) / copy_gbps,
                         "fwdbwd_pct_copy": 100 * bwd_bytes / (fb_us * 1e-6) / copy_gbps}
        if mode is BlendMode.CONFIDENCE:
            with torch.no_grad():
                row["gate_us"] = _median_us(lambda: _per_sample_margin(s, torch.float32), repeats)
        modes[mode.value] = row
    res["modes"] = modes
    return res


SWEEP = [(b, w, st) for b, w in ((1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 8), (8192, 8))
         for st in (False, True)]


def sweep(shape: tuple[int, ...], dtype: torch.dtype, repeats: int) -> list[dict]:
    """Forward time of CONVEX and CHANNEL per (BLOCK, num_warps, streaming hints)."""
    dev = torch.device("cuda")
    h = torch.randn(shape, device=dev, dtype=dtype)
    s = torch.randn(shape, device=dev, dtype=dtype)
    alpha = torch.tensor(0.37, device=dev)
    size = h.element_size()
    saved = dict(fused._LAUNCH)
    rows = []
    try:
        for block, warps, stream in SWEEP:
            fused._LAUNCH[size] = (block, warps, stream)
            row = {"dtype": str(dtype).removeprefix("torch."), "block": block, "warps": warps,
                   "stream": stream}
            for mode in (BlendMode.CONVEX, BlendMode.CHANNEL):
                cfg = _config(mode, shape[1])
                with torch.no_grad():
                    row[mode.value] = _median_us(lambda: blend(h, s, alpha, cfg), repeats)
            rows.append(row)
    finally:
        fused._LAUNCH.clear()
        fused._LAUNCH.update(saved)
    return rows


def _table(results: list[dict]) -> str:
    lines = []
    for r in results:
        b = r["bound"]
        lines.append(f"\n{r['dtype']} {tuple(r['shape'])}: copy {b['copy_us']:.1f} us = {b['copy_gbps']:.0f} GB/s; "
                     f"torch.lerp(out=) fwd {b['lerp_fwd_us']:.1f} us = {b['lerp_pct_copy']:.1f} % of copy")
        lines.append(f"{'mode':<11} {'impl':<6} {'fwd us':>9} {'fwd GB/s':>9} {'fwd %copy':>9} "
                     f"{'f+b us':>9} {'f+b GB/s':>9} {'f+b %copy':>9}")
        for mode, row in r["modes"].items():
            for impl in ("fused", "eager"):
                x = row[impl]
                lines.append(f"{mode:<11} {impl:<6} {x['fwd_us']:9.1f} {x['fwd_gbps']:9.0f} {x['fwd_pct_copy']:9.1f} "
                             f"{x['fwdbwd_us']:9.1f} {x['fwdbwd_gbps']:9.0f} {x['fwdbwd_pct_copy']:9.1f}")
            if "gate_us" in row:
                lines.append(f"{'':<11} gate (eager margin alone): {row['gate_us']:.1f} us")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="64,256,56,56")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--repeats", type=int, default=15, help="timed batches of 10 calls")
    p.add_argument("--sweep", action="store_true", help="also time (BLOCK, num_warps) choices")
    p.add_argument("--json", default=None, help="write the results as JSON to this path")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_fused: needs a CUDA device", file=sys.stderr)
        return 2
    shape = tuple(int(x) for x in args.shape.split(","))
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"prewarm: {fused.prewarm('cuda', tuple(dtypes))} variants launched")
    results = [bench_dtype(shape, dt, args.repeats) for dt in dtypes]
    print(_table(results))
    out = {"device": torch.cuda.get_device_name(), "launch": dict(fused._LAUNCH), "results": results}
    if args.sweep:
        rows = []
        for dt in dtypes:
            part = sweep(shape, dt, args.repeats)
            rows += part
            best = min(part, key=lambda r: r["CONVEX"] + r["CHANNEL"])
            fused._LAUNCH[torch.empty((), dtype=dt).element_size()] = (best["block"], best["warps"], best["stream"])
        print("\nsweep (fwd us, batched):")
        for r in rows:
            print(f"  {r['dtype']:<9} BLOCK={r['block']:<5} warps={r['warps']:<3} stream={r['stream']!s:<5} "
                  f"CONVEX {r['CONVEX']:8.1f}  CHANNEL {r['CHANNEL']:8.1f}")
        print(f"\nbest launch per element size: {fused._LAUNCH}; full table with it:")
        best_results = [bench_dtype(shape, dt, args.repeats) for dt in dtypes]
        print(_table(best_results))
        out["sweep"] = rows
        out["best"] = {"launch": dict(fused._LAUNCH), "results": best_results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
