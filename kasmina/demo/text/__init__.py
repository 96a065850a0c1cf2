"""The ``text`` task: a byte-level causal transformer LM on the Python standard library's source.

A 2-layer, 64-wide transformer (:mod:`.model`) learns to predict the next byte of the
top-level ``*.py`` files of the running Python's standard library (:mod:`.corpus`: fixed
split, fixed byte budget, the file list's SHA-256 in the log). Judged in validation bits
per byte; the counterfactual probe is a fixed validation batch, so a seed's contribution
is measured on text it never trained on. See docs/demo.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kasmina.demo.controller import Planned
from kasmina.demo.task import DemoTask, Metric
from kasmina.demo.text import corpus, model
from kasmina.errors import KasminaError

if TYPE_CHECKING:
    from kasmina.catalogue import Catalogue
    from kasmina.demo.run import DemoOptions

#: Validation windows per forward when evaluating (bounds the memory of one pass).
EVAL_CHUNK = 64
#: Windows in the counterfactual's probe batch (the first ones of the validation split).
PROBE_WINDOWS = 32
#: The validation split must hold at least this many windows (bounds ``--context``).
MIN_VALIDATION_WINDOWS = 8


@dataclass(frozen=True, slots=True)
class TextData:
    train: Tensor  # uint8 bytes, 1-D, on the device
    validation: Tensor  # (N, context + 1) byte windows, long, on the device
    context: int
    source: corpus.Corpus

    def batch(self, rng: int, step: int, size: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(rng * 1_000_003 + step)
        starts = torch.randint(0, self.train.numel() - self.context - 1, (size,), generator=generator)
        index = (starts[:, None] + torch.arange(self.context + 1)).to(self.train.device)
        windows = self.train[index].long()
        return windows[:, :-1], windows[:, 1:]


def windows(data: Tensor, context: int) -> Tensor:
    """Non-overlapping (context + 1)-byte windows, each predicting ``context`` bytes."""
    count = (data.numel() - 1) // context
    index = torch.arange(count)[:, None] * context + torch.arange(context + 1)
    return data[index].long()


class TextTask(DemoTask):
    name = "text"
    description = "a byte-level causal transformer LM on the Python standard library's source"
    metric = Metric("val_bits_per_byte", "validation bits per byte", higher_is_better=False, tolerance=0.02)
    sites = model.SITES
    defaults = {"steps": 1000, "host_steps": 800, "batch": 16, "lr": 3e-3, "weight_decay": 0.01,
                "width": 64, "context": 128}
    causal = True

    def load(self, options: DemoOptions) -> TextData:
        source = corpus.load()
        context = int(options.context)
        longest = (source.validation.numel() - 1) // MIN_VALIDATION_WINDOWS
        if context > longest:
            raise KasminaError(f"--context {context}: the validation split ({source.validation.numel()} bytes) "
                               f"must hold {MIN_VALIDATION_WINDOWS} windows; give at most {longest}")
        device = torch.device(options.device)
        return TextData(source.train.to(device), windows(source.validation, context).to(device), context, source)

    def host(self, options: DemoOptions) -> nn.Module:
        width = int(options.width)
        # Narrow on purpose, as the digits host is: two heads and MLPs as wide as the model
        # (a GPT's are 4x), so the seeds have room to help.
        return model.ByteLM(width=width, layers=2, heads=2 if width % 2 == 0 else 1, context=int(options.context),
                            mlp_ratio=1)

    def evaluate(self, net: nn.Module, data: Any) -> float:
        total = torch.zeros((), dtype=torch.float64, device=data.validation.device)
        for chunk in data.validation.split(EVAL_CHUNK):
            logits = net(chunk[:, :-1])
            total += F.cross_entropy(logits.flatten(0, 1).float(), chunk[:, 1:].flatten(), reduction="sum").double()
        return float(total) / (data.validation[:, 1:].numel() * math.log(2))

    def probe(self, data: Any) -> Callable[[], tuple[Tensor, Tensor]]:
        batch = data.validation[:PROBE_WINDOWS]
        x, y = batch[:, :-1], batch[:, 1:]
        return lambda: (x, y)

    def describe(self, data: Any) -> dict[str, Any]:
        return {"corpus": data.source.describe()}

    def eval_every(self, options: DemoOptions) -> int:
        """About 25 evaluations over the host's steps plus the seeds' (each a pass over the
        validation split, which is what costs: a few per cent of the run, not half of it)."""
        return max(1, (int(options.host_steps) + int(options.steps)) // 25)

    def dwell(self, options: DemoOptions) -> int:
        return max(4, int(options.steps) // 12)

    def stages(self, options: DemoOptions) -> dict[str, int]:
        """A short TRAINING stage: a transformer seed trained straight-through (its output not yet
        in the forward, so with no feedback on its own effect) hurts when it is blended in
        (measured: 3.01 -> 3.14 bits per byte after 300 such steps); it learns with feedback
        while it blends and shadows."""
        dwell = self.dwell(options)
        return {"training_steps": max(1, dwell // 4), "blend_steps": dwell, "shadow_steps": dwell,
                "probation_steps": max(1, dwell // 2), "embargo_steps": max(1, dwell // 3)}

    def catalogue(self) -> Catalogue:
        from kasmina.catalogue import Catalogue

        return Catalogue()  # the blueprint library: attention, mlp, lora, ...

    def plan(self, options: DemoOptions) -> tuple[Planned, ...]:
        """Four germinations at three depths, one at a time, each judged by the counterfactual.

        Each command says what its seed must earn (``contribution_threshold``: the share of the
        probe loss it must remove): 0.5 % for a seed that adds a block's worth of capacity; 2 %
        for a low-rank update of the output head, which earns its place only if it does more
        than a few hundred parameters can.
        """
        residual = {"blend_mode": "RESIDUAL", "host_gradient": "blend", "blend_mode_source": "demo"}
        earns = {"contribution_threshold": 0.005}
        return (
            Planned("blocks.1", 1, "mlp", earns, residual, fossilize_early=True),
            Planned("head", 1, "lora", {"rank": 4, "contribution_threshold": 0.02}, residual),
            Planned("blocks.0", 1, "attention", {"heads": 2, **earns}, residual),
            Planned("head", 2, "mlp", {"hidden": 64, **earns}, residual),
        )


TASK = TextTask()
