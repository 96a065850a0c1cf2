"""SIGKILL a process while it appends lifecycle commands, at random moments, then check the log.

Each trial starts a fresh child (``tests/_workload.py crash``) that opens the log with
``Ledger.open``, prints ``READY``, then submits commands (germinate, ticks, pause, resume,
cull, terminate, some refused) and runs ``Ledger.tick`` over every seed, printing
``BEGIN <id>`` before each call and ``ACK <id> ...`` (flushed) once it has returned. The
parent kills it with SIGKILL after a random delay: usually a little after ``READY``, one
trial in ten at any moment from its start (opening the log, replaying it, or just after).
Each child's interpreter is started one trial ahead and waits for ``go``, so its start-up
overlaps the previous trial's checks.

All trials of a backend append to ONE log, so every child starts on a log a killed
process left behind, exactly what a restarted trainer finds: recovery (SQLite's WAL, a
Postgres backend whose client vanished holding the append lock) is part of what is tested,
and a damaged log would fail every later trial, not just one.

After each kill:

* positions are exactly 1..N and ``kasmina.rebuild.verify`` passes (hash chain, versions,
  gates, replay); after the first, a middle and the last trial, the ``kasmina verify
  --db URL`` CLI too;
* every call the child acknowledged is in the log, at the positions and with the hash it
  was told, under its command id (``store.find_command`` agrees); a no-op wrote nothing;
* nothing else was written since the trial began, except the events of the one call in
  flight when the kill landed, and only after the last acknowledged position;
* a full replay (no snapshots) equals the state a fresh ``Ledger.open`` rebuilds (snapshots
  and the events after them).

A second trial set runs four children at once, each appending to its own run of one
PostgreSQL log and killed at its own moment: the same checks hold per run, and the
order across runs (``read_all``) holds every event once.

The RNG seed is printed and taken from ``KASMINA_CRASH_SEED`` when set, to replay a
failing run's choices (the kill moments themselves depend on timing).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

import _workload as w
from kasmina.events import EventStore, migrate, open_store
from kasmina.ledger import Ledger
from kasmina.rebuild import replay, verify

pytestmark = pytest.mark.slow

TRIALS = 50
#: Share of trials killed at any moment from the child's start rather than after READY.
EARLY_KILLS = 0.1
#: Longest wait after READY before the kill (seconds): long enough for a few dozen calls.
MAX_DELAY_S = 0.15
#: Trials after which the ``kasmina verify`` CLI checks the log too: first, middle, last.
CLI_TRIALS = (0, TRIALS // 2, TRIALS - 1)


@dataclass
class Ack:
    ident: str
    status: str
    positions: list[int]
    hash: str


@dataclass
class Killed:
    """What a killed child printed: its acknowledged calls, and the one in flight if any."""

    ready: bool
    acks: list[Ack] = field(default_factory=list)
    in_flight: str | None = None


def parse(output: str) -> Killed:
    """Read the child's lines; a last line without its newline was cut by the kill: ignored."""
    lines = output.split("\n")[:-1]
    killed = Killed(ready=bool(lines))
    assert not lines or lines[0].startswith("READY "), f"the child's first line is {lines[0]!r}, not READY"
    for line in lines[1:]:
        kind, ident, *rest = line.split(" ")
        if kind == "BEGIN":
            assert killed.in_flight is None, f"BEGIN {ident} while {killed.in_flight} had no ACK"
            killed.in_flight = ident
        else:
            assert kind == "ACK" and ident == killed.in_flight, f"unexpected line {line!r}"
            status, positions, last_hash = rest
            killed.acks.append(Ack(ident, status, [] if positions == "-" else [int(p) for p in positions.split(",")],
                                   last_hash))
            killed.in_flight = None
    return killed


class Child:
    """A crash child started one trial ahead: its interpreter starts while the parent checks
    the previous trial, and it touches the log only when told ``go``."""

    def __init__(self, url: str, trial: int, rng_seed: int, run: str = "default") -> None:
        # stderr goes to a file: reading stdout line by line and then communicate() would
        # lose what the line reader had buffered.
        self.stderr = tempfile.TemporaryFile("w+")
        self.proc = w.spawn("crash", url, trial, rng_seed, run, stdin=subprocess.PIPE, stderr=self.stderr)
        self.early = False
        self.output = ""

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def run_and_kill(self, rng: random.Random) -> Killed:
        """Let it go, SIGKILL it at a random moment, and read what it printed."""
        try:
            self.go(rng)
            time.sleep(rng.uniform(0.0, 0.3) if self.early else rng.uniform(0.0, MAX_DELAY_S))
            return self.kill()
        finally:
            self.discard()

    def go(self, rng: random.Random) -> None:
        """Let it go; wait for READY unless this is an early kill (opening, replaying, just after)."""
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        self.early = rng.random() < EARLY_KILLS
        if not self.early:
            self.output = proc.stdout.readline()
            assert self.output.startswith("READY "), f"child did not start: {self.output!r}\n{self.errors()}"

    def kill(self) -> Killed:
        proc = self.proc
        assert proc.stdout is not None
        proc.send_signal(signal.SIGKILL)
        output = self.output + proc.stdout.read()
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, f"child ended by itself ({proc.returncode}):\n{self.errors()}"
        return parse(output)

    def discard(self) -> None:
        """End a child that was never let go (it exits on end of input), and tidy up."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self.stderr.close()


def wait_for_dead_sessions(url: str) -> None:
    """Postgres ends a killed client's session (rolling back, or finishing a COMMIT it had
    received) only once it sees the socket close: wait for that before reading the log."""
    if not url.startswith("postgresql"):
        return
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        deadline = time.monotonic() + 30
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid()").fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the killed child's Postgres session is still alive after 30 s"
            time.sleep(0.005)


def check_after_kill(store: EventStore, killed: Killed, head_before: int, where: str) -> int:
    """Every check of one trial; returns the log's new head."""
    events = list(store.read(raw=True))
    head = len(events)
    assert [e.position for e in events] == list(range(1, head + 1)), f"{where}: positions are not exactly 1..{head}"
    assert verify(store) == head
    assert head >= head_before, f"{where}: the log shrank from {head_before} to {head}"

    by_command: dict[str | None, list[int]] = {}
    for event in events[head_before:]:
        by_command.setdefault(event.command_id, []).append(event.position)
    acked: set[int] = set()
    for ack in killed.acks:
        stored = [events[p - 1] for p in ack.positions if p <= head]
        assert len(stored) == len(ack.positions), f"{where}: acknowledged {ack} is not in the log (head {head})"
        if ack.positions:
            assert stored[-1].hash == ack.hash, f"{where}: {ack.ident} at {ack.positions} has another hash now"
        if ack.status == "tick":
            assert all(e.command_id is None for e in stored), f"{where}: tick events carry a command id"
        else:
            assert by_command.get(ack.ident, []) == ack.positions, \
                f"{where}: {ack.ident} was acknowledged at {ack.positions}, the log has {by_command.get(ack.ident)}"
        acked.update(ack.positions)
    commands = [a for a in killed.acks if a.status != "tick"]
    for ack in commands[-1:]:  # the same answer through the store's own lookup
        assert store.find_command(ack.ident) == tuple(ack.positions), f"{where}: find_command({ack.ident})"

    # Nothing but acknowledged calls, and then the call in flight, wrote since the trial began.
    unacked = [e for e in events[head_before:] if e.position not in acked]
    if unacked:
        assert killed.in_flight is not None, f"{where}: {len(unacked)} events nobody acknowledged or sent"
        assert min(e.position for e in unacked) > max(acked, default=head_before), \
            f"{where}: unacknowledged events before the last acknowledged one"
        expected_id = None if killed.in_flight.startswith("tick-") else killed.in_flight
        assert all(e.command_id == expected_id for e in unacked), \
            f"{where}: unacknowledged events are not all from the call in flight ({killed.in_flight})"

    full = replay(store, use_snapshots=False)
    assert full.position == head
    assert Ledger.open(store).seeds == full.seeds, f"{where}: Ledger.open (snapshots) differs from a full replay"
    return head


def cli_verify(url: str, where: str) -> None:
    kasmina = shutil.which("kasmina", path=os.path.dirname(sys.executable))
    assert kasmina is not None, "the kasmina console script is not installed beside this Python"
    done = subprocess.run([kasmina, "verify", "--db", url, "--json", "--all-runs"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"{where}: kasmina verify exited {done.returncode}:\n{done.stdout}{done.stderr}"
    assert json.loads(done.stdout)["ok"] is True, f"{where}: {done.stdout}"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkill_while_appending(backend: str, request: pytest.FixtureRequest) -> None:
    url: str = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    migrate.upgrade(url)
    rng_seed = int(os.environ.get("KASMINA_CRASH_SEED", random.randrange(2**32)))
    print(f"\n{backend}: KASMINA_CRASH_SEED={rng_seed}")
    rng = random.Random(rng_seed)
    head = 0
    kills: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    per_trial: list[int] = []
    child = Child(url, 0, rng.randrange(2**32))
    try:
        for trial in range(TRIALS):
            where = f"{backend} trial {trial} (KASMINA_CRASH_SEED={rng_seed})"
            killed = child.run_and_kill(rng)
            child = Child(url, trial + 1, rng.randrange(2**32))  # starts while this trial is checked
            wait_for_dead_sessions(url)
            with open_store(url) as store:
                new_head = check_after_kill(store, killed, head, where)
            acked = sum(len(a.positions) for a in killed.acks)
            if not killed.ready:
                kills["during start-up"] += 1
            elif killed.in_flight is None:
                kills["between calls"] += 1
            elif new_head > head + acked:
                kills["after a commit, before its ACK"] += 1
            else:
                kills["inside a call, before its commit"] += 1
            statuses.update(a.status.split(":")[0] for a in killed.acks)
            per_trial.append(new_head - head)
            head = new_head
            if trial in CLI_TRIALS:
                cli_verify(url, where)
    finally:
        child.discard()

    assert kills["between calls"] + kills["inside a call, before its commit"] \
        + kills["after a commit, before its ACK"] > TRIALS // 2, f"most kills landed before READY: {kills}"
    assert statuses["accepted"] > 0 and statuses["refused"] > 0 and statuses["tick"] > 0, statuses
    figures = {"backend": backend, "trials": TRIALS, "acknowledged": dict(statuses), "kills": dict(kills),
               "events": head, "events_per_trial_max": max(per_trial),
               "events_per_trial_avg": round(sum(per_trial) / TRIALS, 1)}
    print(f"crash safety figures: {json.dumps(figures)}")


#: Runs appending at once in the many-runs trials, and how many trials.
RUNS = 4
RUN_TRIALS = 8


def test_sigkill_four_runs_appending_at_once_to_one_postgres_log(pg_url: str) -> None:
    """Four children, each appending to its own run of one Postgres log, killed at four
    independent moments: every run keeps exactly its acknowledged events, verifies on its
    own, and the order across runs still holds each event once."""
    migrate.upgrade(pg_url)
    rng_seed = int(os.environ.get("KASMINA_CRASH_SEED", random.randrange(2**32)))
    print(f"\nfour runs: KASMINA_CRASH_SEED={rng_seed}")
    rng = random.Random(rng_seed)
    names = [f"job-{i}" for i in range(RUNS)]
    heads = dict.fromkeys(names, 0)
    acknowledged = 0
    for trial in range(RUN_TRIALS):
        where = f"four runs, trial {trial} (KASMINA_CRASH_SEED={rng_seed})"
        children = {name: Child(pg_url, trial, rng.randrange(2**32), name) for name in names}
        killed: dict[str, Killed] = {}
        try:
            for child in children.values():
                child.go(rng)
            order = list(names)
            rng.shuffle(order)
            for name in order:  # four kill moments, spread over the appends
                time.sleep(rng.uniform(0.0, MAX_DELAY_S / 2))
                killed[name] = children[name].kill()
        finally:
            for child in children.values():
                child.discard()
        wait_for_dead_sessions(pg_url)
        with open_store(pg_url) as store:
            for name in names:
                if name not in {r.name for r in store.runs()}:
                    assert not killed[name].acks, f"{where}: {name} acknowledged appends but has no run"
                    continue
                heads[name] = check_after_kill(store.for_run(name), killed[name], heads[name], f"{where}, {name}")
                acknowledged += sum(len(a.positions) for a in killed[name].acks)
            feed = list(store.read_all())
            assert len(feed) == sum(heads.values()), f"{where}: the order across runs lost or repeated events"
            assert [f.at for f in feed] == sorted({f.at for f in feed})
    assert acknowledged > 0 and sum(1 for h in heads.values() if h) == RUNS, heads
    cli_verify(pg_url, "four runs, at the end")
    print(f"four-run crash figures: {json.dumps({'runs': RUNS, 'trials': RUN_TRIALS, 'events': heads})}")
