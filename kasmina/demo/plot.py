"""The demo's figure: alpha per seed, the three contenders' validation metric, lifecycle per site.

Alpha and the timeline are rebuilt from the event log alone (alpha is a pure function of
the replayed state and the step), so the figure shows what the log says happened; only the
metric curves come from the run itself (the log records gate inputs, not every metric).
Every panel counts steps from the host's first one; the seeds were grafted at ``offset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from kasmina.errors import KasminaError
from kasmina.events import EventStore
from kasmina.lifecycle.alpha import alpha_for
from kasmina.lifecycle.evolve import evolve
from kasmina.lifecycle.stages import Stage
from kasmina.lifecycle.state import SeedState

STAGE_COLOURS: Mapping[Stage, str] = {
    Stage.GERMINATED: "#c7e9c0", Stage.TRAINING: "#74c476", Stage.BLENDING: "#fdae6b",
    Stage.SHADOWING: "#9ecae1", Stage.PROBATIONARY: "#6baed6", Stage.FOSSILIZED: "#3182bd",
    Stage.CULLED: "#de2d26", Stage.EMBARGOED: "#fc9272", Stage.RESETTING: "#bdbdbd",
}


def trajectory(store: EventStore, seed_id: str, last_step: int) -> tuple[list[float], list[tuple[int, int, Stage]]]:
    """Alpha at every step 0..last_step, and the (start, end, stage) spans, from the log."""
    events = list(store.read(stream_id=seed_id))
    state = SeedState(seed_id)
    alphas: list[float] = []
    spans: list[tuple[int, int, Stage]] = []
    at = 0  # the step the last applied event happened at (events without one inherit it)
    index = 0
    for step in range(last_step + 1):
        while index < len(events):
            when = events[index].data.get("step")
            at = when if isinstance(when, int) else at
            if at > step:
                break
            before = state.stage
            state = evolve(state, events[index])
            if state.stage is not before:
                spans.append((step, last_step, state.stage))
                if len(spans) > 1:
                    start, _, stage = spans[-2]
                    spans[-2] = (start, step, stage)
            index += 1
        alphas.append(alpha_for(state, step))
    return alphas, [s for s in spans if s[2] in STAGE_COLOURS]


def check_target(path: str | Path) -> Path:
    """Refuse a plot path that cannot work before the run starts, not after it."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise KasminaError(f"--plot {path}: the figure is a PNG; give a file name ending in .png")
    if not target.parent.exists():
        raise KasminaError(f"--plot {path}: folder {target.parent} does not exist")
    return target


def write(path: str | Path, store: EventStore, sites: Sequence[str], history: Mapping[str, Any], *,
          offset: int = 0, label: str = "validation metric") -> Path:
    """Write the three-panel PNG to ``path``."""
    target = check_target(path)
    import matplotlib.pyplot as plt

    fig = figure(store, sites, history, offset=offset, label=label)
    try:
        fig.savefig(target, dpi=100)
    finally:
        plt.close(fig)
    return target


#: How each contender is drawn and named.
CONTENDERS = {"host": "host alone (same batches)", "grown": "host with seeds (grown)",
              "static": "grown architecture, from scratch"}


def figure(store: EventStore, sites: Sequence[str], history: Mapping[str, Any], *, offset: int = 0,
           label: str = "validation metric") -> Any:
    """The figure itself (three axes: alpha, the metric per contender, lifecycle), for tests and notebooks.

    ``history`` maps each contender to ``{"step": [...], "value": [...]}``.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    grown_steps = [s - offset for s in history.get("grown", {}).get("step", []) if s > offset]
    last = max(grown_steps) if grown_steps else 0
    fig, (ax_alpha, ax_metric, ax_life) = plt.subplots(3, 1, figsize=(10, 9), sharex=True,
                                                      gridspec_kw={"height_ratios": [2, 2, 1.4]})
    paths = {site: trajectory(store, site, last) for site in sites}
    for site, (alphas, _) in paths.items():
        ax_alpha.plot([offset + s for s in range(len(alphas))], alphas, label=site)
    ax_alpha.set_ylabel("alpha")
    ax_alpha.set_ylim(-0.05, 1.05)
    ax_alpha.set_title("Blend weight per seed (rebuilt from the event log)")
    ax_alpha.legend(loc="upper left")
    for name, text in CONTENDERS.items():
        series = history.get(name) or {}
        if series.get("step"):
            ax_metric.plot(series["step"], series["value"], label=text)
    ax_metric.axvline(offset, color="grey", linestyle=":", linewidth=1)
    ax_metric.set_ylabel(label)
    ax_metric.set_title(f"{label[0].upper()}{label[1:]} of the three contenders (seeds grafted at the dotted line)")
    ax_metric.legend(loc="best")
    for row, (_, spans) in enumerate(paths.values()):
        for start, end, stage in spans:
            ax_life.broken_barh([(offset + start, max(end - start, 0.8))], (row - 0.4, 0.8),
                                color=STAGE_COLOURS[stage])
            if stage is Stage.CULLED:
                ax_life.plot([offset + start], [row], marker="X", markersize=12, color=STAGE_COLOURS[stage])
    ax_life.set_yticks(range(len(sites)), list(sites))
    ax_life.set_xlabel("training step (from the host's first)")
    ax_life.set_title("Lifecycle per site (a cross marks a cull)")
    ax_life.legend(handles=[Patch(color=c, label=s.name) for s, c in STAGE_COLOURS.items()], ncol=5,
                   fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    return fig
