"""The Kasmina performance harness (WP-K4): ``kasmina bench`` and ``tools/bench_kasmina.py``.

What it measures, all in one run, medians over ``repeats`` after a warm-up:

* **blend**: per blend mode, ``blend(h, s, alpha, config)`` forward, and forward then
  ``.backward(grad)`` with the seed requiring grad (the host is detached inside ``blend``, so
  it gets no gradient). CONVEX is always measured: it is the reference of every ratio.
* **bound**: the one-pass limit measured in the same run: ``torch.lerp(h, s, a, out=buf)``
  (the best an eager CONVEX forward can do) and the copy bandwidth of ``dst.copy_(src)``.
* **isolation**: a training step (forward, backward, SGD step, ``Executor.step()``) of the
  executor benchmark model with a seed in BLENDING, with the isolation gradient hooks on and
  off, interleaved.
* **fetch**: 200 fetches of ``zero_linear`` for a ``Linear(256, 256)`` site through a
  :class:`~kasmina.catalogue.Catalogue` (one miss, then hits), from its ``stats()``.
* **store** (optional): the event-store throughput of :mod:`kasmina.bench.store`.

Budgets are reported (``budgets``, the summary line's ok/OVER) and never fail anything.
Nothing here calls ``torch.compile``.

Timing: every contender is timed round-robin (one sample of each per repeat), so a drift of
the machine hits them all alike. A sample is ``inner`` back-to-back calls, with ``inner``
chosen after the warm-up so that a sample lasts at least ~1 ms on CPU (~0.2 ms on CUDA):
otherwise small shapes measure the timer. On CUDA a sample is bracketed by CUDA events;
elsewhere the device is synchronised around ``time.perf_counter``.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from kasmina.bench.flags import DEFAULT_SHAPE
from torch import Tensor, nn

__all__ = ["MODES", "DTYPES", "check", "parse_alpha_c", "parse_shape", "render", "run", "summary_line"]

MODES = ("CONVEX", "RESIDUAL", "CHANNEL", "CONFIDENCE")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALPHA = 0.5                # the blend weight every mode is timed with
ISOLATION_BATCH = 32       # batch of the executor benchmark model (3x32x32 inputs)
ISOLATION_SITE = "features.2"
FETCH_COUNT = 200

# Budgets (the WP-K4 list). Ratios are forward times.
CPU_RATIO_BUDGETS = {"RESIDUAL": 1.05, "CONFIDENCE": 1.05, "CHANNEL": 1.15}
CONVEX_VS_LERP_BUDGET = 1.10
ISOLATION_BUDGET = 1.10
CUDA_FWD_OF_COPY = 0.90
CUDA_FWDBWD_OF_BOUND = 0.80


# -- options -----------------------------------------------------------------------------------

def parse_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"64,256,16,16"`` (or a sequence) -> a shape of at least 2 positive dims (N, C, ...)."""
    try:
        dims = tuple(int(d) for d in (text.replace("x", ",").split(",") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        raise ValueError(f"shape must be comma-separated whole numbers such as 64,256,16,16, got {text!r}") from None
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise ValueError(f"shape needs at least 2 dims (N, C, ...), all >= 1, got {text!r}")
    if math.prod(dims) > 2**31 - 1:
        raise ValueError(f"shape {dims} has more than 2**31 - 1 elements")
    return dims


def parse_alpha_c(text: str | Sequence[float] | None) -> tuple[float, ...] | None:
    """CSV (``0.5,1,0.25``) or JSON (``[0.5, 1, 0.25]``) channel weights, each in [0, 1].

    One value is repeated for every channel; None means 0.5 for every channel.
    """
    if text is None:
        return None
    values: Any = text
    if isinstance(text, str):
        stripped = text.strip()
        try:
            values = json.loads(stripped) if stripped.startswith("[") else [v for v in stripped.split(",") if v.strip()]
        except json.JSONDecodeError:
            raise ValueError(f"alpha-c is not valid JSON: {text!r}") from None
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"alpha-c must be numbers (CSV or a JSON list), got {text!r}") from None
    if not out:
        raise ValueError("alpha-c is empty")
    if any(not math.isfinite(v) or not 0.0 <= v <= 1.0 for v in out):
        raise ValueError(f"alpha-c values must be finite and in [0, 1], got {text!r}")
    return out


def _modes(blend_mode: str) -> list[str]:
    mode = str(blend_mode).upper()
    if mode == "ALL":
        return list(MODES)
    if mode not in MODES:
        raise ValueError(f"blend mode must be one of {', '.join(m.lower() for m in MODES)} or all, got {blend_mode!r}")
    return ["CONVEX"] if mode == "CONVEX" else ["CONVEX", mode]


def check(*, isolation: str = "on", blend_mode: str = "all", alpha_c: Any = None, gate_k: float = 4.0,
          gate_tau: float = 0.2, device: str = "cpu", dtype: str = "float32",
          shape: str | Sequence[int] = DEFAULT_SHAPE, repeats: int = 50) -> dict[str, Any]:
    """Validate and normalise the options; ``ValueError`` with a one-line message if one is bad."""
    from kasmina.kernels.blend import BlenderConfig

    if isolation not in ("on", "off"):
        raise ValueError(f"isolation must be on or off, got {isolation!r}")
    modes = _modes(blend_mode)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    dims = parse_shape(shape)
    vec = parse_alpha_c(alpha_c)
    channels = dims[1]
    if vec is None:
        vec = (0.5,) * channels
    elif len(vec) == 1:
        vec = vec * channels
    elif len(vec) != channels:
        raise ValueError(f"alpha-c has {len(vec)} values but the shape has {channels} channels (dim 1)")
    for name, value in (("gate-k", gate_k), ("gate-tau", gate_tau)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a whole number >= 1, got {repeats!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    if dev.type not in ("cpu", "cuda") and not _device_works(dev):
        raise ValueError(f"device {device!r} is not usable here")
    configs = {
        "CONVEX": BlenderConfig("CONVEX"),
        "RESIDUAL": BlenderConfig("RESIDUAL"),
        "CHANNEL": BlenderConfig("CHANNEL", alpha_vec=vec),
        "CONFIDENCE": BlenderConfig("CONFIDENCE", gate_k=float(gate_k), gate_tau=float(gate_tau)),
    }
    return {"isolation": isolation, "modes": modes, "alpha_c": vec, "gate_k": float(gate_k),
            "gate_tau": float(gate_tau), "device": dev, "dtype": DTYPES[dtype], "dtype_name": dtype,
            "shape": dims, "repeats": repeats, "configs": {m: configs[m] for m in modes}}


def _device_works(dev: torch.device) -> bool:
    try:
        torch.zeros(1, device=dev)
    except Exception:  # noqa: BLE001 - any failure means the device cannot be used
        return False
    return True


# -- timing ------------------------------------------------------------------------------------

def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def _sample_us(fn: Callable[[], Any], dev: torch.device, inner: int) -> float:
    """Microseconds per call of ``inner`` back-to-back calls of ``fn``."""
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1000.0 / inner
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    _sync(dev)
    return (time.perf_counter() - t0) * 1e6 / inner


def _time_round_robin(contenders: Mapping[str, Callable[[], Any]], dev: torch.device, repeats: int,
                      warmup: int = 3) -> dict[str, float]:
    """Median microseconds per call of each contender, timed interleaved (see the module doc)."""
    target_us = 200.0 if dev.type == "cuda" else 1000.0
    inner: dict[str, int] = {}
    for name, fn in contenders.items():
        for _ in range(warmup):
            fn()
        one = min(_sample_us(fn, dev, 1) for _ in range(2))
        inner[name] = max(1, min(1000, math.ceil(target_us / max(one, 1e-3))))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            samples[name].append(_sample_us(fn, dev, inner[name]))
    return {name: statistics.median(values) for name, values in samples.items()}


# -- blend -------------------------------------------------------------------------------------

def _blend_bytes(mode: str, numel: int, element_size: int) -> tuple[int, int]:
    """Minimal memory traffic (bytes) of one forward and of one forward+backward of ``mode``.

    Forward: read h, read s, write out = 3 x numel x element size (the alpha scalar, channel
    vector or per-sample gate are negligible). CONFIDENCE reads the seed once more for its
    per-sample gate (a reduction that must finish before the blend can start): 4 x.
    Backward (the host is detached and alpha needs no gradient, so only the seed gets one):
    read grad_out, write grad_seed = 2 x more. Forward+backward: 5 x (CONFIDENCE 6 x).
    """
    fwd = (4 if mode == "CONFIDENCE" else 3) * numel * element_size
    return fwd, fwd + 2 * numel * element_size


def _bench_blend(opts: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from kasmina.kernels.blend import blend

    dev, dtype, shape = opts["device"], opts["dtype"], opts["shape"]
    gen = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn(shape, generator=gen).to(device=dev, dtype=dtype)
    s = torch.randn(shape, generator=gen).to(device=dev, dtype=dtype)
    grad = torch.randn(shape, generator=gen).to(device=dev, dtype=dtype)
    s_grad = s.clone().requires_grad_(True)
    alpha = torch.tensor(ALPHA, device=dev, dtype=torch.float32)  # a 0-d device tensor, as the executor keeps it
    a_bound = torch.tensor(ALPHA, device=dev, dtype=dtype)
    out = torch.empty_like(h)
    src, dst = torch.empty_like(h).copy_(h), torch.empty_like(h)

    contenders: dict[str, Callable[[], Any]] = {
        "bound_lerp": lambda: torch.lerp(h, s, a_bound, out=out),
        "copy": lambda: dst.copy_(src),
    }
    for mode, cfg in opts["configs"].items():
        def fwd(cfg: Any = cfg) -> Tensor:
            return blend(h, s, alpha, cfg)

        def fwdbwd(cfg: Any = cfg) -> None:
            s_grad.grad = None
            blend(h, s_grad, alpha, cfg).backward(grad)

        contenders[f"{mode}:fwd"] = fwd
        contenders[f"{mode}:fwdbwd"] = fwdbwd
    times = _time_round_robin(contenders, dev, opts["repeats"])

    numel, esize = h.numel(), h.element_size()
    copy_bytes = 2 * numel * esize  # dst.copy_(src): read src, write dst
    copy_gbps = copy_bytes / (times["copy"] * 1e-6) / 1e9
    bound = {"lerp_fwd_us": times["bound_lerp"], "copy_us": times["copy"], "copy_gbps": copy_gbps,
             "lerp_gbps": 3 * numel * esize / (times["bound_lerp"] * 1e-6) / 1e9}
    convex_fwd, convex_fwdbwd = times["CONVEX:fwd"], times["CONVEX:fwdbwd"]
    result: dict[str, Any] = {}
    for mode in opts["configs"]:
        fwd_us, fwdbwd_us = times[f"{mode}:fwd"], times[f"{mode}:fwdbwd"]
        fwd_bytes, fwdbwd_bytes = _blend_bytes(mode, numel, esize)
        fwd_gbps = fwd_bytes / (fwd_us * 1e-6) / 1e9
        fwdbwd_gbps = fwdbwd_bytes / (fwdbwd_us * 1e-6) / 1e9
        result[mode] = {
            "fwd_us": fwd_us,
            "fwdbwd_us": fwdbwd_us,
            "ratio_vs_convex": fwd_us / convex_fwd,
            "fwdbwd_ratio_vs_convex": fwdbwd_us / convex_fwdbwd,
            "ratio_vs_bound": fwd_us / times["bound_lerp"],
            "fwd_bytes": fwd_bytes,
            "fwdbwd_bytes": fwdbwd_bytes,
            "fwd_gbps": fwd_gbps,
            "fwdbwd_gbps": fwdbwd_gbps,
            "fwd_of_copy": fwd_gbps / copy_gbps,        # achieved fraction of copy bandwidth
            "fwdbwd_of_bound": fwdbwd_gbps / copy_gbps,  # = (fwdbwd_bytes / copy bandwidth) / fwdbwd_us
        }
    return result, bound


# -- isolation ---------------------------------------------------------------------------------

def _bench_isolation(opts: Mapping[str, Any]) -> dict[str, Any]:
    """Training step of the executor benchmark model, isolation hooks on vs off, interleaved.

    On CPU it runs on one thread, as the executor benchmark's step overhead does: on a shared
    machine two threads make a step swing by tens of percent, drowning the hooks' cost.
    """
    from kasmina.bench.executor import blending_executor

    dev: torch.device = opts["device"]
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ex, model, opt, x, y = blending_executor(Path(tmp), dev, ISOLATION_BATCH)
            try:
                return _isolation_steps(ex, model, opt, x, y, dev, opts["repeats"], opts["isolation"] == "on")
            finally:
                ex.close()
    finally:
        torch.set_num_threads(threads)


def _hooks(ex: Any, on: bool) -> None:
    # The executor has no switch for its isolation hooks (they are part of the seed's
    # safety), so closing (or re-opening) the site's IsolationMonitor is the benchmark's
    # only way to turn them off. Looked up every time: the executor may replace it.
    monitor = ex._runtime[ISOLATION_SITE].monitor
    if monitor is None:
        raise RuntimeError(f"the seed at {ISOLATION_SITE} has no isolation monitor (is it in BLENDING?)")
    if on:
        monitor.open()
    else:
        monitor.close()


def _isolation_steps(ex: Any, model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                     dev: torch.device, repeats: int, with_on: bool) -> dict[str, Any]:
    from kasmina.bench.executor import train_step

    def step() -> None:
        train_step(ex, model, opt, x, y)

    def timed(on: bool) -> float:
        _hooks(ex, on)
        return _sample_us(step, dev, 1)

    for i in range(6):  # warm-up, both ways
        timed(with_on and i % 2 == 0)
    off: list[float] = []
    on: list[float] = []
    for i in range(repeats):  # interleaved, alternating which goes first
        order = (True, False) if i % 2 == 0 else (False, True)
        for hooks_on in order:
            if hooks_on and not with_on:
                continue
            (on if hooks_on else off).append(timed(hooks_on))
    stage = ex.seed(ISOLATION_SITE).stage
    _hooks(ex, True)  # leave the executor as it was
    off_us = statistics.median(off)
    on_us = statistics.median(on) if on else None
    return {"off_us": off_us, "on_us": on_us, "overhead_ratio": None if on_us is None else on_us / off_us,
            "batch": ISOLATION_BATCH, "stage": stage}


# -- fetch -------------------------------------------------------------------------------------

def _bench_fetch(opts: Mapping[str, Any]) -> dict[str, Any]:
    from kasmina.catalogue import Catalogue

    dev, dtype = opts["device"], opts["dtype"]
    site = nn.Linear(256, 256).to(device=dev, dtype=dtype)
    budget_ms = Catalogue().latency_budget_ms
    # A latency budget no fetch can exceed: a slow fetch (a busy machine) is a figure to
    # report here, not a failure that would end the benchmark (zero_linear is its own fallback).
    catalogue = Catalogue(latency_budget_ms=1e9)
    over = 0
    for i in range(FETCH_COUNT):  # the first is a miss, the rest hit the device cache
        fetched = catalogue.fetch("zero_linear", site, device=dev, dtype=dtype,
                                  generator=torch.Generator(device="cpu").manual_seed(i))
        over += fetched.latency_ms > budget_ms
        del fetched
    stats = catalogue.stats()
    return {"mean_ms": stats["fetch_latency_ms_mean"], "p95_ms": stats["fetch_latency_ms_p95"],
            "hit_rate": stats["hit_rate"], "fetches": stats["fetches"], "fallbacks": stats["fallbacks"],
            "budget_ms": budget_ms, "over_budget": over}


# -- the run -----------------------------------------------------------------------------------

def run(*, isolation: str = "on", blend_mode: str = "all", alpha_c: Any = None, gate_k: float = 4.0,
        gate_tau: float = 0.2, device: str = "cpu", dtype: str = "float32",
        shape: str | Sequence[int] = DEFAULT_SHAPE, repeats: int = 50, store: bool = False) -> dict[str, Any]:
    """Run the harness; returns a JSON-ready dict (see the module docstring)."""
    opts = check(isolation=isolation, blend_mode=blend_mode, alpha_c=alpha_c, gate_k=gate_k, gate_tau=gate_tau,
                 device=device, dtype=dtype, shape=shape, repeats=repeats)
    dev: torch.device = opts["device"]
    started = time.perf_counter()
    blend_result, bound = _bench_blend(opts)
    result: dict[str, Any] = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
        "dtype": opts["dtype_name"],
        "shape": list(opts["shape"]),
        "repeats": opts["repeats"],
        "config": {"blend_mode": blend_mode, "isolation": isolation, "alpha": ALPHA, "gate_k": opts["gate_k"],
                   "gate_tau": opts["gate_tau"], "alpha_c": list(opts["alpha_c"]), "threads": torch.get_num_threads(),
                   "torch": torch.__version__},
        "blend": blend_result,
        "bound": bound,
        "isolation": _bench_isolation(opts),
        "fetch": _bench_fetch(opts),
    }
    if store:
        from kasmina.bench import store as bench_store

        result["store"] = bench_store.run(backends=("sqlite",), events=2000, long_seed=2000)["store"]
    result["budgets"] = _budgets(result, dev)
    result["seconds"] = time.perf_counter() - started
    return result


def _budgets(result: Mapping[str, Any], dev: torch.device) -> list[dict[str, Any]]:
    budgets: list[dict[str, Any]] = []

    def at_most(name: str, value: float | None, limit: float) -> None:
        if value is not None:
            budgets.append({"name": name, "value": value, "target": f"<= {limit:.2f}", "ok": value <= limit})

    def at_least(name: str, value: float, floor: float) -> None:
        budgets.append({"name": name, "value": value, "target": f">= {floor:.2f}", "ok": value >= floor})

    blend_result = result["blend"]
    if dev.type == "cuda":
        for mode, entry in blend_result.items():
            at_least(f"{mode}_fwd_of_copy_bw", entry["fwd_of_copy"], CUDA_FWD_OF_COPY)
            at_least(f"{mode}_fwdbwd_of_bound", entry["fwdbwd_of_bound"], CUDA_FWDBWD_OF_BOUND)
    else:
        for mode, limit in CPU_RATIO_BUDGETS.items():
            if mode in blend_result:
                at_most(f"{mode}_fwd_vs_CONVEX", blend_result[mode]["ratio_vs_convex"], limit)
        at_most("CONVEX_fwd_vs_lerp", blend_result["CONVEX"]["ratio_vs_bound"], CONVEX_VS_LERP_BUDGET)
    at_most("isolation_overhead", result["isolation"]["overhead_ratio"], ISOLATION_BUDGET)
    return budgets


# -- output ------------------------------------------------------------------------------------

def _f(value: Any, digits: int = 1, grouped: bool = True) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}" if grouped else f"{value:.{digits}f}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)) for row in rows]


def render(result: Mapping[str, Any]) -> str:
    """The result as a readable plain-text report."""
    shape = "x".join(str(d) for d in result["shape"])
    bound = result["bound"]
    lines = [f"Kasmina benchmark: {result['device_name']} ({result['device']}), {result['dtype']}, shape {shape}, "
             f"medians of {result['repeats']} repeats, {result.get('seconds', 0):.1f} s", ""]
    rows = [("blend mode", "fwd us", "fwd+bwd us", "fwd/CONVEX", "fwdbwd/CONVEX", "fwd/lerp", "fwd GB/s",
             "fwd+bwd GB/s")]
    for mode, e in result["blend"].items():
        rows.append((mode, _f(e["fwd_us"]), _f(e["fwdbwd_us"]), _f(e["ratio_vs_convex"], 3),
                     _f(e["fwdbwd_ratio_vs_convex"], 3), _f(e["ratio_vs_bound"], 3), _f(e["fwd_gbps"]),
                     _f(e["fwdbwd_gbps"])))
    rows.append(("lerp(out=) bound", _f(bound["lerp_fwd_us"]), "", "", "", "1.000", _f(bound["lerp_gbps"]), ""))
    rows.append(("copy_", _f(bound["copy_us"]), "", "", "", "", _f(bound["copy_gbps"]), ""))
    lines += _table(rows)
    lines += ["", "(GB/s = minimal traffic / time: fwd 3 x numel x element size, CONFIDENCE 4 x; fwd+bwd 2 x more; "
                  "copy = read + write)", ""]
    iso = result["isolation"]
    lines.append(f"isolation: training step {_f(iso['off_us'])} us with hooks off, {_f(iso['on_us'])} us on, "
                 f"overhead {_f(iso['overhead_ratio'], 3)}x (batch {iso['batch']}, seed {iso['stage']})")
    fetch = result["fetch"]
    lines.append(f"fetch: {fetch['fetches']} fetches of zero_linear, mean {_f(fetch['mean_ms'], 3)} ms, "
                 f"p95 {_f(fetch['p95_ms'], 3)} ms, cache hit rate {_f(100 * fetch['hit_rate'], 1)} %, "
                 f"{fetch['over_budget']} over the catalogue's {_f(fetch['budget_ms'], 0)} ms budget")
    if "store" in result:
        for name, entry in result["store"].items():
            if "error" in entry:
                lines.append(f"store {name}: error {entry['error']}")
            else:
                lines.append(f"store {name}: single {_f(entry.get('append_single_per_s'), 0)}/s, batched "
                             f"{_f(entry.get('append_batch_per_s'), 0)}/s, replay {_f(entry.get('replay_per_s'), 0)}/s")
    lines += ["", "budgets (reported, never enforced):"]
    for b in result["budgets"]:
        lines.append(f"  {'ok  ' if b['ok'] else 'OVER'}  {b['name']}: {_f(b['value'], 3)} (target {b['target']})")
    return "\n".join(lines)


def summary_line(result: Mapping[str, Any]) -> str:
    """One line for CI logs: key figures, then every budget as ok/OVER (never a failure).

    ``bench kasmina (DEVICE DTYPE SHAPE): MODE FWD/FWDBWD us ...; lerp US us copy GBPS GB/s;
    isolation RATIO x; fetch MEAN ms p95 P95 ms hit RATE; budgets K/N ok: NAME VALUE ok|OVER, ...``
    """
    def n(value: Any, digits: int = 1) -> str:
        return _f(value, digits, grouped=False)

    shape = "x".join(str(d) for d in result["shape"])
    modes = " ".join(f"{m} {n(e['fwd_us'])}/{n(e['fwdbwd_us'])}us" for m, e in result["blend"].items())
    iso, fetch, bound = result["isolation"], result["fetch"], result["bound"]
    iso_text = (f"isolation {n(iso['overhead_ratio'], 3)}x" if iso.get("overhead_ratio") is not None
                else f"isolation off-only {n(iso['off_us'])}us")
    budgets = result["budgets"]
    verdicts = ", ".join(f"{b['name']} {n(b['value'], 3)} {'ok' if b['ok'] else 'OVER'}" for b in budgets)
    passed = sum(1 for b in budgets if b["ok"])
    return (f"bench kasmina ({result['device']} {result['dtype']} {shape}): {modes}; "
            f"lerp {n(bound['lerp_fwd_us'])}us copy {n(bound['copy_gbps'])}GB/s; {iso_text}; "
            f"fetch {n(fetch['mean_ms'], 3)}ms p95 {n(fetch['p95_ms'], 3)}ms hit {n(fetch['hit_rate'], 3)}; "
            f"budgets {passed}/{len(budgets)} ok: {verdicts}")

