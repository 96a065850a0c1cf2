"""``kasmina demo``: grow a real network on a real task, through the real executor.

One loop serves every task (:mod:`kasmina.demo.task`):

1. The host trains alone for ``host_steps`` steps.
2. It is wrapped by :class:`kasmina.Executor`; a copy of it, the *host-only* contender,
   keeps training beside it on exactly the same batches with no seeds. The scripted
   controller (:mod:`kasmina.demo.controller`) grafts the task's seeds with signed commands;
   the loop reports the validation metric to ``Executor.step`` (gate G4 reads it) and the
   executor moves each seed through its lifecycle.
3. The *static* contender (:mod:`kasmina.demo.contenders`): the grown network's final
   architecture, trained from scratch for ``host_steps + steps`` steps on the same batches.
4. Every ``checkpoint_every`` steps the model, both optimizers and the loop's state are
   checkpointed. ``resume=True`` continues a killed run exactly: the steps trained after the
   newest checkpoint are trained again while the executor *follows* the decisions the log
   already holds for them (a follower over a view of the log clipped at the checkpoint,
   moved forward step by step), and it leads again once it has caught up. A resumed run ends
   as an uninterrupted one does: the same decisions, the same weights.

The log is the source of truth for the summary and the plot: seeds, stages, culls and the
alpha curves are all read back from it.
"""

from __future__ import annotations

import copy
import secrets
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from kasmina.demo.contenders import NAMES as CONTENDERS
from kasmina.demo.task import DemoTask, evaluating
from kasmina.errors import KasminaError
from kasmina.events import DEFAULT_RUN, EventStore, migrate, parse
from kasmina.events.runs import resolve as resolve_run
from kasmina.events.urls import redact
from kasmina.executor.catchup import CatchUp
from kasmina.lifecycle import events as ev

DEMO_STARTED = "demo_started"
DEMO_FINISHED = "demo_finished"
#: The options that size a run; ``None`` takes the task's default.
SIZES = ("steps", "host_steps", "batch", "lr", "weight_decay", "width", "context")


def tasks() -> dict[str, DemoTask]:
    from kasmina.demo.digits import TASK as DIGITS
    from kasmina.demo.text import TASK as TEXT

    return {DIGITS.name: DIGITS, TEXT.name: TEXT}


def get_task(name: str) -> DemoTask:
    known = tasks()
    if name not in known:
        raise KasminaError(f"unknown demo task {name!r}; choose one of {', '.join(sorted(known))}")
    return known[name]


@dataclass(frozen=True, slots=True)
class DemoOptions:
    task: str = "digits"
    db: str = "sqlite:///kasmina.db"
    steps: int | None = None
    rng: int = 0
    device: str = "cpu"
    host_steps: int | None = None
    batch: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    width: int | None = None
    context: int | None = None
    checkpoint_every: int | None = None  # default: about 40 checkpoints a run
    checkpoints: str | None = None  # default: next to the SQLite file, else ./kasmina-checkpoints
    plot: str | None = None
    resume: bool = False
    run: str | None = None  # the run in the log (default: $KASMINA_RUN, else "default")

    def resolved(self, task: DemoTask) -> DemoOptions:
        """These options with the task's defaults where none was given."""
        return replace(self, **{k: task.defaults[k] for k in SIZES if getattr(self, k) is None})

    @property
    def every(self) -> int:
        return self.checkpoint_every or max(1, int(self.steps or 0) // 40)

    def recorded(self) -> dict[str, Any]:
        """What defines a run (a resume must match it)."""
        return {"task": self.task, "rng": self.rng, **{k: getattr(self, k) for k in SIZES}}


@dataclass(slots=True)
class DemoReport:
    task: str
    metric: str
    contenders: dict[str, dict[str, Any]]
    at_graft: float
    seeds: list[dict[str, Any]]
    events: int
    db: str
    steps: int
    host_steps: int
    log_digest: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    resumed_from_step: int | None = None
    steps_retrained: int = 0
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
    run = resolve_run(options.run)
    if parsed.backend == "sqlite":
        folder = Path(parsed.sqlite_path).with_name(Path(parsed.sqlite_path).name + ".checkpoints")
    else:
        # One folder per database, so two runs on two logs never share one.
        url = parsed.url
        where = f"{url.host or 'local'}-{url.port or 5432}-{url.database or 'db'}" if url is not None else "memory"
        folder = Path("kasmina-checkpoints") / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in where)
    # ...and one per run in it (run names are path-safe: kasmina.events.runs.check_name).
    return folder if run == DEFAULT_RUN else folder / run


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_log(store: EventStore, options: DemoOptions, given: frozenset[str]) -> DemoOptions:
    """The options of the run to do: ``options`` for a fresh one; for ``--resume``, the recorded
    run's settings (those the user gave must agree). Refuses a log that holds something else."""
    started = _notes(store, DEMO_STARTED)
    if not started:
        if store.head()[0] > 0:
            raise KasminaError(f"{redact(options.db)} already holds {store.head()[0]} events that are not a "
                               "kasmina demo run; use a fresh --db")
        return options.resolved(get_task(options.task))
    if not options.resume:
        raise KasminaError(f"{redact(options.db)} already holds a demo run: pass --resume to continue it, "
                           "or use another --db")
    recorded = {"task": "digits", **started[-1]["config"]}  # runs before the text task were digits
    if "hidden" in recorded:  # the digits run's width, as the first runs recorded it
        recorded.setdefault("width", recorded.pop("hidden"))
    for key, mine in options.recorded().items():
        if key in given and mine is not None and recorded.get(key) != mine:
            raise KasminaError(f"--resume: the run in {redact(options.db)} was started with {_flag(key)} "
                               f"{recorded.get(key)}, not {mine}; pass the same value or leave it out")
    mine = {f.name for f in fields(DemoOptions)}
    return replace(options, **{k: v for k, v in recorded.items() if k in mine}).resolved(get_task(recorded["task"]))


def _check_data(store: EventStore, options: DemoOptions, described: dict[str, Any]) -> None:
    """A resumed run must train on the data it started with (the text task's corpus hash)."""
    started = _notes(store, DEMO_STARTED)
    if not started:
        return
    for key, value in described.items():
        before = started[-1].get("data", {}).get(key)
        if before is not None and before != value:
            raise KasminaError(f"--resume: the run in {redact(options.db)} was trained on other data ({key} "
                               f"sha256 {str(before.get('sha256', before))[:12]}..., here "
                               f"{str(value.get('sha256', value))[:12]}...); resume it where it started")


def _check_extra(extra: dict[str, Any], options: DemoOptions) -> None:
    """A checkpoint written by a kasmina before the three contenders cannot be continued here."""
    if "at_graft" not in extra or "seconds" not in extra:
        raise KasminaError(f"the run in {redact(options.db)} was written by an earlier kasmina (before the "
                           "three contenders) and cannot be resumed by this one; start a new run with another --db")


# -- training -----------------------------------------------------------------------------------

Progress = Callable[[int, int, str], None]


def _train_step(task: DemoTask, model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor) -> torch.Tensor:
    loss = task.loss(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _optimizer(model: torch.nn.Module, options: DemoOptions) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=float(options.lr), weight_decay=float(options.weight_decay))


def _evaluate(task: DemoTask, model: torch.nn.Module, data: Any) -> float:
    with evaluating(model):
        return task.evaluate(model, data)


@dataclass(slots=True)
class _Loop:
    """The training loop's own state: the host-only contender, its optimizer, what it has seen.

    Everything a checkpoint's ``extra`` must carry beyond what the executor saves itself
    (the grown host and its optimizer) lives here, so saving and restoring are one pair.
    History and seconds are per contender; steps count from the host's first step.
    """

    control: torch.nn.Module
    control_opt: torch.optim.Optimizer
    at_graft: float
    ema: float | None = None
    history: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {name: {"step": [], "value": []} for name in CONTENDERS})
    seconds: dict[str, float] = field(default_factory=lambda: {"pretrain": 0.0, "host": 0.0, "grown": 0.0})

    def extra(self) -> dict[str, Any]:
        return {"control": self.control.state_dict(), "control_optimizer": self.control_opt.state_dict(),
                "history": self.history, "ema": self.ema, "at_graft": self.at_graft, "seconds": self.seconds}

    def load(self, extra: dict[str, Any]) -> None:
        self.control.load_state_dict(extra["control"])
        self.control_opt.load_state_dict(extra["control_optimizer"])
        self.history = {k: {s: list(v) for s, v in series.items()} for k, series in extra["history"].items()}
        self.ema = extra["ema"]
        self.at_graft = float(extra["at_graft"])
        self.seconds = {k: float(v) for k, v in extra["seconds"].items()}

    def record(self, name: str, step: int, value: float) -> None:
        self.history[name]["step"].append(step)
        self.history[name]["value"].append(round(value, 6))


def run(options: DemoOptions, *, progress: Progress | None = None, say: Callable[[str], None] | None = None,
        given: frozenset[str] | None = None) -> DemoReport:
    """Run (or continue, or re-report) the demo described by ``options``.

    ``given`` names the options the user set explicitly (all of them by default): with
    ``resume``, the others are taken from the run recorded in the log.
    """
    from kasmina.demo import plot
    from kasmina.executor import checkpoint as checkpoints
    from kasmina.rebuild import decisions_digest

    started_at = time.perf_counter()
    tell = say or (lambda line: None)
    get_task(options.task)
    if options.device == "cuda" and not torch.cuda.is_available():
        raise KasminaError("--device cuda: no CUDA device is available (use --device cpu)")
    if options.plot is not None:
        plot.check_target(options.plot)
    store = migrate.open_log(options.db, run=resolve_run(options.run), config=options.recorded())
    try:
        options = _check_log(store, options, frozenset(f.name for f in fields(DemoOptions)) if given is None
                             else given)
        task = get_task(options.task)
        data = task.load(options)
        described = task.describe(data)
        _check_data(store, options, described)
        finished = _notes(store, DEMO_FINISHED)
        started = bool(_notes(store, DEMO_STARTED))
        torch.manual_seed(options.rng)
        host = task.host(options).to(options.device)
        optimizer = _optimizer(host, options)
        found, problems = checkpoints.latest(store)
        if found is None and problems:
            # Seeds may have moved on since: re-training the host would pair the log's
            # stages with weights they never belonged to.
            raise KasminaError(f"the run in {redact(options.db)} cannot be resumed: no usable checkpoint "
                               f"({problems[0]}); start a new run with another --db")
        for problem in problems:
            tell(f"passing over a checkpoint: {problem}")
        loop = _Loop(host, optimizer, at_graft=0.0)  # the control is copied once the host is trained
        if found is None:  # fresh, or killed before the first checkpoint: pre-training is deterministic
            _pretrain(task, host, optimizer, data, options, loop, progress)
        loop.control = copy.deepcopy(host)
        loop.control_opt = _optimizer(loop.control, options)
        # A copy: load_state_dict keeps tensors that need no cast, so without it the two
        # optimizers would share (and both update in place) one set of AdamW moments.
        loop.control_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        secret = secrets.token_bytes(32)  # the controller and executor share it in-process
        catch_up = None
        if found is not None and any(True for _ in store.read(after=found.position)):
            from kasmina.events import LogView

            view = LogView(store, found.position)
            catch_up = CatchUp(store, view, found.position)
            ex = _executor(task, options, host, optimizer, view, secret, data, role="follower")
        else:
            ex = _executor(task, options, host, optimizer, store, secret, data, role="leader")
        try:
            resumed_from = None
            first_step = ex.step_count
            if found is not None:
                restored = ex.restore()
                assert restored is not None  # latest() just vouched for it
                _check_extra(restored.extra, options)
                loop.load(restored.extra)
                resumed_from = restored.checkpoint.step
                # As on a fresh run: one forward shows each block site its shapes before the
                # controller may graft there (eval mode, no autograd: nothing trains).
                _evaluate(task, host, data)
                tell(f"resumed: model from the checkpoint of step {resumed_from} "
                     f"({restored.checkpoint.path.name})" + (
                         f"; retraining the steps after it up to step {catch_up.last_step} under the log's "
                         "decisions" if catch_up is not None and catch_up.last_step > resumed_from else ""))
            else:
                # After wrapping: this first forward also shows each block site its shapes,
                # which a sequence seed needs before it can be grafted there.
                loop.at_graft = _evaluate(task, host, data)
                if not started:
                    ex.note(DEMO_STARTED, {"config": options.recorded(), "data": described,
                                           "at_graft": round(loop.at_graft, 6), "sites": list(task.sites)})
                # The grafted starting point: a kill from here on never trains the host alone again.
                ex.checkpoint(_checkpoint_dir(options), extra=loop.extra())
            last_checkpoint = _train(task, ex, host, optimizer, loop, data, options, secret, catch_up, progress, tell)
            grown = _evaluate(task, host, data)
            host_only = _evaluate(task, loop.control, data)
            from kasmina.demo.contenders import Contender, parameters

            results = {
                "host": Contender(host_only, parameters(loop.control), loop.seconds["pretrain"] + loop.seconds["host"]),
                "grown": Contender(grown, parameters(host), loop.seconds["pretrain"] + loop.seconds["grown"]),
            }
            recorded_static = finished[-1].get("contenders", {}).get("static") if finished else None
            if recorded_static is not None and ex.step_count == first_step:
                results["static"] = Contender(recorded_static[task.metric.name], recorded_static["parameters"],
                                              recorded_static["seconds"])
                loop.history["static"] = finished[-1].get("static_history", loop.history["static"])
            else:
                results["static"] = _train_static(task, ex, options, data, loop, progress)
            contenders = {k: v.to_dict(task.metric.name) for k, v in results.items()}
            if not finished or ex.step_count > first_step or recorded_static is None:
                ex.note(DEMO_FINISHED, {"contenders": contenders, "static_history": _thinned(loop.history["static"])})
            report = DemoReport(task=task.name, metric=task.metric.name, contenders=contenders,
                                at_graft=round(loop.at_graft, 6), seeds=seed_summaries(store, task.sites),
                                events=0, db=redact(options.db), steps=ex.step_count,
                                host_steps=int(options.host_steps), data=described, resumed_from_step=resumed_from,
                                steps_retrained=max(0, min(catch_up.last_step, ex.step_count) - resumed_from)
                                if catch_up is not None and resumed_from is not None else 0,
                                checkpoint=last_checkpoint, refusals=refusal_summaries(store))
        finally:
            ex.close()
        report.events = store.head()[0]
        report.log_digest = decisions_digest(store)
        if options.plot:
            report.plot = str(plot.write(options.plot, store, task.sites, loop.history, offset=int(options.host_steps),
                                         label=task.metric.label))
        report.seconds = round(time.perf_counter() - started_at, 2)
        store.mark_run("finished")
        return report
    except BaseException:
        try:
            store.mark_run("crashed")
        except KasminaError:
            pass  # the log is away: the run stays "running", and reads as crashed once this process is gone
        raise
    finally:
        store.close()


def _executor(task: DemoTask, options: DemoOptions, host: torch.nn.Module, optimizer: torch.optim.Optimizer,
              db: EventStore, secret: bytes, data: Any, *, role: str) -> Any:
    from kasmina.executor import Executor
    from kasmina.executor.measure import MetricPolicy

    metric = task.metric
    return Executor(host, task.sites, db=db, secret=secret, catalogue=task.catalogue(), optimizer=optimizer,
                    run_seed=options.rng, role=role, probe=task.probe(data), causal=task.causal,
                    metric=MetricPolicy(name=f"{metric.name}_smoothed", higher_is_better=metric.higher_is_better,
                                        tolerance=metric.tolerance))


def _total(options: DemoOptions) -> int:
    """Steps of the whole run, for the progress bar: the host alone, with seeds, the static network."""
    return 2 * (int(options.host_steps) + int(options.steps))


#: Points at most on a curve of the host alone or the static network (no gate reads these).
CURVE_POINTS = 200


def _curve_every(task: DemoTask, options: DemoOptions, steps: int) -> int:
    return max(task.eval_every(options), steps // CURVE_POINTS)


def _pretrain(task: DemoTask, host: torch.nn.Module, optimizer: torch.optim.Optimizer, data: Any,
              options: DemoOptions, loop: _Loop, progress: Progress | None) -> None:
    every = _curve_every(task, options, int(options.host_steps))
    for step in range(int(options.host_steps)):
        began = time.perf_counter()
        _train_step(task, host, optimizer, *data.batch(options.rng, step, int(options.batch)))
        loop.seconds["pretrain"] += time.perf_counter() - began
        if (step + 1) % every == 0:
            value = _evaluate(task, host, data)
            for name in ("host", "grown"):  # one network until the seeds are grafted
                loop.record(name, step + 1, value)
        if progress is not None and step % 25 == 0:
            progress(step, _total(options), f"training the host alone ({step}/{options.host_steps})")


def _train(task: DemoTask, ex: Any, host: torch.nn.Module, optimizer: torch.optim.Optimizer, loop: _Loop,
           data: Any, options: DemoOptions, secret: bytes, catch_up: CatchUp | None, progress: Progress | None,
           tell: Callable[[str], None]) -> str | None:
    """The steps with seeds, up to ``options.steps``; returns the last checkpoint written."""
    from kasmina.demo.controller import ScriptedController

    controller = ScriptedController(task.plan(options), secret, stages=task.stages(options), rng=options.rng)
    every = task.eval_every(options)
    smoothing = 0.9 if every == 1 else 0.0  # per-step evaluations are noisy; sparse ones are not averaged
    metric = task.metric
    host_steps = int(options.host_steps)
    last_checkpoint = None
    while ex.step_count < int(options.steps):
        if catch_up is not None:
            catch_up.fold(ex)
            if catch_up.done(ex):
                catch_up.finish(ex)
                tell(f"step {ex.step_count}: caught up with the log; leading again")
                catch_up = None
        if catch_up is None:
            for what, result in controller.act(ex):
                tell(f"step {ex.step_count}: {what}: "
                     f"{'accepted' if result.accepted else 'refused (' + result.reason + ')'}")
                _tell_transitions(ex.store, result.positions, tell)
        x, y = data.batch(options.rng, host_steps + ex.step_count, int(options.batch))
        began = time.perf_counter()
        loss = _train_step(task, host, optimizer, x, y)
        middle = time.perf_counter()
        _train_step(task, loop.control, loop.control_opt, x, y)  # the same batch, no seeds
        loop.seconds["host"] += time.perf_counter() - middle
        metrics: dict[str, Any] = {"loss": loss}
        step = ex.step_count + 1
        if step % every == 0 or step == int(options.steps):
            value = _evaluate(task, host, data)
            loop.ema = value if loop.ema is None else smoothing * loop.ema + (1 - smoothing) * value
            metrics.update({metric.name: value, f"{metric.name}_smoothed": loop.ema})
            loop.record("grown", host_steps + step, value)
            loop.record("host", host_steps + step, _evaluate(task, loop.control, data))
        began_step = time.perf_counter()
        positions = ex.step(metrics=metrics)
        loop.seconds["grown"] += (middle - began) + (time.perf_counter() - began_step)
        _tell_transitions(ex.store, positions, tell)
        if progress is not None:
            progress(host_steps + ex.step_count, _total(options), _status(ex, loop, metric.label))
        if catch_up is None and (ex.step_count % options.every == 0 or ex.step_count == int(options.steps)):
            last_checkpoint = str(ex.checkpoint(_checkpoint_dir(options), extra=loop.extra()).path)
    if catch_up is not None:  # killed after its last step's decisions, before its checkpoint
        catch_up.fold(ex)
        catch_up.finish(ex)
        last_checkpoint = str(ex.checkpoint(_checkpoint_dir(options), extra=loop.extra()).path)
    return last_checkpoint


def _train_static(task: DemoTask, ex: Any, options: DemoOptions, data: Any, loop: _Loop,
                  progress: Progress | None) -> Any:
    """The static contender, from scratch, on the grown run's batches (deterministic: a run
    killed while it trains trains it again)."""
    from kasmina.demo.contenders import Contender, parameters, static_network

    torch.manual_seed(options.rng)  # the host's own initial weights
    net = static_network(task.host(options).to(options.device), ex, task.sites, options.rng)
    opt = _optimizer(net, options)
    total = int(options.host_steps) + int(options.steps)
    every = _curve_every(task, options, total)
    loop.history["static"] = {"step": [], "value": []}
    seconds = 0.0
    for step in range(total):
        began = time.perf_counter()
        _train_step(task, net, opt, *data.batch(options.rng, step, int(options.batch)))
        seconds += time.perf_counter() - began
        if (step + 1) % every == 0 or step + 1 == total:
            loop.record("static", step + 1, _evaluate(task, net, data))
        if progress is not None and step % 25 == 0:
            progress(total + step, _total(options), f"the static network from scratch ({step}/{total})")
    return Contender(_evaluate(task, net, data), parameters(net), seconds)


#: Points of the static contender's curve kept in the log (for the plot of a re-reported run).
NOTED_POINTS = 100


def _thinned(series: dict[str, list[float]], points: int = NOTED_POINTS) -> dict[str, list[float]]:
    """At most ``points`` evenly spaced entries of a curve, its last one included (a note is small)."""
    n = len(series["step"])
    if n <= points:
        return {k: list(v) for k, v in series.items()}
    keep = sorted({(i * (n - 1)) // (points - 1) for i in range(points)})
    return {k: [v[i] for i in keep] for k, v in series.items()}


def _tell_transitions(store: EventStore, positions: Sequence[int], tell: Callable[[str], None]) -> None:
    """A line per stage change just recorded (read back from the log: only when there are any)."""
    if not positions:
        return
    for event in store.read(after=min(positions) - 1, upto=max(positions)):
        if event.type == ev.STAGE_CHANGED:
            why = f" ({event.data['gate']}: {event.data['reason']})" if event.data.get("passed") is False else ""
            tell(f"step {event.data['step']}: {event.stream_id} {event.data['from_stage']} -> "
                 f"{event.data['to_stage']}{why}")


def _status(ex: Any, loop: _Loop, label: str) -> str:
    busy = [v for v in ex.seeds() if v.stage not in ("DORMANT", "UNKNOWN", "FOSSILIZED")]
    seeds = ", ".join(f"{v.seed_id} {v.stage.lower()} a={v.alpha:.2f}" for v in busy) or "no seed in flight"
    values = loop.history["grown"]["value"]
    return f"{label} {values[-1]:.3f} | {seeds}" if values else seeds


# -- reading the log back -----------------------------------------------------------------------

def seed_summaries(store: EventStore, sites: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per site: final stage, generations, blend mode, every cull with its step and reason, and
    the last contribution the counterfactual measured (when it did)."""
    from kasmina.lifecycle.evolve import evolve
    from kasmina.lifecycle.stages import Stage
    from kasmina.lifecycle.state import SeedState

    out = []
    for site in sites:
        state = SeedState(site)
        culls = []
        contribution = blueprint = mode = None
        for event in store.read(stream_id=site):
            state = evolve(state, event)
            # The last generation's, also once a cull has reset the site to DORMANT.
            blueprint = state.blueprint_id or blueprint
            mode = (state.blend or {}).get("mode") or mode
            measured = (event.data.get("inputs") or {}).get("contribution")
            if isinstance(measured, (int, float)):
                contribution = float(measured)
            if event.type == ev.STAGE_CHANGED and event.data.get("to_stage") == Stage.CULLED.name:
                culls.append({"generation": state.generation, "step": event.data.get("step"),
                              "gate": event.data.get("gate"), "reason": event.data.get("reason")})
        out.append({"seed": site, "stage": state.stage.name, "generations": state.generation,
                    "blueprint": blueprint, "blend_mode": mode or ("CONVEX" if state.generation else None),
                    "contribution": contribution, "culls": culls})
    return out


def refusal_summaries(store: EventStore) -> list[dict[str, Any]]:
    return [{"seed": e.data.get("seed_id"), "reason": e.data.get("reason"), "detail": e.data.get("detail")}
            for e in store.read(stream_id=ev.EXECUTOR_STREAM) if e.type == ev.COMMAND_REFUSED]


def _compared(metric: Any, a: float, b: float) -> str:
    """``0.0361 better than`` / ``0.0012 worse than`` / ``equal to``, in the metric's direction."""
    gain = metric.better(a, b)
    return "equal to" if gain == 0 else f"{abs(gain):.4f} {'better' if gain > 0 else 'worse'} than"


def render(report: DemoReport) -> str:
    """The human summary printed at the end of a run."""
    task = get_task(report.task)
    metric = task.metric
    lines = [f"{report.task}: {task.description}; {metric.label} after {report.host_steps} + {report.steps} steps "
             f"({report.at_graft:.4f} when the seeds were grafted)",
             f"{'contender':<10} {metric.name:>18} {'parameters':>11} {'seconds':>8}"]
    value = {name: result[metric.name] for name, result in report.contenders.items()}
    for name, result in report.contenders.items():
        vs = "" if name == "host" else f"  ({_compared(metric, value[name], value['host'])} the host's)"
        lines.append(f"{name:<10} {result[metric.name]:>18.4f} {result['parameters']:>11,} "
                     f"{result['seconds']:>8.1f}{vs}")
    lines.append(f"the static network of the grown size, from scratch: {_compared(metric, value['static'], value['grown'])}"
                 " the grown network's")
    lines.append(f"{'seed':<9} {'stage':<12} {'gen':>3}  {'blueprint':<15} {'blend':<11} {'contrib':>8}  why culled")
    for seed in report.seeds:
        why = "; ".join(f"generation {c['generation']} at step {c['step']}: {c['gate'] or 'command'}: {c['reason']}"
                        for c in seed["culls"])
        contribution = "-" if seed["contribution"] is None else f"{seed['contribution']:+.2%}"
        lines.append(f"{seed['seed']:<9} {seed['stage']:<12} {seed['generations']:>3}  "
                     f"{seed['blueprint'] or '-':<15} {seed['blend_mode'] or '-':<11} {contribution:>8}  {why or '-'}")
    for refusal in report.refusals:
        lines.append(f"refused: {refusal['seed']}: {refusal['reason']} ({refusal['detail']})")
    lines.append(f"{report.events} events in {report.db}; {report.steps} steps"
                 + (f", resumed from the checkpoint of step {report.resumed_from_step}"
                    if report.resumed_from_step is not None else "")
                 + (f" ({report.steps_retrained} retrained)" if report.steps_retrained else "")
                 + (f"; plot: {report.plot}" if report.plot else "") + f"; {report.seconds:.1f} s")
    return "\n".join(lines)
