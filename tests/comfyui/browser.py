"""Headless Chromium driven over its DevTools protocol (with aiohttp, which ComfyUI already depends on)."""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

_ids = itertools.count(1)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def start(binary: str, profile: Path) -> tuple[subprocess.Popen, str]:
    """Chromium on a free debugging port; returns (process, the blank page's DevTools websocket URL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                pages = [p for p in json.loads(response.read()) if p["type"] == "page"]
            if pages:
                return process, pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            stop(process)
            raise RuntimeError("Chromium did not start")
        time.sleep(0.5)


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """Terminate ``process``, and kill it if it has not exited after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def evaluate(ws, expression: str):
    """The value of a JavaScript expression in the page (promises awaited)."""
    request = next(_ids)
    await ws.send_json({"id": request, "method": "Runtime.evaluate",
                        "params": {"expression": expression, "returnByValue": True, "awaitPromise": True}})
    while True:
        message = await ws.receive_json()
        if message.get("id") == request:
            result = message.get("result", {})
            if "exceptionDetails" in result:
                raise RuntimeError(json.dumps(result["exceptionDetails"])[:2000])
            return result.get("result", {}).get("value")


async def open_comfyui(ws, url: str, ready: str, timeout: float = 180) -> None:
    """Navigate to ComfyUI's page and wait until the expression ``ready`` is true there."""
    import asyncio

    await ws.send_json({"id": next(_ids), "method": "Page.navigate", "params": {"url": url}})
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await evaluate(ws, ready):
                return
        except RuntimeError:
            pass  # the page is still loading
        if time.monotonic() > deadline:
            raise AssertionError(f"ComfyUI's page never got ready ({ready})")
        await asyncio.sleep(1)
