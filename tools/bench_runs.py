#!/usr/bin/env python
"""Benchmark N concurrent runs appending durably to one PostgreSQL log: aggregate appends/s,
p50/p99 append latency, the lag of a follower of every run, and a check that nothing was lost
or written twice and that every run verifies (kasmina/bench/runs.py).

    python tools/bench_runs.py                          # 1, 4 and 16 runs, 5 s each, private database
    python tools/bench_runs.py --runs 1,4,16,64 --json  # the 64-run latency goal too
    python tools/bench_runs.py --appends 200 --pg-url postgresql://user@host/db

Goals are printed PASS/MISS; the exit status is 0 whatever they say (1 only on a crash).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kasmina.bench import runs  # noqa: E402


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated run counts, got {text!r}") from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"run counts must be positive, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=_counts, default=list(runs.DEFAULT_RUNS),
                        help="comma-separated numbers of concurrent runs (default: %(default)s)")
    parser.add_argument("--pg-url", default=None,
                        help="the log to append to (migrated if needed); default: a private database "
                             f"on $KASMINA_BENCH_PG or {runs.DEFAULT_SERVER}, dropped afterwards")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, default=None,
                        help=f"timed appending per run (default: {runs.DEFAULT_SECONDS:g})")
    budget.add_argument("--appends", type=int, default=None, help="timed appends per run instead of --seconds")
    parser.add_argument("--interval-ms", type=float, default=runs.INTERVAL_S * 1000,
                        help="follower poll interval (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)

    def progress(message: str) -> None:
        print(f"  .. {message}", file=sys.stderr, flush=True)

    try:
        result = runs.run(runs=args.runs, pg_url=args.pg_url, seconds=args.seconds, appends=args.appends,
                          interval_s=args.interval_ms / 1000, progress=None if args.quiet else progress)
    except ValueError as e:
        parser.error(str(e))
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        runs.render(result)
        print()
        print(runs.summary_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
