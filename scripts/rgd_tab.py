"""Automatic1111 / Forge entry point of the Unlearn tab (``rgd_ui.webui``).

Both UIs execute every ``.py`` file in an extension's ``scripts/`` folder at start-up, so this is the only one here.
"""

import sys
from pathlib import Path

# A1111 puts the extension folder on sys.path only while this file runs, and the tab imports rgd modules later, in
# its handlers: keep the folder on the path. Appended, so that no UI module is shadowed by one of ours.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.append(ROOT)

try:
    from rgd_ui.webui import register
except Exception as error:  # a broken environment must not take the UI down: say so on the console
    print(f"rgd: the Unlearn tab is not available: {type(error).__name__}: {error}", file=sys.stderr)
else:
    register()
