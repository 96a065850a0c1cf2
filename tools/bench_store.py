#!/usr/bin/env python
"""Benchmark the event store: appends (one command per transaction, batched), replay, a long
seed's replay behind a snapshot and a full replay's memory, on SQLite and Postgres, against
the eventsourcing library's SQLite recorder (the peer) and bare sqlite3 (the physical limit).

    python tools/bench_store.py                      # default sizes, about a minute or two
    python tools/bench_store.py --long-seed 1000000  # the size the long-seed goals are set for
    python tools/bench_store.py --backends sqlite --json > bench.json

Goals are printed PASS/MISS; the exit status is 0 whatever they say (1 only on a crash).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kasmina.bench import store  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(store.BACKENDS),
                        help="comma-separated Kasmina backends to measure (default: %(default)s)")
    parser.add_argument("--events", type=int, default=store.DEFAULT_EVENTS,
                        help="events each contender writes and replays (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=store.DEFAULT_BATCH,
                        help="events per batched transaction (default: %(default)s)")
    parser.add_argument("--single", type=int, default=None,
                        help="single-event transactions per timed round (default: events/40, 50..500)")
    parser.add_argument("--long-seed", type=int, default=store.DEFAULT_LONG_SEED,
                        help=f"events in the long seed's history (default: %(default)s; "
                             f"the goals are set for {store.GOAL_LONG_SEED})")
    parser.add_argument("--pg-url", default=None,
                        help="Postgres server URL whose user may create databases "
                             f"(default: $KASMINA_BENCH_PG or {store.DEFAULT_PG_URL})")
    parser.add_argument("--workdir", default=None, help="folder for the temporary SQLite files")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())

    def progress(message: str) -> None:
        print(f"  .. {message}", file=sys.stderr, flush=True)

    try:
        result = store.run(backends=backends, events=args.events, batch=args.batch, long_seed=args.long_seed,
                           pg_url=args.pg_url, workdir=args.workdir, single=args.single,
                           progress=None if args.quiet else progress)
    except ValueError as e:
        parser.error(str(e))
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        print(store.render(result))
        print()
        print(store.summary_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
