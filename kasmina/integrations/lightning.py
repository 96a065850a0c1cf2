"""PyTorch Lightning: :class:`KasminaCallback` puts an executor inside ``Trainer.fit``.

Where each piece happens, in Lightning's own order (``Trainer._run``):

* ``setup("fit")``: the sites are grafted into the ``LightningModule`` (before the strategy
  moves or wraps it, before ``configure_optimizers``, before a checkpoint is restored);
* ``load_state_dict``: a checkpoint's Kasmina state is kept until the trainer is ready;
* ``on_train_start``: the trainer has built its optimizer and restored its checkpoint:
  the session binds the optimizer and leads, or grafts the checkpoint's seeds again and
  catches up with the log (:mod:`kasmina.integrations._trainer`);
* ``on_train_batch_end``: once the global step moved, ``Executor.step`` with
  ``trainer.callback_metrics``, then the controller;
* ``state_dict`` and ``on_save_checkpoint``: the seeds go into the callback's state and out
  of the checkpoint's model, optimizer and scheduler states, which keep the host alone.

``lightning.pytorch`` is used when installed, else the standalone ``pytorch_lightning``:
the callback only defines hooks, so either trainer calls it.
"""

from __future__ import annotations

from typing import Any, Sequence

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # pragma: no cover - the standalone package
    try:
        from pytorch_lightning import Callback, LightningModule, Trainer  # type: ignore[no-redef]
    except ImportError:
        raise ImportError("kasmina.integrations.lightning needs PyTorch Lightning: "
                          "pip install 'kasmina[lightning]'") from None

import torch

from kasmina.errors import KasminaError
from kasmina.executor import Executor, MetricPolicy
from kasmina.executor import optim
from kasmina.integrations._trainer import (Controller, Session, SessionCallback, strip_model_state,
                                           strip_optimizer_state, strip_scheduler_state)

__all__ = ["KasminaCallback"]


class KasminaCallback(SessionCallback, Callback):
    """Grows seeds in a ``LightningModule`` during ``Trainer.fit``.

    Give it ``sites`` (submodule names of the ``LightningModule``), ``db``, ``secret``,
    ``run`` and any other :class:`kasmina.Executor` argument but the model and optimizer,
    and it builds the executor; or give it ``executor=`` ready-made (not both).
    ``controller(step, executor)`` is called after each optimizer step with the global step
    just reached; the signed commands it returns go to ``Executor.handle``.
    """

    def __init__(self, sites: Sequence[str] | None = None, db: str | None = None, secret: Any = None, *,
                 executor: Executor | None = None, controller: Controller | None = None, run: str | None = None,
                 metric: MetricPolicy | None = None, **executor_options: Any) -> None:
        super().__init__()
        self.session = Session("lightning", executor=executor, controller=controller, sites=sites, db=db,
                               secret=secret, run=run, metric=metric, options=executor_options)

    # -- hooks ----------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        ex = self.session.build(pl_module)
        if trainer.world_size > 1 and ex.counterfactual.probe is None:
            # A wrapping strategy calls the module with training_step's arguments: the
            # counterfactual's fallback (the model's last training forward) cannot replay them.
            raise KasminaError(f"under {type(trainer.strategy).__name__} the counterfactual needs probe= (a batch "
                               "(x, y) for the LightningModule's forward) and loss_fn=")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.session.pending = dict(state_dict) or None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizer = _seed_optimizer(trainer, self.session.executor)
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs
                      if getattr(c.scheduler, "optimizer", None) is optimizer]
        self.session.start(optimizer, schedulers, trainer.global_step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.session.after_step(trainer.global_step, trainer.callback_metrics)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        self.session.reduce_seed_gradients()

    def state_dict(self) -> dict[str, Any]:
        return self.session.checkpoint_state() or {}

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        ex = self.session.executor
        if not self.session.active or ex is None or ex.optimizer is None:
            return
        strip_model_state(checkpoint["state_dict"], self.session.seed_keys(checkpoint["state_dict"]))
        index = next((i for i, o in enumerate(trainer.optimizers) if o is ex.optimizer), None)
        if index is None or "optimizer_states" not in checkpoint:
            return
        groups = len(ex.optimizer.param_groups)
        seeds = strip_optimizer_state(checkpoint["optimizer_states"][index])
        for i, config in enumerate(trainer.lr_scheduler_configs):
            if getattr(config.scheduler, "optimizer", None) is ex.optimizer:
                checkpoint["lr_schedulers"][i] = strip_scheduler_state(checkpoint["lr_schedulers"][i], seeds, groups)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.session.close(crashed=True)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self.session.close()


def _seed_optimizer(trainer: Trainer, ex: Executor | None) -> torch.optim.Optimizer:
    """The trainer's optimizer that holds the sites' layers (the seeds join it), else its first."""
    optimizers = list(trainer.optimizers)
    if not optimizers:
        raise KasminaError("the trainer has no optimizer for the seeds (configure_optimizers returned none)")
    if ex is not None:
        for optimizer in optimizers:
            if any(optim.host_group(optimizer, site.base_layer) is not None for site in ex.sites.values()):
                return optimizer
    return optimizers[0]
