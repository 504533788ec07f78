"""Request ids, attempt ids and task keys: made and parsed in one place."""

from __future__ import annotations

import pytest

from mooncake.request_ids import (
    STEPS,
    attempt_number,
    next_attempt,
    parse_task_key,
    task_key,
)


@pytest.mark.parametrize("rid", ["r1", "cmpl-3f2a-9", "batch-0~2", "a~b"])
def test_task_key_round_trip(rid: str) -> None:
    """Every step's key parses back to that step and the request id, also when the id
    contains ``-`` or ``~``."""
    for step in STEPS:
        key = task_key(step, rid)
        assert key == f"{step}-{rid}"
        assert parse_task_key(key) == (step, rid)


@pytest.mark.parametrize("key", ["place-r1", "prefill-", "prefill", "", 42, ("prefill", 1)])
def test_other_keys_are_not_request_tasks(key: object) -> None:
    """A key of another task (an unknown step, no request id, not a string) parses to None."""
    assert parse_task_key(key) is None


def test_unknown_step_is_refused() -> None:
    """A step outside the graph's steps raises ValueError naming the field."""
    with pytest.raises(ValueError, match="step"):
        task_key("place", "r1")  # type: ignore[arg-type]


def test_attempts_count_up_from_the_request_id() -> None:
    """A request's attempts are ``id~1``, ``id~2``, ...; each is parsed against the
    request's own id, so an id that itself ends in ``~3`` starts at ``~1`` too."""
    assert next_attempt("r1") == "r1~1"
    assert next_attempt("r1", "r1") == "r1~1"
    assert next_attempt("r1", "r1~1") == "r1~2"
    assert attempt_number("r1", "r1~2") == 2
    assert next_attempt("user~3", "user~3") == "user~3~1"
    assert next_attempt("user~3", "user~3~1") == "user~3~2"
    assert attempt_number("user~3", "user~3") == 0


def test_foreign_attempt_is_refused() -> None:
    """An attempt id of another request raises ValueError naming the field."""
    with pytest.raises(ValueError, match="attempt_id"):
        attempt_number("r1", "r2~1")
