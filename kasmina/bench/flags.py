"""The harness's command-line flags, shared by ``kasmina bench`` and ``tools/bench_kasmina.py``.

Torch-free on purpose: the ``kasmina`` parser is built for every command, and the log
commands must not import torch.
"""

from __future__ import annotations

import argparse
from typing import Any

from kasmina.cli.argtypes import pos_int

DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEFAULT_SHAPE = (64, 256, 16, 16)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The harness's flags, shared by ``kasmina bench`` and ``tools/bench_kasmina.py``."""
    parser.add_argument("--isolation", choices=("on", "off"), default="on",
                        help="measure the training step with isolation hooks on and off (on), or off only")
    parser.add_argument("--blend-mode", choices=("convex", "residual", "channel", "confidence", "all"),
                        default="all", help="blend mode to measure; CONVEX is always measured as the reference")
    parser.add_argument("--alpha-c", default=None, metavar="VEC",
                        help="CHANNEL weights, CSV or JSON list, one per channel or one for all (default 0.5)")
    parser.add_argument("--gate-k", type=float, default=4.0, help="CONFIDENCE gate slope (default %(default)s)")
    parser.add_argument("--gate-tau", type=float, default=0.2, help="CONFIDENCE gate threshold (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
    parser.add_argument("--shape", default=",".join(map(str, DEFAULT_SHAPE)),
                        help="activation shape N,C,... (default %(default)s)")
    parser.add_argument("--repeats", type=pos_int, default=50, help="timed repeats per figure (default %(default)s)")


def options(args: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`run` from parsed flags."""
    return dict(isolation=args.isolation, blend_mode=args.blend_mode, alpha_c=args.alpha_c, gate_k=args.gate_k,
                gate_tau=args.gate_tau, device=args.device, dtype=args.dtype, shape=args.shape,
                repeats=args.repeats)
