#!/usr/bin/env python
"""Executor benchmark: step overhead vs a hand-wired seed, handle() latency, HMAC verify,
probe memory. See kasmina/bench/executor.py; prints a summary line fit for CI logs."""

from __future__ import annotations

import argparse
import json

from kasmina.bench import executor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = executor.run(device=args.device, repeats=args.repeats)
    print(json.dumps(result, indent=2) if args.json else executor.summary_line(result))


if __name__ == "__main__":
    main()
