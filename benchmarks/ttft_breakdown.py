"""Where the Dask path's time to first token goes, per request (null model, so no
compute): submit -> prefill task start, the prefill task's run (the lookup, then the
prefill), and prefill task start -> first token at the client (negative when the lookup
at placement already admitted the request and the token arrived before the prefill task
was dispatched). Task times come from Dask's task stream. The lookup usually runs on
the prefill worker at placement, before its task: the task then only collects it, and
"total" is the number to read.

    python benchmarks/ttft_breakdown.py
"""

import asyncio
import statistics
import time

from distributed import get_task_stream

from mooncake.client import LLM
from mooncake.config import EngineConfig
from mooncake.request_ids import parse_task_key
from mooncake.sampling_params import SamplingParams


def main() -> None:
    llm = LLM(engine_config=EngineConfig(num_blocks=512, null_model=True), dashboard_address=None)
    p = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)

    async def requests():
        res = []
        for i in range(25):
            t_sub = time.time()
            outs = [(o, time.time()) async for o in llm.stream([5] * 50 + [i], p)]
            res.append((outs[-1][0].request_id, t_sub, outs[-1][1]))
            await asyncio.sleep(0.05)
        return res

    with get_task_stream(client=llm.client) as ts:
        res = asyncio.run(requests())
        time.sleep(0.5)
    by = {}
    for d in ts.data:
        parsed = parse_task_key(d["key"])
        if parsed is None:
            continue
        step, rid = parsed
        st = {x["action"]: (x["start"], x["stop"]) for x in d["startstops"]}
        by.setdefault(rid, {})[step] = st.get("compute", (None, None))
    rows = []
    for rid, t_sub, t_tok in res[5:]:
        b = by.get(rid, {})
        if "prefill" in b:
            rows.append(
                (
                    b["prefill"][0] - t_sub,
                    b["prefill"][1] - b["prefill"][0],
                    t_tok - b["prefill"][0],
                    t_tok - t_sub,
                )
            )
    for name, col in zip(
        [
            "submit->prefill task start",
            "prefill task run",
            "prefill start->token at client",
            "total",
        ],
        zip(*rows),
    ):
        print(f"{name:32s} p50 {statistics.median(col) * 1e3:7.2f} ms")
    llm.close()


if __name__ == "__main__":
    main()
