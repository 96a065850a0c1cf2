"""Many runs, one PostgreSQL log: durable appends from N concurrent training jobs.

For each N in ``runs`` (default 1, 4, 16): N worker processes (fresh interpreters, started
with :mod:`subprocess`) each open their own run with ``migrate.open_log(url, run=...)``, do a
few untimed warm-up appends, say ``READY`` and wait; once all are ready the parent says
``go`` and each appends small lifecycle-event transactions (one command's events per
transaction, with a command id and the seed's expected version, as ``Ledger.submit`` does:
the payloads are :mod:`kasmina.bench.store`'s real lifecycle events) for ``seconds`` or
``appends`` appends, timing every ``store.append`` call. Meanwhile the parent runs a
:class:`kasmina.follow.RunsFollower` polling every ``interval_s`` (default 20 ms) and records,
for each event applied, ``time applied - recorded_at``: the follower lag. ``recorded_at`` is
stamped by the store before the append's transaction begins, so the lag includes the
append's own commit as well as the follower's poll interval and its work.

Afterwards every run is checked: its events are exactly the commands its worker had
acknowledged (none lost, none written twice, each command in one transaction), its
positions run 1..n without a gap, the follower applied each event exactly once, and
``kasmina.rebuild.verify`` passes on it.

Figures: aggregate appends/s (all acknowledged timed appends over the window from the first
worker's start to the last one's end), p50/p99 of the per-call append latency over all
workers, the follower lag's p50/p99/max. Timed with :func:`time.perf_counter` (per call) and
:func:`time.time` (the window, across processes on one machine). The goals (rate at 16 runs
>= 4x the rate at 1, p99 at 64 runs < 50 ms) are reported PASS/MISS and never fail the run.

With no ``pg_url`` a private database ``kasmina_bench_runs_<pid>_<hex>`` is created on
``postgresql://postgres@127.0.0.1:5432`` and dropped afterwards; a given ``pg_url`` is used as
the log (migrated to the head revision if needed) and its runs are named
``bench-<N>-<i>`` there as everywhere, so that several N never share a run.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
import zlib
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, Sequence

DEFAULT_RUNS = (1, 4, 16)
DEFAULT_SECONDS = 5.0
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
#: Follower poll interval.
INTERVAL_S = 0.02
#: Seeds (streams) each run appends to, round robin.
SEEDS_PER_RUN = 4
#: Untimed appends each worker makes before it says READY (connection, prepared statements).
WARMUP = 3
#: How long the parent waits for a worker to start (a fresh interpreter; 64 on 2 cores
#: take a while) and, after the timed phase, for the follower to catch up.
START_TIMEOUT_S = 180.0
CATCH_UP_TIMEOUT_S = 60.0
#: Goals of the runs issue.
GOAL_SCALING = 4.0   # rate(16 runs) / rate(1 run)
GOAL_P99_MS = 50.0   # p99 append latency at 64 runs
PG_SETTINGS = ("server_version", "synchronous_commit", "fsync", "wal_sync_method", "full_page_writes",
               "commit_delay", "max_connections", "shared_buffers")

Progress = Callable[[str], None]


# -- the workload ------------------------------------------------------------------------------

def commands(seed_id: str, *, rng_seed: int = 0) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """A seed's endless history as commands: each is the events one command records together
    (a germination's stage change and blend config, one stage change per tick, ...)."""
    import random

    from kasmina.bench.store import CYCLE_STEPS, _cycle_templates, _stage_changed
    from kasmina.lifecycle.stages import Stage

    rng = random.Random(f"{seed_id}/{rng_seed}")
    templates = _cycle_templates(seed_id, rng)
    yield [_stage_changed(Stage.UNKNOWN, Stage.DORMANT, 0, reason="site registered")]
    base = 1
    while True:
        group: list[tuple[str, dict[str, Any]]] = []
        offset = None
        for etype, data, at in templates:
            if group and at != offset:
                yield group
                group = []
            offset = at
            fresh = {**data, "step": base + at} if "step" in data else dict(data)
            if "embargo_until_step" in fresh:
                fresh["embargo_until_step"] = base + 167
            group.append((etype, fresh))
        if group:
            yield group
        base += CYCLE_STEPS


def run_name(n: int, index: int) -> str:
    return f"bench-{n}-{index}"


def command_id(run: str, k: int) -> str:
    return f"{run}/c{k}"


# -- the worker (a child process) --------------------------------------------------------------

def worker(url: str, run: str, seconds: float | None, appends: int | None, out_path: str) -> None:
    """Open ``run``, warm up, print READY, wait for ``go`` on stdin, append, write a JSON report."""
    from kasmina.events import NewEvent, migrate, open_store

    store = migrate.open_log(url, run=run, config={"bench": "runs"})
    seeds = [f"seed-{i:02d}" for i in range(SEEDS_PER_RUN)]
    histories = {s: commands(s, rng_seed=zlib.crc32(run.encode())) for s in seeds}
    versions = {s: 0 for s in seeds}
    per_command: list[int] = []  # events of each acknowledged command, in order (1-based k)
    last_position = 0
    latencies: list[float] = []

    def one(k: int, timed: bool) -> None:
        nonlocal last_position
        seed = seeds[k % len(seeds)]
        events = [NewEvent(t, d) for t, d in next(histories[seed])]
        t0 = time.perf_counter()
        result = store.append(seed, events, expected_version=versions[seed], command_id=command_id(run, k + 1))
        dt = time.perf_counter() - t0
        if result.duplicate or len(result.positions) != len(events):
            raise RuntimeError(f"append of {command_id(run, k + 1)} was not written: {result}")
        versions[seed] = result.version
        per_command.append(len(result.positions))
        last_position = result.positions[-1]
        if timed:
            latencies.append(dt)

    error = None
    started = ended = cpu_s = 0.0
    try:
        for k in range(WARMUP):
            one(k, timed=False)
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        if sys.stdin.readline().strip() != "go":
            return
        started = time.time()
        cpu0 = time.process_time()
        deadline = time.perf_counter() + (seconds if seconds is not None else math.inf)
        k = WARMUP
        while (appends is None or k < WARMUP + appends) and time.perf_counter() < deadline:
            one(k, timed=True)
            k += 1
        ended = time.time()
        cpu_s = time.process_time() - cpu0
        # The writer holds its connection between appends, so marking the run on the same
        # handle would open a second one (64 jobs finishing at once: 128 connections);
        # close it first and mark the run on a fresh handle, one connection at a time.
        store.close()
        with open_store(url, run=run) as again:
            again.mark_run("finished")
    except Exception as e:  # reported, and the parent counts it
        ended = ended or time.time()
        error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    finally:
        store.close()  # safe twice
    report = {"run": run, "pid": os.getpid(), "started": started, "ended": ended, "warmup": WARMUP,
              "per_command": per_command, "last_position": last_position, "latencies_s": latencies,
              "cpu_s": cpu_s,
              "error": error}
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, out_path)


def _spawn(url: str, run: str, seconds: float | None, appends: int | None, out_path: str,
           err_path: str) -> subprocess.Popen[str]:
    code = "import sys; from kasmina.bench.runs import _worker_main; _worker_main(sys.argv[1:])"
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    args = [url, run, "-" if seconds is None else repr(seconds), "-" if appends is None else str(appends), out_path]
    with open(err_path, "w") as err:
        return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)


def _worker_main(argv: Sequence[str]) -> None:
    url, run, seconds, appends, out_path = argv
    worker(url, run, None if seconds == "-" else float(seconds), None if appends == "-" else int(appends), out_path)


# -- statistics --------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), linear between the closest ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 3)


# -- one N -------------------------------------------------------------------------------------

def measure(url: str, n: int, *, seconds: float | None = DEFAULT_SECONDS, appends: int | None = None,
            interval_s: float = INTERVAL_S, workdir: str | None = None,
            progress: Progress | None = None) -> dict[str, Any]:
    """N concurrent runs appending into the log at ``url`` (already migrated); the figures and checks."""
    from kasmina.events import open_store
    from kasmina.follow import RunsFollower

    say = progress or (lambda _m: None)
    names = [run_name(n, i) for i in range(n)]
    load_before = _load()
    reader = open_store(url)
    folder = tempfile.mkdtemp(prefix=f"kasmina-bench-runs-{n}-", dir=workdir)
    procs: list[subprocess.Popen[str]] = []
    try:
        follower = RunsFollower(reader, interval_s=interval_s, from_start=True)
        follower.cursor = reader.feed_head()  # only what these workers write
        say(f"{n} runs: starting {n} worker processes")
        t_start = time.perf_counter()
        for i, name in enumerate(names):
            procs.append(_spawn(url, name, seconds, appends, os.path.join(folder, f"{i}.json"),
                                os.path.join(folder, f"{i}.err")))
        for i, proc in enumerate(procs):
            line = _readline(proc, START_TIMEOUT_S)
            if line.strip() != "READY":
                raise RuntimeError(f"worker {names[i]} did not start: {_tail(os.path.join(folder, f'{i}.err'))}")
        say(f"{n} runs: all ready after {time.perf_counter() - t_start:.1f} s; appending")
        lags: list[float] = []
        applied: dict[str, list[int]] = {name: [] for name in names}
        poll_s: list[float] = []
        go = datetime.max.replace(tzinfo=timezone.utc)

        def poll() -> int:
            began = time.perf_counter()
            items = follower.poll()
            poll_s.append(time.perf_counter() - began)
            now = datetime.now(timezone.utc)
            for item in items:
                if item.run in applied:
                    applied[item.run].append(item.event.position)
                if item.event.recorded_at >= go:  # warm-ups waited for the start: not lag
                    lags.append((now - item.event.recorded_at).total_seconds())
            return len(items)

        poll()  # the warm-ups: every run's ledger exists before the clock starts
        poll_s.clear()
        go = datetime.now(timezone.utc)
        cpu_before, parent_cpu0 = _cpu_times(), time.process_time()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        while any(p.poll() is None for p in procs):
            began = time.perf_counter()
            poll()
            time.sleep(max(interval_s - (time.perf_counter() - began), 0.0))
        cpu_busy = _busy(cpu_before, _cpu_times())
        follower_cpu_s = time.process_time() - parent_cpu0
        polls_during = len(poll_s)
        reports = []
        for i, proc in enumerate(procs):
            path = os.path.join(folder, f"{i}.json")
            if proc.returncode != 0 or not os.path.exists(path):
                raise RuntimeError(f"worker {names[i]} failed (exit {proc.returncode}): "
                                   f"{_tail(os.path.join(folder, f'{i}.err'))}")
            with open(path) as f:
                reports.append(json.load(f))
        expected = sum(sum(r["per_command"]) for r in reports)
        deadline = time.perf_counter() + CATCH_UP_TIMEOUT_S
        while sum(map(len, applied.values())) < expected and time.perf_counter() < deadline:
            if not poll():
                time.sleep(interval_s)
        say(f"{n} runs: checking and verifying every run")
        checks = check_runs(reader, reports, applied)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.close()
        _rmtree(folder)

    latencies = [x for r in reports for x in r["latencies_s"]]
    timed = len(latencies)
    window = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    per_run_rates = [len(r["latencies_s"]) / max(r["ended"] - r["started"], 1e-9) for r in reports]
    timed_events = sum(sum(r["per_command"][r["warmup"]:]) for r in reports)
    return {
        "runs": n,
        "appends": timed,
        "events": timed_events,
        "window_s": round(window, 3),
        "appends_per_s": timed / max(window, 1e-9),
        "events_per_s": timed_events / max(window, 1e-9),
        "per_run_appends_per_s_min": min(per_run_rates),
        "per_run_appends_per_s_max": max(per_run_rates),
        "p50_ms": _ms(percentile(latencies, 50)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(max(latencies) if latencies else None),
        "follower_lag_ms": _ms(percentile(lags, 50)),
        "follower_lag_p50_ms": _ms(percentile(lags, 50)),
        "follower_lag_p99_ms": _ms(percentile(lags, 99)),
        "follower_lag_max_ms": _ms(max(lags) if lags else None),
        "follower_events": len(lags),
        "load_average_before": load_before,
        "follower_polls": polls_during,
        "follower_poll_p50_ms": _ms(percentile(poll_s[:polls_during], 50)),
        "follower_cpu_s": round(follower_cpu_s, 3),
        "worker_cpu_ms_per_append": _ms(sum(r["cpu_s"] for r in reports) / max(timed, 1)),
        "machine_cpu_busy": None if cpu_busy is None else round(cpu_busy, 3),
        "worker_errors": [r["error"] for r in reports if r["error"]],
        **checks,
    }


def check_runs(store: Any, reports: Sequence[Mapping[str, Any]], applied: Mapping[str, Sequence[int]]
               ) -> dict[str, Any]:
    """Each run holds exactly its worker's acknowledged commands, gap-free, verified."""
    from kasmina.errors import LogCorrupted
    from kasmina.rebuild import verify

    lost = duplicated = gaps = follower_missed = follower_twice = 0
    verified: dict[str, bool] = {}
    problems: list[str] = []
    for report in reports:
        name = report["run"]
        handle = store.for_run(name)
        expected = {command_id(name, k + 1): count for k, count in enumerate(report["per_command"])}
        found: dict[str | None, int] = {}
        positions: list[int] = []
        for event in handle.read(raw=True):
            positions.append(event.position)
            found[event.command_id] = found.get(event.command_id, 0) + 1
        for cid, count in expected.items():
            have = found.get(cid, 0)
            lost += max(count - have, 0)
            duplicated += max(have - count, 0)
        duplicated += sum(c for cid, c in found.items() if cid not in expected)  # never acknowledged
        if positions != list(range(1, len(positions) + 1)):
            gaps += 1
            problems.append(f"{name}: positions not 1..{len(positions)}")
        if positions and positions[-1] != report["last_position"]:
            problems.append(f"{name}: head {positions[-1]} but the worker's last acknowledged is "
                            f"{report['last_position']}")
        seen = applied.get(name, ())
        follower_twice += len(seen) - len(set(seen))
        follower_missed += len(set(positions) - set(seen))
        try:
            verified[name] = verify(handle) == len(positions)
        except LogCorrupted as e:
            verified[name] = False
            problems.append(f"{name}: {e}")
    return {"lost": lost, "duplicated": duplicated, "runs_with_gaps": gaps,
            "verified": bool(verified) and all(verified.values()),
            "verified_runs": sum(verified.values()), "follower_missed": follower_missed,
            "follower_twice": follower_twice, "problems": problems[:20]}


def _load() -> float | None:
    """The machine's 1-minute load average (others' work shows in it), or None."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of every CPU of this machine (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _busy(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The fraction of the machine's CPU time that was busy between two samples."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def _readline(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """One line of a child's stdout, or '' when it ends or ``timeout_s`` passes."""
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline() if ready else ""


def _tail(path: str) -> str:
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# -- postgres ----------------------------------------------------------------------------------

def _driver_url(url: str, database: str | None = None) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql+psycopg")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


@contextmanager
def private_database(server_url: str = DEFAULT_SERVER) -> Iterator[str]:
    """A fresh database on the server of ``server_url`` (its user may create databases),
    migrated to the head revision, dropped afterwards; yields its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    from kasmina.events.migrate import upgrade

    admin = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"kasmina_bench_runs_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = _driver_url(server_url, name)
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_settings(url: str) -> dict[str, Any]:
    import psycopg
    from sqlalchemy.engine import make_url

    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, connect_timeout=5) as conn:
        return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in PG_SETTINGS}


# -- the run -----------------------------------------------------------------------------------

def run(*, runs: Sequence[int] = DEFAULT_RUNS, pg_url: str | None = None, seconds: float | None = None,
        appends: int | None = None, interval_s: float = INTERVAL_S, workdir: str | None = None,
        progress: Progress | None = None) -> dict[str, Any]:
    """Measure every N in ``runs``; returns a JSON-ready dict (see the module docstring).

    ``seconds`` or ``appends`` (timed appends per run; ``seconds`` defaults to
    :data:`DEFAULT_SECONDS` when neither is given). ``pg_url``: the log to use (migrated if
    needed); None creates a private database on ``$KASMINA_BENCH_PG`` or
    :data:`DEFAULT_SERVER` and drops it afterwards.
    """
    from kasmina.events.migrate import upgrade
    from kasmina.events.urls import redact

    counts = [int(n) for n in runs]
    if not counts or any(n < 1 for n in counts):
        raise ValueError("runs must be positive integers")
    if seconds is not None and appends is not None:
        raise ValueError("give seconds or appends, not both")
    if seconds is None and appends is None:
        seconds = DEFAULT_SECONDS
    if (seconds is not None and not seconds > 0) or (appends is not None and appends < 1):
        raise ValueError("seconds and appends must be positive")
    if not interval_s > 0:
        raise ValueError("interval must be positive")
    say = progress or (lambda _m: None)
    started = time.perf_counter()

    @contextmanager
    def log() -> Iterator[str]:
        if pg_url is None:
            with private_database(os.environ.get("KASMINA_BENCH_PG") or DEFAULT_SERVER) as url:
                yield url
        else:
            url = _driver_url(pg_url)
            upgrade(url)
            yield url

    result: dict[str, Any] = {"runs": {}}
    with log() as url:
        result["config"] = {
            "runs": counts, "seconds": seconds, "appends": appends, "interval_ms": interval_s * 1000,
            "seeds_per_run": SEEDS_PER_RUN, "warmup": WARMUP, "pg_url": redact(url),
            "private_database": pg_url is None, "cpus": os.cpu_count(), "load_average": _load(),
            "python": sys.version.split()[0],
            "postgres": server_settings(url),
        }
        for n in counts:
            try:
                result["runs"][str(n)] = measure(url, n, seconds=seconds, appends=appends, interval_s=interval_s,
                                                 workdir=workdir, progress=say)
            except Exception as e:  # one N failing (say, too many connections) must not lose the others
                message = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                say(f"{n} runs failed: {message}")
                result["runs"][str(n)] = {"runs": n, "error": message}
    result["seconds"] = time.perf_counter() - started
    _derive(result)
    return result


def _rate(result: Mapping[str, Any], n: int) -> float | None:
    entry = result["runs"].get(str(n))
    if not entry or "error" in entry:
        return None
    return entry["appends_per_s"]


def _derive(result: dict[str, Any]) -> None:
    r1, r16 = _rate(result, 1), _rate(result, 16)
    scaling = None if r1 is None or r16 is None else r16 / r1
    result["scaling_16_vs_1"] = scaling
    entry64 = result["runs"].get("64")
    p99_64 = None if not entry64 or "error" in entry64 else entry64["p99_ms"]
    result["p99_ms_at_64"] = p99_64
    goals = []
    if scaling is not None:
        goals.append({"name": "aggregate appends/s, 16 runs vs 1", "value": scaling,
                      "target": f">= {GOAL_SCALING:.1f}x", "ok": scaling >= GOAL_SCALING})
    if p99_64 is not None:
        goals.append({"name": "p99 append latency at 64 runs", "value": p99_64,
                      "target": f"< {GOAL_P99_MS:.0f} ms", "ok": p99_64 < GOAL_P99_MS})
    result["goals"] = goals
    result["all_verified"] = all(e.get("verified", False) for e in result["runs"].values())
    result["lost"] = sum(e.get("lost", 0) for e in result["runs"].values())
    result["duplicated"] = sum(e.get("duplicated", 0) for e in result["runs"].values())


# -- output ------------------------------------------------------------------------------------

def _num(value: Any, fmt: str = ",.0f") -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return format(value, fmt)


def render(result: Mapping[str, Any], *, console: Any = None) -> None:
    """Print the result as a table (rich)."""
    from rich.console import Console
    from rich.table import Table

    out = console or Console()
    if console is None and not out.is_terminal:
        out = Console(width=150)  # a pipe or a log file: no 80-column squeeze
    cfg = result["config"]
    pg = cfg["postgres"]
    budget = f"{cfg['seconds']:g} s" if cfg["seconds"] is not None else f"{cfg['appends']} appends"
    table = Table(title=f"Kasmina: N concurrent runs appending to one PostgreSQL log ({budget} per run, "
                        f"{cfg['cpus']} cpus, PostgreSQL {pg['server_version'].split()[0]}, "
                        f"synchronous_commit={pg['synchronous_commit']})")
    for column in ("runs", "appends/s", "events/s", "p50 ms", "p99 ms", "max ms", "lag p50 ms", "lag p99 ms",
                   "lag max ms", "appends", "lost", "dup", "verified"):
        table.add_column(column, justify="right")
    for key, e in sorted(result["runs"].items(), key=lambda kv: int(kv[0])):
        if "error" in e:
            table.add_row(key, f"error: {e['error']}", *[""] * 11)
            continue
        table.add_row(key, _num(e["appends_per_s"]), _num(e["events_per_s"]), _num(e["p50_ms"], ".2f"),
                      _num(e["p99_ms"], ".2f"), _num(e["max_ms"], ".1f"), _num(e["follower_lag_p50_ms"], ".1f"),
                      _num(e["follower_lag_p99_ms"], ".1f"), _num(e["follower_lag_max_ms"], ".1f"),
                      _num(e["appends"]), str(e["lost"]), str(e["duplicated"]),
                      "yes" if e["verified"] else "NO")
    out.print(table)
    for g in result["goals"]:
        unit = " ms" if "ms" in g["target"] else "x"
        mark = "PASS" if g["ok"] else "MISS"
        out.print(f"  {mark}  {g['name']}: {_num(g['value'], '.2f')}{unit} (target {g['target']})")
    if result.get("scaling_16_vs_1") is None:
        out.print("  rate(16)/rate(1): not measured (needs --runs with 1 and 16)")
    if result.get("p99_ms_at_64") is None:
        out.print("  p99 at 64 runs: not measured (add 64 to --runs)")
    out.print("  settings: " + ", ".join(f"{k}={v}" for k, v in pg.items()))
    for key, e in result["runs"].items():
        for problem in e.get("problems", []) + e.get("worker_errors", []):
            out.print(f"  {key} runs: {problem}")


def summary_line(result: Mapping[str, Any]) -> str:
    parts = []
    for key, e in sorted(result["runs"].items(), key=lambda kv: int(kv[0])):
        if "error" in e:
            parts.append(f"{key} runs error")
        else:
            parts.append(f"{key} runs {e['appends_per_s']:.0f}/s p99 {e['p99_ms']:.1f} ms")
    scaling = result.get("scaling_16_vs_1")
    extra = f"; 16 vs 1 {scaling:.2f}x" if scaling is not None else ""
    ok = "verified" if result.get("all_verified") else "NOT verified"
    return f"bench runs: {'; '.join(parts)}{extra}; lost {result['lost']} dup {result['duplicated']} {ok}"
