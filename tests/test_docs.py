"""Every fenced code block in the documentation runs, so the docs cannot drift from the code.

Files: every ``docs/*.md`` (found by glob, so a page added later is covered without
touching this file) and ``README.md``.

The convention, enforced here; nothing is skipped silently:

* Every fence carries a language tag. An untagged fence, an unknown tag or a fence that is
  never closed fails :func:`test_fences_are_tagged`.
* ``python``: the file's python blocks run in document order in ONE namespace per file,
  in-process, with the current directory set to a fresh temporary directory per file and
  the environment ``KASMINA_DB=sqlite:///<tmpdir>/kasmina.db`` and
  ``KASMINA_SECRET=<DOCS_SECRET>`` (read by ``Keyring.from_env``; ``KASMINA_SECRETS`` and
  ``KASMINA_REDIS`` are unset).
* ``console``: each line starting with ``$ `` is one command, run with
  ``bash -o pipefail -c`` in that same directory and environment, with the venv's ``bin``
  first on ``PATH`` (so ``kasmina`` resolves). It must exit 0, or N when the line ends with
  the comment ``# exit N``. Other lines are sample output and are not checked. A command
  may not be continued onto the next line with a backslash, and a console block without
  any ``$ `` line is an error (tag sample output ``text``). A file's python and console
  blocks run interleaved, in document order.
* ``sql``: each block is one statement, run unchanged through the code path of
  ``kasmina audit --query`` against the log that
  ``kasmina simulate --seeds 6 --steps 300 --rng 7`` writes, built once per backend per
  session: a temporary SQLite file, and the session's private PostgreSQL database
  (``pg_database`` in conftest: skipped outside CI when PostgreSQL is unreachable, a
  failure when ``CI`` is set). It must succeed on both, return at least one row unless the
  block contains ``-- may be empty``, and give the same column names and row count on
  both. Since ``audit`` runs only statements that begin with SELECT or WITH, the marker
  goes at the end of the block.
  A block that ends with ``-- sweep: NAME`` (docs/audit.md, "Across runs") also runs
  against a sweep that :func:`kasmina.simulate.run_many` writes (:data:`SWEEP`), once per
  backend per session, where it must give the same rows on both backends (floats rounded)
  and the rows :data:`SWEEP_ORACLES` ``[NAME]`` computes in Python from each run's events.
  Every oracle needs its block and every sweep block its oracle.
* ``text``: sample output; not run.
* ``sh``: allowed in README.md only (the Quick start's ``make demo`` / ``make test``, which
  must not recurse into this suite); not run.

Two markers (HTML comments, invisible when rendered) give a page a real server:

* ``<!-- docs-test: postgres -->``: the page's python and console blocks run with
  ``KASMINA_DB`` pointing at the session's private PostgreSQL database, emptied first
  (conftest's ``pg_url``), instead of a SQLite file.
* ``<!-- docs-test: redis -->``: the page needs the Redis server at ``KASMINA_TEST_REDIS``
  (default ``redis://127.0.0.1:6379/0``, which ``KASMINA_REDIS`` is then set to).

Either server unreachable: the page is skipped with the reason, or fails when ``CI`` is set
(the policy of conftest and tests/test_telemetry.py).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kasmina.cli import commands as cli
from kasmina.errors import KasminaError
from kasmina.events import migrate, open_store
from kasmina.simulate import run_many
from conftest import REDIS_URL, _reset, require_redis

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES: list[Path] = [*sorted((ROOT / "docs").glob("*.md")), README]
#: Pages that must be found; if the glob misses them, the harness is broken, not the docs.
SHIPPED = ("architecture.md", "lifecycle.md", "blending.md", "runbook.md", "audit.md", "postgres.md",
           "event-log.md", "executor.md", "telemetry.md", "benchmarks.md", "integrations.md")

TAGS = frozenset({"python", "console", "sql", "text"})
README_ONLY_TAGS = frozenset({"sh"})
DOCS_SECRET = "docs-test-secret"
SIMULATION = {"seeds": 6, "steps": 300, "rng": 7}
MAY_BE_EMPTY = "-- may be empty"
PG_MARKER = "<!-- docs-test: postgres -->"
REDIS_MARKER = "<!-- docs-test: redis -->"
COMMAND_TIMEOUT_S = 300
TAIL_CHARS = 2000

_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
_EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")


class FenceError(ValueError):
    """A Markdown file whose fences break the convention (the message names file:line)."""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    tag: str
    body: str

    @property
    def where(self) -> str:
        return f"{_rel(self.path)}:{self.line}"


@dataclass(frozen=True)
class Command:
    line: int  # 1-based line in the Markdown file
    text: str
    expected: int


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def parse_blocks(text: str, path: Path) -> list[Block]:
    """Fenced blocks of a Markdown text, in order; raises :class:`FenceError` on an unclosed fence."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence, info = opening.groups()
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), None)
        if end is None:
            raise FenceError(f"{_rel(path)}:{i + 1}: fence {fence!r} is never closed")
        body = "\n".join(line[len(indent):] if line.startswith(indent) else line.lstrip()
                         for line in lines[i + 1:end])
        tag = info.split()[0] if info.strip() else ""
        blocks.append(Block(path, i + 1, tag, body))
        i = end + 1
    return blocks


def allowed_tags(path: Path) -> frozenset[str]:
    return TAGS | README_ONLY_TAGS if path.resolve() == README.resolve() else TAGS


def tag_problems(blocks: list[Block]) -> list[str]:
    """One line per block whose tag breaks the convention."""
    problems = []
    for block in blocks:
        allowed = allowed_tags(block.path)
        if not block.tag:
            problems.append(f"{block.where}: fence has no language tag (allowed: {', '.join(sorted(allowed))})")
        elif block.tag not in allowed:
            problems.append(f"{block.where}: unknown tag {block.tag!r} (allowed: {', '.join(sorted(allowed))})")
    return problems


def console_commands(block: Block) -> list[Command]:
    """The ``$ `` lines of a console block with the exit status each must give."""
    found = []
    for offset, raw in enumerate(block.body.splitlines(), start=1):
        if not raw.startswith("$ "):
            continue
        text = raw[2:].strip()
        line = block.line + offset
        if text.endswith("\\"):
            raise FenceError(f"{_rel(block.path)}:{line}: a command may not continue onto the next line")
        expected = _EXIT.search(text)
        found.append(Command(line, text, int(expected.group(1)) if expected else 0))
    if not found:
        raise FenceError(f"{block.where}: console block without a '$ ' command (tag sample output 'text')")
    return found


def _blocks(path: Path) -> list[Block]:
    return parse_blocks(path.read_text(encoding="utf-8"), path)


def _blocks_or_none(path: Path) -> list[Block]:
    """For collection: a broken file collects nothing here and fails test_fences_are_tagged."""
    try:
        return _blocks(path)
    except FenceError:
        return []


def _tail(text: str) -> str:
    return text if len(text) <= TAIL_CHARS else "..." + text[-TAIL_CHARS:]


# -- running python and console blocks ------------------------------------------------------

def run_python(block: Block, namespace: dict[str, Any]) -> None:
    """Execute a python block so that tracebacks name the Markdown file and its line numbers."""
    code = compile("\n" * block.line + block.body, str(block.path), "exec")
    try:
        exec(code, namespace)  # noqa: S102 - running the documentation is the point
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any failure of a doc block is reported
        failure = (f"{block.where}: python block raised {type(e).__name__}: {e}\n"
                   f"{_tail(''.join(traceback.format_exception(e)))}")
    else:
        return
    pytest.fail(failure, pytrace=False)  # outside the except: no "during handling" chain


def run_command(path: Path, command: Command, cwd: Path, env: dict[str, str]) -> None:
    try:
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", command.text], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{_rel(path)}:{command.line}: `{command.text}` ran over {COMMAND_TIMEOUT_S} s\n"
                    f"--- stderr (tail) ---\n{_tail(str(e.stderr or ''))}", pytrace=False)
    if proc.returncode != command.expected:
        pytest.fail(f"{_rel(path)}:{command.line}: `{command.text}` exited {proc.returncode}, "
                    f"expected {command.expected}\n--- stderr (tail) ---\n{_tail(proc.stderr)}\n"
                    f"--- stdout (tail) ---\n{_tail(proc.stdout)}", pytrace=False)


RUNNABLE_FILES = [p for p in DOC_FILES if any(b.tag in ("python", "console") for b in _blocks_or_none(p))]


@pytest.mark.parametrize("path", RUNNABLE_FILES, ids=_rel)
def test_python_and_console_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       request: pytest.FixtureRequest) -> None:
    """A page's python and console blocks run in order, in one directory and one namespace."""
    text = path.read_text(encoding="utf-8")
    db = request.getfixturevalue("pg_url") if PG_MARKER in text else f"sqlite:///{tmp_path}/kasmina.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KASMINA_DB", db)
    monkeypatch.setenv("KASMINA_SECRET", DOCS_SECRET)
    monkeypatch.delenv("KASMINA_SECRETS", raising=False)
    if REDIS_MARKER in text:
        monkeypatch.setenv("KASMINA_REDIS", require_redis(REDIS_URL))
    else:
        monkeypatch.delenv("KASMINA_REDIS", raising=False)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    namespace: dict[str, Any] = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    ran = 0
    for block in _blocks(path):
        if block.tag == "python":
            run_python(block, namespace)
            ran += 1
        elif block.tag == "console":
            for command in console_commands(block):
                run_command(path, command, tmp_path, dict(os.environ))
                ran += 1
    assert ran > 0, f"{_rel(path)}: nothing ran"


# -- SQL blocks against a simulated log -------------------------------------------------------

class SimulatedLogs:
    """The log SQL blocks run against, one per backend, built once and rebuilt if disturbed.

    Other tests empty the shared PostgreSQL database (conftest's ``pg_url``), so before each
    use the log's head is compared with the one recorded when it was built.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.urls: dict[str, str] = {}
        self.heads: dict[str, tuple[int, str]] = {}
        self._builds = itertools.count(1)

    def url(self, backend: str, request: pytest.FixtureRequest) -> str:
        if not self._intact(backend):
            self._build(backend, request)
        return self.urls[backend]

    def _intact(self, backend: str) -> bool:
        if backend not in self.heads:
            return False
        try:
            with open_store(self.urls[backend]) as store:
                return store.head() == self.heads[backend]
        except KasminaError:
            return False

    def _build(self, backend: str, request: pytest.FixtureRequest) -> None:
        if backend == "sqlite":  # a new file each time: nothing to clean up
            url = f"sqlite:///{self.folder / f'simulated-{next(self._builds)}.db'}"
        else:
            url = request.getfixturevalue("pg_database")
            _reset(url)  # not a downgrade: that is refused while the log holds runs (the sweep's)
        migrate.upgrade(url)
        cli.simulate(url, **SIMULATION)
        with open_store(url) as store:
            self.urls[backend], self.heads[backend] = url, store.head()


@pytest.fixture(scope="session")
def simulated_logs(tmp_path_factory: pytest.TempPathFactory) -> SimulatedLogs:
    return SimulatedLogs(tmp_path_factory.mktemp("docs_sql"))


SQL_BLOCKS = [b for p in DOC_FILES for b in _blocks_or_none(p) if b.tag == "sql"]


def _query(url: str, block: Block) -> dict[str, Any]:
    try:
        return cli.audit(url, block.body)
    except KasminaError as e:
        pytest.fail(f"{block.where}: kasmina audit refused the block on {url.split(':')[0]}: {e}\n{block.body}",
                    pytrace=False)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("block", SQL_BLOCKS, ids=lambda b: b.where)
def test_sql_block_runs_on_the_simulated_log(block: Block, backend: str, simulated_logs: SimulatedLogs,
                                             request: pytest.FixtureRequest) -> None:
    """Portable SQL: the same text answers on SQLite and PostgreSQL, with the same shape."""
    result = _query(simulated_logs.url(backend, request), block)
    if MAY_BE_EMPTY not in block.body:
        assert result["rows"], f"{block.where}: no rows on {backend} (add '{MAY_BE_EMPTY}' if that is expected)"
    if backend == "postgres":
        reference = _query(simulated_logs.url("sqlite", request), block)
        assert (result["columns"], len(result["rows"])) == (reference["columns"], len(reference["rows"])), (
            f"{block.where}: PostgreSQL gave columns {result['columns']} and {len(result['rows'])} rows, "
            f"SQLite {reference['columns']} and {len(reference['rows'])} rows")


# -- sweep queries against a concurrent sweep, checked against Python ------------------------

#: The sweep the ``-- sweep: NAME`` blocks run against: small, so each backend's is written
#: in a few seconds, and chosen so it has culls (a controller's too), fossilizations, blend
#: modes, counterfactuals and generations still going on (test_the_sweep_has_something_to_audit).
SWEEP = {"runs": 3, "seeds": 3, "steps": 140, "rng": 3}
_SWEEP_MARKER = re.compile(r"^--\s*sweep:\s*(\w+)\s*$", re.MULTILINE)
FLOAT_DIGITS = 9


def sweep_name(block: Block) -> str | None:
    found = _SWEEP_MARKER.findall(block.body)
    return found[-1] if found else None


SWEEP_BLOCKS = [b for b in SQL_BLOCKS if sweep_name(b) is not None]


class SweepLogs:
    """The sweep, one per backend, written once and rewritten if another test emptied it
    (the PostgreSQL database is the session's, shared with ``pg_url`` users)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.urls: dict[str, str] = {}
        self.runs: dict[str, dict[str, int]] = {}
        self._builds = itertools.count(1)
        self._oracles: dict[str, dict[str, list[tuple[Any, ...]]]] = {}

    def url(self, backend: str, request: pytest.FixtureRequest) -> str:
        if backend not in self.runs or self._runs(backend) != self.runs[backend]:
            self._build(backend, request)
        return self.urls[backend]

    def _runs(self, backend: str) -> dict[str, int] | None:
        if backend not in self.urls:
            return None
        try:
            with open_store(self.urls[backend]) as store:
                return {r.name: r.last_position for r in store.runs()}
        except KasminaError:
            return None

    def _build(self, backend: str, request: pytest.FixtureRequest) -> None:
        if backend == "sqlite":
            url = f"sqlite:///{self.folder / f'sweep-{next(self._builds)}.db'}"  # run_many migrates it
        else:
            url = request.getfixturevalue("pg_database")
            _reset(url)
            migrate.upgrade(url)
        run_many(url, **SWEEP)
        self.urls[backend] = url
        self.runs[backend] = self._runs(backend) or {}
        self._oracles[backend] = sweep_oracles(url)

    def expected(self, backend: str, name: str) -> list[tuple[Any, ...]]:
        return self._oracles[backend][name]


@pytest.fixture(scope="session")
def sweep_logs(tmp_path_factory: pytest.TempPathFactory) -> SweepLogs:
    return SweepLogs(tmp_path_factory.mktemp("docs_sweep"))


# The oracle: the same answers, from each run's events read one run at a time through the
# store (no view, no SQL), so a query that joins across runs or misplaces a span fails.

@dataclass
class _Generation:
    run: str
    seed_id: str
    blueprint_id: str
    position: int
    blend_mode: str = "default"
    outcome: str | None = None
    outcome_gate: str | None = None
    outcome_position: int | None = None

    def holds(self, position: int, *, outcome_included: bool) -> bool:
        if position <= self.position:
            return False
        if self.outcome_position is None:
            return True
        return position <= self.outcome_position if outcome_included else position < self.outcome_position


@dataclass
class _SweepFacts:
    runs: list[tuple[str, str, int]]  # name, status, events
    transitions: list[tuple[str, str, int, str, str | None, str, int]]  # run, seed, position, to, gate, reason, step
    generations: list[_Generation]
    contributions: list[tuple[str, str, int, float]]  # run, seed, position, contribution
    refusals: dict[str, int]


def _sweep_facts(url: str) -> _SweepFacts:
    from kasmina.lifecycle import events as ev

    with open_store(url) as store:
        infos = store.runs()
    facts = _SweepFacts([], [], [], [], {})
    for info in infos:
        with open_store(url, run=info.name) as store:
            events = list(store.read())
        facts.runs.append((info.name, info.status, len(events)))
        facts.refusals[info.name] = sum(e.type == ev.COMMAND_REFUSED for e in events)
        current: dict[str, _Generation] = {}  # per seed: its latest generation
        last_transition: dict[str, int] = {}
        for e in events:
            d = e.data
            if e.type in (ev.STAGE_CHANGED, ev.SEED_ROLLED_BACK):
                facts.transitions.append((info.name, e.stream_id, e.position, d["to_stage"], d.get("gate"),
                                          d.get("reason"), int(d["step"])))
                last_transition[e.stream_id] = e.position
                g = current.get(e.stream_id)
                if e.type == ev.STAGE_CHANGED and d["to_stage"] == "GERMINATED":
                    current[e.stream_id] = g = _Generation(info.name, e.stream_id, d["blueprint_id"], e.position)
                    facts.generations.append(g)
                elif g is not None and g.outcome is None and d["to_stage"] in ("FOSSILIZED", "CULLED"):
                    g.outcome, g.outcome_gate, g.outcome_position = d["to_stage"], d.get("gate"), e.position
            elif e.type == ev.BLEND_CONFIG:
                g = current.get(e.stream_id)
                # the mode of the first blend config between the germination and the next transition
                if g is not None and last_transition[e.stream_id] == g.position and g.blend_mode == "default":
                    g.blend_mode = d["mode"]
            if e.type in (ev.STAGE_CHANGED, ev.GATE_FAILED):
                contribution = (d.get("inputs") or {}).get("contribution")
                if contribution is not None:
                    facts.contributions.append((info.name, e.stream_id, e.position, float(contribution)))
    return facts


def _generation_of(facts: _SweepFacts, run: str, seed_id: str, position: int, *,
                   outcome_included: bool) -> _Generation | None:
    found = [g for g in facts.generations if g.run == run and g.seed_id == seed_id
             and g.holds(position, outcome_included=outcome_included)]
    assert len(found) <= 1, found
    return found[0] if found else None


def _spans(facts: _SweepFacts) -> list[tuple[str, str, int, str, int]]:
    """(run, seed, position, stage, steps) of every stage with a next transition."""
    out = []
    by_seed: dict[tuple[str, str], list[tuple[str, str, int, str, str | None, str, int]]] = {}
    for t in facts.transitions:
        by_seed.setdefault((t[0], t[1]), []).append(t)
    for (run, seed_id), ts in by_seed.items():
        ts.sort(key=lambda t: t[2])
        out.extend((run, seed_id, a[2], a[3], b[6] - a[6]) for a, b in zip(ts, ts[1:]))
    return out


def _stats(values: list[int]) -> tuple[int, int, int, float]:
    return len(values), min(values), max(values), sum(values) / len(values)


def _oracle_fossilize_rate(facts: _SweepFacts) -> list[tuple[Any, ...]]:
    groups: dict[tuple[str, str], list[_Generation]] = {}
    for g in facts.generations:
        groups.setdefault((g.blueprint_id, g.blend_mode), []).append(g)
    rows = []
    for (blueprint, mode), gs in groups.items():
        fossilized = sum(g.outcome == "FOSSILIZED" for g in gs)
        culled = sum(g.outcome == "CULLED" for g in gs)
        ended = fossilized + culled
        rows.append((blueprint, mode, len(gs), fossilized, culled, len(gs) - ended,
                     fossilized / ended if ended else None))
    return rows


def _oracle_stage_steps(facts: _SweepFacts) -> list[tuple[Any, ...]]:
    groups: dict[str, list[int]] = {}
    for _, _, _, stage, steps in _spans(facts):
        groups.setdefault(stage, []).append(steps)
    return [(stage, *_stats(v)) for stage, v in groups.items()]


def _oracle_blend_steps(facts: _SweepFacts) -> list[tuple[Any, ...]]:
    groups: dict[str, list[int]] = {}
    for run, seed_id, position, stage, steps in _spans(facts):
        if stage == "BLENDING":
            g = _generation_of(facts, run, seed_id, position, outcome_included=False)
            assert g is not None, (run, seed_id, position)
            groups.setdefault(g.blend_mode, []).append(steps)
    return [(mode, *_stats(v)) for mode, v in groups.items()]


def _oracle_culls_by_gate(facts: _SweepFacts) -> list[tuple[Any, ...]]:
    groups: dict[tuple[str, str], set[str]] = {}
    counts: dict[tuple[str, str], int] = {}
    for run, _, _, to_stage, gate, reason, _ in facts.transitions:
        if to_stage == "CULLED":
            key = (gate or "(controller)", reason)
            groups.setdefault(key, set()).add(run)
            counts[key] = counts.get(key, 0) + 1
    return [(*key, counts[key], len(runs)) for key, runs in groups.items()]


def _oracle_culls_by_site(facts: _SweepFacts) -> list[tuple[Any, ...]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for g in facts.generations:
        if g.outcome == "CULLED":
            groups.setdefault((g.seed_id, g.outcome_gate or "(controller)"), []).append(g.run)
    return [(*key, len(runs), len(set(runs))) for key, runs in groups.items()]


def _oracle_contribution_by_blueprint(facts: _SweepFacts) -> list[tuple[Any, ...]]:
    groups: dict[str, list[tuple[str, str, float]]] = {}
    for run, seed_id, position, contribution in facts.contributions:
        g = _generation_of(facts, run, seed_id, position, outcome_included=True)
        if g is not None:
            groups.setdefault(g.blueprint_id, []).append((run, seed_id, contribution))
    return [(blueprint, len(v), len({(r, s) for r, s, _ in v}), sum(c for *_, c in v) / len(v),
             min(c for *_, c in v), max(c for *_, c in v)) for blueprint, v in groups.items()]


def _oracle_run_summary(facts: _SweepFacts) -> list[tuple[Any, ...]]:
    rows = []
    for name, status, events in facts.runs:
        gs = [g for g in facts.generations if g.run == name]
        rows.append((name, status, events, len(gs), sum(g.outcome == "FOSSILIZED" for g in gs),
                     sum(g.outcome == "CULLED" for g in gs), facts.refusals[name]))
    return rows


SWEEP_ORACLES = {
    "fossilize_rate": _oracle_fossilize_rate,
    "stage_steps": _oracle_stage_steps,
    "blend_steps": _oracle_blend_steps,
    "culls_by_gate": _oracle_culls_by_gate,
    "culls_by_site": _oracle_culls_by_site,
    "contribution_by_blueprint": _oracle_contribution_by_blueprint,
    "run_summary": _oracle_run_summary,
}


def sweep_oracles(url: str) -> dict[str, list[tuple[Any, ...]]]:
    facts = _sweep_facts(url)
    return {name: oracle(facts) for name, oracle in SWEEP_ORACLES.items()}


def comparable(rows: list[Any]) -> list[tuple[Any, ...]]:
    """Rows as tuples with floats rounded, in a fixed order: the backends may collate text
    differently, so the order of rows is not what is compared."""
    def cell(v: Any) -> Any:
        return round(v, FLOAT_DIGITS) if isinstance(v, float) else v
    return sorted((tuple(cell(v) for v in row) for row in rows), key=repr)


def test_every_sweep_block_has_an_oracle_and_every_oracle_a_block() -> None:
    names = [sweep_name(b) for b in SWEEP_BLOCKS]
    assert len(names) == len(set(names)), f"sweep block names repeat: {names}"
    assert set(names) == set(SWEEP_ORACLES), (
        f"blocks without an oracle: {sorted(set(names) - set(SWEEP_ORACLES))}; "
        f"oracles without a block: {sorted(set(SWEEP_ORACLES) - set(names))}")


def test_the_sweep_has_something_to_audit(sweep_logs: SweepLogs, request: pytest.FixtureRequest) -> None:
    """Otherwise a query could be wrong where the sweep happens to hold nothing."""
    facts = _sweep_facts(sweep_logs.url("sqlite", request))
    gens = facts.generations
    assert {n for n, status, _ in facts.runs if status == "finished"} >= {f"sim-{i}" for i in range(SWEEP["runs"])}
    assert len({g.blueprint_id for g in gens}) >= 2 and len({g.blend_mode for g in gens}) >= 3
    assert "default" in {g.blend_mode for g in gens}
    assert {g.outcome for g in gens} == {"FOSSILIZED", "CULLED", None}, "needs every outcome, one still going on"
    assert any(g.outcome == "CULLED" and g.outcome_gate is None for g in gens), "needs a controller's cull"
    assert any(g.outcome_gate == "G4_SYSTEM_IMPACT" for g in gens), "needs a G4 cull (its contribution)"
    assert facts.contributions and sum(facts.refusals.values()) > 0
    # the same seed ids in several runs: what makes joins without ``run`` wrong
    assert len({g.run for g in gens if g.seed_id == "sim.layer0"}) == SWEEP["runs"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("block", SWEEP_BLOCKS, ids=lambda b: f"{b.where}:{sweep_name(b)}")
def test_sweep_block_answers_the_question(block: Block, backend: str, sweep_logs: SweepLogs,
                                          request: pytest.FixtureRequest) -> None:
    """The same rows on both backends, and the rows Python computes from the runs' events."""
    name = sweep_name(block)
    assert name is not None
    url = sweep_logs.url(backend, request)
    got = comparable(_query(url, block)["rows"])
    expected = comparable(sweep_logs.expected(backend, name))
    assert got == expected, f"{block.where} ({name}) on {backend}:\n got      {got}\n expected {expected}"
    if backend == "postgres":
        reference = comparable(_query(sweep_logs.url("sqlite", request), block)["rows"])
        assert got == reference, f"{block.where} ({name}): PostgreSQL and SQLite disagree"


# -- the structure every page must have ----------------------------------------------------

@pytest.mark.parametrize("path", DOC_FILES, ids=_rel)
def test_fences_are_tagged(path: Path) -> None:
    """No block escapes the harness: each fence has a tag the harness knows how to treat."""
    try:
        blocks = _blocks(path)
    except FenceError as e:
        pytest.fail(str(e), pytrace=False)
    problems = tag_problems(blocks)
    for block in blocks:
        if block.tag == "console":
            try:
                console_commands(block)
            except FenceError as e:
                problems.append(str(e))
    assert not problems, "\n".join(problems)


def test_the_glob_finds_the_shipped_pages() -> None:
    found = {p.name for p in DOC_FILES}
    assert set(SHIPPED) <= found, f"missing from docs/: {sorted(set(SHIPPED) - found)}"
    assert SQL_BLOCKS and RUNNABLE_FILES, "the harness collected no sql or runnable blocks"


# -- the harness itself ----------------------------------------------------------------------

def _parse(text: str, name: str = "docs/x.md") -> list[Block]:
    return parse_blocks(text, ROOT / name)


def test_harness_flags_untagged_unknown_and_readme_only_tags() -> None:
    text = "```\nplain\n```\n\n```bash\nls\n```\n\n```sh\nmake test\n```\n\n```sql\nSELECT 1\n```\n"
    problems = tag_problems(_parse(text))
    assert [p.split(":")[1] for p in problems] == ["1", "5", "9"], problems
    assert tag_problems(_parse("```sh\nmake demo\n```\n", "README.md")) == []


def test_harness_reads_blocks_with_lines_and_rejects_unclosed_fences() -> None:
    (block,) = _parse("# title\n\n  ```python\n  x = 1\n  ````\n\n")
    assert (block.line, block.tag, block.body) == (3, "python", "x = 1")
    with pytest.raises(FenceError, match=r"docs/x.md:1: fence '```' is never closed"):
        _parse("```python\nx = 1\n")


def test_harness_reads_commands_and_expected_exit_status() -> None:
    (block,) = _parse("```console\n$ kasmina verify\nok\n$ kasmina verify --db x  # exit 1\n```\n")
    assert console_commands(block) == [Command(2, "kasmina verify", 0),
                                       Command(4, "kasmina verify --db x  # exit 1", 1)]
    with pytest.raises(FenceError, match="continue onto the next line"):
        console_commands(_parse("```console\n$ kasmina audit \\\n  --json\n```\n")[0])
    with pytest.raises(FenceError, match="without a '\\$ ' command"):
        console_commands(_parse("```console\nok\n```\n")[0])


def test_harness_python_failures_name_the_markdown_line(tmp_path: Path) -> None:
    (block,) = _parse("text\n\n```python\nx = 1\nraise ValueError('boom')\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"docs/x.md:3: python block raised ValueError: boom") as info:
        run_python(block, {})
    assert 'File "' in str(info.value) and "line 5" in str(info.value)


def test_harness_checks_the_exit_status(tmp_path: Path) -> None:
    env = dict(os.environ)
    run_command(ROOT / "docs/x.md", Command(1, "exit 3  # exit 3", 3), tmp_path, env)
    with pytest.raises(pytest.fail.Exception, match=r"docs/x.md:7: `false` exited 1, expected 0"):
        run_command(ROOT / "docs/x.md", Command(7, "false", 0), tmp_path, env)

