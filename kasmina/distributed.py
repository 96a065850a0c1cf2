"""Several ranks of a ``torch.distributed`` job, one shared log, one set of decisions.

Rank 0 holds the *leader* executor: it handles every command, measures the gates on its
replica and appends the events. Every other rank holds a *follower* executor around its own
replica: it never writes, and after each command and each step it catches up to exactly
the log position rank 0 reached (broadcast as one int64), folding the same events through
the same ``evolve``. So every rank has the same stages, alpha and blend configuration at
every step, each event is stored once, and no rank proceeds on a decision the others have
not taken (the deadlocks and divergence on Esper's own bug list came from ranks deciding
separately).

If a follower cannot read the log, all ranks learn it through an all-reduce and raise
together: a rank never carries on alone with a state the others may not share.

What stays the training loop's job, as with any ``torch.distributed`` model: keeping the
replicas equal (all-reduce the gradients of *every* parameter, seeds included: parameters
grafted after ``DistributedDataParallel`` wrapped the model are not in its reducer) and
giving rank 0 the metric the gates should judge (all-reduce it first).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from kasmina.errors import KasminaError, StoreError

if TYPE_CHECKING:
    from kasmina import leyline
    from kasmina.executor import Executor, Result

#: How often a follower retries reading the log before every rank gives up together.
READ_ATTEMPTS = 5


def role(group: Any = None) -> str:
    """``"leader"`` on rank 0 of ``group``, else ``"follower"``: pass it to ``Executor(role=...)``."""
    return "leader" if dist.get_rank(group) == 0 else "follower"


class LogSync:
    """Keeps the executors of every rank on the log position rank 0 reached."""

    def __init__(self, executor: Executor, group: Any = None) -> None:
        if not dist.is_initialized():
            raise KasminaError("LogSync needs torch.distributed to be initialised (init_process_group)")
        self.executor = executor
        self.group = group
        self.rank = dist.get_rank(group)
        if executor.leader != (self.rank == 0):
            raise KasminaError(f"rank {self.rank} holds a {'leader' if executor.leader else 'follower'} executor; "
                               "rank 0 must lead and every other rank follow (kasmina.distributed.role())")
        #: Positions each follower caught up to, for the training loop to report or check.
        self.position = executor.ledger.position
        #: Global rank of the group's rank 0 (broadcast's ``src`` is a global rank).
        self.leader_rank = dist.get_global_rank(group, 0) if group is not None else 0
        #: NCCL takes only CUDA tensors; gloo and the others take CPU ones.
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if dist.get_backend(group) == "nccl" else torch.device("cpu"))

    def handle(self, commands: Sequence[leyline.AdaptationCommand | bytes] | None) -> list[Result]:
        """Rank 0 handles ``commands`` (the other ranks pass ``None``); then every rank follows.

        Every rank must call this at the same point of the loop (it is a collective), even
        when rank 0 has nothing to send. Returns the results on rank 0, ``[]`` elsewhere.
        """
        results = [self.executor.handle(c) for c in commands or ()] if self.rank == 0 else []
        self._follow()
        return results

    def step(self, metrics: Mapping[str, float | Tensor] | None = None) -> list[int]:
        """``Executor.step`` on every rank; the followers then take rank 0's decisions."""
        positions = self.executor.step(metrics)
        self._follow()
        return positions

    def _follow(self) -> None:
        ledger = self.executor.ledger
        mine = max(ledger.position, ledger.written) if self.rank == 0 else 0
        position = torch.tensor([mine], dtype=torch.int64, device=self.device)
        dist.broadcast(position, src=self.leader_rank, group=self.group)
        target = int(position.item())
        ok = torch.ones(1, dtype=torch.int64, device=self.device)
        problem = ""
        if self.rank != 0:
            for attempt in range(READ_ATTEMPTS):
                try:
                    self.executor.sync(target)
                    break
                except StoreError as e:
                    problem = str(e)
                    time.sleep(0.05 * 2 ** attempt)
            else:
                ok.zero_()
        dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=self.group)
        if not int(ok.item()):
            raise KasminaError(f"rank {self.rank}: a follower could not read the log up to position {target}; "
                               f"every rank stops together{': ' + problem if problem else ''}")
        if self.rank != 0 and self.executor.ledger.position != target:
            raise KasminaError(f"rank {self.rank} reached position {self.executor.ledger.position}, not {target}")
        self.position = target
