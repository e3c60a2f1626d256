"""For tests that start a server (`rgd ui`, a real ComfyUI, a real Forge): a free loopback port, and skipping a
folder's tests, with the set-up they need, when that server is not configured."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def skip_folder_unless(configured: bool, folder: Path, items, reason: str) -> None:
    """In ``pytest_collection_modifyitems``: mark every test under ``folder`` skipped, with ``reason``, unless
    ``configured``."""
    if configured:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if folder in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
