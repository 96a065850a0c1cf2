"""Executor overhead on real architectures: Hugging Face's ResNet-18 and a tiny GPT-2.

Both models get seeds in BLENDING at four sites (the library blueprints, several blend
modes). A training step of the model Kasmina wraps (``model(**batch).loss``, backward,
optimizer step, ``Executor.step()``) is timed against the same host with the same seed
modules wired in by hand: each site replaced by a module that runs the host layer, the
seed on the detached input, and :func:`kasmina.kernels.blend.blend` with the host's share
of the gradient, no executor at all. Rounds are interleaved and the medians compared
(budget <= 1.05x). Also timed: one counterfactual measurement (the probe batch with the
seed and without it, under ``inference_mode``), the cost each G4 evaluation adds.

Random weights from configs, nothing downloaded; transformers is needed (the dev extra).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from kasmina.bench.executor import interleaved, median_ms, timed

SECRET = b"bench-secret"
STEP_BUDGET = 1.05
MODELS = ("resnet18", "gpt2-tiny")


def _resnet18() -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2],
                                                     hidden_sizes=[64, 128, 256, 512], num_labels=10))


def _gpt2_tiny() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256, n_positions=128))


#: model -> (builder, batch maker, {site: (blueprint, parameters, annotations)}).
_SPECS: dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Generator, torch.device], dict[str, Tensor]],
                        dict[str, tuple[str, dict[str, float], dict[str, str]]]]] = {
    "resnet18": (
        _resnet18,
        lambda g, d: {"pixel_values": torch.randn(16, 3, 64, 64, generator=g).to(d),
                      "labels": torch.randint(0, 10, (16,), generator=g).to(d)},
        {"resnet.embedder.embedder.convolution": ("conv_light", {}, {"blend_mode": "RESIDUAL"}),
         "resnet.encoder.stages.0.layers.1": ("conv_heavy", {"width": 32}, {"blend_mode": "CONVEX"}),
         "resnet.encoder.stages.2.layers.1": ("norm", {}, {"blend_mode": "CONFIDENCE"}),
         "classifier.1": ("mlp", {"hidden": 64}, {"blend_mode": "CHANNEL", "alpha_vec": ",".join(["0.5"] * 10)})},
    ),
    "gpt2-tiny": (
        _gpt2_tiny,
        lambda g, d: (lambda ids: {"input_ids": ids, "labels": ids})(torch.randint(0, 256, (16, 128), generator=g).to(d)),
        {"transformer.wte": ("lora", {"rank": 8}, {}),
         "transformer.h.0.mlp.c_fc": ("mlp", {"hidden": 64}, {"blend_mode": "RESIDUAL"}),
         "transformer.h.1": ("attention", {"heads": 2}, {"blend_mode": "CONFIDENCE"}),
         "lm_head": ("lora", {"rank": 8}, {"blend_mode": "CHANNEL", "alpha_vec": ",".join(["0.5"] * 256)})},
    ),
}


class _HandWired(nn.Module):
    """One site with its seed wired in by hand: the math the executor's BLENDING site runs."""

    def __init__(self, host: nn.Module, seed: nn.Module, alpha: float, config: Any, channel_dim: int) -> None:
        super().__init__()
        self.host, self.seed, self.config, self.channel_dim = host, seed, config, channel_dim
        self.register_buffer("alpha", torch.tensor(alpha))

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        from kasmina.kernels.blend import blend

        out = self.host(x, *args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        mixed = blend(hidden, self.seed(x.detach()), self.alpha, self.config, detach_host=False,
                      channel_dim=self.channel_dim)
        return (mixed, *out[1:]) if isinstance(out, tuple) else mixed


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def step_overhead(model_name: str, *, device: str = "cpu", repeats: int = 30, warmup: int = 5) -> dict[str, Any]:
    """Wrapped vs hand-wired training step with seeds blending at four sites, and the probe cost."""
    import kasmina
    from kasmina import commands
    from kasmina.security import sign
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if model_name not in _SPECS:
        raise ValueError(f"unknown model {model_name!r}; choose from {', '.join(MODELS)}")
    build, batch_of, seeds = _SPECS[model_name]
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)  # see kasmina.bench.executor.step_overhead: a shared VM swings otherwise
    try:
        torch.manual_seed(0)
        model = build().to(dev)
        plain = copy.deepcopy(model)
        g = torch.Generator().manual_seed(0)
        batch = batch_of(g, dev)
        with tempfile.TemporaryDirectory() as tmp:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            ex = kasmina.Executor(model, sites=list(seeds), db=f"sqlite:///{Path(tmp) / 'bench.db'}", secret=SECRET,
                                  optimizer=opt)

            def wrapped_step() -> None:
                loss = model(**batch).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                ex.step(metrics={"val_loss": 1.0})

            wrapped_step()  # the first forward describes the block sites
            long = {"germinated_steps": 1, "training_steps": 1, "blend_steps": 1_000_000}
            for site, (blueprint, params, annotations) in seeds.items():
                result = ex.handle(sign(commands.germinate(site, blueprint, parameters={**long, **params},
                                                           annotations=annotations), SECRET))
                if not result.accepted:
                    raise RuntimeError(f"germination at {site} refused: {result}")
            for _ in range(3):
                wrapped_step()
            stages = {site: ex.seed(site).stage for site in seeds}
            if set(stages.values()) != {"BLENDING"}:
                raise RuntimeError(f"seeds did not reach BLENDING: {stages}")
            for site in seeds:
                live = ex.sites[site]
                _set(plain, site, _HandWired(plain.get_submodule(site), live.seed, float(live.alpha),
                                             live.config, live.channel_dim))
            plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-4)

            def wired_step() -> None:
                loss = plain(**batch).loss
                plain_opt.zero_grad(set_to_none=True)
                loss.backward()
                plain_opt.step()

            wrapped, wired = interleaved(wrapped_step, wired_step, dev, repeats=repeats, warmup=warmup)
            site = next(iter(seeds))
            probes = [timed(lambda: ex.counterfactual.measure(
                ex.sites[site], lambda fn: ex.run_probe(site, fn)).read(), dev) for _ in range(max(5, repeats // 3))]
            ex.close()
    finally:
        torch.set_num_threads(threads)
    ratio = statistics.median(wrapped) / statistics.median(wired)
    return {"model": model_name, "device": device, "sites": list(seeds), "batch": {k: list(v.shape) for k, v in batch.items()},
            "wrapped_ms": round(median_ms(wrapped), 3), "hand_wired_ms": round(median_ms(wired), 3),
            "ratio": round(ratio, 4), "budget": STEP_BUDGET, "ok": ratio <= STEP_BUDGET,
            "counterfactual_ms": round(median_ms(probes), 3),
            "counterfactual_vs_step": round(statistics.median(probes) / statistics.median(wrapped), 3)}


def run(models: list[str], *, device: str = "cpu", repeats: int = 30) -> list[dict[str, Any]]:
    return [step_overhead(name, device=device, repeats=repeats) for name in models]


def summary_line(result: dict[str, Any]) -> str:
    flag = "ok" if result["ok"] else "OVER"
    return (f"bench executor {result['model']} ({result['device']}, seeds blending at {len(result['sites'])} sites): "
            f"step {result['wrapped_ms']:.1f} ms vs hand-wired {result['hand_wired_ms']:.1f} ms = "
            f"{result['ratio']:.3f}x ({flag} <= {result['budget']}x); counterfactual per gate "
            f"{result['counterfactual_ms']:.1f} ms ({result['counterfactual_vs_step']:.2f} steps)")
