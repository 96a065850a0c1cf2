"""The performance harness (kasmina bench, tools/bench_kasmina.py) runs and reports every figure.

No timing is asserted: budgets are reported in the summary line, never enforced by tests.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kasmina.bench import kasmina as harness
from kasmina.cli import EXIT_USAGE, main

SMALL = (4, 8, 4, 4)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kasmina must never call torch.compile (the seed forbids it)."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.compile was called")

    monkeypatch.setattr(torch, "compile", refuse)


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


SUMMARY = re.compile(r"^bench kasmina \(cpu float32 4x8x4x4\): (?:[A-Z]+ [\d.]+/[\d.]+us ?)+; lerp [\d.]+us "
                     r"copy [\d.]+GB/s; isolation [\d.]+x; fetch [\d.]+ms p95 [\d.]+ms hit [\d.]+; "
                     r"budgets (\d+)/(\d+) ok: (.*)$")


@pytest.mark.slow
def test_harness_reports_every_field(no_compile: None) -> None:
    result = harness.run(shape=SMALL, repeats=3, blend_mode="all")
    data = json.loads(json.dumps(result))  # JSON-ready as it is
    assert data["device"] == "cpu" and data["dtype"] == "float32" and data["shape"] == list(SMALL)
    assert set(data["blend"]) == {"CONVEX", "RESIDUAL", "CHANNEL", "CONFIDENCE"}
    for mode, entry in data["blend"].items():
        for key in ("fwd_us", "fwdbwd_us", "ratio_vs_convex", "ratio_vs_bound", "fwd_gbps", "fwdbwd_gbps"):
            assert positive(entry[key]), (mode, key, entry[key])
    assert data["blend"]["CONVEX"]["ratio_vs_convex"] == 1.0
    assert positive(data["bound"]["lerp_fwd_us"]) and positive(data["bound"]["copy_gbps"])
    iso = data["isolation"]
    assert all(positive(iso[k]) for k in ("off_us", "on_us", "overhead_ratio")) and iso["stage"] == "BLENDING"
    fetch = data["fetch"]
    assert positive(fetch["mean_ms"]) and positive(fetch["p95_ms"])
    assert fetch["hit_rate"] == pytest.approx((harness.FETCH_COUNT - 1) / harness.FETCH_COUNT)  # one miss
    assert "store" not in data
    names = [b["name"] for b in data["budgets"]]
    assert names == ["RESIDUAL_fwd_vs_CONVEX", "CONFIDENCE_fwd_vs_CONVEX", "CHANNEL_fwd_vs_CONVEX",
                     "CONVEX_fwd_vs_lerp", "isolation_overhead"]
    assert all(positive(b["value"]) and isinstance(b["ok"], bool) and b["target"] for b in data["budgets"])

    line = harness.summary_line(result)
    assert "\n" not in line
    match = SUMMARY.match(line)
    assert match, line
    assert int(match.group(1)) == sum(b["ok"] for b in data["budgets"]) and int(match.group(2)) == 5
    verdicts = match.group(3).split(", ")
    assert [v.split()[0] for v in verdicts] == names and all(v.split()[-1] in ("ok", "OVER") for v in verdicts)
    table = harness.render(result)
    assert "lerp(out=) bound" in table and "isolation:" in table and "fetch:" in table


@pytest.mark.slow
def test_one_mode_with_isolation_off(no_compile: None) -> None:
    result = harness.run(shape=(2, 3, 5), repeats=2, blend_mode="channel", alpha_c="[0.25, 1, 0.5]",
                         isolation="off")
    assert set(result["blend"]) == {"CONVEX", "CHANNEL"}  # CONVEX is always the reference
    assert positive(result["isolation"]["off_us"])
    assert result["isolation"]["on_us"] is None and result["isolation"]["overhead_ratio"] is None
    assert [b["name"] for b in result["budgets"]] == ["CHANNEL_fwd_vs_CONVEX", "CONVEX_fwd_vs_lerp"]
    assert "isolation off-only" in harness.summary_line(result)


@pytest.mark.parametrize("options, message", [
    ({"shape": "4"}, "at least 2 dims"),
    ({"shape": "4,x"}, "whole numbers"),
    ({"alpha_c": "0.5,0.5"}, "channels"),
    ({"alpha_c": "[0.5, 2]"}, "[0, 1]"),
    ({"alpha_c": "[0.5,"}, "JSON"),
    ({"gate_k": float("nan")}, "gate-k"),
    ({"gate_tau": -1.0}, "gate-tau"),
    ({"blend_mode": "sum"}, "blend mode"),
    ({"dtype": "int8"}, "dtype"),
    ({"isolation": "maybe"}, "isolation"),
    ({"device": "nonsense"}, "device"),
])
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        harness.check(**{"shape": SMALL, **options})


def test_alpha_c_forms() -> None:
    assert harness.parse_alpha_c("0.5, 1,0") == (0.5, 1.0, 0.0)
    assert harness.parse_alpha_c("[0.25, 0.75]") == (0.25, 0.75)
    assert harness.check(shape=SMALL, alpha_c="0.3")["alpha_c"] == (0.3,) * SMALL[1]
    assert harness.check(shape=SMALL)["alpha_c"] == (0.5,) * SMALL[1]


def test_cli_refuses_a_bad_flag_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["bench", "--shape", "4,8", "--alpha-c", "0.1,0.2"], ["bench", "--blend-mode", "sum"],
                 ["bench", "--repeats", "0"], ["bench", "--gate-k", "nan"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


@pytest.mark.slow
def test_cli_runs_the_harness_as_json(capsys: pytest.CaptureFixture[str], no_compile: None) -> None:
    code = main(["bench", "--shape", "2,4,3,3", "--repeats", "2", "--blend-mode", "confidence",
                 "--gate-k", "2", "--gate-tau", "0.1", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and set(data["blend"]) == {"CONVEX", "CONFIDENCE"}
    assert data["config"]["gate_k"] == 2.0 and data["config"]["gate_tau"] == 0.1


@pytest.mark.slow
def test_tool_prints_the_table_and_summary() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_kasmina.py"), "--shape", "2,4,3,3",
                           "--repeats", "2", "--blend-mode", "residual", "--isolation", "off"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "lerp(out=) bound" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("bench kasmina (cpu float32 2x4x3x3): ")
    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_kasmina.py"), "--shape", "0,1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and "shape" in bad.stderr
