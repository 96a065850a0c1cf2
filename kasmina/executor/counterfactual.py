"""The counterfactual: what one seed contributes, as the loss with it against the loss without it.

The training loop's own metric says whether the model as a whole got better; it cannot say
whether *this* seed is why. So before a seed may enter PROBATIONARY, and again before it is
fossilized, the executor runs one probe batch twice through the same model: once as it is
(the seed at its current alpha) and once with that seed's site bypassed (the host alone at
that site; every other seed stays in). Both passes go through ``Executor.run_probe`` under
``torch.inference_mode()``, with the model in eval mode (no dropout draws, no BatchNorm
statistics updated) and restored afterwards, under autocast when the training forward ran
under it. The two losses stay on the device until the gate reads them.

Where the probe batch comes from, first that applies:

1. ``probe=`` given to the executor: a callable returning ``(x, y)`` (the loss is
   ``loss_fn(model(x), y)``, cross-entropy by default) or a mapping of model keyword
   arguments (Hugging Face style: ``model(**batch).loss``, else ``loss_fn(output, batch["labels"])``);
2. the last training batch (the model's last forward with autograd on), when its output
   carries its own ``.loss`` (a Hugging Face model called with ``labels``).

Without either, nothing is measured and G4 decides on the host metric alone, as before.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from kasmina.errors import KasminaError
from kasmina.executor.site import SeedSite, hidden_of
from kasmina.lifecycle.gates import CONTRIBUTION_THRESHOLD as THRESHOLD_KEY
from kasmina.lifecycle.stages import Gate, Stage
from kasmina.lifecycle.state import SeedState

__all__ = ["Counterfactual", "LastBatch", "default_loss", "autocast_like", "evaluation_mode", "PAST_TRAINING"]

#: Stages whose seed's contribution is measured when a gate falls due.
PAST_TRAINING = frozenset({Stage.BLENDING, Stage.SHADOWING, Stage.PROBATIONARY})

ProbeFn = Callable[[], Any]
LossFn = Callable[[Any, Any], Tensor]
#: Relative contribution a seed must show by default (1 %), overridable per command.
DEFAULT_THRESHOLD = 0.01


def default_loss(output: Any, target: Tensor) -> Tensor:
    """Cross-entropy of the output's logits (the hidden state, or ``.logits``) against ``target``."""
    logits = getattr(output, "logits", None)
    logits = logits if isinstance(logits, Tensor) else hidden_of(output)
    if logits is None:
        raise TypeError(f"cannot read logits from a {type(output).__name__}; pass loss_fn=")
    if logits.dim() > 2:  # (B, T, V) against (B, T): one prediction per position
        return F.cross_entropy(logits.flatten(0, -2).float(), target.flatten())
    return F.cross_entropy(logits.float(), target)


def autocast_like(site: SeedSite) -> ContextManager[Any]:
    """Autocast to the dtype the site's last forward ran in, when it is lower than its weights'.

    A probe outside the training loop's ``torch.autocast`` must still run in the forward's
    dtype: a bf16 activation into fp32 weights raises otherwise.
    """
    seen = site.last_host if site.last_host is not None else site.last_input
    weight = next((p for p in site.base_layer.parameters() if p.is_floating_point()), None)
    if seen is None or weight is None or not seen.is_floating_point() or seen.dtype == weight.dtype:
        return nullcontext()
    if seen.dtype not in (torch.bfloat16, torch.float16):
        return nullcontext()
    return torch.autocast(device_type=seen.device.type, dtype=seen.dtype)


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode, every module's own flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


class LastBatch:
    """The arguments of the model's last forward with autograd on (a removable pre-hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.args: tuple[Any, ...] | None = None
        self.kwargs: dict[str, Any] = {}
        self._handle: RemovableHandle = model.register_forward_pre_hook(self._capture, with_kwargs=True)

    def _capture(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if torch.is_grad_enabled():  # a training forward, not a probe or an evaluation
            self.args, self.kwargs = args, kwargs

    def close(self) -> None:
        self._handle.remove()
        self.args, self.kwargs = None, {}


@dataclass(frozen=True, slots=True)
class Losses:
    """Both probe losses as 0-d device tensors: read to the host only by the gate."""

    with_seed: Tensor
    without_seed: Tensor

    def read(self) -> dict[str, float]:
        """The gate inputs (the one host sync): both losses and the relative contribution."""
        with_seed, without = torch.stack([self.with_seed, self.without_seed]).double().tolist()
        contribution = (without - with_seed) / max(abs(without), 1e-12)
        return {"loss_with": with_seed, "loss_without": without, "contribution": contribution}


class Counterfactual:
    """Measures one seed's contribution on the probe batch (see the module docstring)."""

    def __init__(self, model: nn.Module, *, probe: ProbeFn | None = None, loss_fn: LossFn | None = None,
                 threshold: float = DEFAULT_THRESHOLD) -> None:
        if not -1.0 <= float(threshold) <= 1.0:  # negative: record the counterfactual, tolerate that much harm
            raise KasminaError(f"contribution_threshold must be a relative change in [-1, 1], got {threshold!r}")
        self.model = model
        self.probe = probe
        self.loss_fn = loss_fn
        self.threshold = float(threshold)
        self.last = LastBatch(model)

    def close(self) -> None:
        self.last.close()

    def _loss(self) -> Tensor | None:
        """One forward of the probe batch and its loss, or None when there is no usable batch."""
        if self.probe is not None:
            batch = self.probe()
            if isinstance(batch, Mapping):
                out = self.model(**batch)
                return self._output_loss(out, batch.get("labels"))
            x, y = batch
            return self._output_loss(self.model(x), y)
        if self.last.args is None:
            return None
        out = self.model(*self.last.args, **self.last.kwargs)
        loss = getattr(out, "loss", None)
        return loss if isinstance(loss, Tensor) else None

    def _output_loss(self, out: Any, target: Any) -> Tensor:
        if target is None or self.loss_fn is None:
            loss = getattr(out, "loss", None)
            if isinstance(loss, Tensor):  # Trainer style: the model scored itself
                return loss
        if target is None:
            raise TypeError("the probe batch has no target and the model's output no .loss")
        return (self.loss_fn or default_loss)(out, target)

    def available(self) -> bool:
        """Whether a probe batch exists to measure on (a callback, or a self-scoring last batch)."""
        return self.probe is not None or self.last.args is not None

    def measure(self, site: SeedSite, run: Callable[[Callable[[], Any]], Any]) -> Losses | None:
        """Both losses for ``site``'s seed, through ``run`` (the executor's ``run_probe``)."""

        def both() -> Losses | None:
            with evaluation_mode(self.model), autocast_like(site):
                with_seed = self._loss()
                if with_seed is None:
                    return None
                site.bypass = True
                try:
                    without = self._loss()
                finally:
                    site.bypass = False
            assert without is not None
            return Losses(with_seed.detach().float().reshape(()), without.detach().float().reshape(()))

        return run(both)

    def gate_inputs(self, site: SeedSite, state: SeedState, gates: tuple[Gate, ...],
                    run: Callable[[Callable[[], Any]], Any]) -> dict[str, Any]:
        """The counterfactual's gate inputs for a seed past TRAINING (empty when not measurable).

        G4 requires the contribution (the command's ``contribution_threshold``, else this
        one's) whenever a probe batch exists; a probe that raises leaves it unmeasured, with
        the reason, so the gate fails closed.
        """
        if state.stage not in PAST_TRAINING or site.seed is None or not gates or not self.available():
            return {}
        values: dict[str, Any] = {}
        if Gate.G4_SYSTEM_IMPACT in gates:
            values["contribution_threshold"] = float(state.parameters.get(THRESHOLD_KEY, self.threshold))
        try:
            losses = self.measure(site, run)
        except Exception as e:  # noqa: BLE001 - the user's probe or loss failed: not measured, and why
            values["contribution_detail"] = " ".join(f"probe failed: {type(e).__name__}: {e}".split())[:500]
            return values
        if losses is None:  # the last batch does not score itself: nothing to measure on
            return {}
        values.update({k: round(v, 9) for k, v in losses.read().items()})
        return values
