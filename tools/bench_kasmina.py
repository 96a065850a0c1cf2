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

from kasmina.bench import kasmina as bench  # noqa: E402


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--isolation", choices=("on", "off"), default="on",
                        help="measure the training step with isolation hooks on and off (on), or off only")
    parser.add_argument("--blend-mode", choices=("convex", "residual", "channel", "confidence", "all"),
                        default="all", help="blend mode to measure; CONVEX is always measured as the reference")
    parser.add_argument("--alpha-c", default=None, metavar="VEC",
                        help="CHANNEL weights, CSV or JSON list, one per channel or one for all (default 0.5)")
    parser.add_argument("--gate-k", type=float, default=4.0, help="CONFIDENCE gate slope (default %(default)s)")
    parser.add_argument("--gate-tau", type=float, default=0.2, help="CONFIDENCE gate threshold (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    parser.add_argument("--dtype", choices=tuple(bench.DTYPES), default="float32")
    parser.add_argument("--shape", default=",".join(map(str, bench.DEFAULT_SHAPE)),
                        help="activation shape N,C,... (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=50, help="timed repeats per figure (default %(default)s)")
    parser.add_argument("--store", action="store_true", help="also run the event-store benchmark (sqlite)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    options = dict(isolation=args.isolation, blend_mode=args.blend_mode, alpha_c=args.alpha_c, gate_k=args.gate_k,
                   gate_tau=args.gate_tau, device=args.device, dtype=args.dtype, shape=args.shape,
                   repeats=args.repeats)
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
