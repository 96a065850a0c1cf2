"""Event-store benchmark: Kasmina's store against a peer and against the physical limit.

Three contenders do the same work on the same realistic Kasmina payloads (lifecycle events
built with :mod:`kasmina.lifecycle.events`, JSON-encoded with :func:`json.dumps` by every
contender), each in its own fresh database:

* **Kasmina** (``sqlite`` and ``postgres``): ``open_store(url, synchronous="FULL")`` on a schema
  made by ``kasmina.events.migrate.upgrade``. One command per transaction is
  ``store.append(seed, [event], expected_version=..., command_id=...)`` (what
  ``Ledger.submit`` does); batched is ``store.append_many`` with one ``PendingAppend`` per
  seed (what ``Ledger.tick`` does); replay is ``store.read()`` (rows decoded to
  ``RecordedEvent`` with their JSON payload parsed), and the lifecycle rate is
  ``kasmina.rebuild.replay(store, use_snapshots=False)`` (read + ``evolve``).
* **the peer** (``eventsourcing_sqlite``): the ``eventsourcing`` library's
  ``SQLiteApplicationRecorder``: ``insert_events([StoredEvent])`` per command,
  ``insert_events(batch)`` batched, ``select_notifications`` pages + ``json.loads`` of
  each ``state`` to replay.
* **bare sqlite3** (``sqlite_raw``): ``INSERT`` of rows equal to Kasmina's (same columns and
  indexes, copied from a migrated Kasmina database, ``run_id`` 1 and a ``tx`` counted by the
  contender) plus the one ``UPDATE`` of the run's row in ``kasmina_runs`` that the schema
  asks of every append transaction, inside ``BEGIN IMMEDIATE``/``COMMIT``, and one
  ``SELECT ... ORDER BY position`` + ``json.loads`` to replay: what the disk and SQLite allow
  at these durability settings for the rows and tables the schema requires, with none of
  the store's work (hash chain, reading the head and the next ``tx``, version and
  duplicate checks). Its ``hash``/``prev_hash`` hold a SHA-256 of the payload text, so the
  rows are as large as Kasmina's.

Every SQLite contender runs with ``journal_mode=WAL`` and ``synchronous=FULL`` (each commit
fsynced); the output says which settings each actually ran with. Postgres runs with the
server's settings (reported: ``fsync``, ``synchronous_commit``, ...) in a private database
``kasmina_bench_<pid>`` dropped afterwards.

Two Kasmina-only measurements use a separate log holding one seed with a long history
(``long_seed`` events, snapshots every so often as the ledger takes them, the newest one
about half a snapshot interval behind the head): the time of ``replay_seed`` with
snapshots, and, in a subprocess, a full ``replay(use_snapshots=False)`` of that log with
its peak memory (growth of the resident set over its size before the replay). The goals
are stated for 1,000,000 events (``--long-seed 1000000``, about 6 minutes on 2 cores); the
default size keeps the whole run to about a minute and a half.

Timed with :func:`time.perf_counter`; rates are medians over ``REPEATS`` rounds that follow
a warm-up, the contenders' rounds interleaved so that load from elsewhere on the machine
hits them alike. Goals are reported PASS/MISS and never fail the run.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, Sequence

from kasmina.lifecycle import events as ev
from kasmina.lifecycle.gates import GateInputs, evaluate_all
from kasmina.lifecycle.machine import gates_for
from kasmina.lifecycle.stages import Stage

DEFAULT_EVENTS = 20_000
DEFAULT_BATCH = 100
DEFAULT_LONG_SEED = 200_000
#: The size the long-seed and full-replay goals are stated for.
GOAL_LONG_SEED = 1_000_000
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: Seeds (streams) the main log's events are spread over.
SEEDS = 16
#: Timed rounds per measurement (the median is reported), after one warm-up.
REPEATS = 3
#: Rows fetched per round trip by the peer's and bare sqlite3's replays (Kasmina's READ_CHUNK).
READ_CHUNK = 5000
#: Events per transaction when filling the long-seed log (setup, not timed).
FILL_CHUNK = 2000
#: The durability settings every SQLite contender runs with.
SQLITE_PRAGMAS = (("journal_mode", "WAL"), ("synchronous", "FULL"))
SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}

LONG_SEED_ID = "seed-long"
BACKENDS = ("sqlite", "postgres")
CONTENDERS = ("sqlite", "postgres", "eventsourcing_sqlite", "sqlite_raw")
RATE_KEYS = ("append_single_per_s", "append_batch_per_s", "replay_per_s")

Progress = Callable[[str], None]
Item = tuple[str, str, dict[str, Any]]  # (stream_id, event type, payload)


# -- the workload ------------------------------------------------------------------------------

def _stage_changed(source: Stage, dest: Stage, step: int, inputs: GateInputs | None = None,
                   reason: str | None = None, **extra: Any) -> tuple[str, dict[str, Any]]:
    verdicts = evaluate_all(gates_for(source, dest), inputs) if inputs is not None else ()
    if reason is None:
        reason = verdicts[-1].reason if verdicts else f"{source.name.lower()} dwell elapsed"
    event = ev.stage_changed(source, dest, step=step, reason=reason, verdicts=verdicts, inputs=inputs, **extra)
    return event.type, dict(event.data)


def _cycle_templates(seed_id: str, rng: random.Random) -> list[tuple[str, dict[str, Any], int]]:
    """One germinate -> ... -> cull -> reset cycle of one seed: (type, payload, step offset).

    Payloads are the executor's own (``kasmina.lifecycle.events`` constructors, real gate
    verdicts over recorded inputs); each cycle reuses them with fresh steps.
    """
    S = Stage
    params = {"training_steps": 50, "blend_steps": 30, "shadow_steps": 10, "probation_steps": 20,
              "lr": round(rng.uniform(1e-4, 1e-2), 6), "rank": rng.choice((4, 8, 16))}
    baseline = round(rng.uniform(0.2, 2.0), 6)
    blueprint = rng.choice(("conv3x3-residual", "mlp-adapter-64", "lora-r8", "attention-head-1"))
    healthy = GateInputs(kernel_attached=True, isolation_violations=0, seed_loss_finite=True,
                         seed_grad_finite=True)
    stable = GateInputs(fetch_latency_ms=round(rng.uniform(0.5, 4.0), 3), output_finite=True,
                        output_growth=round(rng.uniform(0.9, 3.0), 3), interface_ok=True)
    worse = GateInputs(metric=round(baseline * 1.2, 6), baseline_metric=baseline, isolation_violations=0)
    better = GateInputs(metric=round(baseline * 0.97, 6), baseline_metric=baseline, isolation_violations=0)
    dirty = GateInputs(hooks=1, registered_params=0, cache_entries=2)
    clean = GateInputs(hooks=0, registered_params=0, cache_entries=0)
    out: list[tuple[str, dict[str, Any], int]] = []

    def add(offset: int, item: tuple[str, dict[str, Any]]) -> None:
        out.append((item[0], item[1], offset))

    add(0, _stage_changed(S.DORMANT, S.GERMINATED, 0, GateInputs(blueprint_known=True, parameters=params),
                          blueprint_id=blueprint, parameters=params, baseline_metric=baseline))
    add(0, (ev.BLEND_CONFIG, {"mode": "linear", "alpha_start": 0.0, "alpha_end": 1.0, "steps": 30}))
    add(1, _stage_changed(S.GERMINATED, S.TRAINING, 1, healthy))
    add(20, (ev.ANNOTATION_WARNING, {"seed_id": seed_id, "kind": "latency", "step": 20,
                                     "detail": f"kernel fetch {stable.fetch_latency_ms} ms near budget"}))
    add(25, (ev.SEED_PAUSED, {"step": 25, "reason": "operator pause", "by": "tamiyo"}))
    add(30, (ev.SEED_RESUMED, {"step": 30, "by": "tamiyo"}))
    add(56, _stage_changed(S.TRAINING, S.BLENDING, 56, stable))
    add(86, _stage_changed(S.BLENDING, S.SHADOWING, 86, stable))
    add(96, _stage_changed(S.SHADOWING, S.PROBATIONARY, 96, better))
    add(116, _stage_changed(S.PROBATIONARY, S.CULLED, 116, worse,
                            reason=evaluate_all(gates_for(S.PROBATIONARY, S.FOSSILIZED), worse)[-1].reason))
    add(117, _stage_changed(S.CULLED, S.EMBARGOED, 117, embargo_until_step=167))
    add(167, _stage_changed(S.EMBARGOED, S.RESETTING, 167))
    fail = evaluate_all(gates_for(S.RESETTING, S.DORMANT), dirty)[-1]
    event = ev.gate_failed(S.RESETTING, fail, step=168, inputs=dirty)
    add(168, (event.type, dict(event.data)))
    add(169, _stage_changed(S.RESETTING, S.DORMANT, 169, clean))
    return out


CYCLE_STEPS = 170


def seed_events(seed_id: str, *, rng_seed: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
    """A seed's endless, replayable history: registration, then lifecycle cycles."""
    rng = random.Random(f"{seed_id}/{rng_seed}")
    templates = _cycle_templates(seed_id, rng)
    yield _stage_changed(Stage.UNKNOWN, Stage.DORMANT, 0, reason="site registered")
    base = 1
    while True:
        for etype, data, offset in templates:
            step = base + offset
            fresh = {**data, "step": step} if "step" in data else dict(data)
            if "embargo_until_step" in fresh:
                fresh["embargo_until_step"] = base + 167
            yield etype, fresh
        base += CYCLE_STEPS


def workload(n: int, seeds: int = SEEDS) -> list[Item]:
    """``n`` events spread round-robin over ``seeds`` seeds (every prefix replays cleanly)."""
    streams = [(f"seed-{i:03d}", seed_events(f"seed-{i:03d}")) for i in range(seeds)]
    out: list[Item] = []
    while len(out) < n:
        for sid, it in streams:
            if len(out) == n:
                break
            etype, data = next(it)
            out.append((sid, etype, data))
    return out


def _rebuild() -> Any:
    """The module that rebuilds seed states (``kasmina.rebuild``; ``kasmina.replay`` before)."""
    try:
        import kasmina.rebuild as module
    except ModuleNotFoundError:  # pragma: no cover - older trees
        import kasmina.replay as module  # type: ignore[no-redef]
    return module


def _group(chunk: Sequence[Item]) -> list[tuple[str, list[Item]]]:
    """A batch's events grouped per seed, in first-appearance order (one PendingAppend each)."""
    groups: dict[str, list[Item]] = {}
    for item in chunk:
        groups.setdefault(item[0], []).append(item)
    return list(groups.items())


# -- contenders --------------------------------------------------------------------------------

class Contender:
    """One way of storing and reading the workload; each owns a fresh database."""

    name = ""

    def append_single(self, item: Item, command_id: str) -> None:
        raise NotImplementedError

    def append_batch(self, chunk: Sequence[Item]) -> None:
        raise NotImplementedError

    def replay(self) -> int:
        """Read every event in order, JSON payload decoded; returns how many."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class KasminaContender(Contender):
    def __init__(self, name: str, url: str) -> None:
        from kasmina.events import open_store
        from kasmina.events.migrate import upgrade

        self.name, self.url = name, url
        upgrade(url)
        self.store = open_store(url, synchronous="FULL")
        self.versions: dict[str, int] = {}

    def append_single(self, item: Item, command_id: str) -> None:
        from kasmina.events import NewEvent

        sid, etype, data = item
        result = self.store.append(sid, [NewEvent(etype, data)], expected_version=self.versions.get(sid, 0),
                                   command_id=command_id)
        self.versions[sid] = result.version

    def append_batch(self, chunk: Sequence[Item]) -> None:
        from kasmina.events import NewEvent, PendingAppend

        pending = [PendingAppend(sid, [NewEvent(t, d) for _, t, d in items],
                                 expected_version=self.versions.get(sid, 0))
                   for sid, items in _group(chunk)]
        for result in self.store.append_many(pending):
            self.versions[result.stream_id] = result.version

    def replay(self) -> int:
        count = 0
        for record in self.store.read():
            if record.data is not None:
                count += 1
        return count

    def lifecycle_replay(self) -> int:
        return _rebuild().replay(self.store, use_snapshots=False).events

    def settings(self) -> dict[str, Any]:
        from sqlalchemy import text

        with self.store.engine.connect() as conn:  # type: ignore[attr-defined]
            if self.name == "sqlite":
                mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
                return {"journal_mode": str(mode).upper(), "synchronous": SYNC_NAMES.get(sync, sync)}
            names = ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "full_page_writes")
            return {n: conn.execute(text(f"SHOW {n}")).scalar() for n in names}

    def close(self) -> None:
        self.store.close()  # engine.dispose(): safe to call twice


class PeerContender(Contender):
    """eventsourcing's SQLite application recorder, with the benchmark's PRAGMAs on its connections."""

    name = "eventsourcing_sqlite"

    def __init__(self, path: str) -> None:
        from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

        # What the library runs with if left alone: it sets WAL itself; synchronous stays
        # at the SQLite build's default, which we read on a plain connection.
        probe = sqlite3.connect(path + ".probe")
        probe.execute("PRAGMA journal_mode=WAL")
        self.default_synchronous = SYNC_NAMES.get(probe.execute("PRAGMA synchronous").fetchone()[0])
        probe.close()
        for suffix in (".probe", ".probe-wal", ".probe-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        self.datastore = SQLiteDatastore(path, originator_id_type="text")
        pool = self.datastore.pool
        create = pool._create_connection
        self.hooked = True

        def _create_with_pragmas() -> Any:
            connection = create()
            for name, value in SQLITE_PRAGMAS:
                connection._sqlite_conn.execute(f"PRAGMA {name}={value}")
            return connection

        try:
            pool._create_connection = _create_with_pragmas  # type: ignore[method-assign]
        except AttributeError:  # pragma: no cover - a future eventsourcing without the hook
            self.hooked = False
        self.recorder = SQLiteApplicationRecorder(self.datastore)
        self.recorder.create_table()
        self.versions: dict[str, int] = {}

    def _stored(self, item: Item) -> Any:
        from eventsourcing.persistence import StoredEvent

        sid, etype, data = item
        version = self.versions.get(sid, 0) + 1
        self.versions[sid] = version
        return StoredEvent(originator_id=sid, originator_version=version,
                           topic=f"kasmina.lifecycle.events:{etype}", state=json.dumps(data).encode())

    def append_single(self, item: Item, command_id: str) -> None:
        self.recorder.insert_events([self._stored(item)])

    def append_batch(self, chunk: Sequence[Item]) -> None:
        self.recorder.insert_events([self._stored(item) for item in chunk])

    def replay(self) -> int:
        count, start = 0, 1
        while True:
            page = self.recorder.select_notifications(start, READ_CHUNK)
            for notification in page:
                if json.loads(notification.state) is not None:
                    count += 1
            if len(page) < READ_CHUNK:
                return count
            start = page[-1].id + 1

    def settings(self) -> dict[str, Any]:
        with self.datastore.get_connection(commit=False) as conn:
            raw = conn._sqlite_conn
            mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
            sync = raw.execute("PRAGMA synchronous").fetchone()[0]
        how = ("synchronous set by the benchmark on each pooled connection; WAL set by eventsourcing itself"
               if self.hooked else "eventsourcing's own settings (no connection hook found)")
        return {"journal_mode": str(mode).upper(), "synchronous": SYNC_NAMES.get(sync, sync),
                "library_default_synchronous": self.default_synchronous, "how": how,
                "version": _version("eventsourcing")}

    def close(self) -> None:
        if not getattr(self, "_closed", False):
            self._closed = True
            self.datastore.close()


class RawContender(Contender):
    """Bare sqlite3: Kasmina's rows and tables, none of its work. The physical limit.

    Per transaction it does the table work the schema itself requires of an append, and
    nothing else: INSERT the events (``run_id`` 1; ``tx`` from a counter it keeps, one per
    transaction, where Kasmina reads ``MAX(tx) + 1``) and UPDATE the run's row in
    ``kasmina_runs`` (``last_position``, ``last_hash``, ``updated_at``). That UPDATE is
    counted as physics, not as Kasmina overhead: ``kasmina_runs.last_position``/``last_hash``
    are NOT NULL columns that ``verify`` checks against the events, so any writer of this
    schema must keep them current in the same transaction, which costs one more page in
    the WAL per commit. Reading the head and the next ``tx``, hashing and the version and
    duplicate checks are Kasmina's own work and are left out.
    """

    name = "sqlite_raw"
    RUN_ID = 1

    def __init__(self, path: str, schema_sql: Sequence[str]) -> None:
        from kasmina.events.sqlite import BUSY_TIMEOUT_MS

        self.conn = sqlite3.connect(path, isolation_level=None)
        for name, value in SQLITE_PRAGMAS:
            self.conn.execute(f"PRAGMA {name}={value}")
        self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        for statement in schema_sql:
            self.conn.execute(statement)
        now = self._now()
        self.conn.execute(
            "INSERT INTO kasmina_runs (run_id, name, created_at, updated_at, status, last_position, last_hash) "
            "VALUES (?, 'bench-raw', ?, ?, 'running', 0, ?)", (self.RUN_ID, now, now, "0" * 64))
        self.position = 0
        self.tx = 0
        self.last_hash = "0" * 64
        self.versions: dict[str, int] = {}
        self.insert = ("INSERT INTO kasmina_events (run_id, position, stream_id, version, event_type, "
                       "schema_version, command_id, recorded_at, payload, prev_hash, hash, tx) "
                       "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")
        self.mark_head = ("UPDATE kasmina_runs SET last_position = ?, last_hash = ?, updated_at = ? "
                          f"WHERE run_id = {self.RUN_ID}")

    @staticmethod
    def _now() -> str:
        return str(datetime.now(timezone.utc).replace(tzinfo=None))

    def _row(self, item: Item, command_id: str | None, now: str) -> tuple[Any, ...]:
        from kasmina.events.upcasting import CURRENT_SCHEMA

        sid, etype, data = item
        self.position += 1
        version = self.versions.get(sid, 0) + 1
        self.versions[sid] = version
        payload = json.dumps(data)
        digest = hashlib.sha256(payload.encode()).hexdigest()  # a 64-char hash, as Kasmina stores
        self.last_hash = digest
        return (self.RUN_ID, self.position, sid, version, etype, CURRENT_SCHEMA, command_id, now, payload,
                digest, digest, self.tx)

    def append_single(self, item: Item, command_id: str) -> None:
        now = self._now()
        self.tx += 1
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(self.insert, self._row(item, command_id, now))
        self.conn.execute(self.mark_head, (self.position, self.last_hash, now))
        self.conn.execute("COMMIT")

    def append_batch(self, chunk: Sequence[Item]) -> None:
        now = self._now()
        self.tx += 1
        rows = [self._row(item, None, now) for item in chunk]
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(self.insert, rows)
        self.conn.execute(self.mark_head, (self.position, self.last_hash, now))
        self.conn.execute("COMMIT")

    def replay(self) -> int:
        count = 0
        cursor = self.conn.execute(
            "SELECT position, stream_id, version, event_type, payload, schema_version, command_id, "
            f"recorded_at, hash, prev_hash FROM kasmina_events WHERE run_id = {self.RUN_ID} ORDER BY position")
        while rows := cursor.fetchmany(READ_CHUNK):
            for row in rows:
                if json.loads(row[4]) is not None:
                    count += 1
        return count

    def settings(self) -> dict[str, Any]:
        mode = self.conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = self.conn.execute("PRAGMA synchronous").fetchone()[0]
        return {"journal_mode": str(mode).upper(), "synchronous": SYNC_NAMES.get(sync, sync),
                "sqlite_version": sqlite3.sqlite_version, "run_row_update_per_transaction": True}

    def close(self) -> None:
        self.conn.close()  # safe to call twice


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # pragma: no cover
        return None


def _kasmina_schema(path: str) -> list[str]:
    """CREATE statements of kasmina_runs, kasmina_events and their indexes (and the events'
    append-only triggers), read from a migrated database, parents first."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name IN ('kasmina_runs', 'kasmina_events') "
            "AND type IN ('table', 'index', 'trigger') AND sql IS NOT NULL "
            "ORDER BY type <> 'table', tbl_name <> 'kasmina_runs', type = 'trigger', name").fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


# -- measuring ---------------------------------------------------------------------------------

def _median_rate(samples: Sequence[tuple[int, float]]) -> float:
    return statistics.median(n / max(dt, 1e-9) for n, dt in samples)


def _timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - start


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else repr(error)}"


def measure_all(contenders: Sequence[Contender], items: Sequence[Item], *, single: int, batch: int,
                progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Single appends, batched appends, then replays of the resulting log, for every contender.

    Every contender writes the same events in the same order. The timed rounds are
    interleaved (round 1 of each contender, then round 2, ...) so that a machine that gets
    busier or quieter during the run shifts all contenders alike; each rate is the median
    of ``REPEATS`` rounds that follow a warm-up. A contender that fails is dropped from the
    rotation and its error recorded; the others go on.
    """
    say = progress or (lambda _m: None)
    warm_single, warm_batch = 20, 2 * batch
    cursor = warm_single + REPEATS * single + warm_batch
    batched = len(items) - cursor
    if batched < REPEATS * batch:
        raise ValueError(f"workload of {len(items)} events too small for single={single}, batch={batch}")
    single_slices = [(warm_single + r * single, warm_single + (r + 1) * single) for r in range(REPEATS)]
    per_round = batched // REPEATS
    batch_slices = [(cursor + r * per_round, cursor + (r + 1) * per_round if r < REPEATS - 1 else len(items))
                    for r in range(REPEATS)]
    active = list(contenders)
    out: dict[str, dict[str, Any]] = {c.name: {} for c in contenders}
    samples: dict[str, dict[str, list[tuple[int, float]]]] = {c.name: {} for c in contenders}

    def each(action: Callable[[Contender], Any]) -> None:
        for contender in list(active):
            try:
                action(contender)
            except Exception as e:  # a broken contender must not take the others down
                say(f"{contender.name} failed: {_first_line(e)}")
                out[contender.name] = {"error": _first_line(e)}
                active.remove(contender)

    def singles(contender: Contender, lo: int, hi: int) -> int:
        for index in range(lo, hi):
            contender.append_single(items[index], f"cmd-{index:09d}")
        return hi - lo

    def batches(contender: Contender, lo: int, hi: int) -> int:
        for start in range(lo, hi, batch):
            contender.append_batch(items[start:min(start + batch, hi)])
        return hi - lo

    def record(contender: Contender, key: str, sample: tuple[int, float]) -> None:
        samples[contender.name].setdefault(key, []).append(sample)

    names = ", ".join(c.name for c in contenders)
    say(f"single-event transactions: {REPEATS} rounds of {single} ({names})")
    each(lambda c: singles(c, 0, warm_single))
    for lo, hi in single_slices:
        gc.collect()
        each(lambda c: record(c, "append_single_per_s", _timed(lambda: singles(c, lo, hi))))
    say(f"batched appends: {batched} events in transactions of {batch}")
    each(lambda c: batches(c, warm_single + REPEATS * single, cursor))
    for lo, hi in batch_slices:
        gc.collect()
        each(lambda c: record(c, "append_batch_per_s", _timed(lambda: batches(c, lo, hi))))
    say(f"replays of the {len(items)}-event log")

    def check_count(contender: Contender) -> None:
        total = contender.replay()  # the warm-up, and a completeness check
        if total != len(items):
            raise RuntimeError(f"replay read {total} events, {len(items)} were written")

    each(check_count)
    for _ in range(REPEATS):
        gc.collect()
        each(lambda c: record(c, "replay_per_s", _timed(c.replay)))
    kasmina = [c for c in active if isinstance(c, KasminaContender)]
    if kasmina:
        say("lifecycle replays (read + evolve)")
        each(lambda c: c.lifecycle_replay() if isinstance(c, KasminaContender) else None)
        for _ in range(REPEATS):
            gc.collect()
            each(lambda c: record(c, "lifecycle_replay_per_s", _timed(c.lifecycle_replay))
                 if isinstance(c, KasminaContender) else None)
    for contender in active:
        entry = out[contender.name]
        for key, taken in samples[contender.name].items():
            entry[key] = _median_rate(taken)
        entry.update(events=len(items), single_events=REPEATS * single, batch=batch,
                     settings=contender.settings())
    return out


def long_seed(url: str, n: int, *, progress: Progress | None = None) -> dict[str, Any]:
    """Fill a log with one seed's ``n`` events (snapshots as the ledger takes them), then time
    ``replay_seed`` with snapshots. The newest snapshot is about half an interval behind."""
    from kasmina.events import SNAPSHOT_EVERY, NewEvent, open_store
    from kasmina.events.migrate import upgrade
    from kasmina.lifecycle.evolve import evolve
    from kasmina.lifecycle.state import SeedState
    replay_seed, take_snapshot = _rebuild().replay_seed, _rebuild().take_snapshot

    say = progress or (lambda _m: None)
    upgrade(url)
    store = open_store(url, synchronous="FULL")
    try:
        tail = min(SNAPSHOT_EVERY // 2, max(n // 4, 1))
        body = n - tail
        # Snapshot every SNAPSHOT_EVERY events, as the ledger does, but at most ~100 of them so
        # filling a 1M-event log stays quick (each snapshot is its own durable transaction).
        every = max(SNAPSHOT_EVERY, (n // 100) // SNAPSHOT_EVERY * SNAPSHOT_EVERY)
        state = SeedState(LONG_SEED_ID)
        history = seed_events(LONG_SEED_ID)
        snapshots = 0
        started = time.perf_counter()
        say(f"long seed: writing {n} events of one seed to {_label(url)}")

        def write(count: int) -> None:
            nonlocal state, snapshots
            while count > 0:
                size = min(FILL_CHUNK, count)
                new = [NewEvent(t, d) for t, d in (next(history) for _ in range(size))]
                result = store.append(LONG_SEED_ID, new, expected_version=state.version)
                before = state
                for record in result.events:
                    state = evolve(state, record)
                if state.version // every > before.version // every:
                    take_snapshot(store, state)
                    snapshots += 1
                count -= size

        write(body)
        if snapshots == 0 or state.version % every:
            take_snapshot(store, state)
            snapshots += 1
        behind = state.version
        write(tail)
        fill_s = time.perf_counter() - started
        say(f"long seed: timing replay_seed ({snapshots} snapshots, newest {n - behind} events behind)")
        first = replay_seed(store, LONG_SEED_ID)
        times = []
        for _ in range(max(REPEATS, 5)):
            t0 = time.perf_counter()
            replay_seed(store, LONG_SEED_ID)
            times.append(time.perf_counter() - t0)
        return {
            "events": n,
            "replay_ms": statistics.median(times) * 1000,
            "events_after_snapshot": n - behind,
            "snapshots": snapshots,
            "state_matches": first.to_dict() == state.to_dict(),
            "fill_per_s": n / max(fill_s, 1e-9),
        }
    finally:
        store.close()


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _child_full_replay(url: str) -> None:
    """Runs in a fresh interpreter: a full lifecycle replay and its peak memory, as JSON.

    Peak memory is the growth of the resident set over its size just before the replay: on
    Linux the high-water mark is reset first (``/proc/self/clear_refs``) and read back as
    ``VmHWM``; elsewhere it is the growth of ``ru_maxrss``, which can under-count.
    """
    import resource

    from kasmina.events import open_store

    replay = _rebuild().replay
    store = open_store(url, synchronous="FULL")
    store.head()
    gc.collect()
    method = "ru_maxrss"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        method = "VmHWM"
    except OSError:
        pass
    before_kb = (_proc_status_kb("VmRSS") if method == "VmHWM" else None) or \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = replay(store, use_snapshots=False)
    seconds = time.perf_counter() - start
    peak_kb = (_proc_status_kb("VmHWM") if method == "VmHWM" else None) or \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store.close()
    print(json.dumps({"events": result.events, "seconds": seconds, "seeds": len(result.seeds),
                      "rss_before_mb": before_kb / 1024, "rss_peak_mb": peak_kb / 1024,
                      "peak_mb": max(peak_kb - before_kb, 0) / 1024, "method": method}))


def full_replay(url: str) -> dict[str, Any]:
    """Full ``replay(use_snapshots=False)`` of the log at ``url`` in a subprocess (clean peak RSS)."""
    code = "import sys; from kasmina.bench.store import _child_full_replay; _child_full_replay(sys.argv[1])"
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=3600, env=env)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"full replay subprocess failed: {tail[0]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["replay_per_s"] = out["events"] / max(out["seconds"], 1e-9)
    return out


# -- postgres ----------------------------------------------------------------------------------

@contextmanager
def _pg_databases(pg_url: str, names: Sequence[str]) -> Iterator[list[str]]:
    """Private databases (created with psycopg autocommit, dropped after); yields their URLs."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(pg_url).set(drivername="postgresql")
    admin = base.render_as_string(hide_password=False)
    created: list[str] = []
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                conn.execute(f'CREATE DATABASE "{name}"')
                created.append(name)
        yield [base.set(drivername="postgresql+psycopg", database=n).render_as_string(hide_password=False)
               for n in names]
    finally:
        if created:
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                for name in created:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _label(url: str) -> str:
    from kasmina.events.urls import redact

    return redact(url)


# -- the run -----------------------------------------------------------------------------------

def _peer_available() -> bool:
    try:
        import eventsourcing.persistence  # noqa: F401
        import eventsourcing.sqlite  # noqa: F401
    except Exception:
        return False
    return True


def run(*, backends: Sequence[str] = BACKENDS, events: int = DEFAULT_EVENTS, batch: int = DEFAULT_BATCH,
        long_seed: int = DEFAULT_LONG_SEED, pg_url: str | None = None, workdir: str | None = None,
        single: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-ready dict (see the module docstring).

    ``events``: size of the main log each contender writes and replays; ``batch``: events per
    batched transaction; ``single``: single-event transactions per timed round (default
    ``events // 40``, between 50 and 500); ``long_seed``: history length of the long seed (the goals
    are stated for 1,000,000); ``pg_url``: a Postgres server URL whose user may create
    databases (default ``$KASMINA_BENCH_PG`` or ``postgresql://postgres@127.0.0.1:5432/test``).
    """
    from kasmina.events.migrate import upgrade

    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backends {sorted(unknown)}: choose from {', '.join(BACKENDS)}")
    if events < 1 or batch < 1 or long_seed < 2 or (single is not None and single < 1):
        raise ValueError("events, batch and single must be positive, long_seed at least 2")
    say = progress or (lambda _m: None)
    pg_url = pg_url or os.environ.get("KASMINA_BENCH_PG") or DEFAULT_PG_URL
    single = single or min(max(events // 40, 50), 500)
    # The main log must hold the warm-ups and the single rounds plus at least a batch per round.
    events = max(events, 20 + REPEATS * single + 2 * batch + REPEATS * batch)
    items = workload(events)
    result: dict[str, Any] = {
        "config": {"backends": list(backends), "events": events, "batch": batch, "single": single,
                   "long_seed": long_seed, "goal_long_seed": GOAL_LONG_SEED, "seeds": SEEDS,
                   "repeats": REPEATS, "pg_url": _label(pg_url), "python": sys.version.split()[0],
                   "sqlite": sqlite3.sqlite_version, "cpus": os.cpu_count()},
        "store": {},
    }
    store: dict[str, Any] = result["store"]
    started = time.perf_counter()
    root = tempfile.mkdtemp(prefix="kasmina-bench-", dir=workdir)
    try:
        with ExitStack() as stack:
            pg_urls: list[str] = []
            if "postgres" in backends:
                try:
                    pg_urls = stack.enter_context(_pg_databases(
                        pg_url, [f"kasmina_bench_{os.getpid()}", f"kasmina_bench_{os.getpid()}_long"]))
                except Exception as e:  # unreachable server, no right to create databases: go on
                    say(f"postgres skipped: {_first_line(e)}")
                    store["postgres"] = {"error": _first_line(e)}
            contenders: list[Contender] = []

            def add(name: str, make: Callable[[], Contender]) -> None:
                try:
                    contender = make()
                except Exception as e:
                    say(f"{name} skipped: {_first_line(e)}")
                    store[name] = {"error": _first_line(e)}
                    return
                contenders.append(contender)
                stack.callback(contender.close)

            schema_source = os.path.join(root, "schema.db")
            upgrade(f"sqlite:///{schema_source}")  # bare sqlite3 copies Kasmina's table from it
            if "sqlite" in backends:
                add("sqlite", lambda: KasminaContender("sqlite", f"sqlite:///{os.path.join(root, 'kasmina.db')}"))
            if pg_urls:
                add("postgres", lambda: KasminaContender("postgres", pg_urls[0]))
            if _peer_available():
                add("eventsourcing_sqlite", lambda: PeerContender(os.path.join(root, "peer.db")))
            else:
                result["config"]["peer"] = "eventsourcing is not importable: peer skipped"
            add("sqlite_raw", lambda: RawContender(os.path.join(root, "raw.db"),
                                                   _kasmina_schema(schema_source)))
            store.update(measure_all(contenders, items, single=single, batch=batch, progress=say))
            for contender in contenders:
                contender.close()
            long_urls = {"sqlite": f"sqlite:///{os.path.join(root, 'long.db')}"}
            if pg_urls:
                long_urls["postgres"] = pg_urls[1]
            for backend in BACKENDS:
                entry = store.get(backend)
                if entry is None or "error" in entry:
                    continue
                try:
                    entry.update(_kasmina_extras(long_urls[backend], long_seed, say))
                except Exception as e:
                    say(f"{backend} long-seed runs failed: {_first_line(e)}")
                    entry["long_seed_error"] = _first_line(e)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["seconds"] = time.perf_counter() - started
    _derive(result)
    return result


def _kasmina_extras(url: str, n: int, say: Progress) -> dict[str, Any]:
    seed = long_seed(url, n, progress=say)
    say(f"full replay of the {n}-event log in a subprocess")
    full = full_replay(url)
    return {
        "long_seed_events": seed["events"],
        "long_seed_replay_ms": seed["replay_ms"],
        "long_seed": seed,
        "full_replay_peak_mb": full["peak_mb"],
        "full_replay_per_s": full["replay_per_s"],
        "full_replay": full,
    }


# -- ratios, goals, output ---------------------------------------------------------------------

def _rate(result: Mapping[str, Any], contender: str, key: str) -> float | None:
    entry = result["store"].get(contender)
    if not entry or "error" in entry:
        return None
    value = entry.get(key)
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def _derive(result: dict[str, Any]) -> None:
    ratios: dict[str, float | None] = {}
    for backend in BACKENDS:
        if backend not in result["store"]:
            continue
        for key, short in zip(RATE_KEYS, ("single", "batch", "replay")):
            mine = _rate(result, backend, key)
            ratios[f"{backend}_{short}_vs_raw"] = _ratio(mine, _rate(result, "sqlite_raw", key))
            if "eventsourcing_sqlite" in result["store"]:
                ratios[f"{backend}_{short}_vs_peer"] = _ratio(mine, _rate(result, "eventsourcing_sqlite", key))
    if "eventsourcing_sqlite" in result["store"]:
        for key, short in zip(RATE_KEYS, ("single", "batch", "replay")):
            ratios[f"peer_{short}_vs_raw"] = _ratio(_rate(result, "eventsourcing_sqlite", key),
                                                    _rate(result, "sqlite_raw", key))
    result["ratios"] = ratios

    n_long = result["config"]["long_seed"]
    at = "" if n_long >= GOAL_LONG_SEED else f" (measured at {n_long} events; goal size {GOAL_LONG_SEED})"
    goals: list[dict[str, Any]] = []

    def goal(name: str, value: float | None, target: str, ok: bool | None) -> None:
        goals.append({"name": name, "value": value, "target": target, "ok": bool(ok) if value is not None else False,
                      "measured": value is not None})

    def at_least(name: str, value: float | None, floor: float, target: str) -> None:
        goal(name, value, target, value is not None and value >= floor)

    primary = next((b for b in BACKENDS if _rate(result, b, "append_single_per_s") is not None), None)
    if primary is not None:
        has_peer = "eventsourcing_sqlite" in result["store"]
        at_least(f"{primary} single-event appends vs bare sqlite3", ratios.get(f"{primary}_single_vs_raw"),
                 0.8, ">= 0.80x")
        at_least(f"{primary} batched appends vs bare sqlite3 (same batch, same durability)",
                 ratios.get(f"{primary}_batch_vs_raw"), 0.9, ">= 0.90x")
        if has_peer:
            single_vs_peer = ratios.get(f"{primary}_single_vs_peer")
            goal(f"{primary} single-event appends vs peer", single_vs_peer, "> 1.00x",
                 single_vs_peer is not None and single_vs_peer > 1.0)
            at_least(f"{primary} batched appends vs peer", ratios.get(f"{primary}_batch_vs_peer"), 3.0, ">= 3.00x")
            at_least(f"{primary} replay vs peer", ratios.get(f"{primary}_replay_vs_peer"), 3.0, ">= 3.00x")
    for backend in BACKENDS:
        entry = result["store"].get(backend)
        if not entry or "error" in entry:
            continue
        ms = entry.get("long_seed_replay_ms")
        goal(f"{backend} replay_seed of a long seed behind a snapshot{at}", ms, "< 1000 ms",
             ms is not None and ms < 1000)
        mb = entry.get("full_replay_peak_mb")
        goal(f"{backend} full replay peak memory{at}", mb, "< 300 MB", mb is not None and mb < 300)
    result["goals"] = goals

    first = next((result["store"][b] for b in BACKENDS
                  if b in result["store"] and "long_seed_replay_ms" in result["store"][b]), None)
    result["long_seed"] = {"events": n_long, "replay_ms": None if first is None else first["long_seed_replay_ms"],
                           "by_backend": {b: result["store"][b]["long_seed_replay_ms"] for b in BACKENDS
                                          if "long_seed_replay_ms" in result["store"].get(b, {})}}
    result["full_replay"] = {"events": n_long, "peak_mb": None if first is None else first["full_replay_peak_mb"],
                             "by_backend": {b: result["store"][b]["full_replay_peak_mb"] for b in BACKENDS
                                            if "full_replay_peak_mb" in result["store"].get(b, {})}}


def _num(value: Any, unit: str = "") -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit in ("ms", "MB"):
        return f"{value:,.1f} {unit}"
    return f"{value:,.0f}"


def render(result: Mapping[str, Any]) -> str:
    """The result as a readable plain-text report."""
    cfg = result["config"]
    lines = [
        f"Kasmina store benchmark: {cfg['events']} events over {cfg['seeds']} seeds, "
        f"{cfg['repeats']}x{cfg['single']} single-event transactions, batches of {cfg['batch']}, "
        f"long seed {cfg['long_seed']} events (python {cfg['python']}, sqlite {cfg['sqlite']}, "
        f"{cfg['cpus']} cpus, {result.get('seconds', 0):.0f} s)",
        "",
    ]
    header = ("contender", "single/s", "batched/s", "replay/s", "lifecycle/s", "long seed", "full replay",
              "peak mem")
    rows = [header]
    for name in CONTENDERS:
        entry = result["store"].get(name)
        if entry is None:
            continue
        if "error" in entry:
            rows.append((name, "error: " + str(entry["error"])[:90], "", "", "", "", "", ""))
            continue
        rows.append((name, _num(entry.get("append_single_per_s")), _num(entry.get("append_batch_per_s")),
                     _num(entry.get("replay_per_s")), _num(entry.get("lifecycle_replay_per_s")),
                     _num(entry.get("long_seed_replay_ms"), "ms"), _num(entry.get("full_replay_per_s")),
                     _num(entry.get("full_replay_peak_mb"), "MB")))
    widths = [max(len(r[i]) for r in rows if not r[1].startswith("error") or i < 2) for i in range(len(header))]
    for row in rows:
        if row[1].startswith("error"):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]}")
        else:
            lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)))
    lines += ["", "(rates in events/s, medians; lifecycle = replay() folding evolve; long seed = replay_seed "
                  "with snapshots; full replay = replay(use_snapshots=False) of the long-seed log, subprocess)", ""]
    ratios = result.get("ratios", {})
    if ratios:
        lines.append("ratios: " + ", ".join(f"{k} {_num(v, 'x')}" for k, v in ratios.items()))
        lines.append("")
    lines.append("goals:")
    for g in result.get("goals", []):
        mark = "PASS" if g["ok"] else ("MISS" if g.get("measured", True) else "N/A ")
        unit = "ms" if "ms" in g["target"] else ("MB" if "MB" in g["target"] else "x")
        lines.append(f"  {mark}  {g['name']}: {_num(g['value'], unit)} (target {g['target']})")
    lines.append("")
    lines.append("settings:")
    for name in CONTENDERS:
        entry = result["store"].get(name)
        if entry and "settings" in entry:
            lines.append(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in entry["settings"].items()))
    for backend in BACKENDS:
        seed = result["store"].get(backend, {}).get("long_seed")
        if seed:
            lines.append(f"  {backend} long seed: {seed['snapshots']} snapshots, newest "
                         f"{seed['events_after_snapshot']} events behind the head, state matches: "
                         f"{seed['state_matches']}, filled at {seed['fill_per_s']:,.0f} events/s")
    if "peer" in cfg:
        lines.append(f"  {cfg['peer']}")
    return "\n".join(lines)


def summary_line(result: Mapping[str, Any]) -> str:
    """One line for CI logs."""
    parts = []
    peer = "eventsourcing_sqlite" in result["store"]
    ratios = result.get("ratios", {})
    for backend in BACKENDS:
        entry = result["store"].get(backend)
        if entry is None:
            continue
        if "error" in entry:
            parts.append(f"{backend} error")
            continue

        def vs(short: str) -> str:
            bits = []
            if short in ("single", "batch") and ratios.get(f"{backend}_{short}_vs_raw") is not None:
                bits.append(f"{ratios[f'{backend}_{short}_vs_raw']:.2f}x raw")
            if peer and ratios.get(f"{backend}_{short}_vs_peer") is not None:
                bits.append(f"{ratios[f'{backend}_{short}_vs_peer']:.2f}x peer")
            return f" ({', '.join(bits)})" if bits else ""

        text = (f"{backend} single {entry['append_single_per_s']:.0f}/s{vs('single')} "
                f"batch {entry['append_batch_per_s']:.0f}/s{vs('batch')} "
                f"replay {entry['replay_per_s']:.0f}/s{vs('replay')}")
        if "long_seed_replay_ms" in entry:
            text += (f" long-seed {entry['long_seed_events']} ev {entry['long_seed_replay_ms']:.1f} ms"
                     f" full-replay {entry['full_replay_peak_mb']:.1f} MB")
        parts.append(text)
    goals = result.get("goals", [])
    passed = sum(1 for g in goals if g["ok"])
    return f"bench store: {'; '.join(parts)}; goals {passed}/{len(goals)}"
