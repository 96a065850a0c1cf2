"""Model checkpoints that the event log vouches for (SPEC §13: resume that really resumes).

A checkpoint is one ``torch.save`` file holding the host's weights, each attached seed's
weights keyed by ``(seed_id, generation)``, the optimizer state keyed by seed id (never by
parameter position, which changes when seeds come and go) and whatever the training loop
adds (``extra``). It is written atomically (temporary file, fsync, rename, fsync of the
folder) under a name no later checkpoint reuses, and only then referenced by a
``checkpoint_saved`` event carrying its SHA-256. A crash at any moment therefore leaves
either the previous referenced checkpoint or the new one, never a half-written file that
the log points to.

Restoring happens after the executor has replayed the log and rebuilt every seed from its
own generator: weights are loaded into seeds whose generation matches the checkpoint;
a seed grafted after the checkpoint keeps its deterministic initial weights.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import torch
from torch import nn

from kasmina.errors import KasminaError
from kasmina.executor import optim
from kasmina.events import EventStore
from kasmina.lifecycle import events as ev

if TYPE_CHECKING:
    from kasmina.executor.executor import Executor

FORMAT = 1
#: Optimizer groups without a ``kasmina_seed`` key belong to the host, keyed by their order.
_HOST_GROUP = "host:{}"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint the log refers to."""

    path: Path
    sha256: str
    step: int
    position: int = 0


@dataclass(slots=True)
class Restored:
    """What :func:`restore` loaded, and what it could not."""

    checkpoint: Checkpoint
    extra: dict[str, Any]
    seeds_loaded: list[str] = field(default_factory=list)
    seeds_fresh: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomically(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself must survive a power cut
    finally:
        os.close(folder)


def _group_key(group: Mapping[str, Any], host_index: int) -> str:
    seed = group.get("kasmina_seed")
    return f"seed:{seed}" if seed is not None else _HOST_GROUP.format(host_index)


def _keyed_groups(optimizer: torch.optim.Optimizer) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """``(key, index, group)`` for every param group, keyed by seed id or host order."""
    host = 0
    for index, group in enumerate(optimizer.param_groups):
        yield _group_key(group, host), index, group
        host += "kasmina_seed" not in group


def _optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state re-keyed: group key -> hyperparameters and per-parameter state."""
    packed = optimizer.state_dict()
    out: dict[str, Any] = {}
    for key, index, _ in _keyed_groups(optimizer):
        group = packed["param_groups"][index]
        out[key] = {"hyper": {k: v for k, v in group.items() if k != "params"},
                    "state": [packed["state"].get(i) for i in group["params"]]}
    return out


def _load_optimizer_state(optimizer: torch.optim.Optimizer, saved: Mapping[str, Any],
                          fresh: set[str]) -> list[str]:
    """Put saved state back into the groups that still exist; returns the keys not restored.

    A group is restored only when it is in the checkpoint, its seed is the same generation
    (not in ``fresh``) and it holds as many parameters; the others start afresh.
    """
    packed = optimizer.state_dict()
    skipped: list[str] = []
    for key, index, _ in _keyed_groups(optimizer):
        entry = saved.get(key)
        group = packed["param_groups"][index]
        if entry is None or key in fresh or len(entry["state"]) != len(group["params"]):
            skipped.append(key)
            continue
        group.update({k: v for k, v in entry["hyper"].items() if k not in ("params", "kasmina_seed")})
        for pid, state in zip(group["params"], entry["state"]):
            if state is None:
                packed["state"].pop(pid, None)
            else:
                packed["state"][pid] = state
    optimizer.load_state_dict(packed)
    return skipped


def _is_seed_key(key: str, sites: Iterable[str]) -> bool:
    return any(key.startswith(f"{site}.seed.") for site in sites)


def _host_state(model: nn.Module, sites: Iterable[str]) -> dict[str, torch.Tensor]:
    """The model's state without any seed: what the host itself has learnt."""
    return {k: v for k, v in model.state_dict().items() if not _is_seed_key(k, sites)}


def save(executor: Executor, directory: str | Path, *, extra: Mapping[str, Any] | None = None,
         keep: int = 2) -> Checkpoint:
    """Write a checkpoint of ``executor``'s model at its current step and record it in the log."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    folder = Path(directory).resolve()
    step = executor.step_count
    seeds = {}
    for name, site in executor.sites.items():
        if site.seed is not None:
            state = executor.state(name)
            seeds[name] = {"generation": state.generation, "weights": site.seed.state_dict()}
    blob = {"format": FORMAT, "step": step, "host": _host_state(executor.model, executor.sites), "seeds": seeds,
            "optimizer": _optimizer_state(executor.optimizer) if executor.optimizer is not None else None,
            "monitors": monitor_state(executor), "metrics": {k: float(v) for k, v in executor._metrics.items()},
            "extra": dict(extra or {})}
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    # Unique even for two checkpoints of one step (or two runs sharing a folder): a file the
    # log already vouches for is never overwritten.
    path = folder / f"step-{step:09d}-{secrets.token_hex(4)}.pt"
    _write_atomically(path, buffer.getvalue())
    sha = _sha256(path)
    outcome = executor.ledger.note(ev.EXECUTOR_STREAM, [ev.Event(ev.CHECKPOINT_SAVED, {
        "path": str(path), "sha256": sha, "step": step, "bytes": path.stat().st_size})])
    _prune(folder, history(executor.store), keep, current=path)
    position = outcome.events[0].position if outcome.events else 0
    return Checkpoint(path, sha, step, position)


def _prune(folder: Path, referenced: list[Checkpoint], keep: int, *, current: Path) -> None:
    """Delete older files only once the new one is on record, and only files this log names
    (another run's files in a shared folder are not ours to delete): the newest ``keep``
    stay. Temporaries of earlier steps, left by a writer killed mid-write, go too."""
    kept = {c.path for c in referenced[-keep:]} | {current}
    for old in {c.path for c in referenced} - kept:
        if old.parent == folder:
            old.unlink(missing_ok=True)
    step = _step_of(current.name)
    for partial in folder.glob(".step-*.tmp"):
        if _step_of(partial.name.lstrip(".")) < step:
            partial.unlink(missing_ok=True)


def _step_of(name: str) -> int:
    """The step in a checkpoint file name (``step-000000123-....pt``); -1 if it has none."""
    digits = name[len("step-"):len("step-") + 9]
    return int(digits) if digits.isdigit() else -1


def history(store: EventStore) -> list[Checkpoint]:
    """Every checkpoint the log refers to, oldest first."""
    return [Checkpoint(Path(e.data["path"]), str(e.data["sha256"]), int(e.data["step"]), e.position)
            for e in store.read(stream_id=ev.EXECUTOR_STREAM) if e.type == ev.CHECKPOINT_SAVED]


def latest(store: EventStore) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint whose file exists and matches its recorded checksum.

    Returns it (or ``None``) and a line for each newer one that had to be passed over.
    """
    problems: list[str] = []
    for checkpoint in reversed(history(store)):
        if not checkpoint.path.is_file():
            problems.append(f"checkpoint of step {checkpoint.step} is missing: {checkpoint.path}")
        elif _sha256(checkpoint.path) != checkpoint.sha256:
            problems.append(f"checkpoint of step {checkpoint.step} does not match its checksum: {checkpoint.path}")
        else:
            return checkpoint, problems
    return None, problems


def restore(executor: Executor, checkpoint: Checkpoint) -> Restored:
    """Load ``checkpoint`` into an executor that has already replayed its log."""
    if _sha256(checkpoint.path) != checkpoint.sha256:
        raise KasminaError(f"checkpoint {checkpoint.path} does not match the checksum in the log")
    blob = torch.load(checkpoint.path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise KasminaError(f"{checkpoint.path} is not a Kasmina checkpoint (format {FORMAT})")
    missing, unexpected = executor.model.load_state_dict(blob["host"], strict=False)
    missing = [k for k in missing if not _is_seed_key(k, executor.sites)]
    if missing or unexpected:
        raise KasminaError(f"checkpoint {checkpoint.path} does not fit the model: "
                           f"missing {missing[:3]}, unexpected {list(unexpected)[:3]}")
    result = Restored(checkpoint, dict(blob.get("extra") or {}))
    fresh: set[str] = set()
    for name, site in executor.sites.items():
        if site.seed is None:
            continue
        saved = blob["seeds"].get(name)
        if saved is not None and saved["generation"] == executor.state(name).generation:
            site.seed.load_state_dict(saved["weights"])
            result.seeds_loaded.append(name)
        else:
            # Grafted after the checkpoint: rebuilt from its own generator, as it began.
            fresh.add(f"seed:{name}")
            result.seeds_fresh.append(name)
    if executor.optimizer is not None and blob.get("optimizer") is not None:
        result.skipped = _load_optimizer_state(executor.optimizer, blob["optimizer"], fresh)
        optim.rebind_host_groups(executor.optimizer, executor._host_groups,
                                 {name: site.base_layer for name, site in executor.sites.items()})
    # The gates' windows: a G2 whose window spans the checkpoint reads what the run had seen
    # (checkpoints written before these were kept have neither: the windows start empty).
    load_monitor_state(executor, blob.get("monitors") or {})
    executor._metrics.update(blob.get("metrics") or {})
    return result


def monitor_state(executor: Executor) -> dict[str, torch.Tensor]:
    """Each live seed's isolation-monitor window (its summed squared gradients so far)."""
    return {name: runtime.monitor.grad_sq.detach().cpu().clone() for name, runtime in executor._runtime.items()
            if runtime.monitor is not None}


def load_monitor_state(executor: Executor, saved: Mapping[str, torch.Tensor]) -> None:
    for name, value in saved.items():
        runtime = executor._runtime.get(name)
        if runtime is not None and runtime.monitor is not None:
            runtime.monitor.grad_sq.copy_(value)
