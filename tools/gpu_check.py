#!/usr/bin/env python
"""GPU checks for Kasmina, in one script for the accelerator machine.

1. No device->host synchronisation in a steady-state training step: for every blend mode a
   seed is put in BLENDING, then training steps (forward, backward, optimizer step and
   ``Executor.step()``) run under ``torch.cuda.set_sync_debug_mode("error")``, which raises
   on any sync.
2. The executor benchmark on CUDA (step overhead vs a hand-wired seed, probe memory), also
   on Hugging Face's ResNet-18 and a tiny GPT-2 with seeds blending at four sites.
3. The blend harness (``kasmina bench``) in fp32 and bf16: every mode against the copy
   bandwidth and its minimal-traffic bound, fused kernels chosen automatically; the
   numerical comparison of fused and eager is ``pytest tests/test_fused.py`` (run it too).
4. ``kasmina demo --device cuda``, short, both tasks: the main job end to end on the GPU (fused
   blends, pre-warm, checkpoints of CUDA tensors), with its seeds and the three contenders.
5. ``ex.export()`` of a model grown on the GPU: a merged ``lora`` and a kept
   ``bottleneck_mlp``, the largest output difference on a probe batch (<= 1e-5 in fp32).

Prints one table; exits non-zero if a check fails.
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
from pathlib import Path

import torch

MODES = {
    "CONVEX": {},
    "RESIDUAL": {},
    "CHANNEL": {"alpha_vec": "[" + ",".join(["0.75"] * 32) + "]"},
    "CONFIDENCE": {"gate_k": "4", "gate_tau": "0.2", "alpha_lo": "0.1", "alpha_hi": "0.9"},
}


def sync_free_steps(mode: str, extra: dict[str, str], steps: int = 20) -> str:
    from kasmina.bench.executor import blending_executor, train_step

    with tempfile.TemporaryDirectory() as tmp:
        ex, model, opt, x, y = blending_executor(Path(tmp), torch.device("cuda"), 64,
                                                 annotations={"blend_mode": mode, **extra})

        def step() -> None:
            train_step(ex, model, opt, x, y)

        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        alpha = ex.seed("features.2").alpha
        ex.close()
    return f"ok ({steps} steps in BLENDING, alpha {alpha:.3g})"


def demo_on_cuda(task: str) -> str:
    from kasmina.demo import DemoOptions, run

    short = {"digits": {"steps": 96, "host_steps": 150}, "text": {"steps": 240, "host_steps": 160}}[task]
    with tempfile.TemporaryDirectory() as tmp:
        report = run(DemoOptions(task=task, db=f"sqlite:///{tmp}/demo.db", device="cuda", rng=3, **short))
    seeds = ", ".join(f"{s['seed']} {s['stage']} g{s['generations']} {s['blueprint']}" for s in report.seeds)
    metric = ", ".join(f"{name} {c[report.metric]:.4f} ({c['seconds']:.1f} s)" for name, c in report.contenders.items())
    return f"ok: {report.metric}: {metric}; {seeds}; {report.events} events, {report.seconds} s"


def export_on(device: str) -> str:
    """Grow two seeds to FOSSILIZED on ``device`` and export: one merged, one kept."""
    import kasmina
    from kasmina import commands
    from torch import nn

    fast = {"germinated_steps": 1, "training_steps": 3, "blend_steps": 4, "shadow_steps": 2, "probation_steps": 2}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, 32, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        ex = kasmina.Executor(model, sites=["0", "2"], db=f"sqlite:///{tmp}/export.db", secret=b"gpu-check",
                              optimizer=opt, metric=kasmina.MetricPolicy(tolerance=1.0, latency_budget_ms=10_000))
        try:
            for site, blueprint in (("0", "lora"), ("2", "bottleneck_mlp")):
                result = ex.handle(kasmina.sign(commands.germinate(site, blueprint, parameters=fast), b"gpu-check"))
                assert result.accepted, result
            for _ in range(60):
                if all(view.stage == "FOSSILIZED" for view in ex.seeds()):
                    break
                model(x).square().mean().backward()
                opt.step()
                opt.zero_grad()
                ex.step(metrics={"val_loss": 1.0})
            stages = {view.seed_id: view.stage for view in ex.seeds()}
            assert set(stages.values()) == {"FOSSILIZED"}, stages
            exported = ex.export(x)
            report = ex.last_export
            assert report is not None and report.max_abs_diff is not None
            assert not [type(m) for m in exported.modules() if type(m).__module__.startswith("kasmina")]
            assert report.max_abs_diff <= 1e-5, report.max_abs_diff
            actions = ", ".join(f"site {s.site} {s.blueprint} {s.action}" for s in report.sites)
            return f"ok: {actions}; max |diff| {report.max_abs_diff:.2e}; {report.parameters_before} -> {report.parameters_after} parameters"
        finally:
            ex.close()


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    from kasmina.bench import executor

    failed = False
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}", flush=True)
    for mode, extra in MODES.items():
        try:
            outcome = sync_free_steps(mode, extra)
        except Exception as e:  # noqa: BLE001 - report every mode, then fail
            failed = True
            where = traceback.extract_tb(e.__traceback__)[-3:]
            outcome = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0]} at " + " <- ".join(
                f"{Path(f.filename).name}:{f.lineno} {f.line}" for f in reversed(where))
        print(f"{'sync-free step, ' + mode:<28}  {outcome}", flush=True)
    bench = executor.run(device="cuda", repeats=100)
    print(f"{'executor bench':<28}  {executor.summary_line(bench)}")
    print(json.dumps(bench))
    from kasmina.bench import architectures

    for name in architectures.MODELS:  # ResNet-18 and the tiny GPT-2, seeds blending at four sites
        try:
            result = architectures.step_overhead(name, device="cuda", repeats=40)
            print(f"{'executor bench, ' + name:<28}  {architectures.summary_line(result)}")
            print(json.dumps(result))
        except Exception as e:  # noqa: BLE001 - report it, then fail
            failed = True
            print(f"{'executor bench, ' + name:<28}  FAILED: {type(e).__name__}: {str(e).splitlines()[0]}")
    from kasmina.bench import kasmina as harness

    for dtype in ("float32", "bfloat16"):
        result = harness.run(device="cuda", dtype=dtype, shape=(64, 256, 56, 56), repeats=30)
        print(harness.render(result))
        print(harness.summary_line(result), flush=True)
    for task in ("digits", "text"):
        try:
            outcome = demo_on_cuda(task)
        except Exception as e:  # noqa: BLE001 - report it, then fail
            failed = True
            outcome = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(f"{'kasmina demo --task ' + task + ' --device cuda':<28}  {outcome}", flush=True)
    try:
        outcome = export_on("cuda")
    except Exception as e:  # noqa: BLE001 - report it, then fail
        failed = True
        outcome = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    print(f"{'ex.export() on cuda':<28}  {outcome}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
