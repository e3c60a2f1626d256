"""ComfyUI entry point of the rgd node pack.

ComfyUI imports this file from custom_nodes/. The nodes live in nodes/ and need ComfyUI's V3 node API
(``comfy_api``); where that is absent (tests, plain Python) this module exports empty mappings and imports nothing
else, so it always imports cleanly.

The V3 node classes are registered through NODE_CLASS_MAPPINGS, which ComfyUI reads first (it would ignore a
``comfy_entrypoint`` beside it); execution, validation and /object_info treat them as V3 nodes either way.
"""

import importlib.util
import os
import sys

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
WEB_DIRECTORY = "./web"

if importlib.util.find_spec("comfy_api") is not None and __package__:
    # Installed by copying into custom_nodes (ComfyUI-Manager) rather than `pip install`: make rgd_core importable
    # from the pack's own folder.
    if importlib.util.find_spec("rgd_core") is None:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from .nodes import NODES

    for _node in NODES:
        _schema = _node.GET_SCHEMA()
        NODE_CLASS_MAPPINGS[_schema.node_id] = _node
        NODE_DISPLAY_NAME_MAPPINGS[_schema.node_id] = _schema.display_name

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
