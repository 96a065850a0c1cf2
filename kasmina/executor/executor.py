"""The in-process executor: signed commands in, seeds grafted into a live torch model.

Flow of one command: ``handle`` verifies it (signature, nonce, freshness), translates it
into a lifecycle command, and the :class:`~kasmina.ledger.Ledger` decides, appends and
evolves. Only then does the executor make the model match the new state
(:meth:`Executor._reconcile`): fetch and attach a seed, open or close isolation hooks,
set alpha. The same reconcile runs after every training step and after re-opening a log,
so the model always follows the replayed state, never the other way round.

The training hot path is ``model(x)`` (pure torch, no database) plus ``step()``, which
advances the step counter, writes each blending seed's alpha into its device tensor, and
asks the pure lifecycle which seeds have a gate due. The database and device syncs happen
only when a gate falls due or a stage changes.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch
from google.protobuf.message import DecodeError
from torch import Tensor, nn

from kasmina import leyline
from kasmina.annotations import parse_blend_annotations
from kasmina.catalogue import Catalogue, FetchError, seed_generator
from kasmina.errors import KasminaError, StaleVersion, StoreError, StoreUnavailable
from kasmina.events import EventStore, LogView, RecordedEvent
from kasmina.executor import checkpoint as checkpoints
from kasmina.executor.checkpoint import Checkpoint, Restored
from kasmina.catalogue.sites import Probe, SiteInfo, describe
from kasmina.executor import optim
from kasmina.executor.counterfactual import Counterfactual, LossFn, ProbeFn
from kasmina.executor.isolation import IsolationMonitor, shared_parameters
from kasmina.executor.measure import MetricPolicy, SiteRuntime, measure
from kasmina.executor.runlog import RunLog
from kasmina.executor.site import STATS_EVERY, SeedSite, SiteMode, inject, module_placement
from kasmina.executor.status import SeedView, live_status, seed_view, site_hosts, trainable_parameters
from kasmina.kernels.blend import BlenderConfig, BlendMode
from kasmina.lifecycle.schedule import AlphaSchedule
from kasmina.ledger import Ledger, Outcome
from kasmina.lifecycle import commands as c
from kasmina.lifecycle import events as ev
from kasmina.lifecycle.alpha import alpha_for
from kasmina.lifecycle.gates import GateInputs
from kasmina.lifecycle.machine import PROGRESSION, gates_for
from kasmina.lifecycle.stages import LIVE_STAGES, Gate, Stage
from kasmina.lifecycle.state import SeedState
from kasmina.rebuild import replay_seed
from kasmina.security import REASON_MESSAGES, Keyring, Verifier
from kasmina.security.verify import RUN_ANNOTATION, WRONG_RUN
from kasmina.status import Status, recorded_step, sites_fact
from kasmina.telemetry import Metric, Telemetry

if TYPE_CHECKING:
    from kasmina.executor.export import ExportReport

SeedOp = leyline.SeedOperation
#: Controller operations that ask a seed to move on now (gates still apply).
_ADVANCE: Mapping[int, Stage] = {
    SeedOp.Value("SEED_OP_START_TRAINING"): Stage.TRAINING,
    SeedOp.Value("SEED_OP_START_GRAFTING"): Stage.BLENDING,
    SeedOp.Value("SEED_OP_STABILIZE"): Stage.SHADOWING,
    SeedOp.Value("SEED_OP_EVALUATE"): Stage.PROBATIONARY,
    SeedOp.Value("SEED_OP_FOSSILIZE"): Stage.FOSSILIZED,
}
_CULL_OPS = {SeedOp.Value("SEED_OP_CULL"), SeedOp.Value("SEED_OP_CANCEL")}
_MODES: Mapping[Stage, SiteMode] = {
    Stage.GERMINATED: SiteMode.TRAINING,
    Stage.TRAINING: SiteMode.TRAINING,
    Stage.BLENDING: SiteMode.BLENDING,
    Stage.SHADOWING: SiteMode.ACTIVE,
    Stage.PROBATIONARY: SiteMode.ACTIVE,
    Stage.FOSSILIZED: SiteMode.FOSSILIZED,
}
#: Gates that read the metrics the training loop reports.
_METRIC_GATES = frozenset({Gate.G1_GRADIENT_HEALTH, Gate.G4_SYSTEM_IMPACT})
#: Stages past TRAINING: their seeds are probed under inference_mode.
_CONTRIBUTING = frozenset({Stage.BLENDING, Stage.SHADOWING, Stage.PROBATIONARY})
#: Stages whose seed collects isolation statistics (WP-K2).
_HOOKED = frozenset({Stage.TRAINING, Stage.BLENDING})
LEADER, FOLLOWER = "leader", "follower"
NOT_LEADER = "not_leader"
UNSUPPORTED = "unsupported_command"
UNKNOWN_SITE = "unknown_site"
MALFORMED = "malformed_command"
STORE_UNAVAILABLE = "store_unavailable"
#: Backoff between a step's attempts to reach an unavailable log (seconds, doubling).
MIN_BACKOFF_S, MAX_BACKOFF_S = 0.5, 30.0
#: Largest payload ``Executor.note`` records (an audit note, not a data dump).
MAX_NOTE_BYTES = 16_384


@dataclass(frozen=True, slots=True)
class Result:
    """What happened to one command."""

    accepted: bool
    reason: str
    detail: str = ""
    positions: tuple[int, ...] = ()


class Executor:
    """Grafts, trains, blends, probes and retires seeds in ``model`` at the named sites."""

    def __init__(
        self,
        model: nn.Module,
        sites: Iterable[str],
        db: str | EventStore | None = None,
        secret: bytes | str | Mapping[str, bytes | str] | Keyring | None = None,
        catalogue: Catalogue | None = None,
        telemetry: Any = None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        run_seed: int = 0,
        metric: MetricPolicy | None = None,
        prewarm: Callable[[str], Tensor | None] | None = None,
        verifier: Verifier | None = None,
        role: str = LEADER,
        probe: ProbeFn | None = None,
        loss_fn: LossFn | None = None,
        contribution_threshold: float = 0.01,
        causal: bool | None = None,
        scheduler: Any = None,
        run: str | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        if role not in (LEADER, FOLLOWER):
            raise KasminaError(f"role must be {LEADER!r} or {FOLLOWER!r}, got {role!r}")
        #: A follower never writes: it takes every decision from the log the leader appends to
        #: (the other ranks of a torch.distributed job, see :mod:`kasmina.distributed`).
        self.leader = role == LEADER
        self.model = model
        self.catalogue = catalogue if catalogue is not None else Catalogue()
        self.telemetry = Telemetry.from_spec(telemetry)
        self.optimizer = optimizer
        #: LR schedulers of ``optimizer``: each seed group gets its host group's entry in them.
        self.schedulers: list[Any] = optim.as_schedulers(scheduler)
        self.run_seed = run_seed
        self.policy = metric if metric is not None else MetricPolicy()
        self._prewarm = prewarm
        keyring = secret if isinstance(secret, Keyring) else (Keyring(secret) if secret is not None else Keyring.from_env())
        self.verifier = verifier if verifier is not None else Verifier(keyring)
        #: The run of the log this executor writes (``run``, else $KASMINA_RUN, else "default").
        self._run_log = RunLog(db, run, run_config, self.leader)
        self.store = self._run_log.store
        self.ledger = Ledger.open(self.store, on_recorded=self.telemetry.record)
        self.sites: dict[str, SeedSite] = inject(model, list(sites))
        #: Sequence blueprints mask the future by default when the host is a causal LM.
        self.causal = _causal_lm(model) if causal is None else bool(causal)
        self.counterfactual = Counterfactual(model, probe=probe, loss_fn=loss_fn, threshold=contribution_threshold)
        #: Module hooks the user's own model had at each site: G5 counts only ours.
        self._base_hooks = {name: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                                      for m in site.modules()) for name, site in self.sites.items()}
        #: The host's own parameters, taken before any seed exists: what a seed must not touch.
        self._host_params: list[Tensor] = list(model.parameters())
        self._runtime: dict[str, SiteRuntime] = {}
        #: seed id -> the optimizer group of its host layer, which the seed's group follows.
        self._host_groups: dict[str, dict[str, Any]] = {}
        self._metrics: dict[str, float | Tensor] = {}
        self._facts: list[tuple[str, ev.Event]] = []
        self._fused_warm: set[tuple[torch.device, torch.dtype]] = set()
        self.last_error: StoreError | None = None
        #: While the log is unreachable, steps leave it alone until this time (backoff).
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self._step = self._restored_step()
        self._rebuild_nonces()
        for name in self.sites:
            self._reconcile(name)
        self._register_sites()
        #: What the last :meth:`export` did at each site, and how close its output came.
        self.last_export: ExportReport | None = None

    # -- opening and closing --------------------------------------------------------------
    def _restored_step(self) -> int:
        """The training step to continue from: the last one any event recorded (a clean
        ``close()`` and every checkpoint record it; after a crash, the newest step any
        seed's or the executor's event wrote)."""
        return recorded_step(self.store, self.ledger.seeds.values())

    def _register_sites(self) -> None:
        """Record the sites and their host types where the log does not list them (``kasmina status``)."""
        if self.leader:
            fact = sites_fact(self.store, site_hosts(self.sites), self._step)
            if fact is not None:
                self.ledger.note(ev.EXECUTOR_STREAM, [fact])

    def _rebuild_nonces(self) -> None:
        """Commands seen within the nonce window stay refused after a restart."""
        window = timedelta(seconds=self.verifier.ledger.ttl_s)
        now = time.time()
        ids = self.store.command_ids_since(datetime.now(timezone.utc) - window)
        self.verifier.ledger.load((command_id, now) for command_id in ids)

    @property
    def closed(self) -> bool:
        return getattr(self, "_closed", False)

    def close(self) -> None:
        """Record the step reached (so alpha resumes exactly), remove hooks, close the log."""
        if self.closed:
            return
        self._closed = True
        for runtime in self._runtime.values():
            if runtime.monitor is not None:
                runtime.monitor.close()
        self.counterfactual.close()
        try:
            if self.leader:
                self.ledger.note(ev.EXECUTOR_STREAM, [ev.Event(ev.EXECUTOR_CLOSED, {"step": self._step})])
            self.telemetry.flush(step=self._step, metrics=self.telemetry_metrics())
        finally:
            self.telemetry.close()
            self._run_log.end(crashed=getattr(self, "_crashed", False))

    def bind_optimizer(self, optimizer: torch.optim.Optimizer, scheduler: Any = None) -> None:
        """Use an optimizer made after the executor (a trainer's): seeds already grafted get
        groups of their own in it, following their host layer's group and ``scheduler``."""
        self.optimizer, self.schedulers = optimizer, optim.as_schedulers(scheduler)
        optim.adopt_seeds(optimizer, {n: (s.seed, s.base_layer) for n, s in self.sites.items() if s.seed is not None},
                          self._host_groups, self.schedulers)

    # -- checkpoints and the run's own facts -----------------------------------------------
    def checkpoint(self, directory: str | Path, *, extra: Mapping[str, Any] | None = None,
                   keep: int = 2) -> Checkpoint:
        """Write the model, seeds and optimizer atomically and record the file in the log.

        ``extra`` carries the training loop's own state (anything ``torch.load(...,
        weights_only=True)`` accepts). The newest ``keep`` recorded files are kept.
        """
        self._writer_only("checkpoint")
        return checkpoints.save(self, directory, extra=extra, keep=keep)

    def restore(self) -> Restored | None:
        """Load the newest checkpoint the log vouches for (checksum verified), if any.

        Call it right after construction: the log has been replayed and every seed rebuilt,
        so weights go into seeds of the same generation and optimizer state is matched by
        seed id. A newer checkpoint whose file is missing or altered is passed over; the
        reasons are in ``Restored.skipped``. ``None`` when the log names no usable file.
        """
        found, problems = checkpoints.latest(self.store)
        if found is None:
            if problems:
                raise KasminaError(f"no usable checkpoint: {problems[0]}")
            return None
        restored = checkpoints.restore(self, found)
        restored.skipped = problems + restored.skipped
        return restored

    def note(self, kind: str, data: Mapping[str, Any] | None = None) -> int:
        """Record a fact of the training loop (an evaluation, a phase) on the executor stream.

        It is an audit record only: replay ignores it. Returns its position.
        """
        self._writer_only("note")
        if not isinstance(kind, str) or not kind.strip() or len(kind) > 100:
            raise KasminaError("a note needs a kind: a non-empty string of at most 100 characters")
        body = {"kind": kind, **dict(data or {}), "step": self._step}
        try:
            size = len(json.dumps(body, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise KasminaError(f"note {kind!r}: data must be JSON (finite numbers, strings, lists, dicts): {e}") from None
        if size > MAX_NOTE_BYTES:
            raise KasminaError(f"note {kind!r} is {size} bytes; the limit is {MAX_NOTE_BYTES}")
        outcome = self.ledger.note(ev.EXECUTOR_STREAM, [ev.Event(ev.RUN_NOTE, body)])
        return outcome.events[0].position

    def lead(self) -> None:
        """Turn this follower, caught up with the log's head, into the leader.

        For a resumed run that re-executed its lost steps as a follower, or a rank taking over
        from a leader that is gone: afterwards it is what a leader built on this log now would
        be (nonces rebuilt, held-back ``kernel_attached`` facts recorded, unfetchable seeds
        culled on record); its step counter carries on. See docs/executor.md.
        """
        if self.leader:
            raise KasminaError("lead(): this executor already leads")
        limit = self.store.limit if isinstance(self.store, LogView) else None
        if limit is not None:
            raise KasminaError(f"lead(): the log view is clipped at position {limit} and would refuse every "
                               "write; release() it and sync() first")
        head, _ = self.store.head()
        if head > self.ledger.position:
            raise KasminaError(f"lead(): this follower is {head - self.ledger.position} events behind the log "
                               f"(at {self.ledger.position}, head {head}); sync() first")
        self.leader = True
        self.ledger.written = max(self.ledger.written, self.ledger.position)
        self._rebuild_nonces()
        self._register_sites()
        for name in self.sites:
            runtime = self._runtime.get(name)
            facts = runtime.facts.pop("unrecorded", None) if runtime is not None else None
            if facts:
                self.ledger.note(name, facts, retry=True)
            self._reconcile(name)  # attaches (or culls on record) what the follower could not fetch

    def _writer_only(self, what: str) -> None:
        if not self.leader:
            raise KasminaError(f"{what}: a follower never writes to the log; the leader (rank 0) records it")

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._crashed = exc_type is not None  # the run's status: crashed, not finished
        self.close()

    # -- reading --------------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        return self._step

    def state(self, seed_id: str) -> SeedState:
        return self.ledger.state(seed_id)

    def seed(self, seed_id: str) -> SeedView:
        return seed_view(self, seed_id)

    def seeds(self) -> list[SeedView]:
        return [self.seed(name) for name in self.sites]

    def status(self) -> Status:
        """One row per site, live (``print(ex.status())`` is a table; ``kasmina status`` reads the same from the log)."""
        return live_status(self)

    # -- leaving the tool -----------------------------------------------------------------
    def export(self, probe: Any = None, *, merge: bool = True, drop_unfinished: bool = False) -> nn.Module:
        """The grown model as a plain ``nn.Module``, no Kasmina class left in it (kasmina/executor/export.py)."""
        from kasmina.executor.export import export

        return export(self, probe, merge=merge, drop_unfinished=drop_unfinished)

    def _site(self, seed_id: str) -> SeedSite:
        try:
            return self.sites[seed_id]
        except KeyError:
            raise KasminaError(f"no seed site {seed_id!r} (sites: {', '.join(self.sites)})") from None

    def run_probe(self, seed_id: str, fn: Callable[[], Any]) -> Any:
        """The one entry for probes: a seed past TRAINING is probed under ``inference_mode``."""
        stage = self.ledger.state(seed_id).stage
        if stage in _CONTRIBUTING:
            with torch.inference_mode():
                return fn()
        with torch.no_grad():
            return fn()

    def site_info(self, seed_id: str) -> SiteInfo:
        """What the site is (kind, layout, channels; shapes once it has run a forward)."""
        site = self._site(seed_id)
        return describe(seed_id, site.base_layer, site.probe, causal=self.causal)

    # -- commands -------------------------------------------------------------------------
    def handle(self, command: leyline.AdaptationCommand | bytes) -> Result:
        """Verify, decide, record and carry out one controller command."""
        try:
            return self._handle(command)
        finally:
            self.telemetry.flush(step=self._step)

    def _handle(self, command: leyline.AdaptationCommand | bytes) -> Result:
        if not self.leader:
            # Not recorded (a follower never writes): the leader rank handles every command.
            return Result(False, NOT_LEADER, "this executor follows the log; send commands to the leader (rank 0)")
        try:
            if isinstance(command, (bytes, bytearray)):
                try:
                    command = leyline.AdaptationCommand.FromString(bytes(command))
                except DecodeError as e:
                    return self._refuse(MALFORMED, None, f"not an AdaptationCommand: {e}", verified=False)
            reason = self.verifier.check(command)
            if reason is not None:
                return self._refuse(reason, command, _why(reason), verified=False)
            if command.annotations.get(RUN_ANNOTATION, self.store.run) != self.store.run:
                return self._refuse(WRONG_RUN, command, f"annotations['run'] is {command.annotations[RUN_ANNOTATION]!r}, "
                                    f"this executor writes run {self.store.run!r}", verified=True)
            field = _nul_field(command)
            if field is not None:
                # Even a signed text may not hold a NUL: PostgreSQL cannot return one as
                # text, so a single one in the log would break the audit views for good.
                return self._refuse(MALFORMED, command, f"NUL character in {field}; command text may not hold NUL",
                                    verified=True)
            result = self._dispatch(command)
            self.verifier.remember(command.command_id)
            return result
        except StoreError as e:
            # The log cannot be written: nothing was carried out, training goes on.
            return Result(False, STORE_UNAVAILABLE, str(e))

    def _refuse(self, reason: str, command: leyline.AdaptationCommand | None, detail: str, *,
                verified: bool, **extra: Any) -> Result:
        # Untrusted text, NUL escaped: PostgreSQL's ->> (the audit views) cannot read a \u0000.
        seed_id = command.target_seed_id.replace("\x00", "\\x00") or None if command is not None else None
        data: dict[str, Any] = {"command_type": leyline.CommandType.Name(command.command_type)
                                if command is not None and command.command_type in leyline.CommandType.values()
                                else None, **extra}
        if command is not None:
            data["command_id"] = command.command_id[:255].replace("\x00", "\\x00")
        event = ev.refused(reason, seed_id=seed_id, detail=detail, **data)
        # An unverified command's id is not trusted: recording it as the command id would
        # let a forged command block the genuine one, so it is kept in the payload only.
        outcome = self.ledger.refuse(event, command_id=command.command_id if verified and command else None)
        return Result(False, reason, detail, tuple(e.position for e in outcome.events))

    def _dispatch(self, cmd: leyline.AdaptationCommand) -> Result:
        kind = cmd.command_type
        CT = leyline.CommandType
        if kind == CT.Value("COMMAND_SEED"):
            return self._seed_command(cmd)
        if kind == CT.Value("COMMAND_PAUSE"):
            site = self._target(cmd)
            if isinstance(site, Result):
                return site
            resume = cmd.annotations.get("resume", "").strip().lower() == "true"
            lc: c.Command = c.Resume(site, self._step) if resume else c.Pause(site, self._step)
            return self._submit(lc, cmd)
        if kind == CT.Value("COMMAND_ROLLBACK"):
            return self._rollback(cmd)
        if kind == CT.Value("COMMAND_EMERGENCY"):
            return self._emergency(cmd)
        if kind == CT.Value("COMMAND_CIRCUIT_BREAKER"):
            return self._breaker(cmd)
        name = CT.Name(kind) if kind in CT.values() else str(kind)
        return self._refuse(UNSUPPORTED, cmd, f"{name} is not carried out by Kasmina", verified=True)

    def _target(self, cmd: leyline.AdaptationCommand) -> str | Result:
        if cmd.target_seed_id not in self.sites:
            return self._refuse(UNKNOWN_SITE, cmd, f"no seed site {cmd.target_seed_id[:200]!r}; "
                                f"sites: {', '.join(self.sites)}", verified=True)
        return cmd.target_seed_id

    def _seed_command(self, cmd: leyline.AdaptationCommand) -> Result:
        if cmd.WhichOneof("payload") != "seed_operation":
            return self._refuse(UNSUPPORTED, cmd, "COMMAND_SEED without a seed_operation payload", verified=True)
        site = self._target(cmd)
        if isinstance(site, Result):
            return site
        op = cmd.seed_operation.operation
        if op == SeedOp.Value("SEED_OP_GERMINATE"):
            return self._germinate(site, cmd)
        if op in _CULL_OPS:
            reason = cmd.annotations.get("reason", "") or SeedOp.Name(op).removeprefix("SEED_OP_").lower()
            return self._submit(c.Cull(site, self._step, reason[:500]), cmd)
        if op in _ADVANCE:
            state = self.ledger.state(site)
            target = _ADVANCE[op]
            # Measure only a move the lifecycle allows: a refused command must not probe
            # the seed or record anything but its refusal.
            legal = not state.paused and state.stage in LIVE_STAGES and PROGRESSION.get(state.stage) == target
            inputs = self._measure(state, gates_for(state.stage, target)) if legal else None
            result = self._submit(c.Advance(site, self._step, target, inputs), cmd)
            self._flush_facts()
            return result
        name = SeedOp.Name(op) if op in SeedOp.values() else str(op)
        return self._refuse(UNSUPPORTED, cmd, f"seed operation {name} is not carried out by Kasmina", verified=True)

    def _germinate(self, site: str, cmd: leyline.AdaptationCommand) -> Result:
        op = cmd.seed_operation
        blueprint_id = op.blueprint_id
        parameters = dict(op.parameters)
        info = self.site_info(site)
        known = self.catalogue.knows(blueprint_id)
        blueprint = self.catalogue.get(blueprint_id) if known else None
        bounds = blueprint.parameter_bounds if blueprint is not None else {}
        default_mode = (blueprint.default_blend if blueprint is not None else None) or BlendMode.CONVEX.value
        config, warnings = parse_blend_annotations(dict(cmd.annotations), default_mode=default_mode)
        if config is None:  # recorded either way, so replay knows the blend and the host's gradient
            config = BlenderConfig(mode=default_mode, source="blueprint default" if blueprint is not None
                                   and blueprint.default_blend else "default")
        misfit = blueprint.misfit(info, parameters) if blueprint is not None else None
        if misfit is None and config.mode is BlendMode.CHANNEL and info.out_features is not None:
            try:
                config.check_channels(info.out_features)
            except ValueError as e:
                misfit = f"{e} (site {site!r}, {info.layout or info.kind.value}, dim {info.channel_dim})"
        schedule = cmd.annotations.get("alpha_schedule", "SIGMOID")
        try:
            schedule = AlphaSchedule.parse(schedule).name
        except ValueError:
            warnings.append({"key": "alpha_schedule", "value": schedule[:200], "level": "WARNING",
                             "message": "unknown alpha schedule: SIGMOID, LINEAR or COSINE; using SIGMOID"})
            schedule = "SIGMOID"
        baseline = self._metric(self.policy.name)
        baseline = baseline if baseline is not None and math.isfinite(baseline) else None
        germinate = c.Germinate(
            site, blueprint_id, self._step,
            GateInputs(blueprint_known=known, parameters=parameters, parameter_bounds=dict(bounds),
                       site_fits=misfit is None if known else None, site_detail=misfit),
            parameters=parameters, blend=config.to_dict(),
            warnings=tuple(warnings), baseline_metric=baseline, schedule=schedule,
        )
        return self._submit(germinate, cmd)

    def _rollback(self, cmd: leyline.AdaptationCommand) -> Result:
        site = self._target(cmd)
        if isinstance(site, Result):
            return site
        fields = cmd.rollback_payload.fields if cmd.HasField("rollback_payload") else {}
        raw = fields["to_position"].number_value if "to_position" in fields else None
        head, _ = self.store.head()
        if raw is None or not math.isfinite(raw) or raw != int(raw) or not 0 <= raw <= head:
            return self._refuse("invalid_parameter", cmd, f"rollback needs to_position in [0, {head}]",
                                verified=True)
        target = replay_seed(self.store, site, to_position=int(raw))
        return self._submit(c.Rollback(site, self._step, int(raw), target), cmd)

    def _emergency(self, cmd: leyline.AdaptationCommand) -> Result:
        """Cull every live seed: the host alone is the safe state."""
        reason = cmd.annotations.get("reason", "")[:500] or "emergency"
        outcome = self.ledger.note(ev.EXECUTOR_STREAM, [ev.Event(ev.EMERGENCY, {"reason": reason, "step": self._step})],
                                   command_id=cmd.command_id)
        positions = [e.position for e in outcome.events]
        for name in self.sites:
            if self.ledger.state(name).stage in LIVE_STAGES:
                culled = self.ledger.submit(c.Cull(name, self._step, f"emergency: {reason}"))
                positions.extend(e.position for e in culled.events)
                self._reconcile(name)
        return Result(True, "accepted", reason, tuple(positions))

    def _breaker(self, cmd: leyline.AdaptationCommand) -> Result:
        desired = cmd.circuit_breaker.desired_state
        names = {v: leyline.CircuitBreakerState.Name(v).removeprefix("CIRCUIT_STATE_")
                 for v in leyline.CircuitBreakerState.values()}
        if desired not in names or names[desired] == "UNKNOWN":
            return self._refuse("invalid_parameter", cmd, "circuit breaker state must be CLOSED, OPEN or HALF_OPEN",
                                verified=True)
        rationale = cmd.circuit_breaker.rationale[:500] or "controller"
        outcome = self.ledger.note(ev.EXECUTOR_STREAM, [ev.Event(ev.BREAKER_FORCED, {
            "state": names[desired], "rationale": rationale, "step": self._step})], command_id=cmd.command_id)
        self.catalogue.breaker.force(names[desired], rationale)  # only once it is on record
        return Result(True, "accepted", names[desired], tuple(e.position for e in outcome.events))

    def _submit(self, command: c.Command, cmd: leyline.AdaptationCommand) -> Result:
        outcome = self.ledger.submit(command, command_id=cmd.command_id)
        if outcome.accepted:
            self._reconcile(command.seed_id)
        return _result(outcome)

    # -- training steps -------------------------------------------------------------------
    def step(self, metrics: Mapping[str, float | Tensor] | None = None) -> list[int]:
        """Once per optimizer step: dwell, gates and alpha. Returns positions appended.

        Metrics may be floats or tensors; a tensor is only read (a device sync) when a gate
        that uses it falls due. If the log cannot be written, the step still completes with
        the last recorded state (no stage changes this step) and the error is kept in
        :attr:`last_error`: training never stops because the database did. After an
        unavailable log, steps leave it alone for a backoff (0.5 s, doubling to 30 s), so a
        connect timeout is paid once per backoff, not once per step. A follower only
        advances its step and alpha here; its decisions arrive through :meth:`sync`.
        """
        if metrics:
            self._metrics.update({str(k): v for k, v in metrics.items()})
        self._step += 1
        if self.optimizer is not None and self._host_groups:
            optim.follow_host_groups(self.optimizer, self._host_groups)
        sample = self._step % STATS_EVERY == 0
        for site in self.sites.values():
            site.sample_stats = sample
        recorded: list[RecordedEvent] = []
        if self.leader and time.monotonic() >= self._retry_at:
            try:
                self._record_baselines()
                recorded = self.ledger.tick(self._step, self._measure, seed_ids=self.sites)
                self._flush_facts()
                self.last_error = None
                self._backoff_s = 0.0
            except StoreError as e:
                self._facts.clear()
                self.last_error = e
                recorded = []
                if isinstance(e, StoreUnavailable):
                    # Each try may wait for a connect timeout: the steps in between must not.
                    self._backoff_s = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, 2 * self._backoff_s))
                    self._retry_at = time.monotonic() + self._backoff_s
                if isinstance(e, StaleVersion):
                    # Another writer (or a commit whose answer was lost with the connection)
                    # moved a seed on: take the log's word for it, then decide again next step.
                    with suppress(StoreError):
                        for name in self.ledger.reload(self.sites):
                            self._reconcile(name)
        self._follow_state(recorded)
        due = self.telemetry.metrics_due(self._step)
        self.telemetry.flush(step=self._step, metrics=self.telemetry_metrics() if due else None)
        return [e.position for e in recorded]

    def sync(self, upto: int | None = None) -> list[int]:
        """Take what the log holds up to position ``upto`` (default: its head) and follow it.

        For a follower this is how decisions arrive; a leader may call it to absorb events
        another writer appended. Raises :class:`StoreError` when the log cannot be read:
        a rank must not carry on with a state the others may not share.
        """
        before = {name: self.ledger.state(name) for name in self.sites}
        recorded: list[RecordedEvent] = []
        try:
            recorded = self.ledger.catch_up(upto)
        finally:
            # A read that fails part-way has still folded some events: the model must
            # follow those too, or a retry would leave this rank's sites behind its state.
            changed = [n for n in self.sites if self.ledger.state(n) != before[n]]
            for name in changed:
                self._reconcile(name)
            self._follow_state([])
        return [e.position for e in recorded]

    def _follow_state(self, recorded: list[RecordedEvent]) -> None:
        """Make the model match the state after ``recorded``: reattach, then alpha."""
        for name in {e.stream_id for e in recorded} & self.sites.keys():
            self._reconcile(name)
        for name, site in self.sites.items():
            if site.mode is SiteMode.BLENDING:
                site.alpha.fill_(alpha_for(self.ledger.state(name), self._step))

    def telemetry_metrics(self) -> list[Metric]:
        """The executor's metrics (reads the blend statistics: one device sync per seed)."""
        stats = self.catalogue.stats()
        runtimes = list(self._runtime.values())
        prewarm = [r.prewarm_ms for r in runtimes if r.prewarm_ms is not None]
        metrics: list[Metric] = [
            ("kasmina.seeds.active", float(sum(1 for s in self.sites.values() if s.seed is not None)), "count", {}),
            ("kasmina.isolation.violations", float(sum(r.violations for r in runtimes)), "count", {}),
            ("kasmina.kernel.fetch_latency_ms", float(stats["fetch_latency_ms_mean"]), "ms", {}),
            ("kasmina.cache.gpu_hit_rate", float(stats["hit_rate"]), "ratio", {}),
        ]
        if prewarm:
            metrics.append(("kasmina.prewarm.latency_ms", float(max(prewarm)), "ms", {}))
        for name, site in self.sites.items():
            state = self.ledger.state(name)
            seed = {"seed_id": name}
            metrics.append(("kasmina.seed.stage", float(state.stage.value), "stage", seed))
            metrics.append(("kasmina.seed.alpha", alpha_for(state, self._step), "ratio", seed))
            if site.seed is not None and site.mode in (SiteMode.BLENDING, SiteMode.ACTIVE, SiteMode.FOSSILIZED):
                summary = site.stats.read()
                site.stats.reset()
                for key, value in summary.items():
                    metrics.append((f"kasmina.blend.{key}", float(value), "ratio", seed))
        return metrics

    def _metric(self, name: str | None) -> float | None:
        value = self._metrics.get(name) if name else None
        return None if value is None else float(value)

    def _record_baselines(self) -> None:
        """A seed germinated before any metric was reported takes the first finite one as its G4 baseline."""
        pending = [n for n in self.sites if self.ledger.state(n).baseline_metric is None
                   and self.ledger.state(n).stage in LIVE_STAGES]
        metric = self._metric(self.policy.name) if pending else None
        if metric is None or not math.isfinite(metric):
            return
        for name in pending:
            state = self.ledger.state(name)
            if state.baseline_metric is None and state.stage in LIVE_STAGES:
                self.ledger.note(name, [ev.Event(ev.BASELINE_RECORDED, {"metric": metric, "step": self._step})])

    def _measure(self, state: SeedState, gates: tuple[Gate, ...]) -> GateInputs:
        site = self.sites[state.seed_id]
        runtime = self._runtime.get(state.seed_id)
        metrics = {k: float(v) for k, v in self._metrics.items()} if set(gates) & _METRIC_GATES else {}
        leftover = sum(1 for g in self.optimizer.param_groups if g.get("kasmina_seed") == state.seed_id) \
            if self.optimizer is not None else 0
        inputs = measure(site, runtime, state, gates, host_params=self._host_params, metrics=metrics,
                         policy=self.policy, base_hooks=self._base_hooks.get(state.seed_id, 0),
                         leftover_groups=leftover, contribution=self.counterfactual.gate_inputs(
                             site, state, gates, lambda fn: self.run_probe(state.seed_id, fn)))
        if runtime is not None and runtime.violations and not runtime.facts.get("violation_recorded"):
            # Recorded after the decision that uses it (the tick appends with the seed's
            # current version, so nothing may be appended to that stream in between).
            runtime.facts["violation_recorded"] = True
            self._facts.append((state.seed_id, ev.Event(ev.ISOLATION_VIOLATION, {
                "count": runtime.violations, "step": self._step, "detail": "seed output depends on host parameters"})))
        return inputs

    def _flush_facts(self) -> None:
        facts, self._facts = self._facts, []
        for seed_id, event in facts:
            self.ledger.note(seed_id, [event], retry=True)

    # -- making the model follow the state ------------------------------------------------
    def _reconcile(self, name: str) -> None:
        site = self.sites[name]
        state = self.ledger.state(name)
        attached = state.stage in _MODES or (state.stage is Stage.TERMINATED and state.blueprint_id is not None)
        if not attached:
            self._detach(name)
            return
        runtime = self._runtime.get(name)
        if site.seed is None or runtime is None or runtime.generation != state.generation:
            self._detach(name)
            if not self._attach(name, state):
                return
            runtime = self._runtime[name]
        stage = Stage.FOSSILIZED if state.stage is Stage.TERMINATED else state.stage
        site.mode = SiteMode.PAUSED if state.paused else _MODES[stage]
        if site.config is None or state.blend != site.config.to_dict():  # the same object while unchanged
            site.config = BlenderConfig.from_dict(state.blend) if state.blend else None
        # A seed germinated before the choice was recorded ran with its host detached.
        site.detach_host = site.config.detach_host if site.config is not None else True
        info = self.site_info(name)
        site.channel_dim = info.channel_dim
        if site.config is not None and site.config.mode is BlendMode.CHANNEL and info.out_ndim is not None:
            # Built now, outside the forward: a traced forward must find its cache complete.
            device, dtype = module_placement(site.base_layer)
            site.config.weights_for(device, dtype, info.out_ndim, info.channel_dim)
        site.alpha.fill_(alpha_for(state, self._step))
        if stage in _HOOKED and not state.paused:
            if runtime.monitor is None and site.seed is not None:
                runtime.monitor = IsolationMonitor(site.seed)
            if runtime.monitor is not None:
                runtime.monitor.open()
        elif runtime.monitor is not None:
            runtime.monitor.close()
            runtime.monitor = None

    def _attach(self, name: str, state: SeedState) -> bool:
        site = self.sites[name]
        device, dtype = module_placement(site.base_layer)
        generator = seed_generator(self.run_seed, name, state.generation)
        if site.probe is None:
            # Re-attached after a restart, before any forward: a block site's shapes are the
            # ones recorded when this generation was first attached.
            site.probe = Probe.from_dict((state.kernel or {}).get("site_shapes"))
        try:
            fetched = self.catalogue.fetch(state.blueprint_id or "", self.site_info(name), device=device,
                                           dtype=dtype, generator=generator, parameters=state.parameters)
        except FetchError as e:
            # The leader culls on record; a follower waits for that cull to reach it.
            if self.leader and self.ledger.submit(c.Cull(name, self._step, f"kernel fetch failed: {e}")).accepted:
                self._detach(name)
            return False
        site.seed = fetched.module
        if device.type == "cuda" and (device, dtype) not in self._fused_warm:
            # Triton compiles the fused blend kernels now, not in the first training step.
            from kasmina.kernels import fused

            fused.prewarm(device, (dtype,))
            self._fused_warm.add((device, dtype))
        runtime = SiteRuntime(generation=state.generation, fetch_ms=fetched.latency_ms)
        runtime.violations = shared_parameters(fetched.module, self._host_params)
        runtime.prewarm_ms = self._prewarm_seed(name, site, fetched.blueprint_id_used)
        self._runtime[name] = runtime
        if self.optimizer is not None:
            # Keyed by seed id, not by position, with its host layer's hyperparameters.
            source = optim.add_seed_group(self.optimizer, name, fetched.module.parameters(), site.base_layer,
                                          self.schedulers)
            if source is not None:
                self._host_groups[name] = source
        facts = [ev.Event(ev.KERNEL_ATTACHED, {
            "requested": state.blueprint_id, "used": fetched.blueprint_id_used, "version": fetched.version,
            "checksum": fetched.checksum, "fetch_ms": round(fetched.latency_ms, 4), "cache_hit": fetched.cache_hit,
            "fallback_used": fetched.fallback_used, "fallback_reason": fetched.reason,
            "prewarm_ms": runtime.prewarm_ms, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "site_shapes": site.probe.to_dict() if site.probe is not None else None,
            "trainable_parameters": trainable_parameters(site), "step": self._step})]
        if runtime.violations:
            runtime.facts["violation_recorded"] = True
            facts.append(ev.Event(ev.ISOLATION_VIOLATION, {"count": runtime.violations, "step": self._step,
                                                           "detail": "seed shares parameters with the host"}))
        if self.leader:
            self.ledger.note(name, facts, retry=True)
        else:
            runtime.facts["unrecorded"] = facts  # recorded by lead(), as a leader's attach would
        return True

    def _prewarm_seed(self, name: str, site: SeedSite, blueprint_id: str) -> float | None:
        """One inference forward if a representative input is known (WP-K6); never compiles.

        The input comes from the ``prewarm`` callback, else the blueprint's catalogue
        metadata, else the last batch the site saw; with none of them it is a no-op.
        """
        example = self._prewarm(name) if self._prewarm is not None else None
        if example is None and self.catalogue.knows(blueprint_id):
            example = self.catalogue.example_input(blueprint_id, self.site_info(name), 2)
        if example is None:
            example = site.probe_input()
        if example is None or site.seed is None:
            return None
        device, dtype = module_placement(site.base_layer)
        example = example.to(device=device, dtype=dtype) if example.is_floating_point() else example.to(device)
        started = time.perf_counter()
        with torch.inference_mode():
            site.seed(example)
        return round((time.perf_counter() - started) * 1000.0, 4)

    def _detach(self, name: str) -> None:
        site = self.sites[name]
        runtime = self._runtime.pop(name, None)
        if runtime is not None and runtime.monitor is not None:
            runtime.monitor.close()
        if site.seed is not None and self.optimizer is not None:
            optim.remove_seed_groups(self.optimizer, name, self.schedulers)
        self._host_groups.pop(name, None)
        site.seed = None
        site.mode = SiteMode.DORMANT
        site.config = None
        site.last_input = None
        site.last_host = None
        site.interface_error = None
        site.alpha.zero_()


def _result(outcome: Outcome) -> Result:
    refusal = next((e for e in outcome.events if e.type == ev.COMMAND_REFUSED), None)
    detail = str(refusal.data.get("detail", "")) if refusal is not None else ""
    return Result(outcome.accepted, outcome.reason, detail, tuple(e.position for e in outcome.events))


def _nul_field(message: Any, prefix: str = "") -> str | None:
    """The first string field (map keys included) of ``message`` holding a NUL, if any."""
    for field, value in message.ListFields():
        name = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(key, str) and "\x00" in key:
                    return f"{name} key"
                if isinstance(item, str):
                    if "\x00" in item:
                        return name
                elif hasattr(item, "ListFields") and (found := _nul_field(item, f"{name}.")):
                    return found
        elif field.type == field.TYPE_STRING:
            if any("\x00" in v for v in (value if field.is_repeated else [value])):
                return name
        elif field.type == field.TYPE_MESSAGE:
            for item in value if field.is_repeated else [value]:
                found = _nul_field(item, f"{name}.")
                if found:
                    return found
    return None


def _causal_lm(model: nn.Module) -> bool:
    """A Hugging Face causal language model (``GPT2LMHeadModel``, ``...ForCausalLM``, a decoder)."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    return "CausalLM" in name or "LMHead" in name or bool(getattr(config, "is_decoder", False))


def _why(reason: str) -> str:
    return REASON_MESSAGES.get(reason, reason)
