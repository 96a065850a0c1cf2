"""Which log, and which run in it, an executor writes to; and how the run's status ends.

An executor opens its run by name (``Executor(..., run="name")``, else ``$KASMINA_RUN``,
else ``default``); a store passed as ``db`` is used with the run it is bound to. The leader marks it ``running`` (host, process, configuration) and, at
``close()``, ``finished``; leaving an executor's ``with`` block through an exception marks
it ``crashed``. A run whose process died without either stays ``running`` in the table
and is reported ``crashed`` by ``kasmina runs`` when its process is gone from its host.
Followers (other ranks) never write the status.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from kasmina.errors import StoreError
from kasmina.events import EventStore, default_url
from kasmina.events import runs as _runs

logger = logging.getLogger(__name__)


class RunLog:
    """The store an executor uses, whether it opened it, and whether it keeps the run's status."""

    def __init__(self, db: str | EventStore | None, run: str | None, config: Mapping[str, Any] | None,
                 leader: bool) -> None:
        from kasmina.events import migrate, open_store

        if isinstance(db, EventStore):
            # A store given is used as bound (its owner keeps the run's status), unless a run
            # is named: then that run of the same log, whose status this executor keeps.
            self.store = db if run is None or db.run == _runs.check_name(run) else db.for_run(run, create=True)
            self.owns = False
            self.keeps_status = leader and run is not None
            if self.keeps_status:
                self.store.mark_run("running", config=config)
            return
        name = _runs.resolve(run)
        url = default_url() if db is None else db
        self.owns = True
        self.keeps_status = leader
        # A follower may come up before its leader has created the run: creating the row is
        # idempotent, and it writes no status.
        self.store = (migrate.open_log(url, run=name, config=config) if leader
                      else open_store(url, run=name, create_run=True))

    def end(self, crashed: bool) -> None:
        """Record how the run ended (``finished`` or ``crashed``) and close a store we opened.

        The status is a convenience over the log, not part of it: when the database cannot
        take it (gone, read-only), the events already written stand, the run stays
        ``running`` (reported ``crashed`` once its process is gone) and closing goes on.
        """
        try:
            if self.keeps_status:
                self.store.mark_run("crashed" if crashed else "finished")
        except StoreError as e:
            logger.warning("run %r: could not record its end: %s", self.store.run, e)
        finally:
            if self.owns:
                self.store.close()
