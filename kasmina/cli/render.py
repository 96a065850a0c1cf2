"""Human-readable output of the CLI commands (rich tables); ``--json`` bypasses all of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported only when a table is actually printed
    from rich.console import Console
    from rich.table import Table


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    return table


def _mark(passed: Any) -> str:
    return {True: "pass", False: "FAIL"}.get(passed, "")


def _contribution(row: dict[str, Any]) -> str:
    """``+1.234 % (loss 2.31 -> 2.28)``: what the seed changed on the probe batch."""
    if row.get("contribution") is None:
        return ""
    value = row["contribution"]
    text = f"{value:+.3%}" if isinstance(value, (int, float)) else str(value)
    return f"{text} (loss {row.get('loss_without'):.4g} -> {row.get('loss_with'):.4g})" \
        if isinstance(row.get("loss_with"), (int, float)) and isinstance(row.get("loss_without"), (int, float)) else text


def history(out: Console, data: dict[str, Any]) -> None:
    rows = [[r["position"], r["step"], r["event"],
             f"{r['from_stage']} -> {r['to_stage']}" if r["to_stage"] else "",
             r["gate"], _mark(r["passed"]), r["reason"], r["command_id"]] for r in data["events"]]
    columns = ["pos", "step", "event", "transition", "gate", "verdict", "reason", "command"]
    if any(r.get("contribution") is not None for r in data["events"]):
        columns.append("contribution")
        for row, r in zip(rows, data["events"]):
            row.append(_contribution(r))
    out.print(_table(f"history of {data['seed_id']}", columns, rows))


def _per_run(show: Any) -> Any:
    """A renderer of one run's result that also renders ``--all-runs`` (a result per run)."""
    def render(out: Console, data: dict[str, Any]) -> None:
        if "runs" not in data:
            show(out, data, None if data.get("run") == "default" else data.get("run"))
            return
        for name, one in data["runs"].items():
            show(out, one, name)
    return render


def _of(run: str | None) -> str:
    return "" if run is None else f"run {run}: "


@_per_run
def replay(out: Console, data: dict[str, Any], run: str | None = None) -> None:
    rows = [[sid, s["stage"], s["generation"], s["blueprint_id"], (s["blend"] or {}).get("mode"),
             s["stage_entered_step"], s["version"]] for sid, s in data["seeds"].items()]
    out.print(_table(f"{_of(run)}seeds at position {data['position']}",
                     ["seed", "stage", "gen", "blueprint", "blend", "since step", "version"], rows))
    out.print(f"digest {data['digest']}")
    out.print(f"decisions digest {data['decisions_digest']} (stages, steps and reasons only: equal for runs "
              "that decided the same)")


def audit(out: Console, data: dict[str, Any]) -> None:
    if "columns" in data:
        out.print(_table("query", data["columns"], data["rows"]))
        return
    head = f", head {data['head_hash'][:16]}…" if data["head_hash"] else ""
    scope = f"run {data['run']}" if data["run"] else f"{data['runs']} run{'s' if data['runs'] != 1 else ''}"
    out.print(f"{data['database']} ({scope}): {data['events']} events{head}")
    out.print(_table("seeds", ["run", "seed", "stage", "generation", "since step", "since position"],
                     [list(s.values()) for s in data["seeds"]]))
    if data["culls"]:
        out.print(_table("culls", ["gate", "reason", "count"], [list(c.values()) for c in data["culls"]]))
    if data["refusals"]:
        out.print(_table("refused commands", ["reason", "count"], [list(r.values()) for r in data["refusals"]]))
    if data["contributions"]:
        rows = [[c["run"], c["seed_id"], c["step"], f"{c['stage']} -> {c['to_stage'] or '?'}", _contribution(c),
                 "-" if c["threshold"] is None else f"{c['threshold']:.2%}"] for c in data["contributions"]]
        out.print(_table("contributions (the counterfactual: probe loss without the seed -> with it)",
                         ["run", "seed", "step", "transition", "contribution", "required"], rows))


def simulate(out: Console, data: dict[str, Any]) -> None:
    refused = ", ".join(f"{k} {v}" for k, v in data["commands_refused"].items()) or "none"
    out.print(f"simulated {data['seeds']} seeds over steps {data['first_step']}..{data['first_step'] + data['steps'] - 1}"
              f" into {data['database']}: {data['events']} events in the log, "
              f"{data['commands_accepted']} commands accepted, refused: {refused}")
    stages: dict[str, int] = {}
    for stage in data["final_stages"].values():
        stages[stage] = stages.get(stage, 0) + 1
    out.print("final stages: " + ", ".join(f"{k} {v}" for k, v in sorted(stages.items())))


def simulate_runs(out: Console, data: dict[str, Any]) -> None:
    t = data["totals"]
    stages = ", ".join(f"{k} {v}" for k, v in sorted(t["final_stages"].items()))
    out.print(f"simulated {t['runs']} runs at once into {data['database']} in {data['wall_s']} s: "
              f"{t['finished']} finished, {t['crashed']} crashed, {t['events']} events, "
              f"{t['commands_accepted']} commands accepted; final stages: {stages}")
    for name, report in data["runs"].items():
        out.print(f"  {name}: {report['events']} events, {report['seeds']} seeds, {report['steps']} steps")


@_per_run
def verify(out: Console, data: dict[str, Any], run: str | None = None) -> None:
    if data["ok"]:
        out.print(f"{_of(run)}ok ({data['events']} events, hash chain and replay verified)")
    else:
        out.print(f"{_of(run)}FAILED at position {data['position']}: {data['problem']}")


def runs(out: Console, data: dict[str, Any]) -> None:
    rows = [[r["name"], r["status"], r["steps"], ", ".join(f"{k} {v}" for k, v in sorted(r["seeds"].items())),
             r["culls"], r["events"], (r["first"] or "")[:19], (r["last"] or "")[:19],
             f"{r['host']}:{r['pid']}" if r["host"] else ""] for r in data["runs"]]
    out.print(_table(f"runs in {data['database']}",
                     ["run", "status", "steps", "seeds by stage", "culls", "events", "first", "last", "process"],
                     rows))


def status(out: Console, data: dict[str, Any]) -> None:
    from kasmina.status import HEADERS, Status

    found = Status.from_dict(data)
    empty = "; no command has reached a site yet" if not found.sites else ""
    out.print(f"{data['database']}: {found.title()}{empty}", markup=False, highlight=False, soft_wrap=True)
    if found.sites:
        out.print(_table("sites", list(HEADERS), found.rows()))


def db(out: Console, data: dict[str, Any]) -> None:
    if "statements" in data:  # grant / revoke: what ran, then what the role now is
        for statement in data["statements"]:
            out.print(statement, markup=False, highlight=False, soft_wrap=True)
        rights = {"job": "a job's rights (its own runs)", "auditor": "an auditor's rights (reads every run)",
                  "none": "no rights"}[data["kind"]]
        out.print(f"role {data['role']!r} has {rights} on {data['database']}", markup=False, highlight=False)
        return
    line = f"{data['database']}: schema {data['revision'] or 'none'}"
    if "up_to_date" in data:
        line += " (up to date)" if data["up_to_date"] else f" (this kasmina needs {data['expected']})"
    out.print(line)
