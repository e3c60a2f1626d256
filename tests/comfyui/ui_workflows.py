"""Write the UI-format example workflows (what ComfyUI's template browser opens) from the API-format ones.

    python tests/comfyui/ui_workflows.py http://127.0.0.1:PORT

needs a running ComfyUI with this pack and headless Chromium. Each example_workflows/api/<name>.json (the graphs the
integration tests post to /prompt) is loaded into ComfyUI's own page with its API-format loader, laid out there and
serialised back as example_workflows/<name>.json, so the two formats always describe the same graph.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

from browser import evaluate, find_chromium, open_comfyui, start, stop

EXAMPLES = Path(__file__).resolve().parents[2] / "example_workflows"


def fixed_seeds(graph: dict) -> dict:
    """Seed widgets set to stay as they are after a run: before/after pairs must share their noise, and a changed
    seed would make ComfyUI re-run the unlearning on every queue."""
    for node in graph["nodes"]:
        node["widgets_values"] = ["fixed" if value == "randomize" else value for value in node.get("widgets_values", [])]
    return graph


async def convert(page_ws: str, url: str) -> list[Path]:
    import aiohttp

    written = []
    async with aiohttp.ClientSession() as session, session.ws_connect(page_ws, max_msg_size=0) as ws:
        await open_comfyui(ws, url, "!!(window.app && window.app.graph && window.app.loadApiJson)")
        for source in sorted((EXAMPLES / "api").glob("*.json")):
            api = source.read_text()
            graph = await evaluate(ws, f"(async () => {{ await window.app.loadApiJson({api}, {json.dumps(source.name)});"
                                       " return JSON.stringify(window.app.graph.serialize()); })()")
            target = EXAMPLES / source.name
            target.write_text(json.dumps(fixed_seeds(json.loads(graph)), indent=2) + "\n")
            written.append(target)
    return written


def main(url: str) -> None:
    binary = find_chromium()
    if binary is None:
        raise SystemExit("headless Chromium not found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        browser, page = start(binary, Path(profile))
        try:
            for path in asyncio.run(convert(page, url)):
                print(path)
        finally:
            stop(browser)


if __name__ == "__main__":
    main(sys.argv[1])
