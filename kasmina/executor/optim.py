"""A seed's optimizer group: the hyperparameters of the group that holds its host layer.

A seed added with the optimizer's defaults would train at a learning rate nobody chose: the
user tuned the group its site's layer lives in (often a lower rate for a backbone, no weight
decay for norms). So the seed's group starts as a copy of that group, and follows it every
step: whatever a ``torch.optim.lr_scheduler`` (or the user) writes into the host group's
``lr``, ``momentum`` or ``betas``, the seed's group takes at the next ``Executor.step()``.
Copying floats between two dicts costs no device work and no sync.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

__all__ = ["SEED_KEY", "host_group", "add_seed_group", "follow_host_groups"]

#: Marks a group as a seed's (its value is the seed id); checkpoints key groups by it.
SEED_KEY = "kasmina_seed"
#: Keys of a group that are not hyperparameters to copy.
_NOT_COPIED = frozenset({"params", SEED_KEY})


def host_group(optimizer: torch.optim.Optimizer, layer: nn.Module) -> dict[str, Any] | None:
    """The host group holding ``layer``'s first parameter (None: the layer is not optimised)."""
    ids = {id(p) for p in layer.parameters()}
    for group in optimizer.param_groups:
        if SEED_KEY not in group and any(id(p) in ids for p in group["params"]):
            return group
    return None


def add_seed_group(optimizer: torch.optim.Optimizer, seed_id: str, params: Iterable[Tensor],
                   layer: nn.Module) -> dict[str, Any] | None:
    """Add the seed's parameters in a group copying the host layer's group; returns the host group."""
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    # Parameters the optimizer already holds (a seed sharing host weights: an isolation
    # violation, recorded elsewhere) are not added twice.
    fresh = [p for p in params if p.requires_grad and id(p) not in known]
    source = host_group(optimizer, layer)
    if not fresh:
        return source
    hyper = {k: v for k, v in source.items() if k not in _NOT_COPIED} if source is not None else {}
    optimizer.add_param_group({**hyper, "params": fresh, SEED_KEY: seed_id})
    return source


def follow_host_groups(optimizer: torch.optim.Optimizer, sources: dict[str, dict[str, Any]]) -> None:
    """Copy each host group's current hyperparameters into its seed's group (after a scheduler step)."""
    for group in optimizer.param_groups:
        source = sources.get(group.get(SEED_KEY))  # type: ignore[arg-type]
        if source is not None:
            for key, value in source.items():
                if key not in _NOT_COPIED:
                    group[key] = value
