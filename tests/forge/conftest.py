"""A real Stable Diffusion WebUI Forge on the CPU, on a free loopback port, with this repository as its extension.

Runs only when RGD_FORGE_DIR names a Forge source tree and RGD_FORGE_PYTHON its venv's python (the tested release
is f2.0.1v1.10.1, commit dfdcbab6; `scripts/setup_forge.sh FORGE_DIR VENV_DIR` makes both). Forge's tree is never
written: everything it reads and writes lives in a temporary --data-dir, whose extensions/rgd links this repo and
whose models/Stable-diffusion holds a small random SD1.5-structured checkpoint (tests/comfyui/fixture.py, written
with Forge's own Python so that its tokenizer files suit Forge's transformers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servers import free_port, skip_folder_unless  # tests/ is on sys.path (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
FORGE = os.environ.get("RGD_FORGE_DIR")
FORGE_PYTHON = os.environ.get("RGD_FORGE_PYTHON")
SKIP_REASON = ("Forge integration tests: set RGD_FORGE_DIR to a Forge source tree and RGD_FORGE_PYTHON to its venv's "
               "python (scripts/setup_forge.sh FORGE_DIR VENV_DIR sets both up)")
START_SECONDS = 300  # 15-65 s on this 2-core machine kind; far more while other jobs run


def pytest_collection_modifyitems(config, items):
    skip_folder_unless(bool(FORGE and FORGE_PYTHON), HERE, items, SKIP_REASON)


class Forge:
    """A running Forge and the HTTP calls the tests make."""

    def __init__(self, data: Path, port: int, process: subprocess.Popen, log: Path) -> None:
        self.data, self.port, self.process, self.log = data, port, process, log
        self.url = f"http://127.0.0.1:{port}"
        self.models = data / "models"

    def request(self, path: str, body: dict | None = None, timeout: float = 300):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def drive(self, *args: str, timeout: float = 600) -> subprocess.Popen:
        """tests/forge/drive.py with Forge's own Python (its gradio_client matches its Gradio)."""
        return subprocess.Popen([FORGE_PYTHON, str(HERE / "drive.py"), self.url, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def forge_fixture_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("forge_fixture")
    result = subprocess.run([FORGE_PYTHON, str(ROOT / "tests" / "comfyui" / "fixture.py"), str(folder)],
                            timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "rgd_tiny_sd15.safetensors"


@pytest.fixture(scope="session")
def forge(tmp_path_factory, forge_fixture_checkpoint):
    data = tmp_path_factory.mktemp("forge_data")
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    os.link(forge_fixture_checkpoint, checkpoints / forge_fixture_checkpoint.name)
    config = forge_fixture_checkpoint.with_name("rgd_tiny_sd15_config")
    (data / "rgd_tiny_sd15_config").symlink_to(config, target_is_directory=True)
    (data / "extensions").mkdir()
    (data / "extensions" / "rgd").symlink_to(ROOT, target_is_directory=True)
    port = free_port()
    log = data / "forge.log"
    command = [FORGE_PYTHON, "launch.py", "--skip-prepare-environment", "--skip-install", "--always-cpu", "--api",
               "--server-name", "127.0.0.1", "--port", str(port), "--no-download-sd-model", "--skip-version-check",
               "--data-dir", str(data)]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=FORGE, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"})
    server = Forge(data, port, process, log)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:  # the extension's own route: sd-models answers before on_app_started callbacks ran
            if process.poll() is not None:
                pytest.fail(f"Forge exited ({process.returncode}):\n{server.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"Forge did not serve /rgd/v1/info in {START_SECONDS} s:\n{server.log_text()[-3000:]}")
            try:
                server.request("/rgd/v1/info", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
