"""Resuming after a kill: the steps the log holds past a checkpoint, executed again under
the decisions the log already holds for them (the demo's ``--resume``, the trainer
callbacks' resume)."""

from __future__ import annotations

from typing import Any

from kasmina.events import EventStore


class CatchUp:
    """Re-executing the steps a kill lost, under the decisions the log already holds for them.

    The executor is a follower over a :class:`~kasmina.events.LogView` clipped at the
    checkpoint; before each step the view moves to the last event recorded at or before
    that step and the executor folds it (``sync``), exactly when the killed run made it.
    """

    def __init__(self, store: EventStore, view: Any, after: int) -> None:
        self.view = view
        self.marks: list[tuple[int, int]] = []  # (position, step), steps inherited forward
        step = 0
        for event in store.read(after=after):
            given = event.data.get("step")
            # Monotone: a fact recorded late (a kernel_attached that lead() held back) carries
            # the step it happened at, but must not pull later positions back with it.
            step = max(step, given) if isinstance(given, int) else step
            self.marks.append((event.position, step))
        self.head = self.marks[-1][0] if self.marks else after
        self.last_step = max((s for _, s in self.marks), default=0)

    def fold(self, ex: Any) -> None:
        upto = max((p for p, s in self.marks if s <= ex.step_count), default=self.view.limit)
        if upto > self.view.limit:
            self.view.advance(upto)
            ex.sync()

    def done(self, ex: Any) -> bool:
        return self.view.limit >= self.head and ex.step_count >= self.last_step

    def finish(self, ex: Any) -> None:
        self.view.release()
        ex.sync()  # anything recorded past the last mark (nothing, unless the log grew meanwhile)
        ex.lead()
