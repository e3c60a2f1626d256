"""The example workflows: the UI-format files (what ComfyUI's template browser opens) describe the same graphs as the
API-format copies the ComfyUI integration tests post (tests/comfyui/ui_workflows.py regenerates the UI files)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "example_workflows"
NAMES = sorted(path.name for path in (EXAMPLES / "api").glob("*.json"))


def test_every_api_example_has_its_ui_file():
    assert NAMES == sorted(path.name for path in EXAMPLES.glob("*.json"))
    assert {"rgd_unlearn_and_save.json", "rgd_before_after.json", "rgd_lora_in_loraloader.json"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_ui_and_api_examples_hold_the_same_nodes_and_links(name):
    api = json.loads((EXAMPLES / "api" / name).read_text())
    ui = json.loads((EXAMPLES / name).read_text())
    assert Counter(node["class_type"] for node in api.values()) == Counter(node["type"] for node in ui["nodes"])
    api_links = sum(isinstance(value, list) for node in api.values() for value in node["inputs"].values())
    assert api_links == len(ui["links"])
