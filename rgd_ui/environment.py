"""Can this Python run the tab? The packages unlearning imports, against rgd's own declared floors.

The floors are read from rgd's metadata (``pyproject.toml`` in a checkout, the installed distribution otherwise),
so they are written down once. ``install.py`` installs what is missing; what is present but too old is reported,
never upgraded, because a UI pins its packages (A1111 1.10 pins transformers 4.30.2).
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What ``rgd_core.apps.unlearn`` imports on the way to a trained LoRA or checkpoint (evaluation's nudenet,
# scikit-learn and scipy are not needed by the tab). torch is the UI's own and never installed by rgd.
TAB_PACKAGES = ("torch", "numpy", "safetensors", "transformers", "diffusers", "pillow", "tqdm", "matplotlib")
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:>=\s*([0-9][^,;\s]*))?")


def declared_floors() -> dict[str, str]:
    """Package (lower case) -> the lowest version rgd declares (``"0"`` when it declares none)."""
    pyproject = ROOT / "pyproject.toml"
    if pyproject.is_file():
        lines = _dependency_lines(pyproject.read_text(encoding="utf-8"))
    else:
        lines = [line for line in metadata.requires("rgd") or [] if "extra ==" not in line]
    floors = {}
    for line in lines:
        match = _REQUIREMENT.match(line)
        if match:
            floors[match.group(1).lower()] = match.group(2) or "0"
    return floors


def _dependency_lines(pyproject: str) -> list[str]:
    """The strings of ``[project] dependencies = [...]``. Read without tomllib, which the webuis' Python 3.10 lacks."""
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", pyproject, re.MULTILINE | re.DOTALL)
    return re.findall(r'"([^"]+)"', block.group(1)) if block else []


def version_tuple(version: str) -> tuple:
    """"4.46.1" -> (4, 46, 1); local and pre-release tails are dropped ("2.13.0+cpu" -> (2, 13, 0))."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0].split("rc")[0])[:3])


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def missing_packages() -> list[str]:
    """Tab packages not installed at all, as pip requirements at rgd's floor (``"diffusers>=0.31"``)."""
    floors = declared_floors()
    return [f"{name}>={floors.get(name, '0')}" for name in TAB_PACKAGES
            if name != "torch" and installed_version(name) is None]


def unmet_requirements() -> list[str]:
    """One phrase per tab package that is missing or older than rgd's floor, e.g. "transformers 4.30.2 (rgd needs
    >= 4.46.1)"; empty when the tab can run."""
    floors = declared_floors()
    unmet = []
    for name in TAB_PACKAGES:
        have = installed_version(name)
        floor = floors.get(name, "0")
        if have is None:
            unmet.append(f"{name} is not installed (rgd needs >= {floor})")
        elif version_tuple(have) < version_tuple(floor):
            unmet.append(f"{name} {have} (rgd needs >= {floor})")
    return unmet


def installed_constraints() -> str:
    """A pip constraints file pinning every installed distribution at its version: installing under it adds
    packages but never changes one the UI has."""
    pins = set()
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name and distribution.version:
            pins.add(f"{name}=={distribution.version}")
    return "\n".join(sorted(pins, key=str.lower)) + "\n"
