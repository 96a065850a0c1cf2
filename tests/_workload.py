"""A lifecycle workload shared by the crash-safety and concurrent-writer tests.

Imported by the tests, and run as a script (``python tests/_workload.py MODE ...``) in the
child processes they start. It imports neither torch nor pytest, so a child is appending
within about 0.4 s of its start.

Commands are chosen from a seed's (local, possibly stale) state, like a controller would:
germinate, ticks that advance the stages (a few with a failing gate), pause, resume, cull,
rollback (a fossilized seed back to DORMANT), terminate, and some commands the lifecycle
must refuse. Gate inputs are fixed, so a command is fully described by ``(kind, seed,
step)`` (plus, for a rollback, the position it goes back to) and can be decided again.

Seeds live in a few *slots*; a slot's seed is ``s<slot>.<generation>``, the first
generation that is not TERMINATED, so the workload never runs out of live seeds.

Modes:

* ``crash URL TRIAL RNG``: wait for ``go`` on stdin, open the log, print ``READY``, then
  submit commands and run ``Ledger.tick`` forever, printing ``BEGIN <id>`` before and
  ``ACK <id> <status> <positions> <last hash>`` after each call returns (flushed), until
  the parent SIGKILLs it. Ticks have ids ``tick-<step>`` that are not stored in the log.
* ``concurrent URL WORKER COMMANDS GO_FILE``: touch ``ready-WORKER`` beside ``GO_FILE``,
  wait for ``GO_FILE``, submit ``COMMANDS`` commands through ``Ledger.submit`` and print
  one JSON report: every command's record and the ledger's conflict count.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kasmina.events import EventStore, open_store
from kasmina.ledger import Ledger, Outcome
from kasmina.lifecycle import commands as c
from kasmina.lifecycle.gates import GateInputs
from kasmina.lifecycle.stages import LIVE_STAGES, Gate, Stage
from kasmina.lifecycle.state import SeedState
from kasmina.rebuild import replay_seed

#: Short dwells, so a few hundred commands take seeds through every stage many times (and
#: long enough that most are culled or paused on the way: each fossilized seed is
#: eventually terminated and replaced, and many streams make every replay slower).
PARAMETERS: dict[str, float] = {"training_steps": 3, "blend_steps": 3, "shadow_steps": 2,
                                "probation_steps": 2, "embargo_steps": 2}
BASELINE = 1.0
GERMINATE_INPUTS = GateInputs(blueprint_known=True, parameters=PARAMETERS)
HEALTHY = GateInputs(
    kernel_attached=True, isolation_violations=0, seed_loss_finite=True, seed_grad_finite=True,
    fetch_latency_ms=1.0, output_finite=True, output_growth=1.5, interface_ok=True,
    metric=BASELINE, baseline_metric=BASELINE, hooks=0, registered_params=0, cache_entries=0,
)
#: Fails G1 (non-finite seed loss): the seed is culled, embargoed, reset.
SICK = GateInputs(**{**{k: getattr(HEALTHY, k) for k in HEALTHY.__dataclass_fields__}, "seed_loss_finite": False})
#: A child gives up this long after it started (the parent kills it long before).
CHILD_DEADLINE_S = 120.0


def spawn(mode: str, *args: object, stdin: Any = None, stderr: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    """Start this file as a child in ``mode`` (a fresh interpreter: no state shared with pytest)."""
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), mode, *map(str, args)],
                            stdin=stdin, stdout=subprocess.PIPE, stderr=stderr, text=True)


def seed_name(slot: int, generation: int) -> str:
    return f"s{slot}.{generation}"


def current_seed(ledger: Ledger, slot: int) -> str:
    """The slot's first seed that is not TERMINATED (a terminated seed never changes again)."""
    generation = 0
    while ledger.state(seed_name(slot, generation)).stage is Stage.TERMINATED:
        generation += 1
    return seed_name(slot, generation)


def command(kind: str, seed: str, step: int, rollback_to: tuple[int, SeedState] | None = None) -> c.Command:
    """The command a record describes (the tests decide it again from this).

    ``rollback_to`` is ``(position, the seed's state there)`` for a rollback.
    """
    match kind:
        case "germinate":
            return c.Germinate(seed, "bottleneck_mlp", step, GERMINATE_INPUTS, parameters=PARAMETERS,
                               baseline_metric=BASELINE)
        case "tick":
            return c.Tick(seed, step, HEALTHY)
        case "sick_tick":
            return c.Tick(seed, step, SICK)
        case "pause":
            return c.Pause(seed, step)
        case "resume":
            return c.Resume(seed, step)
        case "cull":
            return c.Cull(seed, step, reason="workload")
        case "terminate":
            return c.Terminate(seed, step)
        case "rollback" if rollback_to is not None:
            return c.Rollback(seed, step, *rollback_to)
    raise ValueError(f"unknown command kind {kind!r}")


def choose(rng: random.Random, state: SeedState) -> str:
    """A plausible next command for a seed in ``state``, now and then one that must be refused."""
    roll = rng.random()
    if roll < 0.06:
        return rng.choice(("pause", "resume", "germinate", "terminate"))  # often illegal here
    if state.stage in (Stage.UNKNOWN, Stage.DORMANT):
        return "germinate"
    if state.paused:
        return "resume" if roll < 0.7 else "tick"
    if state.stage in LIVE_STAGES:
        if roll < 0.12:
            return "pause"
        if roll < 0.2:
            return "cull"
        return "sick_tick" if roll < 0.24 else "tick"
    if state.stage is Stage.FOSSILIZED:  # mostly back to DORMANT: a new seed is a new stream
        return "terminate" if roll < 0.1 else "rollback" if roll < 0.6 else "tick"
    return "tick"  # CULLED, EMBARGOED, RESETTING: time heals


def first_state(store: EventStore, seed: str) -> tuple[int, SeedState]:
    """The position where the seed's stream begins, and its state there (DORMANT)."""
    with closing(store.read(stream_id=seed)) as events:
        first = next(events, None)
    position = 0 if first is None else first.position
    return position, replay_seed(store, seed, to_position=position)


def build(ledger: Ledger, kind: str, seed: str, step: int) -> tuple[c.Command, int]:
    """The command, and the position a rollback goes back to (0 for any other kind)."""
    rollback_to = first_state(ledger.store, seed) if kind == "rollback" else None
    return command(kind, seed, step, rollback_to), 0 if rollback_to is None else rollback_to[0]


def measure(state: SeedState, gates: tuple[Gate, ...]) -> GateInputs:
    return HEALTHY


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _ack(ident: str, status: str, outcome_events: tuple[Any, ...] | list[Any]) -> None:
    positions = ",".join(str(e.position) for e in outcome_events) or "-"
    last = outcome_events[-1].hash if outcome_events else "-"
    _emit(f"ACK {ident} {status} {positions} {last}")


def status(outcome: Outcome) -> str:
    """``accepted``, ``noop`` (accepted, nothing to write) or ``refused:<reason>``."""
    if outcome.accepted:
        return "accepted" if outcome.events else "noop"
    return f"refused:{outcome.reason}"


def crash_child(url: str, trial: int, rng_seed: int, run: str = "default") -> None:
    """Append to ``run`` until killed; every line is flushed the moment its call has returned.

    Started ahead of its trial, it touches the log only once ``go`` arrives on stdin
    (anything else, such as end of file, ends it quietly).
    """
    if sys.stdin.readline() != "go\n":
        return
    rng = random.Random(rng_seed)
    store = open_store(url, run=run, create_run=True)
    ledger = Ledger.open(store, snapshot_every=25)  # small: kills land in snapshot writes too
    first = 1 + max((s.stage_entered_step for s in ledger.seeds.values()), default=0)
    _emit(f"READY {store.head()[0]}")
    deadline = time.monotonic() + CHILD_DEADLINE_S
    n = 0
    step = first
    while time.monotonic() < deadline:
        seed = current_seed(ledger, rng.randrange(3))
        n += 1
        command_id = f"crash-{trial}-{n}"
        _emit(f"BEGIN {command_id}")
        cmd, _ = build(ledger, choose(rng, ledger.state(seed)), seed, step)
        outcome = ledger.submit(cmd, command_id=command_id)
        _ack(command_id, status(outcome), outcome.events)
        if n % 2 == 0:
            _emit(f"BEGIN tick-{step}")
            _ack(f"tick-{step}", "tick", ledger.tick(step, measure))
            step += 1
    sys.exit("crash child ran past its deadline without being killed")


@dataclass
class Record:
    """What one command was and what became of it, as a concurrent worker saw it."""

    id: str
    kind: str
    seed: str
    step: int
    status: str
    positions: list[int]
    #: The seed's version after the call: for a no-op, the version it was decided on.
    version: int
    #: Where a rollback went back to (0 for other kinds).
    to_position: int
    conflicts: int
    #: The log head just before and just after the call: a no-op's version must have been
    #: the seed's real version at some moment in between.
    head_before: int
    head_after: int


def concurrent_child(url: str, worker: int, commands: int, go: Path) -> None:
    """Submit ``commands`` commands on three shared slots, then report every outcome."""
    rng = random.Random(1000 + worker)
    store = open_store(url)
    ledger = Ledger.open(store)
    go.with_name(f"ready-{worker}").touch()
    deadline = time.monotonic() + CHILD_DEADLINE_S
    while not go.exists():  # start together, to overlap as much as possible
        if time.monotonic() > deadline:
            sys.exit("no start signal")
        time.sleep(0.001)
    records: list[Record] = []
    started = time.monotonic()
    for i in range(commands):
        seed = current_seed(ledger, rng.randrange(3))
        kind = choose(rng, ledger.state(seed))
        command_id = f"w{worker}-{i}"
        cmd, to_position = build(ledger, kind, seed, i + 1)
        before = store.head()[0]
        outcome = ledger.submit(cmd, command_id=command_id)
        records.append(Record(command_id, kind, seed, i + 1, status(outcome),
                              [e.position for e in outcome.events], ledger.state(seed).version, to_position,
                              outcome.conflicts, before, store.head()[0]))
    elapsed = time.monotonic() - started
    store.close()
    print(json.dumps({"worker": worker, "conflicts": ledger.conflicts, "seconds": round(elapsed, 3),
                      "records": [r.__dict__ for r in records]}))


if __name__ == "__main__":
    mode, url = sys.argv[1], sys.argv[2]
    if mode == "crash":
        crash_child(url, int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:6])
    elif mode == "concurrent":
        concurrent_child(url, int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
    else:
        sys.exit(f"unknown mode {mode!r}")
