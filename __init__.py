"""ComfyUI entry point of the rgd node pack.

ComfyUI imports this file from custom_nodes/. The nodes themselves live in nodes/; until they are registered
this module exports empty mappings, and it must import cleanly where ComfyUI is absent (tests, plain Python).
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
