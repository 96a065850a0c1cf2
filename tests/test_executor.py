"""The executor on a real small CNN: lifecycle over steps, isolation, probes, refusals, reopen."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kasmina
from kasmina import commands, leyline
from kasmina.catalogue import Blueprint, Catalogue
from kasmina.catalogue.blueprints import default_blueprints
from kasmina.executor.site import SeedSite, SiteMode
from kasmina.security import sign

SECRET = b"test-secret"
FAST = {"training_steps": 3, "blend_steps": 4, "shadow_steps": 2, "probation_steps": 2, "embargo_steps": 5}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _GoesNaN(nn.Module):
    """A seed that behaves for a while, then emits NaN (a blueprint gone bad)."""

    def __init__(self, site: nn.Module, generator: torch.Generator) -> None:
        super().__init__()
        self.inner = nn.Linear(site.in_features, site.out_features)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.inner(x)
        return out * float("nan") if self.calls > 3 else out


def _catalogue(*extra: Blueprint) -> Catalogue:
    return Catalogue([*default_blueprints(), *extra])


def nan_blueprint() -> Blueprint:
    return Blueprint("goes_nan", 1, "emits NaN after 3 calls", builder=_GoesNaN,
                     supports=lambda m: isinstance(m, nn.Linear))


def leaky_blueprint() -> Blueprint:
    class Leaky(nn.Module):
        def __init__(self, site: nn.Module, generator: torch.Generator) -> None:
            super().__init__()
            self.site = site  # reuses the host's own weights: an isolation violation

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.site(x) * 0.5

    return Blueprint("leaky", 1, "shares the host's weights", builder=Leaky,
                     supports=lambda m: isinstance(m, nn.Linear))


def signed(cmd: leyline.AdaptationCommand) -> leyline.AdaptationCommand:
    return sign(cmd, SECRET)


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ex = kasmina.Executor(model, sites=["features.2", "classifier.1"], db=f"sqlite:///{tmp_path / 'run.db'}",
                          secret=SECRET, catalogue=_catalogue(nan_blueprint(), leaky_blueprint()), optimizer=opt)
    yield model, opt, ex, tmp_path
    ex.close()


def train(model: nn.Module, opt: torch.optim.Optimizer, ex: kasmina.Executor, steps: int,
          val_loss: float = 1.0) -> list[float]:
    g = torch.Generator().manual_seed(ex.step_count)
    alphas = []
    for _ in range(steps):
        x = torch.randn(8, 1, 6, 6, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ex.step(metrics={"val_loss": val_loss, "loss": loss.item()})
        alphas.append(ex.seed("features.2" if "features.2" in ex.sites else next(iter(ex.sites))).alpha)
    return alphas


def stages(ex: kasmina.Executor, site: str) -> list[str]:
    return [e.data["to_stage"] for e in ex.store.read(stream_id=site) if e.type == "stage_changed"]


def test_full_lifecycle_over_steps_with_strictly_increasing_alpha(setup) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, _ = setup
    result = ex.handle(signed(commands.germinate("features.2", "conv_adapter", parameters=FAST,
                                                 annotations={"blend_mode": "CHANNEL",
                                                              "alpha_vec": "[" + ",".join(["0.5"] * 16) + "]"})))
    assert result.accepted, result
    assert ex.seed("features.2").stage == "GERMINATED" and ex.seed("features.2").blend_mode == "CHANNEL"
    train(model, opt, ex, 1)
    assert ex.seed("features.2").stage == "TRAINING"
    train(model, opt, ex, 3)
    assert ex.seed("features.2").stage == "BLENDING"
    blending = train(model, opt, ex, 3)
    assert all(b > a for a, b in zip(blending, blending[1:])) and 0 < blending[0] < blending[-1] < 1
    train(model, opt, ex, 1)
    assert ex.seed("features.2").stage == "SHADOWING" and ex.seed("features.2").alpha == 1.0
    train(model, opt, ex, 4)
    assert ex.seed("features.2").stage == "FOSSILIZED"
    assert stages(ex, "features.2") == ["DORMANT", "GERMINATED", "TRAINING", "BLENDING", "SHADOWING",
                                        "PROBATIONARY", "FOSSILIZED"]
    assert kasmina.replay(ex.store).seeds["features.2"] == ex.state("features.2")


def test_training_stage_output_is_host_exactly_and_seed_learns(setup) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, _ = setup
    x = torch.randn(4, 1, 6, 6)
    before = model(x).detach()
    assert ex.handle(signed(commands.germinate("classifier.1", "bottleneck_mlp", parameters=FAST))).accepted
    train(model, opt, ex, 1)
    site: SeedSite = model.classifier[1]
    assert ex.seed("classifier.1").stage == "TRAINING" and site.mode is SiteMode.TRAINING
    host_out = site.base_layer(model.classifier[0](model.features(x)))
    assert torch.equal(model(x), host_out)
    # the seed gets the task gradient; the host's gradient is what it would be without the seed
    seed_params = list(site.seed.parameters())
    model.zero_grad()
    F.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in seed_params)
    host_grad = site.base_layer.weight.grad.clone()
    seed_module, site.seed = site.seed, None
    model.zero_grad()
    F.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()
    assert torch.equal(site.base_layer.weight.grad, host_grad)
    site.seed = seed_module
    del before


def test_non_finite_seed_is_culled_by_its_gate_and_embargo_is_enforced(setup) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, _ = setup
    assert ex.handle(signed(commands.germinate("classifier.1", "goes_nan", parameters=FAST))).accepted
    train(model, opt, ex, 6)
    state = ex.state("classifier.1")
    assert state.stage.name == "EMBARGOED", stages(ex, "classifier.1")
    assert "not finite" in state.cull_reason
    culled = [e for e in ex.store.read(stream_id="classifier.1") if e.data.get("to_stage") == "CULLED"][0]
    assert culled.data["gate"] in ("G1_GRADIENT_HEALTH", "G2_STABILITY") and culled.data["passed"] is False
    assert model.classifier[1].seed is None and model.classifier[1].mode is SiteMode.DORMANT
    refused = ex.handle(signed(commands.germinate("classifier.1", "zero_linear", parameters=FAST)))
    assert not refused.accepted and refused.reason == "illegal_transition"
    assert f"embargoed until step {state.embargo_until_step}" in refused.detail
    train(model, opt, ex, 7)  # embargo 5 steps, then RESETTING, then G5 -> DORMANT
    assert ex.seed("classifier.1").stage == "DORMANT"
    again = ex.handle(signed(commands.germinate("classifier.1", "zero_linear", parameters=FAST)))
    assert again.accepted and ex.seed("classifier.1").generation == 2


def test_isolation_hooks_only_in_training_and_blending(setup) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, _ = setup
    site: SeedSite = model.classifier[1]

    def hooks() -> int:
        return sum(len(p._backward_hooks or {}) for p in site.seed.parameters()) if site.seed is not None else 0

    assert ex.handle(signed(commands.germinate("classifier.1", "bottleneck_mlp", parameters=FAST))).accepted
    assert hooks() == 0  # GERMINATED: no collection
    train(model, opt, ex, 1)
    n_params = len(list(site.seed.parameters()))
    assert ex.seed("classifier.1").stage == "TRAINING" and hooks() == n_params
    assert ex.handle(signed(commands.pause("classifier.1"))).accepted
    assert hooks() == 0 and site.mode is SiteMode.PAUSED
    assert ex.handle(signed(commands.resume("classifier.1"))).accepted
    assert hooks() == n_params  # not 2x: nothing leaked across pause/resume
    train(model, opt, ex, 3)
    assert ex.seed("classifier.1").stage == "BLENDING" and hooks() == n_params
    train(model, opt, ex, 4)
    assert ex.seed("classifier.1").stage == "SHADOWING" and hooks() == 0
    seed_module = site.seed
    assert ex.handle(signed(commands.cull("classifier.1", "test"))).accepted
    assert site.seed is None and sum(len(p._backward_hooks or {}) for p in seed_module.parameters()) == 0


def test_isolation_violation_fails_g1(setup) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, _ = setup
    assert ex.handle(signed(commands.germinate("classifier.1", "leaky", parameters=FAST))).accepted
    train(model, opt, ex, 1)
    state = ex.state("classifier.1")
    assert state.stage.name == "EMBARGOED" and "isolation violations" in state.cull_reason
    assert any(e.type == "isolation_violation" for e in ex.store.read(stream_id="classifier.1"))


def test_probes_build_no_graph_and_prewarm_records(setup) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, _ = setup
    train(model, opt, ex, 1)  # the site has seen a batch: pre-warm can use it
    assert ex.handle(signed(commands.germinate("classifier.1", "bottleneck_mlp", parameters=FAST))).accepted
    view = ex.seed("classifier.1")
    assert view.prewarm_ms is not None and view.prewarm_ms >= 0
    attached = [e for e in ex.store.read(stream_id="classifier.1") if e.type == "kernel_attached"][0]
    assert attached.data["prewarm_ms"] == view.prewarm_ms and attached.data["used"] == "bottleneck_mlp"
    train(model, opt, ex, 8)
    assert ex.seed("classifier.1").stage in ("SHADOWING", "PROBATIONARY")
    out = ex.run_probe("classifier.1", lambda: model(torch.randn(2, 1, 6, 6)))
    assert not out.requires_grad and out.grad_fn is None and out.is_inference()


def test_every_blend_mode_trains_with_torch_compile_refused(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("torch.compile called")

    monkeypatch.setattr(torch, "compile", boom)
    model, opt, ex, _ = setup
    site = "classifier.1"
    for mode, extra in [("CONVEX", {}), ("RESIDUAL", {}), ("CHANNEL", {"alpha_vec": "[" + ",".join(["0.5"] * 10) + "]"}),
                        ("CONFIDENCE", {"gate_k": "2"})]:
        assert ex.handle(signed(commands.germinate(site, "zero_linear", parameters=FAST,
                                                   annotations={"blend_mode": mode, **extra}))).accepted
        train(model, opt, ex, 6)  # GERMINATED -> TRAINING -> BLENDING, blending for two steps
        assert ex.seed(site).stage == "BLENDING" and ex.seed(site).blend_mode == mode
        assert ex.handle(signed(commands.cull(site, "next mode"))).accepted
        train(model, opt, ex, 7)  # embargo, reset, dormant again
        assert ex.seed(site).stage == "DORMANT"


def _nan_parameter() -> leyline.AdaptationCommand:
    """A controller that does not use our builders can still send a NaN parameter."""
    cmd = commands.germinate("classifier.1", "zero_linear")
    cmd.seed_operation.parameters["lr"] = float("nan")
    return cmd


def _cmd_with(**changes: object) -> leyline.AdaptationCommand:
    cmd = commands.germinate("classifier.1", "zero_linear", parameters=FAST)
    for key, value in changes.items():
        setattr(cmd, key, value)
    return cmd


@pytest.mark.parametrize("make,reason", [
    (lambda: commands.germinate("classifier.1", "zero_linear"), "missing_signature"),
    (lambda: sign(commands.germinate("classifier.1", "zero_linear"), b"wrong key"), "invalid_signature"),
    (lambda: sign(_cmd_with(command_id=""), SECRET), "missing_command_id"),
    (lambda: sign(commands.germinate("classifier.1", "zero_linear", issued_at=time.time() - 120), SECRET),
     "stale_command"),
    (lambda: sign(commands.germinate("classifier.1", "zero_linear", issued_at=time.time() + 60), SECRET),
     "issued_in_future"),
    (lambda: sign(commands.germinate("nope.0", "zero_linear"), SECRET), "unknown_site"),
    (lambda: sign(commands.structural_pruning("classifier.1"), SECRET), "unsupported_command"),
    (lambda: sign(commands.optimizer("sgd", {"lr": 0.1}), SECRET), "unsupported_command"),
    (lambda: sign(commands.fine_tune("classifier.1"), SECRET), "unsupported_command"),
    (lambda: sign(commands.cull("classifier.1"), SECRET), "illegal_transition"),
    (lambda: sign(commands.germinate("classifier.1", "no_such_blueprint"), SECRET), "gate_failed"),
    (lambda: sign(_nan_parameter(), SECRET), "gate_failed"),
    (lambda: sign(commands.germinate("classifier.1", "zero_linear", parameters={"blend_steps": 0.5}), SECRET),
     "invalid_parameter"),
    (lambda: sign(commands.resume("classifier.1"), SECRET), "not_paused"),
    (lambda: sign(commands.rollback("classifier.1", 10**6), SECRET), "invalid_parameter"),
    (lambda: sign(commands.circuit_breaker("CLOSED", "ok"), SECRET), None),
])
def test_every_refusal_changes_nothing_but_the_refusal_event(setup, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, _ = setup
    before_states = dict(ex.ledger.seeds)
    head_before = ex.store.head()[0]
    result = ex.handle(make())
    if reason is None:  # control: an accepted executor-wide command appends its own event
        assert result.accepted and [e.type for e in ex.store.read(after=head_before)] == ["breaker_forced"]
        return
    assert not result.accepted and result.reason == reason, result
    new = list(ex.store.read(after=head_before))
    assert [e.type for e in new] == ["command_refused"] and new[0].data["reason"] == reason
    assert new[0].stream_id == "$executor"
    assert ex.ledger.seeds == before_states and model.classifier[1].seed is None


def test_nonce_replayed_and_fail_closed(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, _ = setup
    cmd = signed(commands.germinate("classifier.1", "zero_linear", parameters=FAST))
    assert ex.handle(cmd).accepted
    again = ex.handle(cmd)
    assert not again.accepted and again.reason == "nonce_replayed"
    keyless = kasmina.Executor(Net(), sites=["classifier.1"], db=f"sqlite:///{tmp_path / 'k.db'}",
                               secret={}, catalogue=_catalogue())
    try:
        r = keyless.handle(signed(commands.germinate("classifier.1", "zero_linear")))
        assert not r.accepted and r.reason == "verifier_unavailable"
    finally:
        keyless.close()


def test_malformed_bytes_are_refused(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, ex, _ = setup
    result = ex.handle(b"\xff\x00garbage")
    assert not result.accepted and result.reason == "malformed_command"


def test_reopen_restores_state_and_refuses_seen_command_in_new_process(setup) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, tmp = setup
    cmd = signed(commands.germinate("features.2", "conv_adapter", parameters=FAST,
                                    annotations={"blend_mode": "residual"}))
    assert ex.handle(cmd).accepted
    train(model, opt, ex, 5)  # into BLENDING
    view = ex.seed("features.2")
    assert view.stage == "BLENDING" and 0 < view.alpha < 1
    ex.close()
    script = f"""
import sys, json
sys.path.insert(0, {str(Path(__file__).parent)!r})
import kasmina
from test_executor import Net, _catalogue, SECRET
from kasmina import leyline
ex = kasmina.Executor(Net(), sites=["features.2", "classifier.1"], db={f"sqlite:///{tmp / 'run.db'}"!r},
                      secret=SECRET, catalogue=_catalogue())
v = ex.seed("features.2")
cmd = leyline.AdaptationCommand.FromString(bytes.fromhex({cmd.SerializeToString().hex()!r}))
r = ex.handle(cmd)
print(json.dumps({{"stage": v.stage, "alpha": v.alpha, "mode": v.blend_mode, "gen": v.generation,
                  "step": ex.step_count, "reason": r.reason, "attached": ex.sites["features.2"].seed is not None}}))
ex.close()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"stage": "BLENDING", "alpha": view.alpha, "mode": "RESIDUAL", "gen": 1,
                   "step": ex.step_count, "reason": "nonce_replayed", "attached": True}


def test_site_injection_validates_names() -> None:
    with pytest.raises(ValueError, match="no submodule 'features.9'"):
        kasmina.Executor(Net(), sites=["features.9"], db="memory://", secret=SECRET, catalogue=_catalogue())
    with pytest.raises(ValueError, match="nested"):
        kasmina.Executor(Net(), sites=["features", "features.2"], db="memory://", secret=SECRET,
                         catalogue=_catalogue())


def hidden_leak_blueprint() -> Blueprint:
    """Keeps a host weight outside its registered parameters: only autograd can see it."""

    class Hidden(nn.Module):
        def __init__(self, site: nn.Module, generator: torch.Generator) -> None:
            super().__init__()
            self.inner = nn.Linear(site.in_features, site.out_features)
            self._host = [site.weight]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) + 0.0 * (x @ self._host[0].t())

    return Blueprint("hidden_leak", 1, "reads a host weight behind autograd", builder=Hidden,
                     supports=lambda m: isinstance(m, nn.Linear))


def test_leak_found_at_a_gate_culls_without_breaking_the_step(tmp_path: Path) -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with kasmina.Executor(model, sites=["classifier.1"], db=f"sqlite:///{tmp_path / 'l.db'}", secret=SECRET,
                          catalogue=_catalogue(hidden_leak_blueprint()), optimizer=opt) as ex:
        assert ex.handle(signed(commands.germinate("classifier.1", "hidden_leak", parameters=FAST))).accepted
        train(model, opt, ex, 1)
        state = ex.state("classifier.1")
        assert state.stage.name == "EMBARGOED" and "isolation violations: 1" in state.cull_reason
        kinds = [e.type for e in ex.store.read(stream_id="classifier.1")]
        assert kinds.index("isolation_violation") > kinds.index("stage_changed", 3)
        assert kasmina.replay(ex.store).seeds["classifier.1"] == ex.state("classifier.1")


def test_probe_then_step_and_a_non_finite_metric_fails_g4(setup) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, _ = setup
    assert ex.handle(signed(commands.germinate("classifier.1", "bottleneck_mlp", parameters=FAST))).accepted
    train(model, opt, ex, 8)
    assert ex.seed("classifier.1").stage == "SHADOWING"
    ex.run_probe("classifier.1", lambda: model(torch.randn(2, 1, 6, 6)))  # validation between steps
    train(model, opt, ex, 2, val_loss=float("nan"))
    state = ex.state("classifier.1")
    assert state.stage.name == "EMBARGOED" and "host metric not finite" in state.cull_reason


def test_training_stage_allows_inplace_ops_after_the_site(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with kasmina.Executor(model, sites=["0"], db=f"sqlite:///{tmp_path / 'i.db'}", secret=SECRET,
                          catalogue=_catalogue(), optimizer=opt) as ex:
        assert ex.handle(signed(commands.germinate("0", "zero_linear", parameters=FAST))).accepted
        for _ in range(3):
            loss = model(torch.randn(5, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            ex.step(metrics={"val_loss": 1.0})
        assert ex.seed("0").stage == "TRAINING"


def test_reopen_after_a_crash_continues_from_the_last_recorded_step(setup) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, tmp = setup
    assert ex.handle(signed(commands.germinate("features.2", "conv_adapter", parameters=FAST))).accepted
    train(model, opt, ex, 6)
    view = ex.seed("features.2")
    assert view.stage == "BLENDING"
    # no close(): the process "died"; a new executor opens the same log
    again = kasmina.Executor(Net(), sites=["features.2", "classifier.1"], db=f"sqlite:///{tmp / 'run.db'}",
                             secret=SECRET, catalogue=_catalogue())
    try:
        # the log knows step 4 (BLENDING began there); steps 5-6 wrote nothing (the hot path
        # never touches the database): the run continues from 4, never from 0
        assert again.seed("features.2").stage == "BLENDING"
        assert again.step_count == 4 and ex.step_count == 6
    finally:
        again.close()


def test_refusal_on_a_live_seed_changes_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, _ = setup
    assert ex.handle(signed(commands.germinate("classifier.1", "zero_linear", parameters=FAST))).accepted
    train(model, opt, ex, 1)
    before, head, module = ex.state("classifier.1"), ex.store.head()[0], model.classifier[1].seed
    for cmd in (commands.germinate("classifier.1", "zero_linear"), commands.fossilize("classifier.1"),
                commands.resume("classifier.1")):
        result = ex.handle(signed(cmd))
        assert not result.accepted and result.detail
    assert ex.state("classifier.1") == before and model.classifier[1].seed is module
    assert [e.type for e in ex.store.read(after=head)] == ["command_refused"] * 3


def test_culling_one_of_two_seeds_removes_only_its_optimizer_group(setup) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, _ = setup
    assert ex.handle(signed(commands.germinate("features.2", "conv_adapter", parameters=FAST))).accepted
    assert ex.handle(signed(commands.germinate("classifier.1", "bottleneck_mlp", parameters=FAST))).accepted
    train(model, opt, ex, 1)
    groups = [g.get("kasmina_seed") for g in opt.param_groups]
    assert groups.count("features.2") == 1 and groups.count("classifier.1") == 1
    assert ex.handle(signed(commands.cull("classifier.1", "test"))).accepted
    assert [g.get("kasmina_seed") for g in opt.param_groups] == [None, "features.2"]
    train(model, opt, ex, 1)  # the optimizer still steps the surviving seed


def test_blueprint_parameters_from_the_command_shape_the_seed(setup) -> None:  # type: ignore[no-untyped-def]
    model, opt, ex, _ = setup
    assert ex.handle(signed(commands.germinate("classifier.1", "bottleneck_mlp",
                                               parameters={**FAST, "rank": 4}))).accepted
    narrow = ex.seed("classifier.1").trainable_parameters
    assert ex.handle(signed(commands.cull("classifier.1"))).accepted
    out_of_bounds = ex.handle(signed(commands.germinate("features.2", "conv_adapter", parameters={"width": 10**6})))
    assert not out_of_bounds.accepted and out_of_bounds.reason == "gate_failed" and "width" in out_of_bounds.detail
    # rank 4 on Linear(64 -> 10): 64*4 + 4 + 4*10 + 10 parameters
    assert narrow == 64 * 4 + 4 + 4 * 10 + 10


def test_an_optimizer_made_after_the_executor_is_bound_with_the_seeds_in_groups_of_their_own(
        tmp_path: Path) -> None:
    """What a trainer does: it builds its optimizer from ``model.parameters()`` once the seeds
    are grafted, so a seed's parameters land in a host group until the executor adopts them."""
    torch.manual_seed(0)
    model = Net()
    ex = kasmina.Executor(model, sites=["features.2", "classifier.1"], db=f"sqlite:///{tmp_path / 'run.db'}",
                          secret=SECRET, catalogue=_catalogue())
    try:
        assert ex.handle(signed(commands.germinate("classifier.1", "bottleneck_mlp", parameters=FAST))).accepted
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        ex.bind_optimizer(opt, scheduler)
        seed_ids = {id(p) for p in ex.sites["classifier.1"].seed.parameters()}
        (host,) = [g for g in opt.param_groups if "kasmina_seed" not in g]
        (seed,) = [g for g in opt.param_groups if g.get("kasmina_seed") == "classifier.1"]
        assert seed_ids.isdisjoint(id(p) for p in host["params"]) and {id(p) for p in seed["params"]} == seed_ids
        assert len(scheduler.base_lrs) == 2 and ex.schedulers == [scheduler]
        train(model, opt, ex, 2)
        scheduler.step()
        ex.step()
        assert seed["lr"] == host["lr"] == 0.5
    finally:
        ex.close()
