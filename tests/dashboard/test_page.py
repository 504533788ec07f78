"""The Mooncake dashboard page and the scheduler's ``/metrics`` on a running cluster that
has served requests: Prometheus text carries the Conductor's metrics, and headless
Chromium renders the page with data in every plot (checked in the browser's Bokeh
document, then a screenshot)."""

from __future__ import annotations

import os
import random
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

import mooncake
from mooncake.config import EngineConfig
from tests.dashboard.chromium import Browser, find_or_install

pytestmark = pytest.mark.cluster

PARAMS = mooncake.SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
SOURCES = [
    "mooncake-workers",
    "mooncake-kv",
    "mooncake-hit-rate",
    "mooncake-ttft",
    "mooncake-tbt",
    "mooncake-rejections",
]
COUNT_JS = """(() => {
  if (!window.Bokeh || !Bokeh.documents || !Bokeh.documents.length) return null;
  const doc = Bokeh.documents[0], out = {};
  for (const name of SOURCES) {
    const m = doc.get_model_by_name(name);
    if (!m) { out[name] = -1; continue; }
    const data = m.data instanceof Map ? Object.fromEntries(m.data) : m.data;
    const cols = Object.keys(data);
    out[name] = cols.length ? data[cols[0]].length : 0;
  }
  return out;
})()""".replace("SOURCES", repr(SOURCES))


def _batch(n: int, seed: int) -> list[list[int]]:
    """Few-shot style: two 48-token templates, short questions."""
    rng = random.Random(seed)
    templates = [[rng.randrange(300) for _ in range(48)] for _ in range(2)]
    return [
        templates[i % 2] + [rng.randrange(300) for _ in range(rng.randrange(4, 20))]
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def served(tiny_llama):
    """A cluster with its dashboard, after serving two bursts 1.2 s apart (so the
    hit-rate timeline has points)."""
    with mooncake.LLM(
        str(tiny_llama), engine_config=EngineConfig(num_blocks=256), dashboard_address="127.0.0.1:0"
    ) as llm:
        llm.generate(_batch(12, 0), PARAMS, use_tqdm=False)
        time.sleep(1.2)
        llm.generate(_batch(12, 1), PARAMS, use_tqdm=False)
        time.sleep(0.3)
        yield llm


def _metrics(llm) -> dict[str, float]:
    text = (
        urllib.request.urlopen(llm.dashboard_link.rsplit("/", 1)[0] + "/metrics", timeout=30)
        .read()
        .decode()
    )
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(mooncake:[^\s]+)\s+([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_scheduler_metrics(served):
    """The scheduler's /metrics has the request histograms (24 requests), prefix-cache
    token counters with device hits, per-worker KV usage and the admissions."""
    m = _metrics(served)
    name = served.model_name
    assert m[f'mooncake:time_to_first_token_seconds_count{{model_name="{name}"}}'] == 24
    assert m[f'mooncake:request_time_between_tokens_seconds_count{{model_name="{name}"}}'] == 24
    assert m[f'mooncake:request_admitted_total{{model_name="{name}"}}'] == 24
    queries = m[f'mooncake:prefix_cache_queries_total{{model_name="{name}"}}']
    device = m[f'mooncake:prefix_cache_hits_total{{model_name="{name}",source="device"}}']
    assert 0 < device < queries
    usage = [k for k in m if k.startswith("mooncake:kv_cache_usage_perc") and 'tier="device"' in k]
    assert len(usage) == 2  # one per worker
    # The prefill worker publishes its blocks to its host tier; decode pulls them from it.
    host_used = [
        v
        for k, v in m.items()
        if k.startswith("mooncake:kv_cache_blocks") and 'tier="host"' in k and 'state="used"' in k
    ]
    assert len(host_used) == 2 and max(host_used) > 0
    moved = {k: v for k, v in m.items() if k.startswith("mooncake:kv_transfer_bytes_total")}
    assert moved and sum(moved.values()) > 0, moved
    assert any(k.startswith("mooncake:request_rejected_total") for k in m)


def test_page_linked_from_dashboard(served):
    """The Dask dashboard's navigation links the Mooncake page, which the client names."""
    assert served.mooncake_dashboard_link.endswith("/mooncake")
    status = urllib.request.urlopen(served.dashboard_link, timeout=30).read().decode()
    assert 'href="mooncake"' in status


def test_page_renders_with_data(served, tmp_path):
    """Headless Chromium loads the page; every plot's data source holds data; a
    screenshot is written (to $MOONCAKE_DASHBOARD_SCREENSHOT when set)."""
    binary = find_or_install()
    if binary is None:
        pytest.skip(
            "chromium is not installed and cannot be installed here (needs root and apt-get)"
        )
    browser = Browser(binary)
    try:
        browser.goto(served.mooncake_dashboard_link)
        deadline = time.time() + 60
        counts = None
        while time.time() < deadline:
            counts = browser.evaluate(COUNT_JS)
            if counts and all(counts[s] > 0 for s in SOURCES):
                break
            time.sleep(0.5)
        assert counts and all(counts[s] > 0 for s in SOURCES), counts
        assert counts["mooncake-workers"] == 2
        time.sleep(0.5)  # let the canvas paint the last update
        shot = tmp_path / "mooncake-dashboard.png"
        browser.screenshot(shot)
    finally:
        browser.close()
    assert shot.stat().st_size > 20_000
    if os.environ.get("MOONCAKE_DASHBOARD_SCREENSHOT"):
        shutil.copy(shot, Path(os.environ["MOONCAKE_DASHBOARD_SCREENSHOT"]))
