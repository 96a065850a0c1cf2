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
from conftest import REDIS_URL, require_redis

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES: list[Path] = [*sorted((ROOT / "docs").glob("*.md")), README]
#: Pages that must be found; if the glob misses them, the harness is broken, not the docs.
SHIPPED = ("architecture.md", "lifecycle.md", "blending.md", "runbook.md", "audit.md", "postgres.md",
           "event-log.md", "executor.md", "telemetry.md", "benchmarks.md")

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
            if migrate.current(url) is not None:
                migrate.downgrade(url, "base")
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

