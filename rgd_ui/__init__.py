"""The Unlearn tab: one Gradio page over ``rgd_core.apps.unlearn.run_unlearn``, hosted by Automatic1111 / Forge
(``rgd_ui.webui``, loaded by ``scripts/rgd_tab.py``) or standalone (``rgd ui``, ``rgd_ui.standalone``).

``form`` turns what the user typed into ``rgd unlearn``'s settings, ``runner`` runs them and reports progress
through a small host protocol (where models live, how progress is shown, how Interrupt is asked, how the UI's own
model is moved out of the way), ``blocks`` lays out the page. Nothing here does maths; the library never imports
this package.
"""
