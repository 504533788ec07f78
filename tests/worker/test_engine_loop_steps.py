"""The engine loop times its decode-only steps (the Conductor's decode fit) and its
prompt-only steps (the prefill step fit of the cost-model export)."""

from __future__ import annotations

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.sampling_params import SamplingParams
from mooncake.worker.engine_loop import AddRequest, EngineLoop, Watch
from tests.worker.engine_loop_doubles import RecordingChannel

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def test_decode_only_steps_are_timed_with_their_shape(tiny_llama) -> None:
    """Two prompts (20 and 9 tokens) generate 6 tokens each: the first step prefills
    both, reported as a prompt-only step with its chunks (0..20, 0..9); the next five
    are decode-only steps of 2 sequences attending over 21 + 10 tokens, then 2 more
    each step, each reported once, with a positive duration, in the state messages the
    loop sends; each decode step after the first carries the loop's gap since the
    previous one (the first follows a prompt step: no gap)."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    channel = RecordingChannel()
    loop = EngineLoop(engine, channel)  # type: ignore[arg-type]
    loop.add(AddRequest("a", list(range(3, 23)), GREEDY, Watch(None)))
    loop.add(AddRequest("b", list(range(40, 49)), GREEDY, Watch(None)))
    for _ in range(20):
        if not engine.has_unfinished():
            break
        loop._step()
    loop._send_state([], [])  # the idle loop flushes the last step's timing
    steps = [t for m in channel.sent if m[0] == "state" for t in m[6]]
    assert steps[0][:2] == (0, 0) and steps[0][4] == ((20, 0), (9, 0))
    decode = steps[1:]
    assert [(b, kv) for b, kv, *_ in decode] == [(2, 31 + 2 * i) for i in range(5)]
    assert all(s > 0 for _, _, s, _, _ in steps)
    assert decode[0][3] is None and all(g is not None and g >= 0 for *_, g, _ in decode[1:])
