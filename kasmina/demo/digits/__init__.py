"""The ``digits`` task: an 8-unit MLP on scikit-learn's 8x8 digits (the quick default run).

See docs/demo.md. Data in :mod:`.data`, the host and its two demo blueprints in :mod:`.model`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from kasmina.demo.controller import Planned
from kasmina.demo.digits import data, model
from kasmina.demo.task import DemoTask, Metric

if TYPE_CHECKING:
    from kasmina.catalogue import Catalogue
    from kasmina.demo.run import DemoOptions


class DigitsTask(DemoTask):
    name = "digits"
    description = "an 8-unit MLP on scikit-learn's 8x8 digits"
    metric = Metric("val_accuracy", "validation accuracy", higher_is_better=True, tolerance=0.02)
    sites = model.SITES
    defaults = {"steps": 1200, "host_steps": 1000, "batch": 64, "lr": 5e-3, "weight_decay": 0.01,
                "width": 8, "context": None}

    def load(self, options: DemoOptions) -> data.Digits:
        return data.load().to(options.device)

    def host(self, options: DemoOptions) -> nn.Module:
        return model.DigitsNet(int(options.width))

    def evaluate(self, net: nn.Module, digits: Any) -> float:
        return float((net(digits.x_val).argmax(dim=1) == digits.y_val).float().mean())

    def catalogue(self) -> Catalogue:
        return model.catalogue()

    def plan(self, options: DemoOptions) -> tuple[Planned, ...]:
        """One seed at a time, so G4 (the host metric against the seed's baseline) judges one seed:

        1. ``body.0``: ``widened_linear``, CHANNEL blend with a per-channel alpha vector; while it
           blends the controller asks to fossilize it too early (refused: ``illegal_transition``);
        2. ``body.2``: ``unstable_linear``, which goes non-finite: G2 culls it; embargoed, reset;
        3. ``head``: ``widened_linear``, CONFIDENCE blend (per-sample gate on the seed's margin);
        4. ``body.2`` again (generation 2): ``bottleneck_mlp``, RESIDUAL blend.
        """
        hidden = int(options.width)
        channel = ",".join("1.0" if c % 2 == 0 else "0.75" for c in range(hidden))
        return (
            Planned("body.0", 1, "widened_linear", {"rank": 32},
                    {"blend_mode": "CHANNEL", "alpha_vec": channel, "blend_mode_source": "demo"},
                    fossilize_early=True),
            Planned("body.2", 1, "unstable_linear", {"healthy_calls": 5},
                    {"blend_mode": "CONVEX", "blend_mode_source": "demo"}),
            Planned("head", 1, "widened_linear", {"rank": 32},
                    {"blend_mode": "CONFIDENCE", "gate_k": "6", "gate_tau": "0.3", "blend_mode_source": "demo"}),
            Planned("body.2", 2, "bottleneck_mlp", {"rank": 16},
                    {"blend_mode": "RESIDUAL", "blend_mode_source": "demo"}),
        )


TASK = DigitsTask()
