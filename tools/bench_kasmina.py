#!/usr/bin/env python
"""Kasmina performance harness: blend latency per mode against the one-pass bound, isolation
hook overhead, kernel fetch latency and (with --store) event-store throughput.

    python tools/bench_kasmina.py                              # every mode, CPU, 64x256x16x16
    python tools/bench_kasmina.py --device cuda --dtype bfloat16 --json > bench.json
    python tools/bench_kasmina.py --blend-mode channel --alpha-c 0.25,0.75 --shape 8,2,32,32

Budgets are printed ok/OVER; the exit status is 0 whatever they say (2 on a bad flag).
Same code as ``kasmina bench`` (see kasmina/bench/kasmina.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kasmina.bench import flags  # noqa: E402
from kasmina.bench import kasmina as bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.add_arguments(parser)
    parser.add_argument("--store", action="store_true", help="also run the event-store benchmark (sqlite)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    options = flags.options(args)
    try:
        bench.check(**options)
    except ValueError as e:
        parser.error(str(e))
    result = bench.run(**options, store=args.store)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(bench.render(result))
        print()
        print(bench.summary_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
