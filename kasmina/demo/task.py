"""What the demo's loop needs from a task: data, a host, a plan of seeds, and a metric.

The loop (:mod:`kasmina.demo.run`) is the same for every task; a task says what is
trained on what, how it is judged, and which seeds the scripted controller grafts. Two
tasks exist: ``digits`` (:mod:`kasmina.demo.digits`) and ``text``
(:mod:`kasmina.demo.text`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from kasmina.catalogue import Catalogue
    from kasmina.demo.controller import Planned
    from kasmina.demo.run import DemoOptions


class Data(Protocol):
    def batch(self, rng: int, step: int, size: int) -> tuple[Tensor, Tensor]:
        """The training batch of ``step``: a pure function of (run seed, step), so a resumed run
        draws exactly the batches an uninterrupted one would, and every contender the same."""


@dataclass(frozen=True, slots=True)
class Metric:
    """The validation metric a task reports and gate G4 reads (as a moving average)."""

    name: str  # the key in the report, e.g. "val_accuracy"
    label: str  # for people, e.g. "validation accuracy"
    higher_is_better: bool
    tolerance: float  # G4: the relative regression allowed against the seed's baseline

    def better(self, a: float, b: float) -> float:
        """How much better ``a`` is than ``b`` (positive: better), in the metric's own units."""
        return a - b if self.higher_is_better else b - a


class DemoTask(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    metric: ClassVar[Metric]
    sites: ClassVar[tuple[str, ...]]
    #: Defaults of the size options (steps, host_steps, batch, lr, weight_decay, width, context).
    defaults: ClassVar[Mapping[str, Any]]
    #: The host is a causal language model (sequence seeds must not see the future).
    causal: ClassVar[bool] = False

    @abstractmethod
    def load(self, options: DemoOptions) -> Data:
        """The data, on ``options.device``."""

    @abstractmethod
    def host(self, options: DemoOptions) -> nn.Module:
        """A new host network (its initial weights come from the caller's torch seed)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, data: Data) -> float:
        """The validation metric of ``model`` (called under ``inference_mode``)."""

    @abstractmethod
    def catalogue(self) -> Catalogue:
        """The blueprints this task's plan may name."""

    @abstractmethod
    def plan(self, options: DemoOptions) -> tuple[Planned, ...]:
        """The seeds the scripted controller grafts, in order."""

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The training loss: cross-entropy, one prediction per row (or per position)."""
        return F.cross_entropy(output.flatten(0, -2), target.flatten())

    def probe(self, data: Data) -> Callable[[], tuple[Tensor, Tensor]] | None:
        """The counterfactual's probe batch (``None``: G4 judges the host metric alone)."""
        return None

    def describe(self, data: Data) -> dict[str, Any]:
        """What the log records about the data with the run's configuration."""
        return {}

    def eval_every(self, options: DemoOptions) -> int:
        """Steps between two evaluations of the validation metric."""
        return 1

    def dwell(self, options: DemoOptions) -> int:
        """Steps per lifecycle stage, scaled so the whole plan fits in ``options.steps``."""
        return max(2, int(options.steps) // 12)

    def stages(self, options: DemoOptions) -> dict[str, int]:
        """Stage lengths for one seed: about 3 x :meth:`dwell` steps to fossilize."""
        from kasmina.demo.controller import dwell_parameters

        return dwell_parameters(self.dwell(options))


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """A validation pass: no autograd, eval mode, every module's own flag restored after."""
    from kasmina.executor.counterfactual import evaluation_mode

    with torch.inference_mode(), evaluation_mode(model):
        yield
