"""The trainer integrations with the real libraries, on CPU: Lightning's ``Trainer`` and
transformers' ``Trainer`` each grow seeds to FOSSILIZED through their callback, and a run
SIGKILLed after a checkpoint, resumed from it in another process, ends exactly as an
uninterrupted run: the same stages at the same steps, the same final step, the same
decisions digest, the same weights bit for bit.

The training runs live in this module so that the killed run can be this file run as a
script (``python tests/test_integrations.py lightning|hf FOLDER --stall STEP``): it stalls
after the hooks of step ``STEP`` (one past a checkpoint, a seed germinated at that very
step) until the test kills it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kasmina
from kasmina import commands
from kasmina.errors import KasminaError
from kasmina.events import open_store
from kasmina.rebuild import decisions_digest
from kasmina.security import sign

import lightning.pytorch as pl  # noqa: E402 - the dev extra: a missing install fails, never skips
import transformers  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from kasmina.integrations.hf import STATE_FILE, KasminaTrainerCallback  # noqa: E402
from kasmina.integrations.lightning import KasminaCallback  # noqa: E402

hf_logging.set_verbosity_error()
for noisy in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
    logging.getLogger(noisy).setLevel(logging.ERROR)

SECRET = b"integrations-secret"
#: Dwell that moves a seed from germination to FOSSILIZED in 12 steps; the counterfactual is
#: recorded without gating on it (a few steps cannot make every seed help).
FAST = {"germinated_steps": 1, "training_steps": 3, "blend_steps": 4, "shadow_steps": 2, "probation_steps": 2,
        "contribution_threshold": -1.0}
STEPS = 24
EVERY = 4  # checkpoint interval: Lightning's epochs are 4 batches, so each checkpoint ends one
STALL = 9  # one past the checkpoint of step 8; the second seed is germinated at step 9


def policy(name: str) -> kasmina.MetricPolicy:
    """G4 on ``name`` with room for random-label noise, and a kernel-fetch budget (G2) a loaded
    CI machine cannot overrun: these tests are about the trainers, not those gates (a 10 ms
    budget culled a seed once when two test runs shared the 2 cores)."""
    return kasmina.MetricPolicy(name=name, tolerance=0.5, latency_budget_ms=10_000.0)


# -- Lightning --------------------------------------------------------------------------------
class Regressor(pl.LightningModule):
    """A small MLP on a fixed regression task, AdamW with a per-step learning-rate schedule."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        return [opt], [{"scheduler": schedule, "interval": "step"}]


def regression(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, x @ torch.linspace(-1, 1, 8).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g)


def regression_data() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*regression(4 * 16, 1)), batch_size=16,
                                       shuffle=False)


def probe() -> tuple[torch.Tensor, torch.Tensor]:
    """The counterfactual's batch: the LightningModule's forward, scored by ``F.mse_loss``."""
    return regression(32, 2)


def plan(sites: tuple[str, str], blueprints: tuple[str, str]) -> Any:
    """A controller: the first seed at step 2, the second at step ``STALL``."""
    def controller(step: int, ex: kasmina.Executor) -> list[Any]:
        for when, site, blueprint in ((2, sites[0], blueprints[0]), (STALL, sites[1], blueprints[1])):
            if step == when:
                return [sign(commands.germinate(site, blueprint, parameters=FAST), SECRET)]
        return []
    return controller


class Stall(pl.Callback):
    """Stops the killed run after the hooks of one step (the test SIGKILLs it there)."""

    def __init__(self, folder: Path, step: int) -> None:
        self.marker, self.step = folder / "stalled", step

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            self.marker.touch()
            time.sleep(600)


def lightning_callback(folder: Path, **kwargs: Any) -> KasminaCallback:
    return KasminaCallback(["net.0", "net.2"], db=f"sqlite:///{folder / 'run.db'}", secret=SECRET,
                           controller=plan(("net.0", "net.2"), ("lora", "zero_linear")),
                           metric=policy("train_loss"), probe=probe,
                           loss_fn=F.mse_loss, **kwargs)


def fit_lightning(folder: Path, *, stall: int | None = None, resume: str | None = None,
                  callback: KasminaCallback | None = None,
                  model: Regressor | None = None) -> tuple[Regressor, KasminaCallback]:
    model = model if model is not None else Regressor()
    callback = callback if callback is not None else lightning_callback(folder)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=folder / "ckpt", every_n_train_steps=EVERY, save_top_k=-1,
                                               filename="{step}")
    extra = [Stall(folder, stall)] if stall is not None else []
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback, *extra, checkpoints])
    trainer.fit(model, regression_data(), ckpt_path=resume)
    assert trainer.global_step == STEPS
    return model, callback


def fit_ddp(folder: Path, *, resume: str | None = None, **_: Any) -> None:
    """Two gloo ranks on the CPU (Lightning's ``ddp`` launcher runs this script again as rank
    1), with gradient clipping; each rank saves its final weights for the test to compare."""
    model = Regressor()
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=folder / "ckpt", every_n_train_steps=EVERY, save_top_k=-1,
                                               filename="{step}")  # 2 batches a rank: each ends an epoch
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                         callbacks=[lightning_callback(folder), checkpoints])
    trainer.fit(model, regression_data(), ckpt_path=resume)
    torch.save(model.state_dict(), folder / f"rank{trainer.global_rank}{'-resumed' if resume else ''}.pt")


# -- Hugging Face -----------------------------------------------------------------------------
class Tokens(torch.utils.data.Dataset):
    """Random token sequences, the same for every index on every run."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(index))
        return {"input_ids": ids, "labels": ids}


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                      bos_token_id=0, eos_token_id=0))


class HFStall(transformers.TrainerCallback):
    def __init__(self, folder: Path, step: int) -> None:
        self.marker, self.step = folder / "stalled", step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            self.marker.touch()
            time.sleep(600)


HF_SITES = ("transformer.h.0.mlp.c_fc", "transformer.h.0.attn.c_proj")


def hf_callback(folder: Path) -> KasminaTrainerCallback:
    return KasminaTrainerCallback(list(HF_SITES), db=f"sqlite:///{folder / 'run.db'}", secret=SECRET,
                                  controller=plan(HF_SITES, ("lora", "zero_linear")),
                                  metric=policy("loss"))


def train_hf(folder: Path, *, stall: int | None = None, resume: str | None = None,
             clip: float = 1.0) -> tuple[nn.Module, Any]:
    from transformers import Trainer, TrainingArguments

    model = gpt2()
    callback = hf_callback(folder)
    args = TrainingArguments(output_dir=str(folder / "out"), use_cpu=True, report_to=[], save_steps=EVERY,
                             max_steps=STEPS, logging_steps=1, per_device_train_batch_size=4, disable_tqdm=True,
                             learning_rate=1e-3, seed=0, max_grad_norm=clip)
    extra = [HFStall(folder, stall)] if stall is not None else []
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback, *extra])
    trainer.train(resume_from_checkpoint=resume)
    assert trainer.state.global_step == STEPS
    return model, callback


def train_hf_ddp(folder: Path, **_: Any) -> None:
    """One rank of a ``torchrun --nproc_per_node 2`` job; saves its weights, or the refusal
    it met with the Trainer's default clipping."""
    rank = int(os.environ["RANK"])
    (folder / "clipped").mkdir(exist_ok=True)
    try:
        train_hf(folder / "clipped", clip=1.0)
    except KasminaError as e:
        (folder / f"refused{rank}").write_text(str(e))
    model, _ = train_hf(folder, clip=0.0)
    torch.save(model.state_dict(), folder / f"rank{rank}.pt")


# -- what two runs are compared on --------------------------------------------------------------
def outcome(folder: Path) -> dict[str, Any]:
    """Each seed's stage and the step it entered it, the digest of the decisions, the last step."""
    url = f"sqlite:///{folder / 'run.db'}"
    state = kasmina.replay(url)
    with open_store(url) as store:
        digest = decisions_digest(store)
        closed = [e.data["step"] for e in store.read(stream_id="$executor") if e.type == "executor_closed"]
    return {"seeds": {k: (s.stage.name, s.stage_entered_step) for k, s in sorted(state.seeds.items())},
            "digest": digest, "last_step": closed[-1]}


def kill_when_stalled(kind: str, folder: Path, checkpoint: Path) -> int:
    """Run this file as a script that stalls at ``STALL``; SIGKILL it there, once the checkpoint exists."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    errors = folder / "stderr.txt"  # a file, not a pipe: a full pipe would stall the run too early
    with open(errors, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, __file__, kind, str(folder), "--stall", str(STALL)], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 180
    try:
        while not ((folder / "stalled").exists() and checkpoint.exists()):
            if proc.poll() is not None:
                raise AssertionError(f"the run to kill exited by itself ({proc.returncode}): "
                                     f"{errors.read_text(errors='replace')[-2000:]}")
            assert time.monotonic() < deadline, "the run to kill never reached its stall"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- Lightning tests ----------------------------------------------------------------------------
def test_lightning_grows_seeds_to_fossilized_in_step_with_the_trainer(tmp_path: Path) -> None:
    model, callback = fit_lightning(tmp_path)
    ex = callback.executor
    assert ex is not None and ex.step_count == STEPS
    assert [ex.seed(s).stage for s in ("net.0", "net.2")] == ["FOSSILIZED", "FOSSILIZED"]
    assert outcome(tmp_path)["seeds"] == {"net.0": ("FOSSILIZED", 14), "net.2": ("FOSSILIZED", 21)}
    # Each seed trains in a group of its own in the trainer's optimizer, at its host's rate.
    opt = model.trainer.optimizers[0]
    groups = {g.get("kasmina_seed"): g for g in opt.param_groups}
    assert set(groups) == {None, "net.0", "net.2"}
    assert {id(p) for p in groups["net.0"]["params"]} == {id(p) for p in ex.sites["net.0"].seed.parameters()}
    assert groups["net.0"]["lr"] == groups[None]["lr"] == pytest.approx(1e-2 * 0.5 ** (STEPS // 5))
    with open_store(f"sqlite:///{tmp_path / 'run.db'}") as store:
        assert store.runs()[0].status == "finished"


def test_lightning_checkpoint_keeps_the_host_alone_and_the_seeds_in_the_callback(tmp_path: Path) -> None:
    fit_lightning(tmp_path)
    saved = torch.load(tmp_path / "ckpt" / "step=12.ckpt", map_location="cpu", weights_only=False)
    assert saved["state_dict"].keys() == dormant_keys()
    assert all("kasmina_seed" not in g for g in saved["optimizer_states"][0]["param_groups"])
    assert len(saved["lr_schedulers"][0]["base_lrs"]) == len(saved["optimizer_states"][0]["param_groups"]) == 1
    state = saved["callbacks"]["KasminaCallback"]
    assert state["step"] == 12 and set(state["seeds"]) == {"net.0", "net.2"}
    assert set(state["optimizer"]) == {"seed:net.0", "seed:net.2"}


def dormant_keys() -> set[str]:
    """The state-dict keys of the module with dormant sites: what a host-only checkpoint holds."""
    model = Regressor()
    kasmina.Executor(model, sites=["net.0", "net.2"], db="memory://", secret=SECRET).close()
    return set(model.state_dict())


def test_lightning_killed_and_resumed_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    expected_model, _ = fit_lightning(whole)
    checkpoint = killed / "ckpt" / f"step={STALL - 1}.ckpt"
    assert kill_when_stalled("lightning", killed, checkpoint) == -signal.SIGKILL
    with open_store(f"sqlite:///{killed / 'run.db'}") as store:  # the log went on past the checkpoint
        assert {e.data.get("step") for e in store.read(stream_id="net.2")} == {STALL, None}  # germinated
    model, callback = fit_lightning(killed, resume=str(checkpoint))
    assert callback.executor is not None and callback.executor.step_count == STEPS
    assert outcome(killed) == outcome(whole)
    assert same_weights(model, expected_model)


def two_ranks(command: list[str], folder: Path, sites: tuple[str, str], suffix: str = "") -> list[dict[str, Any]]:
    """Run a two-rank job; rank 0 decided and wrote, rank 1 followed: both replicas, seeds
    included (which DDP does not reduce: they are grafted after it wrapped the model), end bit
    for bit equal, and the log holds each decision once. Returns both ranks' weights."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([*command, str(folder)], env=env, capture_output=True, timeout=300)
    errors = done.stderr.decode(errors="replace")
    assert done.returncode == 0, "\n".join(line for line in errors.splitlines() if "Error" in line)[-3000:]
    ranks = [torch.load(folder / f"rank{r}{suffix}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and any(".seed." in k for k in ranks[0])
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    result = outcome(folder)
    assert result["seeds"] == {sites[0]: ("FOSSILIZED", 14), sites[1]: ("FOSSILIZED", 21)}
    assert result["last_step"] == STEPS
    with open_store(f"sqlite:///{folder / 'run.db'}") as store:
        moves = [(e.data["to_stage"], e.data["step"]) for e in store.read(stream_id=sites[0])
                 if e.type == "stage_changed"]
    assert moves == [("DORMANT", 2), ("GERMINATED", 2), ("TRAINING", 3), ("BLENDING", 6), ("SHADOWING", 10),
                     ("PROBATIONARY", 12), ("FOSSILIZED", 14)]
    return ranks


@pytest.mark.slow
def test_lightning_ddp_ranks_follow_one_log_keep_equal_seeds_and_resume_exactly(tmp_path: Path) -> None:
    """Lightning's ``ddp`` on two gloo ranks, with gradient clipping (after the seeds' averaging);
    then both ranks resume from the checkpoint of step 12 and re-execute to the same weights."""
    sites = ("net.0", "net.2")
    first = two_ranks([sys.executable, __file__, "ddp"], tmp_path, sites)
    digest = outcome(tmp_path)["digest"]
    resumed = two_ranks([sys.executable, __file__, "ddp", "--resume", str(tmp_path / "ckpt" / "step=12.ckpt")],
                        tmp_path, sites, "-resumed")
    assert outcome(tmp_path)["digest"] == digest  # steps 13 to 24 followed the log: nothing decided twice
    assert all(torch.equal(first[0][k], resumed[0][k]) for k in first[0])


def test_lightning_takes_an_executor_given_and_steps_once_per_optimizer_step(tmp_path: Path) -> None:
    """An executor built on a submodule, a seed grafted before the trainer's optimizer existed,
    two batches per optimizer step; then the refusals around it."""
    url = f"sqlite:///{tmp_path / 'given.db'}"
    model = Regressor()
    ex = kasmina.Executor(model.net, sites=["0"], db=url, secret=SECRET, probe=probe, loss_fn=F.mse_loss,
                          metric=policy("train_loss"))
    assert ex.handle(sign(commands.germinate("0", "lora", parameters=FAST), SECRET)).accepted
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=EVERY, save_top_k=-1,
                                               filename="{step}")
    trainer = pl.Trainer(max_steps=16, accumulate_grad_batches=2, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[KasminaCallback(executor=ex), checkpoints])
    trainer.fit(model, regression_data())
    assert ex.step_count == trainer.global_step == 16 and ex.seed("0").stage == "FOSSILIZED"
    # The seed left the host group model.parameters() put it in, for a group of its own.
    seed = {id(p) for p in ex.sites["0"].seed.parameters()}
    owners = [g.get("kasmina_seed") for g in trainer.optimizers[0].param_groups if seed & {id(p) for p in g["params"]}]
    assert owners == ["0"]
    saved = torch.load(tmp_path / "ckpt" / "step=8.ckpt", map_location="cpu", weights_only=False)
    assert not [k for k in saved["state_dict"] if ".seed." in k]  # net.0.seed.*: under the submodule's prefix
    assert set(saved["callbacks"]["KasminaCallback"]["seeds"]) == {"0"}
    ex.close()

    def refused(callback: KasminaCallback, resume: str | None = None, model: Regressor | None = None) -> str:
        with pytest.raises(KasminaError) as raised:
            fit_lightning(tmp_path, callback=callback, resume=resume, model=model)
        assert "\n" not in str(raised.value)
        return str(raised.value)

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    given = kasmina.Executor(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)), sites=["0"], db=fresh,
                             secret=SECRET)
    assert "the executor given was built on a model that is not (part of) the trainer's" in refused(
        KasminaCallback(executor=given))
    checkpoint = str(tmp_path / "ckpt" / "step=8.ckpt")
    again = Regressor()
    assert "needs the callback to build its executor" in refused(
        KasminaCallback(executor=kasmina.Executor(again.net, sites=["0"], db=fresh, secret=SECRET)), checkpoint, again)
    assert "does not belong to the log at" in refused(
        KasminaCallback(["net.0"], db=f"sqlite:///{tmp_path / 'other.db'}", secret=SECRET), checkpoint)
    assert "already holds" in refused(KasminaCallback(["net.0"], db=url, secret=SECRET))


# -- Hugging Face tests -------------------------------------------------------------------------
def test_hf_trainer_grows_seeds_and_resumes_exactly_after_a_kill(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    expected_model, callback = train_hf(whole)
    assert callback.executor.step_count == STEPS
    assert outcome(whole)["seeds"] == {HF_SITES[0]: ("FOSSILIZED", 14), HF_SITES[1]: ("FOSSILIZED", 21)}
    # The Trainer's own files hold the host's optimizer groups; kasmina.pt the seeds'.
    folder = whole / "out" / "checkpoint-12"
    optimizer = torch.load(folder / "optimizer.pt", weights_only=True)
    assert all("kasmina_seed" not in g for g in optimizer["param_groups"])
    assert set(torch.load(folder / STATE_FILE, weights_only=True)["optimizer"]) == {f"seed:{s}" for s in HF_SITES}

    checkpoint = killed / "out" / f"checkpoint-{STALL - 1}" / STATE_FILE
    assert kill_when_stalled("hf", killed, checkpoint) == -signal.SIGKILL
    model, callback = train_hf(killed, resume=str(checkpoint.parent))
    assert callback.executor.step_count == STEPS
    assert outcome(killed) == outcome(whole)
    assert same_weights(model, expected_model)

    # Added once the Trainer exists, the callback would graft its sites after the checkpoint
    # was loaded into the model: resuming with it is refused.
    from transformers import Trainer, TrainingArguments

    late = Trainer(model=gpt2(), args=TrainingArguments(output_dir=str(killed / "late"), use_cpu=True, report_to=[],
                                                        max_steps=STEPS), train_dataset=Tokens())
    late.add_callback(hf_callback(killed))
    with pytest.raises(KasminaError, match="pass it in Trainer\\(callbacks=\\[...\\]\\)"):
        late.train(resume_from_checkpoint=str(checkpoint.parent))


@pytest.mark.slow
def test_hf_trainer_ddp_ranks_keep_equal_seeds_and_refuse_clipping_before_the_average(tmp_path: Path) -> None:
    """``torchrun`` with two gloo ranks: with ``max_grad_norm=0`` the replicas stay equal; with
    the Trainer's default clipping (before the callback can average the seeds) it refuses."""
    two_ranks([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__, "hf-ddp"],
              tmp_path, HF_SITES)
    for rank in (0, 1):
        assert "set max_grad_norm=0" in (tmp_path / f"refused{rank}").read_text()


# -- configuration ------------------------------------------------------------------------------
def test_bad_configuration_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'run.db'}"
    ex = kasmina.Executor(nn.Sequential(nn.Linear(2, 2)), sites=["0"], db="memory://", secret=SECRET)
    cases = [
        (lambda: KasminaCallback(["net.0"], db=url, executor=ex), "not both (also given: sites, db)"),
        (lambda: KasminaTrainerCallback(executor=object()), "executor= must be a kasmina.Executor"),
        (lambda: KasminaCallback(db=url), "needs sites="),
        (lambda: KasminaCallback(["net.0"], db=url, optimizer=None), "unknown executor option 'optimizer'"),
        (lambda: KasminaCallback(["net.0"], controller="germinate"), "controller= must be callable"),
        (lambda: fit_lightning(tmp_path, callback=KasminaCallback(["net.9"], db=url, secret=SECRET)),
         "sites: no submodule 'net.9'"),
        (lambda: fit_lightning(tmp_path, callback=KasminaCallback(["net.0"], db=url, secret=SECRET,
                                                                   controller=lambda step, ex: ["germinate"])),
         "controller returned a str at step 1, not a command"),
    ]
    for make, message in cases:
        with pytest.raises(KasminaError) as raised:
            make()
        assert message in str(raised.value) and "\n" not in str(raised.value), raised.value


def main() -> None:
    parser = argparse.ArgumentParser(description="one training run of tests/test_integrations.py")
    parser.add_argument("kind", choices=["lightning", "hf", "ddp", "hf-ddp"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--stall", type=int)
    parser.add_argument("--resume")
    options = parser.parse_args()
    run = {"lightning": fit_lightning, "hf": train_hf, "ddp": fit_ddp, "hf-ddp": train_hf_ddp}[options.kind]
    run(options.folder, stall=options.stall, resume=options.resume)


if __name__ == "__main__":
    main()
