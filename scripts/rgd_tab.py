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
except Exception as error:  # a broken environment must not take the UI down: say why, on the console and the tab
    reason = f"{type(error).__name__}: {error}"
    print(f"rgd: the Unlearn tab is not available: {reason}", file=sys.stderr)

    def _explain():
        import gradio as gr

        with gr.Blocks(analytics_enabled=False) as tab:
            gr.Markdown(f"**rgd cannot load in this UI's Python:** `{reason}`. See the README's A1111 / Forge "
                        "section for what the tab needs.")
        return [(tab, "Unlearn", "rgd")]

    from modules import script_callbacks

    script_callbacks.on_ui_tabs(_explain)
else:
    register()
