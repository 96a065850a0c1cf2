"""The blueprint library, blueprint by blueprint and site kind by site kind (real torch).

Every built-in blueprint, on every kind of site it fits: the seed's output is shaped like
the site's and exactly zero at birth, it can learn from zero, the same generator gives the
same bytes (and the global RNG is never touched), and the catalogue fetches it without a
fallback. Misfits are one-line refusals naming the blueprint and the site.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from kasmina.catalogue import Catalogue, seed_generator
from kasmina.catalogue.blueprints import default_blueprints
from kasmina.catalogue.sites import Probe, SiteInfo, describe

import transformers  # noqa: E402,F401 - the dev extra: a missing install fails, never skips


class _MLPBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.tanh(self.fc(x))


class _ConvBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x)


def _probed(name: str, module: nn.Module, x: Tensor) -> tuple[SiteInfo, Tensor]:
    """The site described as the executor describes it after its first real forward."""
    with torch.no_grad():
        out = module(x)
    out = out[0] if isinstance(out, tuple) else out
    probe = Probe(tuple(x.shape[1:]), tuple(out.shape[1:]), str(x.dtype).removeprefix("torch."),
                  str(out.dtype).removeprefix("torch."))
    return describe(name, module, probe), out


def _sites() -> list[tuple[str, SiteInfo, Tensor, Tensor]]:
    from transformers.pytorch_utils import Conv1D

    g = torch.Generator().manual_seed(0)
    made = {
        "linear": (nn.Linear(6, 5), torch.randn(3, 6, generator=g)),
        "linear_square_btd": (nn.Linear(8, 8), torch.randn(2, 7, 8, generator=g)),
        "hf_conv1d": (Conv1D(12, 8), torch.randn(2, 7, 8, generator=g)),
        "embedding": (nn.Embedding(20, 8), torch.randint(0, 20, (2, 7), generator=g)),
        "conv1d_k1": (nn.Conv1d(4, 6, 1), torch.randn(2, 4, 9, generator=g)),
        "conv1d_k3": (nn.Conv1d(4, 4, 3, padding=1), torch.randn(2, 4, 9, generator=g)),
        "conv2d_3x3": (nn.Conv2d(3, 8, 3, padding=1), torch.randn(2, 3, 8, 8, generator=g)),
        "conv2d_stride2": (nn.Conv2d(3, 8, 7, stride=2, padding=3), torch.randn(2, 3, 9, 9, generator=g)),
        "conv2d_1x1": (nn.Conv2d(8, 8, 1), torch.randn(2, 8, 5, 5, generator=g)),
        "block_bchw": (_ConvBlock(8), torch.randn(2, 8, 6, 6, generator=g)),
        "block_btd": (_MLPBlock(8), torch.randn(2, 5, 8, generator=g)),
        "block_bd": (_MLPBlock(8), torch.randn(4, 8, generator=g)),
    }
    out = []
    for name, (module, x) in made.items():
        info, y = _probed(name, module, x)
        out.append((name, info, x, y))
    return out


SITES = _sites()
CASES = [(bp.blueprint_id, name, info, x, y) for bp in default_blueprints() for name, info, x, y in SITES
         if bp.misfit(info) is None]


def test_every_blueprint_fits_some_site_and_every_site_kind_is_served() -> None:
    ids = {bp.blueprint_id for bp in default_blueprints()}
    assert ids == {"lora", "conv_light", "conv_heavy", "attention", "mlp", "norm", "conv_adapter",
                   "bottleneck_mlp", "zero_linear"}
    assert {case[0] for case in CASES} == ids
    assert {case[2].kind.value for case in CASES} == {"linear", "hf_conv1d", "embedding", "conv1d", "conv2d", "block"}
    zero = {case[1] for case in CASES if case[0] == "zero_linear"}
    assert zero == {name for name, *_ in SITES}  # the fallback fits every site


@pytest.mark.parametrize("blueprint_id, name, info, x, y", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_seed_is_zero_at_birth_shaped_like_the_site_and_learns(blueprint_id: str, name: str, info: SiteInfo,
                                                                 x: Tensor, y: Tensor) -> None:
    blueprint = next(bp for bp in default_blueprints() if bp.blueprint_id == blueprint_id)
    rng_before = torch.random.get_rng_state()
    seed = blueprint.build(info, seed_generator(0, name, 1))
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is never drawn from
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in seed.parameters())
    out = seed(x)
    assert out.shape == y.shape and out.dtype == y.dtype
    assert torch.equal(out, torch.zeros_like(out)), "not function-preserving at birth"
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    ((out - target) ** 2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in seed.parameters()), "cannot learn from zero"


@pytest.mark.parametrize("blueprint_id, name, info, x, y", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_same_generator_same_bytes_and_fetched_without_fallback(blueprint_id: str, name: str, info: SiteInfo,
                                                                 x: Tensor, y: Tensor) -> None:
    catalogue = Catalogue()
    first = catalogue.fetch(blueprint_id, info, generator=seed_generator(0, name, 1))
    again = catalogue.fetch(blueprint_id, info, generator=seed_generator(0, name, 1))
    other = catalogue.fetch(blueprint_id, info, generator=seed_generator(0, name, 2))
    assert not first.fallback_used and first.blueprint_id_used == blueprint_id and again.cache_hit
    assert first.checksum == catalogue.checksum(blueprint_id)
    a, b, c = ([t.detach() for t in r.module.state_dict().values()] for r in (first, again, other))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    drawn = [(p, q) for p, q in zip(a, c) if p.numel() and p.abs().sum() > 0]
    if drawn:  # a seed with random weights draws them from its own generator
        assert any(not torch.equal(p, q) for p, q in drawn)


def _info(name: str) -> SiteInfo:
    return next(info for n, info, *_ in SITES if n == name)


@pytest.mark.parametrize("blueprint_id, site, parameters, needle", [
    ("attention", "block_btd", {"heads": 3}, "divisible"),
    ("lora", "conv2d_3x3", {}, "kernel"),
    ("conv_light", "linear", {}, "conv_light"),
    ("norm", "linear", {}, "norm"),
    ("attention", "block_bchw", {}, "attention"),
])
def test_misfits_are_one_line_naming_blueprint_and_site(blueprint_id: str, site: str, parameters: dict[str, float],
                                                        needle: str) -> None:
    reason = Catalogue().misfit(blueprint_id, _info(site), parameters)
    assert reason is not None and "\n" not in reason
    assert repr(blueprint_id) in reason and repr(site) in reason and needle in reason


def test_a_block_is_refused_until_its_first_forward_describes_it() -> None:
    unprobed = describe("block", _MLPBlock(8))
    for bp in [bp for bp in default_blueprints() if "block" in {k.value for k in bp.kinds}]:
        reason = bp.misfit(unprobed)
        assert reason is not None and "first forward" in reason, (bp.blueprint_id, reason)
    linear = describe("head", nn.Linear(8, 8))
    assert "not probed" in (Catalogue().misfit("attention", linear) or "") or \
        "first forward" in (Catalogue().misfit("attention", linear) or "")


def test_attention_is_causal_by_default_on_a_causal_lm() -> None:
    info, _ = _probed("h", _MLPBlock(8), torch.randn(2, 6, 8))
    causal = SiteInfo(info.name, info.kind, info.module, info.in_features, info.out_features, info.probe, True)
    catalogue = Catalogue()
    seed = catalogue.fetch("attention", causal, generator=seed_generator(0, "h", 1)).module
    with torch.no_grad():
        for p in seed.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    x = torch.randn(1, 6, 8)
    changed = x.clone()
    changed[:, -1] += 10.0  # the future: a causal branch's earlier positions must not see it
    assert torch.allclose(seed(x)[:, :-1], seed(changed)[:, :-1], atol=1e-6)
    assert not torch.allclose(seed(x)[:, -1], seed(changed)[:, -1])


def test_kasmina_blueprints_lists_every_id_with_its_kinds(tmp_path: Path) -> None:
    done = subprocess.run([str(Path(sys.executable).with_name("kasmina")), "blueprints", "--json"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listed: dict[str, Any] = {b["id"]: b for b in json.loads(done.stdout)["blueprints"]}
    catalogue = Catalogue()
    assert set(listed) == set(catalogue.names())
    for bp in default_blueprints():
        entry = listed[bp.blueprint_id]
        assert set(entry["kinds"]) == {k.value for k in bp.kinds}
        assert entry["version"] == bp.version and entry["checksum"] == catalogue.checksum(bp.blueprint_id)
        assert {k: (v["low"], v["high"]) for k, v in entry["parameters"].items()} == dict(bp.parameter_bounds)
    assert listed["zero_linear"]["fallback"] is True and listed["lora"]["default_blend"] == "RESIDUAL"
    table = subprocess.run([str(Path(sys.executable).with_name("kasmina")), "blueprints"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert table.returncode == 0 and "conv_heavy" in table.stdout


@pytest.mark.parametrize("name", [n for n, *_ in SITES])
def test_example_input_is_a_fixed_batch_shaped_like_the_site_input(name: str) -> None:
    info = _info(name)
    catalogue = Catalogue()
    rng_before = torch.random.get_rng_state()
    for bp in [bp for bp in default_blueprints() if bp.takes_info and bp.misfit(info) is None]:
        example = catalogue.example_input(bp.blueprint_id, info, 3)
        assert example is not None and tuple(example.shape) == (3, *info.in_shape), bp.blueprint_id
        assert torch.equal(example, catalogue.example_input(bp.blueprint_id, info, 3))  # own fixed generator
        if info.kind.value == "embedding":
            assert example.dtype == torch.int64 and 0 <= int(example.min()) and int(example.max()) < 20
        else:
            assert example.dtype == torch.float32
        seed = bp.build(info, seed_generator(0, name, 1))
        assert tuple(seed(example).shape) == (3, *info.out_shape)  # pre-warm can run the seed on it
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    unprobed = describe("conv", nn.Conv2d(3, 8, 3, padding=1))
    assert catalogue.example_input("conv_light", unprobed, 3) is None  # H, W unknown before a forward


def test_parameters_shape_the_seed() -> None:
    catalogue = Catalogue()
    fetch = lambda bp, site, **p: catalogue.fetch(bp, _info(site), generator=seed_generator(0, site, 1),  # noqa: E731
                                                  parameters=p).module
    lora = fetch("lora", "linear", rank=4, alpha=8)
    assert lora.down.out_features == 4 and lora.scale == 2.0  # alpha / rank, as PEFT
    with torch.no_grad():
        lora.up.weight.fill_(1.0)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(lora(x), 2.0 * lora.up(lora.down(x)))
    assert fetch("lora", "linear").scale == 1.0  # alpha defaults to rank
    assert fetch("conv_heavy", "conv2d_3x3").conv1.out_channels == 8  # min(out, 64)
    assert fetch("conv_heavy", "conv2d_3x3", width=5).conv1.out_channels == 5
    assert fetch("mlp", "block_bd").down.out_features == 32  # 4 * D_in
    assert fetch("mlp", "block_bd", hidden=7).down.out_features == 7


def test_two_conv1d_sites_of_different_sizes_never_share_a_cache_entry() -> None:
    """transformers' Conv1D has an empty extra_repr: its signature must still tell sizes apart,
    or the second fetch would skip the fit check that refuses it."""
    from transformers.pytorch_utils import Conv1D

    catalogue = Catalogue()
    square = catalogue.fetch("norm", describe("a", Conv1D(8, 8)), generator=seed_generator(0, "a", 1))
    assert not square.fallback_used
    narrow = catalogue.fetch("norm", describe("b", Conv1D(4, 8)), generator=seed_generator(0, "b", 1))
    assert narrow.fallback_used and narrow.reason == "unsupported_site" and not narrow.cache_hit
    assert catalogue.stats()["failures"] == {"unsupported_site": 1}
