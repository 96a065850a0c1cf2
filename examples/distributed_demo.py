"""The demo on several ranks: ``torch.distributed`` (gloo on CPU) around one shared log.

    python examples/distributed_demo.py --db postgresql://postgres@127.0.0.1:5432/kasmina \\
        --world-size 2 --steps 96 --host-steps 150

Every rank holds a replica of the demo's host network, sees its own shard of each batch and
all-reduces the gradients of every parameter (seeds included), so the replicas stay equal.
Rank 0 holds the leader executor and runs the scripted controller; the other ranks hold
follower executors that take every decision from the log (:mod:`kasmina.distributed`).

With ``--trace DIR`` each rank writes ``rank<N>.json``: per step, the log position it
reached, every seed's stage, alpha, blend configuration and a digest of the replayed
states, and at the end a checksum of its model. ``tests/test_distributed.py`` runs this
script and compares the ranks' traces step by step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _average_gradients(model: torch.nn.Module, world: int) -> None:
    """All parameters, seeds included (DDP would miss those grafted after it wrapped the model)."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def _checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _worker(rank: int, args: argparse.Namespace, port: int, secret: bytes) -> None:
    from kasmina.demo import DemoOptions
    from kasmina.demo.controller import ScriptedController
    from kasmina.demo.digits import TASK, data, model
    from kasmina.distributed import LogSync, role
    from kasmina.executor import Executor
    from kasmina.executor.measure import MetricPolicy
    from kasmina.lifecycle.state import digest
    from kasmina.events import migrate

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.world_size, timeout=timedelta(seconds=120))
    torch.set_num_threads(1)
    try:
        digits = data.load()
        torch.manual_seed(args.rng)
        host = model.DigitsNet()
        for p in host.parameters():  # every replica starts from rank 0's weights
            dist.broadcast(p.data, src=0)
        optimizer = torch.optim.AdamW(host.parameters(), lr=5e-3, weight_decay=0.01)

        def train_step(step: int) -> torch.Tensor:
            x, y = digits.batch(args.rng, step, 64 * args.world_size)
            x, y = x[rank::args.world_size], y[rank::args.world_size]  # this rank's shard
            loss = F.cross_entropy(host(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _average_gradients(host, args.world_size)
            optimizer.step()
            return loss.detach()

        for step in range(args.host_steps):
            train_step(step)
        if rank == 0:
            migrate.open_log(args.db).close()  # create a new SQLite log once, before anyone reads it
        dist.barrier()
        ex = Executor(host, model.SITES, db=args.db, secret=secret, catalogue=model.catalogue(),
                      optimizer=optimizer, run_seed=args.rng, role=role(),
                      metric=MetricPolicy(name="val_acc", higher_is_better=True, tolerance=0.02))
        sync = LogSync(ex)
        options = DemoOptions(steps=args.steps, host_steps=args.host_steps, rng=args.rng).resolved(TASK)
        controller = ScriptedController(TASK.plan(options), secret, stages=TASK.stages(options), rng=args.rng)
        trace: list[dict[str, Any]] = []
        try:
            while ex.step_count < args.steps:
                planned = [cmd for _, cmd in controller.commands(ex)] if rank == 0 else None
                sync.handle(planned)
                loss = train_step(args.host_steps + ex.step_count)
                with torch.inference_mode():
                    accuracy = (host(digits.x_val).argmax(1) == digits.y_val).float().mean()
                dist.all_reduce(accuracy)  # the metric the leader's gates judge: the same on every rank
                sync.step({"val_acc": float(accuracy) / args.world_size, "loss": loss})
                trace.append({"step": ex.step_count, "position": sync.position,
                              "digest": digest(ex.ledger.seeds.values()),
                              "seeds": [{"seed_id": v.seed_id, "stage": v.stage, "alpha": v.alpha,
                                         "generation": v.generation, "blend": ex.state(v.seed_id).blend}
                                        for v in ex.seeds()]})
        finally:
            ex.close()
        result = {"rank": rank, "role": "leader" if ex.leader else "follower", "trace": trace,
                  "model_sha256": _checksum(host),
                  "final": {v.seed_id: [v.stage, v.generation] for v in ex.seeds()}}
        if args.trace:
            Path(args.trace, f"rank{rank}.json").write_text(json.dumps(result))
        if rank == 0:
            print(json.dumps({"final": result["final"], "steps": ex.step_count, "position": sync.position}))
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="the shared log (PostgreSQL, or a SQLite file on one machine)")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=96)
    parser.add_argument("--host-steps", type=int, default=150)
    parser.add_argument("--rng", type=int, default=0)
    parser.add_argument("--trace", metavar="DIR", default=None, help="write each rank's per-step trace here")
    args = parser.parse_args(argv)
    if args.world_size < 1 or args.steps < 1 or args.host_steps < 0:
        parser.error("--world-size and --steps must be >= 1, --host-steps >= 0")
    # One secret for the run, shared by the controller (rank 0) and every executor.
    mp.spawn(_worker, args=(args, _free_port(), secrets.token_bytes(32)), nprocs=args.world_size, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
