"""A hand-off's import from a host tier and the request's admission run as one engine
command (``EngineLoop.import_and_add``): the request joins the engine's next step, not
the step after (two commands in a row met two step boundaries)."""

from __future__ import annotations

from typing import Any

import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.sampling_params import SamplingParams
from mooncake.worker.engine_loop import AddRequest, EngineLoop, RequestAborted, Watch
from tests.worker.engine_loop_doubles import RecordingChannel

LONG = SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True)


@pytest.fixture
def loop(tiny_llama) -> EngineLoop:
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    return EngineLoop(engine, RecordingChannel())  # type: ignore[arg-type]


def _tier(loop: EngineLoop, found: int | Exception) -> list[tuple[str, list[bytes], bool]]:
    """Replace the tier import: it finds ``found`` blocks (or raises it)."""
    calls: list[tuple[str, list[bytes], bool]] = []

    def import_from_tier(path: str, keys: list[bytes], hand_off: bool = False) -> Any:
        calls.append((path, keys, hand_off))
        if isinstance(found, Exception):
            raise found
        return found, found, found * 100

    loop.import_from_tier = import_from_tier  # type: ignore[method-assign]
    return calls


def test_all_blocks_found_admits_in_the_same_command(loop) -> None:
    """The tier holds every block: the request is admitted in the same command (a
    hand-off import), and the loop's next step already gives it a token."""
    calls = _tier(loop, 2)
    loop.add(AddRequest("busy", list(range(3, 23)), LONG, Watch(None)))
    loop._step()
    req = AddRequest("r", list(range(40, 72)), LONG, Watch(None))
    assert loop.import_and_add("tier", [b"a", b"b"], req) == (2, 2, 200, True)
    assert calls == [("tier", [b"a", b"b"], True)]
    outputs = loop.engine.step()
    assert "r" in {o.request_id for o in outputs if o.outputs[0].token_ids}


def test_missing_blocks_leave_the_admission_to_the_worker(loop) -> None:
    """The tier lacks a block: nothing is admitted (the worker fetches the rest, then
    adds); an unreadable tier answers the same, without raising."""
    req = AddRequest("r", list(range(40, 72)), LONG, Watch(None))
    _tier(loop, 1)
    assert loop.import_and_add("tier", [b"a", b"b"], req) == (1, 1, 100, False)
    _tier(loop, OSError("unreadable"))
    assert loop.import_and_add("tier", [b"a", b"b"], req) == (0, 0, 0, False)
    assert not loop.engine.has_unfinished()


def test_an_aborted_request_is_refused(loop) -> None:
    """An abort that reached the engine before the command: the blocks are imported,
    the admission raises ``RequestAborted`` (the worker's transfer fails as an ``add``
    would)."""
    _tier(loop, 2)
    loop.abort("r")
    with pytest.raises(RequestAborted):
        loop.import_and_add("tier", [b"a", b"b"], AddRequest("r", [1, 2, 3], LONG, Watch(None)))
    assert not loop.engine.has_unfinished()
