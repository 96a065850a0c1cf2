"""Hugging Face: :class:`KasminaTrainerCallback` puts an executor inside ``transformers.Trainer``.

Where each piece happens, in the ``Trainer``'s own order:

* ``on_init_end`` (``Trainer(...)``): the sites are grafted into the model, before
  ``train(resume_from_checkpoint=...)`` loads a checkpoint's weights into it;
* ``on_train_begin``: the ``Trainer`` has built its optimizer and scheduler and, on resume,
  restored them: the session binds the optimizer and leads, or reads the Kasmina state
  of the checkpoint it resumes from (``checkpoint-<step>/kasmina.pt``), grafts its seeds
  again and catches up with the log (:mod:`kasmina.integrations._trainer`);
* ``on_log`` and ``on_evaluate``: the metrics are kept; ``on_step_end`` (after the optimizer
  step, the global step moved on) passes every metric logged so far to ``Executor.step``,
  then calls the controller. A step's own logs come after its ``on_step_end``: gates read
  the values logged up to the step before;
* ``on_save``: the ``Trainer`` has written ``checkpoint-<step>``; the callback takes the seed
  groups out of its ``optimizer.pt`` and ``scheduler.pt`` (so they load into the optimizer
  a resumed ``Trainer`` builds over the host alone) and writes ``kasmina.pt`` beside them.
  The seeds' weights stay in ``model.safetensors`` too: a resumed ``Trainer`` loads that
  file non-strictly, before the seeds exist, and the callback loads them from its own file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError:  # pragma: no cover - the optional extra
    raise ImportError("kasmina.integrations.hf needs transformers: pip install 'kasmina[hf]'") from None

import torch
from torch import nn

from kasmina.errors import KasminaError
from kasmina.executor import Executor, MetricPolicy
from kasmina.executor.checkpoint import _write_atomically
from kasmina.integrations._trainer import (Controller, Session, SessionCallback, strip_optimizer_state,
                                           strip_scheduler_state)

__all__ = ["KasminaTrainerCallback", "STATE_FILE"]

#: The ``Trainer``'s arguments to every callback event.
Args, State, Control = TrainingArguments, TrainerState, TrainerControl
#: The callback's file in each ``checkpoint-<step>`` folder.
STATE_FILE = "kasmina.pt"
#: The ``Trainer``'s optimizer and scheduler files (transformers.trainer).
_OPTIMIZER, _SCHEDULER = "optimizer.pt", "scheduler.pt"


class KasminaTrainerCallback(SessionCallback, TrainerCallback):
    """Grows seeds in a ``transformers.Trainer``'s model.

    Pass it in ``Trainer(callbacks=[...])`` (``add_callback`` after the ``Trainer`` exists
    is too late to resume: the sites must be there before a checkpoint is loaded). Give it
    ``sites`` (submodule names of the model), ``db``, ``secret``, ``run`` and any other
    :class:`kasmina.Executor` argument but the model and optimizer, and it builds the
    executor; or give it ``executor=`` ready-made (not both). Gate G4 reads ``eval_loss``
    unless ``metric=`` names another logged value (``loss`` is the training loss).
    ``controller(step, executor)`` is called after each optimizer step with the global step
    just reached; the signed commands it returns go to ``Executor.handle``.
    """

    def __init__(self, sites: Sequence[str] | None = None, db: str | None = None, secret: Any = None, *,
                 executor: Executor | None = None, controller: Controller | None = None, run: str | None = None,
                 metric: MetricPolicy | None = None, **executor_options: Any) -> None:
        self.session = Session("hf", executor=executor, controller=controller, sites=sites, db=db, secret=secret,
                               run=run, metric=metric, options=executor_options,
                               default_metric=MetricPolicy(name="eval_loss"))
        self._grafted_early = False
        self._hook: Any = None

    # -- events ---------------------------------------------------------------------------
    def on_init_end(self, args: Args, state: State, control: Control, model: nn.Module | None = None,
                    **kwargs: Any) -> None:
        if model is not None:
            self.session.build(model)
            self._grafted_early = True
            # Until training begins, a checkpoint's weights of seeds not grafted yet are the
            # callback's to restore (from kasmina.pt), not unexpected keys of the model.
            self._hook = model.register_load_state_dict_pre_hook(self._take_seed_keys)

    def _take_seed_keys(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for key in self.session.seed_keys(list(state_dict), unattached=True, prefix=prefix):
            del state_dict[key]

    def on_train_begin(self, args: Args, state: State, control: Control,
                       model: nn.Module | None = None, optimizer: Any = None, lr_scheduler: Any = None,
                       **kwargs: Any) -> None:
        step = int(state.global_step)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if not self._grafted_early:
            if step and self.session.owned:
                raise KasminaError("the callback was added after the Trainer was built, so its sites were grafted "
                                   "after the checkpoint was loaded: pass it in Trainer(callbacks=[...])")
            self.session.build(model)
        if optimizer is None:
            raise KasminaError("the Trainer began training without an optimizer for the seeds")
        if args.world_size > 1 and args.max_grad_norm and args.max_grad_norm > 0:
            # The Trainer clips before on_pre_optimizer_step, where the seeds' gradients are
            # averaged: each rank would clip by its own norm and the replicas drift apart.
            raise KasminaError(f"under {args.world_size} processes the seeds' gradients are averaged after the "
                               f"Trainer clips them: set max_grad_norm=0 (it is {args.max_grad_norm:g})")
        if step:
            self.session.pending = self._saved_state(args, step)
        self.session.start(_unwrapped(optimizer), [lr_scheduler] if lr_scheduler is not None else [], step)

    def on_log(self, args: Args, state: State, control: Control, logs: Any = None, **kwargs: Any) -> None:
        self.session.report(logs)

    def on_evaluate(self, args: Args, state: State, control: Control, metrics: Any = None, **kwargs: Any) -> None:
        self.session.report(metrics)

    def on_step_end(self, args: Args, state: State, control: Control, **kwargs: Any) -> None:
        self.session.after_step(int(state.global_step))

    def on_pre_optimizer_step(self, args: Args, state: State, control: Control, **kwargs: Any) -> None:
        self.session.reduce_seed_gradients()

    def on_save(self, args: Args, state: State, control: Control, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not state.is_world_process_zero:
            return  # rank 0 writes the checkpoint, and the other ranks hold the same seeds
        saved = self.session.checkpoint_state({"folder": str(folder.resolve())})
        if saved is None or not folder.is_dir():
            return
        self._strip_trainer_files(folder)
        _write_atomically(folder / STATE_FILE, _serialized(saved))  # last: the folder is complete

    def on_train_end(self, args: Args, state: State, control: Control, **kwargs: Any) -> None:
        self.session.close()

    # -- checkpoint files -----------------------------------------------------------------
    def _strip_trainer_files(self, folder: Path) -> None:
        """Rewrite the ``Trainer``'s optimizer and scheduler files without the seed groups."""
        optimizer_file, scheduler_file = folder / _OPTIMIZER, folder / _SCHEDULER
        if not optimizer_file.is_file():
            return  # save_only_model: nothing of the optimizer to resume
        packed = torch.load(optimizer_file, map_location="cpu", weights_only=True)
        groups = len(packed["param_groups"])
        seeds = strip_optimizer_state(packed)
        if not seeds:
            return
        if scheduler_file.is_file():
            schedule = torch.load(scheduler_file, map_location="cpu", weights_only=True)
            _write_atomically(scheduler_file, _serialized(strip_scheduler_state(schedule, seeds, groups)))
        _write_atomically(optimizer_file, _serialized(packed))

    def _saved_state(self, args: Args, step: int) -> dict[str, Any] | None:
        """The Kasmina state of the checkpoint the ``Trainer`` resumes from (at ``step``).

        Looked for in ``output_dir/checkpoint-<step>``, then in the folders the log's
        checkpoint notes name for that step (a checkpoint resumed from elsewhere).
        """
        default = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        for folder in [default, *map(Path, self.session.checkpoint_folders(step))]:
            path = folder / STATE_FILE
            if path.is_file():
                state = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(state, dict) and state.get("step") == step:
                    return state
        if self.session.owned and self.session.log_events():
            raise KasminaError(f"resuming at step {step}: no {STATE_FILE} of that step in {default} (a checkpoint "
                               "cut short while it was written, or saved without the callback): resume from another")
        return None


def _unwrapped(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (its groups are the same lists)."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def _serialized(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()

