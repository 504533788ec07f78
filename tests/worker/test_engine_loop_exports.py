"""A prefill worker's engine loop waits briefly, before its next step, for the export of
a prefill that just finished, so the hand-off to decode does not wait for that step."""

from __future__ import annotations

import time

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.sampling_params import SamplingParams
from mooncake.worker.engine_loop import EXPORT_WAIT_S, AddRequest, EngineLoop, Watch
from tests.worker.engine_loop_doubles import RecordingChannel, ScriptedChannel

FIRST = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
LONG = SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True)


def test_loop_waits_for_the_export_of_a_finished_prefill_only(tiny_llama) -> None:
    """A prefill-only request (kept KV) finishes while another request keeps the engine
    busy: the loop then waits up to ``EXPORT_WAIT_S`` for commands before its next step
    (the worker's export is on its way), and not at all once the export came. A
    colocated request that finishes asks for no wait, and an export that never comes
    stops the wait after ``EXPORT_WAIT_S``."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    loop = EngineLoop(engine, RecordingChannel())  # type: ignore[arg-type]
    loop.add(AddRequest("busy", list(range(3, 23)), LONG, Watch(None)))
    loop.add(
        AddRequest("p", list(range(40, 72)), FIRST, Watch(None, prefill_only=True), keep_kv=True)
    )
    loop.add(AddRequest("c", list(range(80, 90)), FIRST, Watch(None)))
    assert loop._command_wait(time.monotonic()) == 0.0
    loop._step()  # prefills all three: "p" and "c" are done, "busy" decodes on
    assert engine.has_unfinished()
    now = time.monotonic()
    assert 0.0 < loop._command_wait(now) <= EXPORT_WAIT_S
    loop.export_kv("p")
    assert loop._command_wait(time.monotonic()) == 0.0

    loop.add(
        AddRequest("q", list(range(100, 120)), FIRST, Watch(None, prefill_only=True), keep_kv=True)
    )
    loop._step()
    assert loop._command_wait(time.monotonic()) > 0.0
    assert loop._command_wait(time.monotonic() + EXPORT_WAIT_S) == 0.0  # never came
    assert loop._command_wait(time.monotonic()) == 0.0


def test_loop_waits_for_every_export_of_one_step(tiny_llama) -> None:
    """Two prefill-only requests finish in one step; their exports come from two tasks,
    the second 8 ms after the first. The loop runs the first, then waits on for the
    second before its next step (a loop that stepped after the first kept the second
    hand-off waiting for a whole step)."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    loop = EngineLoop(engine, RecordingChannel())  # type: ignore[arg-type]
    loop.add(AddRequest("busy", list(range(3, 23)), LONG, Watch(None)))
    for rid, base in (("p1", 40), ("p2", 80)):
        loop.add(
            AddRequest(
                rid,
                list(range(base, base + 20)),
                FIRST,
                Watch(None, prefill_only=True),
                keep_kv=True,
            )
        )
    loop._step()
    assert set(loop._exports_due) == {"p1", "p2"}
    channel = ScriptedChannel(
        [
            (0.0, (1, "export_kv", ("p1",), {})),
            (0.008, (2, "export_kv", ("p2",), {})),
            (0.2, (3, "stop", (), {})),
        ]
    )
    assert _answers_before_first_step(loop, channel) == 2


def test_idle_loop_given_new_requests_waits_for_a_due_export(tiny_llama) -> None:
    """A lone prefill-only request finishes and the engine is idle; within the export
    window a burst of new requests arrives, then the export. The loop does not start
    the burst's prefill before the export (that export waited for the whole prefill of
    the burst, ~0.5 s in a traced run). A prefill-only request that ended at prefill
    (its final ``max_tokens`` reached) is not waited for: nobody waits for its export."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    loop = EngineLoop(engine, RecordingChannel())  # type: ignore[arg-type]
    loop.add(
        AddRequest("p", list(range(40, 60)), FIRST, Watch(None, prefill_only=True), keep_kv=True)
    )
    ended = Watch(None, prefill_only=True, final_max_tokens=1)
    loop.add(AddRequest("e", list(range(70, 90)), FIRST, ended, keep_kv=True))
    loop._step()
    assert not engine.has_unfinished()
    assert set(loop._exports_due) == {"p"}
    new = AddRequest("n", list(range(100, 130)), LONG, Watch(None))
    channel = ScriptedChannel(
        [
            (0.0, (1, "add", (new,), {})),
            (0.006, (2, "export_kv", ("p",), {})),
            (0.2, (3, "stop", (), {})),
        ]
    )
    assert _answers_before_first_step(loop, channel) == 2


def _answers_before_first_step(loop: EngineLoop, channel: ScriptedChannel) -> int:
    """Run ``loop`` on ``channel``'s script; how many commands it had answered when it
    started its first step."""
    loop.channel = channel  # type: ignore[assignment]
    answered: list[int] = []
    step = loop._step

    def counted() -> None:
        if not answered:
            answered.append(sum(1 for m in channel.sent if m[0] == "result"))
        step()

    loop._step = counted  # type: ignore[method-assign]
    loop.run()
    assert answered, "the loop never stepped"
    return answered[0]
