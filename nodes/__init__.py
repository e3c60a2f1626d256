"""ComfyUI nodes: thin wrappers that declare inputs and call rgd_core (no maths here).

``glue.py`` holds every call into ComfyUI's internals; the node classes only declare their schema, check widget
values with rgd_core's own validation and hand over to ``glue``/``rgd_core``. Importing this package needs ComfyUI's
``comfy_api`` (the V3 node API); ``/__init__.py`` only imports it inside ComfyUI.
"""

from .evaluate import RGDEvaluate
from .loader import RGDCheckpointLoader
from .prompt_set import RGDPromptSet
from .save import RGDSave
from .unlearn import RGDUnlearn

NODES = [RGDCheckpointLoader, RGDPromptSet, RGDUnlearn, RGDSave, RGDEvaluate]
