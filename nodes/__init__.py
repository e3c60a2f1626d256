"""ComfyUI nodes: thin wrappers that declare inputs and call rgd_core (no maths here)."""
