"""``kasmina simulate``: realistic seed lifecycles without a model, through the real store.

A scripted controller germinates seeds at random sites, each with a fate drawn from the run
seed: most pass every gate and fossilize, some fail a named gate (non-finite loss, a slow
kernel fetch, an interface mismatch, a regressing host metric) and are culled, embargoed,
reset and germinated again. It also sends a few commands the lifecycle must refuse. The
gate inputs are synthetic; everything else (decide, append, evolve, snapshots) is the code
the executor uses, so this is a fixture for tests, a workload for benchmarks and a way to
try the audit tools.

:func:`run_many` writes a sweep: several named runs into one log at the same time, one
process each, each with its own run seed, so ``seed_generations`` and the cross-run queries
of docs/audit.md have blueprints and blend modes to compare.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from kasmina.errors import KasminaError
from kasmina.events.store import EventStore
from kasmina.ledger import Ledger
from kasmina.lifecycle import commands as c
from kasmina.lifecycle.gates import GateInputs
from kasmina.lifecycle.stages import Gate, Stage
from kasmina.lifecycle.state import SeedState

BLUEPRINTS = ("conv_adapter", "bottleneck_mlp", "zero_linear")
#: Blend modes a sweep's germinations draw from: ``default`` sends no blend config (the
#: seed blends CONVEX and ``seed_generations`` says ``default``), the others are
#: :class:`kasmina.kernels.blend.BlendMode` names, recorded as a ``blend_config`` event the
#: way the executor records an annotated blend.
SWEEP_BLEND_MODES = ("default", "CONVEX", "RESIDUAL", "CONFIDENCE", "CHANNEL")
#: Channels of a simulated CHANNEL blend's ``alpha_vec``.
CHANNELS = 8
#: Gate a doomed seed fails, and how often (the rest are healthy).
FATES: tuple[tuple[Gate | None, float], ...] = (
    (None, 0.6),
    (Gate.G1_GRADIENT_HEALTH, 0.1),
    (Gate.G2_STABILITY, 0.1),
    (Gate.G3_INTERFACE, 0.1),
    (Gate.G4_SYSTEM_IMPACT, 0.1),
)


@dataclass
class SimulationReport:
    seeds: int
    steps: int
    first_step: int
    events: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    final_stages: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"seeds": self.seeds, "steps": self.steps, "first_step": self.first_step,
                "events": self.events, "commands_accepted": self.accepted,
                "commands_refused": dict(self.refused), "final_stages": self.final_stages}


def _inputs(rng: random.Random, fate: Gate | None, gates: tuple[Gate, ...], baseline: float) -> GateInputs:
    """Healthy measurements, except for the gate this seed is fated to fail.

    G4 also gets a counterfactual, recorded but not gated on (no threshold): the host metric
    as the loss with the seed, its baseline as the loss without. Derived, not drawn, so the
    run seed still gives the same fates as before the counterfactual existed.
    """
    bad = fate in gates
    latency = 25.0 if bad and fate is Gate.G2_STABILITY else round(rng.uniform(0.2, 4.0), 3)
    growth = round(rng.uniform(0.8, 3.0), 3)  # drawn in this order since the first release
    metric = round(baseline * (1.5 if bad and fate is Gate.G4_SYSTEM_IMPACT else rng.uniform(0.9, 1.02)), 6)
    counterfactual = {}
    if Gate.G4_SYSTEM_IMPACT in gates:
        counterfactual = {"loss_with": metric, "loss_without": baseline,
                          "contribution": round((baseline - metric) / baseline, 6)}
    return GateInputs(
        **counterfactual,
        blueprint_known=True, parameters={},
        kernel_attached=True, isolation_violations=0,
        seed_loss_finite=not (bad and fate is Gate.G1_GRADIENT_HEALTH), seed_grad_finite=True,
        fetch_latency_ms=latency, output_finite=True, output_growth=growth,
        interface_ok=not (bad and fate is Gate.G3_INTERFACE),
        interface_detail="expected (32, 16, 8, 8), got (32, 8, 8, 8)" if bad and fate is Gate.G3_INTERFACE else None,
        metric=metric, baseline_metric=baseline,
        hooks=0, registered_params=0, cache_entries=0,
    )


def _blend(mode: str, draw: random.Random) -> dict[str, Any] | None:
    """The ``blend_config`` payload for ``mode`` (``BlenderConfig.to_dict()``'s shape), or
    None for ``default``; built here so the simulator does not import torch."""
    if mode == "default":
        return None
    vec = [round(draw.uniform(0.2, 1.0), 3) for _ in range(CHANNELS)] if mode == "CHANNEL" else None
    return {"mode": mode, "alpha_vec": vec, "alpha_vec_len": 0 if vec is None else len(vec),
            "gate_k": 4.0, "gate_tau": 0.2, "alpha_lo": 0.0, "alpha_hi": 1.0,
            "source": "simulate", "host_gradient": "blend"}


def run(store: EventStore, *, seeds: int, steps: int, rng: int = 0,
        progress: Callable[[int], None] | None = None,
        blueprints: Sequence[str] = BLUEPRINTS,
        blend_modes: Sequence[str] | None = None) -> SimulationReport:
    """Simulate ``steps`` training steps of ``seeds`` sites on ``store`` (continues a log).

    Each germination draws its blueprint from ``blueprints``. With ``blend_modes``, it also
    draws a blend mode from them (from a second generator seeded by ``rng``, so the fates,
    dwells and commands are those of the same run without blend modes); without, no blend is
    configured, as before blend modes were simulated.
    """
    unknown = sorted(set(blend_modes or ()) - set(SWEEP_BLEND_MODES))
    if unknown or not blueprints:
        raise KasminaError(f"simulate: blend modes must be among {', '.join(SWEEP_BLEND_MODES)} (got {unknown}) "
                           "and at least one blueprint is needed")
    ledger = Ledger.open(store)
    first = 1 + max((s.stage_entered_step for s in ledger.seeds.values()), default=0)
    report = SimulationReport(seeds, steps, first)
    random_ = random.Random(rng)
    arms = random.Random(f"kasmina simulate blend {rng}")
    sites = [f"sim.layer{i}" for i in range(seeds)]
    fates: dict[str, Gate | None] = {}
    wake: dict[str, int] = {s: first + random_.randrange(0, max(1, steps // 10)) for s in sites}
    counter = 0

    def submit(command: c.Command) -> None:
        nonlocal counter
        counter += 1
        outcome = ledger.submit(command, command_id=f"sim-{rng}-{first}-{counter}")
        if outcome.accepted:
            report.accepted += 1
        else:
            report.refused[outcome.reason] += 1

    def measure(state: SeedState, gates: tuple[Gate, ...]) -> GateInputs:
        return _inputs(random_, fates.get(state.seed_id), gates, state.baseline_metric or 1.0)

    for step in range(first, first + steps):
        for site in sites:
            state = ledger.state(site)
            if state.stage in (Stage.UNKNOWN, Stage.DORMANT) and step >= wake[site]:
                fates[site] = random_.choices([f for f, _ in FATES], [w for _, w in FATES])[0]
                params = {"training_steps": random_.randint(4, 20), "blend_steps": random_.randint(4, 15),
                          "shadow_steps": random_.randint(2, 8), "probation_steps": random_.randint(2, 10),
                          "embargo_steps": random_.randint(3, 12)}
                blueprint = random_.choice(blueprints)
                blend = _blend(arms.choice(blend_modes), arms) if blend_modes else None
                submit(c.Germinate(site, blueprint, step,
                                   GateInputs(blueprint_known=True, parameters=params),
                                   parameters=params, blend=blend,
                                   baseline_metric=round(random_.uniform(0.3, 2.0), 4)))
            elif state.stage is Stage.TRAINING and random_.random() < 0.01:
                submit(c.Germinate(site, "conv_adapter", step, GateInputs(blueprint_known=True, parameters={})))
            elif state.stage is Stage.BLENDING and random_.random() < 0.01 and not state.paused:
                submit(c.Pause(site, step))
            elif state.paused and random_.random() < 0.3:
                submit(c.Resume(site, step))
            elif state.stage is Stage.FOSSILIZED and random_.random() < 0.002:
                submit(c.Terminate(site, step))
            elif state.stage is Stage.SHADOWING and random_.random() < 0.005:
                submit(c.Cull(site, step, reason="controller changed its mind"))
            elif state.stage is Stage.DORMANT and random_.random() < 0.002:
                submit(c.Pause(site, step))  # illegal: refused with a reason
        ledger.tick(step, measure)
        if progress is not None:
            progress(step - first + 1)
    report.events = store.head()[0]
    report.final_stages = {sid: s.stage.name for sid, s in sorted(ledger.seeds.items())}
    return report


# -- a sweep: many runs at once -------------------------------------------------------------

#: How long a sweep's workers wait for the first wave to be ready before simulating anyway.
START_TIMEOUT_S = 60.0
#: Characters of a dead worker's stderr kept for its report.
STDERR_TAIL = 4000


class SweepFailed(KasminaError):
    """One or more runs of :func:`run_many` failed; ``summary`` is what it would have
    returned, with each failed run's error under ``failed`` (those runs are marked crashed)."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


def sweep_config(*, seeds: int, steps: int, rng: int, prefix: str, index: int, runs: int) -> dict[str, Any]:
    """The settings a sweep's run records as its config (``kasmina_runs.config``)."""
    return {"simulate": {"seeds": seeds, "steps": steps, "rng": rng, "blueprints": list(BLUEPRINTS),
                         "blend_modes": list(SWEEP_BLEND_MODES)},
            "sweep": {"prefix": prefix, "index": index, "runs": runs}}


def _describe(e: BaseException) -> dict[str, str]:
    return {"error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:2000],
            "traceback": "".join(traceback.format_exception(e))[-8000:]}


def _sweep_worker(task: Mapping[str, Any], send: Callable[[str, Any], None], wait_go: Callable[[], bool]) -> None:
    """One run of a sweep: open it, say ``ready``, wait for the go, simulate, mark it.

    Says ``("ready", None)``, ``("progress", steps_done)`` now and then, and last
    ``("done", report)`` or ``("failed", {"error", "traceback"})``; a run that fails after it
    was opened is marked ``crashed``.
    """
    from kasmina.events import migrate

    steps = int(task["steps"])
    every = max(1, steps // 50)

    def progress(done: int) -> None:
        if done % every == 0 or done == steps:
            send("progress", done)

    try:
        store = migrate.open_log(task["url"], run=task["name"], config=task["config"])
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        send("failed", _describe(e))
        return
    try:
        try:
            send("ready", None)
            if not wait_go():
                raise KasminaError("the sweep's parent process went away before the start")
            report = run(store, seeds=int(task["seeds"]), steps=steps, rng=int(task["rng"]), progress=progress,
                         blend_modes=SWEEP_BLEND_MODES)
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
            error = _describe(e)
            try:
                store.mark_run("crashed")
            except Exception as mark:  # noqa: BLE001 - the first error is the one to report
                error["marking"] = f"could not mark the run crashed: {type(mark).__name__}: {mark}"
            send("failed", error)
            return
        store.mark_run("finished")
        send("done", report.to_dict())
    finally:
        store.close()


def _child() -> None:
    """A sweep worker's process (``python -c``; see :func:`run_many`). Its task comes as one
    JSON line on stdin (not argv: the URL may hold a password), then the go as a line; it
    answers in JSON lines on stdout."""
    out = sys.stdout

    def send(kind: str, body: Any) -> None:
        out.write(json.dumps([kind, body]) + "\n")
        out.flush()

    task = json.loads(sys.stdin.readline())
    _sweep_worker(task, send, lambda: sys.stdin.readline() != "")


_CHILD_CODE = "from kasmina.simulate import _child; _child()"


def _brand_new_sqlite(url: str) -> bool:
    from kasmina.events.urls import parse

    parsed = parse(url)
    if parsed.backend != "sqlite":
        return False
    path = parsed.sqlite_path
    return not os.path.exists(path) or os.path.getsize(path) == 0


def _mark_crashed(url: str, name: str) -> None:
    """A worker that died without saying so (killed, out of memory) leaves its run
    ``running``: record it ``crashed`` from here, if the run exists."""
    from kasmina.events import open_store

    try:
        with open_store(url, run=name) as store:
            if any(r.name == name and r.status == "running" for r in store.runs()):
                store.mark_run("crashed")
    except KasminaError:
        pass  # no such run (it never opened): nothing to mark


class _Worker:
    """A worker process and the threads that read what it says."""

    def __init__(self, name: str, task: Mapping[str, Any], inbox: queue.Queue[tuple[str, str, Any]]) -> None:
        import kasmina

        self.name = name
        self.stderr: deque[str] = deque()
        self._stderr_chars = 0
        root = os.path.dirname(os.path.dirname(os.path.abspath(kasmina.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen([sys.executable, "-c", _CHILD_CODE], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(dict(task)) + "\n")
        self.process.stdin.flush()
        self.started = False
        self._threads = [threading.Thread(target=self._read_stdout, args=(inbox,), daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self, inbox: queue.Queue[tuple[str, str, Any]]) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                kind, body = json.loads(line)
            except (ValueError, TypeError):
                continue  # something else printed to stdout: not a message
            inbox.put((kind, self.name, body))
        inbox.put(("eof", self.name, None))

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            self._stderr_chars += len(line)
            while self._stderr_chars > STDERR_TAIL and len(self.stderr) > 1:
                self._stderr_chars -= len(self.stderr.popleft())

    def go(self) -> None:
        if self.started:
            return
        self.started = True
        try:
            assert self.process.stdin is not None
            self.process.stdin.write("go\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: its end of stdout says so

    def finish(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        for thread in self._threads:
            thread.join(5)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.finish(10)


def run_many(url: str, *, runs: int, seeds: int, steps: int, rng: int = 0, prefix: str = "sim",
             progress: Callable[[int], None] | None = None, workers: int | None = None) -> dict[str, Any]:
    """Write a sweep: ``runs`` runs named ``{prefix}-0`` .. ``{prefix}-{runs-1}`` into the log
    at ``url`` CONCURRENTLY, one worker process per run (at most ``workers`` at a time,
    default ``min(runs, max(4, cpus))``; the first ``workers`` open their runs, then all
    start simulating together). Run ``i`` simulates ``seeds`` sites for ``steps`` steps with
    run seed ``rng + i``, drawing each germination's blueprint from :data:`BLUEPRINTS` and
    its blend mode from :data:`SWEEP_BLEND_MODES`; it records its settings as the run's
    config (:func:`sweep_config`) and ends ``finished``, or ``crashed`` if it fails.

    A new SQLite file is migrated here first; any other log must be at the head revision
    (``kasmina db upgrade``). On SQLite the workers take turns at the write lock.

    ``progress(done)``, if given, is called in this process with the steps done so far over
    all runs (out of ``runs * steps``).

    Returns ``{"database", "runs": {name: SimulationReport.to_dict()}, "failed": {},
    "totals": {...}, "wall_s"}``, runs in index order; ``totals`` has ``runs``,
    ``finished``, ``crashed``, and the sums over the finished runs of ``seeds``, ``steps``,
    ``events``, ``commands_accepted``, ``commands_refused`` (by reason) and
    ``final_stages`` (seeds per stage). If any run fails, raises :class:`SweepFailed` once
    every run has ended, carrying that summary with ``failed = {name: {"error",
    "traceback"}}`` (the reports of the runs that finished are still in it).
    """
    from kasmina.events import migrate
    from kasmina.events.runs import check_name
    from kasmina.events.urls import parse, redact

    if runs < 1 or seeds < 1 or steps < 1:
        raise KasminaError("--runs, --seeds and --steps must be at least 1")
    if parse(url).backend == "memory":
        raise KasminaError("a sweep needs a log its processes share: sqlite:///PATH or postgresql://..., "
                           "not memory://")
    names = [check_name(f"{prefix}-{i}") for i in range(runs)]
    limit = workers if workers is not None else min(runs, max(4, os.cpu_count() or 1))
    if limit < 1:
        raise KasminaError(f"workers must be at least 1, got {limit}")
    if _brand_new_sqlite(url):
        migrate.upgrade(url)  # once, here: processes racing to create the file would collide

    started = time.monotonic()
    inbox: queue.Queue[tuple[str, str, Any]] = queue.Queue()
    waiting = list(enumerate(names))
    live: dict[str, _Worker] = {}
    reports: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[str, str]] = {}
    done_steps: dict[str, int] = dict.fromkeys(names, 0)
    first_wave = min(runs, limit)
    answered: set[str] = set()  # ready, or failed before it could be
    go = False

    def start_all() -> None:
        nonlocal go
        go = True
        for worker in live.values():
            worker.go()

    def ended(name: str) -> None:
        worker = live.pop(name)
        code = worker.finish()
        if name not in reports and name not in failed:
            tail = "".join(worker.stderr).strip()
            failed[name] = {"error": f"worker process exited with code {code} without a report"
                                     + (f": {tail.splitlines()[-1]}" if tail else ""),
                            "traceback": tail}
            _mark_crashed(url, name)
        answered.add(name)

    try:
        while waiting or live:
            while waiting and len(live) < limit:
                i, name = waiting.pop(0)
                task = {"url": url, "name": name, "seeds": seeds, "steps": steps, "rng": rng + i,
                        "config": sweep_config(seeds=seeds, steps=steps, rng=rng + i, prefix=prefix,
                                               index=i, runs=runs)}
                live[name] = _Worker(name, task, inbox)
                if go:
                    live[name].go()
            try:
                kind, name, body = inbox.get(timeout=START_TIMEOUT_S if not go else None)
            except queue.Empty:
                start_all()  # a worker slow to open its run must not hold the others forever
                continue
            if kind == "ready":
                answered.add(name)
            elif kind == "progress":
                done_steps[name] = int(body)
            elif kind == "done":
                reports[name], done_steps[name] = body, steps
            elif kind == "failed":
                failed[name] = body
                answered.add(name)
            elif kind == "eof":
                ended(name)
            if not go and len(answered) >= first_wave:
                start_all()
            if progress is not None and kind in ("progress", "done"):
                progress(sum(done_steps.values()))
    finally:
        for name, worker in list(live.items()):  # only when interrupted: stop what still runs
            worker.stop()
            _mark_crashed(url, name)

    ordered = {name: reports[name] for name in names if name in reports}
    refused: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    for report in ordered.values():
        refused.update(report["commands_refused"])
        stages.update(report["final_stages"].values())
    summary: dict[str, Any] = {
        "database": redact(url),
        "runs": ordered,
        "failed": {name: failed[name] for name in names if name in failed},
        "totals": {"runs": runs, "finished": len(ordered), "crashed": len(failed),
                   "seeds": sum(r["seeds"] for r in ordered.values()),
                   "steps": sum(r["steps"] for r in ordered.values()),
                   "events": sum(r["events"] for r in ordered.values()),
                   "commands_accepted": sum(r["commands_accepted"] for r in ordered.values()),
                   "commands_refused": dict(sorted(refused.items())),
                   "final_stages": dict(sorted(stages.items()))},
        "wall_s": round(time.monotonic() - started, 3),
    }
    if failed:
        shown = "; ".join(f"{name}: {summary['failed'][name]['error']}" for name in list(summary["failed"])[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        raise SweepFailed(f"{len(failed)} of {runs} simulated runs failed (marked crashed): {shown}{more}", summary)
    return summary
