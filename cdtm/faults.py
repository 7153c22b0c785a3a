"""Named fault points, for the reliability tests (inert unless ``CDTM_FAULTS`` is set).

``CDTM_FAULTS="lake.before_commit@features=kill,train.step@25=kill"``: at the named point
(optionally only for one subject: a table name, a step number), the process SIGKILLs itself
(``kill``) or waits until a file exists (``wait:/path``), which is how the tests stop a job
between its executors' file writes and its commit, or line up two writers on one commit.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "CDTM_FAULTS"


def _actions() -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, _, action = item.partition("=")
        out[point] = action or "kill"
    return out


def fault_point(name: str, subject: object = None) -> None:
    """Act if ``name`` or ``name@subject`` is armed; otherwise return at once."""
    if ENV not in os.environ:
        return
    actions = _actions()
    action = actions.get(f"{name}@{subject}") or actions.get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("wait:"):
        path = action.removeprefix("wait:")
        while not os.path.exists(path):
            time.sleep(0.05)
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} for {name}")
