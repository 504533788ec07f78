"""Request ids, attempt ids and the task keys of a request's graph: made and parsed here
only (stdlib only, so every layer can use it).

- A task key is ``<step>-<request id>`` (``prefill-r1``), so the dashboard's task stream
  reads as the request path; the step never contains ``-``, the request id may.
- A request moved off a lost worker runs again under an attempt id ``<request id>~<n>``
  (n = 1, 2, ...): the engines that aborted the old attempt keep refusing its id, and
  the new attempt's tasks get keys of their own.
"""

from __future__ import annotations

from typing import Literal, get_args

Step = Literal["lookup", "prefill", "transfer", "decode", "generate"]
STEPS: tuple[Step, ...] = get_args(Step)
FINAL_STEPS: tuple[Step, ...] = ("decode", "generate")
"""Steps whose task's result is the request's final output (its end)."""
PREFILL_STEPS: tuple[Step, ...] = ("prefill", "generate")
"""Steps whose task computes the request's prefill (its first token)."""
ATTEMPT_SEP = "~"


def task_key(step: Step, request_id: str) -> str:
    """The key of ``step``'s task in the graph of ``request_id``."""
    if step not in STEPS:
        raise ValueError(f"step: must be one of {STEPS}, got {step!r}")
    return f"{step}-{request_id}"


def parse_task_key(key: object) -> tuple[Step, str] | None:
    """``(step, request id)`` of a request task's key; None for any other key."""
    if not isinstance(key, str):
        return None
    step, sep, rid = key.partition("-")
    if not sep or not rid or step not in STEPS:
        return None
    return step, rid  # narrowed to Step by the check against STEPS above


def attempt_number(request_id: str, attempt_id: str) -> int:
    """0 when ``attempt_id`` is the request's own id, n for ``<request id>~n``.

    Parsed against the request's own id, so an id that itself contains ``~`` is fine."""
    if attempt_id == request_id:
        return 0
    prefix = request_id + ATTEMPT_SEP
    n = attempt_id[len(prefix) :]
    if not attempt_id.startswith(prefix) or not n.isdigit():
        raise ValueError(f"attempt_id: {attempt_id!r} is not an attempt of {request_id!r}")
    return int(n)


def next_attempt(request_id: str, current: str | None = None) -> str:
    """The id of the request's attempt after ``current`` (its latest attempt id; None or
    ``request_id`` itself for the first run)."""
    n = 0 if current is None else attempt_number(request_id, current)
    return f"{request_id}{ATTEMPT_SEP}{n + 1}"


__all__ = [
    "ATTEMPT_SEP",
    "FINAL_STEPS",
    "PREFILL_STEPS",
    "STEPS",
    "Step",
    "attempt_number",
    "next_attempt",
    "parse_task_key",
    "task_key",
]
