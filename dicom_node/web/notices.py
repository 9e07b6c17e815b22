"""The sentence a console page shows after an action (``?done=...&target=...&n=...``).

Only codes of :data:`DONE` are shown, filled with the target (escaped like
every value) and a count: a link cannot make a page say anything else.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query

__all__ = ["DONE", "Notice", "done_message"]

#: ``done`` codes -> the sentence shown on the page the action returns to.
DONE: dict[str, str] = {
    "retry:job": "job {target}: queued again",
    "retry:deliveries": "job {target}: {n} failed deliverie(s) set to pending",
    "retry:nothing": "job {target}: nothing to retry (queued, running, or no failed delivery)",
    "retry:purged": "job {target}: its files were purged; it cannot be retried",
    "cancel:job": "job {target}: cancelled ({n} pending deliverie(s) cancelled)",
    "cancel:deliveries": "job {target}: {n} pending deliverie(s) cancelled",
    "cancel:nothing": "job {target}: nothing to cancel",
    "rerun:queued": "job {target}: re-run queued as job {n}",
    "rerun:busy": "job {target}: a job of the same series is still queued or running; "
    "re-run it when that has finished",
    "rerun:purged": "job {target}: its files were purged; it cannot be re-run",
    "complete:done": "{target}: completed, {n} job(s) queued",
    "complete:unchanged": "{target}: already complete with the same instances; nothing queued",
    "complete:concurrent": "{target}: was completed at the same moment; look again",
    "complete:paused": "{target}: a rule it matches is paused; it runs when the rule is resumed",
    "pause:done": "{target}: paused",
    "pause:already": "{target}: was paused already",
    "resume:done": "{target}: resumed",
    "resume:already": "{target}: was not paused",
}


def done_message(done: str | None, target: str | None, n: int | None) -> str | None:
    """The sentence for a ``done`` code (``None`` for none or an unknown one)."""
    if not done or done not in DONE:
        return None
    return DONE[done].format(target=target or "", n=n if n is not None else "")


def _notice(
    done: Annotated[str | None, Query(max_length=32)] = None,
    target: Annotated[str | None, Query(max_length=160)] = None,
    n: Annotated[int | None, Query(ge=0)] = None,
) -> str | None:
    return done_message(done, target, n)


Notice = Annotated[str | None, Depends(_notice)]
"""The notice of the request's ``done`` parameters, for a route to render."""
