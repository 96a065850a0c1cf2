"""The ``kasmina`` command line.

Each command is a plain function in :mod:`kasmina.cli.commands`; this module parses
arguments, calls it, and prints a table or ``--json``. A user error is one line on stderr
(``error: ...``) and a non-zero exit; ``--traceback`` shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any, Callable, NoReturn, Sequence

from kasmina.bench import flags as bench_flags
from kasmina.cli.argtypes import nonneg_int, pos_float, pos_int, revision, run_name
from kasmina.errors import KasminaError
from kasmina.events.runs import ENV_VAR as RUN_ENV_VAR
from kasmina.events.urls import ENV_VAR, default_url, parse

EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_VERIFY_FAILED = 3


def _one_line(message: str) -> str:
    """``message`` with every line break or other unprintable character escaped (``\\n``):
    argparse quotes some user input (``unrecognized arguments: a<newline>b``) verbatim."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in message)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {_one_line(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="URL", default=None,
                        help=f"event log URL (default: ${ENV_VAR}, else sqlite:///kasmina.db)")
    common.add_argument("--run", metavar="NAME", type=run_name, default=None,
                        help=f"the run in the log (default: ${RUN_ENV_VAR}, else 'default')")
    common.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    common.add_argument("--traceback", action="store_true", help="show the Python traceback on errors")
    every = argparse.ArgumentParser(add_help=False)
    every.add_argument("--all-runs", action="store_true", help="every run in the log, each on its own")

    output = argparse.ArgumentParser(add_help=False)  # for commands that read no log
    output.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    output.add_argument("--traceback", action="store_true", help="show the Python traceback on errors")

    parser = _Parser(prog="kasmina", description="Kasmina: the seed executor's event log and tools.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    db = sub.add_parser("db", help="schema migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    up = db_sub.add_parser("upgrade", parents=[common], help="create or upgrade the schema (alembic upgrade)")
    up.add_argument("--revision", type=revision, default="head")
    down = db_sub.add_parser("downgrade", parents=[common], help="downgrade the schema ('base' drops the log)")
    down.add_argument("revision", type=revision)
    db_sub.add_parser("current", parents=[common], help="show the schema revision")
    grant = db_sub.add_parser("grant", parents=[common],
                              help="PostgreSQL: let a database role write its own runs (or, --auditor, read all)")
    grant.add_argument("role", help="an existing PostgreSQL role")
    grant.add_argument("--auditor", action="store_true", help="read every run, write nothing")
    revoke = db_sub.add_parser("revoke", parents=[common], help="PostgreSQL: take back what 'db grant' gave a role")
    revoke.add_argument("role", help="an existing PostgreSQL role")

    sim = sub.add_parser("simulate", parents=[common], help="run synthetic seed lifecycles into the log")
    sim.add_argument("--seeds", type=pos_int, default=8)
    sim.add_argument("--steps", type=pos_int, default=400)
    sim.add_argument("--rng", type=nonneg_int, default=0, help="run seed (same seed, same history)")
    sim.add_argument("--runs", type=pos_int, default=None, metavar="N",
                     help="write N runs at once, one process each, named sim-0..sim-N-1 (with --run NAME: "
                          "NAME-0..), run i with --rng + i: a sweep to audit")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")

    demo = sub.add_parser("demo", parents=[common],
                          help="the main job: grow a network with seeds, against the host alone and a static "
                               "network of the grown size (see docs/demo.md)")
    demo.add_argument("--task", choices=("digits", "text"), default=None,
                      help="digits: an MLP on the 8x8 digits (default, seconds); text: a byte-level transformer "
                           "LM on the Python standard library's source (minutes)")
    demo.add_argument("--steps", type=pos_int, default=None,
                      help="training steps with seeds, after the host trained alone (default: digits 1200, text 1000)")
    demo.add_argument("--rng", type=nonneg_int, default=None, help="run seed (same seed, same run; default 0)")
    demo.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    demo.add_argument("--host-steps", type=nonneg_int, default=None,
                      help="steps the host trains alone before grafting (default: digits 1000, text 800)")
    demo.add_argument("--width", type=pos_int, default=None,
                      help="the host's width (default: digits 8, text 64)")
    demo.add_argument("--context", type=pos_int, default=None,
                      help="text: bytes of context per sequence (default 128)")
    demo.add_argument("--plot", metavar="FILE.png", default=None,
                      help="write alpha per seed, validation accuracy and a lifecycle timeline to a PNG")
    demo.add_argument("--resume", action="store_true",
                      help="continue the run in this log from its newest checkpoint (or start one if none)")
    demo.add_argument("--checkpoints", metavar="DIR", default=None,
                      help="where checkpoints go (default: next to the SQLite file, else one folder per "
                           "database under ./kasmina-checkpoints)")
    demo.add_argument("--checkpoint-every", type=pos_int, default=None, metavar="N",
                      help="checkpoint every N steps (default: steps/40)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar and no stage-change lines")
    hist = sub.add_parser("history", parents=[common], help="one seed's transitions, gates and reasons")
    hist.add_argument("seed", help="seed id (its site name)")

    rep = sub.add_parser("replay", parents=[common, every], help="rebuild every seed from the log, with a digest")
    rep.add_argument("--to-position", type=nonneg_int, default=None, metavar="N")

    aud = sub.add_parser("audit", parents=[common], help="summary from the SQL views, or a read-only query")
    aud.add_argument("--query", metavar="SQL", default=None)

    sub.add_parser("verify", parents=[common, every], help="check the hash chain and replay every transition")
    sub.add_parser("runs", parents=[common], help="every run in the log: status, steps, seeds by stage, culls, events")
    sub.add_parser("status", parents=[common],
                   help="every site at a glance, from the log: host, seed, stage, alpha, blend, parameters, "
                        "contribution")

    sub.add_parser("blueprints", parents=[output],
                   help="the catalogue's blueprints: site kinds they fit, parameters, default blend, checksum")

    fol = sub.add_parser("follow", parents=[common, every],
                         help="tail the log read-only, keeping a live replayed view; reports the lag")
    fol.add_argument("--interval", type=pos_float, default=0.2, metavar="S", help="seconds between polls")
    fol.add_argument("--until-position", type=pos_int, default=None, metavar="N", help="stop once N is applied")
    fol.add_argument("--from-start", action="store_true",
                     help="begin with an empty view and apply the whole log (default: from its head)")
    fol.add_argument("--idle-timeout", type=pos_float, default=None, metavar="S",
                     help="stop after S seconds with nothing new")
    tel = sub.add_parser("telemetry", help="telemetry streams")
    tel_sub = tel.add_subparsers(dest="telemetry_command", required=True, parser_class=_Parser)
    tail = tel_sub.add_parser("tail", parents=[common], help="print telemetry packets from Redis as they arrive")
    tail.add_argument("--redis", metavar="URL", default=None,
                      help="Redis URL (default: $KASMINA_REDIS, else redis://127.0.0.1:6379/0)")
    tail.add_argument("--stream", choices=("normal", "emergency", "both"), default="both")
    tail.add_argument("--normal-stream", default="kasmina.telemetry")
    tail.add_argument("--emergency-stream", default="kasmina.emergency")
    tail.add_argument("--count", type=pos_int, default=None, help="stop after N packets")
    tail.add_argument("--from-start", action="store_true", help="begin with the oldest packet kept")
    tail.add_argument("--idle-timeout", type=float, default=None, metavar="S", help="stop after S quiet seconds")

    bench = sub.add_parser("bench", parents=[common], help="benchmarks (default: the blend/isolation/fetch harness)")
    bench.add_argument("--store", action="store_true",
                       help="the event-store benchmark instead (tools/bench_store.py; its flags: --events, "
                            "--long-seed, --backends, --pg-url)")
    bench.add_argument("--events", type=pos_int, default=None)
    bench.add_argument("--long-seed", type=pos_int, default=None)
    bench.add_argument("--backends", default="sqlite,postgres")
    bench.add_argument("--pg-url", default=None)
    # The harness (tools/bench_kasmina.py, kasmina/bench/kasmina.py); ignored with --store.
    bench_flags.add_arguments(bench)
    return parser


def _progress(args: argparse.Namespace, total: int) -> tuple[Any, Callable[[int], None] | None]:
    if args.json or getattr(args, "quiet", False) or not sys.stderr.isatty():
        return None, None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task("simulating", total=total)
    return bar, lambda done: bar.update(task, completed=done)


def _dispatch(args: argparse.Namespace) -> tuple[dict[str, Any], Callable[..., None], int]:
    from kasmina.cli import commands, render

    if args.command == "blueprints":  # reads no log: no --db
        return commands.blueprints(), _show_blueprints, 0
    url = args.db or default_url()
    if args.command == "db":
        if parse(url).backend == "memory":
            raise KasminaError("memory:// is a throwaway log without a schema: db commands need "
                               "sqlite:///PATH or postgresql://...")
        fn = {"upgrade": lambda: commands.db_upgrade(url, args.revision),
              "downgrade": lambda: commands.db_downgrade(url, args.revision),
              "current": lambda: commands.db_current(url),
              "grant": lambda: commands.db_grant(url, args.role, auditor=args.auditor),
              "revoke": lambda: commands.db_grant(url, args.role, revoke=True)}[args.db_command]
        return fn(), render.db, 0
    if args.command == "simulate" and args.runs is not None:
        bar, progress = _progress(args, args.runs * args.steps)
        with bar if bar is not None else contextlib.nullcontext():
            data = commands.simulate_runs(url, runs=args.runs, seeds=args.seeds, steps=args.steps, rng=args.rng,
                                          prefix=args.run, progress=progress)
        return data, render.simulate_runs, 0
    if args.command == "simulate":
        bar, progress = _progress(args, args.steps)
        if bar is not None:
            with bar:
                data = commands.simulate(url, seeds=args.seeds, steps=args.steps, rng=args.rng, run=args.run,
                                         progress=progress)
        else:
            data = commands.simulate(url, seeds=args.seeds, steps=args.steps, rng=args.rng, run=args.run)
        return data, render.simulate, 0
    if args.command == "demo":
        return _demo(args, url)
    _one_or_all(args)
    if args.command == "history":
        return commands.history(url, args.seed, args.run), render.history, 0
    if args.command == "replay":
        return commands.replay(url, args.to_position, args.run, args.all_runs), render.replay, 0
    if args.command == "audit":
        return commands.audit(url, args.query, args.run), render.audit, 0
    if args.command == "verify":
        data = commands.verify(url, args.run, args.all_runs)
        return data, render.verify, 0 if data["ok"] else EXIT_VERIFY_FAILED
    if args.command == "runs":
        return commands.runs(url), render.runs, 0
    if args.command == "status":
        return commands.status(url, args.run), render.status, 0
    if args.command == "bench":
        return _bench(args)
    if args.command == "telemetry":
        return _tail(args)
    if args.command == "follow":
        return _follow(args, url)
    raise AssertionError(args.command)  # pragma: no cover - argparse guarantees a known command


def _one_or_all(args: argparse.Namespace) -> None:
    if getattr(args, "all_runs", False) and args.run is not None:
        _Parser(prog=f"kasmina {args.command}").error("--run and --all-runs: give one or the other")


def _show_blueprints(out: Any, data: dict[str, Any]) -> None:
    from kasmina.cli import render

    def parameters(bounds: dict[str, dict[str, Any]]) -> str:
        return ", ".join(f"{name} {b['low']:g}..{b['high']:g}" + (" (int)" if b["integer"] else "")
                         for name, b in bounds.items())

    rows = [[b["id"] + (" (fallback)" if b["fallback"] else ""), b["version"], ", ".join(b["kinds"]) or "any",
             parameters(b["parameters"]), b["default_blend"] or "default", b["checksum"][:16], b["description"]]
            for b in data["blueprints"]]
    out.print(render._table("blueprints", ["id", "version", "site kinds", "parameters", "blend", "sha256",
                                           "description"], rows))


def _demo(args: argparse.Namespace, url: str) -> tuple[dict[str, Any], Callable[..., None], int]:
    """The main job; progress and stage changes go to stderr, the summary to stdout."""
    from kasmina.demo import DemoOptions, run
    from kasmina.demo.run import render as render_demo

    chosen = {"task": args.task, "steps": args.steps, "rng": args.rng, "host_steps": args.host_steps,
              "width": args.width, "context": args.context}
    given = frozenset(k for k, v in chosen.items() if v is not None)
    if args.context is not None and args.task != "text" and not (args.resume and args.task is None):
        _Parser(prog="kasmina demo").error("--context is an option of --task text")
    options = DemoOptions(db=url, run=args.run, device=args.device, plot=args.plot, resume=args.resume,
                          checkpoints=args.checkpoints, checkpoint_every=args.checkpoint_every,
                          **{k: v for k, v in chosen.items() if v is not None})
    if args.plot is not None and not args.plot.lower().endswith(".png"):
        _Parser(prog="kasmina demo").error(f"--plot {args.plot}: give a file name ending in .png")
    if args.quiet:
        report = run(options, given=given)
    else:
        from rich.console import Console

        err = Console(stderr=True)
        if err.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bar = Progress(BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"),
                           console=err, transient=True)
            task = bar.add_task("starting", total=None)
            with bar:
                report = run(options, given=given, say=lambda line: bar.console.print(line, highlight=False),
                             progress=lambda done, total, text: bar.update(task, completed=done, total=total,
                                                                             description=text))
        else:
            report = run(options, given=given, say=lambda line: print(line, file=sys.stderr, flush=True))

    def show(out: Any, data: dict[str, Any]) -> None:
        out.print(render_demo(report), markup=False, highlight=False, soft_wrap=True)

    return report.to_dict(), show, 0


def _follow(args: argparse.Namespace, url: str) -> tuple[dict[str, Any], Callable[..., None], int]:
    """A line (or a JSON object) per transition or refusal as it arrives; the lag at the end."""
    from kasmina.events import open_store
    from kasmina.events.runs import resolve
    from kasmina.follow import Follower, RunsFollower
    from kasmina.lifecycle import events as ev

    every = args.all_runs
    if every and args.until_position is not None:
        _Parser(prog="kasmina follow").error("--until-position is a position in one run: not with --all-runs")
    with (open_store(url, bind_run=False) if every else open_store(url, run=resolve(args.run))) as store:
        follower: Follower | RunsFollower = (
            RunsFollower(store, interval_s=args.interval, from_start=args.from_start) if every
            else Follower(store, interval_s=args.interval, from_start=args.from_start))
        for batch in follower.follow(until_position=args.until_position, idle_timeout_s=args.idle_timeout):
            for item in batch:
                run, e = (item.run, item.event) if every else (store.run, item)
                if e.type not in (ev.STAGE_CHANGED, ev.COMMAND_REFUSED, ev.GATE_FAILED):
                    continue
                line = {"run": run, "position": e.position, "seed": e.stream_id, "type": e.type,
                        "step": e.data.get("step"), "from": e.data.get("from_stage"), "to": e.data.get("to_stage"),
                        "reason": e.data.get("reason")}
                if args.json:
                    print(json.dumps(line), flush=True)
                else:
                    move = f"{line['from']} -> {line['to']}" if line["to"] else e.type
                    where = f"{run:<16} " if every else ""
                    print(f"{where}{e.position:>8} {e.stream_id:<24} {move:<28} {line['reason'] or ''}", flush=True)
        if every:
            assert isinstance(follower, RunsFollower)
            summary = {**follower.lag.to_dict(), "runs": {run: {"seeds": len(ledger.seeds), "position": ledger.position,
                                                               "digest": follower.digests[run]}
                                                         for run, ledger in sorted(follower.ledgers.items())}}
        else:
            assert isinstance(follower, Follower)
            summary = {"run": store.run, **follower.lag.to_dict(), "seeds": len(follower.seeds),
                       "digest": follower.digest}
    printed = args.json
    if printed:
        print(json.dumps(summary), flush=True)
        args.json = False  # already printed

    def show(out: Any, data: dict[str, Any]) -> None:
        if "runs" in data:
            out.print(f"followed {data['applied']} events of {len(data['runs'])} runs; lag last {data['lag_last_ms']} "
                      f"ms, max {data['lag_max_ms']} ms, mean {data['lag_mean_ms']} ms", markup=False,
                      highlight=False, soft_wrap=True)
            return
        out.print(f"followed {data['applied']} events to position {data['position']} (head {data['head']}); "
                  f"lag last {data['lag_last_ms']} ms, max {data['lag_max_ms']} ms, mean {data['lag_mean_ms']} ms; "
                  f"digest {data['digest'][:16]}", markup=False, highlight=False, soft_wrap=True)

    return summary, (lambda out, data: None) if printed else show, 0


def _tail(args: argparse.Namespace) -> tuple[dict[str, Any], Callable[..., None], int]:
    """Streams as it goes (a line, or a JSON object, per packet); returns a count at the end."""
    import os

    from kasmina.telemetry.tail import tail

    url = args.redis or os.environ.get("KASMINA_REDIS") or "redis://127.0.0.1:6379/0"
    streams = {"normal": [args.normal_stream], "emergency": [args.emergency_stream],
               "both": [args.normal_stream, args.emergency_stream]}[args.stream]
    seen = 0
    for packet in tail(url, streams, count=args.count, from_start=args.from_start,
                       idle_timeout_s=args.idle_timeout):
        seen += 1
        if args.json:
            print(json.dumps(packet), flush=True)
        else:
            events = ", ".join(f"{e['type']}({e.get('reason') or e.get('to_stage') or ''})" for e in packet["events"])
            print(f"{packet['stream']} {packet['priority']:<8} {packet['packet_id']} step={packet['step']} "
                  f"events=[{events}] metrics={len(packet['metrics'])}", flush=True)
    args.json = False  # already printed
    return {"packets": seen}, lambda out, data: None, 0


def _bench(args: argparse.Namespace) -> tuple[dict[str, Any], Callable[..., None], int]:
    if not args.store:  # the harness of tools/bench_kasmina.py (kasmina/bench/kasmina.py)
        from kasmina.bench import kasmina as harness

        settings = bench_flags.options(args)
        try:
            harness.check(**settings)
        except ValueError as e:  # a bad --shape, --alpha-c, --gate-k...: a usage error, as argparse's own
            _Parser(prog="kasmina bench").error(str(e))
        measured = harness.run(**settings)

        def show_harness(out: Any, data: dict[str, Any]) -> None:
            out.print(harness.render(data), markup=False, highlight=False, soft_wrap=True)
            out.print(harness.summary_line(data), markup=False, highlight=False, soft_wrap=True)

        return measured, show_harness, 0
    from kasmina.bench import store as bench_store

    options: dict[str, Any] = {"backends": tuple(b.strip() for b in args.backends.split(",") if b.strip())}
    if args.events:
        options["events"] = args.events
    if args.long_seed:
        options["long_seed"] = args.long_seed
    if args.pg_url:
        options["pg_url"] = args.pg_url
    result = bench_store.run(**options)

    def show(out: Any, data: dict[str, Any]) -> None:
        out.print(bench_store.render(data))
        out.print(bench_store.summary_line(data))

    return result, show, 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        data, show, code = _dispatch(args)
    except KasminaError as e:
        if args.traceback:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        from rich.console import Console

        # Not a terminal (a pipe, a CI log): wide enough that tables do not fold.
        show(Console(width=None if sys.stdout.isatty() else 200), data)
    return code


def run() -> NoReturn:
    sys.exit(main())
