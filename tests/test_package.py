import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rgd_bench.class_metrics import frechet_distance

ROOT = Path(__file__).resolve().parent.parent


ENTRY_POINT_PROBE = """
import importlib.util, json, sys
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("rgd_pack", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps({{"mappings": [module.NODE_CLASS_MAPPINGS, module.NODE_DISPLAY_NAME_MAPPINGS],
                  "imported": sorted(set(sys.modules) - before)}}))
"""


def test_comfyui_entry_point_imports_without_comfyui():
    """In a fresh interpreter (this process may already hold ComfyUI modules or the pack's fakes from other tests):
    without ComfyUI the entry point exports empty mappings and imports neither ComfyUI, the nodes, rgd_core nor
    torch."""
    result = subprocess.run([sys.executable, "-c", ENTRY_POINT_PROBE.format(path=str(ROOT / "__init__.py"))],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["mappings"] == [{}, {}]
    heavy = ("comfy", "comfy_api", "folder_paths", "rgd_pack.nodes", "rgd_core", "torch")
    assert not [name for name in probe["imported"] if name.split(".")[0] in heavy or name.startswith(heavy)]


def test_core_never_imports_comfyui():
    for path in (ROOT / "rgd_core").rglob("*.py"):
        text = path.read_text()
        assert "import comfy" not in text and "from comfy" not in text, path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rgd_core.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_help_lists_the_demo_options():
    result = run_cli("demo", "--help")
    assert result.returncode == 0
    for option in ("--forget-class", "--steps", "--retain-weight", "--seed", "--json"):
        assert option in result.stdout


def test_cli_rejects_a_bad_digit_with_one_line():
    result = run_cli("demo", "--forget-class", "12")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_cli_reports_bad_settings_without_a_traceback():
    result = run_cli("demo", "--lr", "0", "--samples-per-class", "2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("rgd: error:")
    assert "Traceback" not in result.stderr


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_shift():
    generator = np.random.default_rng(0)
    features = np.maximum(generator.normal(size=(400, 16)), 0)  # ReLU-like, singular-ish covariance
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    near = frechet_distance(features, features + 0.1)
    far = frechet_distance(features, features + 1.0)
    assert near == pytest.approx(16 * 0.01, rel=1e-6)
    assert far > near
