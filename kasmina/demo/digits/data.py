"""The demo's data: scikit-learn's handwritten digits, shipped inside the package (no download).

1,797 8x8 images, 10 classes. The train/validation split is fixed (generator seed 0), not
drawn from the run's ``--rng``: every run is judged on the same 360 validation images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

VALIDATION = 360
_SPLIT_SEED = 0


@dataclass(frozen=True, slots=True)
class Digits:
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor

    def to(self, device: torch.device | str) -> Digits:
        return Digits(*(t.to(device) for t in (self.x_train, self.y_train, self.x_val, self.y_val)))

    def batch(self, rng: int, step: int, size: int) -> tuple[Tensor, Tensor]:
        """The batch of ``step``: a pure function of (run seed, step), so a resumed run
        draws exactly the batches an uninterrupted one would have."""
        generator = torch.Generator().manual_seed(rng * 1_000_003 + step)
        index = torch.randint(0, len(self.x_train), (size,), generator=generator).to(self.x_train.device)
        return self.x_train[index], self.y_train[index]


def load() -> Digits:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        from kasmina.errors import KasminaError

        raise KasminaError("kasmina demo needs scikit-learn (pip install scikit-learn)") from e
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # pixel values are 0..16
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    val, train = order[:VALIDATION], order[VALIDATION:]
    return Digits(x[train], y[train], x[val], y[val])
