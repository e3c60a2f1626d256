"""Open Forge's page in headless Chromium, switch to the Unlearn tab and save a screenshot of it:
``screenshot.py URL OUT.png``. Runs with Forge's own Python (it has aiohttp); fails unless the tab's Unlearn button
is shown. Uses the DevTools helpers of tests/comfyui/browser.py."""

import asyncio
import base64
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "comfyui"))
from browser import evaluate, find_chromium, start, stop  # noqa: E402

ROOT_JS = "(document.querySelector('gradio-app') && document.querySelector('gradio-app').shadowRoot) || document"
TAB_BUTTON = (f"Array.from(({ROOT_JS}).querySelectorAll('button'))"
              ".find(b => b.textContent.trim() === 'Unlearn' && !b.closest('#tab_rgd'))")
SHOWN = f"(() => {{ const b = ({ROOT_JS}).querySelector('#rgd_run'); return !!(b && b.offsetParent); }})()"


async def call(ws, request: int, method: str, params: dict) -> dict:
    await ws.send_json({"id": request, "method": method, "params": params})
    while True:
        message = await ws.receive_json()
        if message.get("id") == request:
            return message.get("result", {})


async def shoot(ws_url: str, url: str, out: Path) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url, max_msg_size=0) as ws:
            await call(ws, 900001, "Emulation.setDeviceMetricsOverride",
                       {"width": 1500, "height": 1250, "deviceScaleFactor": 1, "mobile": False})
            await call(ws, 900002, "Page.navigate", {"url": url})
            deadline = time.monotonic() + 240
            while not await _try(ws, f"!!({TAB_BUTTON})"):
                assert time.monotonic() < deadline, "Forge's page never showed the Unlearn tab button"
                await asyncio.sleep(1)
            await evaluate(ws, f"({TAB_BUTTON}).click()")
            while not await _try(ws, SHOWN):
                assert time.monotonic() < deadline, "the Unlearn tab never showed its Unlearn button"
                await asyncio.sleep(1)
            await asyncio.sleep(2)  # let the layout settle
            shot = await call(ws, 900003, "Page.captureScreenshot", {"format": "png"})
            out.write_bytes(base64.b64decode(shot["data"]))


async def _try(ws, expression: str):
    try:
        return await evaluate(ws, expression)
    except RuntimeError:
        return False  # the page is still loading


def main() -> None:
    url, out = sys.argv[1], Path(sys.argv[2])
    binary = find_chromium()
    if binary is None:
        sys.exit("no Chromium")
    with tempfile.TemporaryDirectory() as profile:
        process, ws_url = start(binary, Path(profile))
        try:
            asyncio.run(shoot(ws_url, url, out))
        finally:
            stop(process)


if __name__ == "__main__":
    main()
