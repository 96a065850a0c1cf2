"""One executor inside someone else's training loop: what the Lightning and Hugging Face
callbacks share.

A trainer owns the loop, the optimizer and the checkpoints; Kasmina owns the seeds. A
:class:`Session` sits between them and does five things:

* **build**: when the trainer hands over its model, the sites are grafted by an executor
  that follows a view of the log clipped at position 0, so no seed is attached yet. The
  trainer can then restore its own checkpoint into the host and build its optimizer over
  the host's parameters alone, exactly as in the run that wrote the checkpoint. (Or the
  user gives an executor ready-made; then resuming from a trainer checkpoint is refused.)
* **start**: once the trainer's optimizer exists (and, on resume, holds its restored
  state), the session binds it to the executor. A fresh run leads at once. A resumed run
  folds the log up to the position the checkpoint recorded, which grafts every seed the
  checkpoint knew (each in a group of its own in the optimizer), puts back their weights,
  optimizer state and the executor's runtime state, and re-executes the steps the log
  already holds past the checkpoint as a follower, folding the decisions recorded for
  them; it leads once it has caught up (docs/executor.md, "Exact resume by re-execution").
* **step**: once per optimizer step of the trainer, ``Executor.step`` with every metric
  logged so far, so the executor's step is the trainer's global step; then the
  controller's commands go to ``Executor.handle``.
* **split** every checkpoint: the trainer's own files keep the host alone (the model's
  layout with dormant sites, the optimizer's host groups), the callback's state keeps the
  seeds keyed by seed id and generation, never by position. Why: the trainer loads its
  model and optimizer state before any callback could graft a seed again, so only a
  host-only checkpoint loads into what it has just built.
* **close** what it built: the executor (its last step on record) and the run's status.

Under ``torch.distributed`` rank 0 leads and every other rank follows the log through
:class:`kasmina.distributed.LogSync`; the seeds' gradients, which ``DistributedDataParallel``
does not reduce (they are grafted after it wrapped the model), are averaged by
:meth:`Session.reduce_seed_gradients` before each optimizer step.
"""

from __future__ import annotations

import logging
from contextlib import closing, suppress
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kasmina import leyline
from kasmina.errors import KasminaError, StoreError
from kasmina.events import EventStore, LogView, migrate, open_store
from kasmina.events.runs import genesis, resolve
from kasmina.events.urls import default_url, redact
from kasmina.executor import Executor, MetricPolicy, Result
from kasmina.executor import checkpoint as checkpoints
from kasmina.executor import optim
from kasmina.executor.catchup import CatchUp
from kasmina.lifecycle import events as ev

logger = logging.getLogger("kasmina.integrations")

#: ``controller(step, executor)``: the signed commands to carry out after that step (or None).
Controller = Callable[[int, Executor], Any]
#: Version of the state a callback adds to its trainer's checkpoint.
FORMAT = 1
#: The note a leader records for each trainer checkpoint (its position is the checkpoint's).
NOTE = "trainer_checkpoint"
#: Executor arguments a callback passes on as given (the trainer provides model and optimizer).
OPTIONS = frozenset({"catalogue", "telemetry", "run_seed", "prewarm", "verifier", "probe", "loss_fn",
                     "contribution_threshold", "causal", "run_config"})
#: Scheduler per-group lists saved for a seed group (``lr_lambdas`` holds functions: the
#: entry copied from the host group when the seed is grafted again is the right one).
_SCHEDULER_LISTS = tuple(name for name in optim._PER_GROUP if name != "lr_lambdas")


def _rank() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group (``(0, 1)`` without one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class Recipe:
    """What a callback builds its executor from (the trainer adds the model and optimizer)."""

    sites: list[str]
    db: str | None
    secret: Any
    run: str | None
    metric: MetricPolicy | None
    options: dict[str, Any] = field(default_factory=dict)


class Session:
    """One executor inside one trainer's training run: built or given, started, stepped, closed."""

    def __init__(self, trainer: str, *, executor: Executor | None, controller: Controller | None,
                 sites: Sequence[str] | None, db: str | None, secret: Any, run: str | None,
                 metric: MetricPolicy | None, options: Mapping[str, Any],
                 default_metric: MetricPolicy | None = None) -> None:
        _check_arguments(executor, controller, sites, db, secret, run, metric, options)
        self.trainer = trainer
        self.controller = controller
        self.executor = executor
        #: What this session built (and so closes): nothing when the executor was given.
        self.owned = executor is None
        self.recipe = Recipe(list(sites or ()), db, secret, run, metric if metric is not None else default_metric,
                             dict(options))
        self._store: EventStore | None = None
        self._view: LogView | None = None
        self._catch_up: CatchUp | None = None
        self._sync: Any = None
        self._closed = False
        #: The prefix of the executor's model inside the trainer's (its state-dict keys).
        self.prefix = ""
        self.started = False
        #: The state a trainer checkpoint carried, restored by :meth:`start`.
        self.pending: dict[str, Any] | None = None
        #: Every metric the trainer logged, latest value each: what ``Executor.step`` gets.
        self.metrics: dict[str, float | Tensor] = {}
        #: The controller's results at the last step it issued commands.
        self.results: list[Result] = []

    @property
    def active(self) -> bool:
        """Started and not closed: its checkpoints carry the seeds apart from the host."""
        return self.started and not self._closed and self.executor is not None

    # -- building -------------------------------------------------------------------------
    def build(self, model: nn.Module) -> Executor:
        """Graft the sites into the trainer's ``model`` (or check a given executor belongs to it)."""
        if self._closed:
            raise KasminaError("this callback's run has ended; give the next training run a new callback")
        if self.executor is not None:
            if not self.owned:
                self.prefix = _prefix(model, self.executor.model)
            return self.executor
        recipe = self.recipe
        options = dict(recipe.options)
        store = _open(recipe.db if recipe.db is not None else default_url(), resolve(recipe.run),
                      options.pop("run_config", None))
        try:
            view = LogView(store, 0)
            executor = Executor(model, recipe.sites, db=view, secret=recipe.secret, role="follower",
                                metric=recipe.metric, **options)
        except ValueError as e:  # a site name the model does not have, named twice, nested
            store.close()
            raise KasminaError(f"sites: {e}") from None
        except BaseException:
            store.close()
            raise
        self._store, self._view, self.executor = store, view, executor
        return executor

    # -- starting -------------------------------------------------------------------------
    def start(self, optimizer: torch.optim.Optimizer, schedulers: Sequence[Any], step: int) -> None:
        """Bind the trainer's optimizer, then lead (fresh) or restore and catch up (resumed)."""
        ex = self._built()
        if self.started:
            raise KasminaError("the callback has started already; give each training run its own callback")
        self._bind(optimizer, list(schedulers))
        state, self.pending = self.pending, None
        if state:
            self._resume(state, step)
        else:
            self._begin(step)
        self.started = True
        logger.info("kasmina: %s at step %d, run %r%s", "resumed" if state else "started", ex.step_count,
                    ex.store.run, " (re-executing the steps the log holds past the checkpoint)"
                    if self._catch_up is not None else "")

    def _bind(self, optimizer: torch.optim.Optimizer, schedulers: list[Any]) -> None:
        ex = self._built()
        if ex.optimizer is not None and ex.optimizer is not optimizer:
            raise KasminaError("the executor given holds another optimizer than the trainer's; build it without "
                               "optimizer= and the callback binds the trainer's")
        ex.bind_optimizer(optimizer, schedulers)

    def _begin(self, step: int) -> None:
        ex = self._built()
        if self._view is None:  # given ready-made: it must stand where the trainer does
            if ex.step_count != step:
                raise KasminaError(f"the executor is at step {ex.step_count} and the trainer at step {step}; "
                                   "they must start at the same step")
            return
        assert self._store is not None
        head = self._store.head()[0]
        if head:
            raise KasminaError(f"run {self._store.run!r} of {redact(self._store.url)} already holds {head} events: "
                               "resume the trainer from its checkpoint, or give the callback another run= (or db=)")
        self._fast_forward(step)  # a trainer resumed from a checkpoint that predates the callback
        self._lead()

    def _resume(self, state: Mapping[str, Any], step: int) -> None:
        ex = self._built()
        if self._view is None or self._store is None:
            raise KasminaError("resuming from a trainer checkpoint needs the callback to build its executor (sites=, "
                               "db=, secret=, ...): one given ready-made has replayed its log past the checkpoint")
        position = _check_state(state, self._store, step, self.trainer)
        self._fast_forward(step)  # first: the seeds grafted next are attached at this step
        self._view.advance(position)
        ex.sync()  # grafts every seed the checkpoint knew, each in its own optimizer group
        restore_seeds(ex, state)
        self.metrics = {str(k): float(v) for k, v in state["metrics"].items()}
        self._catch_up = CatchUp(self._store, self._view, position)
        self._fold()  # events recorded at the checkpoint's own step, after it was taken

    def _fast_forward(self, step: int) -> None:
        """Move a follower's step counter to the trainer's (its step only moves alpha)."""
        ex = self._built()
        if ex.step_count > step:
            raise KasminaError(f"the log has reached step {ex.step_count}, past the trainer's step {step}")
        while ex.step_count < step:
            ex.step()

    def _lead(self) -> None:
        """Stop following the view: rank 0 leads, the other ranks follow it step by step."""
        ex = self._built()
        assert self._view is not None
        rank, world = _rank()
        if world > 1:
            dist.barrier()  # every rank has read the log it starts from before rank 0 writes to it
        self._view.release()
        ex.sync()
        if rank == 0:
            ex.lead()
        if world > 1:
            from kasmina.distributed import LogSync

            self._sync = LogSync(ex)

    def _fold(self) -> bool:
        """Fold the recorded decisions up to this step; lead once the log holds no more."""
        assert self._catch_up is not None
        self._catch_up.fold(self._built())
        if not self._catch_up.done(self._built()):
            return False
        self._catch_up = None
        self._lead()
        logger.info("kasmina: caught up with the log at step %d; leading again", self._built().step_count)
        return True

    # -- steps ----------------------------------------------------------------------------
    def report(self, metrics: Mapping[str, Any] | None) -> None:
        """Take the trainer's logged metrics (the next :meth:`after_step` passes them on)."""
        self.metrics.update(_scalars(metrics))

    def after_step(self, step: int, metrics: Mapping[str, Any] | None = None) -> list[Result]:
        """Once the trainer's optimizer step brought its global step to ``step``.

        A call at a step already taken (a micro-batch of gradient accumulation) only records
        the metrics. Returns the results of the controller's commands.
        """
        ex = self._started()
        self.report(metrics)
        if step <= ex.step_count:
            return []
        while ex.step_count < step:
            if self._sync is not None:
                self._sync.step(self.metrics)
            else:
                ex.step(self.metrics)
        if self._catch_up is not None:
            # Its controller already ran before the kill: what it decided is in the log.
            self._fold()
            return []
        return self._control(step)

    def _control(self, step: int) -> list[Result]:
        if self.controller is None:
            return []
        ex = self._built()
        rank, _ = _rank()
        commands = _commands(self.controller(step, ex), step) if rank == 0 else None
        if self._sync is not None:
            results = self._sync.handle(commands)
        else:
            results = [ex.handle(command) for command in commands or ()]
        for result in results:
            if not result.accepted:
                logger.info("kasmina: step %d: command refused: %s %s", step, result.reason, result.detail)
        if results:
            self.results = results
        return results

    def reduce_seed_gradients(self) -> None:
        """Average the seeds' gradients over the ranks (DDP reduces only what it wrapped)."""
        _, world = _rank()
        if world < 2 or self.executor is None:
            return
        for site in self.executor.sites.values():
            if site.seed is None:
                continue
            for p in site.seed.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(world)

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint_state(self, where: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """What a trainer checkpoint must carry for the seeds (``None`` unless :attr:`active`).

        A leader records a ``trainer_checkpoint`` note first, whose position is the
        checkpoint's; if the log cannot take it, the position folded so far serves.
        """
        if not self.active:
            return None
        ex = self._built()
        store = self._store if self._store is not None else ex.store
        position = max(ex.ledger.position, ex.ledger.written)
        if ex.leader:
            try:
                position = ex.note(NOTE, {"trainer": self.trainer, **dict(where or {})})
            except StoreError as e:
                logger.warning("kasmina: the checkpoint at step %d is not on record: %s", ex.step_count, e)
        return {"format": FORMAT, "trainer": self.trainer, "run": store.run, "position": position,
                "hash": _hash_at(store, position), "step": ex.step_count, **seed_state(ex),
                "metrics": {k: float(v) for k, v in self.metrics.items()}}

    def checkpoint_folders(self, step: int) -> list[str]:
        """Folders the log's checkpoint notes name for ``step``, newest first."""
        store = self._store
        if store is None:
            return []
        with closing(store.read(stream_id=ev.EXECUTOR_STREAM)) as events:
            notes = [e.data for e in events if e.type == ev.RUN_NOTE and e.data.get("kind") == NOTE]
        return [str(n["folder"]) for n in reversed(notes) if n.get("step") == step and "folder" in n]

    def log_events(self) -> int:
        """How many events this run's log holds (0 for a fresh run)."""
        store = self._store if self._store is not None else self._built().store
        return store.head()[0]

    def seed_keys(self, keys: Iterable[str], *, unattached: bool = False, prefix: str = "") -> list[str]:
        """The keys of a trainer's model state dict that belong to seeds (``unattached``: to
        seeds not grafted now); ``prefix`` is the model's own in the state dict."""
        sites = [f"{prefix}{self.prefix}{name}.seed." for name, site in self._built().sites.items()
                 if not unattached or site.seed is None]
        return [k for k in keys if any(k.startswith(site) for site in sites)]

    # -- closing --------------------------------------------------------------------------
    def close(self, *, crashed: bool = False) -> None:
        """Close what this session built: the executor (its step on record) and the run's status."""
        if self._closed or not self.owned or self.executor is None:
            return
        self._closed = True
        if self._catch_up is not None:
            logger.warning("kasmina: training ended at step %d, before the step the log had reached (%d)",
                           self.executor.step_count, self._catch_up.last_step)
        try:
            self.executor.close()
        finally:
            assert self._store is not None
            if _rank()[0] == 0:
                with suppress(StoreError):
                    self._store.mark_run("crashed" if crashed else "finished")
            self._store.close()

    # -- helpers --------------------------------------------------------------------------
    def _built(self) -> Executor:
        if self.executor is None:
            raise KasminaError("the callback has no executor yet: the trainer has not handed over its model")
        return self.executor

    def _started(self) -> Executor:
        if not self.started:
            raise KasminaError("the callback has not started: the trainer has not begun training")
        return self._built()


class SessionCallback:
    """What both callbacks show of their session: the executor and the controller's results."""

    session: Session

    @property
    def executor(self) -> Executor | None:
        """The executor, once the trainer has handed over the model (or the one given)."""
        return self.session.executor

    @property
    def results(self) -> list[Result]:
        """The controller's results at the last step it issued commands."""
        return self.session.results


def _check_arguments(executor: Any, controller: Any, sites: Any, db: Any, secret: Any, run: Any, metric: Any,
                     options: Mapping[str, Any]) -> None:
    """A callback's arguments, each problem in one line: an executor or a recipe, not both."""
    given = [k for k, v in {"sites": sites, "db": db, "secret": secret, "run": run, "metric": metric}.items()
             if v is not None] + sorted(options)
    if executor is not None:
        if not isinstance(executor, Executor):
            raise KasminaError(f"executor= must be a kasmina.Executor, got {type(executor).__name__}")
        if given:
            raise KasminaError(f"give the callback an executor or what to build one from, not both "
                               f"(also given: {', '.join(given)})")
    elif not sites or isinstance(sites, str):
        raise KasminaError("the callback needs sites=[...] (names of submodules of the trainer's model) "
                           "or an executor=")
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise KasminaError(f"unknown executor option {unknown[0]!r}; a callback passes on "
                           f"{', '.join(sorted(OPTIONS))} (the trainer provides the model and optimizer)")
    if db is not None and not isinstance(db, str):
        raise KasminaError(f"db= must be a database URL, got {type(db).__name__}")
    if controller is not None and not callable(controller):
        raise KasminaError(f"controller= must be callable as controller(step, executor), "
                           f"got {type(controller).__name__}")


def _open(url: str, run: str, config: Mapping[str, Any] | None) -> EventStore:
    """Rank 0 opens the run for writing (creating the log if new) and keeps its status; the
    other ranks open it to read once rank 0 has (a barrier: the schema must exist first)."""
    rank, world = _rank()
    store = None
    try:
        if rank == 0:
            store = migrate.open_log(url, run=run, config=config)
    finally:
        if world > 1:
            dist.barrier()  # even when rank 0 failed: the others then fail to open, not hang
    return store if store is not None else open_store(url, run=run, create_run=True)


def _prefix(model: nn.Module, inner: nn.Module) -> str:
    """``inner``'s name inside ``model`` with a trailing dot ('' for the model itself)."""
    for name, module in model.named_modules():
        if module is inner:
            return f"{name}." if name else ""
    raise KasminaError("the executor given was built on a model that is not (part of) the trainer's model")


def _scalars(metrics: Mapping[str, Any] | None) -> dict[str, float | Tensor]:
    """The one-number entries of a trainer's metrics: tensors stay on the device (no sync)."""
    out: dict[str, float | Tensor] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, Tensor):
            if value.numel() == 1:
                out[str(key)] = value.detach()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(key)] = float(value)
    return out


def _commands(returned: Any, step: int) -> list[Any]:
    """The controller's answer as a list of commands, or a one-line error naming what it is."""
    if returned is None:
        return []
    if isinstance(returned, (leyline.AdaptationCommand, bytes, bytearray)):
        returned = [returned]
    try:
        commands = list(returned)
    except TypeError:
        raise KasminaError(f"the controller returned a {type(returned).__name__} at step {step}; it must return "
                           "signed commands (an iterable of AdaptationCommand or their bytes) or None") from None
    for command in commands:
        if not isinstance(command, (leyline.AdaptationCommand, bytes, bytearray)):
            raise KasminaError(f"the controller returned a {type(command).__name__} at step {step}, not a command: "
                               "give it kasmina.sign(kasmina.commands.germinate(...), key) and the like")
    return commands


def _hash_at(store: EventStore, position: int) -> str:
    """The hash of the event at ``position`` (the run's genesis at 0): which log a state belongs to."""
    if position == 0:
        return genesis(store.run)
    with closing(store.read(after=position - 1, upto=position, raw=True)) as events:
        event = next(events, None)
    return event.hash if event is not None else ""


def _check_state(state: Mapping[str, Any], store: EventStore, step: int, trainer: str) -> int:
    """The position a checkpoint's state was taken at, once it is known to belong to this run."""
    if state.get("format") != FORMAT or state.get("trainer") != trainer:
        raise KasminaError(f"the checkpoint's Kasmina state is not a {trainer} callback's of format {FORMAT}")
    if state["run"] != store.run:
        raise KasminaError(f"the checkpoint was written by run {state['run']!r}; this callback writes run "
                           f"{store.run!r} (give it run={state['run']!r})")
    if int(state["step"]) != step:
        raise KasminaError(f"the checkpoint's Kasmina state is of step {state['step']}, the trainer resumes at {step}")
    position = int(state["position"])
    if _hash_at(store, position) != state["hash"]:
        raise KasminaError(f"the checkpoint does not belong to the log at {redact(store.url)} (run {store.run!r}): "
                           f"its event at position {position} differs; give the callback the db= it was written with")
    return position


# -- the seeds' part of a checkpoint ----------------------------------------------------------
def seed_state(ex: Executor) -> dict[str, Any]:
    """Seeds' weights by (seed id, generation), their optimizer groups and scheduler entries by
    seed id, and the isolation monitors' running gradient norms (the window a G2 will read)."""
    seeds = {name: {"generation": ex.state(name).generation,
                    "weights": {k: v.detach().cpu() for k, v in site.seed.state_dict().items()}}
             for name, site in ex.sites.items() if site.seed is not None}
    optimizer = ex.optimizer
    groups = {k: v for k, v in checkpoints._optimizer_state(optimizer).items() if k.startswith("seed:")} \
        if optimizer is not None else {}
    return {"seeds": seeds, "optimizer": groups, "schedulers": _scheduler_entries(ex),
            "monitors": checkpoints.monitor_state(ex)}


def restore_seeds(ex: Executor, state: Mapping[str, Any]) -> None:
    """Put a checkpoint's seeds back into the seeds the log grafted again (same generations)."""
    saved = state["seeds"]
    for name, site in ex.sites.items():
        entry = saved.get(name)
        generation = ex.state(name).generation
        if (entry is None) != (site.seed is None) or (entry is not None and entry["generation"] != generation):
            raise KasminaError(f"seed {name!r} in the checkpoint (generation "
                               f"{entry['generation'] if entry else None}) is not the one the log holds at position "
                               f"{state['position']} (generation {generation if site.seed is not None else None})")
        if site.seed is not None:
            site.seed.load_state_dict(entry["weights"])
    if ex.optimizer is not None:
        checkpoints._load_optimizer_state(ex.optimizer, state["optimizer"], set())
        optim.rebind_host_groups(ex.optimizer, ex._host_groups, {n: site.base_layer for n, site in ex.sites.items()})
    _load_scheduler_entries(ex, state["schedulers"])
    checkpoints.load_monitor_state(ex, state["monitors"])


def _seed_indices(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    return {g[optim.SEED_KEY]: i for i, g in enumerate(optimizer.param_groups) if optim.SEED_KEY in g}


def _scheduler_entries(ex: Executor) -> dict[str, list[dict[str, Any]]]:
    if ex.optimizer is None:
        return {}
    groups = len(ex.optimizer.param_groups)
    schedulers = list(optim._every_scheduler(ex.schedulers))
    return {seed: [{name: values[index] for name in _SCHEDULER_LISTS
                    if isinstance(values := getattr(s, name, None), list) and len(values) == groups}
                   for s in schedulers]
            for seed, index in _seed_indices(ex.optimizer).items()}


def _load_scheduler_entries(ex: Executor, saved: Mapping[str, list[dict[str, Any]]]) -> None:
    if ex.optimizer is None:
        return
    groups = len(ex.optimizer.param_groups)
    schedulers = list(optim._every_scheduler(ex.schedulers))
    for seed, index in _seed_indices(ex.optimizer).items():
        for scheduler, entries in zip(schedulers, saved.get(seed, ())):
            for name, value in entries.items():
                values = getattr(scheduler, name, None)
                if isinstance(values, list) and len(values) == groups:
                    values[index] = value


# -- the host's part: a trainer checkpoint without the seeds ------------------------------------
def strip_model_state(state_dict: dict[str, Any], keys: Iterable[str]) -> None:
    """Drop the seeds' keys from a trainer's model state dict (in place)."""
    for key in list(keys):
        state_dict.pop(key, None)


def strip_optimizer_state(packed: dict[str, Any]) -> list[int]:
    """Drop the seed groups (and their parameters' state) from an ``Optimizer.state_dict()``
    (in place); returns the indices they had, for the schedulers' per-group lists."""
    groups = packed["param_groups"]
    seeds = [i for i, g in enumerate(groups) if optim.SEED_KEY in g]
    dropped = {pid for i in seeds for pid in groups[i]["params"]}
    packed["param_groups"] = [g for i, g in enumerate(groups) if i not in seeds]
    packed["state"] = {pid: s for pid, s in packed["state"].items() if pid not in dropped}
    return seeds


def strip_scheduler_state(state: Mapping[str, Any], indices: Sequence[int], groups: int) -> dict[str, Any]:
    """A scheduler's ``state_dict()`` without the seed groups' entries (a copy: the lists in a
    ``state_dict()`` are the live scheduler's own)."""
    drop = set(indices)
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key in optim._PER_GROUP and isinstance(value, list) and len(value) == groups:
            value = [v for i, v in enumerate(value) if i not in drop]
        elif key == "_schedulers" and isinstance(value, list):
            value = [strip_scheduler_state(s, indices, groups) if isinstance(s, Mapping) else s for s in value]
        out[key] = value
    return out
