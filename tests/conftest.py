import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def single_thread_torch():
    """Tiny SD models run far faster single-threaded than with two threads fighting over shared cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sd1_files(tmp_path_factory):
    """One tiny SD1-structured checkpoint + config folder for the command tests (they only read it)."""
    import sd_fixtures

    return sd_fixtures.write_fixture("sd1", tmp_path_factory.mktemp("sd1"))
