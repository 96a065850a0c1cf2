#!/usr/bin/env python
"""Executor benchmark: step overhead vs a hand-wired seed, handle() latency, HMAC verify,
probe memory (kasmina/bench/executor.py); with ``--model resnet18`` / ``--model gpt2-tiny``
(repeatable), the step overhead with seeds blending at four sites of that architecture and
the counterfactual's cost per gate (kasmina/bench/architectures.py). Prints summary lines
fit for CI logs, or one JSON object."""

from __future__ import annotations

import argparse
import json

from kasmina.bench import executor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--model", action="append", choices=("resnet18", "gpt2-tiny"), default=None,
                        help="measure this architecture instead of the small CNN (repeatable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.model:
        from kasmina.bench import architectures

        results = architectures.run(args.model, device=args.device, repeats=args.repeats)
        print(json.dumps(results, indent=2) if args.json else "\n".join(map(architectures.summary_line, results)))
        return
    result = executor.run(device=args.device, repeats=args.repeats)
    print(json.dumps(result, indent=2) if args.json else executor.summary_line(result))


if __name__ == "__main__":
    main()
