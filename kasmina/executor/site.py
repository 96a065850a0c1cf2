"""Seed sites: the wrapper put in place of a host submodule (the way PEFT injects adapters).

A :class:`SeedSite` keeps the original module as ``base_layer`` and, while a seed is
grafted, runs the seed as a branch parallel to it: the seed takes the site's input and
produces an output shaped like the site's output. What the branch contributes depends only
on the site's :class:`SiteMode`, which the executor derives from the replayed lifecycle
state; the forward pass itself never touches the database and never syncs with the host.

A site's forward may return a tensor, a tuple or a ``ModelOutput``-like mapping (Hugging
Face blocks): the first element is the hidden state that is blended, the rest passes
through untouched. Per-step state lives in tensors (alpha) or is set by the executor
between steps (mode, config, ``sample_stats``), never counted inside the forward, so a
model the user wraps in ``torch.compile`` recompiles only when a stage changes.

A dormant site costs two attribute checks: ``forward`` calls ``base_layer`` and returns.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from kasmina.catalogue.sites import Probe, check_site
from kasmina.kernels.blend import BlenderConfig, BlendStats, blend


#: Blend statistics are sampled on one step in this many (the executor sets
#: :attr:`SeedSite.sample_stats`): the summary stays representative, and the other forwards
#: can take the fused single-pass kernel (which keeps no statistics).
STATS_EVERY = 8

#: Keyword names under which a site's main input may arrive (Hugging Face blocks are often
#: called with ``hidden_states=...``), in the order they are looked for.
_INPUT_KEYS = ("hidden_states", "input", "x", "input_ids", "inputs_embeds", "query")


class SiteMode(str, Enum):
    DORMANT = "dormant"          # no seed: the host module alone
    PAUSED = "paused"            # a seed is attached but does not run
    TRAINING = "training"        # output == host exactly; the seed learns straight-through
    BLENDING = "blending"        # host blended with the seed at alpha (host gradient: see config)
    ACTIVE = "active"            # SHADOWING / PROBATIONARY: alpha 1
    FOSSILIZED = "fossilized"    # permanent: alpha 1, gradients reach the host as usual


_DORMANT, _PAUSED, _TRAINING, _BLENDING, _FOSSILIZED = (
    SiteMode.DORMANT.value, SiteMode.PAUSED.value, SiteMode.TRAINING.value, SiteMode.BLENDING.value,
    SiteMode.FOSSILIZED.value)


class _StraightThrough(torch.autograd.Function):
    """Forward: the host output, bit for bit. Backward: the upstream gradient to both.

    The seed branch's input is detached, so this gives the seed the task loss's gradient
    while the host receives exactly the gradient it would get without the seed. The output
    is a copy, not a view, so in-place ops after the site (``ReLU(inplace=True)``) work; and
    not ``host + (seed - seed.detach())``, which a non-finite seed would turn into NaN.
    """

    @staticmethod
    def forward(ctx: Any, host: Tensor, seed: Tensor) -> Tensor:  # type: ignore[override]
        return host.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return grad, grad


def _tracing() -> bool:
    """Whether the user's ``torch.compile`` is tracing this forward (Kasmina never compiles).

    Per-forward Python bookkeeping (blend statistics) stays out of a traced graph: every new
    value would be a new guard, and a recompilation.
    """
    return torch.compiler.is_compiling()


def primary_input(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Tensor | None:
    """The tensor a site transforms: its first positional tensor, else a known keyword."""
    for value in args:
        if isinstance(value, Tensor):
            return value
    for key in _INPUT_KEYS:
        if isinstance(kwargs.get(key), Tensor):
            return kwargs[key]
    return next((v for v in kwargs.values() if isinstance(v, Tensor)), None)


def hidden_of(out: Any) -> Tensor | None:
    """The hidden state in a site's output: the tensor, or the first element of a tuple or
    of a ``ModelOutput``-like mapping (the rest passes through untouched)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0] if out and isinstance(out[0], Tensor) else None
    if isinstance(out, Mapping):
        first = next(iter(out.values()), None)
        return first if isinstance(first, Tensor) else None
    return None


def _with_hidden(out: Any, hidden: Tensor) -> Any:
    """``out`` with its hidden state replaced by ``hidden``."""
    if isinstance(out, Tensor):
        return hidden
    if isinstance(out, tuple):
        return (hidden, *out[1:])
    if isinstance(out, list):
        return [hidden, *out[1:]]
    out[next(iter(out.keys()))] = hidden  # a fresh ModelOutput: setting an item sets the attribute too
    return out


class SeedSite(nn.Module):
    """A host submodule with a slot for one seed at a time."""

    def __init__(self, base_layer: nn.Module, site: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.site = site
        self.seed: nn.Module | None = None
        self.mode = SiteMode.DORMANT
        self.config: BlenderConfig | None = None
        #: The dim CHANNEL and CONFIDENCE read channels from: 1 (convs, 4-D blocks) or -1
        #: (features last: Linear, Conv1D, Embedding, (B, T, D) blocks). Set by the executor.
        self.channel_dim = 1
        #: The host gets no gradient through the blend before FOSSILIZED (from the config).
        self.detach_host = False
        self.stats = BlendStats()
        #: Set by the executor on the steps whose forwards record blend statistics.
        self.sample_stats = False
        #: The counterfactual: while set, the site is the host alone (its seed removed).
        self.bypass = False
        # On the host module's device from the start (a CPU alpha would make every blend
        # copy it to the GPU: a sync per step); it follows later .to() calls as a buffer.
        self.register_buffer("alpha", torch.zeros((), device=module_placement(base_layer)[0]), persistent=False)
        #: Shapes of the first real forward: what a block site (or a conv's spatial size) is.
        self.probe: Probe | None = None
        #: What the last forward saw (detached, no copies): probes and gates reuse them. An
        #: input seen under ``inference_mode`` is an inference tensor: use :meth:`probe_input`.
        self.last_input: Tensor | None = None
        self.last_host: Tensor | None = None
        #: Set (in Python, from shapes alone) when the seed's output does not fit the site.
        self.interface_error: str | None = None

    def get_base_layer(self) -> nn.Module:
        return self.base_layer

    def extra_repr(self) -> str:
        return f"site={self.site!r}, mode={self.mode.value}"

    def probe_input(self) -> Tensor | None:
        """The last input, usable with autograd (an inference tensor is copied out first)."""
        x = self.last_input
        if x is not None and x.is_inference():
            with torch.inference_mode(False):
                x = x.clone()
        return x

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.base_layer(*args, **kwargs)
        if self.probe is None:
            self._record_probe(primary_input(args, kwargs), hidden_of(out))
        # The mode's value, not the member: torch.compile (2.13) does not guard an enum
        # member read from a module that still holds its initial one, so a seed germinated
        # after compilation would never run. A string it guards.
        mode = self.mode.value
        if mode == _DORMANT or mode == _PAUSED or self.seed is None or self.bypass:
            return out
        x, host = primary_input(args, kwargs), hidden_of(out)
        if x is None or host is None:
            self.interface_error = f"site output {type(out).__name__} holds no hidden-state tensor"
            return out
        seed_input = x if mode == _FOSSILIZED else x.detach()
        self.last_input = seed_input.detach()
        self.last_host = host.detach()
        seed = self.seed(seed_input)
        if seed.dtype != host.dtype and seed.is_floating_point() and torch.is_autocast_enabled(host.device.type):
            seed = seed.to(host.dtype)  # an fp32 norm or softmax at the end of a seed under autocast
        if seed.shape != host.shape or seed.dtype != host.dtype or seed.device != host.device:
            # Never let a misfit seed break the training step: the host runs alone and
            # gate G3 culls the seed with this reason.
            self.interface_error = (f"seed output {tuple(seed.shape)} {seed.dtype} on {seed.device}, "
                                    f"site output {tuple(host.shape)} {host.dtype} on {host.device}")
            return out
        if mode == _TRAINING:
            return _with_hidden(out, _StraightThrough.apply(host, seed))
        stats = self.stats if not _tracing() and self.sample_stats else None
        alpha = self.alpha if mode == _BLENDING else 1.0
        detach = self.detach_host and mode != _FOSSILIZED
        return _with_hidden(out, blend(host, seed, alpha, self.config, stats=stats, detach_host=detach,
                                       channel_dim=self.channel_dim))

    def _record_probe(self, x: Tensor | None, host: Tensor | None) -> None:
        if x is not None and host is not None and x.dim() >= 1 and host.dim() >= 1:
            self.probe = Probe(tuple(x.shape[1:]), tuple(host.shape[1:]), str(x.dtype).removeprefix("torch."),
                               str(host.dtype).removeprefix("torch."))


def split_name(model: nn.Module, name: str) -> tuple[nn.Module, str, nn.Module]:
    """``(parent, child_name, child)`` for a dotted submodule name."""
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, child_name, model.get_submodule(name)


def inject(model: nn.Module, names: list[str]) -> dict[str, SeedSite]:
    """Replace each named submodule by a :class:`SeedSite`; validates every name first."""
    available = {n for n, _ in model.named_modules() if n}
    problems = []
    for name in names:
        if name not in available:
            close = sorted(n for n in available if n.split(".")[-1] == name.split(".")[-1] or n.startswith(name))
            hint = f" (did you mean {', '.join(close[:5])}?)" if close else ""
            problems.append(f"no submodule {name!r} in the model{hint}")
        elif isinstance(model.get_submodule(name), SeedSite):
            problems.append(f"{name!r} is already a seed site")
    if len(set(names)) != len(names):
        problems.append("a site is named twice")
    nested = [(a, b) for a in names for b in names if a != b and b.startswith(a + ".")]
    if nested:
        problems.append(f"sites {nested[0][0]!r} and {nested[0][1]!r} are nested")
    if problems:
        raise ValueError("; ".join(problems))
    for name in names:  # before any is replaced: a refused site leaves the model as it was
        check_site(name, model.get_submodule(name))
    sites: dict[str, SeedSite] = {}
    for name in names:
        parent, child_name, child = split_name(model, name)
        site = SeedSite(child, name)
        setattr(parent, child_name, site)
        sites[name] = site
    return sites


def module_placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a site's parameters live (CPU fp32 for a parameter-free module)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32
