"""A real ComfyUI server on the CPU, on a free loopback port, with only this pack (and a test probe pack) enabled.

Runs only when RGD_COMFYUI names a ComfyUI source tree (the tested release is v0.3.64); scripts/setup_comfyui.sh
makes one and its venv. The server runs with RGD_COMFYUI_PYTHON (default: the python running pytest, so run pytest
with the ComfyUI venv's python, or point RGD_COMFYUI_PYTHON at it). Everything it reads and writes lives in a
temporary base directory: models/checkpoints holds a small random SD1.5-structured checkpoint (fixture.py),
custom_nodes links this repo and the probe pack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser import stop  # tests/comfyui is on sys.path under pytest
from servers import free_port, skip_folder_unless  # and so is tests/

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
COMFYUI = os.environ.get("RGD_COMFYUI")
SKIP_REASON = (
    "ComfyUI integration tests: set RGD_COMFYUI to a ComfyUI v0.3.64 source tree and run pytest with its venv's "
    "python (scripts/setup_comfyui.sh COMFYUI_DIR sets both up)"
)


def pytest_collection_modifyitems(config, items):
    skip_folder_unless(bool(COMFYUI), HERE, items, SKIP_REASON)


class Server:
    """A running ComfyUI and the few HTTP calls the tests make."""

    def __init__(self, base: Path, port: int, process: subprocess.Popen, log: Path) -> None:
        self.base, self.port, self.process, self.log = base, port, process, log
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict | None = None):
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as error:
            raise AssertionError(f"POST {path} -> {error.code}: {error.read().decode()[:2000]}") from None
        return json.loads(text) if text else None

    def queue(self, prompt: dict) -> str:
        return self.post("/prompt", {"prompt": prompt, "client_id": "rgd-tests"})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] in ("success", "error"):
                    return entry
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited:\n{self.log_tail()}")
            time.sleep(0.5)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        entry = self.wait(self.queue(prompt), timeout)
        assert entry["status"]["status_str"] == "success", (entry["status"], self.log_tail())
        return entry

    def running(self) -> bool:
        return bool(self.get("/queue")["queue_running"])

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def write_checkpoint(folder: Path) -> Path:
    python = os.environ.get("RGD_COMFYUI_PYTHON", sys.executable)
    result = subprocess.run([python, str(HERE / "fixture.py"), str(folder)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("comfyui_base")
    checkpoints = base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (base / "models" / "loras").mkdir(parents=True)
    write_checkpoint(checkpoints)
    nodes = base / "custom_nodes"
    nodes.mkdir()
    (nodes / "rgd").symlink_to(ROOT, target_is_directory=True)
    (nodes / "rgd_test_probe").symlink_to(HERE / "probe_pack", target_is_directory=True)
    return base


@pytest.fixture(scope="session")
def server(base_dir):
    if not COMFYUI or not (Path(COMFYUI) / "main.py").is_file():
        pytest.skip(SKIP_REASON)
    python = os.environ.get("RGD_COMFYUI_PYTHON", sys.executable)
    port = free_port()
    log = base_dir / "comfyui.log"
    command = [
        python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base_dir),
        "--disable-all-custom-nodes", "--whitelist-custom-nodes", "rgd", "rgd_test_probe",
        "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=COMFYUI, stdout=out, stderr=subprocess.STDOUT, env=env)
    running = Server(base_dir, port, process, log)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                running.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"ComfyUI did not start:\n{running.log_tail()}") from None
                time.sleep(0.5)
        yield running
    finally:
        stop(process, timeout=30)


@pytest.fixture(scope="session")
def example():
    """example(name) -> a fresh copy of example_workflows/api/<name> (API format, as /prompt takes it)."""
    return lambda name: json.loads((ROOT / "example_workflows" / "api" / name).read_text())


@pytest.fixture(scope="session")
def comfy_glue():
    """ComfyUI imported into this process (CPU) and nodes/glue.py, loaded by path: ComfyUI's own top-level module
    is also called ``nodes``."""
    import importlib.util

    if not COMFYUI:
        pytest.skip(SKIP_REASON)
    if COMFYUI not in sys.path:
        sys.path.insert(0, COMFYUI)
    from comfy.cli_args import args

    args.cpu = True
    if "rgd_nodes_glue" not in sys.modules:
        spec = importlib.util.spec_from_file_location("rgd_nodes_glue", ROOT / "nodes" / "glue.py")
        glue = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = glue  # dataclasses look their module up there
        spec.loader.exec_module(glue)
    return sys.modules["rgd_nodes_glue"]
