"""Executor benchmark: what Kasmina costs a training loop, measured side by side.

* **step overhead**: one training step (forward, backward, optimizer step) of a small CNN
  whose site holds a seed in BLENDING, wrapped by :class:`kasmina.Executor` (plus its
  ``step()``), against the same model with the same seed hand-wired (the same blend math,
  no executor). Rounds are interleaved and the medians compared. Budget: <= 1.05x.
  ResNet-18 and a tiny GPT-2 (``--model``): :mod:`kasmina.bench.architectures`.
* **handle**: ``Executor.handle`` of a signed command including its durable append on
  SQLite (``synchronous=FULL``): pause / resume commands on a training seed. Budget: <= 2 ms median.
* **verify**: ``Verifier.check`` (HMAC-SHA256 + nonce + freshness) alone. Budget: < 0.5 ms.
* **probe memory**: bytes autograd keeps for backward during a grad-enabled forward of a
  batch, against a SHADOWING probe (``run_probe``, under ``inference_mode``) of the same
  batch; on CUDA also the peak allocated memory of each.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SECRET = b"bench-secret"
STEP_BUDGET = 1.05
HANDLE_BUDGET_MS = 2.0
VERIFY_BUDGET_MS = 0.5


class BenchNet(nn.Module):
    """A small CNN, big enough that a step is not all Python overhead."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _HandWired(nn.Module):
    """The site with its seed wired in by hand: what the executor's BLENDING path computes
    (the host keeps its share of the gradient, the seed's input is detached)."""

    def __init__(self, host: nn.Module, seed: nn.Module, alpha: float) -> None:
        super().__init__()
        self.host, self.seed = host, seed
        self.register_buffer("alpha", torch.tensor(alpha))

    def forward(self, x: Tensor) -> Tensor:
        return torch.lerp(self.host(x), self.seed(x.detach()), self.alpha)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(first: Callable[[], Any], second: Callable[[], Any], device: torch.device, *, repeats: int,
                warmup: int) -> tuple[list[float], list[float]]:
    """Seconds per call of each, after a warm-up, in rounds that alternate which goes first
    (so a slow patch of a shared machine hits both alike)."""
    for _ in range(warmup):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats):
        order = (1, 0) if i % 2 else (0, 1)
        for which in order:
            times[which].append(timed((first, second)[which], device))
    return times


def train_step(ex: Any, model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
               metrics: dict[str, float] | None = None) -> None:
    """One step of the benchmark loop: forward, backward, optimizer step, ``Executor.step``."""
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    ex.step(metrics=metrics)


def blending_executor(workdir: Path, device: torch.device, batch: int, annotations: dict[str, str] | None = None,
                      ) -> tuple[Any, nn.Module, Any, Tensor, Tensor]:
    """A BenchNet wrapped by an executor whose seed at ``features.2`` is in a long BLENDING."""
    import kasmina
    from kasmina import commands
    from kasmina.security import sign

    torch.manual_seed(0)
    model = BenchNet().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ex = kasmina.Executor(model, sites=["features.2"], db=f"sqlite:///{workdir / 'bench.db'}", secret=SECRET,
                          optimizer=opt)
    params = {"germinated_steps": 1, "training_steps": 1, "blend_steps": 1_000_000}
    result = ex.handle(sign(commands.germinate("features.2", "conv_adapter", parameters=params,
                                               annotations=annotations), SECRET))
    if not result.accepted:
        raise RuntimeError(f"germination refused: {result}")
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    for _ in range(3):
        train_step(ex, model, opt, x, y, metrics={"val_loss": 1.0})
    if ex.seed("features.2").stage != "BLENDING":
        raise RuntimeError(f"seed did not reach BLENDING: {ex.seed('features.2')}")
    return ex, model, opt, x, y


def step_overhead(*, device: str = "cpu", batch: int = 32, repeats: int = 80, warmup: int = 10) -> dict[str, Any]:
    """Wrapped (executor) vs hand-wired training step with a seed in BLENDING.

    On CPU the measurement runs on one thread: on a small shared VM two threads make the
    step time swing by tens of percent between rounds, which drowns a sub-millisecond cost.
    """
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _step_overhead(dev, batch, repeats, warmup)
    finally:
        torch.set_num_threads(threads)


def _step_overhead(dev: torch.device, batch: int, repeats: int, warmup: int) -> dict[str, Any]:
    device = dev.type
    with tempfile.TemporaryDirectory() as tmp:
        ex, model, opt, x, y = blending_executor(Path(tmp), dev, batch)
        site = ex.sites["features.2"]
        alpha = ex.seed("features.2").alpha
        plain = BenchNet().to(dev)
        plain.load_state_dict({k.replace("base_layer.", ""): v for k, v in model.state_dict().items()
                               if "seed." not in k}, strict=False)
        plain.features[2] = _HandWired(plain.features[2], site.seed, alpha)
        plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01)

        def wrapped_step() -> None:
            train_step(ex, model, opt, x, y)

        def wired_step() -> None:
            loss = F.cross_entropy(plain(x), y)
            plain_opt.zero_grad(set_to_none=True)
            loss.backward()
            plain_opt.step()

        wrapped, wired = interleaved(wrapped_step, wired_step, dev, repeats=repeats, warmup=warmup)
        stage = ex.seed("features.2").stage
        ex.close()
    ratio = statistics.median(wrapped) / statistics.median(wired)
    return {"wrapped_ms": round(median_ms(wrapped), 4), "hand_wired_ms": round(median_ms(wired), 4),
            "ratio": round(ratio, 4), "budget": STEP_BUDGET, "ok": ratio <= STEP_BUDGET, "stage": stage,
            "batch": batch, "device": device}


def handle_latency(*, repeats: int = 200, verify_repeats: int = 2000) -> dict[str, Any]:
    """Median ``handle()`` of a signed command with its durable SQLite append."""
    from kasmina import commands
    from kasmina.security import Keyring, Verifier, sign

    with tempfile.TemporaryDirectory() as tmp:
        ex, model, opt, x, y = blending_executor(Path(tmp), torch.device("cpu"), 8)
        samples = []
        for i in range(repeats):
            cmd = sign(commands.pause("features.2") if i % 2 == 0 else commands.resume("features.2"), SECRET)
            start = time.perf_counter()
            result = ex.handle(cmd)
            samples.append(time.perf_counter() - start)
            if not result.accepted:
                raise RuntimeError(f"command refused: {result}")
        ex.close()
    verifier = Verifier(Keyring(SECRET))
    probe = sign(commands.germinate("features.2", "conv_adapter", parameters={"blend_steps": 30},
                                    annotations={"blend_mode": "CHANNEL", "alpha_vec": "[0.5, 1.0]"}), SECRET)
    checks = []
    for _ in range(verify_repeats):
        start = time.perf_counter()
        verifier.check(probe)
        checks.append(time.perf_counter() - start)
    handle_ms, verify_ms = median_ms(samples), median_ms(checks)
    return {"handle_ms": round(handle_ms, 4), "handle_p95_ms": round(sorted(samples)[int(0.95 * len(samples))] * 1000, 4),
            "handle_budget_ms": HANDLE_BUDGET_MS, "handle_ok": handle_ms <= HANDLE_BUDGET_MS,
            "verify_ms": round(verify_ms, 4), "verify_budget_ms": VERIFY_BUDGET_MS,
            "verify_ok": verify_ms < VERIFY_BUDGET_MS}


def probe_memory(*, device: str = "cpu", batch: int = 256) -> dict[str, Any]:
    """Autograd memory of a grad-enabled forward vs a SHADOWING probe of the same batch."""
    import kasmina
    from kasmina import commands
    from kasmina.security import sign

    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = BenchNet().to(dev)
        ex = kasmina.Executor(model, sites=["features.2"], db=f"sqlite:///{Path(tmp) / 'p.db'}", secret=SECRET)
        params = {"germinated_steps": 1, "training_steps": 1, "blend_steps": 1, "shadow_steps": 1_000_000}
        ex.handle(sign(commands.germinate("features.2", "conv_adapter", parameters=params), SECRET))
        x = torch.randn(batch, 3, 32, 32, device=dev)
        for _ in range(4):
            model(x[:8]).sum().backward()
            ex.step(metrics={"val_loss": 1.0})
        stage = ex.seed("features.2").stage

        def saved_bytes(fn: Callable[[], Tensor]) -> tuple[int, int]:
            kept = [0]

            def pack(t: Tensor) -> Tensor:
                kept[0] += t.numel() * t.element_size()
                return t

            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if dev.type == "cuda" else 0
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = fn()
            peak = (torch.cuda.max_memory_allocated() - base) if dev.type == "cuda" else 0
            del out
            return kept[0], peak

        grad_saved, grad_peak = saved_bytes(lambda: model(x))
        probe_saved, probe_peak = saved_bytes(lambda: ex.run_probe("features.2", lambda: model(x)))
        ex.close()
    return {"stage": stage, "batch": batch, "grad_forward_saved_mb": round(grad_saved / 2**20, 3),
            "probe_saved_mb": round(probe_saved / 2**20, 3),
            "grad_forward_peak_mb": round(grad_peak / 2**20, 3) if dev.type == "cuda" else None,
            "probe_peak_mb": round(probe_peak / 2**20, 3) if dev.type == "cuda" else None}


def run(*, device: str = "cpu", repeats: int = 60) -> dict[str, Any]:
    return {"device": device, "step": step_overhead(device=device, repeats=repeats),
            "handle": handle_latency(), "probe": probe_memory(device=device)}


def summary_line(result: dict[str, Any]) -> str:
    s, h, p = result["step"], result["handle"], result["probe"]
    flag = {True: "ok", False: "OVER"}
    return (f"bench executor ({result['device']}): step {s['wrapped_ms']:.3f} ms vs hand-wired "
            f"{s['hand_wired_ms']:.3f} ms = {s['ratio']:.3f}x ({flag[s['ok']]} <= {s['budget']}x); "
            f"handle {h['handle_ms']:.3f} ms ({flag[h['handle_ok']]} <= {h['handle_budget_ms']} ms); "
            f"verify {h['verify_ms'] * 1000:.1f} us ({flag[h['verify_ok']]}); "
            f"probe keeps {p['probe_saved_mb']} MB for backward vs {p['grad_forward_saved_mb']} MB")
