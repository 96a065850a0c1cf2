"""A seed's optimizer group: the hyperparameters of the group that holds its host layer.

A seed added with the optimizer's defaults would train at a learning rate nobody chose: the
user tuned the group its site's layer lives in (often a lower rate for a backbone, no weight
decay for norms). So the seed's group starts as a copy of that group, and follows it every
step: whatever a ``torch.optim.lr_scheduler`` (or the user) writes into the host group's
``lr``, ``momentum`` or ``betas``, the seed's group takes at the next ``Executor.step()``.
Copying floats between two dicts costs no device work and no sync.

A scheduler keeps lists with one entry per group (``base_lrs``, ``lr_lambdas``, ...) and
torch (2.13) zips them with the groups strictly: a group added behind its back makes the
next ``scheduler.step()`` raise. So the schedulers given to the executor get an entry for
each seed group, a copy of its host group's, and lose it when the seed leaves.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

__all__ = ["SEED_KEY", "host_group", "add_seed_group", "remove_seed_groups", "follow_host_groups"]

#: Marks a group as a seed's (its value is the seed id); checkpoints key groups by it.
SEED_KEY = "kasmina_seed"
#: Keys of a group that are not hyperparameters to copy.
_NOT_COPIED = frozenset({"params", SEED_KEY})
#: The per-group lists torch's schedulers keep; composites hold theirs in ``_schedulers``.
_PER_GROUP = ("base_lrs", "_last_lr", "lr_lambdas", "min_lrs", "max_lrs", "base_momentums", "max_momentums")


def _every_scheduler(schedulers: Iterable[Any]) -> Iterator[Any]:
    for scheduler in schedulers:
        yield scheduler
        yield from _every_scheduler(getattr(scheduler, "_schedulers", ()))


def _per_group_lists(schedulers: Iterable[Any], groups: int) -> Iterator[list[Any]]:
    for scheduler in _every_scheduler(schedulers):
        for name in _PER_GROUP:
            values = getattr(scheduler, name, None)
            if isinstance(values, list) and len(values) == groups:
                yield values


def host_group(optimizer: torch.optim.Optimizer, layer: nn.Module) -> dict[str, Any] | None:
    """The host group holding ``layer``'s first parameter (None: the layer is not optimised)."""
    ids = {id(p) for p in layer.parameters()}
    for group in optimizer.param_groups:
        if SEED_KEY not in group and any(id(p) in ids for p in group["params"]):
            return group
    return None


def add_seed_group(optimizer: torch.optim.Optimizer, seed_id: str, params: Iterable[Tensor],
                   layer: nn.Module, schedulers: Iterable[Any] = ()) -> dict[str, Any] | None:
    """Add the seed's parameters in a group copying the host layer's group (and its entry in
    every scheduler's per-group lists); returns the host group."""
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    # Parameters the optimizer already holds (a seed sharing host weights: an isolation
    # violation, recorded elsewhere) are not added twice.
    fresh = [p for p in params if p.requires_grad and id(p) not in known]
    source = host_group(optimizer, layer)
    if not fresh:
        return source
    hyper = {k: v for k, v in source.items() if k not in _NOT_COPIED} if source is not None else {}
    before = len(optimizer.param_groups)
    like = next((i for i, g in enumerate(optimizer.param_groups) if g is source), 0)
    optimizer.add_param_group({**hyper, "params": fresh, SEED_KEY: seed_id})
    for values in list(_per_group_lists(schedulers, before)):
        values.append(values[like])
    return source


def remove_seed_groups(optimizer: torch.optim.Optimizer, seed_id: str, schedulers: Iterable[Any] = ()) -> None:
    """Drop the seed's groups, their per-parameter state and their scheduler entries."""
    schedulers = list(schedulers)
    for index in reversed([i for i, g in enumerate(optimizer.param_groups) if g.get(SEED_KEY) == seed_id]):
        for values in list(_per_group_lists(schedulers, len(optimizer.param_groups))):
            del values[index]
        group = optimizer.param_groups[index]
        ids = {id(p) for p in group["params"]}
        for p in [p for p in optimizer.state if id(p) in ids]:
            del optimizer.state[p]
        # By position: list.remove would compare groups with ==, i.e. tensors elementwise.
        del optimizer.param_groups[index]


def as_schedulers(scheduler: Any) -> list[Any]:
    """``None``, one scheduler, or a list or tuple of them, as a list."""
    return [] if scheduler is None else list(scheduler) if isinstance(scheduler, (list, tuple)) else [scheduler]


def adopt_seeds(optimizer: torch.optim.Optimizer, seeds: Mapping[str, tuple[nn.Module, nn.Module]],
                sources: dict[str, dict[str, Any]], schedulers: Iterable[Any] = ()) -> None:
    """Give seeds grafted before ``optimizer`` existed (``seeds``: id -> (seed, host layer)) a
    group of their own, out of whichever host group ``model.parameters()`` put them in."""
    owned = {g[SEED_KEY] for g in optimizer.param_groups if SEED_KEY in g}
    schedulers = list(schedulers)
    for seed_id, (seed, layer) in seeds.items():
        if seed_id in owned:
            continue
        ids = {id(p) for p in seed.parameters()}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        source = add_seed_group(optimizer, seed_id, seed.parameters(), layer, schedulers)
        if source is not None:
            sources[seed_id] = source


def rebind_host_groups(optimizer: torch.optim.Optimizer, sources: dict[str, dict[str, Any]],
                       layers: Mapping[str, nn.Module]) -> None:
    """Point each seed's source at its host layer's group again, after
    ``optimizer.load_state_dict`` replaced every group dict (else a seed follows a group the
    schedulers no longer step, and keeps its learning rate forever)."""
    for seed_id in list(sources):
        source = host_group(optimizer, layers[seed_id])
        if source is None:
            del sources[seed_id]
        else:
            sources[seed_id] = source


def follow_host_groups(optimizer: torch.optim.Optimizer, sources: dict[str, dict[str, Any]]) -> None:
    """Copy each host group's current hyperparameters into its seed's group (after a scheduler step)."""
    for group in optimizer.param_groups:
        source = sources.get(group.get(SEED_KEY))  # type: ignore[arg-type]
        if source is not None:
            for key, value in source.items():
                if key not in _NOT_COPIED:
                    group[key] = value
