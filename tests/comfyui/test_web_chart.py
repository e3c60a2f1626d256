"""web/js/rgd_loss_chart.js in ComfyUI's own page, in headless Chromium: the chart receives a point per RGD step.

Needs Debian's chromium (`apt-get install chromium`) besides the ComfyUI set-up; skipped without it.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from browser import evaluate, find_chromium, open_comfyui, start, stop
from test_server import fast, node_of  # the server tests' helpers (tests/comfyui is on sys.path under pytest)


def runs_of(histories: list, node: str) -> list:
    return [run for run in histories if run and str(run[0]["node"]) == node]


async def drive(page_ws: str, url: str, run_workflow, node: str, steps: int, timeout: float = 120) -> list:
    """The page's loss histories once the node's latest run holds ``steps`` points, or at the (generous) deadline:
    the last websocket messages may reach the page after /history already reports the prompt done."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(page_ws, max_msg_size=0) as ws:
        await open_comfyui(ws, url, "typeof window.rgdLossHistories === 'object'")
        # the first rgd.loss message comes after the model has sampled its data, long after the page's websocket opened
        await asyncio.get_running_loop().run_in_executor(None, run_workflow)
        deadline = time.monotonic() + timeout
        while True:
            histories = json.loads(await evaluate(ws, "JSON.stringify([...window.rgdLossHistories.values()])"))
            runs = runs_of(histories, node)
            if (runs and len(runs[-1]) >= steps) or time.monotonic() > deadline:
                return histories
            await asyncio.sleep(0.25)


def test_the_loss_chart_receives_a_point_per_step(server, example, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("headless Chromium not found (apt-get install chromium)")
    workflow = fast(example("rgd_unlearn_and_save.json"), seed=77, steps=3, prefix="rgd/chart")
    unlearn = node_of(workflow, "RGDUnlearn")
    browser, page = start(binary, tmp_path / "profile")
    try:
        histories = asyncio.run(drive(page, server.url, lambda: server.run(workflow), unlearn, steps=3))
    finally:
        stop(browser)
    runs = runs_of(histories, unlearn)
    assert runs, histories
    assert [point["step"] for point in runs[-1]] == [0, 1, 2]
    assert all({"forget_loss", "retain_loss", "conflict_rate"} <= set(point) for point in runs[-1])
