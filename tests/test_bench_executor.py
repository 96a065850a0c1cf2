"""The executor benchmark runs and reports every figure (no timing is asserted)."""

from __future__ import annotations

import math

import pytest

from kasmina.bench import executor


@pytest.mark.slow
def test_executor_benchmark_reports_every_figure() -> None:
    step = executor.step_overhead(batch=4, repeats=3, warmup=1)
    handle = executor.handle_latency(repeats=6, verify_repeats=20)
    probe = executor.probe_memory(batch=8)
    assert step["stage"] == "BLENDING"
    for value in (step["wrapped_ms"], step["hand_wired_ms"], step["ratio"], handle["handle_ms"], handle["verify_ms"]):
        assert value > 0 and math.isfinite(value)
    assert probe["stage"] == "SHADOWING"
    assert probe["probe_saved_mb"] == 0.0 < probe["grad_forward_saved_mb"]
    line = executor.summary_line({"device": "cpu", "step": step, "handle": handle, "probe": probe})
    assert line.startswith("bench executor (cpu): step ") and "handle" in line and "verify" in line
