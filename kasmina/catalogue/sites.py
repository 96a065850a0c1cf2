"""What a seed site is: its kind, its channels and, once seen, its activation shapes.

A site is any submodule a seed grows beside. The executor describes each site once, when
it is built (:func:`check_site` refuses what no blueprint can serve, in one line), and again
after the site's first real forward, whose shapes it records (:class:`Probe`): a block (a
ResNet ``BasicBlock``, a ``GPT2Block``) cannot say from its attributes what its activations
look like, nor can a conv say its spatial size. Blueprints read a :class:`SiteInfo`; G0
refuses a blueprint whose :func:`~kasmina.catalogue.blueprints.Blueprint.misfit` is not
``None``.

Layouts: a conv's activations carry channels on dim 1 ((B, C, L) or (B, C, H, W)); every
other site (Linear, transformers' ``Conv1D``, Embedding, and blocks with 2-D or 3-D
activations) carries its features on the last dim ((B, D) or (B, T, D)). A 4-D block is
(B, C, H, W). That dim is what CHANNEL blends over and what CONFIDENCE takes its margin over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from kasmina.errors import KasminaError

__all__ = ["SiteKind", "SiteInfo", "Probe", "UnsupportedSite", "check_site", "describe", "kind_of",
           "is_hf_conv1d", "SUPPORTED"]


class SiteKind(str, Enum):
    """The kinds of site Kasmina serves; the value is what events, listings and errors show."""

    LINEAR = "linear"
    CONV1D = "conv1d"
    CONV2D = "conv2d"
    HF_CONV1D = "hf_conv1d"      # transformers.pytorch_utils.Conv1D (GPT-2's projections)
    EMBEDDING = "embedding"
    BLOCK = "block"              # any module whose output is shaped like its input

    def __str__(self) -> str:
        return self.value


#: One line for refusals: what a site may be.
SUPPORTED = ("nn.Linear, nn.Conv1d, nn.Conv2d, transformers Conv1D, nn.Embedding, or a block "
             "(a module with parameters whose output is shaped like its input)")


class UnsupportedSite(KasminaError):
    """No blueprint can serve this site; the message is one line naming it and its type."""


@dataclass(frozen=True, slots=True)
class Probe:
    """Shapes (batch dim dropped) and dtype of a site's first real forward."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_dtype: str
    out_dtype: str

    def to_dict(self) -> dict[str, Any]:
        """As the log records it (in the ``kernel_attached`` event of the seed it fitted)."""
        return {"in_shape": list(self.in_shape), "out_shape": list(self.out_shape), "in_dtype": self.in_dtype,
                "out_dtype": self.out_dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Probe | None:
        """The recorded shapes, or None when the record holds none (logs before they were kept)."""
        if not isinstance(data, Mapping):
            return None
        try:
            return cls(tuple(int(d) for d in data["in_shape"]), tuple(int(d) for d in data["out_shape"]),
                       str(data["in_dtype"]), str(data["out_dtype"]))
        except (KeyError, TypeError, ValueError):
            return None


def is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (a Linear with a transposed weight), without importing transformers."""
    cls = type(module)
    return (cls.__name__ == "Conv1D" and cls.__module__.split(".")[0] == "transformers"
            and isinstance(getattr(module, "weight", None), nn.Parameter) and module.weight.dim() == 2)


#: Modules that can never be sites, with the reason (checked before the general rules).
_NEVER: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ModuleList, "a container without a forward"),
    (nn.ModuleDict, "a container without a forward"),
    (nn.ParameterList, "a container without a forward"),
    (nn.ParameterDict, "a container without a forward"),
    (nn.RNNBase, "recurrent modules are not supported"),
    (nn.EmbeddingBag, "EmbeddingBag is not supported"),
    (nn.modules.conv._ConvTransposeNd, "transposed convolutions are not supported"),
    (nn.Conv3d, "3-D convolutions are not supported"),
)


def kind_of(module: nn.Module) -> SiteKind:
    """The site kind of ``module``, or :class:`UnsupportedSite` with the reason."""
    for cls, why in _NEVER:
        if isinstance(module, cls):
            raise UnsupportedSite(why)
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        raise UnsupportedSite("a lazy module whose parameters are not initialised yet (run one forward first)")
    if isinstance(module, nn.Linear):
        return SiteKind.LINEAR
    if isinstance(module, nn.Conv2d):
        return SiteKind.CONV2D
    if isinstance(module, nn.Conv1d):
        return SiteKind.CONV1D
    if isinstance(module, nn.Embedding):
        return SiteKind.EMBEDDING
    if is_hf_conv1d(module):
        return SiteKind.HF_CONV1D
    if next(module.parameters(), None) is None:
        raise UnsupportedSite("a module without parameters (an activation, dropout, pooling or identity)")
    return SiteKind.BLOCK


def check_site(name: str, module: nn.Module) -> SiteKind:
    """:func:`kind_of`, with the one-line refusal naming the site, its type and what is supported."""
    try:
        return kind_of(module)
    except UnsupportedSite as e:
        raise UnsupportedSite(f"site {name!r} ({type(module).__name__}) cannot hold a seed: {e}; "
                              f"a site must be {SUPPORTED}") from None


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """What a blueprint is told about the site it grafts onto.

    ``in_features`` / ``out_features`` are the input and output channels (features, or for an
    Embedding its vocabulary and width); for a block they are known only once probed.
    ``probe`` holds the first real forward's shapes, ``None`` before it.
    """

    name: str
    kind: SiteKind
    module: nn.Module = field(compare=False, repr=False)
    in_features: int | None
    out_features: int | None
    probe: Probe | None = None
    #: The host is a causal language model: sequence blueprints mask the future by default.
    causal: bool = False

    @property
    def in_shape(self) -> tuple[int, ...] | None:
        return self.probe.in_shape if self.probe is not None else None

    @property
    def out_shape(self) -> tuple[int, ...] | None:
        return self.probe.out_shape if self.probe is not None else None

    @property
    def out_ndim(self) -> int | None:
        """Dims of the output activation, batch included (None until known)."""
        if self.probe is not None:
            return len(self.probe.out_shape) + 1
        if self.kind is SiteKind.CONV2D:
            return 4
        if self.kind is SiteKind.CONV1D:
            return 3
        return None

    @property
    def channels_first(self) -> bool:
        """Channels on dim 1 (convs, 4-D blocks); otherwise features are the last dim."""
        if self.kind in (SiteKind.CONV1D, SiteKind.CONV2D):
            return True
        return self.kind is SiteKind.BLOCK and self.out_ndim == 4

    @property
    def channel_dim(self) -> int:
        """The dim CHANNEL blends over and CONFIDENCE takes its margin over: 1 or -1."""
        return 1 if self.channels_first else -1

    @property
    def layout(self) -> str | None:
        """``BCHW``, ``BCL``, ``BTD`` or ``BD`` (None until the activation rank is known)."""
        nd = self.out_ndim
        if nd is None:
            return None
        if self.channels_first:
            return "BCHW" if nd == 4 else "BCL"
        return {2: "BD", 3: "BTD"}.get(nd, f"B{'x' * (nd - 2)}D")

    @property
    def shape_preserving(self) -> bool | None:
        """Output shaped like the input (None until probed, for kinds whose shapes can differ)."""
        if self.probe is not None:
            return self.probe.in_shape == self.probe.out_shape
        return None

    def problem(self) -> str | None:
        """Why no seed can be germinated here now, or None."""
        if self.kind is SiteKind.BLOCK:
            if self.probe is None:
                return (f"block site {self.name!r} is described by its first forward: "
                        "run one training step before germinating")
            if not self.shape_preserving:
                return (f"block site {self.name!r} gives {self.probe.out_shape} for an input of "
                        f"{self.probe.in_shape}: a block site must keep its input's shape")
            if self.layout not in ("BCHW", "BTD", "BD"):
                return f"block site {self.name!r} has {self.out_ndim}-D activations; supported: (B, C, H, W), (B, T, D), (B, D)"
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-ready: recorded with the seed's kernel and shown by ``kasmina blueprints``."""
        return {"site": self.name, "kind": self.kind.value, "layout": self.layout,
                "in_features": self.in_features, "out_features": self.out_features,
                "in_shape": list(self.in_shape) if self.in_shape is not None else None,
                "out_shape": list(self.out_shape) if self.out_shape is not None else None}


def _features(module: nn.Module, kind: SiteKind, probe: Probe | None) -> tuple[int | None, int | None]:
    if kind is SiteKind.LINEAR:
        return module.in_features, module.out_features  # type: ignore[return-value]
    if kind in (SiteKind.CONV1D, SiteKind.CONV2D):
        return module.in_channels, module.out_channels  # type: ignore[return-value]
    if kind is SiteKind.HF_CONV1D:
        weight = module.weight  # (in, out): transformers' Conv1D stores the transpose of Linear's
        return int(weight.shape[0]), int(weight.shape[1])  # type: ignore[union-attr]
    if kind is SiteKind.EMBEDDING:
        return module.num_embeddings, module.embedding_dim  # type: ignore[return-value]
    if probe is None or not probe.out_shape or not probe.in_shape:
        return None, None
    if len(probe.out_shape) == 3:  # (C, H, W)
        return probe.in_shape[0], probe.out_shape[0]
    return probe.in_shape[-1], probe.out_shape[-1]


def describe(name: str, module: nn.Module, probe: Probe | None = None, *, causal: bool = False) -> SiteInfo:
    """A :class:`SiteInfo` for ``module`` (raises :class:`UnsupportedSite` as :func:`check_site`)."""
    kind = check_site(name, module)
    fin, fout = _features(module, kind, probe)
    return SiteInfo(name, kind, module, fin, fout, probe, causal)
