"""``kasmina demo``: grow a real network on a real data set, through the real executor.

1. A narrow host (:class:`~kasmina.demo.model.DigitsNet`) is trained alone for
   ``host_steps`` steps on the digits training split.
2. It is wrapped by :class:`kasmina.Executor` with three seed sites; a copy of it, the
   *host-only control*, keeps training beside it on exactly the same batches with no seeds,
   so "did the seeds help?" is answered against the same amount of training.
3. The scripted controller (:mod:`kasmina.demo.controller`) germinates seeds with signed
   commands; the loop reports the validation accuracy to ``Executor.step`` (gate G4 reads
   it) and the executor moves each seed through its lifecycle.
4. Every ``checkpoint_every`` steps the model, both optimizers and the loop's own state are
   checkpointed (atomically, referenced by a ``checkpoint_saved`` event with its SHA-256).
   ``resume=True`` continues a killed run from its log and newest valid checkpoint.

The log is the source of truth for the summary and the plot: seeds, stages, culls and the
alpha curves are all read back from it.
"""

from __future__ import annotations

import copy
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from kasmina.errors import KasminaError
from kasmina.events import EventStore, migrate, parse
from kasmina.events.urls import redact
from kasmina.lifecycle import events as ev

DEMO_STARTED = "demo_started"
DEMO_FINISHED = "demo_finished"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    db: str = "sqlite:///kasmina.db"
    steps: int = 1200
    rng: int = 0
    device: str = "cpu"
    host_steps: int = 1000
    hidden: int = 8
    batch: int = 64
    lr: float = 5e-3
    weight_decay: float = 0.01
    checkpoint_every: int | None = None  # default: about 40 checkpoints a run
    checkpoints: str | None = None  # default: next to the SQLite file, else ./kasmina-checkpoints
    plot: str | None = None
    resume: bool = False

    @property
    def dwell(self) -> int:
        """Steps per lifecycle stage, scaled so the whole plan fits in ``steps``."""
        return max(2, self.steps // 12)

    @property
    def every(self) -> int:
        return self.checkpoint_every or max(1, self.steps // 40)

    def recorded(self) -> dict[str, Any]:
        """What defines a run (a resume must match it)."""
        return {"steps": self.steps, "rng": self.rng, "host_steps": self.host_steps, "hidden": self.hidden,
                "batch": self.batch, "lr": self.lr, "weight_decay": self.weight_decay}


@dataclass(slots=True)
class DemoReport:
    accuracy_host_only: float
    accuracy_final: float
    accuracy_at_graft: float
    seeds: list[dict[str, Any]]
    events: int
    db: str
    steps: int
    resumed_from_step: int | None = None
    checkpoint: str | None = None
    plot: str | None = None
    seconds: float = 0.0
    refusals: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the log ----------------------------------------------------------------------------------

def _notes(store: EventStore, kind: str) -> list[dict[str, Any]]:
    return [dict(e.data) for e in store.read(stream_id=ev.EXECUTOR_STREAM)
            if e.type == ev.RUN_NOTE and e.data.get("kind") == kind]


def _checkpoint_dir(options: DemoOptions) -> Path:
    if options.checkpoints:
        return Path(options.checkpoints)
    parsed = parse(options.db)
    if parsed.backend == "sqlite":
        return Path(parsed.sqlite_path).with_name(Path(parsed.sqlite_path).name + ".checkpoints")
    # One folder per database, so two runs on two logs never share one.
    url = parsed.url
    where = f"{url.host or 'local'}-{url.port or 5432}-{url.database or 'db'}" if url is not None else "memory"
    return Path("kasmina-checkpoints") / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in where)


def _check_log(store: EventStore, options: DemoOptions, given: frozenset[str]) -> DemoOptions:
    """The options of the run to do: ``options`` for a fresh one; for ``--resume``, the recorded
    run's settings (those the user gave must agree). Refuses a log that holds something else."""
    started = _notes(store, DEMO_STARTED)
    if not started:
        if store.head()[0] > 0:
            raise KasminaError(f"{redact(options.db)} already holds {store.head()[0]} events that are not a "
                               "kasmina demo run; use a fresh --db")
        return options
    if not options.resume:
        raise KasminaError(f"{redact(options.db)} already holds a demo run: pass --resume to continue it, "
                           "or use another --db")
    recorded = started[-1]["config"]
    for key, mine in options.recorded().items():
        if key in given and recorded.get(key) != mine:
            flag = "--" + key.replace("_", "-")
            raise KasminaError(f"--resume: the run in {redact(options.db)} was started with {flag} "
                               f"{recorded.get(key)}, not {mine}; pass the same value or leave it out")
    return replace(options, **{k: v for k, v in recorded.items() if k in options.recorded()})


# -- training -----------------------------------------------------------------------------------

def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((model(x).argmax(dim=1) == y).float().mean())


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _optimizer(model: torch.nn.Module, options: DemoOptions) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)


Progress = Callable[[int, int, str], None]


@dataclass(slots=True)
class _Loop:
    """The training loop's own state: both models, their optimizers, and what it has seen.

    Everything a checkpoint's ``extra`` must carry beyond what the executor saves itself
    (the grown host and its optimizer) lives here, so saving and restoring are one pair.
    """

    control: torch.nn.Module
    control_opt: torch.optim.Optimizer
    at_graft: float
    ema: float | None = None
    history: dict[str, list[float]] = field(
        default_factory=lambda: {"step": [], "accuracy": [], "accuracy_host_only": []})

    def extra(self) -> dict[str, Any]:
        return {"control": self.control.state_dict(), "control_optimizer": self.control_opt.state_dict(),
                "history": self.history, "ema": self.ema, "accuracy_at_graft": self.at_graft}

    def load(self, extra: dict[str, Any]) -> None:
        self.control.load_state_dict(extra["control"])
        self.control_opt.load_state_dict(extra["control_optimizer"])
        self.history = {k: list(v) for k, v in extra["history"].items()}
        self.ema = extra["ema"]
        self.at_graft = float(extra["accuracy_at_graft"])


def run(options: DemoOptions, *, progress: Progress | None = None, say: Callable[[str], None] | None = None,
        given: frozenset[str] | None = None) -> DemoReport:
    """Run (or continue, or re-report) the demo described by ``options``.

    ``given`` names the options the user set explicitly (all of them by default): with
    ``resume``, the others are taken from the run recorded in the log.
    """
    from kasmina.demo import data, model, plot
    from kasmina.executor import Executor
    from kasmina.executor import checkpoint as checkpoints
    from kasmina.executor.measure import MetricPolicy

    started_at = time.perf_counter()
    tell = say or (lambda line: None)
    if options.device == "cuda" and not torch.cuda.is_available():
        raise KasminaError("--device cuda: no CUDA device is available (use --device cpu)")
    if options.plot is not None:
        plot.check_target(options.plot)
    store = migrate.open_log(options.db)
    try:
        options = _check_log(store, options, frozenset(DemoOptions.__slots__) if given is None else given)
        finished = bool(_notes(store, DEMO_FINISHED))
        started = bool(_notes(store, DEMO_STARTED))
        digits = data.load().to(torch.device(options.device))
        torch.manual_seed(options.rng)
        host = model.DigitsNet(options.hidden).to(options.device)
        optimizer = _optimizer(host, options)
        found, problems = checkpoints.latest(store)
        if found is None and problems:
            # Seeds may have moved on since: re-training the host would pair the log's
            # stages with weights they never belonged to.
            raise KasminaError(f"the run in {redact(options.db)} cannot be resumed: no usable checkpoint "
                               f"({problems[0]}); start a new run with another --db")
        for problem in problems:
            tell(f"passing over a checkpoint: {problem}")
        if found is None:  # fresh, or killed before the first checkpoint: pre-training is deterministic
            _pretrain(host, optimizer, digits, options, progress)
        control = copy.deepcopy(host)
        control_opt = _optimizer(control, options)
        # A copy: load_state_dict keeps tensors that need no cast, so without it the two
        # optimizers would share (and both update in place) one set of AdamW moments.
        control_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        loop = _Loop(control, control_opt, at_graft=_accuracy(host, digits.x_val, digits.y_val))
        secret = secrets.token_bytes(32)  # the controller and executor share it in-process
        ex = Executor(host, model.SITES, db=store, secret=secret, catalogue=model.catalogue(), optimizer=optimizer,
                      run_seed=options.rng, metric=MetricPolicy(name="val_acc_ema", higher_is_better=True,
                                                                tolerance=0.02))
        try:
            resumed_from = None
            if found is not None:
                restored = ex.restore()
                assert restored is not None  # latest() just vouched for it
                loop.load(restored.extra)
                resumed_from = restored.checkpoint.step
                tell(f"resumed: log at step {ex.step_count}, model from the checkpoint of step "
                     f"{resumed_from} ({restored.checkpoint.path.name})")
            else:
                if not started:
                    ex.note(DEMO_STARTED, {"config": options.recorded(),
                                           "accuracy_at_graft": round(loop.at_graft, 6), "sites": list(model.SITES)})
                # The grafted starting point: a kill from here on never trains the host alone again.
                ex.checkpoint(_checkpoint_dir(options), extra=loop.extra())
            first_step = ex.step_count
            last_checkpoint = _train(ex, host, optimizer, loop, digits, options, secret, progress, tell)
            final = _accuracy(host, digits.x_val, digits.y_val)
            host_only = _accuracy(control, digits.x_val, digits.y_val)
            if not finished or ex.step_count > first_step:
                ex.note(DEMO_FINISHED, {"accuracy_host_only": round(host_only, 6), "accuracy_final": round(final, 6)})
            report = DemoReport(accuracy_host_only=round(host_only, 4), accuracy_final=round(final, 4),
                                accuracy_at_graft=round(loop.at_graft, 4), seeds=seed_summaries(store, model.SITES),
                                events=0, db=redact(options.db), steps=ex.step_count,
                                resumed_from_step=resumed_from, checkpoint=last_checkpoint,
                                refusals=refusal_summaries(store))
        finally:
            ex.close()
        report.events = store.head()[0]
        if options.plot:
            report.plot = str(plot.write(options.plot, store, model.SITES, loop.history))
        report.seconds = round(time.perf_counter() - started_at, 2)
        return report
    finally:
        store.close()


def _pretrain(host: torch.nn.Module, optimizer: torch.optim.Optimizer, digits: Any, options: DemoOptions,
              progress: Progress | None) -> None:
    for step in range(options.host_steps):
        _train_step(host, optimizer, *digits.batch(options.rng, step, options.batch))
        if progress is not None and step % 50 == 0:
            progress(0, options.steps, f"training the host alone ({step}/{options.host_steps})")


def _train(ex: Any, host: torch.nn.Module, optimizer: torch.optim.Optimizer, loop: _Loop, digits: Any,
           options: DemoOptions, secret: bytes, progress: Progress | None,
           tell: Callable[[str], None]) -> str | None:
    """The steps with seeds, up to ``options.steps``; returns the last checkpoint written."""
    from kasmina.demo.controller import ScriptedController, default_plan

    controller = ScriptedController(default_plan(options.hidden), secret, dwell=options.dwell, rng=options.rng)
    last_checkpoint = None
    while ex.step_count < options.steps:
        for what, result in controller.act(ex):
            tell(f"step {ex.step_count}: {what}: "
                 f"{'accepted' if result.accepted else 'refused (' + result.reason + ')'}")
            _tell_transitions(ex.store, result.positions, tell)
        x, y = digits.batch(options.rng, options.host_steps + ex.step_count, options.batch)
        loss = _train_step(host, optimizer, x, y)
        _train_step(loop.control, loop.control_opt, x, y)  # the same batch, no seeds
        accuracy = _accuracy(host, digits.x_val, digits.y_val)
        loop.ema = accuracy if loop.ema is None else 0.9 * loop.ema + 0.1 * accuracy
        positions = ex.step(metrics={"val_acc_ema": loop.ema, "val_acc": accuracy, "loss": loss})
        _tell_transitions(ex.store, positions, tell)
        loop.history["step"].append(ex.step_count)
        loop.history["accuracy"].append(round(accuracy, 6))
        loop.history["accuracy_host_only"].append(round(_accuracy(loop.control, digits.x_val, digits.y_val), 6))
        if progress is not None:
            progress(ex.step_count, options.steps, _status(ex, accuracy))
        if ex.step_count % options.every == 0 or ex.step_count == options.steps:
            last_checkpoint = str(ex.checkpoint(_checkpoint_dir(options), extra=loop.extra()).path)
    return last_checkpoint


def _tell_transitions(store: EventStore, positions: Sequence[int], tell: Callable[[str], None]) -> None:
    """A line per stage change just recorded (read back from the log: only when there are any)."""
    if not positions:
        return
    for event in store.read(after=min(positions) - 1, upto=max(positions)):
        if event.type == ev.STAGE_CHANGED:
            why = f" ({event.data['gate']}: {event.data['reason']})" if event.data.get("passed") is False else ""
            tell(f"step {event.data['step']}: {event.stream_id} {event.data['from_stage']} -> "
                 f"{event.data['to_stage']}{why}")


def _status(ex: Any, accuracy: float) -> str:
    busy = [v for v in ex.seeds() if v.stage not in ("DORMANT", "UNKNOWN", "FOSSILIZED")]
    seeds = ", ".join(f"{v.seed_id} {v.stage.lower()} a={v.alpha:.2f}" for v in busy) or "no seed in flight"
    return f"val acc {accuracy:.3f} | {seeds}"


# -- reading the log back -----------------------------------------------------------------------

def seed_summaries(store: EventStore, sites: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per site: final stage, generations, blend mode and every cull with its step and reason."""
    from kasmina.lifecycle.evolve import evolve
    from kasmina.lifecycle.stages import Stage
    from kasmina.lifecycle.state import SeedState

    out = []
    for site in sites:
        state = SeedState(site)
        culls = []
        for event in store.read(stream_id=site):
            state = evolve(state, event)
            if event.type == ev.STAGE_CHANGED and event.data.get("to_stage") == Stage.CULLED.name:
                culls.append({"generation": state.generation, "step": event.data.get("step"),
                              "gate": event.data.get("gate"), "reason": event.data.get("reason")})
        mode = (state.blend or {}).get("mode") if state.generation else None
        out.append({"seed_id": site, "stage": state.stage.name, "blend_mode": mode or ("CONVEX" if state.generation
                                                                                      else None),
                    "generations": state.generation, "blueprint_id": state.blueprint_id, "culls": culls})
    return out


def refusal_summaries(store: EventStore) -> list[dict[str, Any]]:
    return [{"seed_id": e.data.get("seed_id"), "reason": e.data.get("reason"), "detail": e.data.get("detail")}
            for e in store.read(stream_id=ev.EXECUTOR_STREAM) if e.type == ev.COMMAND_REFUSED]


def render(report: DemoReport) -> str:
    """The human summary printed at the end of a run."""
    gain = (report.accuracy_final - report.accuracy_host_only) * 100
    lines = [
        f"validation accuracy: host only {report.accuracy_host_only:.4f}, with seeds {report.accuracy_final:.4f} "
        f"({gain:+.1f} points; {report.accuracy_at_graft:.4f} when the seeds were grafted)",
        f"{'seed':<8} {'stage':<12} {'generations':>11}  {'blend':<11} why culled",
    ]
    for seed in report.seeds:
        why = "; ".join(f"generation {c['generation']} at step {c['step']}: {c['gate'] or 'command'}: {c['reason']}"
                        for c in seed["culls"])
        lines.append(f"{seed['seed_id']:<8} {seed['stage']:<12} {seed['generations']:>11}  "
                     f"{seed['blend_mode'] or '-':<11} {why or '-'}")
    for refusal in report.refusals:
        lines.append(f"refused: {refusal['seed_id']}: {refusal['reason']} ({refusal['detail']})")
    lines.append(f"{report.events} events in {report.db}; {report.steps} steps"
                 + (f", resumed from the checkpoint of step {report.resumed_from_step}"
                    if report.resumed_from_step is not None else "")
                 + (f"; plot: {report.plot}" if report.plot else "") + f"; {report.seconds:.1f} s")
    return "\n".join(lines)
