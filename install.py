"""Run by Automatic1111 / Forge at every launch (skipped under --skip-install): install the packages the Unlearn tab
needs and this UI lacks, with the UI's own pip helper.

Never torch, and never a package the UI already has: every installed distribution is pinned as a constraint, so pip
installs only what is missing, at versions that fit what is there, or fails with its reason (shown in the console;
the tab then says what is unmet). Fast when nothing is missing: no pip call at all.
"""

import sys
import tempfile
from pathlib import Path

import launch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rgd_ui.environment import installed_constraints, missing_packages  # noqa: E402

missing = missing_packages()
if missing:
    with tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "installed.txt"
        constraints.write_text(installed_constraints(), encoding="utf-8")
        requirements = " ".join(f'"{requirement}"' for requirement in missing)
        launch.run_pip(f'install {requirements} -c "{constraints}"', f"rgd requirements: {', '.join(missing)}")
