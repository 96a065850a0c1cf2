"""Gradient isolation (WP-K2): hooks that watch a seed while it trains, and leak probes.

Isolation is structural first: in TRAINING and BLENDING the seed's input is detached and
the host's output enters the blend detached, so no gradient can travel from the seed
branch into the host. What is left to check, and what this module checks:

* **ownership** (at attach): no seed parameter may be a host parameter; a blueprint that
  reuses the site's own weights would train the host through the back door;
* **leaks** (at gate time, off the hot path): ``autograd.grad`` of the seed's output
  with respect to every host parameter must be empty;
* **gradient health** (every step, on the device): tensor hooks on the seed's parameters
  accumulate the squared gradient norm, which becomes non-finite as soon as one gradient
  element is; it is read only when a gate falls due.

The hooks exist only in TRAINING and BLENDING; :meth:`IsolationMonitor.close` removes them
(pause, cull, stage change), and ``hook_count`` lets tests prove none is left behind.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


class IsolationMonitor:
    """Per-seed gradient hooks; every figure stays on the device until :meth:`read`."""

    def __init__(self, seed: nn.Module) -> None:
        self._params = [p for p in seed.parameters() if p.requires_grad]
        device = self._params[0].device if self._params else torch.device("cpu")
        self.grad_sq = torch.zeros((), device=device, dtype=torch.float32)
        self._handles: list[RemovableHandle] = []

    @property
    def hook_count(self) -> int:
        return len(self._handles)

    def open(self) -> IsolationMonitor:
        if not self._handles:
            self._handles = [p.register_hook(self._collect) for p in self._params]
        return self

    def _collect(self, grad: Tensor) -> None:
        # Two small kernels per parameter per backward: a norm and a fused multiply-add.
        norm = torch.linalg.vector_norm(grad.detach(), dtype=torch.float32)
        self.grad_sq.addcmul_(norm, norm)

    def read(self) -> float:
        """The seed's accumulated gradient norm (non-finite once any gradient was): the one
        host sync, at gate time."""
        return float(self.grad_sq.sqrt())

    def reset(self) -> None:
        self.grad_sq.zero_()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def shared_parameters(seed: nn.Module, host_params: Iterable[Tensor]) -> int:
    """How many of the seed's parameters are also host parameters (same storage)."""
    host = {p.data_ptr() for p in host_params if p.numel()}
    return sum(1 for p in seed.parameters() if p.numel() and p.data_ptr() in host)


def leaked_parameters(seed: nn.Module, probe_input: Tensor, host_params: list[Tensor]) -> int:
    """How many host parameters the seed's output depends on through autograd."""
    trainable = [p for p in host_params if p.requires_grad]
    if not trainable:
        return 0
    with torch.enable_grad():
        out = seed(probe_input.detach())
        if not isinstance(out, Tensor) or not out.requires_grad:
            return 0
        grads = torch.autograd.grad(out.float().sum(), trainable, allow_unused=True)
    return sum(1 for g in grads if g is not None)
