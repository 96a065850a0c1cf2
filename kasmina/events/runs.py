"""Runs: one training job's share of a log.

A run has a name, its own positions, streams and hash chain, and a status. The ``default``
run is what a log held before runs existed, and what every call uses when none is named,
so code and logs from before runs behave as they did. The order *across* runs is a
:class:`FeedPosition` (see :meth:`kasmina.events.EventStore.read_all`).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

from kasmina.errors import KasminaError
from kasmina.events.hashing import GENESIS
from kasmina.events.schema import DEFAULT_RUN, RUN_STATUSES

if TYPE_CHECKING:
    from kasmina.events.store import RecordedEvent

#: The environment variable that names the run when the code or command line does not.
ENV_VAR = "KASMINA_RUN"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}")


class UnknownRun(KasminaError):
    """A reader named a run the log does not hold."""


def check_name(name: object) -> str:
    """A run name: 1-128 letters, digits and ``. _ : @ + = -``, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise KasminaError(f"run name must be 1-128 letters, digits or . _ : @ + = - (starting with a letter or "
                           f"digit), got {name!r}")
    return name


def resolve(name: str | None) -> str:
    """The run to use: the one named, else ``$KASMINA_RUN``, else ``default``."""
    return check_name(name if name is not None else (os.environ.get(ENV_VAR) or DEFAULT_RUN))


def genesis(name: str) -> str:
    """The hash a run's chain starts from. The default run keeps the log's original genesis
    (old logs verify unchanged); any other run's is bound to its name, so a run's events
    copied under another name fail ``verify``."""
    return GENESIS if name == DEFAULT_RUN else hashlib.sha256(f"kasmina run {name}".encode()).hexdigest()


def check_status(status: str) -> str:
    if status not in RUN_STATUSES:
        raise KasminaError(f"run status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
    return status


def this_process() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A row of ``kasmina_runs`` as a reader sees it."""

    run_id: int
    name: str
    status: str
    created_at: datetime
    updated_at: datetime
    host: str | None
    pid: int | None
    config: Mapping[str, Any] | None
    owner: str | None
    last_position: int
    last_hash: str

    @property
    def effective_status(self) -> str:
        """``crashed`` for a run recorded as running whose process, on this host, is gone."""
        if self.status == "running" and self.pid is not None and self.host == socket.gethostname():
            if not _alive(self.pid):
                return "crashed"
        return self.status


class FeedPosition(NamedTuple):
    """Where a reader of every run stands: ``(tx, run_id, position)``, compared as a tuple."""

    tx: int
    run_id: int
    position: int


#: Before every event of every run.
FEED_START = FeedPosition(-1, 0, 0)


class FeedEvent(NamedTuple):
    """An event in the order across runs, with the run it belongs to."""

    at: FeedPosition
    run: str
    event: RecordedEvent
