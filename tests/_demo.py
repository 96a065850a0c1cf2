"""What the demo tests share: the console script, and a run killed with SIGKILL at a step."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

KASMINA = str(Path(sys.executable).with_name("kasmina"))


def kill_demo(args: list[str], *, after_step: int | None, db: Path) -> int:
    """Run ``kasmina demo ARGS`` and SIGKILL it once it reports a stage change at or after
    ``after_step`` on stderr (``None``: as soon as its log file exists, while the host still
    trains alone). Returns the child's exit status (``-SIGKILL``)."""
    # Not --quiet: the child reports each stage change on stderr as it happens ("step N: ...").
    child = subprocess.Popen([KASMINA, "demo", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert child.stderr is not None
    try:
        if after_step is None:
            deadline = time.monotonic() + 60
            while not db.exists() and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.005)
        else:
            for line in child.stderr:
                match = re.match(r"step (\d+):", line)
                if match and int(match.group(1)) >= after_step:
                    break
        assert child.poll() is None, "the demo ended before it could be killed"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        child.stderr.close()
    return child.returncode
