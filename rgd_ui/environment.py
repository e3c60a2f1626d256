"""Can this Python run the tab? The packages unlearning imports, against rgd's own declared floors.

The floors are read from rgd's metadata (``pyproject.toml`` in a checkout, the installed distribution otherwise),
so they are written down once; the tab accepts one lower version, A1111 1.10's transformers pin (``TAB_FLOORS``).
``install.py`` installs what is missing, at the lowest set CI tests (``constraints/lowest.txt``); what is present
but too old is reported, never upgraded, because a UI pins its packages.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What ``rgd_core.apps.unlearn`` imports on the way to a trained LoRA or checkpoint (evaluation's nudenet,
# scikit-learn and scipy are not needed by the tab). torch is the UI's own and never installed by rgd.
TAB_PACKAGES = ("torch", "numpy", "safetensors", "transformers", "diffusers", "pillow", "tqdm", "matplotlib")
# Below rgd's floor for the tab only: A1111 1.10 pins transformers 4.30.2 (and has no diffusers). Measured in a venv
# of A1111 1.10's pins plus diffusers 0.31.0: the load, unlearn, LoRA and export tests pass (80 of 80) and a tiny
# `rgd unlearn --scope lora` writes its checkpoint and LoRA; CI tests 4.46.1, not this.
TAB_FLOORS = {"transformers": "4.30.2"}
LOWEST = ROOT / "constraints" / "lowest.txt"
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


def tab_floors() -> dict[str, str]:
    return {**declared_floors(), **TAB_FLOORS}


def lowest_tested() -> dict[str, str]:
    """Package -> the version of CI's lowest supported set (empty outside a checkout)."""
    pins = {}
    if LOWEST.is_file():
        for line in LOWEST.read_text(encoding="utf-8").splitlines():
            name, _, version = line.split("#")[0].strip().partition("==")
            if version:
                pins[name.lower()] = version
    return pins


def missing_packages() -> list[str]:
    """Tab packages not installed at all, as pip requirements: the lowest tested version (``"diffusers==0.31.0"``),
    else rgd's floor."""
    floors, tested = tab_floors(), lowest_tested()
    return [f"{name}=={tested[name]}" if name in tested else f"{name}>={floors.get(name, '0')}"
            for name in TAB_PACKAGES if name != "torch" and installed_version(name) is None]


def unmet_requirements() -> list[str]:
    """One phrase per tab package that is missing or older than rgd's floor, e.g. "transformers 4.30.2 (rgd needs
    >= 4.46.1)"; empty when the tab can run."""
    floors = tab_floors()
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
