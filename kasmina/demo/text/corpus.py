"""The text task's data: the top-level ``*.py`` files of the running Python's standard library.

Real text that every machine with Python has, read from disk (no download). The rules are
fixed so that a run says exactly what it was trained on:

* files: ``<stdlib>/*.py`` (``sysconfig.get_paths()["stdlib"]``), sorted by name; only
  regular files whose real path lies inside that folder are read (a symlink out of it is
  passed over, never opened);
* split: every tenth file (positions 9, 19, ... in name order) is validation, the rest train;
* each split is its files concatenated in name order; over its byte budget, it keeps
  evenly spaced blocks of :data:`BLOCK` bytes, drawn across the whole split (not only
  its first files; a short file may fall between two blocks);
* the SHA-256 of the file list (split, name, size, SHA-256 of the content, one line each)
  and of the budgets is recorded in the log with the run's configuration.
"""

from __future__ import annotations

import hashlib
import math
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from kasmina.errors import KasminaError

#: Every tenth file (in name order) is validation.
VALIDATION_EVERY = 10
#: Default byte budgets: enough text for a few minutes of training on two CPU cores.
TRAIN_BYTES = 2 * 1024 * 1024
VALIDATION_BYTES = 32 * 1024
#: Over its budget, a split keeps evenly spaced blocks of this many bytes.
BLOCK = 4096


@dataclass(frozen=True, slots=True)
class CorpusFile:
    split: str  # "train" | "validation"
    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Corpus:
    root: str
    files: tuple[CorpusFile, ...]
    train: Tensor  # uint8, 1-D
    validation: Tensor  # uint8, 1-D
    sha256: str  # of the file list and the budgets

    def describe(self) -> dict[str, object]:
        """What the log records about the data (a resume must find the same)."""
        counts = {s: sum(1 for f in self.files if f.split == s) for s in ("train", "validation")}
        return {"source": "python-stdlib", "python": ".".join(map(str, sys.version_info[:3])),
                "files_train": counts["train"], "files_validation": counts["validation"],
                "train_bytes": int(self.train.numel()), "validation_bytes": int(self.validation.numel()),
                "sha256": self.sha256}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve(strict=True).is_relative_to(root)
    except OSError:
        return False


def list_files(root: Path | None = None) -> list[Path]:
    """The top-level ``*.py`` files of ``root`` that may be read, sorted by name."""
    base = (root or stdlib_root()).resolve()
    if not base.is_dir():
        raise KasminaError(f"the standard library folder {base} does not exist")
    return sorted((p for p in base.glob("*.py") if _inside(p, base) and p.resolve().is_file()),
                  key=lambda p: p.name)


def _fit(data: bytes, budget: int) -> bytes:
    """``data`` itself, or evenly spaced whole blocks of it that fill ``budget``."""
    if len(data) <= budget:
        return data
    blocks = math.ceil(len(data) / BLOCK)
    keep = max(1, budget // BLOCK)
    chosen = sorted({(i * blocks) // keep for i in range(keep)})
    return b"".join(data[i * BLOCK:(i + 1) * BLOCK] for i in chosen)[:budget]


def load(root: Path | None = None, *, train_bytes: int = TRAIN_BYTES,
         validation_bytes: int = VALIDATION_BYTES) -> Corpus:
    """Read the corpus (see the module docstring for the rules)."""
    base = (root or stdlib_root()).resolve()
    paths = list_files(base)
    if len(paths) < VALIDATION_EVERY:
        raise KasminaError(f"{base} holds {len(paths)} top-level .py files; the text task needs at least "
                           f"{VALIDATION_EVERY}")
    files: list[CorpusFile] = []
    parts: dict[str, list[bytes]] = {"train": [], "validation": []}
    for index, path in enumerate(paths):
        content = path.read_bytes()
        split = "validation" if index % VALIDATION_EVERY == VALIDATION_EVERY - 1 else "train"
        files.append(CorpusFile(split, path.name, len(content), hashlib.sha256(content).hexdigest()))
        parts[split].append(content)
    listing = "".join(f"{f.split}\t{f.name}\t{f.size}\t{f.sha256}\n" for f in files)
    listing += f"budget\t{train_bytes}\t{validation_bytes}\t{BLOCK}\n"
    train = _fit(b"".join(parts["train"]), train_bytes)
    validation = _fit(b"".join(parts["validation"]), validation_bytes)
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8)  # noqa: E731 - one use each
    return Corpus(str(base), tuple(files), as_tensor(train), as_tensor(validation),
                  hashlib.sha256(listing.encode()).hexdigest())
