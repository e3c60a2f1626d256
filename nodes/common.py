"""Types and helpers shared by the nodes."""

from __future__ import annotations

from comfy_api.latest import io

CATEGORY = "unlearning/RGD"

# an rgd_core.prompts.PromptSet
PromptSetType = io.Custom("RGD_PROMPT_SET")
# {"name": file name, "sha256": hex digest} of the loaded checkpoint
CheckpointInfo = io.Custom("RGD_CHECKPOINT_INFO")


def first_error(check) -> bool | str:
    """Run ``check()``; a validation function returns True or the RGDInputError's one-line message."""
    from rgd_core.errors import RGDInputError

    try:
        check()
    except RGDInputError as error:
        return str(error)
    return True
