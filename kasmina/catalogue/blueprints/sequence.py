"""Seeds for activations with features on the last dim: (B, T, D) sequences and (B, D) rows.

``attention`` mixes positions (a sequence site only, known from its first forward);
``mlp`` maps each position's features. Both end in a zero layer, so they are exactly zero
at birth and learn a delta beside the site.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kasmina.catalogue.blueprints.base import fitted, library_blueprint
from kasmina.catalogue.blueprints.geometry import DENSE, features_last, int_param, shape_text
from kasmina.catalogue.blueprints.layers import SeedLinear, fill_kaiming, fill_zero, gelu_mlp
from kasmina.catalogue.sites import SiteInfo, SiteKind

__all__ = ["SelfAttention", "ATTENTION", "MLP", "build_attention", "build_mlp"]

SEQUENCE_KINDS = frozenset({*DENSE, SiteKind.BLOCK})


def fits_features_last(info: SiteInfo) -> str | None:
    if features_last(info):
        return None
    return f"its activations are {shape_text(info)}; it needs features on the last dim, (B, T, D) or (B, D)"


# -- attention --------------------------------------------------------------------------------

DEFAULT_HEADS = 2


class SelfAttention(nn.Module):
    """Multi-head self-attention over T: fused q/k/v projection, SDPA, output projection."""

    def __init__(self, qkv: nn.Linear, out: nn.Linear, heads: int, causal: bool) -> None:
        super().__init__()
        self.qkv = qkv
        self.out = out
        self.heads = heads
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(b, t, -1))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, causal={self.causal}"


def fits_attention(info: SiteInfo, heads: float = DEFAULT_HEADS, **_: float) -> str | None:
    """(B, T, D) activations, known from the first forward, and D divisible by ``heads``."""
    reason = fits_features_last(info)
    if reason is not None:
        return reason
    if info.probe is None:
        return "not probed yet: run one forward first (attention needs to see (B, T, D) activations)"
    if len(info.probe.in_shape) != 2 or len(info.probe.out_shape) != 2:
        return f"its activations are {shape_text(info)}, not (B, T, D)"
    width = int(info.in_features)  # type: ignore[arg-type]
    if width % int(heads):
        return f"its width {width} is not divisible by heads={int(heads)}"
    return None


def build_attention(site: nn.Module | SiteInfo, generator: torch.Generator, *, heads: float = DEFAULT_HEADS,
                    causal: float | None = None) -> nn.Module:
    """q/k/v (D_in -> D_in each, one fused Linear) -> SDPA -> output projection D_in -> D_out (zero).

    ``causal`` defaults to the site's host (a causal LM masks the future); the q/k/v weights
    are U(-1/sqrt(D_in), 1/sqrt(D_in)), every bias zero.
    """
    n_heads = int_param("heads", heads)
    info = fitted(site, "attention", SEQUENCE_KINDS, fits_attention, heads=n_heads)
    is_causal = info.causal if causal is None else bool(int_param("causal", causal))
    d_in, d_out = int(info.in_features), int(info.out_features)  # type: ignore[arg-type]
    qkv = SeedLinear(d_in, 3 * d_in, bias=True)
    out = SeedLinear(d_in, d_out, bias=True)
    fill_kaiming(qkv.weight, generator)
    fill_zero(qkv.bias, out.weight, out.bias)
    return SelfAttention(qkv, out, n_heads, is_causal)


ATTENTION = library_blueprint(
    "attention",
    "(B, T, D) sites: multi-head self-attention (SDPA, causal for causal LMs), zero output projection",
    build_attention, kinds=SEQUENCE_KINDS, fits=fits_attention,
    bounds={"heads": (1, 64), "causal": (0, 1)}, integers={"heads", "causal"},
)


# -- mlp --------------------------------------------------------------------------------------

#: ``mlp``'s hidden width defaults to 4 D_in (a transformer's MLP), capped here.
MAX_DEFAULT_HIDDEN = 1024


def build_mlp(site: nn.Module | SiteInfo, generator: torch.Generator, *, hidden: float | None = None) -> nn.Module:
    """Linear(D_in, hidden) -> GELU -> Linear(hidden, D_out), the second layer zero."""
    info = fitted(site, "mlp", SEQUENCE_KINDS, fits_features_last)
    d_in, d_out = int(info.in_features), int(info.out_features)  # type: ignore[arg-type]
    width = min(4 * d_in, MAX_DEFAULT_HIDDEN) if hidden is None else int_param("hidden", hidden)
    return gelu_mlp(d_in, width, d_out, generator)


MLP = library_blueprint(
    "mlp",
    "(B, T, D) and (B, D) sites: D_in -> hidden -> GELU -> D_out, second layer zero (hidden: 4 D_in, <= 1024)",
    build_mlp, kinds=SEQUENCE_KINDS, fits=fits_features_last,
    bounds={"hidden": (1, 16384)}, integers={"hidden"},
)
