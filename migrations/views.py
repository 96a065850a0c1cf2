"""The audit views' SQL, shared by the migrations that create them.

Each view has two forms: the one migrations 0001/0002 made (one log, one run) and the one
0003 makes, with a ``run`` column (the run's name) and every per-seed comparison made
within a run. A migration asks for the form its schema has, so 0003's downgrade puts
back exactly what 0002 left. On Postgres 15+ the views run with the querying role's
rights (``security_invoker``), so row-level security on the tables applies through them.
"""

from __future__ import annotations

from alembic import op

from kasmina.migrations.sqljson import field as f
from kasmina.migrations.sqljson import flag

#: Every view, in the order they may be created (a view may read one before it).
NAMES = ("seed_transitions", "seed_current_stage", "seed_gate_verdicts", "command_refusals", "seed_contributions")
#: Views that exist only with runs (0003 on): made for questions asked across a sweep.
RUN_NAMES = ("seed_generations",)


def _events(runs: bool) -> tuple[str, str]:
    """The leading run column and the FROM clause over the events."""
    if runs:
        return "r.name AS run, ", "kasmina_events e JOIN kasmina_runs r ON r.run_id = e.run_id"
    return "", "kasmina_events"


def body(name: str, *, runs: bool) -> str:
    run, source = _events(runs)
    same_run = "g.run = t.run AND " if runs else ""
    same_run_m = "m.run = t.run AND " if runs else ""
    number = "DOUBLE PRECISION" if op.get_bind().dialect.name == "postgresql" else "REAL"
    return {
        "seed_transitions": f"""
            SELECT {run}position, stream_id AS seed_id,
                   {f('from_stage')} AS from_stage, {f('to_stage')} AS to_stage,
                   {f('gate')} AS gate, {f('reason')} AS reason,
                   command_id, recorded_at, event_type,
                   CAST({f('step')} AS BIGINT) AS step
            FROM {source}
            WHERE event_type IN ('stage_changed', 'seed_rolled_back')""",
        "seed_current_stage": f"""
            SELECT {'t.run, ' if runs else ''}t.seed_id, t.to_stage AS stage, t.position AS since_position,
                   t.recorded_at AS since, t.step AS since_step,
                   (SELECT COUNT(*) FROM seed_transitions g
                     WHERE {same_run}g.seed_id = t.seed_id AND g.to_stage = 'GERMINATED') AS generation
            FROM seed_transitions t
            WHERE t.position = (SELECT MAX(m.position) FROM seed_transitions m
                                WHERE {same_run_m}m.seed_id = t.seed_id)""",
        "seed_gate_verdicts": f"""
            SELECT {run}position, stream_id AS seed_id, {f('gate')} AS gate,
                   {flag('passed')} AS passed, {f('reason')} AS reason,
                   {f('from_stage')} AS from_stage, {f('to_stage')} AS to_stage,
                   CAST({f('step')} AS BIGINT) AS step, recorded_at
            FROM {source}
            WHERE event_type IN ('stage_changed', 'gate_failed') AND {f('gate')} IS NOT NULL""",
        "command_refusals": f"""
            SELECT {run}position, {f('seed_id')} AS seed_id, {f('reason')} AS reason,
                   {f('detail')} AS detail, command_id, recorded_at
            FROM {source}
            WHERE event_type = 'command_refused'""",
        "seed_contributions": f"""
            SELECT {run}position, stream_id AS seed_id,
                   COALESCE({f('from_stage')}, {f('stage')}) AS stage,
                   CAST({f('step')} AS BIGINT) AS step,
                   CAST({f('inputs.loss_with')} AS {number}) AS loss_with,
                   CAST({f('inputs.loss_without')} AS {number}) AS loss_without,
                   CAST({f('inputs.contribution')} AS {number}) AS contribution,
                   CAST({f('inputs.contribution_threshold')} AS {number}) AS threshold,
                   {f('gate')} AS gate, {f('to_stage')} AS to_stage, recorded_at
            FROM {source}
            WHERE event_type IN ('stage_changed', 'gate_failed') AND {f('inputs.contribution')} IS NOT NULL""",
        # One row per germination: what was grown (blueprint, blend mode) and how that
        # generation ended (its first FOSSILIZED or CULLED; NULL while it is still going).
        "seed_generations": f"""
            SELECT g.run, g.seed_id, g.generation, g.blueprint_id, g.blend_mode,
                   g.germinated_position, g.germinated_step, g.germinated_at,
                   o.to_stage AS outcome, o.gate AS outcome_gate, o.reason AS outcome_reason,
                   o.position AS outcome_position, o.step AS outcome_step, o.recorded_at AS outcome_at
            FROM (
                SELECT r.name AS run, e.stream_id AS seed_id, e.position AS germinated_position,
                       CAST({f('step')} AS BIGINT) AS germinated_step, e.recorded_at AS germinated_at,
                       {f('blueprint_id')} AS blueprint_id,
                       (SELECT COUNT(*) FROM seed_transitions c
                         WHERE c.run = r.name AND c.seed_id = e.stream_id AND c.to_stage = 'GERMINATED'
                           AND c.position <= e.position) AS generation,
                       COALESCE((SELECT {f('mode')} FROM kasmina_events b
                                  WHERE b.run_id = e.run_id AND b.stream_id = e.stream_id
                                    AND b.event_type = 'blend_config' AND b.position > e.position
                                    AND b.position < COALESCE((SELECT MIN(n.position) FROM seed_transitions n
                                                               WHERE n.run = r.name AND n.seed_id = e.stream_id
                                                                 AND n.position > e.position), {2 ** 62})
                                  ORDER BY b.position LIMIT 1), 'default') AS blend_mode,
                       (SELECT MIN(t.position) FROM seed_transitions t
                         WHERE t.run = r.name AND t.seed_id = e.stream_id AND t.position > e.position
                           AND t.to_stage IN ('FOSSILIZED', 'CULLED')) AS outcome_position
                FROM kasmina_events e JOIN kasmina_runs r ON r.run_id = e.run_id
                WHERE e.event_type = 'stage_changed' AND {f('to_stage')} = 'GERMINATED'
            ) g
            LEFT JOIN seed_transitions o ON o.run = g.run AND o.position = g.outcome_position""",
    }[name]


def create(names: tuple[str, ...] | list[str], *, runs: bool) -> None:
    bind = op.get_bind()
    invoker = runs and bind.dialect.name == "postgresql" and bind.dialect.server_version_info >= (15,)
    options = " WITH (security_invoker = true)" if invoker else ""
    for name in names:
        op.execute(f"CREATE VIEW {name}{options} AS {body(name, runs=runs)}")


def drop(names: tuple[str, ...] | list[str]) -> None:
    for name in reversed(names):
        op.execute(f"DROP VIEW IF EXISTS {name}")
